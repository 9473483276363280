//! The bind groups of one call: one per counting dispatch, one for the
//! normalisation (where the call normalises on the device), one per fused-pass
//! segment (its ranges of the inputs and gradients), one for the finalize pass.

use crate::error::FcosError;
use crate::gpu::call::{Call, CallPipelines, DenominatorSource};
use crate::gpu::params::PARTIAL_BYTES;
use crate::gpu::pipelines::Pipeline;
use crate::gpu::plan::{BindRange, Plan};
use crate::gpu::uniforms::ParamSlots;
use crate::gpu::work::{NormBuffers, WorkBuffers};
use crate::input::{Head, Input};

/// Every bind group of a call, in dispatch order.
#[derive(Debug)]
pub(crate) struct BindGroups {
    /// Counting: `(images, group)` per dispatch.
    pub count: Vec<(u32, wgpu::BindGroup)>,
    /// The normalisation (calls that normalise on the device; one workgroup).
    pub normalize: Option<wgpu::BindGroup>,
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

/// The fused pass's partial sums, and the backward pass's gradient factors.
const PARTIALS_BINDING: u32 = 7;
const SCALES_BINDING: u32 = 8;

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
            if let (Some(grads), Some(norm)) = (call.grads, work.norm) {
                entries.push(whole(SCALES_BINDING, norm.scales));
                entries.extend(
                    grads
                        .iter()
                        .map(|(h, buf)| ranged(grad_binding(h), buf, seg.ranges[h.input()])),
                );
            }
            group(
                device,
                "fcos fused segment",
                &pipelines.fused.layout,
                &entries,
            )
        })
        .collect();
    let cnt_targets = call.inputs[Input::CntTargets];
    let count = count_groups(
        device,
        &pipelines.count,
        (params, work.params),
        plan,
        cnt_targets,
        work.counts,
    );
    let normalize = match (&pipelines.normalize, &work.norm) {
        (Some(pipe), Some(bufs)) => Some(normalize_group(
            device,
            pipe,
            (params, work.params),
            work.counts,
            bufs,
            call.planned.denominators,
        )),
        _ => None,
    };
    let finalize = group(
        device,
        "fcos finalize",
        &pipelines.finalize.layout,
        &[
            params.entry(work.params, params.call()),
            ranged(1, work.partials, partials),
            whole(2, work.counts),
            whole(3, work.image_sums),
        ],
    );
    Ok(BindGroups {
        count,
        normalize,
        fused,
        finalize,
    })
}

fn group(
    device: &wgpu::Device,
    label: &str,
    layout: &wgpu::BindGroupLayout,
    entries: &[wgpu::BindGroupEntry],
) -> wgpu::BindGroup {
    device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(label),
        layout,
        entries,
    })
}

/// The bind groups of the counting dispatches: whole images of `cnt_targets` per
/// binding, as `plan` cuts them, `(images, group)` each.
pub(crate) fn count_groups(
    device: &wgpu::Device,
    pipe: &Pipeline,
    (params, params_buf): (&ParamSlots, &wgpu::Buffer),
    plan: &Plan,
    cnt_targets: &wgpu::Buffer,
    counts: &wgpu::Buffer,
) -> Vec<(u32, wgpu::BindGroup)> {
    plan.count_groups
        .iter()
        .enumerate()
        .map(|(g, cg)| {
            let entries = [
                params.entry(params_buf, params.count(g)),
                ranged(1, cnt_targets, cg.range),
                whole(2, counts),
            ];
            (
                cg.images,
                group(device, "fcos count", &pipe.layout, &entries),
            )
        })
        .collect()
}

/// The bind group of the normalisation pass, reading the global denominators
/// from `denominators`' place.
pub(crate) fn normalize_group(
    device: &wgpu::Device,
    pipe: &Pipeline,
    (params, params_buf): (&ParamSlots, &wgpu::Buffer),
    counts: &wgpu::Buffer,
    bufs: &NormBuffers,
    denominators: DenominatorSource,
) -> wgpu::BindGroup {
    let dens = match denominators {
        DenominatorSource::Host(_) => whole(2, bufs.denominators),
        DenominatorSource::Device(d) => ranged(
            2,
            d.buffer,
            BindRange {
                offset: d.offset,
                size: 8,
                base: 0,
            },
        ),
    };
    let entries = [
        params.entry(params_buf, params.call()),
        whole(1, counts),
        dens,
        whole(3, bufs.scales),
    ];
    group(device, "fcos normalize", &pipe.layout, &entries)
}
