//! The `Params` of one call, packed into one uniform buffer: slot 0 for the whole
//! call (the finalize pass), then one slot per fused-pass segment, then one per
//! positive-count dispatch, each at the device's uniform offset alignment.

use crate::config::{LossConfig, LossWeights};
use crate::gpu::params::{BoxSpec, Params};
use crate::gpu::plan::Plan;
use crate::layout::Levels;

/// The packed slots and where each one starts.
#[derive(Debug, Clone)]
pub(crate) struct ParamSlots {
    /// Bytes from one slot to the next.
    stride: u64,
    /// Fused-pass segments (their slots follow slot 0).
    segments: usize,
    /// Positive-count dispatches (their slots follow the segments').
    counts: usize,
    /// Every slot's bytes, ready for `Queue::write_buffer`.
    pub bytes: Vec<u8>,
}

impl ParamSlots {
    /// The params of every dispatch of `plan`.
    pub fn pack(
        config: &LossConfig,
        weights: &LossWeights,
        levels: &Levels,
        plan: &Plan,
        boxes: Option<BoxSpec>,
        min_uniform_alignment: u32,
    ) -> Self {
        let stride = (std::mem::size_of::<Params>() as u64)
            .next_multiple_of(min_uniform_alignment.max(16) as u64);
        let mut call = plan.global_params(&Params::global(
            config,
            weights,
            plan.batch,
            levels.positions() as u32,
        ));
        if let Some(spec) = boxes {
            call = call.with_boxes(config, spec);
        }
        call.scale_base = plan.scale_base as u32;
        let slots: Vec<Params> = std::iter::once(call)
            .chain(plan.segments.iter().map(|s| {
                plan.params(&call, levels, s)
                    .with_level_rule(config, levels, s.level)
            }))
            .chain(
                plan.count_groups
                    .iter()
                    .map(|g| plan.count_params(&call, g)),
            )
            .chain(plan.packs.iter().map(|r| Params {
                pack_src_base: r.src.base,
                pack_dst_base: r.dst.base,
                pack_count: r.count,
                ..call
            }))
            .collect();
        let mut bytes = vec![0u8; stride as usize * slots.len()];
        for (chunk, p) in bytes.chunks_mut(stride as usize).zip(&slots) {
            chunk[..std::mem::size_of::<Params>()].copy_from_slice(bytemuck::bytes_of(p));
        }
        ParamSlots {
            stride,
            segments: plan.segments.len(),
            counts: plan.count_groups.len(),
            bytes,
        }
    }

    /// Byte offset of the whole call's slot.
    pub fn call(&self) -> u64 {
        0
    }

    /// Byte offset of fused-pass segment `s`'s slot.
    pub fn segment(&self, s: usize) -> u64 {
        (1 + s as u64) * self.stride
    }

    /// Byte offset of positive-count dispatch `g`'s slot.
    pub fn count(&self, g: usize) -> u64 {
        (1 + self.segments as u64 + g as u64) * self.stride
    }

    /// Byte offset of half-gradient pack dispatch `r`'s slot.
    pub fn pack_run(&self, r: usize) -> u64 {
        (1 + (self.segments + self.counts + r) as u64) * self.stride
    }

    /// Bytes of the buffer that holds them.
    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// The bind group entry of the slot at `offset` of `buffer`, as binding 0.
    pub fn entry<'a>(&self, buffer: &'a wgpu::Buffer, offset: u64) -> wgpu::BindGroupEntry<'a> {
        wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer,
                offset,
                size: std::num::NonZeroU64::new(std::mem::size_of::<Params>() as u64),
            }),
        }
    }
}
