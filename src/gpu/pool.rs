//! Buffers reused across calls, one per [`Slot`], grown only when a larger batch
//! comes.

use std::collections::HashMap;

use crate::error::FcosError;
use crate::gpu::scope::scoped;
use crate::input::{Head, Input};

/// What a pooled buffer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Slot {
    /// Host path: the upload target of one input (heads packed by level).
    Input(Input),
    /// Host path, calls from boxes: the ground-truth boxes.
    GtBoxes,
    /// Host path, calls from boxes: the ground-truth classes (`i32` words).
    GtClasses,
    /// Calls from boxes: each tile's list of boxes (cull.wgsl).
    BoxLists,
    /// Calls from boxes: the lists' lengths, then each image's check flags.
    ListCounts,
    /// The target pass: one of its three outputs (host path).
    Assigned(Input),
    /// The target pass: mappable copy of its outputs (host path).
    AssignedReadback,
    /// The target pass: mappable copy of the partial slots (counts and flags).
    PartialsReadback,
    /// Host path: the mappable staging buffer holding every input one after
    /// another (unused where the inputs are written straight into mappable
    /// storage buffers).
    Upload,
    /// Backward: one head's `f32` gradients, laid out like the input (the host
    /// path's, and the device path's where they are packed into half ones).
    Grad(Head),
    /// Host path, backward, half gradients: one head's, in the heads' dtype.
    HalfGrad(Head),
    /// Host path, backward: mappable copy of the three gradients, one after another.
    GradReadback,
    /// The fused pass's partial sums.
    Partials,
    /// The finalize pass's per-image sums.
    ImageSums,
    /// Positives and centerness sums per image, the totals first.
    Counts,
    /// The denominators used and each image's gradient factors.
    Scales,
    /// The host's global denominators.
    Denominators,
    /// Mappable copy of the per-image sums, then the two timestamps, then the
    /// denominators used.
    Readback,
    /// The uniform params, one aligned slot per dispatch.
    Params,
    /// Resolved timestamps.
    Timestamps,
    /// Mappable copy of the counting phase's counts.
    CountsReadback,
}

impl Slot {
    pub fn label(self) -> String {
        match self {
            Slot::Input(i) => format!("fcos {i}"),
            Slot::Grad(h) => format!("fcos grad {h}"),
            Slot::HalfGrad(h) => format!("fcos half grad {h}"),
            Slot::Assigned(i) => format!("fcos assigned {i}"),
            other => format!("fcos {other:?}"),
        }
    }
}

/// One buffer a call needs: its slot, least size and usage.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Need {
    pub slot: Slot,
    pub size: u64,
    pub usage: wgpu::BufferUsages,
}

/// Every buffer the engine owns.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    buffers: HashMap<Slot, wgpu::Buffer>,
    /// How many buffers this pool has created (for tests of reuse).
    pub created: u64,
}

/// Buffers are never made smaller than this (a zero-sized binding is invalid).
const MIN_SIZE: u64 = 256;

impl Pool {
    /// Makes every slot of `needs` hold a buffer of at least its size with its
    /// usage, creating only what is missing, too small or of another usage, inside
    /// wgpu error scopes. When wgpu reports an error the pool is emptied, so that an
    /// invalid buffer is never handed to a later call.
    pub fn reserve(&mut self, device: &wgpu::Device, needs: &[Need]) -> Result<(), FcosError> {
        let made = scoped(device, || {
            for need in needs {
                self.ensure(device, need);
            }
        });
        if made.is_err() {
            self.buffers.clear();
        }
        made
    }

    fn ensure(&mut self, device: &wgpu::Device, need: &Need) {
        let size = need.size.max(MIN_SIZE).next_multiple_of(16);
        // Every buffer but a mappable read-back can be copied out, so that a call
        // can be captured (`capture.rs`).
        let usage = if need.usage.contains(wgpu::BufferUsages::MAP_READ) {
            need.usage
        } else {
            need.usage | wgpu::BufferUsages::COPY_SRC
        };
        let fits = self
            .buffers
            .get(&need.slot)
            .is_some_and(|b| b.size() >= size && b.usage() == usage);
        if fits {
            return;
        }
        // Drop the old buffer first so that growing never holds both.
        self.buffers.remove(&need.slot);
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(&need.slot.label()),
            size,
            usage,
            mapped_at_creation: false,
        });
        self.buffers.insert(need.slot, buffer);
        self.created += 1;
    }

    /// The label of the slot that holds `buffer`, if the pool holds it.
    pub fn label_of(&self, buffer: &wgpu::Buffer) -> Option<String> {
        self.buffers
            .iter()
            .find(|(_, b)| *b == buffer)
            .map(|(slot, _)| slot.label())
    }

    /// The buffer of a slot [`reserve`](Self::reserve)d for this call.
    pub fn get(&self, slot: Slot) -> Result<&wgpu::Buffer, FcosError> {
        self.buffers.get(&slot).ok_or_else(|| {
            FcosError::gpu(format!(
                "the pooled buffer {:?} is missing (an earlier allocation failed)",
                slot.label()
            ))
        })
    }
}
