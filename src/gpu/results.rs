//! Reading a call's per-image results back: losses, positives, check flags and
//! the kernel time.

use std::time::Duration;

use crate::error::FcosError;
use crate::gpu::core::Core;
use crate::gpu::params::ImageLoss;
use crate::gpu::work::{result_bytes, WorkBuffers, TIMESTAMP_BYTES};
use crate::losses::Losses;

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
    /// Maps the readback once submission `index` is done and decodes it.
    pub fn read(
        core: &Core,
        work: &WorkBuffers,
        batch: u32,
        index: wgpu::SubmissionIndex,
    ) -> Result<Self, FcosError> {
        let out_bytes = result_bytes(batch);
        let bytes =
            core.readback()
                .read(work.readback, 0..out_bytes + TIMESTAMP_BYTES, Some(index))?;
        let (results, stamps) = bytes.split_at(out_bytes as usize);
        let images: Vec<ImageLoss> = bytemuck::pod_collect_to_vec(results);
        let kernel = core
            .query_set
            .as_ref()
            .and_then(|_| kernel_time(stamps, core.ctx.queue.get_timestamp_period()));
        let per_image = |g: fn(&ImageLoss) -> f32| images.iter().map(|x| g(x) as f64).collect();
        Ok(Outcome {
            losses: Losses::from_per_image(
                per_image(|x| x.cls),
                per_image(|x| x.cnt),
                per_image(|x| x.reg),
                images.iter().map(|x| x.num_pos).collect(),
                core.config.add_centerness,
            ),
            kernel,
            flags: images.iter().fold(0, |f, x| f | x.flags),
        })
    }
}

/// The time between two resolved timestamps; `None` for an end before the start
/// or no ticks at all (the caller falls back to the wall clock).
fn kernel_time(stamps: &[u8], period_ns: f32) -> Option<Duration> {
    let ts: Vec<u64> = bytemuck::pod_collect_to_vec(stamps);
    let ticks = ts.get(1)?.checked_sub(*ts.first()?).filter(|&t| t > 0)?;
    let ns = ticks as f64 * period_ns as f64;
    Some(Duration::from_nanos(ns as u64))
}
