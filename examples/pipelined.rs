//! A training-like loop that never waits for the GPU inside a step: each step
//! records, into one command encoder and one submission, a stand-in network pass
//! that writes the logits, the loss with its gradients
//! (`FcosLoss::record_device`), and an SGD update of the parameters from those
//! gradients. The loss is read back (asynchronously) every 10 steps only. The same
//! loop written with blocking calls runs beside it, and both print steps per
//! second and the loss they reach.
//!
//! The "network" is the identity: its parameters are the logits themselves, so
//! the update is plain gradient descent on the heads' outputs.
//!
//! Run: `cargo run --release --example pipelined`

use std::time::Instant;

use fcos_loss::{
    synthetic, DeviceBatch, DeviceInputs, FcosLoss, Head, Heads, Levels, LossConfig, LossWeights,
};

const STEPS: usize = 100;
const READ_EVERY: usize = 10;
const LEARNING_RATE: f32 = 2.0;

/// `forward`: logits = params; `sgd`: params -= lr · grad. One thread per element.
const SHADER: &str = r#"
@group(0) @binding(0) var<storage, read_write> params: array<f32>;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;
@group(0) @binding(2) var<storage, read> grads: array<f32>;
override LR: f32 = 1.0;

fn index(id: vec3<u32>, n: vec3<u32>) -> u32 {
    return id.x + id.y * n.x * 256u;
}

@compute @workgroup_size(256)
fn forward(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>) {
    let i = index(id, n);
    if (i < arrayLength(&logits)) {
        logits[i] = params[i];
    }
}

@compute @workgroup_size(256)
fn sgd(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>) {
    let i = index(id, n);
    if (i < arrayLength(&params)) {
        params[i] = params[i] - LR * grads[i];
    }
}
"#;

/// The stand-in network of one head: its parameters and the two pipelines.
struct Head1 {
    /// The parameters (the bind group binds them).
    _params: wgpu::Buffer,
    group: wgpu::BindGroup,
    words: u32,
}

struct Network {
    forward: wgpu::ComputePipeline,
    sgd: wgpu::ComputePipeline,
    heads: Vec<Head1>,
}

impl Network {
    /// Parameters start as the batch's own logits; `logits` and `grads` are the
    /// buffers the loss reads and writes.
    fn new(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        start: &DeviceBatch,
        grads: &Heads<wgpu::Buffer>,
    ) -> Self {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("stand-in network"),
            source: wgpu::ShaderSource::Wgsl(SHADER.into()),
        });
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("stand-in network"),
            entries: &[0, 1, 2].map(|binding| wgpu::BindGroupLayoutEntry {
                binding,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage {
                        read_only: binding == 2,
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            }),
        });
        let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("stand-in network"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = |entry: &str| {
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: Some(&pl),
                module: &module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &[("LR", f64::from(LEARNING_RATE))],
                    ..Default::default()
                },
                cache: None,
            })
        };
        let (forward, sgd) = (pipeline("forward"), pipeline("sgd"));
        let heads = Head::ALL
            .iter()
            .map(|&h| {
                let logits = start.buffer(h.input());
                let params = device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("params"),
                    size: logits.size(),
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                let mut e = device.create_command_encoder(&Default::default());
                e.copy_buffer_to_buffer(logits, 0, &params, 0, logits.size());
                queue.submit([e.finish()]);
                let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("stand-in network"),
                    layout: &layout,
                    entries: &[entry(0, &params), entry(1, logits), entry(2, &grads[h])],
                });
                Head1 {
                    words: (logits.size() / 4) as u32,
                    _params: params,
                    group,
                }
            })
            .collect();
        Network {
            forward,
            sgd,
            heads,
        }
    }

    /// Records the network pass (`forward`) or the update (`sgd`) of every head.
    fn record(&self, encoder: &mut wgpu::CommandEncoder, update: bool) {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(if update { &self.sgd } else { &self.forward });
        for h in &self.heads {
            let groups = h.words.div_ceil(256);
            pass.set_bind_group(0, &h.group, &[]);
            pass.dispatch_workgroups(groups.min(256), groups.div_ceil(256), 1);
        }
    }
}

fn entry(binding: u32, buffer: &wgpu::Buffer) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry {
        binding,
        resource: buffer.as_entire_binding(),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = LossConfig::new(20);
    let levels = Levels::from_image(256, 320, &config.strides)?;
    let batch = synthetic::generate(
        &levels,
        &config.strides,
        &synthetic::SyntheticSpec::new(4, 20),
    )?;
    let engine = FcosLoss::new(config)?;
    println!("adapter: {}", engine.adapter_name());
    let (device, queue) = (&engine.context().device, &engine.context().queue);
    let weights = LossWeights::default();
    let mut rows = Vec::new();
    for pipelined in [true, false] {
        // Each loop starts from the same logits.
        let bufs = DeviceBatch::upload(device, &batch)?;
        let grads = bufs.gradient_buffers(device)?;
        let net = Network::new(device, queue, &bufs, &grads);
        let inputs: DeviceInputs = bufs.inputs();
        let grad_refs = grads.as_ref();
        let start = Instant::now();
        let mut seen = Vec::new();
        for step in 0..STEPS {
            let mut encoder = device.create_command_encoder(&Default::default());
            net.record(&mut encoder, false);
            if pipelined {
                // Network pass, loss and gradients, update: one submission.
                let pending = engine.record_device(
                    &mut encoder,
                    &levels,
                    &inputs,
                    Some(&grad_refs),
                    &weights,
                )?;
                net.record(&mut encoder, true);
                queue.submit([encoder.finish()]);
                if step % READ_EVERY == READ_EVERY - 1 {
                    let losses = pollster::block_on(engine.read_losses(&pending))?;
                    seen.push((step, losses.total));
                }
                // An unread step's handle is dropped: its result slot is free again.
            } else {
                queue.submit([encoder.finish()]);
                let losses =
                    engine.forward_backward_device(&levels, &inputs, &grad_refs, &weights)?;
                let mut encoder = device.create_command_encoder(&Default::default());
                net.record(&mut encoder, true);
                queue.submit([encoder.finish()]);
                if step % READ_EVERY == READ_EVERY - 1 {
                    seen.push((step, losses.value.total));
                }
            }
        }
        device.poll(wgpu::PollType::wait_indefinitely())?;
        let secs = start.elapsed().as_secs_f64();
        let name = if pipelined {
            "recorded, read every 10 steps"
        } else {
            "blocking calls"
        };
        for (step, total) in &seen {
            println!("{name}: step {:>3}: loss {total:.5}", step + 1);
        }
        rows.push((name, STEPS as f64 / secs, seen));
    }
    println!();
    for (name, rate, seen) in &rows {
        let (first, last) = (seen[0].1, seen[seen.len() - 1].1);
        println!("{name:<32} {rate:>8.1} steps/s   loss {first:.5} -> {last:.5}");
    }
    let (a, b) = (&rows[0].2, &rows[1].2);
    // Both loops compute the same steps in the same order.
    for ((s, x), (_, y)) in a.iter().zip(b) {
        if x.to_bits() != y.to_bits() {
            return Err(format!("step {}: {x} recorded, {y} blocking", s + 1).into());
        }
    }
    if a[a.len() - 1].1 >= a[0].1 {
        return Err("the loss did not fall".into());
    }
    println!(
        "the two loops agree bit for bit; recorded / blocking: {:.2}x the steps per second",
        rows[0].1 / rows[1].1
    );
    Ok(())
}
