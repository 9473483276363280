//! A training loop on the GPU from ground-truth boxes: a small synthetic batch
//! whose logits and box predictions are the parameters, updated by plain gradient
//! descent with the gradients from `forward_backward_device_from_boxes`. The
//! targets are assigned from the boxes inside the loss pass every step (no target
//! tensor is ever written); nothing but the losses leaves the device.
//!
//! Run: `cargo run --release --example train_step`

use fcos_loss::synthetic::{self, RandomBoxes};
use fcos_loss::{
    ClassDtype, DeviceBatch, DeviceGroundTruth, DevicePredictions, FcosLoss, Head, Heads, Levels,
    LossConfig, LossWeights,
};
use wgpu::util::DeviceExt;

/// `param -= lr * grad`, one thread per element.
const SGD: &str = r#"
@group(0) @binding(0) var<storage, read_write> param: array<f32>;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<uniform> lr: vec4<f32>;

@compute @workgroup_size(256)
fn sgd(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x + id.y * 65535u * 256u;
    if (i < arrayLength(&param)) {
        param[i] = param[i] - lr.x * grad[i];
    }
}
"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = LossConfig::new(10);
    let (h, w) = (160, 192);
    let levels = Levels::from_image(h, w, &config.strides)?;
    let batch = synthetic::generate(
        &levels,
        &config.strides,
        &synthetic::SyntheticSpec::new(2, 10),
    )?;
    // 12 ground-truth rows per image (some padding), as gen_targets.random_boxes
    // draws them; the batch's own dense targets are not used.
    let gt = RandomBoxes::draw(2, 12, h, w, 10, 7);
    let engine = FcosLoss::new(config.clone())?;
    let device = engine.context().device.clone();
    let queue = engine.context().queue.clone();
    println!("training on {}", engine.adapter_name());

    // Parameters (the network outputs) and the boxes on the device, and a
    // gradient buffer per head.
    let on_device = DeviceBatch::upload(&device, &batch)?;
    let grads = on_device.gradient_buffers(&device)?;
    let inputs = on_device.inputs();
    let preds = DevicePredictions::of(&inputs);
    let classes: Vec<i32> = gt.classes.iter().map(|&c| c as i32).collect();
    let storage = |label, bytes: &[u8]| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytes,
            usage: wgpu::BufferUsages::STORAGE,
        })
    };
    let gt_boxes = storage("gt_boxes", bytemuck::cast_slice(&gt.boxes));
    let gt_classes = storage("gt_classes", bytemuck::cast_slice(&classes));
    let ground_truth = DeviceGroundTruth {
        boxes_per_image: gt.boxes_per_image,
        boxes: &gt_boxes,
        classes: &gt_classes,
        class_dtype: ClassDtype::I32,
    };

    // The optimiser: one pipeline, one bind group per head, a learning rate per head
    // (box predictions are in pixels, logits are not).
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("sgd"),
        source: wgpu::ShaderSource::Wgsl(SGD.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("sgd"),
        layout: None,
        module: &module,
        entry_point: Some("sgd"),
        compilation_options: Default::default(),
        cache: None,
    });
    let lrs = Heads {
        cls_logits: 200.0f32,
        cnt_logits: 20.0,
        reg_preds: 2000.0,
    };
    let groups: Heads<wgpu::BindGroup> = Heads::from_fn(|head: Head| {
        let lr = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("lr"),
            contents: bytemuck::cast_slice(&[lrs[head], 0.0, 0.0, 0.0]),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("sgd"),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: inputs.buffer(head.input()).as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: grads[head].as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: lr.as_entire_binding(),
                },
            ],
        })
    });

    let out = grads.as_ref();
    let weights = LossWeights::for_config(&config);
    let steps = 40;
    let mut first = None;
    let mut last = 0.0;
    for step in 0..steps {
        let losses = engine
            .forward_backward_device_from_boxes(
                &levels,
                &preds,
                &ground_truth,
                &out,
                &weights,
                None,
            )?
            .value;
        println!(
            "step {step:>2}: total {:.5}  (cls {:.5}, cnt {:.5}, reg {:.5}; positives {:?})",
            losses.total, losses.cls_loss, losses.cnt_loss, losses.reg_loss, losses.num_pos
        );
        first.get_or_insert(losses.total);
        last = losses.total;
        let mut encoder = device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            for (head, g) in groups.iter() {
                let n = (inputs.buffer(head.input()).size() / 4) as u32;
                pass.set_bind_group(0, g, &[]);
                pass.dispatch_workgroups(n.div_ceil(256).min(65535), n.div_ceil(256 * 65535), 1);
            }
        }
        queue.submit([encoder.finish()]);
    }
    let first = first.unwrap_or(last);
    println!("loss {first:.5} -> {last:.5} after {steps} steps");
    if last >= first {
        return Err("the loss did not go down".into());
    }
    Ok(())
}
