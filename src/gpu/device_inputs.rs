//! Inputs and gradient outputs that already live on the device.

use crate::input::{ByInput, Dtype, Head, Heads, Input};

/// Inputs already on the device, for apps that produce them there.
///
/// Each head's levels are packed one after another in one buffer, each level NCHW
/// contiguous: level `l` of `cls_logits` starts at element `B·C·off_l` (byte
/// `4·B·C·off_l`), of `cnt_logits` at `B·off_l`, of `reg_preds` at `4·B·off_l`,
/// where `off_l = Σ_{k<l} H_k·W_k` ([`Levels::packed_offset`](crate::Levels::packed_offset)).
/// Targets are as in docs/contract.md §1: `cls_targets`, `cnt_targets` `[B, P]`,
/// `reg_targets` `[B, P, 4]`, `f32`. Every buffer needs `BufferUsages::STORAGE` and
/// must come from the engine's device.
///
/// The heads' elements are `dtype`: `f32` (4 bytes), or `f16` / `bf16` (2 bytes,
/// element offsets as above, so level `l` of `cls_logits` starts at byte
/// `2·B·C·off_l`), widened exactly on the device (docs/contract.md §9). A half
/// head's buffer holds its bytes rounded up to a whole 4-byte word.
#[derive(Debug, Clone, Copy)]
pub struct DeviceInputs<'a> {
    /// Images `B`.
    pub batch: usize,
    /// The element type of the three heads (targets are `f32`).
    pub dtype: Dtype,
    /// `Σ_l B·C·H_l·W_l` floats.
    pub cls_logits: &'a wgpu::Buffer,
    /// `B·P` floats.
    pub cnt_logits: &'a wgpu::Buffer,
    /// `4·B·P` floats.
    pub reg_preds: &'a wgpu::Buffer,
    /// `B·P` floats.
    pub cls_targets: &'a wgpu::Buffer,
    /// `B·P` floats.
    pub cnt_targets: &'a wgpu::Buffer,
    /// `4·B·P` floats.
    pub reg_targets: &'a wgpu::Buffer,
}

impl<'a> DeviceInputs<'a> {
    /// The buffer holding `input`.
    pub fn buffer(&self, input: Input) -> &'a wgpu::Buffer {
        match input {
            Input::ClsLogits => self.cls_logits,
            Input::CntLogits => self.cnt_logits,
            Input::RegPreds => self.reg_preds,
            Input::ClsTargets => self.cls_targets,
            Input::CntTargets => self.cnt_targets,
            Input::RegTargets => self.reg_targets,
        }
    }

    pub(crate) fn buffers(&self) -> ByInput<&'a wgpu::Buffer> {
        ByInput::from_fn(|input| self.buffer(input))
    }
}

/// Network outputs on the device for a call from boxes: the three heads of
/// [`DeviceInputs`], laid out the same way (levels packed, NCHW, elements of
/// `dtype`), without targets.
#[derive(Debug, Clone, Copy)]
pub struct DevicePredictions<'a> {
    /// Images `B`.
    pub batch: usize,
    /// The element type of the three heads.
    pub dtype: Dtype,
    /// `Σ_l B·C·H_l·W_l` floats.
    pub cls_logits: &'a wgpu::Buffer,
    /// `B·P` floats.
    pub cnt_logits: &'a wgpu::Buffer,
    /// `4·B·P` floats.
    pub reg_preds: &'a wgpu::Buffer,
}

impl<'a> DevicePredictions<'a> {
    /// The heads of `inputs`.
    pub fn of(inputs: &DeviceInputs<'a>) -> Self {
        DevicePredictions {
            batch: inputs.batch,
            dtype: inputs.dtype,
            cls_logits: inputs.cls_logits,
            cnt_logits: inputs.cnt_logits,
            reg_preds: inputs.reg_preds,
        }
    }

    /// The buffer holding `head`.
    pub fn buffer(&self, head: Head) -> &'a wgpu::Buffer {
        match head {
            Head::ClsLogits => self.cls_logits,
            Head::CntLogits => self.cnt_logits,
            Head::RegPreds => self.reg_preds,
        }
    }
}

/// The element type of a device class buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassDtype {
    /// Whole numbers in `f32`.
    F32,
    /// `i32`.
    I32,
}

/// Ground-truth boxes on the device (docs/contract.md §7), `M` rows per image:
/// `boxes` `[B, M, 4]` `f32` (`x1, y1, x2, y2`), `classes` `[B, M]` of
/// `class_dtype` (`1..=C`, below 1 pads). Both need `BufferUsages::STORAGE` and
/// start at byte 0; even when `M = 0`, `boxes` holds at least 16 bytes and
/// `classes` at least 4. Bad values (a
/// coordinate not finite, a class not whole or above `C`) are flagged on the
/// device and named, with their index, by [`FcosError::Value`](crate::FcosError).
#[derive(Debug, Clone, Copy)]
pub struct DeviceGroundTruth<'a> {
    /// Rows per image `M`.
    pub boxes_per_image: usize,
    /// `[B, M, 4]` `f32`.
    pub boxes: &'a wgpu::Buffer,
    /// `[B, M]`.
    pub classes: &'a wgpu::Buffer,
    /// The element type of `classes`.
    pub class_dtype: ClassDtype,
}

/// Where [`FcosLoss::assign_targets_device`](crate::FcosLoss::assign_targets_device)
/// writes the targets: `cls_targets`, `cnt_targets` `[B, P]` and `reg_targets`
/// `[B, P, 4]`, `f32` (docs/contract.md §1), each from byte 0 of a buffer with
/// `BufferUsages::STORAGE`; [`DeviceInputs`] can read them as they are.
#[derive(Debug, Clone, Copy)]
pub struct DeviceTargets<'a> {
    /// `B·P` floats.
    pub cls_targets: &'a wgpu::Buffer,
    /// `B·P` floats.
    pub cnt_targets: &'a wgpu::Buffer,
    /// `4·B·P` floats.
    pub reg_targets: &'a wgpu::Buffer,
}

/// Gradient buffers on the device, one per head, laid out exactly like the
/// matching [`DeviceInputs`] heads (levels packed, NCHW). Each needs
/// `BufferUsages::STORAGE`.
pub type DeviceGradients<'a> = Heads<&'a wgpu::Buffer>;

/// The denominators of [`Normalization::Global`](crate::Normalization::Global) in a
/// device buffer: two `f32`, `N_g` then `Z_g`, at `offset` (a multiple of the
/// device's `min_storage_buffer_offset_alignment`). Slot 0 of
/// [`FcosLoss::count_device`](crate::FcosLoss::count_device)'s output has this
/// layout, so an all-reduce (sum, then divide by the replicas) in place feeds the
/// loss call with no host round trip. The buffer needs `BufferUsages::STORAGE`,
/// and its two values must be finite and not negative: the shader cannot tell
/// NaN or infinity (WGSL lets it assume neither), so unlike the host values of
/// [`Denominators`](crate::Denominators) they are not checked.
#[derive(Debug, Clone, Copy)]
pub struct DeviceDenominators<'a> {
    /// The buffer.
    pub buffer: &'a wgpu::Buffer,
    /// Byte offset of `N_g`.
    pub offset: u64,
}
