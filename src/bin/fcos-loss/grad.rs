//! `fcos-loss grad FILE --out OUT`: a case file's gradients on the GPU, written to
//! a safetensors file and compared with the CPU reference and the file's expected
//! gradients.

use std::path::PathBuf;

use serde_json::{json, Map, Value};

use fcos_loss::casefile::{self, Case, Expected};
use fcos_loss::{
    check_values, max_head_error, reference, FcosLoss, Gradients, Head, Heads, LossConfig,
    LossWeights, Losses, RegLoss,
};

use crate::common::{
    grads_within, loss_diff, losses_json, losses_within, verdict, CaseArgs, Failure, GRAD_TOL,
};

#[derive(clap::Args, Debug)]
pub struct GradArgs {
    #[command(flatten)]
    case: CaseArgs,
    /// Where to write `grad.{cls_logits,cnt_logits,reg_preds}.{l}` and `loss.{cls,cnt,reg}`.
    #[arg(long)]
    out: PathBuf,
}

/// The GPU's losses and gradients beside the CPU reference and the expected values.
struct Comparison {
    adapter: String,
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
    let case = casefile::read_case(&a.case.file)?;
    let c = compare(&case, a.case.reg)?;
    let tensors = out_tensors(&case, &c);
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
fn compare(case: &Case, reg: RegLoss) -> Result<Comparison, Failure> {
    let batch = &case.batch;
    let (levels, inputs) = (&batch.levels, batch.inputs());
    let config = LossConfig::new(batch.classes as u32).with_reg_loss(reg);
    let weights = LossWeights::for_config(&config);
    check_values(levels, &inputs, batch.classes)?;
    let engine = FcosLoss::new(config.clone())?;
    let (gpu, grads) = engine.forward_backward(levels, &inputs, &weights)?;
    let (cpu, cpu_grads) = reference::grad::gradients(&config, levels, &inputs, &weights)?;
    let cpu_grads = reference::grad::narrow(&cpu_grads);
    let vs_cpu = Heads::from_fn(|h| max_head_error(&grads[h], &cpu_grads[h]));
    let expected = case.expected.as_ref().map(|e| expected_grads(e, reg));
    let vs_exp = Heads::from_fn(|h| {
        let want = expected.as_ref().and_then(|e| e[h])?;
        Some(max_head_error(&grads[h], want))
    });
    let ok = losses_within(loss_diff(&gpu, &cpu))
        && vs_cpu.iter().all(|(_, &d)| grads_within(d))
        && vs_exp.iter().filter_map(|(_, &d)| d).all(grads_within);
    Ok(Comparison {
        adapter: engine.adapter_name(),
        gpu,
        cpu,
        grads,
        vs_cpu,
        vs_exp,
        ok,
    })
}

/// The expected gradient of each head for `reg`'s mode: the class and centerness
/// heads from `expected.grad.*`, the box head from the mode's own tensors.
fn expected_grads(e: &Expected, reg: RegLoss) -> Heads<Option<&Vec<Vec<f32>>>> {
    Heads::from_fn(|h| match (h, reg) {
        (Head::RegPreds, RegLoss::Giou) => e.grad_giou_reg.as_ref(),
        _ => e.grad.as_ref().map(|g| &g[h]),
    })
}

/// `grad.{head}.{l}` in the input shapes, then `loss.{cls,cnt,reg}` per image.
fn out_tensors(case: &Case, c: &Comparison) -> Vec<Tensor> {
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

fn print_json(a: &GradArgs, c: &Comparison) {
    let out = json!({
        "adapter": c.adapter,
        "file": a.case.file.display().to_string(),
        "out": a.out.display().to_string(),
        "reg": a.case.reg.name(),
        "gpu": losses_json(&c.gpu),
        "cpu": losses_json(&c.cpu),
        "max_grad_err": {
            "gpu_vs_cpu": per_head(&c.vs_cpu),
            "gpu_vs_expected": per_head(&c.vs_exp),
        },
        "tolerance": GRAD_TOL,
        "ok": c.ok,
    });
    println!("{out}");
}

fn print_summary(a: &GradArgs, c: &Comparison, written: usize) {
    println!("adapter: {}", c.adapter);
    println!("wrote {} ({written} tensors)", a.out.display());
    println!(
        "losses per image (gpu): cls {:?} cnt {:?} reg {:?}",
        c.gpu.cls, c.gpu.cnt, c.gpu.reg
    );
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
