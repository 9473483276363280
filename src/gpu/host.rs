//! The host path: check the slices, upload them into the pool, run the call, and
//! read back the losses (and, for the backward pass, the gradients).

use std::time::Instant;

use crate::assign::{GroundTruth, Predictions, Targets};
use crate::config::LossWeights;
use crate::error::FcosError;
use crate::gpu::call::{level_slices, packed_levels, Call, TargetSource};
use crate::gpu::capture::CallCapture;
use crate::gpu::core::Core;
use crate::gpu::locate::name_bad_input;
use crate::gpu::params::BoxSpec;
use crate::gpu::pass::Pass;
use crate::gpu::pending::{decode, encode_recorded, read_off_thread};
use crate::gpu::pool::{Need, Pool, Slot};
use crate::gpu::ring::Ring;
use crate::gpu::scope::scoped;
use crate::gpu::timed::Timed;
use crate::gpu::upload;
use crate::gpu::upload::Upload;
use crate::gpu::work::readback_bytes;
use crate::input::{widen_bytes, Dtype, Element, Head, Heads, Input};
use crate::inputs::Inputs;
use crate::layout::Levels;
use crate::losses::{Gradients, Losses};

/// Runs `pass` on host slices.
pub(crate) fn run<T: Element>(
    core: &Core,
    levels: &Levels,
    inputs: &Inputs<T>,
    pass: Pass,
    weights: &LossWeights,
) -> Result<Timed<(Losses, Option<Gradients>)>, FcosError> {
    let start = Instant::now();
    let call = HostCall::of_inputs(core, levels, inputs, pass, weights)?;
    // The values are checked inside the fused pass, as on the device path (cheaper
    // than a separate pass over the host slices); only when it flags one does the
    // host validator look for the first bad element, in the caller's slices.
    call.run(core, start, |flags| {
        name_bad_input(core, levels, inputs, flags)
    })
}

/// Runs `pass` from ground-truth boxes on host slices: the boxes are checked on
/// the host (they are small), the predictions inside the fused pass.
pub(crate) fn run_boxes<T: Element>(
    core: &Core,
    levels: &Levels,
    preds: &Predictions<T>,
    gt: &GroundTruth,
    pass: Pass,
    weights: &LossWeights,
) -> Result<Timed<(Losses, Option<Gradients>)>, FcosError> {
    let start = Instant::now();
    let mut classes = Vec::new();
    let call = HostCall::of_boxes(core, levels, preds, gt, &mut classes, pass, weights)?;
    call.run(core, start, |flags| {
        let targets = Targets::background(preds.batch, levels.positions());
        name_bad_input(core, levels, &preds.with_targets(&targets), flags)
    })
}

/// Runs `pass` on host slices over a result slot of the engine's ring, and reads
/// the results back without blocking the caller's executor (`pending.rs`).
pub(crate) async fn run_async<T: Element>(
    core: &Core,
    levels: &Levels,
    inputs: &Inputs<'_, T>,
    pass: Pass,
    weights: &LossWeights,
) -> Result<(Losses, Option<Gradients>), FcosError> {
    let call = HostCall::of_inputs(core, levels, inputs, pass, weights)?;
    let (b, backward) = (inputs.batch, pass.writes_gradients());
    if levels.positions() == 0 {
        let grads = backward.then(|| core.empty_grads(levels, b));
        return Ok((core.zero_losses(b), grads));
    }
    call.check(core)?;
    core.ctx.health()?;
    // A free slot, waited for when every slot is in use.
    let (slot, generation) = core.ring.reserve().await?;
    // The slot is freed however this ends (an error, or the future dropped).
    let _release = Release {
        ring: &core.ring,
        slot,
        generation,
    };
    let (readback, grad_readback) = {
        let mut guard = core.ring.lock(slot);
        call.with_call_in(core, &mut guard.pool, |pool, call| {
            let mut encoder =
                core.ctx
                    .device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("fcos loss (async)"),
                    });
            let recorded = encode_recorded(core, &mut encoder, pool, call, generation)?;
            core.copy_gradients_out(&mut encoder, call);
            scoped(&core.ctx.device, || {
                core.ctx.queue.submit([encoder.finish()])
            })?;
            Ok((recorded.readback, call.read_grads.cloned()))
        })?
    };
    let bytes =
        read_off_thread(core, readback, readback_bytes(b as u32), (slot, generation)).await?;
    let (losses, flags) = decode(&bytes, b as u32, generation, &core.config, false)?;
    if flags != 0 {
        return Err(name_bad_input(core, levels, inputs, flags));
    }
    let grads = match grad_readback {
        Some(buf) => {
            let dtype = core.grad_dtype(T::DTYPE, pass);
            let total = gradient_bytes(core, levels, b, dtype);
            let bytes = read_off_thread(core, buf, total, (slot, generation)).await?;
            Some(split_gradients(core, levels, b, &bytes, dtype)?)
        }
        None => None,
    };
    Ok((losses, grads))
}

/// Frees a ring slot when dropped.
struct Release<'r> {
    ring: &'r Ring,
    slot: usize,
    generation: u64,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.ring.release(self.slot, self.generation, None);
    }
}

/// Describes `pass` on host slices ([`capture`]) instead of reading its results.
pub(crate) fn capture<T: Element>(
    core: &Core,
    levels: &Levels,
    inputs: &Inputs<T>,
    pass: Pass,
    weights: &LossWeights,
) -> Result<CallCapture, FcosError> {
    let call = HostCall::of_inputs(core, levels, inputs, pass, weights)?;
    call.capture(core)
}

/// Describes `pass` from ground-truth boxes on host slices ([`capture`]).
pub(crate) fn capture_boxes<T: Element>(
    core: &Core,
    levels: &Levels,
    preds: &Predictions<T>,
    gt: &GroundTruth,
    pass: Pass,
    weights: &LossWeights,
) -> Result<CallCapture, FcosError> {
    let mut classes = Vec::new();
    let call = HostCall::of_boxes(core, levels, preds, gt, &mut classes, pass, weights)?;
    call.capture(core)
}

/// The losses and gradients of a backward pass's result.
pub(crate) fn with_gradients(
    t: Timed<(Losses, Option<Gradients>)>,
) -> Result<Timed<(Losses, Gradients)>, FcosError> {
    let (losses, grads) = t.value;
    let grads = grads.ok_or_else(|| FcosError::gpu("the backward pass returned no gradients"))?;
    Ok(Timed {
        value: (losses, grads),
        kernel: t.kernel,
        call: t.call,
    })
}

/// A host-path call: what it uploads and how it runs.
struct HostCall<'a> {
    levels: &'a Levels,
    batch: usize,
    /// The heads' element type.
    dtype: Dtype,
    uploads: Vec<Upload<'a>>,
    boxes: Option<BoxSpec>,
    pass: Pass,
    weights: &'a LossWeights,
}

impl<'a> HostCall<'a> {
    /// A call on host slices, its shapes checked.
    fn of_inputs<T: Element>(
        core: &Core,
        levels: &'a Levels,
        inputs: &'a Inputs<T>,
        pass: Pass,
        weights: &'a LossWeights,
    ) -> Result<Self, FcosError> {
        weights.check()?;
        inputs.check_shapes(levels, core.classes())?;
        Ok(HostCall {
            levels,
            batch: inputs.batch,
            dtype: T::DTYPE,
            uploads: upload::of_inputs(inputs),
            boxes: None,
            pass,
            weights,
        })
    }

    /// A call from ground-truth boxes, the shapes and the boxes checked; the
    /// classes' `i32` words go into `classes`.
    fn of_boxes<T: Element>(
        core: &Core,
        levels: &'a Levels,
        preds: &'a Predictions<T>,
        gt: &'a GroundTruth,
        classes: &'a mut Vec<i32>,
        pass: Pass,
        weights: &'a LossWeights,
    ) -> Result<Self, FcosError> {
        weights.check()?;
        preds.check_shapes(levels, core.classes())?;
        let (gt_uploads, spec) = upload::of_ground_truth(core, levels, gt, preds.batch, classes)?;
        let mut uploads: Vec<Upload> = Head::ALL
            .iter()
            .map(|&h| Upload {
                slot: Slot::Input(h.input()),
                parts: preds
                    .head(h)
                    .iter()
                    .map(|p| bytemuck::cast_slice(p))
                    .collect(),
            })
            .collect();
        uploads.extend(gt_uploads);
        Ok(HostCall {
            levels,
            batch: preds.batch,
            dtype: T::DTYPE,
            uploads,
            boxes: Some(spec),
            pass,
            weights,
        })
    }

    /// Uploads, then describes the call ([`capture`](crate::gpu::capture)).
    fn capture(self, core: &Core) -> Result<CallCapture, FcosError> {
        if self.levels.positions() == 0 {
            return Err(FcosError::InvalidCall(
                "a call over levels without positions dispatches nothing to capture".into(),
            ));
        }
        let (levels, b) = (self.levels, self.batch);
        self.with_call(core, |pool, call| {
            crate::gpu::capture::capture(core, pool, call, levels, b)
        })
    }

    /// Uploads, runs and reads back; `name_bad` names the first bad value when the
    /// on-device checks flag one.
    fn run(
        self,
        core: &Core,
        start: Instant,
        name_bad: impl FnOnce(u32) -> FcosError,
    ) -> Result<Timed<(Losses, Option<Gradients>)>, FcosError> {
        let (levels, b, pass) = (self.levels, self.batch, self.pass);
        let backward = pass.writes_gradients();
        if levels.positions() == 0 {
            let grads = backward.then(|| core.empty_grads(levels, b));
            return Ok(Timed {
                value: (core.zero_losses(b), grads),
                kernel: None,
                call: start.elapsed(),
            });
        }
        let grad_dtype = core.grad_dtype(self.dtype, pass);
        self.with_call(core, |pool, call| {
            let outcome = core.execute(pool, call)?;
            if outcome.flags != 0 {
                return Err(name_bad(outcome.flags));
            }
            let grads = backward
                .then(|| read_gradients(core, pool, levels, b, grad_dtype))
                .transpose()?;
            Ok(Timed {
                value: (outcome.losses, grads),
                kernel: outcome.kernel,
                call: start.elapsed(),
            })
        })
    }

    /// Checks the call against the device, reserves and fills the engine's pool,
    /// and hands `then` the call over the pooled buffers (levels with positions
    /// only).
    fn with_call<R>(
        self,
        core: &Core,
        then: impl FnOnce(&Pool, &Call) -> Result<R, FcosError>,
    ) -> Result<R, FcosError> {
        self.check(core)?;
        let mut pool = core.lock_pool()?;
        self.with_call_in(core, &mut pool, then)
    }

    /// The checks before anything is reserved: buffer sizes, and the pipelines
    /// (a pass the device cannot build fails here, before any upload).
    fn check(&self, core: &Core) -> Result<(), FcosError> {
        let backward = self.pass.writes_gradients();
        core.check_buffer_sizes(self.levels, self.batch, self.dtype, backward)?;
        core.call_pipelines(
            self.pass,
            core.checks,
            backward,
            self.boxes.is_some(),
            self.dtype,
            core.packs_half(self.dtype, self.pass),
        )?;
        Ok(())
    }

    /// [`with_call`](Self::with_call) over `pool` (checked already).
    fn with_call_in<R>(
        self,
        core: &Core,
        pool: &mut Pool,
        then: impl FnOnce(&Pool, &Call) -> Result<R, FcosError>,
    ) -> Result<R, FcosError> {
        let (levels, b, pass) = (self.levels, self.batch, self.pass);
        let backward = pass.writes_gradients();
        let mut extra = upload::needs(core, &self.uploads);
        let grad_dtype = core.grad_dtype(self.dtype, pass);
        if backward {
            extra.extend(gradient_needs(core, levels, b, grad_dtype));
        }
        let mut origins = core.packed_origins(levels, b, self.dtype)?;
        if grad_dtype.is_half() {
            // The pooled half gradients are packed like the f32 ones.
            origins.half_grads = Some(origins.grads.clone());
        }
        let planned = core.prepare(
            pool,
            levels,
            b,
            pass,
            self.weights,
            None,
            self.boxes,
            Some(&origins),
            extra,
        )?;
        let pool = &*pool;
        upload::upload(core, pool, &self.uploads)?;
        let targets = match self.boxes {
            Some(spec) => TargetSource::Boxes(upload::pooled_ground_truth(pool, spec)?),
            None => TargetSource::Dense {
                cls: pool.get(Slot::Input(Input::ClsTargets))?,
                cnt: pool.get(Slot::Input(Input::CntTargets))?,
                reg: pool.get(Slot::Input(Input::RegTargets))?,
            },
        };
        // Each head and gradient packed in its pooled buffer.
        let heads = packed_levels(
            levels,
            Heads::try_from_fn(|h| pool.get(Slot::Input(h.input())))?,
        );
        let grads = backward
            .then(|| Heads::try_from_fn(|h| pool.get(Slot::Grad(h))))
            .transpose()?
            .map(|g| packed_levels(levels, g));
        let half_grads = grad_dtype
            .is_half()
            .then(|| Heads::try_from_fn(|h| pool.get(Slot::HalfGrad(h))))
            .transpose()?
            .map(|g| packed_levels(levels, g));
        let call = Call {
            planned: &planned,
            heads: level_slices(&heads),
            targets,
            grads: grads.as_ref().map(level_slices),
            half_grads: half_grads.as_ref().map(level_slices),
            read_grads: backward.then(|| pool.get(Slot::GradReadback)).transpose()?,
        };
        then(pool, &call)
    }
}

/// The pooled gradient buffers (`f32`, and, for half gradients in `dtype`, the
/// half ones) and the mappable copy of the ones read back.
fn gradient_needs(core: &Core, levels: &Levels, b: usize, dtype: Dtype) -> Vec<Need> {
    use wgpu::BufferUsages as U;
    let mut needs: Vec<Need> = Head::ALL
        .iter()
        .map(|&h| Need {
            slot: Slot::Grad(h),
            size: core.grad_bytes(h, levels, b),
            usage: U::STORAGE | U::COPY_SRC,
        })
        .collect();
    if dtype.is_half() {
        needs.extend(Head::ALL.iter().map(|&h| Need {
            slot: Slot::HalfGrad(h),
            size: core.grad_bytes_as(h, levels, b, dtype),
            usage: U::STORAGE | U::COPY_SRC,
        }));
    }
    needs.push(Need {
        slot: Slot::GradReadback,
        size: gradient_bytes(core, levels, b, dtype).max(4),
        usage: U::MAP_READ | U::COPY_DST,
    });
    needs
}

/// Reads the pooled gradient copy (filled by the call's submission, in `dtype`)
/// into per-level `f32` vectors.
fn read_gradients(
    core: &Core,
    pool: &Pool,
    levels: &Levels,
    b: usize,
    dtype: Dtype,
) -> Result<Gradients, FcosError> {
    let staging = pool.get(Slot::GradReadback)?;
    let total = gradient_bytes(core, levels, b, dtype);
    let bytes = core.readback().read(staging, 0..total, None)?;
    split_gradients(core, levels, b, &bytes, dtype)
}

/// Bytes of the three heads' gradients of `b` images in `dtype`, one after
/// another (each a whole number of words).
fn gradient_bytes(core: &Core, levels: &Levels, b: usize, dtype: Dtype) -> u64 {
    Head::ALL
        .iter()
        .map(|&h| core.grad_bytes_as(h, levels, b, dtype))
        .sum()
}

/// The three heads' gradients in `dtype`, one after another in `bytes` (each a
/// whole number of words), as per-level `f32` vectors (halves widened exactly).
fn split_gradients(
    core: &Core,
    levels: &Levels,
    b: usize,
    bytes: &[u8],
    dtype: Dtype,
) -> Result<Gradients, FcosError> {
    let mut at = 0usize;
    Ok(Heads::from_fn(|h| {
        let ch = h.channels(core.classes());
        let head = &bytes[at..];
        at += core.grad_bytes_as(h, levels, b, dtype) as usize;
        let all = widen_bytes(head, dtype, levels.packed_len(b, ch));
        (0..levels.len())
            .map(|l| {
                let from = levels.packed_offset(l, b, ch);
                all[from..from + levels.level_len(l, b, ch)].to_vec()
            })
            .collect()
    }))
}
