//! The pooled buffers every call uses besides its inputs and gradients: partial
//! sums, counts, per-image sums, their readback, the params, the timestamps and,
//! where the call normalises on the device, its gradient factors.

use crate::error::FcosError;
use crate::gpu::params::{Count, ImageSums, PARTIAL_BYTES};
use crate::gpu::plan::{BindRange, Plan};
use crate::gpu::pool::{Need, Pool, Slot};
use crate::gpu::uniforms::ParamSlots;

/// Bytes of the two resolved timestamps that follow the results in the readback.
pub(crate) const TIMESTAMP_BYTES: u64 = 16;

/// Bytes of the denominators a normalisation pass used (`scales` slot 0), after
/// the timestamps in the readback.
pub(crate) const USED_BYTES: u64 = 16;

/// Bytes of a recorded call's stamp (its generation, `u64`, then padding), after
/// the denominators in the readback: copied there by the call's own commands, so
/// it shows whether they ran.
pub(crate) const STAMP_BYTES: u64 = 16;

/// Where the stamp lies in the readback.
pub(crate) fn stamp_offset(b: u32) -> u64 {
    result_bytes(b) + TIMESTAMP_BYTES + USED_BYTES
}

/// Bytes of the readback: results, timestamps, denominators used, stamp.
pub(crate) fn readback_bytes(b: u32) -> u64 {
    result_bytes(b) + TIMESTAMP_BYTES + USED_BYTES + STAMP_BYTES
}

/// The buffers of the normalisation pass (norm.wgsl) besides the counts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NormBuffers<'p> {
    /// Where its `1 + B` scale slots go (shaped like the partials): the denominators
    /// used in slot 0, each image's gradient factors after. In a loss call, the
    /// partials buffer from the plan's `scale_base`, where the fused pass reads them.
    pub scales: &'p wgpu::Buffer,
    /// Byte offset of slot 0 in `scales` (storage-aligned).
    pub scales_offset: u64,
    /// The host's global denominators, where they do not come from a device buffer.
    pub denominators: &'p wgpu::Buffer,
}

impl NormBuffers<'_> {
    /// The binding of the scale slots of `batch` images.
    pub fn scale_range(&self, batch: u32) -> BindRange {
        BindRange {
            offset: self.scales_offset,
            size: PARTIAL_BYTES * (1 + batch as u64),
            base: 0,
        }
    }
}

/// The buffers of the cull pass (calls from boxes).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BoxWork<'p> {
    /// `[B · tiles per image][M]` entries of two `vec4<f32>`.
    pub lists: &'p wgpu::Buffer,
    /// `[B · tiles per image]` lengths, then `[B]` check flags (cleared before
    /// the cull pass).
    pub counts: &'p wgpu::Buffer,
}

/// Tiles of one image over all levels (the class-chunk-0 partial slots).
fn tiles_per_image(plan: &Plan) -> u64 {
    (plan.partials_per_image / plan.chunks.max(1)) as u64
}

/// Bytes of the tiles' lists of a call of `plan` with `m` boxes per image.
pub(crate) fn list_bytes(plan: &Plan, m: u32) -> u64 {
    (plan.batch as u64)
        .saturating_mul(tiles_per_image(plan))
        .saturating_mul(u64::from(m.max(1)))
        .saturating_mul(32)
}

/// The cull pass's buffers of a call of `plan` with `m` boxes per image.
pub(crate) fn box_needs(plan: &Plan, m: u32) -> [Need; 2] {
    use wgpu::BufferUsages as U;
    let lists = plan.batch as u64 * tiles_per_image(plan);
    [
        Need {
            slot: Slot::BoxLists,
            size: list_bytes(plan, m),
            usage: U::STORAGE,
        },
        Need {
            slot: Slot::ListCounts,
            size: 4 * (lists + plan.batch as u64),
            usage: U::STORAGE | U::COPY_DST,
        },
    ]
}

impl<'p> BoxWork<'p> {
    /// The buffers [`box_needs`] reserved.
    pub fn from_pool(pool: &'p Pool) -> Result<Self, FcosError> {
        Ok(BoxWork {
            lists: pool.get(Slot::BoxLists)?,
            counts: pool.get(Slot::ListCounts)?,
        })
    }
}

/// One call's work buffers, borrowed from the pool.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WorkBuffers<'p> {
    pub partials: &'p wgpu::Buffer,
    pub image_sums: &'p wgpu::Buffer,
    pub readback: &'p wgpu::Buffer,
    pub params: &'p wgpu::Buffer,
    /// Totals in slot 0 (where the call normalises), each image's positives and
    /// centerness sum after (count.wgsl, every call).
    pub counts: &'p wgpu::Buffer,
    /// The normalisation's buffers (calls that normalise on the device).
    pub norm: Option<NormBuffers<'p>>,
    /// Resolved timestamps (devices with timestamp queries).
    pub timestamps: Option<&'p wgpu::Buffer>,
    /// The cull pass's buffers (calls from boxes).
    pub boxes: Option<BoxWork<'p>>,
}

/// Bytes of the per-image sums of `b` images.
pub(crate) fn result_bytes(b: u32) -> u64 {
    std::mem::size_of::<ImageSums>() as u64 * b as u64
}

/// Bytes of the counts of `b` images (the totals first).
pub(crate) fn count_bytes(b: u32) -> u64 {
    std::mem::size_of::<Count>() as u64 * (1 + b as u64)
}

/// The counting pass's buffer for `b` images.
pub(crate) fn counts_need(b: u32) -> Need {
    Need {
        slot: Slot::Counts,
        size: count_bytes(b),
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    }
}

/// The normalisation pass's host denominators (its scale slots live in the
/// partials buffer of a loss call).
pub(crate) fn norm_need() -> Need {
    Need {
        slot: Slot::Denominators,
        size: 16,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
    }
}

/// A buffer of its own for the scale slots of `b` images (the counting phase,
/// which has no partials).
pub(crate) fn scale_slots_need(b: u32) -> Need {
    Need {
        slot: Slot::Scales,
        size: PARTIAL_BYTES * (1 + b as u64),
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    }
}

impl<'p> WorkBuffers<'p> {
    /// What a call of `plan` needs reserved.
    pub fn needs(plan: &Plan, params: &ParamSlots, norm: bool, timestamps: bool) -> Vec<Need> {
        use wgpu::BufferUsages as U;
        let out_bytes = result_bytes(plan.batch);
        let mut needs = vec![
            // Sized by a bound that only grows with B, so a smaller batch never regrows it.
            Need {
                slot: Slot::Partials,
                size: partials_bytes(plan),
                usage: U::STORAGE | U::COPY_SRC,
            },
            Need {
                slot: Slot::ImageSums,
                size: out_bytes,
                usage: U::STORAGE | U::COPY_SRC,
            },
            Need {
                slot: Slot::Readback,
                size: readback_bytes(plan.batch),
                usage: U::MAP_READ | U::COPY_DST,
            },
            Need {
                slot: Slot::Params,
                size: params.size(),
                usage: U::UNIFORM | U::COPY_DST,
            },
            counts_need(plan.batch),
        ];
        if norm {
            needs.push(norm_need());
        }
        if timestamps {
            needs.push(Need {
                slot: Slot::Timestamps,
                size: TIMESTAMP_BYTES,
                usage: U::QUERY_RESOLVE | U::COPY_SRC,
            });
        }
        needs
    }

    /// The buffers [`needs`](Self::needs) reserved.
    pub fn from_pool(
        pool: &'p Pool,
        plan: &Plan,
        norm: bool,
        timestamps: bool,
        boxes: bool,
    ) -> Result<Self, FcosError> {
        let partials = pool.get(Slot::Partials)?;
        let norm = norm
            .then(|| -> Result<_, FcosError> {
                Ok(NormBuffers {
                    scales: partials,
                    scales_offset: PARTIAL_BYTES * plan.scale_base,
                    denominators: pool.get(Slot::Denominators)?,
                })
            })
            .transpose()?;
        Ok(WorkBuffers {
            partials,
            image_sums: pool.get(Slot::ImageSums)?,
            readback: pool.get(Slot::Readback)?,
            params: pool.get(Slot::Params)?,
            counts: pool.get(Slot::Counts)?,
            norm,
            timestamps: timestamps.then(|| pool.get(Slot::Timestamps)).transpose()?,
            boxes: boxes.then(|| BoxWork::from_pool(pool)).transpose()?,
        })
    }
}

/// Bytes of the partials buffer of a call of `plan`: the partial slots (a bound
/// that only grows with B, so a smaller batch never regrows it), then the scale
/// slots at `scale_base`.
pub(crate) fn partials_bytes(plan: &Plan) -> u64 {
    PARTIAL_BYTES * (plan.scale_base + 1 + plan.batch as u64)
}

impl<'p> NormBuffers<'p> {
    /// The buffers [`scale_slots_need`] and [`norm_need`] reserved (the counting
    /// phase).
    pub fn from_pool(pool: &'p Pool) -> Result<Self, FcosError> {
        Ok(NormBuffers {
            scales: pool.get(Slot::Scales)?,
            scales_offset: 0,
            denominators: pool.get(Slot::Denominators)?,
        })
    }
}
