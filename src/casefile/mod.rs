//! Case files: the safetensors format of docs/contract.md §5.
//!
//! A case file holds the network outputs per level (`cls_logits.{l}`,
//! `cnt_logits.{l}`, `reg_preds.{l}`), the flattened targets (`cls_targets`,
//! `cnt_targets`, `reg_targets`) and optionally the PyTorch results
//! (`expected.*`). [`read_case`] / [`parse_case`] read one into a [`Case`],
//! checking every shape against the layout of docs/contract.md §1; [`write_case`]
//! and [`write_tensors`] write `F32` files in the same names.
//!
//! Reading never panics on malformed bytes: every problem is an [`FcosError`]
//! with a one-line message naming the file or tensor, what was expected and
//! what was found.
//!
//! One job per file: `read.rs` (bytes and names to a [`Case`]), `decode.rs`
//! (dtypes to numbers), `write.rs` (a [`Case`] or plain tensors to a file),
//! `format.rs` (how messages write shapes).
//!
//! [`FcosError`]: crate::FcosError

mod decode;
mod format;
mod read;
mod write;

pub use read::{parse_case, read_case};
pub use write::{write_case, write_tensors};

use crate::{Batch, Gradients};

/// One case: the inputs of a loss call and, when the file carries them, the
/// PyTorch results to compare with.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// The inputs (levels, `B`, `C`, network outputs and targets).
    pub batch: Batch,
    /// `expected.*` values, present when the file has `expected.cls_loss`,
    /// `expected.cnt_loss` and `expected.reg_loss`.
    pub expected: Option<Expected>,
}

/// The reference results stored in a case file (docs/contract.md §5).
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    /// `expected.cls_loss`, per image, `[B]`.
    pub cls_loss: Vec<f64>,
    /// `expected.cnt_loss`, per image, `[B]`.
    pub cnt_loss: Vec<f64>,
    /// `expected.reg_loss` (IoU mode), per image, `[B]`.
    pub reg_loss: Vec<f64>,
    /// `expected.reg_loss_giou` (GIoU mode), per image, `[B]`, when present.
    pub reg_loss_giou: Option<Vec<f64>>,
    /// `expected.grad.*`: gradients of `cls_loss + cnt_loss + reg_loss` (IoU mode),
    /// when present.
    pub grad: Option<Gradients>,
    /// `expected.grad_giou.reg_preds.{l}`: gradient of the GIoU `reg_loss` with
    /// respect to `reg_preds`, per level, flat NCHW, when present.
    pub grad_giou_reg: Option<Vec<Vec<f32>>>,
}

/// The per-image losses of the IoU objective: `expected.{cls,cnt,reg}_loss`.
const LOSSES: [&str; 3] = [
    "expected.cls_loss",
    "expected.cnt_loss",
    "expected.reg_loss",
];
/// The per-image box loss in GIoU mode.
const REG_LOSS_GIOU: &str = "expected.reg_loss_giou";
/// Prefix of the gradients of the IoU objective: `expected.grad.{head}.{l}`.
const GRAD: &str = "expected.grad";
/// Prefix of the GIoU box gradient: `expected.grad_giou.reg_preds.{l}`.
const GRAD_GIOU_REG: &str = "expected.grad_giou.reg_preds";
