//! What the commands share: the failure type and the one prefix of the CLI's own
//! error lines, argument parsers, tolerance checks, JSON helpers and timing.

use std::path::PathBuf;

use serde_json::{json, Value};

use fcos_loss::casefile::{Case, CaseBoxes, ExpectedSums};
use fcos_loss::{
    reference, Batch, Counts, Denominators, Dtype, Element, FcosError, FcosLoss, Gradients, Inputs,
    LossConfig, LossWeights, Losses, Normalization, Predictions, RegLoss, Sums, ABS_TOL, REL_TOL,
};

/// The prefix of every error line the CLI prints on stderr. Drivers print their
/// own `error: ...` lines there (Mesa does when `XDG_RUNTIME_DIR` is unset); this
/// one is the CLI's alone, so scripts and tests can tell the two apart.
pub const ERROR_PREFIX: &str = "fcos-loss: error: ";

/// The tolerance of a gradient check: each element within `1e-4` of the largest
/// magnitude of its head ([`fcos_loss::max_head_error`]).
pub const GRAD_TOL: f64 = 1e-4;

/// The failure of a command: an error (exit 2) or a tolerance failure (exit 1).
pub enum Failure {
    /// Printed as one error line; exit code 2.
    Error(FcosError),
    /// Results outside the tolerances (already reported); exit code 1.
    Mismatch,
}

impl From<FcosError> for Failure {
    fn from(e: FcosError) -> Self {
        Failure::Error(e)
    }
}

/// Prints `message` as one CLI error line on stderr: [`ERROR_PREFIX`], then the
/// message's non-empty lines joined with `"; "`.
pub fn print_error(message: &str) {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    eprintln!("{ERROR_PREFIX}{}", lines.join("; "));
}

/// Reports a tolerance failure (one error line) and returns [`Failure::Mismatch`].
pub fn mismatch(message: &str) -> Failure {
    print_error(message);
    Failure::Mismatch
}

/// The arguments of the commands that read a case file (`check`, `grad`).
#[derive(clap::Args, Debug)]
pub struct CaseArgs {
    /// A safetensors file with the tensors of docs/contract.md §5.
    pub file: PathBuf,
    /// Box regression loss (GIoU compares with the file's GIoU values,
    /// `expected.reg_loss_giou` and `expected.grad_giou.reg_preds.*`).
    #[arg(long, default_value = "iou", value_parser = parse_reg)]
    pub reg: RegLoss,
    /// Normalisation (docs/contract.md §8): per-image (the notebook's, the
    /// default), batch (torchvision: the batch's sums over its positives) or
    /// global-ctr (Global with the case's own N and Z, counted from its
    /// cnt_targets, box loss weighted by centerness: mmdet, the official FCOS).
    /// With batch or global-ctr, `check` compares the objective and the raw sums
    /// with the file's expected.batch.* or expected.global_ctr.* and
    /// expected.sums.*, and `grad` compares the global-ctr gradients with
    /// expected.grad_global_ctr.*. Those are IoU gradients only: with --reg giou
    /// the box head is compared with the CPU reference alone. Batch gradients have
    /// no expected values and are compared with the CPU reference.
    #[arg(long, default_value = "per-image", value_parser = parse_norm)]
    pub norm: NormArg,
    /// Print one JSON object on stdout instead of the text.
    #[arg(long)]
    pub json: bool,
    /// Compute from the file's gt_boxes / gt_classes (docs/contract.md §7): the
    /// GPU assigns each position's targets inside the fused pass, the CPU
    /// reference runs on its twin's targets; the file's own targets are not read
    /// by either, and the expected values are compared as usual.
    #[arg(long)]
    pub from_boxes: bool,
}

/// With `--from-boxes`, the case with its targets replaced by the CPU twin's
/// assignment from its boxes (the reference and the normalisation read those),
/// and the boxes; otherwise the case as it is.
pub fn case_for(case: Case, from_boxes: bool) -> Result<(Case, Option<CaseBoxes>), Failure> {
    if !from_boxes {
        if !case.targets_given {
            return Err(Failure::Error(FcosError::File(
                "the case file holds boxes but no targets: add --from-boxes, or assign them first with `fcos-loss targets`".into(),
            )));
        }
        return Ok((case, None));
    }
    let Some(boxes) = case.boxes.clone() else {
        return Err(Failure::Error(FcosError::File(
            "--from-boxes needs gt_boxes and gt_classes in the case file".into(),
        )));
    };
    let mut case = case;
    let b = &mut case.batch;
    let config = LossConfig::new(b.classes as u32);
    let t = reference::assign_targets(&config, &b.levels, &boxes.ground_truth(b.batch))?;
    b.cls_targets = t.cls_targets;
    b.cnt_targets = t.cnt_targets;
    b.reg_targets = t.reg_targets;
    Ok((case, Some(boxes)))
}

/// `--norm`: the normalisations the case-file commands run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormArg {
    /// `Normalization::PerImage`: today's output, unchanged.
    PerImage,
    /// `Normalization::Batch`, box loss unweighted.
    Batch,
    /// `Normalization::Global` with the case's own `N = Σ n_b`, `Z = Σ Z_b`, box
    /// loss weighted by centerness: the golden files' `global_ctr`.
    GlobalCtr,
}

impl NormArg {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            NormArg::PerImage => "per-image",
            NormArg::Batch => "batch",
            NormArg::GlobalCtr => "global-ctr",
        }
    }

    /// The name of the mode in case files: `expected.{file_name}.*`.
    pub fn file_name(self) -> &'static str {
        match self {
            NormArg::PerImage => "per_image",
            NormArg::Batch => "batch",
            NormArg::GlobalCtr => "global_ctr",
        }
    }

    /// What the mode divides by, for the text output.
    pub fn formula(self) -> &'static str {
        match self {
            NormArg::PerImage => "mean over images of S / max(n_b, 1)",
            NormArg::Batch => "Σ S / max(Σ n, 1)",
            NormArg::GlobalCtr => "Σ S / max(N, 1), box Σ S_regw / max(Z, 1e-6)",
        }
    }

    /// The config of a case under this mode: the case's `C`, `reg`, and for
    /// `global-ctr` the denominators counted from its `cnt_targets`
    /// ([`Counts::of`], so it works on any case file) with the box loss weighted.
    pub fn config(self, case: &Case, reg: RegLoss) -> Result<LossConfig, FcosError> {
        let batch = &case.batch;
        let config = LossConfig::new(batch.classes as u32).with_reg_loss(reg);
        Ok(match self {
            NormArg::PerImage => config,
            NormArg::Batch => config.with_normalization(Normalization::Batch),
            NormArg::GlobalCtr => {
                let counts = Counts::of(&batch.levels, batch.batch, &batch.cnt_targets)?;
                let global = Denominators::mean_of(std::slice::from_ref(&counts));
                config
                    .with_normalization(Normalization::Global(global))
                    .with_centerness_weighted_reg(true)
            }
        })
    }
}

/// `--norm per-image|batch|global-ctr`.
pub fn parse_norm(s: &str) -> Result<NormArg, String> {
    match s.to_ascii_lowercase().as_str() {
        "per-image" => Ok(NormArg::PerImage),
        "batch" => Ok(NormArg::Batch),
        "global-ctr" => Ok(NormArg::GlobalCtr),
        other => Err(format!(
            "normalisation must be 'per-image', 'batch' or 'global-ctr', got '{other}'"
        )),
    }
}

/// The global denominators a config holds (`None` outside `Global`).
pub fn denominators(config: &LossConfig) -> Option<Denominators> {
    match config.normalization {
        Normalization::Global(d) => Some(d),
        _ => None,
    }
}

/// A file's `expected.sums.*` as the [`Sums`] of `reg`'s box loss.
pub fn expected_sums(s: &ExpectedSums, reg: RegLoss) -> Sums {
    let (s_reg, s_reg_w) = match reg {
        RegLoss::Iou => (&s.reg, &s.reg_ctr),
        RegLoss::Giou => (&s.reg_giou, &s.reg_ctr_giou),
    };
    Sums {
        cls: s.cls.clone(),
        cnt: s.cnt.clone(),
        reg: s_reg.clone(),
        reg_w: s_reg_w.clone(),
        num_pos: s
            .num_pos
            .iter()
            .map(|&n| n.round().max(0.0) as u32)
            .collect(),
        ctr: s.ctr.clone(),
    }
}

/// The outcome of a comparing command: `Ok` when everything is within tolerance;
/// otherwise exit 1, with `what` on stderr when the output is JSON (a table or
/// summary says FAILED itself).
pub fn verdict(ok: bool, json: bool, what: &str) -> Result<(), Failure> {
    match (ok, json) {
        (true, _) => Ok(()),
        (false, true) => Err(mismatch(what)),
        (false, false) => Err(Failure::Mismatch),
    }
}

/// `--reg iou|giou`.
pub fn parse_reg(s: &str) -> Result<RegLoss, String> {
    s.parse::<RegLoss>().map_err(|e| e.to_string())
}

/// `--image HxW` (or `HXW`), both positive.
pub fn parse_image(s: &str) -> Result<(u32, u32), FcosError> {
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

/// The largest relative difference of two results' per-image losses, with the
/// tolerances of docs/contract.md §3.
pub fn loss_diff(got: &Losses, want: &Losses) -> f64 {
    got.max_rel_diff(want, REL_TOL, ABS_TOL)
}

/// Whether a [`loss_diff`] is within [`REL_TOL`].
pub fn losses_within(diff: f64) -> bool {
    diff <= REL_TOL
}

/// Whether a [`fcos_loss::max_head_error`] is within [`GRAD_TOL`].
pub fn grads_within(err: f64) -> bool {
    err <= GRAD_TOL
}

/// A result's losses as JSON: per image (`cls_loss`, `cnt_loss`, `reg_loss`,
/// `num_pos`), batch means (`*_mean`) and `total`.
pub fn losses_json(l: &Losses) -> Value {
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

/// A result's losses as JSON under `norm`: [`losses_json`] for `per-image`;
/// otherwise the normalised `cls_loss`, `cnt_loss`, `reg_loss` as one-element
/// lists, `total`, and `sums` with the per-image `cls`, `cnt`, `reg`, `reg_w`,
/// `num_pos`, `ctr` (present where the result has them).
pub fn losses_json_for(norm: NormArg, l: &Losses) -> Value {
    if norm == NormArg::PerImage {
        return losses_json(l);
    }
    let s = &l.sums;
    let sums = (!s.cls.is_empty()).then(|| {
        json!({
            "cls": s.cls,
            "cnt": s.cnt,
            "reg": s.reg,
            "reg_w": s.reg_w,
            "num_pos": s.num_pos,
            "ctr": s.ctr,
        })
    });
    json!({
        "cls_loss": [l.cls_loss],
        "cnt_loss": [l.cnt_loss],
        "reg_loss": [l.reg_loss],
        "total": l.total,
        "sums": sums,
    })
}

/// Median of millisecond times (mean of the middle two for an even count; NaN
/// for none).
pub fn median_ms(mut v: Vec<f64>) -> f64 {
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

/// The case's GPU call with its heads as the file stores them: a file of `F16`
/// or `BF16` heads is uploaded as 2-byte elements (docs/contract.md §9), any other
/// as `f32`. From `boxes` where given; with `weights`, forward and backward.
pub fn gpu_call(
    engine: &FcosLoss,
    case: &Case,
    boxes: Option<&CaseBoxes>,
    weights: Option<&LossWeights>,
) -> Result<(Losses, Option<Gradients>), FcosError> {
    let batch = &case.batch;
    let half = case.half.as_ref();
    if let Some(inputs) = half.and_then(|h| h.f16_inputs(batch)) {
        return call_with(engine, batch, &inputs, boxes, weights);
    }
    if let Some(inputs) = half.and_then(|h| h.bf16_inputs(batch)) {
        return call_with(engine, batch, &inputs, boxes, weights);
    }
    call_with(engine, batch, &batch.inputs(), boxes, weights)
}

/// The heads' element type [`gpu_call`] uploads.
pub fn heads_dtype(case: &Case) -> Dtype {
    case.half.as_ref().map_or(Dtype::F32, |h| h.dtype)
}

fn call_with<T: Element>(
    engine: &FcosLoss,
    batch: &Batch,
    inputs: &Inputs<T>,
    boxes: Option<&CaseBoxes>,
    weights: Option<&LossWeights>,
) -> Result<(Losses, Option<Gradients>), FcosError> {
    let levels = &batch.levels;
    let gt = boxes.map(|bx| bx.ground_truth(batch.batch));
    let preds = Predictions::of(inputs);
    Ok(match (gt, weights) {
        (Some(gt), Some(w)) => {
            let (l, g) = engine
                .forward_backward_from_boxes(levels, &preds, &gt, w)?
                .value;
            (l, Some(g))
        }
        (Some(gt), None) => (engine.compute_from_boxes(levels, &preds, &gt)?.value, None),
        (None, Some(w)) => {
            let (l, g) = engine.forward_backward(levels, inputs, w)?;
            (l, Some(g))
        }
        (None, None) => (engine.compute(levels, inputs)?, None),
    })
}

/// [`FcosLoss::capture`] (or, from `boxes`, `capture_from_boxes`) of the case's
/// call, its heads uploaded as the file stores them (as [`gpu_call`]).
pub fn gpu_capture(
    engine: &FcosLoss,
    case: &Case,
    boxes: Option<&CaseBoxes>,
    backward: bool,
    weights: &LossWeights,
) -> Result<fcos_loss::CallCapture, FcosError> {
    let batch = &case.batch;
    let half = case.half.as_ref();
    if let Some(inputs) = half.and_then(|h| h.f16_inputs(batch)) {
        return capture_with(engine, batch, &inputs, boxes, backward, weights);
    }
    if let Some(inputs) = half.and_then(|h| h.bf16_inputs(batch)) {
        return capture_with(engine, batch, &inputs, boxes, backward, weights);
    }
    capture_with(engine, batch, &batch.inputs(), boxes, backward, weights)
}

fn capture_with<T: Element>(
    engine: &FcosLoss,
    batch: &Batch,
    inputs: &Inputs<T>,
    boxes: Option<&CaseBoxes>,
    backward: bool,
    weights: &LossWeights,
) -> Result<fcos_loss::CallCapture, FcosError> {
    let levels = &batch.levels;
    match boxes {
        Some(bx) => engine.capture_from_boxes(
            levels,
            &Predictions::of(inputs),
            &bx.ground_truth(batch.batch),
            backward,
            weights,
        ),
        None => engine.capture(levels, inputs, backward, weights),
    }
}
