//! `fcos-loss bench`: kernel and call times of one shape on this adapter, with
//! the input checks and without them, beside the memory roofline and the CPU
//! reference (the `fcos_loss::bench` harness).

use serde_json::{json, Value};

use fcos_loss::bench::{self, BenchOptions, BenchReport, BenchSpec};
use fcos_loss::{FcosError, FcosLoss, LossConfig};

use crate::common::{losses_within, mismatch, parse_image, Failure};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
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
    /// The heads' element type: f32, or f16 / bf16 (the synthetic heads rounded to
    /// it and read as 2-byte elements; the roofline reads the same bytes).
    #[arg(long, default_value = "f32")]
    dtype: fcos_loss::Dtype,
    /// Timed runs of the CPU reference (0 skips it).
    #[arg(long, default_value_t = 3)]
    cpu_reps: usize,
    /// Leave out the forward + backward pass.
    #[arg(long)]
    no_backward: bool,
    /// Also time the forward and forward + backward kernels under each
    /// normalisation mode (per-image, batch, global-ctr with the batch's own N and
    /// Z as host values, global-ctr with them in a device buffer), interleaved in
    /// the same sitting; each mode is checked against the CPU reference when
    /// --cpu-reps > 0.
    #[arg(long)]
    norms: bool,
    /// Also time the loss from M ground-truth boxes per image (drawn as
    /// gen_targets.random_boxes draws them): the fused loss from boxes, the target
    /// pass alone, the whole call from host slices and the fused forward +
    /// backward, in the same sitting; boxes_over_targets = boxes_kernel_ms /
    /// kernel_ms.
    #[arg(long, value_name = "M")]
    boxes: Option<usize>,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

/// The same shape timed with the input checks (the default) and without them.
struct Reports {
    checked: BenchReport,
    unchecked: BenchReport,
}

impl Reports {
    /// What the checks cost the kernel: checked ÷ unchecked kernel time.
    fn kernel_cost(&self) -> f64 {
        self.checked.kernel_ms / self.unchecked.kernel_ms
    }

    /// What the checks cost the host call: checked ÷ unchecked call time.
    fn call_cost(&self) -> f64 {
        self.checked.call_ms / self.unchecked.call_ms
    }
}

pub fn run(a: &BenchArgs) -> Result<(), Failure> {
    let spec = spec(a)?;
    let r = measure(a, &spec)?;
    if a.json {
        print_json(&r)?;
    } else {
        print_table(&r);
    }
    if r.checked.max_rel_diff.is_some_and(|d| !losses_within(d)) {
        return Err(mismatch("GPU and CPU reference disagree beyond tolerance"));
    }
    let norm_diffs = r
        .checked
        .norms
        .as_ref()
        .and_then(|n| n.max_rel_diff_by_norm.as_ref());
    if let Some((name, _)) = norm_diffs.and_then(|d| d.iter().find(|(_, &d)| !losses_within(d))) {
        return Err(mismatch(&format!(
            "GPU and CPU reference disagree beyond tolerance under --norms mode {name}"
        )));
    }
    Ok(())
}

/// The preset with the overrides of the command line.
fn spec(a: &BenchArgs) -> Result<BenchSpec, FcosError> {
    let mut spec = BenchSpec::preset(&a.preset)?.with_reps(a.reps);
    spec.dtype = a.dtype;
    if let Some(b) = a.batch {
        spec = spec.with_batch(b);
    }
    if let Some(c) = a.classes {
        spec.classes = c;
    }
    if let Some(img) = &a.image {
        spec.image = parse_image(img)?;
    }
    Ok(spec)
}

/// Times the shape with the checks (backward and CPU reference as asked), then
/// without them (forward only), on one engine.
fn measure(a: &BenchArgs, spec: &BenchSpec) -> Result<Reports, FcosError> {
    let mut engine = FcosLoss::new(LossConfig::new(spec.classes))?;
    let options = BenchOptions {
        warmup: 1,
        cpu_reps: a.cpu_reps,
        backward: !a.no_backward,
        norms: a.norms,
        boxes: a.boxes,
    };
    let checked = bench::run_with(&engine, spec, &options)?;
    engine.set_checks(false);
    let forward_only = BenchOptions {
        cpu_reps: 0,
        backward: false,
        norms: false,
        boxes: None,
        ..options
    };
    let unchecked = bench::run_with(&engine, spec, &forward_only)?;
    Ok(Reports { checked, unchecked })
}

/// The checked report's keys, plus `checks`, `without_checks` and the two costs.
fn print_json(r: &Reports) -> Result<(), FcosError> {
    let mut out = serde_json::to_value(&r.checked).map_err(|e| FcosError::File(e.to_string()))?;
    if let Value::Object(m) = &mut out {
        let u = &r.unchecked;
        m.insert("checks".into(), json!(true));
        m.insert(
            "without_checks".into(),
            json!({
                "kernel_ms": u.kernel_ms,
                "call_ms": u.call_ms,
                "device_call_ms": u.device_call_ms,
                "kernel_over_roofline": u.kernel_over_roofline,
            }),
        );
        m.insert("checks_kernel_cost".into(), json!(r.kernel_cost()));
        m.insert("checks_call_cost".into(), json!(r.call_cost()));
    }
    println!("{out}");
    Ok(())
}

fn print_table(r: &Reports) {
    let checked = &r.checked;
    println!("with input checks (the default):");
    println!("{}", bench::table(std::slice::from_ref(checked)));
    println!("without input checks (set_checks(false)):");
    println!("{}", bench::table(std::slice::from_ref(&r.unchecked)));
    println!(
        "checks cost: kernel x{:.3} (GPU flags in the fused pass), host call x{:.3}",
        r.kernel_cost(),
        r.call_cost()
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
    if let Some(n) = &checked.norms {
        println!();
        println!("normalisation modes (one engine each, interleaved in the same repetitions, checks on):");
        print!("{}", n.table());
        println!(
            "global-ctr: Global with the batch's own N and Z, box loss weighted by centerness; -device: N and Z read from a buffer that count_device filled (the forward then runs the normalisation pass too)"
        );
    }
    if let Some(b) = &checked.boxes {
        println!();
        println!(
            "from {} ground-truth boxes per image ({} positives): fused loss from boxes {:.2} ms (min {:.2}) = x{:.3} the loss from target tensors; target pass alone {:.2} ms; whole call from host slices {:.2} ms{}; fused vs two-step largest relative difference {:.1e}",
            b.boxes,
            b.boxes_positives,
            b.boxes_kernel_ms,
            b.boxes_kernel_min_ms,
            b.boxes_over_targets,
            b.targets_kernel_ms,
            b.boxes_call_ms,
            b.boxes_backward_kernel_ms
                .map_or(String::new(), |k| format!("; forward + backward from boxes {k:.2} ms")),
            b.boxes_max_rel_diff,
        );
    }
    if !checked.timestamps {
        println!("(no TIMESTAMP_QUERY on this adapter: kernel times are wall-clock times of device-buffer calls)");
    }
}
