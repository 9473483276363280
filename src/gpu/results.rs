//! Reading a call's per-image sums back, normalised into losses, with the check
//! flags and the kernel time.

use std::time::Duration;

use crate::config::Denominators;
use crate::error::FcosError;
use crate::gpu::core::Core;
use crate::gpu::params::ImageSums;
use crate::gpu::work::{result_bytes, stamp_offset, WorkBuffers, TIMESTAMP_BYTES, USED_BYTES};
use crate::losses::{Losses, Sums};

/// What a call brings back.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub losses: Losses,
    /// GPU time of the compute pass, where timestamps were taken and usable.
    pub kernel: Option<Duration>,
    /// OR of every image's check flags (0: every value usable, or checks off).
    pub flags: u32,
}

impl Outcome {
    /// Maps the readback once submission `index` is done and decodes it; with
    /// `device_denominators` the host normalises with the denominators the
    /// normalisation pass read from the caller's buffer.
    pub fn read(
        core: &Core,
        work: &WorkBuffers,
        batch: u32,
        index: wgpu::SubmissionIndex,
        device_denominators: bool,
    ) -> Result<Self, FcosError> {
        let end = stamp_offset(batch);
        let bytes = core.readback().read(work.readback, 0..end, Some(index))?;
        Ok(Self::decode(core, &bytes, batch, device_denominators))
    }

    /// Decodes the readback's bytes: the per-image sums, the timestamps, the
    /// denominators used.
    pub fn decode(core: &Core, bytes: &[u8], batch: u32, device_denominators: bool) -> Self {
        let parts = ReadbackParts::of(bytes, batch);
        let kernel = core
            .query_set
            .as_ref()
            .and_then(|_| kernel_time(parts.stamps, core.ctx.queue.get_timestamp_period()));
        let (losses, flags) =
            losses_of(&parts.images, parts.used, &core.config, device_denominators);
        Outcome {
            losses,
            kernel,
            flags,
        }
    }
}

/// The losses of per-image sums under `config` (with `device_denominators`, the
/// normalisation's denominators read from a device buffer, from `used`), and the
/// OR of the images' check flags.
pub(crate) fn losses_of(
    images: &[ImageSums],
    used: &[u8],
    config: &crate::config::LossConfig,
    device_denominators: bool,
) -> (Losses, u32) {
    let used: Vec<f32> = bytemuck::pod_collect_to_vec(used);
    let global = device_denominators.then(|| Denominators {
        num_pos: used[0],
        ctr: used[1],
    });
    (
        Losses::from_sums(sums_of(images), config, global),
        images.iter().fold(0, |f, x| f | x.flags),
    )
}

/// The readback of a call, split as `encode::results` lays it out: the per-image
/// sums, the two timestamps, the denominators used, and (recorded calls) the stamp.
pub(crate) struct ReadbackParts<'b> {
    pub images: Vec<ImageSums>,
    pub stamps: &'b [u8],
    pub used: &'b [u8],
    /// The recorded call's generation, where `bytes` reach that far.
    pub stamp: Option<u64>,
}

impl<'b> ReadbackParts<'b> {
    /// `bytes` (at least up to the stamp) of a call of `batch` images.
    pub fn of(bytes: &'b [u8], batch: u32) -> Self {
        let out = result_bytes(batch) as usize;
        let used_at = out + TIMESTAMP_BYTES as usize;
        let stamp_at = used_at + USED_BYTES as usize;
        ReadbackParts {
            images: bytemuck::pod_collect_to_vec(&bytes[..out]),
            stamps: &bytes[out..used_at],
            used: &bytes[used_at..stamp_at],
            stamp: bytes
                .get(stamp_at..stamp_at + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes),
        }
    }
}

/// The per-image sums, widened to `f64`.
fn sums_of(images: &[ImageSums]) -> Sums {
    let each = |g: fn(&ImageSums) -> f32| images.iter().map(|x| g(x) as f64).collect();
    Sums {
        cls: each(|x| x.cls),
        cnt: each(|x| x.cnt),
        reg: each(|x| x.reg),
        reg_w: each(|x| x.reg_w),
        num_pos: images.iter().map(|x| x.num_pos).collect(),
        ctr: each(|x| x.ctr),
    }
}

/// The time between two resolved timestamps; `None` for an end before the start
/// or no ticks at all (the caller falls back to the wall clock).
pub(crate) fn kernel_time(stamps: &[u8], period_ns: f32) -> Option<Duration> {
    let ts: Vec<u64> = bytemuck::pod_collect_to_vec(stamps);
    let ticks = ts.get(1)?.checked_sub(*ts.first()?).filter(|&t| t > 0)?;
    let ns = ticks as f64 * period_ns as f64;
    Some(Duration::from_nanos(ns as u64))
}
