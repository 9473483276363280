//! The device path: check the caller's buffers, run the call on them, and read
//! back only the losses (gradients stay in the caller's buffers).

use std::time::Instant;

use crate::assign::{GT_BOXES, GT_CLASSES};
use crate::config::{LossWeights, Normalization};
use crate::error::FcosError;
use crate::gpu::call::{level_slices, packed_levels, Call, GtBuffers, Planned, TargetSource};
use crate::gpu::core::Core;
use crate::gpu::device_inputs::{
    ClassDtype, DeviceDenominators, DeviceGradients, DeviceGroundTruth, DeviceInputs,
    DevicePredictions,
};
use crate::gpu::locate::{
    locate_bad_boxes, locate_bad_input, locate_bad_ranged_boxes, locate_bad_ranges,
};
use crate::gpu::params::BoxSpec;
use crate::gpu::pass::Pass;
use crate::gpu::pending::{encode_recorded, Located, PendingLosses};
use crate::gpu::plan::Origins;
use crate::gpu::pool::{Need, Pool, Slot};
use crate::gpu::ranges::{
    self, BufferRange, RangedGradients, RangedGroundTruth, RangedInputs, RangedPredictions, Ranges,
};
use crate::gpu::ring::Busy;
use crate::gpu::timed::Timed;
use crate::input::{Dtype, Head, Heads};
use crate::layout::Levels;
use crate::losses::Losses;

/// Runs `pass` on device buffers (`grads` for the passes that write gradients;
/// `denominators` for the global normalisation from a device buffer).
pub(crate) fn run(
    core: &Core,
    levels: &Levels,
    inputs: &DeviceInputs,
    grads: Option<&DeviceGradients>,
    denominators: Option<&DeviceDenominators>,
    pass: Pass,
    weights: &LossWeights,
) -> Result<Timed<Losses>, FcosError> {
    let start = Instant::now();
    let call = packed_call(core, levels, inputs, grads, denominators, pass, weights)?;
    call.run(core, start, |flags| {
        locate_bad_input(core, levels, inputs, flags)
    })
}

/// Records `pass` on device buffers into `encoder` (see `pending.rs`).
pub(crate) fn record<'a>(
    core: &Core,
    encoder: &mut wgpu::CommandEncoder,
    levels: &'a Levels,
    inputs: &DeviceInputs<'a>,
    grads: Option<&'a DeviceGradients<'a>>,
    pass: Pass,
    weights: &'a LossWeights,
) -> Result<PendingLosses<'a>, FcosError> {
    let call = packed_call(core, levels, inputs, grads, None, pass, weights)?;
    call.record(core, encoder, Located::Device(*inputs))
}

/// A call on packed device buffers, their sizes and usage checked.
fn packed_call<'a>(
    core: &Core,
    levels: &'a Levels,
    inputs: &DeviceInputs<'a>,
    grads: Option<&'a DeviceGradients<'a>>,
    denominators: Option<&'a DeviceDenominators<'a>>,
    pass: Pass,
    weights: &'a LossWeights,
) -> Result<DeviceCall<'a>, FcosError> {
    let b = inputs.batch;
    core.check_batch(levels, b)?;
    let named = inputs
        .buffers()
        .iter()
        .map(|(input, buf)| {
            (
                format!("{input} buffer"),
                *buf,
                core.bytes(input, levels, b, inputs.dtype)
                    .next_multiple_of(4),
            )
        })
        .collect::<Vec<_>>();
    let grad_dtype = core.grad_dtype(inputs.dtype, pass);
    check_buffers(core, levels, b, named, grads, grad_dtype)?;
    let buffers = inputs.buffers();
    if let Some(g) = grads {
        for (h, grad) in g.iter() {
            if let Some((input, _)) = buffers.iter().find(|(_, buf)| *buf == grad) {
                return Err(FcosError::InvalidCall(format!(
                    "the grad {h} buffer is the {input} buffer: wgpu cannot bind one buffer read-only and read-write in one dispatch, so give the gradients buffers of their own"
                )));
            }
            if let Some((other, _)) = g.iter().find(|(o, buf)| *o != h && *buf == grad) {
                return Err(FcosError::InvalidCall(format!(
                    "the grad {h} and grad {other} buffers are one buffer: each head's gradients start at its byte 0, so they would overlap"
                )));
            }
        }
    }
    Ok(DeviceCall {
        levels,
        batch: b,
        heads: packed_levels(levels, buffers.heads),
        targets: TargetSource::dense(&buffers),
        boxes: None,
        grads: grads.map(|g| packed_levels(levels, *g)),
        origins: Some(packed_device_origins(core, levels, b, inputs.dtype, pass)?),
        dtype: inputs.dtype,
        denominators,
        pass,
        weights,
    })
}

/// Every tensor packed from byte 0 of its buffer; for half gradients, the
/// caller's buffers take them packed in the heads' dtype.
fn packed_device_origins(
    core: &Core,
    levels: &Levels,
    b: usize,
    heads: Dtype,
    pass: Pass,
) -> Result<Origins, FcosError> {
    let mut origins = core.packed_origins(levels, b, heads)?;
    if core.packs_half(heads, pass) {
        origins.half_grads = Some(origins.grads.clone());
    }
    Ok(origins)
}

/// Runs `pass` from ground-truth boxes on device buffers.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_boxes(
    core: &Core,
    levels: &Levels,
    preds: &DevicePredictions,
    gt: &DeviceGroundTruth,
    grads: Option<&DeviceGradients>,
    denominators: Option<&DeviceDenominators>,
    pass: Pass,
    weights: &LossWeights,
) -> Result<Timed<Losses>, FcosError> {
    let start = Instant::now();
    let b = preds.batch;
    core.check_batch(levels, b)?;
    core.check_assignment(levels)?;
    let m = gt.boxes_per_image;
    core.check_boxes(b, m)?;
    let mut named: Vec<(String, &wgpu::Buffer, u64)> = Head::ALL
        .iter()
        .map(|&h| {
            let input = h.input();
            (
                format!("{input} buffer"),
                preds.buffer(h),
                core.bytes(input, levels, b, preds.dtype)
                    .next_multiple_of(4),
            )
        })
        .collect();
    named.extend(gt_needs(gt, b));
    let grad_dtype = core.grad_dtype(preds.dtype, pass);
    check_buffers(core, levels, b, named, grads, grad_dtype)?;
    // Bound as the rows need them (the buffers may be larger than a binding).
    let (box_bytes, class_bytes) = ranges::gt_bytes(b, m);
    let call = DeviceCall {
        levels,
        batch: b,
        heads: packed_levels(levels, Heads::from_fn(|h| preds.buffer(h))),
        targets: TargetSource::Boxes(GtBuffers {
            boxes: BufferRange::new(gt.boxes, 0, box_bytes),
            classes: BufferRange::new(gt.classes, 0, class_bytes),
            boxes_per_image: m as u32,
        }),
        boxes: Some(BoxSpec {
            boxes_per_image: m as u32,
            class_f32: gt.class_dtype == ClassDtype::F32,
        }),
        grads: grads.map(|g| packed_levels(levels, *g)),
        origins: Some(packed_device_origins(core, levels, b, preds.dtype, pass)?),
        dtype: preds.dtype,
        denominators,
        pass,
        weights,
    };
    call.run(core, start, |flags| {
        locate_bad_boxes(core, levels, preds, gt, flags)
    })
}

/// Runs `pass` on ranges of device buffers, one per level of each head (`grads`
/// for the passes that write gradients).
pub(crate) fn run_ranges<'a>(
    core: &Core,
    levels: &'a Levels,
    inputs: &RangedInputs<'a>,
    grads: Option<&RangedGradients<'a>>,
    pass: Pass,
    weights: &'a LossWeights,
) -> Result<Timed<Losses>, FcosError> {
    let start = Instant::now();
    let call = ranged_call(core, levels, inputs, grads, pass, weights)?;
    call.run(core, start, |flags| {
        locate_bad_ranges(core, levels, inputs, flags)
    })
}

/// Records `pass` on ranges of device buffers into `encoder`.
pub(crate) fn record_ranges<'a>(
    core: &Core,
    encoder: &mut wgpu::CommandEncoder,
    levels: &'a Levels,
    inputs: &RangedInputs<'a>,
    grads: Option<&RangedGradients<'a>>,
    pass: Pass,
    weights: &'a LossWeights,
) -> Result<PendingLosses<'a>, FcosError> {
    let call = ranged_call(core, levels, inputs, grads, pass, weights)?;
    call.record(core, encoder, Located::Ranged(inputs.clone()))
}

/// A call on ranges of device buffers, the ranges checked.
fn ranged_call<'a>(
    core: &Core,
    levels: &'a Levels,
    inputs: &RangedInputs<'a>,
    grads: Option<&RangedGradients<'a>>,
    pass: Pass,
    weights: &'a LossWeights,
) -> Result<DeviceCall<'a>, FcosError> {
    let targets = TargetSource::Dense {
        cls: inputs.cls_targets.buffer,
        cnt: inputs.cnt_targets.buffer,
        reg: inputs.reg_targets.buffer,
    };
    ranged_call_from(core, levels, inputs, targets, None, grads, pass, weights)
}

/// Runs `pass` from ground-truth boxes on ranges of device buffers.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_ranges_from_boxes<'a>(
    core: &Core,
    levels: &'a Levels,
    preds: &RangedPredictions<'a>,
    gt: &RangedGroundTruth<'a>,
    grads: Option<&RangedGradients<'a>>,
    pass: Pass,
    weights: &'a LossWeights,
) -> Result<Timed<Losses>, FcosError> {
    let start = Instant::now();
    let call = ranged_boxes_call(core, levels, preds, gt, grads, pass, weights)?;
    call.run(core, start, |flags| {
        locate_bad_ranged_boxes(core, levels, preds, gt, flags)
    })
}

/// Records `pass` from ground-truth boxes on ranges of device buffers into
/// `encoder`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record_ranges_from_boxes<'a>(
    core: &Core,
    encoder: &mut wgpu::CommandEncoder,
    levels: &'a Levels,
    preds: &RangedPredictions<'a>,
    gt: &RangedGroundTruth<'a>,
    grads: Option<&RangedGradients<'a>>,
    pass: Pass,
    weights: &'a LossWeights,
) -> Result<PendingLosses<'a>, FcosError> {
    let call = ranged_boxes_call(core, levels, preds, gt, grads, pass, weights)?;
    call.record(core, encoder, Located::RangedBoxes(preds.clone(), *gt))
}

/// A call from ground-truth boxes on ranges of device buffers, the assignment's
/// settings, the box count and the ranges checked.
fn ranged_boxes_call<'a>(
    core: &Core,
    levels: &'a Levels,
    preds: &RangedPredictions<'a>,
    gt: &RangedGroundTruth<'a>,
    grads: Option<&RangedGradients<'a>>,
    pass: Pass,
    weights: &'a LossWeights,
) -> Result<DeviceCall<'a>, FcosError> {
    core.check_assignment(levels)?;
    core.check_boxes(preds.batch, gt.boxes_per_image)?;
    let m = gt.boxes_per_image as u32;
    // Bound as the rows need them (the ranges may be longer), once checked.
    let (box_bytes, class_bytes) = gt.bytes(preds.batch);
    let trim =
        |r: BufferRange<'a>, bytes: u64| BufferRange::new(r.buffer, r.offset, bytes.min(r.size));
    let targets = TargetSource::Boxes(GtBuffers {
        boxes: trim(gt.boxes, box_bytes),
        classes: trim(gt.classes, class_bytes),
        boxes_per_image: m,
    });
    let spec = BoxSpec {
        boxes_per_image: m,
        class_f32: gt.class_dtype == ClassDtype::F32,
    };
    ranged_call_from(
        core,
        levels,
        preds,
        targets,
        Some((spec, gt)),
        grads,
        pass,
        weights,
    )
}

/// A ranged call whose targets come from `targets` (with `boxes`, from the
/// ground truth of that range), the ranges checked.
#[allow(clippy::too_many_arguments)]
fn ranged_call_from<'a>(
    core: &Core,
    levels: &'a Levels,
    inputs: &impl Ranges<'a>,
    targets: TargetSource<'a>,
    boxes: Option<(BoxSpec, &RangedGroundTruth<'a>)>,
    grads: Option<&RangedGradients<'a>>,
    pass: Pass,
    weights: &'a LossWeights,
) -> Result<DeviceCall<'a>, FcosError> {
    let (b, dtype) = (inputs.batch(), inputs.dtype());
    core.check_batch(levels, b)?;
    let align = core.ctx.limits.min_storage_buffer_offset_alignment.max(4) as u64;
    let grad_dtype = core.grad_dtype(dtype, pass);
    let gt = boxes.map(|(_, gt)| gt);
    ranges::check(levels, core.classes(), align, inputs, gt, grads, grad_dtype)?;
    let c = core.config.num_classes;
    let mut origins = ranges::origins(inputs, grads, levels, b as u32, c);
    if let (true, Some(g)) = (grad_dtype.is_half(), grads) {
        // The caller's ranges take the half gradients; the f32 ones go packed
        // into the pool.
        let out = Heads::from_fn(|h| g[h].iter().map(|r| r.offset / 2).collect());
        origins = origins.with_half_grads(levels, b as u32, c, out);
    }
    fn buffers<'a>(r: &[BufferRange<'a>]) -> Vec<&'a wgpu::Buffer> {
        r.iter().map(|r| r.buffer).collect()
    }
    Ok(DeviceCall {
        levels,
        batch: b,
        heads: Heads::from_fn(|h| buffers(inputs.head_ranges(h))),
        targets,
        boxes: boxes.map(|(spec, _)| spec),
        grads: grads.map(|g| g.as_ref().map(|_, r| buffers(r))),
        origins: Some(origins),
        dtype,
        denominators: None,
        pass,
        weights,
    })
}

/// A device-path call: the caller's buffers and what runs over them.
struct DeviceCall<'a> {
    levels: &'a Levels,
    batch: usize,
    /// The buffer of each level of each head.
    heads: Heads<Vec<&'a wgpu::Buffer>>,
    targets: TargetSource<'a>,
    boxes: Option<BoxSpec>,
    /// The buffer of each level of each head's gradient.
    grads: Option<Heads<Vec<&'a wgpu::Buffer>>>,
    /// Where each tensor starts in its buffer (packed when `None`).
    origins: Option<Origins>,
    /// The heads' element type.
    dtype: Dtype,
    denominators: Option<&'a DeviceDenominators<'a>>,
    pass: Pass,
    weights: &'a LossWeights,
}

impl<'a> DeviceCall<'a> {
    /// The call over the caller's buffers, as `planned`; for half gradients the
    /// fused pass writes the `f32` ones into `scratch` (pooled, packed) and the
    /// pack writes the caller's.
    fn call<'p>(
        &'p self,
        planned: &'p Planned<'p>,
        scratch: Option<&'p Heads<Vec<&'p wgpu::Buffer>>>,
    ) -> Call<'p> {
        let caller = self.grads.as_ref().map(level_slices);
        match scratch {
            Some(s) => Call {
                planned,
                heads: level_slices(&self.heads),
                targets: self.targets,
                grads: Some(level_slices(s)),
                half_grads: caller,
                read_grads: None,
            },
            None => Call {
                planned,
                heads: level_slices(&self.heads),
                targets: self.targets,
                grads: caller,
                half_grads: None,
                read_grads: None,
            },
        }
    }

    /// The pooled `f32` gradients a call with half gradients needs.
    fn scratch_needs(&self, core: &Core) -> Vec<Need> {
        if !core.packs_half(self.dtype, self.pass) {
            return Vec::new();
        }
        Head::ALL
            .iter()
            .map(|&h| Need {
                slot: Slot::Grad(h),
                size: core.grad_bytes(h, self.levels, self.batch),
                usage: wgpu::BufferUsages::STORAGE,
            })
            .collect()
    }

    /// The pooled `f32` gradients of `pool` (reserved by
    /// [`scratch_needs`](Self::scratch_needs)), each head packed.
    fn scratch<'p>(
        &self,
        core: &Core,
        pool: &'p Pool,
    ) -> Result<Option<Heads<Vec<&'p wgpu::Buffer>>>, FcosError> {
        if !core.packs_half(self.dtype, self.pass) {
            return Ok(None);
        }
        let bufs = Heads::try_from_fn(|h| pool.get(Slot::Grad(h)))?;
        Ok(Some(packed_levels(self.levels, bufs)))
    }

    /// The checks every device call makes before planning.
    fn precheck(&self, core: &Core) -> Result<(), FcosError> {
        self.weights.check()?;
        if let Some(d) = self.denominators {
            check_denominators(core, d)?;
        }
        if self.pass.writes_gradients() && self.grads.is_none() {
            return Err(FcosError::InvalidCall(
                "the backward pass needs gradient buffers".into(),
            ));
        }
        Ok(())
    }

    /// Records the call into `encoder` over a result slot of the engine's ring
    /// (`pending.rs`); `located` is where a read looks for a flagged value.
    fn record(
        self,
        core: &Core,
        encoder: &mut wgpu::CommandEncoder,
        located: Located<'a>,
    ) -> Result<PendingLosses<'a>, FcosError> {
        self.precheck(core)?;
        let (levels, b) = (self.levels, self.batch);
        let mut pending = PendingLosses {
            ring: core.ring.clone(),
            slot: 0,
            generation: 0,
            batch: b as u32,
            device_denominators: self.denominators.is_some(),
            config: core.config.clone(),
            readback: None,
            image_sums: None,
            levels,
            located,
            ready: None,
        };
        if levels.positions() == 0 {
            pending.ready = Some(core.zero_losses(b));
            return Ok(pending);
        }
        core.ctx.health()?;
        let (slot_index, generation, mut slot) = core.ring.acquire()?;
        let planned = core.prepare(
            &mut slot.pool,
            levels,
            b,
            self.pass,
            self.weights,
            self.denominators.copied(),
            self.boxes,
            self.origins.as_ref(),
            self.scratch_needs(core),
        )?;
        let scratch = self.scratch(core, &slot.pool)?;
        let call = self.call(&planned, scratch.as_ref());
        let recorded = encode_recorded(core, encoder, &slot.pool, &call, generation)?;
        pending.slot = slot_index;
        pending.generation = generation;
        pending.readback = Some(recorded.readback);
        pending.image_sums = Some(recorded.image_sums);
        slot.busy = Some(Busy::new(generation, true));
        Ok(pending)
    }

    /// Runs the call; `locate` names the first bad value when the on-device
    /// checks flag one (after the pool is released: it runs its own copies).
    fn run(
        self,
        core: &Core,
        start: Instant,
        locate: impl FnOnce(u32) -> FcosError,
    ) -> Result<Timed<Losses>, FcosError> {
        let (levels, b, pass) = (self.levels, self.batch, self.pass);
        self.precheck(core)?;
        if levels.positions() == 0 {
            return Ok(Timed {
                value: core.zero_losses(b),
                kernel: None,
                call: start.elapsed(),
            });
        }
        let mut pool = core.lock_pool()?;
        let dens = self.denominators.copied();
        let planned = core.prepare(
            &mut pool,
            levels,
            b,
            pass,
            self.weights,
            dens,
            self.boxes,
            self.origins.as_ref(),
            self.scratch_needs(core),
        )?;
        let scratch = self.scratch(core, &pool)?;
        let outcome = core.execute(&pool, &self.call(&planned, scratch.as_ref()))?;
        if outcome.flags != 0 {
            drop(pool);
            return Err(locate(outcome.flags));
        }
        Ok(Timed {
            value: outcome.losses,
            kernel: outcome.kernel,
            call: start.elapsed(),
        })
    }
}

/// A device buffer of global denominators: only with the global normalisation,
/// `STORAGE` usage, an aligned offset and two floats there.
fn check_denominators(core: &Core, d: &DeviceDenominators) -> Result<(), FcosError> {
    const NAME: &str = "global denominators buffer";
    if !matches!(core.config.normalization, Normalization::Global(_)) {
        return Err(FcosError::InvalidCall(format!(
            "a {NAME} was given, but the normalisation is {} (denominators from a buffer need Normalization::Global)",
            core.config.normalization.name()
        )));
    }
    let align = core.ctx.limits.min_storage_buffer_offset_alignment as u64;
    if !d.offset.is_multiple_of(align) {
        return Err(FcosError::InvalidCall(format!(
            "the {NAME}'s offset {} is not a multiple of min_storage_buffer_offset_alignment = {align}",
            d.offset
        )));
    }
    if d.buffer.size() < d.offset.saturating_add(8) {
        return Err(FcosError::shape(
            NAME,
            format!(
                "at least {} bytes (two f32 at offset {})",
                d.offset + 8,
                d.offset
            ),
            format!("{} bytes", d.buffer.size()),
        ));
    }
    if !d.buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
        return Err(FcosError::InvalidCall(format!(
            "the {NAME} lacks BufferUsages::STORAGE (its usage is {:?})",
            d.buffer.usage()
        )));
    }
    Ok(())
}

/// The ground truth's buffers and the bytes each needs for `b` images: at least
/// one row even for `M = 0` (the shader's array of boxes binds 16 bytes).
pub(crate) fn gt_needs<'a>(
    gt: &DeviceGroundTruth<'a>,
    b: usize,
) -> [(String, &'a wgpu::Buffer, u64); 2] {
    let (boxes, classes) = ranges::gt_bytes(b, gt.boxes_per_image);
    [
        (format!("{GT_BOXES} buffer"), gt.boxes, boxes),
        (format!("{GT_CLASSES} buffer"), gt.classes, classes),
    ]
}

/// Each buffer at least as large as the layout needs, with `STORAGE` usage:
/// `named` are `(name, buffer, bytes needed)`.
pub(crate) fn check_buffers(
    core: &Core,
    levels: &Levels,
    b: usize,
    named: Vec<(String, &wgpu::Buffer, u64)>,
    grads: Option<&DeviceGradients>,
    grad_dtype: Dtype,
) -> Result<(), FcosError> {
    let grad_named = grads.into_iter().flat_map(|g| {
        Head::ALL.map(|h| {
            (
                format!("grad {h} buffer"),
                g[h],
                core.grad_bytes_as(h, levels, b, grad_dtype),
            )
        })
    });
    for (name, buf, need) in named.into_iter().chain(grad_named) {
        if buf.size() < need {
            return Err(FcosError::shape(
                name,
                format!("at least {need} bytes"),
                format!("{} bytes", buf.size()),
            ));
        }
        if !buf.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(FcosError::InvalidCall(format!(
                "{name} lacks BufferUsages::STORAGE (its usage is {:?})",
                buf.usage()
            )));
        }
    }
    Ok(())
}
