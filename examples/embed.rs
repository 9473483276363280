//! Embedding fcos-loss in an application that already has a wgpu device:
//! the app opens its own device, keeps its network outputs in its own buffers,
//! and asks the engine for the loss without copying the inputs through the host.
//!
//! Run: `cargo run --release --example embed`

use fcos_loss::{synthetic, DeviceBatch, FcosLoss, Levels, LossConfig};

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
    // The app's buffers: each head's levels packed one after another (level l at
    // element B·ch·off_l), the targets flattened over levels, as `DeviceInputs`
    // documents. `DeviceBatch` makes them from a host batch; an app's network
    // writes its own buffers in the same layout.
    let on_device = DeviceBatch::upload(&device, &batch)?;

    // The engine shares the app's device and queue.
    let engine = FcosLoss::from_device(device.clone(), queue.clone(), config.clone())?;
    let losses = engine.compute_device(&levels, &on_device.inputs())?;
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
