//! The memory rooflines of the fused passes (`shaders/roofline.wgsl`): the bench
//! harness's measuring calls, built only with the `bench` feature.

use crate::gpu::call::Pass;
use crate::{DeviceGradients, DeviceInputs, FcosError, FcosLoss, Levels, LossWeights, Timed};

impl FcosLoss {
    /// The memory roofline of this call on this adapter: a kernel that reads exactly
    /// the bytes the fused forward pass reads, in the same layout and order, and only
    /// sums them. With checks on (the default) that is every input element, as the
    /// checked pass reads; with checks off, the class logits and targets everywhere
    /// and the centerness and box inputs at the positives. Its value is meaningless;
    /// its time is the point.
    pub fn roofline_device(
        &self,
        levels: &Levels,
        inputs: &DeviceInputs,
    ) -> Result<Timed<()>, FcosError> {
        let weights = LossWeights::default();
        let t = crate::gpu::device::run(
            self.core(),
            levels,
            inputs,
            None,
            None,
            Pass::Roofline,
            &weights,
        )?;
        Ok(t.map(drop))
    }

    /// The memory roofline of [`forward_backward_device`](Self::forward_backward_device)
    /// on this adapter: the same positive count, the same reads as the fused
    /// backward pass (every input element with checks on; without, the class logits
    /// and targets everywhere and the centerness and box inputs at the positives)
    /// and the same writes (every element of the three gradients once), with the
    /// maths replaced by a sum and a product (and no second read of the target
    /// class). Its losses are meaningless and it leaves meaningless values in
    /// `grads`; its time is the point: what moving the backward pass's bytes in its
    /// layout and order takes on this adapter, beside
    /// [`roofline_device`](Self::roofline_device) for the forward pass.
    pub fn backward_roofline_device(
        &self,
        levels: &Levels,
        inputs: &DeviceInputs,
        grads: &DeviceGradients,
    ) -> Result<Timed<()>, FcosError> {
        let weights = LossWeights::default();
        let pass = Pass::BackwardRoofline;
        let t = crate::gpu::device::run(
            self.core(),
            levels,
            inputs,
            Some(grads),
            None,
            pass,
            &weights,
        )?;
        Ok(t.map(drop))
    }
}
