//! The bind groups of one call: one per fused-pass segment (its ranges of the
//! inputs and gradients), one per positive-count dispatch, one for the finalize
//! pass.

use crate::error::FcosError;
use crate::gpu::call::{Call, CallPipelines};
use crate::gpu::params::PARTIAL_BYTES;
use crate::gpu::plan::BindRange;
use crate::gpu::work::WorkBuffers;
use crate::input::{Head, Input};

/// Every bind group of a call, in dispatch order.
#[derive(Debug)]
pub(crate) struct BindGroups {
    /// Positive count: `(images, group)` per dispatch (backward only).
    pub count: Vec<(u32, wgpu::BindGroup)>,
    /// Fused pass: one per segment of the plan.
    pub fused: Vec<wgpu::BindGroup>,
    /// The finalize pass.
    pub finalize: wgpu::BindGroup,
}

fn whole(binding: u32, buffer: &wgpu::Buffer) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry {
        binding,
        resource: buffer.as_entire_binding(),
    }
}

fn ranged(binding: u32, buffer: &wgpu::Buffer, r: BindRange) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry {
        binding,
        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer,
            offset: r.offset,
            size: std::num::NonZeroU64::new(r.size),
        }),
    }
}

/// The binding of `input` in the fused pass (`fused.wgsl`, `roofline.wgsl`).
fn input_binding(input: Input) -> u32 {
    match input {
        Input::ClsLogits => 1,
        Input::CntLogits => 2,
        Input::RegPreds => 3,
        Input::ClsTargets => 4,
        Input::CntTargets => 5,
        Input::RegTargets => 6,
    }
}

/// The fused pass's partial sums, and the backward pass's positive counts.
const PARTIALS_BINDING: u32 = 7;
const NUM_POS_BINDING: u32 = 8;

/// The binding of head `h`'s gradient in the backward pass.
fn grad_binding(h: Head) -> u32 {
    match h {
        Head::ClsLogits => 9,
        Head::CntLogits => 10,
        Head::RegPreds => 11,
    }
}

/// Makes the bind groups of `call` (inside the caller's error scope).
pub(crate) fn bind_groups(
    device: &wgpu::Device,
    pipelines: &CallPipelines,
    call: &Call,
    work: &WorkBuffers,
) -> Result<BindGroups, FcosError> {
    let plan = &call.planned.plan;
    let params = &call.planned.params;
    // Only the slots this plan uses: the pooled buffer may be larger than one binding.
    let partials = BindRange {
        offset: 0,
        size: PARTIAL_BYTES * plan.batch as u64 * plan.partials_per_image as u64,
        base: 0,
    };
    let group = |label, layout, entries: &[wgpu::BindGroupEntry]| {
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout,
            entries,
        })
    };
    let fused = plan
        .segments
        .iter()
        .enumerate()
        .map(|(s, seg)| {
            let mut entries = vec![params.entry(work.params, params.segment(s))];
            entries.extend(
                call.inputs
                    .iter()
                    .map(|(input, buf)| ranged(input_binding(input), buf, seg.ranges[input])),
            );
            entries.push(ranged(PARTIALS_BINDING, work.partials, partials));
            if let (Some(grads), Some(num_pos)) = (call.grads, work.num_pos) {
                entries.push(whole(NUM_POS_BINDING, num_pos));
                entries.extend(
                    grads
                        .iter()
                        .map(|(h, buf)| ranged(grad_binding(h), buf, seg.ranges[h.input()])),
                );
            }
            group("fcos fused segment", &pipelines.fused.layout, &entries)
        })
        .collect();
    let count = match (&pipelines.count, work.num_pos) {
        (Some(pipeline), Some(num_pos)) => plan
            .count_groups
            .iter()
            .enumerate()
            .map(|(g, cg)| {
                let entries = [
                    params.entry(work.params, params.count(g)),
                    ranged(1, call.inputs[Input::CntTargets], cg.range),
                    whole(2, num_pos),
                ];
                (cg.images, group("fcos count", &pipeline.layout, &entries))
            })
            .collect(),
        _ => Vec::new(),
    };
    let finalize = group(
        "fcos finalize",
        &pipelines.finalize.layout,
        &[
            params.entry(work.params, params.call()),
            ranged(1, work.partials, partials),
            whole(2, work.image_losses),
        ],
    );
    Ok(BindGroups {
        count,
        fused,
        finalize,
    })
}
