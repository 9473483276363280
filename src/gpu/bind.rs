//! The bind groups of one call: one per counting dispatch, one for the
//! normalisation (where the call normalises on the device), one per fused-pass
//! segment (its ranges of the inputs and gradients), one for the finalize pass.

use crate::error::FcosError;
use crate::gpu::call::{Call, CallPipelines, DenominatorSource, GtBuffers, TargetSource};
use crate::gpu::pipelines::Pipeline;
use crate::gpu::plan::{BindRange, Plan};
use crate::gpu::ranges::BufferRange;
use crate::gpu::uniforms::ParamSlots;
use crate::gpu::work::{partials_bytes, BoxWork, NormBuffers, WorkBuffers};
use crate::input::{Head, Input};

/// One buffer range a bind group binds, kept beside the group so that a call can
/// be described (captured) as well as run.
#[derive(Debug, Clone)]
pub(crate) struct Bound {
    pub binding: u32,
    pub buffer: wgpu::Buffer,
    pub offset: u64,
    pub size: u64,
}

/// A bind group and the ranges it binds.
#[derive(Debug)]
pub(crate) struct Group {
    pub group: wgpu::BindGroup,
    pub bound: Vec<Bound>,
}

/// The counting stage's bind groups.
#[derive(Debug)]
pub(crate) enum CountGroups {
    /// From the centerness targets: `(images, group)` per dispatch.
    Targets(Vec<(u32, Group)>),
    /// From boxes: the per-image sum of the tiles' counts; before it, where the
    /// call normalises on the device, one counting dispatch per fused-pass
    /// segment (`tiles`); otherwise the fused pass counts and the sum follows it.
    Boxes {
        tiles: Option<Vec<Group>>,
        sum: Group,
    },
}

/// Every bind group of a call, in dispatch order.
#[derive(Debug)]
pub(crate) struct BindGroups {
    /// Calls from boxes: the cull pass, one per fused-pass segment.
    pub cull: Vec<Group>,
    /// Counting.
    pub count: CountGroups,
    /// The normalisation (calls that normalise on the device; one workgroup).
    pub normalize: Option<Group>,
    /// Fused pass: one per segment of the plan.
    pub fused: Vec<Group>,
    /// The finalize pass.
    pub finalize: Group,
    /// Gradients in the heads' half dtype: one per pack dispatch of the plan.
    pub pack: Vec<Group>,
}

pub(crate) fn whole(binding: u32, buffer: &wgpu::Buffer) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry {
        binding,
        resource: buffer.as_entire_binding(),
    }
}

/// A binding of a caller's range.
pub(crate) fn span(binding: u32, r: BufferRange<'_>) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry {
        binding,
        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: r.buffer,
            offset: r.offset,
            size: std::num::NonZeroU64::new(r.size),
        }),
    }
}

pub(crate) fn ranged(
    binding: u32,
    buffer: &wgpu::Buffer,
    r: BindRange,
) -> wgpu::BindGroupEntry<'_> {
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

/// The tiles' lists of boxes of the fused pass from boxes (in place of the
/// targets).
const LISTS_BINDING: u32 = 4;
const LIST_COUNTS_BINDING: u32 = 5;

/// The cull pass's buffers of a call from boxes.
fn box_work<'p>(work: &WorkBuffers<'p>) -> Result<BoxWork<'p>, FcosError> {
    work.boxes
        .ok_or_else(|| FcosError::gpu("internal: a call from boxes without its box lists"))
}

/// The fused pass's partial sums (and, after them, the backward pass's gradient
/// factors: binding 8 is unused).
const PARTIALS_BINDING: u32 = 7;

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
    // The slots this plan uses and the scale slots after them (the pooled buffer
    // may be larger than one binding).
    let partials = BindRange {
        offset: 0,
        size: partials_bytes(plan),
        base: 0,
    };
    let box_lists = match call.targets {
        TargetSource::Boxes(_) => Some(box_work(work)?),
        TargetSource::Dense { .. } => None,
    };
    let fused =
        plan.segments
            .iter()
            .enumerate()
            .map(|(s, seg)| {
                let mut entries = vec![params.entry(work.params, params.segment(s))];
                entries.extend(call.heads.iter().map(|(h, bufs)| {
                    let input = h.input();
                    ranged(input_binding(input), bufs[seg.level], seg.ranges[input])
                }));
                match call.targets {
                    TargetSource::Dense { cls, cnt, reg } => entries.extend(
                        [
                            (Input::ClsTargets, cls),
                            (Input::CntTargets, cnt),
                            (Input::RegTargets, reg),
                        ]
                        .map(|(input, buf)| ranged(input_binding(input), buf, seg.ranges[input])),
                    ),
                    TargetSource::Boxes(_) => {
                        if let Some(l) = box_lists {
                            entries.extend([
                                whole(LISTS_BINDING, l.lists),
                                whole(LIST_COUNTS_BINDING, l.counts),
                            ]);
                        }
                    }
                }
                entries.push(ranged(PARTIALS_BINDING, work.partials, partials));
                if let Some(grads) = call.grads {
                    entries.extend(grads.iter().map(|(h, bufs)| {
                        ranged(grad_binding(h), bufs[seg.level], seg.grad_ranges[h])
                    }));
                }
                group(
                    device,
                    "fcos fused segment",
                    &pipelines.fused.layout,
                    &entries,
                )
            })
            .collect();
    let count = match (call.targets, &pipelines.sum_counts) {
        (TargetSource::Dense { cnt, .. }, _) => CountGroups::Targets(count_groups(
            device,
            pipelines.count.as_ref().ok_or_else(|| {
                FcosError::gpu("internal: a call from targets without its count pipeline")
            })?,
            (params, work.params),
            plan,
            cnt,
            work.counts,
        )),
        (TargetSource::Boxes(_), Some(sum_pipe)) => CountGroups::Boxes {
            tiles: match &pipelines.count {
                Some(count) => {
                    let lists = box_work(work)?;
                    Some(
                        (0..plan.segments.len())
                            .map(|s| {
                                let entries = box_count_entries(
                                    (params, work.params),
                                    s,
                                    lists,
                                    (work.partials, partials),
                                );
                                group(device, "fcos count boxes", &count.layout, &entries)
                            })
                            .collect(),
                    )
                }
                None => None,
            },
            sum: group(
                device,
                "fcos sum counts",
                &sum_pipe.layout,
                &[
                    params.entry(work.params, params.call()),
                    ranged(1, work.partials, partials),
                    whole(2, work.counts),
                ],
            ),
        },
        (TargetSource::Boxes(_), None) => {
            return Err(FcosError::gpu(
                "internal: a call from boxes without its sum_counts pipeline",
            ))
        }
    };
    let normalize = match (&pipelines.normalize, &work.norm) {
        (Some(pipe), Some(bufs)) => Some(normalize_group(
            device,
            pipe,
            (params, work.params),
            work.counts,
            bufs,
            call.planned.denominators,
            plan.batch,
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
    let cull = match (call.targets, &pipelines.cull) {
        (TargetSource::Boxes(gt), Some(pipe)) => {
            let lists = box_work(work)?;
            (0..plan.segments.len())
                .map(|s| cull_group(device, pipe, (params, work.params), s, gt, lists))
                .collect()
        }
        _ => Vec::new(),
    };
    let pack = match (&pipelines.pack, call.grads, call.half_grads) {
        (Some(pipe), Some(grads), Some(out)) => plan
            .packs
            .iter()
            .enumerate()
            .map(|(r, run)| {
                let level = plan.segments[run.segment].level;
                group(
                    device,
                    "fcos pack half gradients",
                    &pipe.layout,
                    &[
                        params.entry(work.params, params.pack_run(r)),
                        ranged(1, grads[run.head][level], run.src),
                        ranged(2, out[run.head][level], run.dst),
                    ],
                )
            })
            .collect(),
        (None, _, _) => Vec::new(),
        _ => {
            return Err(FcosError::gpu(
                "internal: half gradients without their buffers",
            ))
        }
    };
    Ok(BindGroups {
        cull,
        count,
        normalize,
        fused,
        finalize,
        pack,
    })
}

pub(crate) fn group(
    device: &wgpu::Device,
    label: &str,
    layout: &wgpu::BindGroupLayout,
    entries: &[wgpu::BindGroupEntry],
) -> Group {
    let bound = entries
        .iter()
        .filter_map(|e| match &e.resource {
            wgpu::BindingResource::Buffer(b) => Some(Bound {
                binding: e.binding,
                buffer: b.buffer.clone(),
                offset: b.offset,
                size: b.size.map_or(b.buffer.size() - b.offset, |s| s.get()),
            }),
            _ => None,
        })
        .collect();
    let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(label),
        layout,
        entries,
    });
    Group { group, bound }
}

/// The bind group of segment `s`'s cull dispatch (`cull.wgsl`).
pub(crate) fn cull_group(
    device: &wgpu::Device,
    pipe: &Pipeline,
    (params, params_buf): (&ParamSlots, &wgpu::Buffer),
    s: usize,
    gt: GtBuffers,
    lists: BoxWork,
) -> Group {
    let entries = [
        params.entry(params_buf, params.segment(s)),
        span(1, gt.boxes),
        span(2, gt.classes),
        whole(3, lists.lists),
        whole(4, lists.counts),
    ];
    group(device, "fcos cull boxes", &pipe.layout, &entries)
}

/// The first four entries of segment `s`'s `count_boxes.wgsl` group: params, the
/// tiles' lists and their lengths, the partial slots (the target pass adds its
/// outputs).
pub(crate) fn box_count_entries<'a>(
    (params, params_buf): (&ParamSlots, &'a wgpu::Buffer),
    s: usize,
    lists: BoxWork<'a>,
    (partials, range): (&'a wgpu::Buffer, BindRange),
) -> Vec<wgpu::BindGroupEntry<'a>> {
    vec![
        params.entry(params_buf, params.segment(s)),
        whole(1, lists.lists),
        whole(2, lists.counts),
        ranged(3, partials, range),
    ]
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
) -> Vec<(u32, Group)> {
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
    batch: u32,
) -> Group {
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
        ranged(3, bufs.scales, bufs.scale_range(batch)),
    ];
    group(device, "fcos normalize", &pipe.layout, &entries)
}
