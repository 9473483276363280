//! One call, described: the buffers it runs over, its plan, params and pipelines.
//! The host and device paths build it; [`Core::execute`](crate::gpu::core::Core)
//! (`execute.rs`) runs it.

use std::sync::Arc;

use crate::gpu::device_inputs::DeviceDenominators;
use crate::gpu::params::BoxSpec;
pub(crate) use crate::gpu::pass::Pass;
use crate::gpu::pipelines::Pipeline;
use crate::gpu::plan::Plan;
use crate::gpu::ranges::BufferRange;
use crate::gpu::uniforms::ParamSlots;
use crate::input::{ByInput, Heads, Input};
use crate::layout::Levels;

/// Where a normalisation pass reads the global denominators `(N_g, Z_g)`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum DenominatorSource<'a> {
    /// The host's values (the config's, or zeros where the mode needs none),
    /// written into the pool.
    Host([f32; 2]),
    /// A range of the caller's buffer.
    Device(DeviceDenominators<'a>),
}

/// The ground truth of a call from boxes, on the device: `[B, M]` rows of
/// `vec4<f32>` corners and `[B, M]` class words.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GtBuffers<'a> {
    /// `[B, M, 4]` corners (the range bound).
    pub boxes: BufferRange<'a>,
    /// `[B, M]` class words (the range bound).
    pub classes: BufferRange<'a>,
    /// Rows per image `M`.
    pub boxes_per_image: u32,
}

/// Where a call's targets come from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum TargetSource<'a> {
    /// The three target tensors.
    Dense {
        cls: &'a wgpu::Buffer,
        cnt: &'a wgpu::Buffer,
        reg: &'a wgpu::Buffer,
    },
    /// Assigned from ground-truth boxes inside the passes.
    Boxes(GtBuffers<'a>),
}

impl<'a> TargetSource<'a> {
    /// The target tensors of `inputs`.
    pub fn dense(inputs: &ByInput<&'a wgpu::Buffer>) -> Self {
        TargetSource::Dense {
            cls: inputs[Input::ClsTargets],
            cnt: inputs[Input::CntTargets],
            reg: inputs[Input::RegTargets],
        }
    }
}

/// A call planned for one pass: its dispatches and their params.
#[derive(Debug, Clone)]
pub(crate) struct Planned<'a> {
    pub levels: &'a Levels,
    pub plan: Plan,
    pub params: ParamSlots,
    pub pass: Pass,
    pub checks: bool,
    /// Where the global denominators come from.
    pub denominators: DenominatorSource<'a>,
    /// Calls from boxes: what the params carry of the ground truth.
    pub boxes: Option<BoxSpec>,
}

impl Planned<'_> {
    /// Whether the call normalises on the device after counting: passes that
    /// write gradients need the factors, and the host needs the denominators it
    /// read from a device buffer.
    pub fn normalizes(&self) -> bool {
        self.pass.writes_gradients() || matches!(self.denominators, DenominatorSource::Device(_))
    }
}

/// The buffer of each level of a head (the same buffer for every level of a
/// packed head); where in it each level starts is the plan's.
pub(crate) type LevelBuffers<'a> = &'a [&'a wgpu::Buffer];

/// Each level of each head in that head's one buffer (a packed head).
pub(crate) fn packed_levels<'a>(
    levels: &Levels,
    heads: Heads<&'a wgpu::Buffer>,
) -> Heads<Vec<&'a wgpu::Buffer>> {
    heads.map(|_, buf| vec![buf; levels.len()])
}

/// The [`LevelBuffers`] of each head of `heads`.
pub(crate) fn level_slices<'a>(heads: &'a Heads<Vec<&'a wgpu::Buffer>>) -> Heads<LevelBuffers<'a>> {
    heads.as_ref().map(|_, v| v.as_slice())
}

/// One call: what runs over which buffers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call<'a> {
    pub planned: &'a Planned<'a>,
    pub heads: Heads<LevelBuffers<'a>>,
    pub targets: TargetSource<'a>,
    /// Where the gradients go (passes that write them): the `f32` ones the fused
    /// pass writes.
    pub grads: Option<Heads<LevelBuffers<'a>>>,
    /// Gradients in the heads' half dtype: where the pack writes them, from
    /// `grads` (the plan's `packs`).
    pub half_grads: Option<Heads<LevelBuffers<'a>>>,
    /// Copy the gradients into the pool's readback buffer (host path).
    pub read_grads: Option<&'a wgpu::Buffer>,
}

/// The pipelines of one call.
#[derive(Debug, Clone)]
pub(crate) struct CallPipelines {
    /// Positives and centerness sums per image before the fused pass: from the
    /// centerness targets (every call from targets), or, from boxes, per tile
    /// (then `sum_counts`) where the call normalises on the device. `None` for a
    /// call from boxes that does not: its fused pass counts.
    pub count: Option<Arc<Pipeline>>,
    /// Calls from boxes: the per-image sum of the tiles' counts.
    pub sum_counts: Option<Arc<Pipeline>>,
    /// Calls from boxes: each tile's list of boxes, first.
    pub cull: Option<Arc<Pipeline>>,
    /// The normalisation (calls that normalise on the device).
    pub normalize: Option<Arc<Pipeline>>,
    pub fused: Arc<Pipeline>,
    pub finalize: Arc<Pipeline>,
    /// Gradients in the heads' half dtype: the pack after the fused pass.
    pub pack: Option<Arc<Pipeline>>,
}
