//! One call through its stages: plan → bind → encode → submit → read back. The
//! host and device paths prepare the buffers and hand a [`Call`] to
//! [`Core::execute`].

use std::sync::Arc;

use crate::config::LossWeights;
use crate::error::FcosError;
use crate::gpu::core::Core;
use crate::gpu::pipelines::Pipeline;
use crate::gpu::plan::Plan;
use crate::gpu::pool::Pool;
use crate::gpu::results::Outcome;
use crate::gpu::shaders::Kernel;
use crate::gpu::uniforms::ParamSlots;
use crate::gpu::work::WorkBuffers;
use crate::gpu::{bind, encode, scope};
use crate::input::{ByInput, Heads};
use crate::layout::Levels;

/// Which computation a call performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    /// Losses only.
    Forward,
    /// Losses and gradients.
    Backward,
    /// The forward pass's memory roofline (bench harness).
    #[cfg(feature = "bench")]
    Roofline,
    /// The backward pass's memory roofline (bench harness).
    #[cfg(feature = "bench")]
    BackwardRoofline,
}

impl Pass {
    /// Whether the pass writes gradients (and counts positives first).
    pub fn writes_gradients(self) -> bool {
        match self {
            Pass::Forward => false,
            Pass::Backward => true,
            #[cfg(feature = "bench")]
            Pass::Roofline => false,
            #[cfg(feature = "bench")]
            Pass::BackwardRoofline => true,
        }
    }

    /// The fused-pass kernel of this pass, with or without the input checks (for a
    /// roofline: with or without the checked pass's extra reads).
    pub fn kernel(self, checks: bool) -> Kernel {
        let backward = self.writes_gradients();
        match self {
            Pass::Forward | Pass::Backward => Kernel::Fused { backward, checks },
            #[cfg(feature = "bench")]
            Pass::Roofline | Pass::BackwardRoofline => Kernel::Roofline {
                backward,
                read_all: checks,
            },
        }
    }
}

/// One call: what runs over which buffers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call<'a> {
    pub levels: &'a Levels,
    pub plan: &'a Plan,
    pub params: &'a ParamSlots,
    pub pass: Pass,
    pub checks: bool,
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

impl Core {
    /// The params of every dispatch of `plan`.
    pub fn params(&self, levels: &Levels, plan: &Plan, weights: &LossWeights) -> ParamSlots {
        ParamSlots::pack(
            &self.config,
            weights,
            levels,
            plan,
            self.ctx.limits.min_uniform_buffer_offset_alignment,
        )
    }

    /// The pipelines of `pass`, built on first use.
    pub fn call_pipelines(&self, pass: Pass, checks: bool) -> Result<CallPipelines, FcosError> {
        let device = &self.ctx.device;
        let get = |kernel| self.pipelines.get(device, kernel);
        Ok(CallPipelines {
            fused: get(pass.kernel(checks))?,
            finalize: get(Kernel::Finalize)?,
            count: pass
                .writes_gradients()
                .then(|| get(Kernel::Count))
                .transpose()?,
        })
    }

    /// Binds, encodes and submits `call` over buffers the pool holds, then reads
    /// back the per-image results and the kernel time.
    pub fn execute(&self, pool: &Pool, call: &Call) -> Result<Outcome, FcosError> {
        let pipelines = self.call_pipelines(call.pass, call.checks)?;
        let backward = call.pass.writes_gradients();
        let work = WorkBuffers::from_pool(pool, backward, self.query_set.is_some())?;
        let device = &self.ctx.device;
        let index = scope::scoped(device, || -> Result<_, FcosError> {
            let groups = bind::bind_groups(device, &pipelines, call, &work)?;
            self.ctx.queue.write_buffer(work.params, 0, &call.params.bytes);
            let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("fcos loss"),
            });
            encode::passes(&mut encoder, &pipelines, &groups, call.plan, self.query_set.as_ref());
            encode::results(&mut encoder, &work, call.plan.batch, self.query_set.as_ref());
            if let (Some(grads), Some(staging)) = (call.grads, call.read_grads) {
                let sizes = grads.as_ref().map(|h, _| self.bytes(h.input(), call.levels, call.plan.batch as usize));
                encode::copy_gradients(&mut encoder, grads, sizes, staging);
            }
            Ok(self.ctx.queue.submit([encoder.finish()]))
        })??;
        Outcome::read(self, &work, call.plan.batch, index)
    }
}
