//! Embedding fcos-loss in an application that already has a wgpu device:
//! the app opens its own device, keeps its network outputs in its own buffers,
//! and asks the engine for the loss without copying the inputs through the host.
//!
//! Run: `cargo run --release --example embed`

use fcos_loss::{synthetic, DeviceInputs, FcosLoss, Levels, LossConfig};
use wgpu::util::DeviceExt;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The application's own device.
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        ..Default::default()
    }))?;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("my app"),
        required_limits: adapter.limits(),
        ..Default::default()
    }))?;
    println!(
        "app device: {} ({:?})",
        adapter.get_info().name,
        adapter.get_info().backend
    );

    // A batch the "network" produced; here a synthetic one, uploaded once into app buffers.
    let config = LossConfig::new(20);
    let levels = Levels::from_image(512, 512, &config.strides)?;
    let batch = synthetic::generate(
        &levels,
        &config.strides,
        &synthetic::SyntheticSpec::new(2, 20),
    )?;
    let buffer = |label: &str, data: &[f32]| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::cast_slice(data),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        })
    };
    // Each head's levels packed one after another (level l at element B·ch·offset_l).
    let cls = buffer("cls_logits", &batch.cls_logits.concat());
    let cnt = buffer("cnt_logits", &batch.cnt_logits.concat());
    let reg = buffer("reg_preds", &batch.reg_preds.concat());
    let cls_t = buffer("cls_targets", &batch.cls_targets);
    let cnt_t = buffer("cnt_targets", &batch.cnt_targets);
    let reg_t = buffer("reg_targets", &batch.reg_targets);

    // The engine shares the app's device and queue.
    let engine = FcosLoss::from_device(device.clone(), queue.clone(), config.clone())?;
    let losses = engine.compute_device(
        &levels,
        &DeviceInputs {
            batch: batch.batch,
            cls_logits: &cls,
            cnt_logits: &cnt,
            reg_preds: &reg,
            cls_targets: &cls_t,
            cnt_targets: &cnt_t,
            reg_targets: &reg_t,
        },
    )?;
    println!("per-image cls {:?}", losses.cls);
    println!("per-image cnt {:?}", losses.cnt);
    println!("per-image reg {:?}", losses.reg);
    println!("num_pos {:?}, total {:.6}", losses.num_pos, losses.total);

    let cpu = fcos_loss::reference::losses(&config, &levels, &batch.inputs())?;
    println!(
        "CPU reference total {:.6}; largest relative difference {:.2e}",
        cpu.total,
        losses.max_rel_diff(&cpu, fcos_loss::REL_TOL, fcos_loss::ABS_TOL)
    );
    Ok(())
}
