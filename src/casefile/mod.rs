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
    /// Whether the file holds the targets. A file with `gt_boxes` / `gt_classes`
    /// may leave all three out; `batch`'s targets are then background.
    pub targets_given: bool,
    /// `gt_boxes` / `gt_classes` (docs/contract.md §7), when the file has them.
    pub boxes: Option<CaseBoxes>,
    /// `expected.*` values, present when the file has `expected.cls_loss`,
    /// `expected.cnt_loss` and `expected.reg_loss`.
    pub expected: Option<Expected>,
    /// The heads as the file stores them, when every head level is `F16`, or
    /// every one `BF16` (docs/contract.md §9): the bits, for a call that uploads
    /// them as 2-byte elements. `batch` holds the same values widened to `f32`.
    pub half: Option<HalfHeads>,
}

/// A case's heads in half precision: one `u16` bit pattern per element, per
/// level, in the layouts of `Batch`'s heads.
#[derive(Debug, Clone, PartialEq)]
pub struct HalfHeads {
    /// `Dtype::F16` or `Dtype::Bf16`.
    pub dtype: crate::Dtype,
    /// The bits of each head, one vector per level.
    pub bits: crate::Heads<Vec<Vec<u16>>>,
}

impl HalfHeads {
    /// [`Inputs`](crate::Inputs) of `half::f16` over these bits and `batch`'s
    /// targets (`None` unless the dtype is `F16`).
    pub fn f16_inputs<'a>(&'a self, batch: &'a Batch) -> Option<crate::Inputs<'a, half::f16>> {
        (self.dtype == crate::Dtype::F16).then(|| self.inputs(batch))
    }

    /// [`Inputs`](crate::Inputs) of `half::bf16` (`None` unless the dtype is `Bf16`).
    pub fn bf16_inputs<'a>(&'a self, batch: &'a Batch) -> Option<crate::Inputs<'a, half::bf16>> {
        (self.dtype == crate::Dtype::Bf16).then(|| self.inputs(batch))
    }

    fn inputs<'a, T: crate::Element>(&'a self, batch: &'a Batch) -> crate::Inputs<'a, T> {
        let levels = |_, v: &'a Vec<Vec<u16>>| v.iter().map(|l| bytemuck::cast_slice(l)).collect();
        batch
            .inputs()
            .with_head_slices(self.bits.as_ref().map(levels))
    }
}

/// The ground truth of a case file: `gt_boxes [B, M, 4]` and `gt_classes [B, M]`
/// (any float or integer dtype; PyTorch writes `int64`).
#[derive(Debug, Clone, PartialEq)]
pub struct CaseBoxes {
    /// Rows per image `M`.
    pub boxes_per_image: usize,
    /// `[B, M, 4]`.
    pub boxes: Vec<f32>,
    /// `[B, M]`, as stored (widened to `f64`).
    pub classes: Vec<f64>,
}

impl CaseBoxes {
    /// The boxes as a call takes them, for `batch` images.
    pub fn ground_truth(&self, batch: usize) -> crate::GroundTruth<'_> {
        crate::GroundTruth {
            batch,
            boxes_per_image: self.boxes_per_image,
            boxes: &self.boxes,
            classes: crate::GtClasses::F64(&self.classes),
        }
    }
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
    /// `expected.sums.*`: the raw per-image sums of docs/contract.md §8, when present.
    pub sums: Option<ExpectedSums>,
    /// `expected.batch.*`: the `Batch` normalisation's losses, when present.
    pub batch: Option<ExpectedObjective>,
    /// `expected.global_ctr.*`: the `Global` normalisation with the case's own
    /// `N` and `Z` and the box loss weighted by centerness, when present.
    pub global_ctr: Option<ExpectedObjective>,
    /// `expected.grad_global_ctr.*`: gradients of the `global_ctr` objective
    /// `cls + cnt + reg` (IoU), when present.
    pub grad_global_ctr: Option<Gradients>,
}

/// The raw per-image sums of a case (`expected.sums.{name}`, each `[B]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ExpectedSums {
    /// `S_cls`.
    pub cls: Vec<f64>,
    /// `S_cnt`.
    pub cnt: Vec<f64>,
    /// `S_reg`, IoU.
    pub reg: Vec<f64>,
    /// `S_reg`, GIoU.
    pub reg_giou: Vec<f64>,
    /// `S_regw`, IoU: box loss times centerness target.
    pub reg_ctr: Vec<f64>,
    /// `S_regw`, GIoU.
    pub reg_ctr_giou: Vec<f64>,
    /// `n`: positives.
    pub num_pos: Vec<f64>,
    /// `Z`: centerness-target sum.
    pub ctr: Vec<f64>,
}

/// One normalisation's losses (`expected.{mode}.{name}_loss`, each `[1]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExpectedObjective {
    /// `cls_loss`.
    pub cls_loss: f64,
    /// `cnt_loss`.
    pub cnt_loss: f64,
    /// `reg_loss`, IoU.
    pub reg_loss: f64,
    /// `reg_loss`, GIoU.
    pub reg_giou_loss: f64,
}

/// The names of the sums, in [`ExpectedSums`] field order.
const SUMS: [&str; 8] = [
    "cls",
    "cnt",
    "reg",
    "reg_giou",
    "reg_ctr",
    "reg_ctr_giou",
    "num_pos",
    "ctr",
];
/// The names of an objective's losses, in [`ExpectedObjective`] field order.
const OBJECTIVE: [&str; 4] = ["cls_loss", "cnt_loss", "reg_loss", "reg_giou_loss"];
/// Prefix of the gradients of the `global_ctr` objective.
const GRAD_GLOBAL_CTR: &str = "expected.grad_global_ctr";

impl ExpectedSums {
    fn from_vecs(mut v: Vec<Vec<f64>>) -> Self {
        let mut next = || v.remove(0);
        ExpectedSums {
            cls: next(),
            cnt: next(),
            reg: next(),
            reg_giou: next(),
            reg_ctr: next(),
            reg_ctr_giou: next(),
            num_pos: next(),
            ctr: next(),
        }
    }

    fn as_vecs(&self) -> [&Vec<f64>; 8] {
        [
            &self.cls,
            &self.cnt,
            &self.reg,
            &self.reg_giou,
            &self.reg_ctr,
            &self.reg_ctr_giou,
            &self.num_pos,
            &self.ctr,
        ]
    }
}

impl ExpectedObjective {
    fn from_values(v: [f64; 4]) -> Self {
        let [cls_loss, cnt_loss, reg_loss, reg_giou_loss] = v;
        ExpectedObjective {
            cls_loss,
            cnt_loss,
            reg_loss,
            reg_giou_loss,
        }
    }

    fn values(&self) -> [f64; 4] {
        [
            self.cls_loss,
            self.cnt_loss,
            self.reg_loss,
            self.reg_giou_loss,
        ]
    }
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
