//! What the commands share: the failure type and the one prefix of the CLI's own
//! error lines, argument parsers, tolerance checks, JSON helpers and timing.

use std::path::PathBuf;

use serde_json::{json, Value};

use fcos_loss::{FcosError, Losses, RegLoss, ABS_TOL, REL_TOL};

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
    /// Print one JSON object on stdout instead of the text.
    #[arg(long)]
    pub json: bool,
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
