//! One call through its stages: plan → bind → encode → submit → read back. The
//! host and device paths plan it and prepare its buffers; [`Core::execute`] binds
//! ([`bind`]), encodes ([`encode`]), submits, and reads back ([`Outcome::read`]).

use crate::config::LossWeights;
use crate::error::FcosError;
use crate::gpu::call::{Call, CallPipelines, Planned};
use crate::gpu::core::Core;
use crate::gpu::pass::Pass;
use crate::gpu::pool::{Need, Pool};
use crate::gpu::results::Outcome;
use crate::gpu::shaders::Kernel;
use crate::gpu::uniforms::ParamSlots;
use crate::gpu::work::WorkBuffers;
use crate::gpu::{bind, encode, scope};
use crate::layout::Levels;

impl Core {
    /// Plans a call of `b` images for `pass` and reserves the pool's work buffers
    /// for it, with `extra` (the host path's inputs and gradients).
    pub fn prepare<'a>(
        &self,
        pool: &mut Pool,
        levels: &'a Levels,
        b: usize,
        pass: Pass,
        weights: &LossWeights,
        extra: Vec<Need>,
    ) -> Result<Planned<'a>, FcosError> {
        let plan = self.plan(levels, b)?;
        let alignment = self.ctx.limits.min_uniform_buffer_offset_alignment;
        let params = ParamSlots::pack(&self.config, weights, levels, &plan, alignment);
        let mut needs = extra;
        let backward = pass.writes_gradients();
        let timestamps = self.query_set.is_some();
        needs.extend(WorkBuffers::needs(&plan, &params, backward, timestamps));
        pool.reserve(&self.ctx.device, &needs)?;
        Ok(Planned {
            levels,
            plan,
            params,
            pass,
            checks: self.checks,
        })
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
        let planned = call.planned;
        let plan = &planned.plan;
        let pipelines = self.call_pipelines(planned.pass, planned.checks)?;
        let backward = planned.pass.writes_gradients();
        let work = WorkBuffers::from_pool(pool, backward, self.query_set.is_some())?;
        let device = &self.ctx.device;
        let index = scope::scoped(device, || -> Result<_, FcosError> {
            let groups = bind::bind_groups(device, &pipelines, call, &work)?;
            self.ctx
                .queue
                .write_buffer(work.params, 0, &planned.params.bytes);
            let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("fcos loss"),
            });
            encode::passes(
                &mut encoder,
                &pipelines,
                &groups,
                plan,
                self.query_set.as_ref(),
            );
            encode::results(&mut encoder, &work, plan.batch, self.query_set.as_ref());
            if let (Some(grads), Some(staging)) = (call.grads, call.read_grads) {
                let sizes = grads
                    .as_ref()
                    .map(|h, _| self.bytes(h.input(), planned.levels, plan.batch as usize));
                encode::copy_gradients(&mut encoder, grads, sizes, staging);
            }
            Ok(self.ctx.queue.submit([encoder.finish()]))
        })??;
        Outcome::read(self, &work, plan.batch, index)
    }
}
