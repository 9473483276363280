//! The engine's calls from ground-truth boxes (docs/contract.md §7): the loss and
//! its gradients with each position's targets assigned inside the passes, and the
//! target pass for callers who want the target tensors.

use crate::assign::{GroundTruth, Predictions, Targets};
use crate::config::LossWeights;
use crate::counts::Counts;
use crate::error::FcosError;
use crate::gpu::call::GtBuffers;
use crate::gpu::capture::CallCapture;
use crate::gpu::device::gt_needs;
use crate::gpu::device_inputs::{
    ClassDtype, DeviceDenominators, DeviceGradients, DeviceGroundTruth, DevicePredictions,
    DeviceTargets,
};
use crate::gpu::engine::FcosLoss;
use crate::gpu::locate;
use crate::gpu::params::BoxSpec;
use crate::gpu::pass::Pass;
use crate::gpu::pool::{Need, Slot};
use crate::gpu::ranges::{RangedGradients, RangedGroundTruth, RangedPredictions};
use crate::gpu::target_pass::{self, TargetBuffers};
use crate::gpu::timed::Timed;
use crate::gpu::upload;
use crate::gpu::{device, host};
use crate::input::{Dtype, Element, Input};
use crate::layout::Levels;
use crate::losses::{Gradients, Losses};

impl FcosLoss {
    /// Loss of one batch from host slices of the predictions and the ground-truth
    /// boxes: each position's targets are assigned on the GPU inside the loss
    /// pass (the config's [`Assignment`](crate::Assignment)), never written to
    /// memory. Equal to [`compute`](Self::compute) on the targets
    /// [`assign_targets`](Self::assign_targets) gives.
    pub fn compute_from_boxes<T: Element>(
        &self,
        levels: &Levels,
        preds: &Predictions<T>,
        gt: &GroundTruth,
    ) -> Result<Timed<Losses>, FcosError> {
        let weights = LossWeights::default();
        let t = host::run_boxes(&self.core, levels, preds, gt, Pass::Forward, &weights)?;
        Ok(t.map(|(losses, _)| losses))
    }

    /// [`capture`](Self::capture) for the call
    /// [`compute_from_boxes`](Self::compute_from_boxes) (or, with `backward`,
    /// [`forward_backward_from_boxes`](Self::forward_backward_from_boxes)) makes.
    pub fn capture_from_boxes<T: Element>(
        &self,
        levels: &Levels,
        preds: &Predictions<T>,
        gt: &GroundTruth,
        backward: bool,
        weights: &LossWeights,
    ) -> Result<CallCapture, FcosError> {
        let pass = Pass::losses(backward);
        host::capture_boxes(&self.core, levels, preds, gt, pass, weights)
    }

    /// Losses and gradients from host slices and boxes, as
    /// [`forward_backward`](Self::forward_backward) on the assigned targets.
    pub fn forward_backward_from_boxes<T: Element>(
        &self,
        levels: &Levels,
        preds: &Predictions<T>,
        gt: &GroundTruth,
        weights: &LossWeights,
    ) -> Result<Timed<(Losses, Gradients)>, FcosError> {
        host::with_gradients(host::run_boxes(
            &self.core,
            levels,
            preds,
            gt,
            Pass::Backward,
            weights,
        )?)
    }

    /// Loss from device buffers of the predictions and boxes (see
    /// [`DevicePredictions`], [`DeviceGroundTruth`]); with `denominators`, the
    /// global normalisation reads them from that buffer (as
    /// [`compute_device_global`](Self::compute_device_global)).
    pub fn compute_device_from_boxes(
        &self,
        levels: &Levels,
        preds: &DevicePredictions,
        gt: &DeviceGroundTruth,
        denominators: Option<&DeviceDenominators>,
    ) -> Result<Timed<Losses>, FcosError> {
        let weights = LossWeights::default();
        device::run_boxes(
            &self.core,
            levels,
            preds,
            gt,
            None,
            denominators,
            Pass::Forward,
            &weights,
        )
    }

    /// Losses from device buffers and boxes, the gradients written into `grads`
    /// (as [`forward_backward_device`](Self::forward_backward_device)).
    pub fn forward_backward_device_from_boxes(
        &self,
        levels: &Levels,
        preds: &DevicePredictions,
        gt: &DeviceGroundTruth,
        grads: &DeviceGradients,
        weights: &LossWeights,
        denominators: Option<&DeviceDenominators>,
    ) -> Result<Timed<Losses>, FcosError> {
        device::run_boxes(
            &self.core,
            levels,
            preds,
            gt,
            Some(grads),
            denominators,
            Pass::Backward,
            weights,
        )
    }

    /// Loss from ground-truth boxes with the predictions and the boxes in ranges of
    /// device buffers, one range per level of each head ([`RangedPredictions`],
    /// [`RangedGroundTruth`]): [`compute_device_from_boxes`](Self::compute_device_from_boxes)
    /// for a framework's tensors. The checks of
    /// [`compute_ranges`](Self::compute_ranges) and of the boxes run first.
    pub fn compute_ranges_from_boxes(
        &self,
        levels: &Levels,
        preds: &RangedPredictions,
        gt: &RangedGroundTruth,
    ) -> Result<Losses, FcosError> {
        let weights = LossWeights::default();
        let t = device::run_ranges_from_boxes(
            &self.core,
            levels,
            preds,
            gt,
            None,
            Pass::Forward,
            &weights,
        )?;
        Ok(t.value)
    }

    /// Losses from ground-truth boxes, the gradients written into ranges of device
    /// buffers ([`forward_backward_ranges`](Self::forward_backward_ranges) with
    /// the targets assigned inside the passes). No gradient range may share a
    /// buffer with a prediction or the ground truth.
    pub fn forward_backward_ranges_from_boxes(
        &self,
        levels: &Levels,
        preds: &RangedPredictions,
        gt: &RangedGroundTruth,
        grads: &RangedGradients,
        weights: &LossWeights,
    ) -> Result<Losses, FcosError> {
        let t = device::run_ranges_from_boxes(
            &self.core,
            levels,
            preds,
            gt,
            Some(grads),
            Pass::Backward,
            weights,
        )?;
        Ok(t.value)
    }

    /// The target pass on host slices: assigns every position's targets from the
    /// boxes on the GPU and reads them back, in the layouts of docs/contract.md
    /// §1. Class and box targets equal
    /// [`reference::assign_targets`](crate::reference::assign_targets) bit for bit.
    pub fn assign_targets(
        &self,
        levels: &Levels,
        gt: &GroundTruth,
    ) -> Result<Timed<Targets>, FcosError> {
        let start = std::time::Instant::now();
        let core = &self.core;
        let b = gt.batch;
        core.check_batch(levels, b)?;
        let mut classes = Vec::new();
        let (uploads, spec) = upload::of_ground_truth(core, levels, gt, b, &mut classes)?;
        let p = levels.positions();
        if p == 0 {
            return Ok(Timed {
                value: Targets::background(b, 0),
                kernel: None,
                call: start.elapsed(),
            });
        }
        use wgpu::BufferUsages as U;
        let outputs = [Input::ClsTargets, Input::CntTargets, Input::RegTargets];
        let sizes = outputs.map(|i| core.bytes(i, levels, b, Dtype::F32));
        let mut extra = upload::needs(core, &uploads);
        extra.extend(outputs.iter().zip(sizes).map(|(&i, size)| Need {
            slot: Slot::Assigned(i),
            size,
            usage: U::STORAGE | U::COPY_SRC,
        }));
        let total: u64 = sizes.iter().sum();
        extra.push(Need {
            slot: Slot::AssignedReadback,
            size: total,
            usage: U::MAP_READ | U::COPY_DST,
        });
        let mut pool = core.lock_pool()?;
        let prepared = target_pass::prepare(core, &mut pool, levels, b, spec, extra)?;
        let pool = &*pool;
        upload::upload(core, pool, &uploads)?;
        let out = TargetBuffers {
            cls: pool.get(Slot::Assigned(Input::ClsTargets))?,
            cnt: pool.get(Slot::Assigned(Input::CntTargets))?,
            reg: pool.get(Slot::Assigned(Input::RegTargets))?,
        };
        let staging = pool.get(Slot::AssignedReadback)?;
        let gt_bufs = upload::pooled_ground_truth(pool, spec)?;
        let assigned = target_pass::run(
            core,
            pool,
            (&prepared.0, &prepared.1),
            gt_bufs,
            out,
            |encoder| {
                let mut at = 0;
                for (buf, size) in [out.cls, out.cnt, out.reg].into_iter().zip(sizes) {
                    encoder.copy_buffer_to_buffer(buf, 0, staging, at, size);
                    at += size;
                }
            },
        )?;
        if assigned.flags != 0 {
            return Err(FcosError::gpu(format!(
                "the target pass flagged boxes the host check passed (flags {:#x})",
                assigned.flags
            )));
        }
        let bytes = core.readback().read(staging, 0..total, None)?;
        let floats: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
        let (cls, rest) = floats.split_at(b * p);
        let (cnt, reg) = rest.split_at(b * p);
        Ok(Timed {
            value: Targets {
                cls_targets: cls.to_vec(),
                cnt_targets: cnt.to_vec(),
                reg_targets: reg.to_vec(),
            },
            kernel: assigned.kernel,
            call: start.elapsed(),
        })
    }

    /// The target pass on device buffers: writes the targets into `out` and
    /// returns each image's positives and centerness-target sum (what a replica
    /// all-reduces for [`Normalization::Global`](crate::Normalization::Global)).
    pub fn assign_targets_device(
        &self,
        levels: &Levels,
        batch: usize,
        gt: &DeviceGroundTruth,
        out: &DeviceTargets,
    ) -> Result<Timed<Counts>, FcosError> {
        let start = std::time::Instant::now();
        let core = &self.core;
        core.check_batch(levels, batch)?;
        core.check_assignment(levels)?;
        core.check_boxes(batch, gt.boxes_per_image)?;
        let mut named = gt_needs(gt, batch).to_vec();
        // The outputs: at least one word each.
        for (input, buf) in [
            (Input::ClsTargets, out.cls_targets),
            (Input::CntTargets, out.cnt_targets),
            (Input::RegTargets, out.reg_targets),
        ] {
            let need = core.bytes(input, levels, batch, Dtype::F32).max(4);
            named.push((format!("{input} buffer"), buf, need));
        }
        device::check_buffers(core, levels, batch, named, None, Dtype::F32)?;
        if levels.positions() == 0 {
            return Ok(Timed {
                value: Counts {
                    num_pos: vec![0; batch],
                    ctr: vec![0.0; batch],
                },
                kernel: None,
                call: start.elapsed(),
            });
        }
        let spec = BoxSpec {
            boxes_per_image: gt.boxes_per_image as u32,
            class_f32: gt.class_dtype == ClassDtype::F32,
        };
        let mut pool = core.lock_pool()?;
        let prepared = target_pass::prepare(core, &mut pool, levels, batch, spec, Vec::new())?;
        let assigned = target_pass::run(
            core,
            &pool,
            (&prepared.0, &prepared.1),
            GtBuffers {
                boxes: gt.boxes.into(),
                classes: gt.classes.into(),
                boxes_per_image: spec.boxes_per_image,
            },
            TargetBuffers {
                cls: out.cls_targets,
                cnt: out.cnt_targets,
                reg: out.reg_targets,
            },
            |_| {},
        )?;
        drop(pool);
        if assigned.flags != 0 {
            return Err(locate_gt_only(self, batch, gt, assigned.flags));
        }
        Ok(Timed {
            value: assigned.counts,
            kernel: assigned.kernel,
            call: start.elapsed(),
        })
    }
}

/// Names the first bad box or class of a flagged target pass.
fn locate_gt_only(
    engine: &FcosLoss,
    batch: usize,
    gt: &DeviceGroundTruth,
    flags: u32,
) -> FcosError {
    match locate::gt_error(&engine.core, batch, gt) {
        Ok(Some(e)) => e,
        Ok(None) => FcosError::gpu(format!(
            "the target pass flagged the boxes (flags {flags:#x}), but the host check of the same data found nothing wrong"
        )),
        Err(e) => FcosError::gpu(format!(
            "the target pass flagged the boxes (flags {flags:#x}), and reading them back failed: {e}"
        )),
    }
}
