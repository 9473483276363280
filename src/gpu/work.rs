//! The pooled buffers every call uses besides its inputs and gradients: partial
//! sums, per-image results, their readback, the params, the positive counts and
//! the timestamps.

use crate::error::FcosError;
use crate::gpu::params::{ImageLoss, PARTIAL_BYTES};
use crate::gpu::plan::Plan;
use crate::gpu::pool::{Need, Pool, Slot};
use crate::gpu::uniforms::ParamSlots;

/// Bytes of the two resolved timestamps that follow the results in the readback.
pub(crate) const TIMESTAMP_BYTES: u64 = 16;

/// One call's work buffers, borrowed from the pool.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WorkBuffers<'p> {
    pub partials: &'p wgpu::Buffer,
    pub image_losses: &'p wgpu::Buffer,
    pub readback: &'p wgpu::Buffer,
    pub params: &'p wgpu::Buffer,
    /// Positives per image (backward).
    pub num_pos: Option<&'p wgpu::Buffer>,
    /// Resolved timestamps (devices with timestamp queries).
    pub timestamps: Option<&'p wgpu::Buffer>,
}

/// Bytes of the per-image results of `b` images.
pub(crate) fn result_bytes(b: u32) -> u64 {
    std::mem::size_of::<ImageLoss>() as u64 * b as u64
}

impl<'p> WorkBuffers<'p> {
    /// What a call of `plan` needs reserved.
    pub fn needs(plan: &Plan, params: &ParamSlots, backward: bool, timestamps: bool) -> Vec<Need> {
        use wgpu::BufferUsages as U;
        let out_bytes = result_bytes(plan.batch);
        let mut needs = vec![
            // Sized by a bound that only grows with B, so a smaller batch never regrows it.
            Need {
                slot: Slot::Partials,
                size: PARTIAL_BYTES * plan.partials_capacity,
                usage: U::STORAGE,
            },
            Need {
                slot: Slot::ImageLosses,
                size: out_bytes,
                usage: U::STORAGE | U::COPY_SRC,
            },
            Need {
                slot: Slot::Readback,
                size: out_bytes + TIMESTAMP_BYTES,
                usage: U::MAP_READ | U::COPY_DST,
            },
            Need {
                slot: Slot::Params,
                size: params.size(),
                usage: U::UNIFORM | U::COPY_DST,
            },
        ];
        if backward {
            needs.push(Need {
                slot: Slot::NumPos,
                size: 4 * plan.batch as u64,
                usage: U::STORAGE,
            });
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
    pub fn from_pool(pool: &'p Pool, backward: bool, timestamps: bool) -> Result<Self, FcosError> {
        Ok(WorkBuffers {
            partials: pool.get(Slot::Partials)?,
            image_losses: pool.get(Slot::ImageLosses)?,
            readback: pool.get(Slot::Readback)?,
            params: pool.get(Slot::Params)?,
            num_pos: backward.then(|| pool.get(Slot::NumPos)).transpose()?,
            timestamps: timestamps.then(|| pool.get(Slot::Timestamps)).transpose()?,
        })
    }
}
