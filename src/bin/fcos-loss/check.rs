//! `fcos-loss check FILE`: a case file's losses on the GPU and the CPU reference,
//! compared with each other and with the file's expected values, under one
//! normalisation (`--norm`, docs/contract.md §8).

use serde_json::json;

use fcos_loss::casefile::{self, Case, CaseBoxes, Expected, ExpectedObjective};
use fcos_loss::{
    check_values, reference, FcosLoss, LossConfig, Losses, RegLoss, Sums, ABS_TOL, REL_TOL,
};

use crate::common::{
    case_for, denominators, expected_sums, gpu_call, heads_dtype, loss_diff, losses_json_for,
    losses_within, verdict, CaseArgs, Failure, NormArg,
};

/// `check`'s arguments: the case file, the box loss, the normalisation and the
/// output form.
pub type CheckArgs = CaseArgs;

/// The three results of a case and their largest relative differences.
struct Comparison {
    adapter: String,
    /// The element type the heads were uploaded in.
    heads: fcos_loss::Dtype,
    gpu: Losses,
    cpu: Losses,
    /// The file's `expected.*` losses for this `--reg` and `--norm`, when it has them.
    expected: Option<Losses>,
    /// The config the case ran under (its normalisation and denominators).
    config: LossConfig,
    gpu_cpu: f64,
    gpu_exp: Option<f64>,
    cpu_exp: Option<f64>,
    ok: bool,
}

pub fn run(a: &CheckArgs) -> Result<(), Failure> {
    let (case, boxes) = case_for(casefile::read_case(&a.file)?, a.from_boxes)?;
    let c = compare(&case, boxes.as_ref(), a.reg, a.norm)?;
    match (a.json, a.norm) {
        (true, _) => print_json(a, &case, &c),
        (false, NormArg::PerImage) => print_table(a, &case, &c),
        (false, _) => print_norm_table(a, &case, &c),
    }
    verdict(c.ok, a.json, "results disagree beyond tolerance")
}

/// Computes the case on the GPU and the CPU reference and compares both with
/// each other and with the expected values. Bad input values are reported before
/// a device is opened.
/// With `boxes`, the GPU computes from them (the fused pass assigns the targets).
fn compare(
    case: &Case,
    boxes: Option<&CaseBoxes>,
    reg: RegLoss,
    norm: NormArg,
) -> Result<Comparison, Failure> {
    let batch = &case.batch;
    let (levels, inputs) = (&batch.levels, batch.inputs());
    check_values(levels, &inputs, batch.classes)?;
    let config = norm.config(case, reg)?;
    let engine = FcosLoss::new(config.clone())?;
    // Half heads are uploaded as the file stores them; the CPU reference reads
    // the same values widened.
    let (gpu, _) = gpu_call(&engine, case, boxes, None)?;
    let cpu = reference::losses(&config, levels, &inputs)?;
    let expected = case.expected.as_ref().and_then(|e| match norm {
        NormArg::PerImage => expected_losses(e, reg, &cpu, config.add_centerness),
        _ => expected_objective(e, norm, reg, &config),
    });
    let gpu_cpu = loss_diff(&gpu, &cpu);
    let gpu_exp = expected.as_ref().map(|e| loss_diff(&gpu, e));
    let cpu_exp = expected.as_ref().map(|e| loss_diff(&cpu, e));
    // Expected sums carry the positive counts (the per-image expectations take
    // the CPU's, and an objective alone has none).
    let exp_pos = expected
        .as_ref()
        .is_none_or(|e| e.sums.num_pos.is_empty() || e.sums.num_pos == cpu.num_pos);
    let ok = losses_within(gpu_cpu)
        && gpu.num_pos == cpu.num_pos
        && exp_pos
        && gpu_exp.is_none_or(losses_within)
        && cpu_exp.is_none_or(losses_within);
    Ok(Comparison {
        adapter: engine.adapter_name(),
        heads: heads_dtype(case),
        gpu,
        cpu,
        expected,
        config,
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

/// The file's expected losses under `norm` (batch or global-ctr), when it has
/// `expected.{batch,global_ctr}.*`: the objective of `reg`'s box loss and, where
/// the file has `expected.sums.*`, those sums with the per-image losses they give.
fn expected_objective(
    e: &Expected,
    norm: NormArg,
    reg: RegLoss,
    config: &LossConfig,
) -> Option<Losses> {
    let obj: &ExpectedObjective = match norm {
        NormArg::PerImage => return None,
        NormArg::Batch => e.batch.as_ref()?,
        NormArg::GlobalCtr => e.global_ctr.as_ref()?,
    };
    let reg_loss = match reg {
        RegLoss::Iou => obj.reg_loss,
        RegLoss::Giou => obj.reg_giou_loss,
    };
    let mut l = match &e.sums {
        Some(s) => Losses::from_sums(expected_sums(s, reg), config, None),
        None => Losses {
            cls: Vec::new(),
            cnt: Vec::new(),
            reg: Vec::new(),
            num_pos: Vec::new(),
            cls_loss: 0.0,
            cnt_loss: 0.0,
            reg_loss: 0.0,
            total: 0.0,
            sums: Sums::default(),
        },
    };
    l.cls_loss = obj.cls_loss;
    l.cnt_loss = obj.cnt_loss;
    l.reg_loss = reg_loss;
    l.total = if config.add_centerness {
        obj.cls_loss + obj.cnt_loss + reg_loss
    } else {
        obj.cls_loss + reg_loss
    };
    Some(l)
}

/// One JSON object: the losses of each side (with `--norm batch|global-ctr`, the
/// mode's losses and the raw sums, [`losses_json_for`], plus `norm` and the
/// `global-ctr` denominators), their largest differences, the tolerance, `ok`.
fn print_json(a: &CheckArgs, case: &Case, c: &Comparison) {
    let batch = &case.batch;
    let norm = a.norm;
    let mut out = json!({
        "adapter": c.adapter,
        "heads_dtype": c.heads.name(),
        "file": a.file.display().to_string(),
        "reg": a.reg.name(),
        "from_boxes": a.from_boxes,
        "batch": batch.batch,
        "classes": batch.classes,
        "levels": batch.levels.shapes(),
        "gpu": losses_json_for(norm, &c.gpu),
        "cpu": losses_json_for(norm, &c.cpu),
        "expected": c.expected.as_ref().map(|e| losses_json_for(norm, e)),
        "max_rel_err": {
            "gpu_vs_cpu": c.gpu_cpu,
            "gpu_vs_expected": c.gpu_exp,
            "cpu_vs_expected": c.cpu_exp,
        },
        "tolerance": {"rel": REL_TOL, "abs": ABS_TOL},
        "ok": c.ok,
    });
    if norm != NormArg::PerImage {
        out["norm"] = json!(norm.name());
        out["denominators"] =
            json!(denominators(&c.config).map(|d| json!({"num_pos": d.num_pos, "ctr": d.ctr})));
    }
    println!("{out}");
}

fn print_table(a: &CheckArgs, case: &Case, c: &Comparison) {
    let (batch, levels) = (&case.batch, &case.batch.levels);
    println!("adapter: {} (heads {})", c.adapter, c.heads);
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

/// `--norm batch|global-ctr`: the raw per-image sums of every side, then the
/// mode's objective.
fn print_norm_table(a: &CheckArgs, case: &Case, c: &Comparison) {
    let (batch, levels) = (&case.batch, &case.batch.levels);
    let norm = a.norm;
    println!("adapter: {} (heads {})", c.adapter, c.heads);
    println!(
        "file: {} (B = {}, C = {}, L = {}, P = {}, reg = {}, norm = {})",
        a.file.display(),
        batch.batch,
        batch.classes,
        levels.len(),
        levels.positions(),
        a.reg.name(),
        norm.name()
    );
    match denominators(&c.config) {
        Some(d) => println!(
            "normalisation: {}; N = {}, Z = {:.6} (the case's own, from its cnt_targets); box loss weighted by centerness",
            norm.formula(),
            d.num_pos,
            d.ctr
        ),
        None => println!("normalisation: {}", norm.formula()),
    }
    println!("per-image sums:");
    println!(
        "{:>5} {:>7} {:>4} {:>12} {:>12} {:>12} {:>12} {:>12}",
        "image", "num_pos", "", "S_cls", "S_cnt", "S_reg", "S_regw", "Z"
    );
    let mut sides = vec![("gpu", &c.gpu), ("cpu", &c.cpu)];
    if let Some(e) = c.expected.as_ref().filter(|e| !e.sums.cls.is_empty()) {
        sides.push(("exp", e));
    }
    for b in 0..c.gpu.batch() {
        for (name, l) in &sides {
            let s = &l.sums;
            println!(
                "{b:>5} {:>7} {name:>4} {:>12.6} {:>12.6} {:>12.6} {:>12.6} {:>12.6}",
                s.num_pos[b], s.cls[b], s.cnt[b], s.reg[b], s.reg_w[b], s.ctr[b]
            );
        }
    }
    println!("objective ({}):", norm.name());
    println!(
        "{:>4} {:>12} {:>12} {:>12} {:>12}",
        "", "cls", "cnt", "reg", "total"
    );
    let mut sides = vec![("gpu", &c.gpu), ("cpu", &c.cpu)];
    if let Some(e) = &c.expected {
        sides.push(("exp", e));
    }
    for (name, l) in &sides {
        println!(
            "{name:>4} {:>12.6} {:>12.6} {:>12.6} {:>12.6}",
            l.cls_loss, l.cnt_loss, l.reg_loss, l.total
        );
    }
    println!("total: gpu {:.6}, cpu {:.6}", c.gpu.total, c.cpu.total);
    println!("largest relative error GPU vs CPU: {:.2e}", c.gpu_cpu);
    if let (Some(g), Some(e)) = (c.gpu_exp, c.cpu_exp) {
        println!("largest relative error GPU vs expected: {g:.2e}; CPU vs expected: {e:.2e}");
    } else {
        println!("no expected.{}.* values in the file", norm.file_name());
    }
    println!(
        "tolerance: relative {REL_TOL:.0e} (absolute {ABS_TOL:.0e} near zero): {}",
        if c.ok { "ok" } else { "FAILED" }
    );
}
