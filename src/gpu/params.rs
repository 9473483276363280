//! The uniform parameter block shared by every kernel (mirrored from `Params` in
//! `shaders/common.wgsl`) and the per-image result the finalize kernel writes.
//! Both layouts are checked against the WGSL structs by naga in a test.

use bytemuck::{Pod, Zeroable};

use crate::config::{LossConfig, LossWeights, RegLoss};

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
    /// Padding (γ = 2 is a pipeline constant, not a parameter).
    pub _pad0: u32,
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
    /// Padding to a multiple of 16 bytes.
    pub _pad1: u32,
}

impl Params {
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
            ..Params::zeroed()
        }
    }
}

/// One image's result as the finalize kernel writes it (`ImageLoss` in `finalize.wgsl`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub(crate) struct ImageLoss {
    /// Focal loss / num_pos.
    pub cls: f32,
    /// Centerness BCE / num_pos.
    pub cnt: f32,
    /// Box loss / num_pos.
    pub reg: f32,
    /// Positives.
    pub num_pos: u32,
    /// OR of the on-device check flags of the image ([`crate::Input`] flag bits).
    pub flags: u32,
    /// Padding.
    pub _pad0: u32,
    /// Padding.
    pub _pad1: u32,
    /// Padding.
    pub _pad2: u32,
}

/// Bytes of one workgroup partial (`Partial` in `common.wgsl`).
pub(crate) const PARTIAL_BYTES: u64 = 32;
