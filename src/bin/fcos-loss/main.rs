//! `fcos-loss`: the demo (no arguments, or `demo`) and the `check`, `grad` and
//! `bench` commands.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use serde_json::{json, Value};

use fcos_loss::{
    casefile as io, check_values, max_head_error, reference, synthetic, FcosError, FcosLoss, Gradients, Levels, LossConfig, LossWeights,
    Losses, RegLoss, ABS_TOL, REL_TOL,
};

/// The FCOS loss (focal + centerness BCE + IoU/GIoU) on the GPU through wgpu.
///
/// With no command, runs the demo on a built-in COCO-shaped batch.
#[derive(Parser, Debug)]
#[command(name = "fcos-loss", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Demo on a deterministic synthetic batch: GPU and CPU losses, their difference, GPU call time.
    Demo(DemoArgs),
    /// Compute a case file (SPEC §5 tensor names) on the GPU and the CPU reference; compare with its expected values.
    Check(CheckArgs),
    /// Gradients of a case file on the GPU, written to a safetensors file; compared with the CPU reference and expected gradients.
    Grad(GradArgs),
    /// Kernel and call times on this adapter beside the memory roofline and the CPU reference.
    Bench(BenchArgs),
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// Base shape: voc (B 2, C 20, 512x512), coco (B 8, C 80, 800x1024) or coco-large (B 16, C 80, 800x1333).
    #[arg(long, default_value = "coco")]
    preset: String,
    /// Images per batch (overrides the preset).
    #[arg(long)]
    batch: Option<usize>,
    /// Classes (overrides the preset).
    #[arg(long)]
    classes: Option<u32>,
    /// Image size HxW (overrides the preset).
    #[arg(long)]
    image: Option<String>,
    /// Timed repetitions (medians and minima are reported).
    #[arg(long, default_value_t = 10)]
    reps: usize,
    /// Timed runs of the CPU reference (0 skips it).
    #[arg(long, default_value_t = 3)]
    cpu_reps: usize,
    /// Leave out the forward + backward pass.
    #[arg(long)]
    no_backward: bool,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct GradArgs {
    /// A safetensors file with the tensors of SPEC §5.
    file: PathBuf,
    /// Where to write `grad.{cls_logits,cnt_logits,reg_preds}.{l}` and `loss.{cls,cnt,reg}`.
    #[arg(long)]
    out: PathBuf,
    /// Box regression loss (GIoU compares reg_preds with `expected.grad_giou.reg_preds.*`).
    #[arg(long, default_value = "iou", value_parser = parse_reg)]
    reg: RegLoss,
    /// Print one JSON object on stdout instead of the summary.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct DemoArgs {
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

#[derive(clap::Args, Debug)]
struct CheckArgs {
    /// A safetensors file with the tensors of SPEC §5.
    file: PathBuf,
    /// Box regression loss (GIoU compares with `expected.reg_loss_giou`).
    #[arg(long, default_value = "iou", value_parser = parse_reg)]
    reg: RegLoss,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

fn parse_reg(s: &str) -> Result<RegLoss, String> {
    s.parse::<RegLoss>().map_err(|e| e.to_string())
}

fn parse_image(s: &str) -> Result<(u32, u32), FcosError> {
    let bad = || {
        FcosError::InvalidConfig(format!(
            "--image must be HxW with positive integers, got '{s}'"
        ))
    };
    let (h, w) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let h: u32 = h.trim().parse().map_err(|_| bad())?;
    let w: u32 = w.trim().parse().map_err(|_| bad())?;
    if h == 0 || w == 0 {
        return Err(bad());
    }
    Ok((h, w))
}

/// The failure of a command: a one-line error (exit 2) or a tolerance failure (exit 1).
enum Failure {
    Error(FcosError),
    Mismatch,
}

impl From<FcosError> for Failure {
    fn from(e: FcosError) -> Self {
        Failure::Error(e)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => demo(&DemoArgs::default()),
        Some(Command::Demo(a)) => demo(&a),
        Some(Command::Check(a)) => check(&a),
        Some(Command::Grad(a)) => grad(&a),
        Some(Command::Bench(a)) => bench(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Mismatch) => ExitCode::from(1),
        Err(Failure::Error(e)) => {
            let msg = e.to_string();
            let one_line: Vec<&str> = msg
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            eprintln!("error: {}", one_line.join("; "));
            ExitCode::from(2)
        }
    }
}

fn median_ms(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

fn demo(a: &DemoArgs) -> Result<(), Failure> {
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
    let inputs = batch.inputs();
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
    // The first call builds the pooled buffers; the timed calls reuse them.
    let gpu = engine.compute(&levels, &inputs)?;
    let mut times = Vec::new();
    for _ in 0..a.reps.max(1) {
        let t = Instant::now();
        let again = engine.compute(&levels, &inputs)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        if again != gpu {
            eprintln!("fcos-loss: two GPU calls on the same input differ");
            return Err(Failure::Mismatch);
        }
    }
    let t = Instant::now();
    let cpu = reference::losses(&config, &levels, &inputs)?;
    let cpu_ms = t.elapsed().as_secs_f64() * 1e3;
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
    let diff = gpu.max_rel_diff(&cpu, REL_TOL, ABS_TOL);
    println!("largest relative difference GPU vs CPU: {diff:.2e} (tolerance {REL_TOL:.0e})");
    println!(
        "GPU call (upload, kernels, readback): median {:.2} ms over {} calls; CPU reference: {cpu_ms:.1} ms",
        median_ms(times),
        a.reps.max(1)
    );
    if diff > REL_TOL {
        eprintln!("error: GPU and CPU disagree beyond tolerance");
        return Err(Failure::Mismatch);
    }
    Ok(())
}

fn losses_json(l: &Losses) -> Value {
    json!({
        "cls_loss": l.cls,
        "cnt_loss": l.cnt,
        "reg_loss": l.reg,
        "num_pos": l.num_pos,
        "cls_mean": l.cls_loss,
        "cnt_mean": l.cnt_loss,
        "reg_mean": l.reg_loss,
        "total": l.total,
    })
}

fn check(a: &CheckArgs) -> Result<(), Failure> {
    let case = io::read_case(&a.file)?;
    let batch = &case.batch;
    let config = LossConfig::new(batch.classes as u32).with_reg_loss(a.reg);
    let levels = &batch.levels;
    let inputs = batch.inputs();
    // Bad values are reported before a device is opened.
    check_values(levels, &inputs, batch.classes)?;
    let engine = FcosLoss::new(config.clone())?;
    let gpu = engine.compute(levels, &inputs)?;
    let cpu = reference::losses(&config, levels, &inputs)?;
    let expected = match &case.expected {
        Some(e) => {
            let reg = match a.reg {
                RegLoss::Iou => Some(e.reg_loss.clone()),
                RegLoss::Giou => e.reg_loss_giou.clone(),
            };
            reg.map(|reg| {
                Losses::from_per_image(
                    e.cls_loss.clone(),
                    e.cnt_loss.clone(),
                    reg,
                    cpu.num_pos.clone(),
                    config.add_centerness,
                )
            })
        }
        None => None,
    };
    let gpu_cpu = gpu.max_rel_diff(&cpu, REL_TOL, ABS_TOL);
    let gpu_exp = expected
        .as_ref()
        .map(|e| gpu.max_rel_diff(e, REL_TOL, ABS_TOL));
    let cpu_exp = expected
        .as_ref()
        .map(|e| cpu.max_rel_diff(e, REL_TOL, ABS_TOL));
    let ok = gpu_cpu <= REL_TOL
        && gpu.num_pos == cpu.num_pos
        && gpu_exp.is_none_or(|d| d <= REL_TOL)
        && cpu_exp.is_none_or(|d| d <= REL_TOL);
    if a.json {
        let out = json!({
            "adapter": engine.adapter_name(),
            "file": a.file.display().to_string(),
            "reg": a.reg.name(),
            "batch": batch.batch,
            "classes": batch.classes,
            "levels": levels.shapes(),
            "gpu": losses_json(&gpu),
            "cpu": losses_json(&cpu),
            "expected": expected.as_ref().map(losses_json),
            "max_rel_err": {
                "gpu_vs_cpu": gpu_cpu,
                "gpu_vs_expected": gpu_exp,
                "cpu_vs_expected": cpu_exp,
            },
            "tolerance": {"rel": REL_TOL, "abs": ABS_TOL},
            "ok": ok,
        });
        println!("{out}");
    } else {
        println!("adapter: {}", engine.adapter_name());
        println!(
            "file: {} (B = {}, C = {}, L = {}, P = {}, reg = {})",
            a.file.display(),
            batch.batch,
            batch.classes,
            levels.len(),
            levels.positions(),
            a.reg.name()
        );
        println!(
            "{:>5} {:>7} {:>4} {:>12} {:>12} {:>12}",
            "image", "num_pos", "", "cls", "cnt", "reg"
        );
        for b in 0..gpu.batch() {
            let row = |name: &str, l: &Losses| {
                println!(
                    "{b:>5} {:>7} {name:>4} {:>12.6} {:>12.6} {:>12.6}",
                    l.num_pos[b], l.cls[b], l.cnt[b], l.reg[b]
                );
            };
            row("gpu", &gpu);
            row("cpu", &cpu);
            if let Some(e) = &expected {
                row("exp", e);
            }
        }
        println!("total: gpu {:.6}, cpu {:.6}", gpu.total, cpu.total);
        println!("largest relative error GPU vs CPU: {gpu_cpu:.2e}");
        if let (Some(g), Some(c)) = (gpu_exp, cpu_exp) {
            println!("largest relative error GPU vs expected: {g:.2e}; CPU vs expected: {c:.2e}");
        } else {
            println!("no expected values for reg = {} in the file", a.reg.name());
        }
        println!(
            "tolerance: relative {REL_TOL:.0e} (absolute {ABS_TOL:.0e} near zero): {}",
            if ok { "ok" } else { "FAILED" }
        );
    }
    if ok {
        Ok(())
    } else {
        if a.json {
            eprintln!("error: results disagree beyond tolerance");
        }
        Err(Failure::Mismatch)
    }
}

fn grad(a: &GradArgs) -> Result<(), Failure> {
    let case = io::read_case(&a.file)?;
    let batch = &case.batch;
    let levels = &batch.levels;
    let config = LossConfig::new(batch.classes as u32).with_reg_loss(a.reg);
    let weights = LossWeights::for_config(&config);
    check_values(levels, &batch.inputs(), batch.classes)?;
    let engine = FcosLoss::new(config.clone())?;
    let (gpu, g) = engine.forward_backward(levels, &batch.inputs(), &weights)?;
    let (cpu, cg) = reference::grad::gradients(&config, levels, &batch.inputs(), &weights)?;
    let cg = reference::grad::narrow(&cg);
    let heads = |x: &Gradients| {
        [
            x.cls_logits.clone(),
            x.cnt_logits.clone(),
            x.reg_preds.clone(),
        ]
    };
    let names = ["cls_logits", "cnt_logits", "reg_preds"];
    let vs_cpu: Vec<f64> = heads(&g)
        .iter()
        .zip(heads(&cg).iter())
        .map(|(x, y)| max_head_error(x, y))
        .collect();
    // Expected gradients: cls and cnt from expected.grad.*, reg from the mode's own tensors.
    let expected: Option<[Option<Vec<Vec<f32>>>; 3]> = case.expected.as_ref().map(|e| {
        let iou = e.grad.as_ref();
        [
            iou.map(|x| x.cls_logits.clone()),
            iou.map(|x| x.cnt_logits.clone()),
            match a.reg {
                RegLoss::Iou => iou.map(|x| x.reg_preds.clone()),
                RegLoss::Giou => e.grad_giou_reg.clone(),
            },
        ]
    });
    let vs_exp: Vec<Option<f64>> = match &expected {
        Some(ex) => heads(&g)
            .iter()
            .zip(ex)
            .map(|(x, y)| y.as_ref().map(|y| max_head_error(x, y)))
            .collect(),
        None => vec![None; 3],
    };
    let mut tensors = Vec::new();
    let b = batch.batch;
    for (head, ch, data) in [
        ("cls_logits", batch.classes, &g.cls_logits),
        ("cnt_logits", 1, &g.cnt_logits),
        ("reg_preds", 4, &g.reg_preds),
    ] {
        for (l, v) in data.iter().enumerate() {
            let (h, w) = levels.shapes()[l];
            tensors.push((
                format!("grad.{head}.{l}"),
                vec![b, ch, h as usize, w as usize],
                v.clone(),
            ));
        }
    }
    for (name, v) in [
        ("loss.cls", &gpu.cls),
        ("loss.cnt", &gpu.cnt),
        ("loss.reg", &gpu.reg),
    ] {
        tensors.push((
            name.to_string(),
            vec![b],
            v.iter().map(|&x| x as f32).collect(),
        ));
    }
    io::write_tensors(&a.out, &tensors)?;
    let loss_ok = gpu.max_rel_diff(&cpu, REL_TOL, ABS_TOL) <= REL_TOL;
    let ok = loss_ok
        && vs_cpu
            .iter()
            .chain(vs_exp.iter().flatten())
            .all(|&d| d <= 1e-4);
    if a.json {
        let per_head = |v: &[Option<f64>]| -> Value {
            names
                .iter()
                .zip(v)
                .map(|(n, d)| (n.to_string(), json!(d)))
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        let out = json!({
            "adapter": engine.adapter_name(),
            "file": a.file.display().to_string(),
            "out": a.out.display().to_string(),
            "reg": a.reg.name(),
            "gpu": losses_json(&gpu),
            "cpu": losses_json(&cpu),
            "max_grad_err": {
                "gpu_vs_cpu": per_head(&vs_cpu.iter().map(|&x| Some(x)).collect::<Vec<_>>()),
                "gpu_vs_expected": per_head(&vs_exp),
            },
            "tolerance": 1e-4,
            "ok": ok,
        });
        println!("{out}");
    } else {
        println!("adapter: {}", engine.adapter_name());
        println!("wrote {} ({} tensors)", a.out.display(), tensors.len());
        println!(
            "losses per image (gpu): cls {:?} cnt {:?} reg {:?}",
            gpu.cls, gpu.cnt, gpu.reg
        );
        for (i, n) in names.iter().enumerate() {
            let exp = vs_exp[i].map_or("n/a".to_string(), |d| format!("{d:.2e}"));
            println!("grad {n:<10}: largest error vs CPU {:.2e}, vs expected {exp} (of the largest magnitude in the head, all levels)", vs_cpu[i]);
        }
        println!("tolerance 1e-4: {}", if ok { "ok" } else { "FAILED" });
    }
    if ok {
        Ok(())
    } else {
        if a.json {
            eprintln!("error: gradients disagree beyond tolerance");
        }
        Err(Failure::Mismatch)
    }
}

fn bench(a: &BenchArgs) -> Result<(), Failure> {
    use fcos_loss::bench::{self, BenchOptions, BenchSpec};
    let mut spec = BenchSpec::preset(&a.preset)?.with_reps(a.reps);
    if let Some(b) = a.batch {
        spec = spec.with_batch(b);
    }
    if let Some(c) = a.classes {
        spec.classes = c;
    }
    if let Some(img) = &a.image {
        spec.image = parse_image(img)?;
    }
    let mut engine = FcosLoss::new(LossConfig::new(spec.classes))?;
    let options = BenchOptions {
        warmup: 1,
        cpu_reps: a.cpu_reps,
        backward: !a.no_backward,
    };
    // With the input checks (the default) and without them, to show what they cost.
    let checked = bench::run_with(&engine, &spec, &options)?;
    engine.set_checks(false);
    let unchecked = bench::run_with(
        &engine,
        &spec,
        &BenchOptions {
            cpu_reps: 0,
            backward: false,
            ..options.clone()
        },
    )?;
    let kernel_cost = checked.kernel_ms / unchecked.kernel_ms;
    let call_cost = checked.call_ms / unchecked.call_ms;
    if a.json {
        let mut out = serde_json::to_value(&checked).map_err(|e| FcosError::File(e.to_string()))?;
        if let Value::Object(m) = &mut out {
            m.insert("checks".into(), json!(true));
            m.insert(
                "without_checks".into(),
                json!({
                    "kernel_ms": unchecked.kernel_ms,
                    "call_ms": unchecked.call_ms,
                    "device_call_ms": unchecked.device_call_ms,
                    "kernel_over_roofline": unchecked.kernel_over_roofline,
                }),
            );
            m.insert("checks_kernel_cost".into(), json!(kernel_cost));
            m.insert("checks_call_cost".into(), json!(call_cost));
        }
        println!("{out}");
    } else {
        println!("with input checks (the default):");
        println!("{}", bench::table(std::slice::from_ref(&checked)));
        println!("without input checks (set_checks(false)):");
        println!("{}", bench::table(std::slice::from_ref(&unchecked)));
        println!(
            "checks cost: kernel x{kernel_cost:.3} (GPU flags in the fused pass), host call x{call_cost:.3}"
        );
        if let (Some(bwd), Some(ratio), Some(roof), Some(roof_ratio)) = (
            checked.backward_kernel_ms,
            checked.backward_over_forward,
            checked.backward_roofline_ms,
            checked.backward_roofline_over_roofline,
        ) {
            println!(
                "forward + backward: kernel {bwd:.2} ms = x{ratio:.2} the forward; its roofline (the same reads and gradient writes, no maths) {roof:.2} ms = x{roof_ratio:.2} the forward's roofline"
            );
        }
        if let Some(d) = checked.max_rel_diff {
            println!("GPU vs CPU reference: largest relative difference {d:.2e}");
        }
        if !checked.timestamps {
            println!("(no TIMESTAMP_QUERY on this adapter: kernel times are wall-clock times of device-buffer calls)");
        }
    }
    if checked.max_rel_diff.is_some_and(|d| d > REL_TOL) {
        eprintln!("error: GPU and CPU reference disagree beyond tolerance");
        return Err(Failure::Mismatch);
    }
    Ok(())
}
