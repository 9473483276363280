//! `fcos-loss demo` (and `fcos-loss` alone): the loss of a deterministic synthetic
//! batch on the GPU and the CPU reference, their difference and the GPU call time.

use std::time::Instant;

use fcos_loss::{
    reference, synthetic, Batch, FcosLoss, Levels, LossConfig, Losses, RegLoss, REL_TOL,
};

use crate::common::Failure;
use crate::common::{loss_diff, losses_within, median_ms, mismatch, parse_image, parse_reg};

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Images per batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Foreground classes.
    #[arg(long, default_value_t = 80)]
    classes: u32,
    /// Image size HxW (levels are ceil(h / s) × ceil(w / s) for strides 8..128).
    #[arg(long, default_value = "800x1024")]
    image: String,
    /// Seed of the synthetic batch.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Box regression loss.
    #[arg(long, default_value = "iou", value_parser = parse_reg)]
    reg: RegLoss,
    /// Timed GPU calls (the median is reported).
    #[arg(long, default_value_t = 10)]
    reps: usize,
}

impl Default for DemoArgs {
    /// What `fcos-loss` with no command runs: the defaults of `fcos-loss demo`.
    fn default() -> Self {
        DemoArgs {
            batch: 8,
            classes: 80,
            image: "800x1024".into(),
            seed: 0,
            reg: RegLoss::Iou,
            reps: 10,
        }
    }
}

/// The GPU result, the CPU reference and what they took.
struct Timings {
    gpu: Losses,
    cpu: Losses,
    /// The timed GPU calls, milliseconds.
    gpu_ms: Vec<f64>,
    cpu_ms: f64,
}

pub fn run(a: &DemoArgs) -> Result<(), Failure> {
    let (h, w) = parse_image(&a.image)?;
    let config = LossConfig::new(a.classes).with_reg_loss(a.reg);
    config.validate()?;
    let levels = Levels::from_image(h, w, &config.strides)?;
    let engine = FcosLoss::new(config.clone())?;
    // Before drawing the batch: a shape the device cannot take fails here.
    engine.check_fits(&levels, a.batch, false)?;
    let mut spec = synthetic::SyntheticSpec::new(a.batch, a.classes as usize);
    spec.seed = a.seed;
    let batch = synthetic::generate(&levels, &config.strides, &spec)?;
    println!("fcos-loss demo on {}", engine.adapter_name());
    println!(
        "batch: B = {}, C = {}, image {h}x{w}, levels {:?}, P = {}, {:.1} MB of inputs, reg = {}",
        a.batch,
        a.classes,
        levels.shapes(),
        levels.positions(),
        batch.input_bytes() as f64 / 1e6,
        a.reg.name()
    );
    let t = time(&engine, &config, &batch, a.reps.max(1))?;
    print_table(&t.gpu, &t.cpu);
    let diff = loss_diff(&t.gpu, &t.cpu);
    println!("largest relative difference GPU vs CPU: {diff:.2e} (tolerance {REL_TOL:.0e})");
    println!(
        "GPU call (upload, kernels, readback): median {:.2} ms over {} calls; CPU reference: {:.1} ms",
        median_ms(t.gpu_ms),
        a.reps.max(1),
        t.cpu_ms
    );
    if !losses_within(diff) {
        return Err(mismatch("GPU and CPU disagree beyond tolerance"));
    }
    Ok(())
}

/// One untimed GPU call (it builds the pooled buffers), `reps` timed ones that
/// must all give the same result, and one run of the CPU reference.
fn time(
    engine: &FcosLoss,
    config: &LossConfig,
    batch: &Batch,
    reps: usize,
) -> Result<Timings, Failure> {
    let (levels, inputs) = (&batch.levels, batch.inputs());
    let gpu = engine.compute(levels, &inputs)?;
    let mut gpu_ms = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        let again = engine.compute(levels, &inputs)?;
        gpu_ms.push(t.elapsed().as_secs_f64() * 1e3);
        if again != gpu {
            return Err(mismatch("two GPU calls on the same input differ"));
        }
    }
    let t = Instant::now();
    let cpu = reference::losses(config, levels, &inputs)?;
    let cpu_ms = t.elapsed().as_secs_f64() * 1e3;
    Ok(Timings {
        gpu,
        cpu,
        gpu_ms,
        cpu_ms,
    })
}

/// Per image and the batch means, GPU beside CPU, after a blank line; then the totals.
fn print_table(gpu: &Losses, cpu: &Losses) {
    println!();
    println!(
        "{:>5} {:>7} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12}",
        "image", "num_pos", "cls gpu", "cls cpu", "cnt gpu", "cnt cpu", "reg gpu", "reg cpu"
    );
    for b in 0..gpu.batch() {
        println!(
            "{b:>5} {:>7} {:>12.6} {:>12.6} {:>12.6} {:>12.6} {:>12.6} {:>12.6}",
            gpu.num_pos[b], gpu.cls[b], cpu.cls[b], gpu.cnt[b], cpu.cnt[b], gpu.reg[b], cpu.reg[b]
        );
    }
    println!(
        "{:>5} {:>7} {:>12.6} {:>12.6} {:>12.6} {:>12.6} {:>12.6} {:>12.6}",
        "mean",
        "",
        gpu.cls_loss,
        cpu.cls_loss,
        gpu.cnt_loss,
        cpu.cnt_loss,
        gpu.reg_loss,
        cpu.reg_loss
    );
    println!("total: gpu {:.6}, cpu {:.6}", gpu.total, cpu.total);
}
