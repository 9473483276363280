//! `fcos-loss grad FILE --out OUT`: a case file's gradients on the GPU, written to
//! a safetensors file and compared with the CPU reference and the file's expected
//! gradients, under one normalisation (`--norm`, docs/contract.md §8).

use std::path::PathBuf;

use serde_json::{json, Map, Value};

use fcos_loss::casefile::{self, Case, CaseBoxes, Expected};
use fcos_loss::{
    check_values, max_head_error, reference, FcosLoss, Gradients, Head, Heads, LossConfig,
    LossWeights, Losses, RegLoss,
};

use crate::common::{
    case_for, denominators, gpu_call, grads_within, heads_dtype, loss_diff, losses_json,
    losses_json_for, losses_within, verdict, CaseArgs, Failure, NormArg, GRAD_TOL,
};

#[derive(clap::Args, Debug)]
pub struct GradArgs {
    #[command(flatten)]
    case: CaseArgs,
    /// Where to write `grad.{cls_logits,cnt_logits,reg_preds}.{l}` and `loss.{cls,cnt,reg}`
    /// (with --norm batch or global-ctr also `objective.{cls,cnt,reg}` and `sums.*`).
    #[arg(long)]
    out: PathBuf,
}

/// The GPU's losses and gradients beside the CPU reference and the expected values.
struct Comparison {
    adapter: String,
    /// The element type the heads were uploaded in.
    heads: fcos_loss::Dtype,
    /// The config the case ran under (its normalisation and denominators).
    config: LossConfig,
    gpu: Losses,
    cpu: Losses,
    grads: Gradients,
    /// Largest error of each head's gradients against the CPU reference.
    vs_cpu: Heads<f64>,
    /// The same against the file's expected gradients, where it has them.
    vs_exp: Heads<Option<f64>>,
    ok: bool,
}

/// A `(name, shape, data)` tensor to write.
type Tensor = (String, Vec<usize>, Vec<f32>);

pub fn run(a: &GradArgs) -> Result<(), Failure> {
    let (case, boxes) = case_for(casefile::read_case(&a.case.file)?, a.case.from_boxes)?;
    let c = compare(&case, boxes.as_ref(), a.case.reg, a.case.norm)?;
    let tensors = out_tensors(&case, &c, a.case.norm);
    casefile::write_tensors(&a.out, &tensors)?;
    if a.case.json {
        print_json(a, &c);
    } else {
        print_summary(a, &c, tensors.len());
    }
    verdict(c.ok, a.case.json, "gradients disagree beyond tolerance")
}

/// Forward + backward on the GPU and in the CPU reference (bad input values are
/// reported before a device is opened), and every comparison.
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
    let weights = LossWeights::for_config(&config);
    let engine = FcosLoss::new(config.clone())?;
    // Half heads are uploaded as the file stores them; the CPU reference reads
    // the same values widened.
    let (gpu, grads) = gpu_call(&engine, case, boxes, Some(&weights))?;
    // A call with weights is a backward pass: it always returns gradients.
    let grads = grads.unwrap_or_default();
    let (cpu, cpu_grads) = reference::grad::gradients(&config, levels, &inputs, &weights)?;
    let cpu_grads = reference::grad::narrow(&cpu_grads);
    let vs_cpu = Heads::from_fn(|h| max_head_error(&grads[h], &cpu_grads[h]));
    let expected = case.expected.as_ref().map(|e| expected_grads(e, reg, norm));
    let vs_exp = Heads::from_fn(|h| {
        let want = expected.as_ref().and_then(|e| e[h])?;
        Some(max_head_error(&grads[h], want))
    });
    let ok = losses_within(loss_diff(&gpu, &cpu))
        && vs_cpu.iter().all(|(_, &d)| grads_within(d))
        && vs_exp.iter().filter_map(|(_, &d)| d).all(grads_within);
    Ok(Comparison {
        adapter: engine.adapter_name(),
        heads: heads_dtype(case),
        config,
        gpu,
        cpu,
        grads,
        vs_cpu,
        vs_exp,
        ok,
    })
}

/// The expected gradient of each head for `reg`'s mode and `norm`. Per image: the
/// class and centerness heads from `expected.grad.*`, the box head from the
/// mode's own tensors. Global-ctr: `expected.grad_global_ctr.*`, IoU only, so
/// with GIoU its box head has none. Batch: none.
fn expected_grads(e: &Expected, reg: RegLoss, norm: NormArg) -> Heads<Option<&Vec<Vec<f32>>>> {
    Heads::from_fn(|h| match (norm, h, reg) {
        (NormArg::PerImage, Head::RegPreds, RegLoss::Giou) => e.grad_giou_reg.as_ref(),
        (NormArg::PerImage, _, _) => e.grad.as_ref().map(|g| &g[h]),
        (NormArg::GlobalCtr, Head::RegPreds, RegLoss::Giou) => None,
        (NormArg::GlobalCtr, _, _) => e.grad_global_ctr.as_ref().map(|g| &g[h]),
        (NormArg::Batch, _, _) => None,
    })
}

/// `grad.{head}.{l}` in the input shapes, then `loss.{cls,cnt,reg}` per image;
/// with `batch` or `global-ctr` also the objective `objective.{cls,cnt,reg}` `[1]`
/// and the raw sums `sums.{cls,cnt,reg,reg_w,num_pos,ctr}` `[B]`.
fn out_tensors(case: &Case, c: &Comparison, norm: NormArg) -> Vec<Tensor> {
    let batch = &case.batch;
    let b = batch.batch;
    let mut tensors = Vec::new();
    for (head, levels) in c.grads.iter() {
        let ch = head.channels(batch.classes);
        for (l, v) in levels.iter().enumerate() {
            let (h, w) = batch.levels.shapes()[l];
            let shape = vec![b, ch, h as usize, w as usize];
            tensors.push((format!("grad.{head}.{l}"), shape, v.clone()));
        }
    }
    let gpu = &c.gpu;
    for (name, v) in [("cls", &gpu.cls), ("cnt", &gpu.cnt), ("reg", &gpu.reg)] {
        let data = v.iter().map(|&x| x as f32).collect();
        tensors.push((format!("loss.{name}"), vec![b], data));
    }
    if norm != NormArg::PerImage {
        for (name, x) in [
            ("cls", gpu.cls_loss),
            ("cnt", gpu.cnt_loss),
            ("reg", gpu.reg_loss),
        ] {
            tensors.push((format!("objective.{name}"), vec![1], vec![x as f32]));
        }
        let s = &gpu.sums;
        let num_pos: Vec<f64> = s.num_pos.iter().map(|&n| n as f64).collect();
        for (name, v) in [
            ("cls", &s.cls),
            ("cnt", &s.cnt),
            ("reg", &s.reg),
            ("reg_w", &s.reg_w),
            ("num_pos", &num_pos),
            ("ctr", &s.ctr),
        ] {
            let data = v.iter().map(|&x| x as f32).collect();
            tensors.push((format!("sums.{name}"), vec![b], data));
        }
    }
    tensors
}

/// One JSON value per head, keyed by the head's name.
fn per_head<T: Copy + Into<Value>>(v: &Heads<T>) -> Value {
    let map: Map<String, Value> = v
        .iter()
        .map(|(h, &x)| (h.name().to_string(), x.into()))
        .collect();
    map.into()
}

/// Today's keys; with `batch` or `global-ctr` the mode's losses
/// ([`losses_json_for`]), `norm` and, for `global-ctr`, the denominators.
fn print_json(a: &GradArgs, c: &Comparison) {
    let norm = a.case.norm;
    let mut out = json!({
        "adapter": c.adapter,
        "heads_dtype": c.heads.name(),
        "file": a.case.file.display().to_string(),
        "out": a.out.display().to_string(),
        "reg": a.case.reg.name(),
        "from_boxes": a.case.from_boxes,
        "gpu": losses_json(&c.gpu),
        "cpu": losses_json(&c.cpu),
        "max_grad_err": {
            "gpu_vs_cpu": per_head(&c.vs_cpu),
            "gpu_vs_expected": per_head(&c.vs_exp),
        },
        "tolerance": GRAD_TOL,
        "ok": c.ok,
    });
    if norm != NormArg::PerImage {
        let dens = denominators(&c.config).map(|d| json!({"num_pos": d.num_pos, "ctr": d.ctr}));
        out["norm"] = norm.name().into();
        out["denominators"] = dens.into();
        out["gpu"] = losses_json_for(norm, &c.gpu);
        out["cpu"] = losses_json_for(norm, &c.cpu);
    }
    println!("{out}");
}

fn print_summary(a: &GradArgs, c: &Comparison, written: usize) {
    println!("adapter: {} (heads {})", c.adapter, c.heads);
    println!("wrote {} ({written} tensors)", a.out.display());
    let norm = a.case.norm;
    if norm == NormArg::PerImage {
        println!(
            "losses per image (gpu): cls {:?} cnt {:?} reg {:?}",
            c.gpu.cls, c.gpu.cnt, c.gpu.reg
        );
    } else {
        let g = &c.gpu;
        let dens = denominators(&c.config).map_or(String::new(), |d| {
            format!(
                "; N = {}, Z = {:.6} (the case's own), box loss weighted by centerness",
                d.num_pos, d.ctr
            )
        });
        println!("norm = {}: {}{dens}", norm.name(), norm.formula());
        println!(
            "objective (gpu): cls {:.6} cnt {:.6} reg {:.6} total {:.6}; positives per image {:?}",
            g.cls_loss, g.cnt_loss, g.reg_loss, g.total, g.num_pos
        );
        let note = match (norm, a.case.reg) {
            (NormArg::Batch, _) => Some("the batch mode has no expected gradients in case files"),
            (NormArg::GlobalCtr, RegLoss::Giou) => {
                Some("expected.grad_global_ctr.* are IoU gradients: the GIoU box head is compared with the CPU reference alone")
            }
            _ => None,
        };
        if let Some(note) = note {
            println!("({note})");
        }
    }
    for h in Head::ALL {
        let name = h.name();
        let exp = c.vs_exp[h].map_or("n/a".to_string(), |d| format!("{d:.2e}"));
        println!(
            "grad {name:<10}: largest error vs CPU {:.2e}, vs expected {exp} (of the largest magnitude in the head, all levels)",
            c.vs_cpu[h]
        );
    }
    let verdict = if c.ok { "ok" } else { "FAILED" };
    println!("tolerance {GRAD_TOL:.0e}: {verdict}");
}
