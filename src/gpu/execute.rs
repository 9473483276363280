//! One call through its stages: plan → bind → encode → submit → read back. The
//! host and device paths plan it and prepare its buffers; [`Core::execute`] binds
//! ([`bind`]), encodes ([`encode`]), submits, and reads back ([`Outcome::read`]).

use crate::config::LossWeights;
use crate::error::FcosError;
use crate::gpu::call::{Call, CallPipelines};
use crate::gpu::core::Core;
use crate::gpu::pass::Pass;
use crate::gpu::plan::Plan;
use crate::gpu::pool::Pool;
use crate::gpu::results::Outcome;
use crate::gpu::shaders::Kernel;
use crate::gpu::uniforms::ParamSlots;
use crate::gpu::work::WorkBuffers;
use crate::gpu::{bind, encode, scope};
use crate::layout::Levels;

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
            self.ctx
                .queue
                .write_buffer(work.params, 0, &call.params.bytes);
            let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("fcos loss"),
            });
            encode::passes(
                &mut encoder,
                &pipelines,
                &groups,
                call.plan,
                self.query_set.as_ref(),
            );
            encode::results(
                &mut encoder,
                &work,
                call.plan.batch,
                self.query_set.as_ref(),
            );
            if let (Some(grads), Some(staging)) = (call.grads, call.read_grads) {
                let sizes = grads
                    .as_ref()
                    .map(|h, _| self.bytes(h.input(), call.levels, call.plan.batch as usize));
                encode::copy_gradients(&mut encoder, grads, sizes, staging);
            }
            Ok(self.ctx.queue.submit([encoder.finish()]))
        })??;
        Outcome::read(self, &work, call.plan.batch, index)
    }
}
