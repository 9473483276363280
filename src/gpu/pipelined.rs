//! The calls that do not block: recorded into the caller's command encoder and
//! read later ([`PendingLosses`]), and `async` calls from host slices. Several
//! recorded calls can be in flight at once, each over a result slot of its own (a
//! ring whose size is a setting).

use crate::config::LossWeights;
use crate::error::FcosError;
use crate::gpu::device;
use crate::gpu::device_inputs::{DeviceGradients, DeviceInputs};
use crate::gpu::engine::FcosLoss;
use crate::gpu::host;
use crate::gpu::pass::Pass;
use crate::gpu::pending::{self, PendingLosses};
use crate::gpu::ranges::{RangedGradients, RangedGroundTruth, RangedInputs, RangedPredictions};
use crate::gpu::ring::Ring;
use crate::input::Element;
use crate::inputs::Inputs;
use crate::layout::Levels;
use crate::losses::{Gradients, Losses};

impl FcosLoss {
    /// Records the loss of inputs on the device into `encoder` (with `grads`, the
    /// backward pass too, writing the gradients of `weights` there): counting,
    /// normalisation, fused pass, finalize, and the copy of the per-image results
    /// into a result slot of the engine's ring. Nothing is submitted, polled or
    /// mapped: submit the encoder (work recorded after the call in it can read
    /// [`PendingLosses::results`]), then read the losses with
    /// [`read_losses`](Self::read_losses) or [`try_read_losses`](Self::try_read_losses).
    /// The checks of [`compute_device`](Self::compute_device) run first; a bad
    /// input *value* is reported by the read. When every slot holds a call not yet
    /// read this is an [`FcosError::InvalidCall`]: read one, drop its handle, or
    /// [`set_ring_size`](Self::set_ring_size).
    pub fn record_device<'a>(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        levels: &'a Levels,
        inputs: &DeviceInputs<'a>,
        grads: Option<&'a DeviceGradients<'a>>,
        weights: &'a LossWeights,
    ) -> Result<PendingLosses<'a>, FcosError> {
        let pass = Pass::losses(grads.is_some());
        device::record(&self.core, encoder, levels, inputs, grads, pass, weights)
    }

    /// [`record_device`](Self::record_device) for inputs and gradients in
    /// per-level buffer ranges ([`compute_ranges`](Self::compute_ranges)).
    pub fn record_ranges<'a>(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        levels: &'a Levels,
        inputs: &RangedInputs<'a>,
        grads: Option<&RangedGradients<'a>>,
        weights: &'a LossWeights,
    ) -> Result<PendingLosses<'a>, FcosError> {
        let pass = Pass::losses(grads.is_some());
        device::record_ranges(&self.core, encoder, levels, inputs, grads, pass, weights)
    }

    /// [`record_ranges`](Self::record_ranges) from ground-truth boxes: the
    /// targets assigned inside the passes
    /// ([`compute_ranges_from_boxes`](Self::compute_ranges_from_boxes)). A bad
    /// box, class or prediction value is reported by the read.
    pub fn record_ranges_from_boxes<'a>(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        levels: &'a Levels,
        preds: &RangedPredictions<'a>,
        gt: &RangedGroundTruth<'a>,
        grads: Option<&RangedGradients<'a>>,
        weights: &'a LossWeights,
    ) -> Result<PendingLosses<'a>, FcosError> {
        let pass = Pass::losses(grads.is_some());
        device::record_ranges_from_boxes(
            &self.core, encoder, levels, preds, gt, grads, pass, weights,
        )
    }

    /// The losses of a recorded call, once the GPU has run it: waits without
    /// blocking the executor (the wait runs on a thread of its own; any executor
    /// works, pollster's `block_on` or tokio's). Frees the call's result slot. A
    /// call whose encoder was never submitted is an [`FcosError::InvalidCall`] (it
    /// can be read after submitting); a bad input value is the
    /// [`FcosError::Value`] the blocking calls return; a second read of one call
    /// is an error. Read after submitting: a read that maps the results while the
    /// encoder is submitted on another thread makes that submission invalid.
    pub async fn read_losses(&self, pending: &PendingLosses<'_>) -> Result<Losses, FcosError> {
        pending::read(&self.core, pending).await
    }

    /// One non-blocking step of reading a recorded call: `Ok(None)` while the GPU
    /// is still running it (call again later), `Ok(Some(losses))` once done, and
    /// the errors of [`read_losses`](Self::read_losses).
    pub fn try_read_losses(
        &self,
        pending: &PendingLosses<'_>,
    ) -> Result<Option<Losses>, FcosError> {
        pending::try_read(&self.core, pending)
    }

    /// [`compute`](Self::compute) without blocking the executor: uploads, submits,
    /// and awaits the read-back (on a thread of its own), over a result slot of
    /// the ring; when every slot is in use it waits (without blocking) for one to
    /// be freed. Same results as [`compute_timed`](Self::compute_timed), bit for
    /// bit; no kernel time. [`compute`](Self::compute) is this, blocked on.
    pub async fn compute_async<T: Element>(
        &self,
        levels: &Levels,
        inputs: &Inputs<'_, T>,
    ) -> Result<Losses, FcosError> {
        let weights = LossWeights::default();
        let (losses, _) =
            host::run_async(&self.core, levels, inputs, Pass::Forward, &weights).await?;
        Ok(losses)
    }

    /// [`forward_backward`](Self::forward_backward) without blocking the executor.
    pub async fn forward_backward_async<T: Element>(
        &self,
        levels: &Levels,
        inputs: &Inputs<'_, T>,
        weights: &LossWeights,
    ) -> Result<(Losses, Gradients), FcosError> {
        let (losses, grads) =
            host::run_async(&self.core, levels, inputs, Pass::Backward, weights).await?;
        let grads =
            grads.ok_or_else(|| FcosError::gpu("the backward pass returned no gradients"))?;
        Ok((losses, grads))
    }

    /// Result slots: how many recorded calls (and `async` calls) can be in flight
    /// at once (default [`DEFAULT_RING_SIZE`](crate::DEFAULT_RING_SIZE)). Each slot
    /// keeps the work buffers of the last call it held. Fails while a call is in
    /// flight, and for 0.
    pub fn set_ring_size(&mut self, slots: usize) -> Result<(), FcosError> {
        if slots == 0 {
            return Err(FcosError::InvalidConfig(
                "the ring needs at least one result slot".into(),
            ));
        }
        if self.core.ring.any_busy() {
            return Err(FcosError::InvalidCall(
                "the ring's size cannot change while recorded calls are not yet read".into(),
            ));
        }
        self.core.ring = std::sync::Arc::new(Ring::new(slots));
        Ok(())
    }

    /// Result slots of the ring.
    pub fn ring_size(&self) -> usize {
        self.core.ring.len()
    }
}
