//! Calls recorded into the caller's command encoder and read later: the handle of
//! a recorded call ([`PendingLosses`]), and its read-back, `async` or non-blocking.
//!
//! Recording takes a result slot of the engine's ring (`ring.rs`), encodes the
//! whole call (count, normalisation where needed, fused pass, finalize) and the
//! copy of its results into the slot's readback, then a copy of the call's
//! generation (a stamp) after them. Nothing is submitted, polled or mapped. A read
//! maps the readback once the GPU is done, checks the stamp (a call whose commands
//! never ran is an error, not a wait), decodes, frees the slot, and names a bad
//! input as the blocking calls do.

use std::sync::{Arc, Mutex};

use crate::config::LossConfig;
use crate::error::FcosError;
use crate::gpu::call::{Call, DenominatorSource};
use crate::gpu::core::Core;
use crate::gpu::device_inputs::DeviceInputs;
use crate::gpu::encode;
use crate::gpu::pool::Pool;
use crate::gpu::ranges::{BufferRange, RangedGroundTruth, RangedInputs, RangedPredictions};
use crate::gpu::readback::Readback;
use crate::gpu::results::{losses_of, ReadbackParts};
use crate::gpu::ring::Ring;
use crate::gpu::scope::scoped;
use crate::gpu::work::{readback_bytes, result_bytes, stamp_offset, STAMP_BYTES};
use crate::layout::Levels;
use crate::losses::Losses;

/// The buffers a recorded call leaves its results in.
pub(crate) struct Recorded {
    /// The mappable readback (sums, timestamps, denominators used, stamp).
    pub readback: wgpu::Buffer,
    /// The per-image sums on the device.
    pub image_sums: wgpu::Buffer,
}

/// Records `call` (over `pool`'s work buffers) into `encoder` without timestamps,
/// then the copy of its results into the readback and of `generation` (the stamp)
/// after them. The call's params and the host's denominators are copied in by the
/// encoder too, from a buffer of this call's own, so that they follow the
/// encoder's order: a later call recorded over the same slot (after this one's
/// handle was dropped) cannot overwrite them before this call runs.
pub(crate) fn encode_recorded(
    core: &Core,
    encoder: &mut wgpu::CommandEncoder,
    pool: &Pool,
    call: &Call,
    generation: u64,
) -> Result<Recorded, FcosError> {
    let planned = call.planned;
    let plan = &planned.plan;
    let staged = core.bind_call(pool, call)?;
    let work = &staged.work;
    let params = &planned.params.bytes;
    let dens_at = params.len() as u64;
    let stamp_at = dens_at + 16;
    let mut init = params.clone();
    let dens = match planned.denominators {
        DenominatorSource::Host(d) => [d[0], d[1], 0.0, 0.0],
        DenominatorSource::Device(_) => [0.0; 4],
    };
    init.extend_from_slice(bytemuck::cast_slice(&dens));
    init.extend_from_slice(&generation.to_le_bytes());
    init.extend_from_slice(&[0u8; 8]);
    scoped(&core.ctx.device, || {
        let src = core.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("fcos recorded call's params"),
            size: init.len() as u64,
            usage: wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: true,
        });
        if let Ok(mut view) = src.get_mapped_range_mut(..) {
            view.copy_from_slice(&init);
        }
        src.unmap();
        encoder.copy_buffer_to_buffer(&src, 0, work.params, 0, dens_at);
        if let (Some(norm), DenominatorSource::Host(_)) = (&work.norm, planned.denominators) {
            encoder.copy_buffer_to_buffer(&src, dens_at, norm.denominators, 0, 16);
        }
        encode::passes(
            encoder,
            &staged.pipelines,
            &staged.groups,
            plan,
            None,
            work.boxes.zip(planned.boxes.map(|b| b.boxes_per_image)),
        );
        encode::results(encoder, work, plan.batch, None);
        encoder.copy_buffer_to_buffer(
            &src,
            stamp_at,
            work.readback,
            stamp_offset(plan.batch),
            STAMP_BYTES,
        );
    })?;
    Ok(Recorded {
        readback: work.readback.clone(),
        image_sums: work.image_sums.clone(),
    })
}

/// What a bad value is looked for in, when a read finds the check flags set.
#[derive(Debug, Clone)]
pub(crate) enum Located<'a> {
    Device(DeviceInputs<'a>),
    Ranged(RangedInputs<'a>),
    /// Predictions and ground truth of a call from boxes.
    RangedBoxes(RangedPredictions<'a>, RangedGroundTruth<'a>),
}

/// A call recorded into a command encoder and not yet read
/// ([`FcosLoss::record_device`](crate::FcosLoss::record_device),
/// [`record_ranges`](crate::FcosLoss::record_ranges)). Read its losses with
/// [`FcosLoss::read_losses`](crate::FcosLoss::read_losses) (`async`) or
/// [`FcosLoss::try_read_losses`](crate::FcosLoss::try_read_losses) after
/// submitting the encoder. It borrows the inputs (and the levels) for as long as
/// it lives: a bad value is located in them when the results are read. Dropping it
/// unread frees its result slot.
#[derive(Debug)]
pub struct PendingLosses<'a> {
    pub(crate) ring: Arc<Ring>,
    pub(crate) slot: usize,
    pub(crate) generation: u64,
    pub(crate) batch: u32,
    pub(crate) device_denominators: bool,
    pub(crate) config: LossConfig,
    /// The slot's readback and per-image sums (`None` with `ready`).
    pub(crate) readback: Option<wgpu::Buffer>,
    pub(crate) image_sums: Option<wgpu::Buffer>,
    pub(crate) levels: &'a Levels,
    pub(crate) located: Located<'a>,
    /// A call over levels without positions records nothing: its losses are zero.
    pub(crate) ready: Option<Losses>,
}

impl PendingLosses<'_> {
    /// The per-image results on the device, for GPU work recorded after the call
    /// in the same submission (a loss-scaled update, say): `B` records of 8 words,
    /// `S_cls, S_cnt, S_reg, S_regw, Z` (`f32`), the positives `n`, the check flags
    /// (`u32`), padding; the raw sums of docs/contract.md §8, to normalise as the
    /// config says. The buffer has `STORAGE | COPY_SRC` and stays this call's
    /// until it is read or dropped. `None` for levels without positions.
    pub fn results(&self) -> Option<BufferRange<'_>> {
        self.image_sums.as_ref().map(|buffer| BufferRange {
            buffer,
            offset: 0,
            size: result_bytes(self.batch),
        })
    }

    /// Images in the call.
    pub fn batch(&self) -> usize {
        self.batch as usize
    }
}

impl Drop for PendingLosses<'_> {
    fn drop(&mut self) {
        if let Some(readback) = &self.readback {
            self.ring
                .release(self.slot, self.generation, Some(readback));
        }
    }
}

/// The slot still holds `p`'s call, with no non-blocking read under way (unless
/// `mapping_ok`).
fn check_held(p: &PendingLosses, mapping_ok: bool) -> Result<(), FcosError> {
    let slot = p.ring.lock(p.slot);
    match &slot.busy {
        Some(b) if b.generation == p.generation => {
            if b.reading {
                return Err(FcosError::InvalidCall(
                    "a read of this call is already under way".into(),
                ));
            }
            if b.mapping.is_some() && !mapping_ok {
                return Err(FcosError::InvalidCall(
                    "a non-blocking read of this call is under way: finish it with try_read_losses"
                        .into(),
                ));
            }
            Ok(())
        }
        _ => Err(FcosError::InvalidCall(
            "this call's results were already read".into(),
        )),
    }
}

/// Reads `p`'s readback once the GPU is done with all submitted work, on a thread
/// of its own, so that the future only waits on a channel: it works under any
/// executor (pollster, tokio, ...) and never blocks one.
pub(crate) async fn read(core: &Core, p: &PendingLosses<'_>) -> Result<Losses, FcosError> {
    let (Some(readback), None) = (&p.readback, &p.ready) else {
        return p
            .ready
            .clone()
            .ok_or_else(|| FcosError::gpu("a call without results"));
    };
    check_held(p, false)?;
    let bytes = read_off_thread(
        core,
        readback.clone(),
        readback_bytes(p.batch),
        (p.slot, p.generation),
    )
    .await?;
    finish(core, p, &bytes)
}

/// Maps `0..end` of `buf` (a buffer of ring slot `slot`'s call of `generation`)
/// once the GPU is done with all submitted work, on a thread of its own (the
/// engine's timeout holds), and returns its bytes. The slot stays held while the
/// thread has the buffer, even if this future is dropped.
pub(crate) async fn read_off_thread(
    core: &Core,
    buf: wgpu::Buffer,
    end: u64,
    (slot, generation): (usize, u64),
) -> Result<Vec<u8>, FcosError> {
    let ctx = core.ctx.clone();
    let timeout = core.timeout;
    let ring = core.ring.clone();
    ring.start_reading(slot, generation)?;
    let (tx, rx) = futures_intrusive::channel::shared::oneshot_channel();
    let thread_ring = ring.clone();
    let spawned = std::thread::Builder::new()
        .name("fcos-loss read-back".into())
        .spawn(move || {
            let r = Readback { ctx: &ctx, timeout }.read(&buf, 0..end, None);
            // Unmapped by now (or never mapped): the slot may be freed.
            thread_ring.done_reading(slot, generation);
            // A failed send only means the reader gave up waiting.
            let _ = tx.send(r);
        });
    if let Err(e) = spawned {
        ring.done_reading(slot, generation);
        return Err(FcosError::gpu(format!(
            "starting the read-back thread failed: {e}"
        )));
    }
    rx.receive()
        .await
        .ok_or_else(|| FcosError::gpu("the read-back thread ended without a result"))?
}

/// One non-blocking step of a read: `None` until the GPU is done.
pub(crate) fn try_read(core: &Core, p: &PendingLosses<'_>) -> Result<Option<Losses>, FcosError> {
    let (Some(readback), None) = (&p.readback, &p.ready) else {
        return Ok(p.ready.clone());
    };
    check_held(p, true)?;
    let end = readback_bytes(p.batch);
    let done = {
        let mut slot = p.ring.lock(p.slot);
        let busy = slot
            .busy
            .as_mut()
            .filter(|b| b.generation == p.generation)
            .ok_or_else(|| {
                FcosError::InvalidCall("this call's results were already read".into())
            })?;
        busy.mapping
            .get_or_insert_with(|| {
                let done = Arc::new(Mutex::new(None));
                let sink = done.clone();
                readback
                    .slice(0..end)
                    .map_async(wgpu::MapMode::Read, move |r| {
                        *sink.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                    });
                done
            })
            .clone()
    };
    core.ctx
        .device
        .poll(wgpu::PollType::Poll)
        .map_err(|e| FcosError::gpu_from("polling the device failed", e))?;
    let mapped = done.lock().unwrap_or_else(|e| e.into_inner()).take();
    let clear = || {
        if let Some(b) = p.ring.lock(p.slot).busy.as_mut() {
            b.mapping = None;
        }
    };
    match mapped {
        None => Ok(None),
        Some(Err(e)) => {
            clear();
            core.ctx.health()?;
            Err(FcosError::gpu_from("mapping the results failed", e))
        }
        Some(Ok(())) => {
            let bytes = readback
                .slice(0..end)
                .get_mapped_range()
                .map(|v| v.to_vec())
                .map_err(|e| FcosError::gpu_from("reading the results failed", e));
            readback.unmap();
            clear();
            finish(core, p, &bytes?).map(Some)
        }
    }
}

/// The readback's bytes of `p`, checked and decoded; the slot is freed unless the
/// call's commands have not run.
fn finish(core: &Core, p: &PendingLosses<'_>, bytes: &[u8]) -> Result<Losses, FcosError> {
    let (losses, flags) = decode(
        bytes,
        p.batch,
        p.generation,
        &p.config,
        p.device_denominators,
    )?;
    p.ring.release(p.slot, p.generation, None);
    if flags != 0 {
        return Err(locate(core, p, flags));
    }
    Ok(losses)
}

/// The losses and check flags of a recorded call's readback, once its stamp shows
/// that its commands ran.
pub(crate) fn decode(
    bytes: &[u8],
    batch: u32,
    generation: u64,
    config: &LossConfig,
    device_denominators: bool,
) -> Result<(Losses, u32), FcosError> {
    let parts = ReadbackParts::of(bytes, batch);
    let stamp = parts
        .stamp
        .ok_or_else(|| FcosError::gpu("a short readback"))?;
    if stamp != generation {
        return Err(FcosError::InvalidCall(
            "the call's commands have not run: submit the encoder it was recorded into, then read its results"
                .into(),
        ));
    }
    Ok(losses_of(
        &parts.images,
        parts.used,
        config,
        device_denominators,
    ))
}

/// The error naming the first bad value of `p`'s inputs.
fn locate(core: &Core, p: &PendingLosses<'_>, flags: u32) -> FcosError {
    use crate::gpu::locate::{locate_bad_input, locate_bad_ranged_boxes, locate_bad_ranges};
    match &p.located {
        Located::Device(inputs) => locate_bad_input(core, p.levels, inputs, flags),
        Located::Ranged(inputs) => locate_bad_ranges(core, p.levels, inputs, flags),
        Located::RangedBoxes(preds, gt) => {
            locate_bad_ranged_boxes(core, p.levels, preds, gt, flags)
        }
    }
}
