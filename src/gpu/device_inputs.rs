//! Inputs and gradient outputs that already live on the device.

use crate::input::{ByInput, Heads, Input};

/// Inputs already on the device, for apps that produce them there.
///
/// Each head's levels are packed one after another in one buffer, each level NCHW
/// contiguous: level `l` of `cls_logits` starts at element `B·C·off_l` (byte
/// `4·B·C·off_l`), of `cnt_logits` at `B·off_l`, of `reg_preds` at `4·B·off_l`,
/// where `off_l = Σ_{k<l} H_k·W_k` ([`Levels::packed_offset`](crate::Levels::packed_offset)).
/// Targets are as in docs/contract.md §1: `cls_targets`, `cnt_targets` `[B, P]`,
/// `reg_targets` `[B, P, 4]`, `f32`. Every buffer needs `BufferUsages::STORAGE` and
/// must come from the engine's device.
#[derive(Debug, Clone, Copy)]
pub struct DeviceInputs<'a> {
    /// Images `B`.
    pub batch: usize,
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
