//! Kernel times from ground-truth boxes (docs/contract.md §7), measured in the
//! same sitting as the rest of a [`BenchReport`](super::BenchReport): `M` boxes
//! per image drawn as the peer script `gen_targets.random_boxes` draws them
//! ([`RandomBoxes`]), on the workload's device and predictions.
//!
//! Per repetition: the fused loss from boxes (device buffers; its kernel time),
//! the target pass alone (kernel time), the whole from-boxes call from host
//! slices (upload, kernels, readback: wall clock) and, where the backward pass is
//! timed, the fused forward + backward from boxes.

use serde::Serialize;

use super::workload::Workload;
use crate::synthetic::RandomBoxes;
use crate::{
    ClassDtype, DeviceGroundTruth, DevicePredictions, DeviceTargets, FcosError, Losses,
    Predictions, Timed,
};

/// `M` boxes per image of a [`Workload`]'s images on the device, and the target
/// pass's outputs: the calls from boxes the report times.
#[derive(Debug)]
pub struct BoxRuns {
    drawn: RandomBoxes,
    boxes: wgpu::Buffer,
    classes: wgpu::Buffer,
    targets: [wgpu::Buffer; 3],
}

impl BoxRuns {
    /// Draws `m` boxes per image of the workload's images
    /// ([`RandomBoxes::draw`]) and uploads them (classes as `i32`).
    pub fn new(work: &Workload<'_>, m: usize) -> Result<Self, FcosError> {
        let spec = work.spec();
        let (h, w) = spec.image;
        let drawn = RandomBoxes::draw(spec.batch, m, h, w, spec.classes, spec.seed ^ 0xb0c5);
        let device = &work.engine().context().device;
        let ints: Vec<i32> = drawn.classes.iter().map(|&c| c as i32).collect();
        let scope = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let make = |label: &str, bytes: &[u8], size: u64| {
            let buffer = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: size.max(16).next_multiple_of(4),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            if !bytes.is_empty() {
                work.engine()
                    .context()
                    .queue
                    .write_buffer(&buffer, 0, bytes);
            }
            buffer
        };
        let p = work.levels().positions() as u64;
        let b = spec.batch as u64;
        let boxes = make(
            "bench gt_boxes",
            bytemuck::cast_slice(&drawn.boxes),
            4 * drawn.boxes.len() as u64,
        );
        let classes = make(
            "bench gt_classes",
            bytemuck::cast_slice(&ints),
            4 * ints.len() as u64,
        );
        let targets = [
            make("bench cls_targets", &[], 4 * b * p),
            make("bench cnt_targets", &[], 4 * b * p),
            make("bench reg_targets", &[], 16 * b * p),
        ];
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(FcosError::gpu_from(format!("bench box buffers: {e}"), e));
        }
        Ok(BoxRuns {
            drawn,
            boxes,
            classes,
            targets,
        })
    }

    fn gt(&self) -> DeviceGroundTruth<'_> {
        DeviceGroundTruth {
            boxes_per_image: self.drawn.boxes_per_image,
            boxes: &self.boxes,
            classes: &self.classes,
            class_dtype: ClassDtype::I32,
        }
    }

    fn preds<'w>(work: &'w Workload<'_>) -> DevicePredictions<'w> {
        DevicePredictions::of(&work.device_inputs())
    }

    /// The fused loss from boxes on device buffers.
    pub fn forward(&self, work: &Workload<'_>) -> Result<Timed<Losses>, FcosError> {
        work.engine()
            .compute_device_from_boxes(work.levels(), &Self::preds(work), &self.gt(), None)
    }

    /// The target pass alone, into device buffers.
    pub fn targets(&self, work: &Workload<'_>) -> Result<Timed<crate::Counts>, FcosError> {
        let [cls, cnt, reg] = &self.targets;
        let out = DeviceTargets {
            cls_targets: cls,
            cnt_targets: cnt,
            reg_targets: reg,
        };
        work.engine()
            .assign_targets_device(work.levels(), work.spec().batch, &self.gt(), &out)
    }

    /// The whole call from host slices (upload, kernels, readback).
    pub fn host_call(&self, work: &Workload<'_>) -> Result<Timed<Losses>, FcosError> {
        let batch = work.host_batch();
        let preds = Predictions::of(&batch.inputs());
        work.engine().compute_from_boxes(
            work.levels(),
            &preds,
            &self.drawn.ground_truth(batch.batch),
        )
    }

    /// The fused forward + backward from boxes into the workload's gradient
    /// buffers; `None` where the device cannot hold them.
    pub fn forward_backward(
        &self,
        work: &Workload<'_>,
    ) -> Result<Option<Timed<Losses>>, FcosError> {
        work.with_grads(|grads| {
            work.engine().forward_backward_device_from_boxes(
                work.levels(),
                &Self::preds(work),
                &self.gt(),
                grads,
                work.weights(),
                None,
            )
        })
    }

    /// The largest relative difference between the fused loss from boxes and the
    /// two-step path (the target pass, then the loss on its targets), on the GPU.
    pub fn two_step_diff(&self, work: &Workload<'_>) -> Result<f64, FcosError> {
        let batch = work.host_batch();
        let engine = work.engine();
        let gt = self.drawn.ground_truth(batch.batch);
        let targets = engine.assign_targets(work.levels(), &gt)?.value;
        let preds = Predictions::of(&batch.inputs());
        let two = engine.compute(work.levels(), &preds.with_targets(&targets))?;
        let fused = engine.compute_from_boxes(work.levels(), &preds, &gt)?.value;
        Ok(fused.max_rel_diff(&two, 1e-6, 1e-12))
    }
}

/// The from-boxes times of a report (medians over the repetitions, ms). In the
/// JSON their keys sit beside the others, and are absent when not measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BoxTimes {
    /// Ground-truth rows per image `M`.
    pub boxes: usize,
    /// The fused loss from boxes (targets assigned in registers), kernel time.
    pub boxes_kernel_ms: f64,
    /// Its fastest repetition.
    pub boxes_kernel_min_ms: f64,
    /// The target pass alone, kernel time.
    pub targets_kernel_ms: f64,
    /// `boxes_kernel_ms / kernel_ms`: the fused loss from boxes against the fused
    /// loss from target tensors, same sitting.
    pub boxes_over_targets: f64,
    /// The whole from-boxes call from host slices (upload, kernels, readback).
    pub boxes_call_ms: f64,
    /// The fused forward + backward from boxes, kernel time (where timed).
    pub boxes_backward_kernel_ms: Option<f64>,
    /// Positives the boxes give the batch.
    pub boxes_positives: u64,
    /// The fused loss from boxes against the two-step path, largest relative
    /// difference (docs/contract.md §7 asks for 1e-6).
    pub boxes_max_rel_diff: f64,
}
