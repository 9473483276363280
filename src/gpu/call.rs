//! One call, described: the buffers it runs over, its plan, params and pipelines.
//! The host and device paths build it; [`Core::execute`](crate::gpu::core::Core)
//! (`execute.rs`) runs it.

use std::sync::Arc;

pub(crate) use crate::gpu::pass::Pass;
use crate::gpu::pipelines::Pipeline;
use crate::gpu::plan::Plan;
use crate::gpu::uniforms::ParamSlots;
use crate::input::{ByInput, Heads};
use crate::layout::Levels;

/// A call planned for one pass: its dispatches and their params.
#[derive(Debug, Clone)]
pub(crate) struct Planned<'a> {
    pub levels: &'a Levels,
    pub plan: Plan,
    pub params: ParamSlots,
    pub pass: Pass,
    pub checks: bool,
}

/// One call: what runs over which buffers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call<'a> {
    pub planned: &'a Planned<'a>,
    pub inputs: ByInput<&'a wgpu::Buffer>,
    /// Where the gradients go (passes that write them).
    pub grads: Option<Heads<&'a wgpu::Buffer>>,
    /// Copy the gradients into the pool's readback buffer (host path).
    pub read_grads: Option<&'a wgpu::Buffer>,
}

/// The pipelines of one call.
#[derive(Debug, Clone)]
pub(crate) struct CallPipelines {
    pub fused: Arc<Pipeline>,
    pub finalize: Arc<Pipeline>,
    /// The positive count (passes that write gradients).
    pub count: Option<Arc<Pipeline>>,
}
