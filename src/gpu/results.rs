//! Reading a call's per-image sums back, normalised into losses, with the check
//! flags and the kernel time.

use std::time::Duration;

use crate::config::Denominators;
use crate::error::FcosError;
use crate::gpu::core::Core;
use crate::gpu::params::ImageSums;
use crate::gpu::work::{result_bytes, WorkBuffers, TIMESTAMP_BYTES, USED_BYTES};
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
        let end = result_bytes(batch) + TIMESTAMP_BYTES + USED_BYTES;
        let bytes = core.readback().read(work.readback, 0..end, Some(index))?;
        Ok(Self::decode(core, &bytes, batch, device_denominators))
    }

    /// Decodes the readback's bytes: the per-image sums, the timestamps, the
    /// denominators used.
    pub fn decode(core: &Core, bytes: &[u8], batch: u32, device_denominators: bool) -> Self {
        let out_bytes = result_bytes(batch) as usize;
        let (results, rest) = bytes.split_at(out_bytes);
        let (stamps, rest) = rest.split_at(TIMESTAMP_BYTES as usize);
        let used = &rest[..USED_BYTES as usize];
        let images: Vec<ImageSums> = bytemuck::pod_collect_to_vec(results);
        let kernel = core
            .query_set
            .as_ref()
            .and_then(|_| kernel_time(stamps, core.ctx.queue.get_timestamp_period()));
        let (losses, flags) = losses_of(&images, used, &core.config, device_denominators);
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

impl Outcome {}

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
