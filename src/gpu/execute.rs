//! One call through its stages: plan → bind → encode → submit → read back. The
//! host and device paths plan it and prepare its buffers; [`Core::execute`] binds
//! ([`bind`]), encodes ([`encode`]), submits, and reads back ([`Outcome::read`]).

use crate::config::{LossWeights, Normalization};
use crate::error::FcosError;
use crate::gpu::bind::BindGroups;
use crate::gpu::call::{Call, CallPipelines, DenominatorSource, Planned};
use crate::gpu::core::Core;
use crate::gpu::device_inputs::DeviceDenominators;
use crate::gpu::params::BoxSpec;
use crate::gpu::pass::Pass;
use crate::gpu::plan::{Origins, Plan};
use crate::gpu::pool::{Need, Pool};
use crate::gpu::results::Outcome;
use crate::gpu::shaders::Kernel;
use crate::gpu::work::{box_needs, list_bytes, NormBuffers, WorkBuffers};
use crate::gpu::{bind, encode, scope};
use crate::input::Dtype;
use crate::layout::Levels;

impl Core {
    /// Plans a call of `b` images for `pass` and reserves the pool's work buffers
    /// for it, with `extra` (the host path's inputs and gradients).
    #[allow(clippy::too_many_arguments)]
    pub fn prepare<'a>(
        &self,
        pool: &mut Pool,
        levels: &'a Levels,
        b: usize,
        pass: Pass,
        weights: &LossWeights,
        denominators: Option<DeviceDenominators<'a>>,
        boxes: Option<BoxSpec>,
        origins: Option<&Origins>,
        extra: Vec<Need>,
    ) -> Result<Planned<'a>, FcosError> {
        let (plan, params) = self.plan_with_params_at(levels, b, weights, boxes, origins)?;
        let planned = Planned {
            levels,
            plan,
            params,
            pass,
            checks: self.checks,
            denominators: self.denominator_source(denominators),
            boxes,
        };
        let mut needs = extra;
        if let Some(spec) = boxes {
            self.check_lists(&planned.plan, spec.boxes_per_image)?;
            needs.extend(box_needs(&planned.plan, spec.boxes_per_image));
        }
        let timestamps = self.query_set.is_some();
        needs.extend(WorkBuffers::needs(
            &planned.plan,
            &planned.params,
            planned.normalizes(),
            timestamps,
        ));
        pool.reserve(&self.ctx.device, &needs)?;
        Ok(planned)
    }

    /// Where the normalisation reads `(N_g, Z_g)`: the caller's buffer, the
    /// config's global values, or zeros (the other modes read none).
    pub fn denominator_source<'a>(
        &self,
        denominators: Option<DeviceDenominators<'a>>,
    ) -> DenominatorSource<'a> {
        match (denominators, self.config.normalization) {
            (Some(d), _) => DenominatorSource::Device(d),
            (None, Normalization::Global(d)) => DenominatorSource::Host([d.num_pos, d.ctr]),
            (None, _) => DenominatorSource::Host([0.0, 0.0]),
        }
    }

    /// The pipelines of `pass`, built on first use; with `normalizes` the
    /// normalisation pipeline too; with `boxes` the variants that assign the
    /// targets from boxes; the fused pass's variant reads heads of `heads`;
    /// with `pack`, the gradients are written in the heads' half dtype.
    pub fn call_pipelines(
        &self,
        pass: Pass,
        checks: bool,
        normalizes: bool,
        boxes: bool,
        heads: Dtype,
        pack: bool,
    ) -> Result<CallPipelines, FcosError> {
        let get = |kernel| self.pipelines.get(&self.ctx.device, kernel);
        let count = match (boxes, normalizes) {
            (false, _) => Some(Kernel::Count),
            (true, true) => Some(Kernel::AssignBoxes { targets: false }),
            (true, false) => None,
        };
        Ok(CallPipelines {
            cull: boxes.then(|| get(Kernel::CullBoxes)).transpose()?,
            count: count.map(get).transpose()?,
            sum_counts: boxes.then(|| get(Kernel::SumCounts)).transpose()?,
            normalize: normalizes.then(|| get(Kernel::Normalize)).transpose()?,
            fused: get(pass.kernel(checks, boxes, heads))?,
            finalize: get(Kernel::Finalize)?,
            pack: pack
                .then(|| {
                    get(Kernel::PackHalf {
                        bf16: heads == Dtype::Bf16,
                    })
                })
                .transpose()?,
        })
    }

    /// The tiles' lists of a call from `m` boxes per image must fit one storage
    /// binding.
    pub fn check_lists(&self, plan: &Plan, m: u32) -> Result<(), FcosError> {
        let bytes = list_bytes(plan, m);
        let limits = &self.ctx.limits;
        let widest = plan.segments.iter().map(|s| s.tiles).max().unwrap_or(0);
        let groups = crate::gpu::encode::cull_groups(widest, m, plan.workgroup_size);
        if groups > limits.max_compute_workgroups_per_dimension {
            return Err(FcosError::Limit(format!(
                "{m} boxes per image over a level of {widest} tiles need {groups} cull workgroups; the adapter allows {} per dimension",
                limits.max_compute_workgroups_per_dimension
            )));
        }
        let max = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        if bytes > max {
            return Err(FcosError::Limit(format!(
                "{m} boxes per image need {bytes} bytes of per-tile box lists for B = {} (32 bytes a box and tile); the adapter allows {max} (max_storage_buffer_binding_size): fewer boxes per image or a smaller batch",
                plan.batch
            )));
        }
        Ok(())
    }

    /// Writes the host's global denominators where the normalisation reads them.
    pub fn write_denominators(&self, source: DenominatorSource, norm: &NormBuffers) {
        if let DenominatorSource::Host(d) = source {
            let bytes = [d[0], d[1], 0.0, 0.0];
            self.ctx
                .queue
                .write_buffer(norm.denominators, 0, bytemuck::cast_slice(&bytes));
        }
    }

    /// Binds, encodes and submits `call` over buffers the pool holds, then reads
    /// back the per-image results and the kernel time.
    pub fn execute(&self, pool: &Pool, call: &Call) -> Result<Outcome, FcosError> {
        let planned = call.planned;
        let plan = &planned.plan;
        let device = &self.ctx.device;
        let staged = self.stage(pool, call)?;
        let index = scope::scoped(device, || {
            let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("fcos loss"),
            });
            encode::passes(
                &mut encoder,
                &staged.pipelines,
                &staged.groups,
                plan,
                self.query_set.as_ref(),
                staged
                    .work
                    .boxes
                    .zip(planned.boxes.map(|b| b.boxes_per_image)),
            );
            encode::results(
                &mut encoder,
                &staged.work,
                plan.batch,
                self.query_set.as_ref(),
            );
            self.copy_gradients_out(&mut encoder, call);
            self.ctx.queue.submit([encoder.finish()])
        })?;
        let from_device = matches!(planned.denominators, DenominatorSource::Device(_));
        Outcome::read(self, &staged.work, plan.batch, index, from_device)
    }

    /// Where the call asks for it (the host path), the copy of its gradients into
    /// the mappable staging buffer: each head packed in one pooled buffer, one
    /// head after another.
    pub fn copy_gradients_out(&self, encoder: &mut wgpu::CommandEncoder, call: &Call) {
        if let (Some(grads), Some(staging)) = (call.grads, call.read_grads) {
            let planned = call.planned;
            let b = planned.plan.batch as usize;
            // The half gradients where the call writes them, else the f32 ones.
            let (grads, dtype) = match call.half_grads {
                Some(half) => (half, planned.plan.heads),
                None => (grads, Dtype::F32),
            };
            let packed = grads.as_ref().map(|_, levels| levels[0]);
            let sizes = grads.as_ref().map(|h, _| {
                self.bytes(h.input(), planned.levels, b, dtype)
                    .next_multiple_of(4)
            });
            encode::copy_gradients(encoder, packed, sizes, staging);
        }
    }

    /// Everything before encoding: `call`'s pipelines, work buffers and bind
    /// groups, with its params and the host's denominators written (through the
    /// queue: before the next submission's commands).
    pub fn stage<'p>(&self, pool: &'p Pool, call: &Call) -> Result<Staged<'p>, FcosError> {
        let staged = self.bind_call(pool, call)?;
        let planned = call.planned;
        scope::scoped(&self.ctx.device, || {
            let work = &staged.work;
            self.ctx
                .queue
                .write_buffer(work.params, 0, &planned.params.bytes);
            if let Some(norm) = &work.norm {
                self.write_denominators(planned.denominators, norm);
            }
        })?;
        Ok(staged)
    }

    /// `call`'s pipelines, work buffers and bind groups; nothing written.
    pub fn bind_call<'p>(&self, pool: &'p Pool, call: &Call) -> Result<Staged<'p>, FcosError> {
        let planned = call.planned;
        let plan = &planned.plan;
        let normalizes = planned.normalizes();
        let boxes = planned.boxes.is_some();
        let pipelines = self.call_pipelines(
            planned.pass,
            planned.checks,
            normalizes,
            boxes,
            planned.plan.heads,
            !planned.plan.packs.is_empty(),
        )?;
        let work = WorkBuffers::from_pool(pool, plan, normalizes, self.query_set.is_some(), boxes)?;
        let device = &self.ctx.device;
        let groups = scope::scoped(device, || {
            bind::bind_groups(device, &pipelines, call, &work)
        })??;
        Ok(Staged {
            pipelines,
            work,
            groups,
        })
    }
}

/// A call ready to encode: its pipelines, work buffers and bind groups.
pub(crate) struct Staged<'p> {
    pub pipelines: CallPipelines,
    pub work: WorkBuffers<'p>,
    pub groups: BindGroups,
}
