//! The error path of the on-device checks: when the fused pass flags a bad input,
//! bring the inputs to the host in bounded chunks (raw bits, through
//! `copy_words.wgsl`, so the user's buffers need no `COPY_SRC`) and let the host
//! validator name the first bad element. The host path, whose slices are at hand,
//! goes straight to that last step ([`name_bad_input`]).

use crate::assign::{GroundTruth, GtClasses, Predictions, Targets};
use crate::error::FcosError;
use crate::gpu::core::Core;
use crate::gpu::device_inputs::{ClassDtype, DeviceGroundTruth, DeviceInputs, DevicePredictions};
use crate::gpu::pipelines::Pipeline;
use crate::gpu::ranges::{BufferRange, RangedGroundTruth, RangedInputs, RangedPredictions, Ranges};
use crate::gpu::scope::scoped;
use crate::gpu::shaders::Kernel;
use crate::input::{widen_bytes, ByInput, Dtype, Element, Head, Heads, Input};
use crate::inputs::Inputs;
use crate::layout::Levels;

/// Largest chunk the copy moves at once (also bounded by the binding limit).
const CHUNK_BYTES: u64 = 32 << 20;

/// The error for a device call from boxes the on-device checks flagged: the
/// boxes and classes are read back and checked first (they are small), then the
/// predictions.
pub(crate) fn locate_bad_boxes(
    core: &Core,
    levels: &Levels,
    preds: &DevicePredictions,
    gt: &DeviceGroundTruth,
    flags: u32,
) -> FcosError {
    match read_boxes_and_heads(core, levels, preds, gt, flags) {
        Ok(e) => e,
        Err(e) => FcosError::gpu(format!(
            "the on-device checks flagged bad values (flags {flags:#x}), and reading them back to locate the first one failed: {e}"
        )),
    }
}

fn read_boxes_and_heads(
    core: &Core,
    levels: &Levels,
    preds: &DevicePredictions,
    gt: &DeviceGroundTruth,
    flags: u32,
) -> Result<FcosError, FcosError> {
    if let Some(e) = gt_error(core, preds.batch, gt)? {
        return Ok(e);
    }
    let copy = core.pipelines.get(&core.ctx.device, Kernel::CopyWords)?;
    let b = preds.batch;
    let heads = Heads::try_from_fn(|h| {
        read_elements(
            core,
            &copy,
            preds.buffer(h),
            0,
            levels,
            b,
            h.input(),
            preds.dtype,
        )
    })?;
    let split = |head: Head| split_levels(core, levels, b, head, &heads[head]);
    let view = Predictions {
        batch: b,
        cls_logits: split(Head::ClsLogits),
        cnt_logits: split(Head::CntLogits),
        reg_preds: split(Head::RegPreds),
    };
    Ok(name_bad_prediction(core, levels, &view, flags))
}

/// Reads a device ground truth back and checks it on the host: its first bad
/// value, if any.
pub(crate) fn gt_error(
    core: &Core,
    b: usize,
    gt: &DeviceGroundTruth,
) -> Result<Option<FcosError>, FcosError> {
    let ranged = RangedGroundTruth {
        boxes_per_image: gt.boxes_per_image,
        boxes: gt.boxes.into(),
        classes: gt.classes.into(),
        class_dtype: gt.class_dtype,
    };
    ranged_gt_error(core, b, &ranged)
}

/// [`gt_error`] for ground truth in buffer ranges.
fn ranged_gt_error(
    core: &Core,
    b: usize,
    gt: &RangedGroundTruth,
) -> Result<Option<FcosError>, FcosError> {
    let copy = core.pipelines.get(&core.ctx.device, Kernel::CopyWords)?;
    let rows = (b * gt.boxes_per_image) as u64;
    let read = |r: BufferRange, bytes: u64| read_words_at(core, &copy, r.buffer, r.offset, bytes);
    let boxes = read(gt.boxes, 16 * rows)?;
    let words = read(gt.classes, 4 * rows)?;
    let ints: Vec<i32>;
    let classes = match gt.class_dtype {
        ClassDtype::F32 => GtClasses::F32(&words),
        ClassDtype::I32 => {
            ints = words.iter().map(|w| w.to_bits() as i32).collect();
            GtClasses::I32(&ints)
        }
    };
    let host_gt = GroundTruth {
        batch: b,
        boxes_per_image: gt.boxes_per_image,
        boxes: &boxes,
        classes,
    };
    Ok(host_gt.check(b, core.config.num_classes).err())
}

/// The error for device inputs the on-device checks flagged (`flags`: the inputs'
/// flag bits).
pub(crate) fn locate_bad_input(
    core: &Core,
    levels: &Levels,
    inputs: &DeviceInputs,
    flags: u32,
) -> FcosError {
    let host = match read_inputs(core, levels, inputs) {
        Ok(h) => h,
        Err(e) => {
            return FcosError::gpu(format!(
                "the on-device checks flagged bad values in {:?}, and reading them back to locate the first one failed: {e}",
                Input::flagged(flags)
            ))
        }
    };
    let b = inputs.batch;
    // Each buffer read back holds exactly the packed tensor.
    let split = |head: Head| split_levels(core, levels, b, head, &host[head.input()]);
    let view = Inputs {
        batch: b,
        cls_logits: split(Head::ClsLogits),
        cnt_logits: split(Head::CntLogits),
        reg_preds: split(Head::RegPreds),
        cls_targets: &host[Input::ClsTargets],
        cnt_targets: &host[Input::CntTargets],
        reg_targets: &host[Input::RegTargets],
    };
    name_bad_input(core, levels, &view, flags)
}

/// The error for ranged device inputs the on-device checks flagged: each level's
/// range read back, then the host validator.
pub(crate) fn locate_bad_ranges(
    core: &Core,
    levels: &Levels,
    inputs: &RangedInputs,
    flags: u32,
) -> FcosError {
    let b = inputs.batch;
    let read = || -> Result<_, FcosError> {
        let copy = core.pipelines.get(&core.ctx.device, Kernel::CopyWords)?;
        let range =
            |r: &BufferRange, bytes: u64| read_words_at(core, &copy, r.buffer, r.offset, bytes);
        let heads = read_ranged_heads(core, levels, inputs)?;
        let targets = [
            (inputs.cls_targets, Input::ClsTargets),
            (inputs.cnt_targets, Input::CntTargets),
            (inputs.reg_targets, Input::RegTargets),
        ]
        .map(|(r, input)| range(&r, core.bytes(input, levels, b, Dtype::F32)));
        let [cls, cnt, reg] = targets;
        Ok((heads, [cls?, cnt?, reg?]))
    };
    let (heads, [cls, cnt, reg]) = match read() {
        Ok(h) => h,
        Err(e) => {
            return FcosError::gpu(format!(
                "the on-device checks flagged bad values in {:?}, and reading them back to locate the first one failed: {e}",
                Input::flagged(flags)
            ))
        }
    };
    let slices = |h: Head| heads[h].iter().map(|v| v.as_slice()).collect();
    let view = Inputs {
        batch: b,
        cls_logits: slices(Head::ClsLogits),
        cnt_logits: slices(Head::CntLogits),
        reg_preds: slices(Head::RegPreds),
        cls_targets: &cls,
        cnt_targets: &cnt,
        reg_targets: &reg,
    };
    name_bad_input(core, levels, &view, flags)
}

/// The error for a ranged call from boxes the on-device checks flagged: the
/// boxes and classes read back and checked first (they are small), then each
/// level of the heads.
pub(crate) fn locate_bad_ranged_boxes(
    core: &Core,
    levels: &Levels,
    preds: &RangedPredictions,
    gt: &RangedGroundTruth,
    flags: u32,
) -> FcosError {
    let b = preds.batch;
    let failed = |e: FcosError| {
        FcosError::gpu(format!(
            "the on-device checks flagged bad values (flags {flags:#x}), and reading them back to locate the first one failed: {e}"
        ))
    };
    match ranged_gt_error(core, b, gt) {
        Ok(Some(bad)) => return bad,
        Ok(None) => {}
        Err(e) => return failed(e),
    }
    let heads = match read_ranged_heads(core, levels, preds) {
        Ok(heads) => heads,
        Err(e) => return failed(e),
    };
    let slices = |h: Head| heads[h].iter().map(|v| v.as_slice()).collect();
    let view = Predictions {
        batch: b,
        cls_logits: slices(Head::ClsLogits),
        cnt_logits: slices(Head::CntLogits),
        reg_preds: slices(Head::RegPreds),
    };
    name_bad_prediction(core, levels, &view, flags)
}

/// The error naming the first bad value of predictions from a call from boxes
/// (their targets are assigned in the passes: background stands in).
fn name_bad_prediction(
    core: &Core,
    levels: &Levels,
    preds: &Predictions<f32>,
    flags: u32,
) -> FcosError {
    let targets = Targets::background(preds.batch, levels.positions());
    name_bad_input(core, levels, &preds.with_targets(&targets), flags)
}

/// Every level of the three heads of ranged inputs, read back and widened to
/// `f32`.
fn read_ranged_heads<'a>(
    core: &Core,
    levels: &Levels,
    inputs: &impl Ranges<'a>,
) -> Result<Heads<Vec<Vec<f32>>>, FcosError> {
    let (b, dtype) = (inputs.batch(), inputs.dtype());
    let copy = core.pipelines.get(&core.ctx.device, Kernel::CopyWords)?;
    Heads::try_from_fn(|h| {
        let ch = h.channels(core.classes());
        inputs
            .head_ranges(h)
            .iter()
            .enumerate()
            .map(|(l, r)| {
                let n = levels.level_len(l, b, ch);
                let bytes = ((n * dtype.size()) as u64).next_multiple_of(4);
                let words = read_words_at(core, &copy, r.buffer, r.offset, bytes)?;
                Ok(widen_bytes(bytemuck::cast_slice(&words), dtype, n))
            })
            .collect::<Result<Vec<_>, FcosError>>()
    })
}

/// A head's packed device layout (§1.2), read back, as one slice per level.
fn split_levels<'a>(
    core: &Core,
    levels: &Levels,
    b: usize,
    head: Head,
    packed: &'a [f32],
) -> Vec<&'a [f32]> {
    let ch = head.channels(core.classes());
    (0..levels.len())
        .map(|l| {
            let at = levels.packed_offset(l, b, ch);
            &packed[at..at + levels.level_len(l, b, ch)]
        })
        .collect()
}

/// The error for host inputs the on-device checks flagged: the host validator's
/// error naming the first bad element (both paths end here).
pub(crate) fn name_bad_input<T: Element>(
    core: &Core,
    levels: &Levels,
    inputs: &Inputs<T>,
    flags: u32,
) -> FcosError {
    // Half heads are widened exactly (an f16 NaN or Inf stays one), so the
    // validator names the same element with its widened value.
    let widened;
    let view = match T::DTYPE {
        Dtype::F32 => {
            let f32s = |h: Head| {
                inputs
                    .head(h)
                    .iter()
                    .map(|s| bytemuck::cast_slice::<T, f32>(s))
                    .collect()
            };
            Inputs {
                batch: inputs.batch,
                cls_logits: f32s(Head::ClsLogits),
                cnt_logits: f32s(Head::CntLogits),
                reg_preds: f32s(Head::RegPreds),
                cls_targets: inputs.cls_targets,
                cnt_targets: inputs.cnt_targets,
                reg_targets: inputs.reg_targets,
            }
        }
        _ => {
            widened = inputs.widened();
            inputs.with_heads(&widened)
        }
    };
    match crate::validate::check_values(levels, &view, core.classes()) {
        Err(e) => e,
        Ok(()) => FcosError::gpu(format!(
            "the on-device checks flagged bad values in {:?}, but the host check of the same data found none",
            Input::flagged(flags)
        )),
    }
}

/// The six inputs as host vectors (only what the layout uses of each buffer).
fn read_inputs(
    core: &Core,
    levels: &Levels,
    inputs: &DeviceInputs,
) -> Result<ByInput<Vec<f32>>, FcosError> {
    let copy = core.pipelines.get(&core.ctx.device, Kernel::CopyWords)?;
    ByInput::try_from_fn(|input| {
        let buf = inputs.buffer(input);
        read_elements(
            core,
            &copy,
            buf,
            0,
            levels,
            inputs.batch,
            input,
            inputs.dtype,
        )
    })
}

/// The whole tensor `input` (heads of `heads`) from byte `offset` of `src`,
/// widened to `f32`.
#[allow(clippy::too_many_arguments)]
fn read_elements(
    core: &Core,
    copy: &Pipeline,
    src: &wgpu::Buffer,
    offset: u64,
    levels: &Levels,
    b: usize,
    input: Input,
    heads: Dtype,
) -> Result<Vec<f32>, FcosError> {
    let dtype = input.dtype(heads);
    let n = input.elements(levels, b, core.classes());
    let bytes = core.bytes(input, levels, b, heads).next_multiple_of(4);
    let words = read_words_at(core, copy, src, offset, bytes)?;
    Ok(widen_bytes(bytemuck::cast_slice(&words), dtype, n))
}

/// `bytes` of a STORAGE buffer from `offset` (storage-aligned), copied chunk by
/// chunk.
fn read_words_at(
    core: &Core,
    copy: &Pipeline,
    src: &wgpu::Buffer,
    offset: u64,
    bytes: u64,
) -> Result<Vec<f32>, FcosError> {
    let device = &core.ctx.device;
    let limits = &core.ctx.limits;
    let align = limits.min_storage_buffer_offset_alignment.max(4) as u64;
    let chunk = CHUNK_BYTES
        .min(limits.max_storage_buffer_binding_size)
        .min(bytes.max(4))
        / align
        * align;
    let chunk = chunk.max(align.min(bytes.max(4)));
    let (staging, readback) = scoped(device, || {
        let make = |label, usage| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: chunk.next_multiple_of(4),
                usage,
                mapped_at_creation: false,
            })
        };
        (
            make(
                "fcos locate staging",
                wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            ),
            make(
                "fcos locate readback",
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            ),
        )
    })?;
    let mut out: Vec<f32> = Vec::with_capacity((bytes / 4) as usize);
    let mut at = 0;
    while at < bytes {
        let len = chunk.min(bytes - at);
        let index = scoped(device, || {
            let mut encoder = device.create_command_encoder(&Default::default());
            copy_chunk(
                core,
                copy,
                src,
                offset + at..offset + at + len,
                &staging,
                &mut encoder,
            );
            encoder.copy_buffer_to_buffer(&staging, 0, &readback, 0, len);
            core.ctx.queue.submit([encoder.finish()])
        })?;
        let data = core.readback().read(&readback, 0..len, Some(index))?;
        out.extend(
            data.chunks_exact(4)
                .map(|w| f32::from_le_bytes([w[0], w[1], w[2], w[3]])),
        );
        at += len;
    }
    Ok(out)
}

/// Records the word copy of bytes `range` of `src` into `staging`.
fn copy_chunk(
    core: &Core,
    copy: &Pipeline,
    src: &wgpu::Buffer,
    range: std::ops::Range<u64>,
    staging: &wgpu::Buffer,
    encoder: &mut wgpu::CommandEncoder,
) {
    let device = &core.ctx.device;
    let groups = (((range.end - range.start) / 4) as u32).div_ceil(256);
    let x = groups.clamp(1, core.ctx.limits.max_compute_workgroups_per_dimension);
    let y = groups.div_ceil(x).max(1);
    let bg = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("fcos locate"),
        layout: &copy.layout,
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: src,
                    offset: range.start,
                    size: std::num::NonZeroU64::new(range.end - range.start),
                }),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: staging.as_entire_binding(),
            },
        ],
    });
    let mut pass = encoder.begin_compute_pass(&Default::default());
    pass.set_pipeline(&copy.pipeline);
    pass.set_bind_group(0, &bg, &[]);
    pass.dispatch_workgroups(x, y, 1);
}
