//! What every stage of a call reads: the device, the configuration, the pipeline
//! cache, the buffer pool and the settings. [`crate::FcosLoss`] wraps one; the
//! host path, the device path and the call's stages borrow it.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::config::{LossConfig, LossWeights};
use crate::error::FcosError;
use crate::gpu::context::GpuContext;
use crate::gpu::params::BoxSpec;
use crate::gpu::pass::Pass;
use crate::gpu::pipelines::Pipelines;
use crate::gpu::plan::{Origins, Plan, PlanLimits};
use crate::gpu::pool::Pool;
use crate::gpu::readback::Readback;
use crate::gpu::ring::Ring;
use crate::gpu::uniforms::ParamSlots;
use crate::input::{Dtype, Head, Input};
use crate::layout::Levels;
use crate::losses::{Gradients, Losses, Sums};

/// The engine's state.
#[derive(Debug)]
pub(crate) struct Core {
    pub ctx: GpuContext,
    pub config: LossConfig,
    pub pipelines: Pipelines,
    pub pool: Mutex<Pool>,
    /// The result slots of recorded calls.
    pub ring: Arc<Ring>,
    /// Two timestamp queries around the compute pass, where the device has them.
    pub query_set: Option<wgpu::QuerySet>,
    pub timeout: Duration,
    pub target_workgroups: u32,
    pub checks: bool,
    /// Backward passes over half heads write half gradients.
    pub half_grads: bool,
}

impl Core {
    /// Classes `C`.
    pub fn classes(&self) -> usize {
        self.config.num_classes as usize
    }

    /// Bytes of `input` for `b` images at `levels`, the heads of `heads`.
    pub fn bytes(&self, input: Input, levels: &Levels, b: usize, heads: Dtype) -> u64 {
        input.bytes(levels, b, self.classes(), heads)
    }

    /// Whether `pass` over heads of `heads` writes its gradients in their half
    /// dtype (through `f32` ones and the pack).
    pub fn packs_half(&self, heads: Dtype, pass: Pass) -> bool {
        self.half_grads && heads.is_half() && pass.writes_gradients()
    }

    /// The element type `pass` writes its gradients in over heads of `heads`.
    pub fn grad_dtype(&self, heads: Dtype, pass: Pass) -> Dtype {
        if self.packs_half(heads, pass) {
            heads
        } else {
            Dtype::F32
        }
    }

    /// Bytes of `head`'s gradient in `dtype` for `b` images at `levels`, rounded
    /// up to a whole 4-byte word.
    pub fn grad_bytes_as(&self, head: Head, levels: &Levels, b: usize, dtype: Dtype) -> u64 {
        head.input()
            .bytes(levels, b, self.classes(), dtype)
            .next_multiple_of(4)
    }

    /// Bytes of `head`'s `f32` gradient for `b` images at `levels`.
    pub fn grad_bytes(&self, head: Head, levels: &Levels, b: usize) -> u64 {
        head.input().bytes(levels, b, self.classes(), Dtype::F32)
    }

    /// Mapping with this engine's timeout.
    pub fn readback(&self) -> Readback<'_> {
        Readback {
            ctx: &self.ctx,
            timeout: self.timeout,
        }
    }

    /// The pool, once the device is known to be healthy.
    pub fn lock_pool(&self) -> Result<MutexGuard<'_, Pool>, FcosError> {
        self.ctx.health()?;
        // Every pooled buffer is replaced whole, so a lock poisoned by a panic in
        // another thread still guards a consistent pool.
        Ok(self.pool.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The dispatches of a call of `b` images (`f32` heads, packed).
    pub fn plan(&self, levels: &Levels, b: usize) -> Result<Plan, FcosError> {
        self.plan_at(levels, b, None)
    }

    /// [`plan`](Self::plan) for inputs and gradients at `origins` (packed `f32`
    /// when `None`).
    pub fn plan_at(
        &self,
        levels: &Levels,
        b: usize,
        origins: Option<&Origins>,
    ) -> Result<Plan, FcosError> {
        if b as u64 > u32::MAX as u64 {
            return Err(FcosError::Limit(format!("B = {b} images is too many")));
        }
        let (b, c) = (b as u32, self.config.num_classes);
        let packed;
        let origins = match origins {
            Some(o) => o,
            None => {
                packed = Origins::packed(levels, b, c, Dtype::F32);
                &packed
            }
        };
        Plan::with_origins(
            levels,
            b,
            c,
            self.pipelines.spec().workgroup_size,
            self.target_workgroups,
            PlanLimits::of(&self.ctx.limits),
            origins,
        )
    }

    /// Every tensor of a call of `b` images packed in its own buffer, the heads of
    /// `heads`.
    pub fn packed_origins(
        &self,
        levels: &Levels,
        b: usize,
        heads: Dtype,
    ) -> Result<Origins, FcosError> {
        let b = u32::try_from(b)
            .map_err(|_| FcosError::Limit(format!("B = {b} images is too many")))?;
        Ok(Origins::packed(levels, b, self.config.num_classes, heads))
    }

    /// The plan of a call of `b` images and its packed `Params` (with the ground
    /// truth's fields for a call from boxes).
    pub fn plan_with_params(
        &self,
        levels: &Levels,
        b: usize,
        weights: &LossWeights,
        boxes: Option<BoxSpec>,
    ) -> Result<(Plan, ParamSlots), FcosError> {
        self.plan_with_params_at(levels, b, weights, boxes, None)
    }

    /// [`plan_with_params`](Self::plan_with_params) for inputs and gradients at
    /// `origins` (packed when `None`).
    pub fn plan_with_params_at(
        &self,
        levels: &Levels,
        b: usize,
        weights: &LossWeights,
        boxes: Option<BoxSpec>,
        origins: Option<&Origins>,
    ) -> Result<(Plan, ParamSlots), FcosError> {
        let plan = self.plan_at(levels, b, origins)?;
        let alignment = self.ctx.limits.min_uniform_buffer_offset_alignment;
        let params = ParamSlots::pack(&self.config, weights, levels, &plan, boxes, alignment);
        Ok((plan, params))
    }

    /// `B = 0` and element counts beyond the address space are shape errors.
    pub fn check_batch(&self, levels: &Levels, b: usize) -> Result<(), FcosError> {
        if b == 0 {
            return Err(FcosError::shape("batch", "B >= 1", "B = 0"));
        }
        crate::inputs::check_extent(levels, b, self.classes())
    }

    /// The host path's buffers against `max_buffer_size`: each input, the staging
    /// buffer that holds all six (where the upload is not zero-copy) and, for the
    /// backward pass, the readback buffer that holds the three gradients.
    pub fn check_buffer_sizes(
        &self,
        levels: &Levels,
        b: usize,
        heads: Dtype,
        backward: bool,
    ) -> Result<(), FcosError> {
        let max = self.ctx.limits.max_buffer_size;
        for input in Input::ALL {
            let n = self.bytes(input, levels, b, heads);
            if n > max || n > u32::MAX as u64 * 4 {
                return Err(FcosError::Limit(format!(
                    "{input} needs a {n}-byte buffer; the adapter allows max_buffer_size = {max}"
                )));
            }
        }
        let staged: u64 = Input::ALL
            .iter()
            .map(|&i| self.bytes(i, levels, b, heads).next_multiple_of(4))
            .sum();
        if !self.ctx.zero_copy_upload() && staged > max {
            return Err(FcosError::Limit(format!(
                "the host path stages all six inputs in one {staged}-byte buffer; the adapter allows max_buffer_size = {max} (pass device buffers instead, or a smaller batch)"
            )));
        }
        let grads: u64 = Head::ALL
            .iter()
            .map(|&h| self.grad_bytes(h, levels, b))
            .sum();
        if backward && grads > max {
            return Err(FcosError::Limit(format!(
                "the host path reads the three gradients back through one {grads}-byte buffer; the adapter allows max_buffer_size = {max} (pass device gradient buffers instead, or a smaller batch)"
            )));
        }
        Ok(())
    }

    /// A call from boxes needs a stride and an assignment range for each level.
    pub fn check_assignment(&self, levels: &Levels) -> Result<(), FcosError> {
        let strides = &self.config.strides;
        if strides.len() < levels.len() {
            return Err(FcosError::InvalidConfig(format!(
                "targets from boxes need a stride per level: {} levels, strides {strides:?}",
                levels.len()
            )));
        }
        self.config.assignment.validate(strides)
    }

    /// `B·M` box rows against the device: the boxes are bound whole (16 bytes a
    /// row), so they must fit one storage binding.
    pub fn check_boxes(&self, b: usize, m: usize) -> Result<(), FcosError> {
        let rows = (b as u64).saturating_mul(m as u64);
        let bytes = rows.saturating_mul(16);
        let max = self
            .ctx
            .limits
            .max_storage_buffer_binding_size
            .min(self.ctx.limits.max_buffer_size);
        if bytes > max || rows > u32::MAX as u64 {
            return Err(FcosError::Limit(format!(
                "B·M = {b}·{m} ground-truth boxes need a {bytes}-byte binding; the adapter allows {max} (max_storage_buffer_binding_size)"
            )));
        }
        Ok(())
    }

    /// The result of a call over levels without positions.
    pub fn zero_losses(&self, b: usize) -> Losses {
        Losses::from_sums(Sums::zeros(b), &self.config, None)
    }

    /// Gradients of a call over levels without positions.
    pub fn empty_grads(&self, levels: &Levels, b: usize) -> Gradients {
        Gradients::zeros(levels, b, self.classes())
    }
}
