//! `fcos-loss check FILE`: a case file's losses on the GPU and the CPU reference,
//! compared with each other and with the file's expected values.

use serde_json::json;

use fcos_loss::casefile::{self, Case, Expected};
use fcos_loss::{check_values, reference, FcosLoss, LossConfig, Losses, RegLoss, ABS_TOL, REL_TOL};

use crate::common::{loss_diff, losses_json, losses_within, verdict, CaseArgs, Failure};

/// `check`'s arguments: the case file, the box loss and the output form.
pub type CheckArgs = CaseArgs;

/// The three results of a case and their largest relative differences.
struct Comparison {
    adapter: String,
    gpu: Losses,
    cpu: Losses,
    /// The file's `expected.*` losses for this `--reg`, when it has them.
    expected: Option<Losses>,
    gpu_cpu: f64,
    gpu_exp: Option<f64>,
    cpu_exp: Option<f64>,
    ok: bool,
}

pub fn run(a: &CheckArgs) -> Result<(), Failure> {
    let case = casefile::read_case(&a.file)?;
    let c = compare(&case, a.reg)?;
    if a.json {
        print_json(a, &case, &c);
    } else {
        print_table(a, &case, &c);
    }
    verdict(c.ok, a.json, "results disagree beyond tolerance")
}

/// Computes the case on the GPU and the CPU reference and compares both with
/// each other and with the expected values. Bad input values are reported before
/// a device is opened.
fn compare(case: &Case, reg: RegLoss) -> Result<Comparison, Failure> {
    let batch = &case.batch;
    let config = LossConfig::new(batch.classes as u32).with_reg_loss(reg);
    let (levels, inputs) = (&batch.levels, batch.inputs());
    check_values(levels, &inputs, batch.classes)?;
    let engine = FcosLoss::new(config.clone())?;
    let gpu = engine.compute(levels, &inputs)?;
    let cpu = reference::losses(&config, levels, &inputs)?;
    let expected = case
        .expected
        .as_ref()
        .and_then(|e| expected_losses(e, reg, &cpu, config.add_centerness));
    let gpu_cpu = loss_diff(&gpu, &cpu);
    let gpu_exp = expected.as_ref().map(|e| loss_diff(&gpu, e));
    let cpu_exp = expected.as_ref().map(|e| loss_diff(&cpu, e));
    let ok = losses_within(gpu_cpu)
        && gpu.num_pos == cpu.num_pos
        && gpu_exp.is_none_or(losses_within)
        && cpu_exp.is_none_or(losses_within);
    Ok(Comparison {
        adapter: engine.adapter_name(),
        gpu,
        cpu,
        expected,
        gpu_cpu,
        gpu_exp,
        cpu_exp,
        ok,
    })
}

/// The expected losses of `reg`'s mode (`None` for GIoU in a file without
/// `expected.reg_loss_giou`), with the CPU reference's positive counts.
fn expected_losses(
    e: &Expected,
    reg: RegLoss,
    cpu: &Losses,
    add_centerness: bool,
) -> Option<Losses> {
    let reg_loss = match reg {
        RegLoss::Iou => Some(e.reg_loss.clone()),
        RegLoss::Giou => e.reg_loss_giou.clone(),
    }?;
    Some(Losses::from_per_image(
        e.cls_loss.clone(),
        e.cnt_loss.clone(),
        reg_loss,
        cpu.num_pos.clone(),
        add_centerness,
    ))
}

fn print_json(a: &CheckArgs, case: &Case, c: &Comparison) {
    let batch = &case.batch;
    let out = json!({
        "adapter": c.adapter,
        "file": a.file.display().to_string(),
        "reg": a.reg.name(),
        "batch": batch.batch,
        "classes": batch.classes,
        "levels": batch.levels.shapes(),
        "gpu": losses_json(&c.gpu),
        "cpu": losses_json(&c.cpu),
        "expected": c.expected.as_ref().map(losses_json),
        "max_rel_err": {
            "gpu_vs_cpu": c.gpu_cpu,
            "gpu_vs_expected": c.gpu_exp,
            "cpu_vs_expected": c.cpu_exp,
        },
        "tolerance": {"rel": REL_TOL, "abs": ABS_TOL},
        "ok": c.ok,
    });
    println!("{out}");
}

fn print_table(a: &CheckArgs, case: &Case, c: &Comparison) {
    let (batch, levels) = (&case.batch, &case.batch.levels);
    println!("adapter: {}", c.adapter);
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
    let mut sides = vec![("gpu", &c.gpu), ("cpu", &c.cpu)];
    if let Some(e) = &c.expected {
        sides.push(("exp", e));
    }
    for b in 0..c.gpu.batch() {
        for (name, l) in &sides {
            println!(
                "{b:>5} {:>7} {name:>4} {:>12.6} {:>12.6} {:>12.6}",
                l.num_pos[b], l.cls[b], l.cnt[b], l.reg[b]
            );
        }
    }
    println!("total: gpu {:.6}, cpu {:.6}", c.gpu.total, c.cpu.total);
    println!("largest relative error GPU vs CPU: {:.2e}", c.gpu_cpu);
    if let (Some(g), Some(e)) = (c.gpu_exp, c.cpu_exp) {
        println!("largest relative error GPU vs expected: {g:.2e}; CPU vs expected: {e:.2e}");
    } else {
        println!("no expected values for reg = {} in the file", a.reg.name());
    }
    println!(
        "tolerance: relative {REL_TOL:.0e} (absolute {ABS_TOL:.0e} near zero): {}",
        if c.ok { "ok" } else { "FAILED" }
    );
}
