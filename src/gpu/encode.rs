//! Recording one call into a command encoder: the compute pass (counting, the
//! normalisation where the call needs it, fused segments, finalize) and the copies that bring its results within reach
//! of the host. Records only; the caller submits.

use crate::gpu::bind::{BindGroups, CountGroups, Group};
use crate::gpu::call::CallPipelines;
use crate::gpu::pipelines::Pipeline;
use crate::gpu::plan::Plan;
use crate::gpu::work::{result_bytes, BoxWork, WorkBuffers, TIMESTAMP_BYTES, USED_BYTES};
use crate::input::Heads;

/// What the dispatches of a call are recorded into: a compute pass to run them, or
/// a capture that describes them (`capture.rs`).
pub(crate) trait Record {
    fn set_pipeline(&mut self, pipe: &Pipeline);
    fn set_group(&mut self, group: &Group);
    fn dispatch(&mut self, x: u32, y: u32, z: u32);
}

impl Record for wgpu::ComputePass<'_> {
    fn set_pipeline(&mut self, pipe: &Pipeline) {
        wgpu::ComputePass::set_pipeline(self, &pipe.pipeline);
    }

    fn set_group(&mut self, group: &Group) {
        self.set_bind_group(0, &group.group, &[]);
    }

    fn dispatch(&mut self, x: u32, y: u32, z: u32) {
        self.dispatch_workgroups(x, y, z);
    }
}

/// The compute pass, with timestamps around it where the device has them.
pub(crate) fn passes(
    encoder: &mut wgpu::CommandEncoder,
    pipelines: &CallPipelines,
    groups: &BindGroups,
    plan: &Plan,
    query_set: Option<&wgpu::QuerySet>,
    cull_work: Option<(BoxWork, u32)>,
) {
    if let Some((boxes, _)) = cull_work {
        // The lists' lengths and the flags start at zero (cull.wgsl appends).
        encoder.clear_buffer(boxes.counts, 0, None);
    }
    let timestamp_writes = query_set.map(|q| wgpu::ComputePassTimestampWrites {
        query_set: q,
        beginning_of_pass_write_index: Some(0),
        end_of_pass_write_index: Some(1),
    });
    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some("fcos loss"),
        timestamp_writes,
    });
    dispatches(
        &mut pass,
        pipelines,
        groups,
        plan,
        cull_work.map(|(_, m)| m),
    );
}

/// Every dispatch of a call in order: the cull (from `m` boxes per image), the
/// counting, the normalisation, the fused segments, the finalize.
pub(crate) fn dispatches(
    rec: &mut impl Record,
    pipelines: &CallPipelines,
    groups: &BindGroups,
    plan: &Plan,
    m: Option<u32>,
) {
    if let (Some(pipe), Some(m)) = (&pipelines.cull, m) {
        cull(rec, pipe, &groups.cull, plan, m);
    }
    match (&groups.count, &pipelines.count) {
        (CountGroups::Targets(g), Some(pipe)) => count(rec, pipe, g),
        (
            CountGroups::Boxes {
                tiles: Some(tiles),
                sum,
            },
            Some(pipe),
        ) => {
            rec.set_pipeline(pipe);
            for (seg, group) in plan.segments.iter().zip(tiles) {
                rec.set_group(group);
                rec.dispatch(seg.tiles, 1, seg.images);
            }
            if let Some(sum_pipe) = &pipelines.sum_counts {
                per_image(rec, sum_pipe, sum, plan);
            }
        }
        _ => {}
    }
    if let (Some(pipe), Some(group)) = (&pipelines.normalize, &groups.normalize) {
        normalize(rec, pipe, group);
    }
    rec.set_pipeline(&pipelines.fused);
    for (seg, group) in plan.segments.iter().zip(&groups.fused) {
        rec.set_group(group);
        rec.dispatch(seg.tiles, plan.chunks, seg.images);
    }
    if let Some(pipe) = &pipelines.pack {
        // The gradients in the heads' half dtype, from the f32 ones just written.
        rec.set_pipeline(pipe);
        for (run, group) in plan.packs.iter().zip(&groups.pack) {
            rec.set_group(group);
            rec.dispatch(run.groups.0, run.groups.1, 1);
        }
    }
    if let CountGroups::Boxes { tiles: None, sum } = &groups.count {
        // The fused pass from boxes counted: its tiles' counts, summed.
        if let Some(sum_pipe) = &pipelines.sum_counts {
            per_image(rec, sum_pipe, sum, plan);
        }
    }
    per_image(rec, &pipelines.finalize, &groups.finalize, plan);
}

/// One dispatch of a workgroup per image (the sum of the tiles' counts, the
/// finalize).
fn per_image(rec: &mut impl Record, pipe: &Pipeline, group: &Group, plan: &Plan) {
    rec.set_pipeline(pipe);
    rec.set_group(group);
    rec.dispatch(plan.batch, 1, 1);
}

/// The cull dispatches of a call from `m` boxes per image, one per fused-pass
/// segment: a workgroup per `WG` (tile, box) pairs of the level.
pub(crate) fn cull(rec: &mut impl Record, pipe: &Pipeline, groups: &[Group], plan: &Plan, m: u32) {
    rec.set_pipeline(pipe);
    for (seg, group) in plan.segments.iter().zip(groups) {
        rec.set_group(group);
        rec.dispatch(
            cull_groups(seg.tiles, m, plan.workgroup_size),
            1,
            seg.images,
        );
    }
}

/// Workgroups of the cull over `tiles` tiles of `m` boxes each.
pub(crate) fn cull_groups(tiles: u32, m: u32, workgroup_size: u32) -> u32 {
    (u64::from(tiles) * u64::from(m)).div_ceil(u64::from(workgroup_size.max(1))) as u32
}

/// The counting dispatches, one workgroup per image.
pub(crate) fn count(rec: &mut impl Record, pipe: &Pipeline, groups: &[(u32, Group)]) {
    rec.set_pipeline(pipe);
    for (images, group) in groups {
        rec.set_group(group);
        rec.dispatch(*images, 1, 1);
    }
}

/// The normalisation (one workgroup), after the counting.
pub(crate) fn normalize(rec: &mut impl Record, pipe: &Pipeline, group: &Group) {
    rec.set_pipeline(pipe);
    rec.set_group(group);
    rec.dispatch(1, 1, 1);
}

/// The per-image sums, then the resolved timestamps, then the denominators the
/// normalisation used, into the mappable readback.
pub(crate) fn results(
    encoder: &mut wgpu::CommandEncoder,
    work: &WorkBuffers,
    batch: u32,
    query_set: Option<&wgpu::QuerySet>,
) {
    let out_bytes = result_bytes(batch);
    encoder.copy_buffer_to_buffer(work.image_sums, 0, work.readback, 0, out_bytes);
    if let (Some(q), Some(ts)) = (query_set, work.timestamps) {
        encoder.resolve_query_set(q, 0..2, ts, 0);
        encoder.copy_buffer_to_buffer(ts, 0, work.readback, out_bytes, TIMESTAMP_BYTES);
    }
    if let Some(norm) = work.norm {
        let at = out_bytes + TIMESTAMP_BYTES;
        encoder.copy_buffer_to_buffer(
            norm.scales,
            norm.scales_offset,
            work.readback,
            at,
            USED_BYTES,
        );
    }
}

/// The three gradients, `sizes` bytes each, one after another into `staging`.
pub(crate) fn copy_gradients(
    encoder: &mut wgpu::CommandEncoder,
    grads: Heads<&wgpu::Buffer>,
    sizes: Heads<u64>,
    staging: &wgpu::Buffer,
) {
    let mut at = 0;
    for (h, buf) in grads.iter() {
        encoder.copy_buffer_to_buffer(buf, 0, staging, at, sizes[h]);
        at += sizes[h];
    }
}
