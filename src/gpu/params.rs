//! The uniform parameter block shared by every kernel (mirrored from `Params` in
//! `shaders/common.wgsl`), the per-image sums the finalize kernel writes and the
//! counts the count kernel writes.
//! Both layouts are checked against the WGSL structs by naga in a test.

use bytemuck::{Pod, Zeroable};

use crate::assign::AssignRule;
use crate::config::{LossConfig, LossWeights, Normalization, RegLoss};
use crate::layout::Levels;

/// `Params` of `shaders/common.wgsl`, byte for byte: one per dispatch segment.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub(crate) struct Params {
    /// Images `B` of the whole batch.
    pub batch: u32,
    /// Classes `C`.
    pub classes: u32,
    /// Positions per image `P`.
    pub positions: u32,
    /// The segment's level: offset in the flattened position axis.
    pub level_offset: u32,
    /// The segment's level: `H·W`.
    pub level_size: u32,
    /// First image of the segment.
    pub image0: u32,
    /// Workgroups along x: position tiles of the level.
    pub tiles: u32,
    /// Workgroups along y: class chunks.
    pub chunks: u32,
    /// Classes per chunk.
    pub classes_per_chunk: u32,
    /// Partial-sum slots per image over all levels.
    pub partials_per_image: u32,
    /// First slot of this level within an image's slots.
    pub slot_base: u32,
    /// 0 = IoU, 1 = GIoU.
    pub reg_mode: u32,
    /// Element offset of (level, image0) in the `cls_logits` binding.
    pub cls_base: u32,
    /// Element offset in the `cnt_logits` binding.
    pub cnt_base: u32,
    /// Element offset in the `reg_preds` binding.
    pub reg_base: u32,
    /// Element offset in the `cls_targets` and `cnt_targets` bindings.
    pub tgt_base: u32,
    /// `vec4` offset in the `reg_targets` binding.
    pub reg_tgt_base: u32,
    /// The normalisation: 0 per image, 1 batch, 2 global (docs/contract.md §8).
    pub norm_mode: u32,
    /// Focal γ.
    pub gamma: f32,
    /// Focal α.
    pub alpha: f32,
    /// Weight of `cls_loss` in the differentiated objective.
    pub w_cls: f32,
    /// Weight of `cnt_loss`.
    pub w_cnt: f32,
    /// Weight of `reg_loss`.
    pub w_reg: f32,
    /// 1 when the box loss is weighted by centerness.
    pub ctr_weighted: u32,
    /// Calls from boxes: ground-truth rows per image `M`.
    pub boxes_per_image: u32,
    /// The segment's level: `W`.
    pub level_width: u32,
    /// The segment's level: its stride.
    pub stride: u32,
    /// The level's assignment range `(lo, hi]`.
    pub range_lo: f32,
    /// Its upper end.
    pub range_hi: f32,
    /// `radius · stride` (`f32::MAX` without centre sampling).
    pub near: f32,
    /// 0 the notebook's rule, 1 mmdet's.
    pub assign_rule: u32,
    /// 1 when the class words are `f32`, 0 for `i32`.
    pub class_f32: u32,
    /// The first scale slot in the partials buffer (norm.wgsl's output: the
    /// denominators used, then each image's gradient factors).
    pub scale_base: u32,
    /// Element offset of (level, image0) in the `grad_cls` binding.
    pub grad_cls_base: u32,
    /// Element offset in the `grad_cnt` binding.
    pub grad_cnt_base: u32,
    /// Element offset in the `grad_reg` binding.
    pub grad_reg_base: u32,
    /// Half gradients (`pack_half.wgsl`): the run's first `f32` element in the
    /// source binding.
    pub pack_src_base: u32,
    /// Its first 2-byte element in the destination binding.
    pub pack_dst_base: u32,
    /// Its elements.
    pub pack_count: u32,
}

/// What the params of a call from boxes carry of its ground truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BoxSpec {
    /// Rows per image `M`.
    pub boxes_per_image: u32,
    /// The class words are `f32` (otherwise `i32`).
    pub class_f32: bool,
}

impl Params {
    /// The call's ground-truth fields.
    pub fn with_boxes(self, config: &LossConfig, spec: BoxSpec) -> Self {
        Params {
            boxes_per_image: spec.boxes_per_image,
            class_f32: u32::from(spec.class_f32),
            assign_rule: match config.assignment.rule {
                AssignRule::Fcos => 0,
                AssignRule::Mmdet => 1,
            },
            ..self
        }
    }

    /// The assignment fields of level `level` (zeros past the config's strides or
    /// ranges: a call from targets reads none of them).
    pub fn with_level_rule(self, config: &LossConfig, levels: &Levels, level: usize) -> Self {
        let stride = config.strides.get(level).copied().unwrap_or(0);
        let range = config
            .assignment
            .ranges
            .get(level)
            .copied()
            .unwrap_or([0.0; 2]);
        Params {
            level_width: levels.shapes()[level].1,
            stride,
            range_lo: range[0],
            range_hi: range[1],
            near: config.assignment.near_limit(stride),
            ..self
        }
    }

    /// The fields every segment of a call shares.
    pub fn global(config: &LossConfig, weights: &LossWeights, batch: u32, positions: u32) -> Self {
        Params {
            batch,
            classes: config.num_classes,
            positions,
            reg_mode: match config.reg_loss {
                RegLoss::Iou => 0,
                RegLoss::Giou => 1,
            },
            gamma: config.gamma,
            alpha: config.alpha,
            w_cls: weights.cls,
            w_cnt: weights.cnt,
            w_reg: weights.reg,
            norm_mode: match config.normalization {
                Normalization::PerImage => 0,
                Normalization::Batch => 1,
                Normalization::Global(_) => 2,
            },
            ctr_weighted: u32::from(config.centerness_weighted_reg),
            ..Params::zeroed()
        }
    }
}

/// One image's raw sums as the finalize kernel writes them (`ImageSums` in
/// `finalize.wgsl`; docs/contract.md §8).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub(crate) struct ImageSums {
    /// `S_cls`: focal loss summed over the image.
    pub cls: f32,
    /// `S_cnt`: centerness BCE summed over the positives.
    pub cnt: f32,
    /// `S_reg`: box loss summed over the positives.
    pub reg: f32,
    /// `S_regw`: box loss times centerness target, summed over the positives.
    pub reg_w: f32,
    /// `Z`: centerness targets summed over the positives.
    pub ctr: f32,
    /// `n`: positives.
    pub num_pos: u32,
    /// OR of the on-device check flags of the image ([`crate::Input`] flag bits).
    pub flags: u32,
    /// Padding.
    pub _pad0: u32,
}

/// One image's count as the count kernel writes it, and the call's totals as
/// the normalisation kernel writes them first (`Count` in `common.wgsl`): the
/// layout [`crate::FcosLoss::count_device`] documents.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub(crate) struct Count {
    /// Positives (a whole number, exact below 2^24).
    pub num_pos: f32,
    /// Centerness targets summed over the positives.
    pub ctr: f32,
}

/// Bytes of one workgroup partial (`Partial` in `common.wgsl`).
pub(crate) const PARTIAL_BYTES: u64 = 32;
