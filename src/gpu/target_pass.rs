//! The target pass: targets assigned from ground-truth boxes (docs/contract.md §7)
//! and written to memory in the layouts of §1, for callers who want the tensors.
//! The cull pass (`cull.wgsl`), then one dispatch per fused-pass segment of
//! `count_boxes.wgsl` with `TARGETS`; the partial slots it fills give each
//! image's counts and the boxes' check flags.

use std::time::Duration;

use crate::config::LossWeights;
use crate::counts::Counts;
use crate::error::FcosError;
use crate::gpu::bind::{box_count_entries, cull_group, group, ranged, Group};
use crate::gpu::call::GtBuffers;
use crate::gpu::core::Core;
use crate::gpu::encode;
use crate::gpu::params::{BoxSpec, PARTIAL_BYTES};
use crate::gpu::plan::{BindRange, Plan};
use crate::gpu::pool::{Need, Pool, Slot};
use crate::gpu::scope::scoped;
use crate::gpu::shaders::Kernel;
use crate::gpu::uniforms::ParamSlots;
use crate::gpu::work::{box_needs, BoxWork, WorkBuffers, TIMESTAMP_BYTES};
use crate::input::Input;
use crate::layout::Levels;

/// Where the target pass writes: `cls_targets`, `cnt_targets` `[B, P]` and
/// `reg_targets` `[B, P, 4]`, `f32`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TargetBuffers<'a> {
    pub cls: &'a wgpu::Buffer,
    pub cnt: &'a wgpu::Buffer,
    pub reg: &'a wgpu::Buffer,
}

impl<'a> TargetBuffers<'a> {
    fn get(&self, input: Input) -> &'a wgpu::Buffer {
        match input {
            Input::ClsTargets => self.cls,
            Input::CntTargets => self.cnt,
            _ => self.reg,
        }
    }
}

/// What one target pass reports besides the targets.
#[derive(Debug, Clone)]
pub(crate) struct Assigned {
    /// Each image's positives and centerness-target sum.
    pub counts: Counts,
    /// OR of the boxes' check flags (0: every value usable).
    pub flags: u32,
    /// GPU time of the pass, where the device has timestamp queries.
    pub kernel: Option<Duration>,
}

/// The pooled buffers a target pass of `plan` needs (besides its outputs).
fn needs(core: &Core, plan: &Plan, params: &ParamSlots, m: u32) -> Vec<Need> {
    use wgpu::BufferUsages as U;
    let mut needs = WorkBuffers::needs(plan, params, false, core.query_set.is_some());
    needs.extend(box_needs(plan, m));
    needs.push(Need {
        slot: Slot::PartialsReadback,
        size: counted_slot_bytes(plan) + TIMESTAMP_BYTES,
        usage: U::MAP_READ | U::COPY_DST,
    });
    needs
}

/// Bytes of the partial slots the target pass fills (its counts and flags).
fn counted_slot_bytes(plan: &Plan) -> u64 {
    PARTIAL_BYTES * plan.batch as u64 * plan.partials_per_image as u64
}

/// Reserves what a target pass of `b` images needs, plus `extra`; returns its plan
/// and params.
pub(crate) fn prepare(
    core: &Core,
    pool: &mut Pool,
    levels: &Levels,
    b: usize,
    spec: BoxSpec,
    extra: Vec<Need>,
) -> Result<(Plan, ParamSlots), FcosError> {
    let (plan, params) = core.plan_with_params(levels, b, &LossWeights::default(), Some(spec))?;
    core.check_lists(&plan, spec.boxes_per_image)?;
    let mut all = needs(core, &plan, &params, spec.boxes_per_image);
    all.extend(extra);
    pool.reserve(&core.ctx.device, &all)?;
    Ok((plan, params))
}

/// Records and submits the target pass of `plan` over `gt` into `out`, then
/// `after` (the host path's copy of the outputs) in the same submission, and
/// reads back the counts and flags.
pub(crate) fn run(
    core: &Core,
    pool: &Pool,
    (plan, params): (&Plan, &ParamSlots),
    gt: GtBuffers,
    out: TargetBuffers,
    after: impl FnOnce(&mut wgpu::CommandEncoder),
) -> Result<Assigned, FcosError> {
    let m = gt.boxes_per_image;
    let device = &core.ctx.device;
    let pipe = core
        .pipelines
        .get(device, Kernel::AssignBoxes { targets: true })?;
    let cull_pipe = core.pipelines.get(device, Kernel::CullBoxes)?;
    let work = WorkBuffers::from_pool(pool, plan, false, core.query_set.is_some(), true)?;
    let lists = BoxWork::from_pool(pool)?;
    let readback = pool.get(Slot::PartialsReadback)?;
    let bytes = counted_slot_bytes(plan);
    let index = scoped(device, || {
        core.ctx.queue.write_buffer(work.params, 0, &params.bytes);
        let partials = BindRange {
            offset: 0,
            size: bytes,
            base: 0,
        };
        let groups: Vec<Group> = plan
            .segments
            .iter()
            .enumerate()
            .map(|(s, seg)| {
                let mut entries =
                    box_count_entries((params, work.params), s, lists, (work.partials, partials));
                for (binding, input) in [
                    (4, Input::ClsTargets),
                    (5, Input::CntTargets),
                    (6, Input::RegTargets),
                ] {
                    entries.push(ranged(binding, out.get(input), seg.ranges[input]));
                }
                group(device, "fcos target pass", &pipe.layout, &entries)
            })
            .collect();
        let culls: Vec<Group> = (0..plan.segments.len())
            .map(|s| cull_group(device, &cull_pipe, (params, work.params), s, gt, lists))
            .collect();
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("fcos target pass"),
        });
        encoder.clear_buffer(lists.counts, 0, None);
        {
            let timestamp_writes =
                core.query_set
                    .as_ref()
                    .map(|q| wgpu::ComputePassTimestampWrites {
                        query_set: q,
                        beginning_of_pass_write_index: Some(0),
                        end_of_pass_write_index: Some(1),
                    });
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("fcos target pass"),
                timestamp_writes,
            });
            encode::cull(&mut pass, &cull_pipe, &culls, plan, m);
            pass.set_pipeline(&pipe.pipeline);
            for (seg, g) in plan.segments.iter().zip(&groups) {
                pass.set_bind_group(0, &g.group, &[]);
                pass.dispatch_workgroups(seg.tiles, 1, seg.images);
            }
        }
        encoder.copy_buffer_to_buffer(work.partials, 0, readback, 0, bytes);
        if let (Some(q), Some(ts)) = (&core.query_set, work.timestamps) {
            encoder.resolve_query_set(q, 0..2, ts, 0);
            encoder.copy_buffer_to_buffer(ts, 0, readback, bytes, TIMESTAMP_BYTES);
        }
        after(&mut encoder);
        core.ctx.queue.submit([encoder.finish()])
    })?;
    let data = core
        .readback()
        .read(readback, 0..bytes + TIMESTAMP_BYTES, Some(index))?;
    let (slots, stamps) = data.split_at(bytes as usize);
    let kernel = core.query_set.as_ref().and_then(|_| {
        crate::gpu::results::kernel_time(stamps, core.ctx.queue.get_timestamp_period())
    });
    Ok(tally(plan, slots, kernel))
}

/// Each image's counts and the flags, from the class-chunk-0 slots in order.
fn tally(plan: &Plan, slots: &[u8], kernel: Option<Duration>) -> Assigned {
    let words: Vec<u32> = bytemuck::pod_collect_to_vec(slots);
    let per = (PARTIAL_BYTES / 4) as usize;
    let ppi = plan.partials_per_image as usize;
    let mut counts = Counts::default();
    let mut flags = 0;
    for b in 0..plan.batch as usize {
        let (mut n, mut z) = (0.0f64, 0.0f64);
        for i in (0..ppi).step_by(plan.chunks.max(1) as usize) {
            let w = &words[(b * ppi + i) * per..][..per];
            // Partial: sums (4 words), flags, num_pos, ctr, padding.
            n += f64::from(f32::from_bits(w[5]));
            z += f64::from(f32::from_bits(w[6]));
            flags |= w[4];
        }
        counts.num_pos.push(n as u32);
        counts.ctr.push(z);
    }
    Assigned {
        counts,
        flags,
        kernel,
    }
}
