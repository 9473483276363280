//! `FcosLoss::capture`: a call described (pipelines, buffers and their contents,
//! the clear and dispatches, where the results lie) is complete. Replayed with
//! plain wgpu on a device of its own, from the capture alone, it gives the same
//! bits as the call did; and what the call left in the result ranges is what
//! `compute` / `forward_backward` return. Golden cases, forward and backward, IoU
//! and GIoU, subgroup and shared-memory reductions, from targets and from boxes.
#![cfg(feature = "casefile")]

mod common;

use fcos_loss::{
    CallCapture, CapturedCommand, FcosError, FcosLoss, Head, Inputs, Levels, LossConfig,
    LossWeights, Predictions, RegLoss,
};

/// Runs `capture`'s commands with plain wgpu on a new device and returns the
/// bytes of each result range: the image sums, then each head's gradients.
fn replay(capture: &CallCapture) -> Vec<Vec<u8>> {
    let subgroups = capture
        .pipelines
        .iter()
        .any(|p| p.features.iter().any(|f| f == "subgroups"));
    let (device, queue) = common::app_device_with_features(
        |f| f & wgpu::Features::SUBGROUP.union(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS),
        |l| l,
    );
    assert!(
        !subgroups || device.features().contains(wgpu::Features::SUBGROUP),
        "the capture needs subgroups"
    );
    use wgpu::BufferUsages as U;
    let buffers: Vec<wgpu::Buffer> = capture
        .buffers
        .iter()
        .map(|b| {
            let kind = if b.uniform { U::UNIFORM } else { U::STORAGE };
            let buf = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(&b.label),
                size: b.size,
                usage: kind | U::COPY_DST | U::COPY_SRC,
                mapped_at_creation: false,
            });
            queue.write_buffer(&buf, 0, &b.contents);
            buf
        })
        .collect();
    let pipelines: Vec<(wgpu::BindGroupLayout, wgpu::ComputePipeline)> = capture
        .pipelines
        .iter()
        .map(|v| {
            let entries: Vec<wgpu::BindGroupLayoutEntry> = v
                .bindings
                .iter()
                .enumerate()
                .filter_map(|(i, b)| {
                    let ty = match b.as_deref()? {
                        "uniform" => wgpu::BufferBindingType::Uniform,
                        "read-only-storage" => wgpu::BufferBindingType::Storage { read_only: true },
                        "storage" => wgpu::BufferBindingType::Storage { read_only: false },
                        other => panic!("binding type {other}"),
                    };
                    Some(wgpu::BindGroupLayoutEntry {
                        binding: i as u32,
                        visibility: wgpu::ShaderStages::COMPUTE,
                        ty: wgpu::BindingType::Buffer {
                            ty,
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                        count: None,
                    })
                })
                .collect();
            let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(&v.stem),
                entries: &entries,
            });
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(&v.stem),
                source: wgpu::ShaderSource::Wgsl(v.source.as_str().into()),
            });
            let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(&v.stem),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
            let constants: Vec<(&str, f64)> =
                v.constants.iter().map(|(k, x)| (k.as_str(), *x)).collect();
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&v.stem),
                layout: Some(&pl),
                module: &module,
                entry_point: Some(&v.entry_point),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &constants,
                    zero_initialize_workgroup_memory: true,
                },
                cache: None,
            });
            (layout, pipeline)
        })
        .collect();
    let mut encoder = device.create_command_encoder(&Default::default());
    for c in &capture.commands {
        match c {
            CapturedCommand::Clear { buffer } => encoder.clear_buffer(&buffers[*buffer], 0, None),
            CapturedCommand::Dispatch {
                pipeline,
                bindings,
                workgroups,
            } => {
                let (layout, pipe) = &pipelines[*pipeline];
                let entries: Vec<wgpu::BindGroupEntry> = bindings
                    .iter()
                    .map(|b| wgpu::BindGroupEntry {
                        binding: b.binding,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &buffers[b.buffer],
                            offset: b.offset,
                            size: std::num::NonZeroU64::new(b.size),
                        }),
                    })
                    .collect();
                let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: None,
                    layout,
                    entries: &entries,
                });
                let mut pass = encoder.begin_compute_pass(&Default::default());
                pass.set_pipeline(pipe);
                pass.set_bind_group(0, &group, &[]);
                pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
            }
        }
    }
    queue.submit([encoder.finish()]);
    let ctx = fcos_loss::GpuContext::from_device(device, queue);
    result_ranges(capture)
        .into_iter()
        .map(|(buffer, size)| {
            let words = common::read_buffer(&ctx, &buffers[buffer]);
            bytemuck::cast_slice(&words)[..size as usize].to_vec()
        })
        .collect()
}

/// `(buffer, bytes)` of each result range: the image sums, then the gradients.
fn result_ranges(c: &CallCapture) -> Vec<(usize, u64)> {
    let mut out = vec![(c.image_sums.buffer, c.image_sums.size)];
    if let Some(g) = &c.gradients {
        out.extend(Head::ALL.iter().map(|&h| (g[h].buffer, g[h].size)));
    }
    out
}

/// What the call left in its result ranges.
fn native(c: &CallCapture) -> Vec<Vec<u8>> {
    let mut out = vec![c.image_sums.native.clone()];
    if let Some(g) = &c.gradients {
        out.extend(Head::ALL.iter().map(|&h| g[h].native.clone()));
    }
    out
}

/// The per-image sums of a capture's results: `(S_cls, n, flags)` per image.
fn image_sums(bytes: &[u8]) -> Vec<(f32, u32, u32)> {
    let words: Vec<u32> = bytemuck::pod_collect_to_vec(bytes);
    words
        .chunks(8)
        .map(|w| (f32::from_bits(w[0]), w[5], w[6]))
        .collect()
}

fn engine(config: LossConfig, subgroups: bool) -> FcosLoss {
    let mut e = common::engine(config);
    if !subgroups || e.subgroups() {
        e.set_subgroups(subgroups).expect("set_subgroups");
    }
    e
}

/// Every structural promise of a capture: pipelines set before use, bindings
/// within their buffers, a clear only from boxes, result ranges in bounds.
fn assert_well_formed(c: &CallCapture, boxes: bool) {
    assert!(c.params < c.buffers.len());
    assert!(c.buffers[c.params].uniform, "params are a uniform buffer");
    let mut clears = 0;
    for cmd in &c.commands {
        match cmd {
            CapturedCommand::Clear { buffer } => {
                clears += 1;
                assert!(*buffer < c.buffers.len());
            }
            CapturedCommand::Dispatch {
                pipeline,
                bindings,
                workgroups,
            } => {
                let v = &c.pipelines[*pipeline];
                assert!(workgroups.iter().all(|&n| n >= 1), "{workgroups:?}");
                for b in bindings {
                    let buf = &c.buffers[b.buffer];
                    assert!(b.offset + b.size <= buf.size, "{} overruns", buf.label);
                    assert!(
                        v.bindings[b.binding as usize].is_some(),
                        "{}: binding {} is not in the layout",
                        v.stem,
                        b.binding
                    );
                }
            }
        }
    }
    assert_eq!(clears, usize::from(boxes));
    for (buffer, size) in result_ranges(c) {
        assert!(size <= c.buffers[buffer].size);
    }
}

#[test]
fn replayed_captures_give_the_calls_own_bits() {
    for name in common::GOLDEN {
        let case = common::golden(name);
        let batch = &case.batch;
        let inputs = batch.inputs();
        for (backward, reg, subgroups) in [
            (false, RegLoss::Iou, true),
            (false, RegLoss::Giou, false),
            (true, RegLoss::Giou, true),
            (true, RegLoss::Iou, false),
        ] {
            let what = format!("{name} backward={backward} {reg:?} subgroups={subgroups}");
            let mut config = LossConfig::new(batch.classes as u32);
            config.reg_loss = reg;
            let e = engine(config, subgroups);
            let weights = LossWeights::default();
            let c = e
                .capture(&batch.levels, &inputs, backward, &weights)
                .unwrap_or_else(|err| panic!("{what}: {err}"));
            assert_well_formed(&c, false);
            assert_eq!(c.gradients.is_some(), backward, "{what}");
            assert_eq!(
                c.pipelines
                    .iter()
                    .any(|p| p.features.iter().any(|f| f == "subgroups")),
                e.subgroups(),
                "{what}"
            );
            assert_eq!(replay(&c), native(&c), "{what}: replay differs");
            // The native results are the call's: the losses compute gives.
            let sums = image_sums(&c.image_sums.native);
            let (losses, grads) = if backward {
                let (l, g) = e
                    .forward_backward(&batch.levels, &inputs, &weights)
                    .unwrap();
                (l, Some(g))
            } else {
                (e.compute(&batch.levels, &inputs).unwrap(), None)
            };
            for (b, (s_cls, n, flags)) in sums.iter().enumerate() {
                assert_eq!(*flags, 0, "{what}");
                assert_eq!(*n, losses.num_pos[b], "{what}");
                assert_eq!(f64::from(*s_cls), losses.sums.cls[b], "{what}");
            }
            if let (Some(grads), Some(got)) = (grads, &c.gradients) {
                for h in Head::ALL {
                    let flat: Vec<f32> = grads[h].iter().flatten().copied().collect();
                    assert_eq!(
                        got[h].native,
                        bytemuck::cast_slice::<f32, u8>(&flat),
                        "{what}: {h}"
                    );
                }
            }
        }
    }
}

#[test]
fn captures_from_boxes_replay_bit_for_bit() {
    for (name, backward) in [
        ("boxes_odd_b3_c7_100x150_m9", true),
        ("boxes_voc_b2_c20_512x512_m12", false),
    ] {
        let case = common::golden(name);
        let batch = &case.batch;
        let inputs = batch.inputs();
        let boxes = case.boxes.as_ref().expect("a box case");
        let gt = boxes.ground_truth(batch.batch);
        let e = engine(LossConfig::new(batch.classes as u32), true);
        let preds = Predictions::of(&inputs);
        let c = e
            .capture_from_boxes(
                &batch.levels,
                &preds,
                &gt,
                backward,
                &LossWeights::default(),
            )
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_well_formed(&c, true);
        assert_eq!(replay(&c), native(&c), "{name}: replay differs");
        let losses = e
            .compute_from_boxes(&batch.levels, &preds, &gt)
            .unwrap()
            .value;
        let sums = image_sums(&c.image_sums.native);
        let n: Vec<u32> = sums.iter().map(|s| s.1).collect();
        assert_eq!(n, losses.num_pos, "{name}");
    }
}

#[test]
fn a_bad_value_shows_in_the_captured_flags() {
    let case = common::golden("odd_b3_c7_100x150");
    let mut batch = case.batch.clone();
    common::part_mut(&mut batch, fcos_loss::Input::ClsLogits, 0)[5] = f32::NAN;
    let e = common::engine(LossConfig::new(batch.classes as u32));
    let c = e
        .capture(
            &batch.levels,
            &batch.inputs(),
            false,
            &LossWeights::default(),
        )
        .expect("a capture does not judge the values");
    let flags: Vec<u32> = image_sums(&c.image_sums.native)
        .iter()
        .map(|s| s.2)
        .collect();
    assert_ne!(flags[0], 0, "image 0 holds the NaN: {flags:?}");
    assert_eq!(replay(&c), native(&c));
    // The blocking call names it.
    let err = e.compute(&batch.levels, &batch.inputs()).unwrap_err();
    assert!(matches!(err, FcosError::Value { .. }), "{err}");
}

#[test]
fn nothing_to_capture_is_an_error() {
    let levels = Levels::from_shapes(&[(0, 5), (3, 0)]).unwrap();
    let batch = common::constant_batch(&levels, 1, 3, 0.0, 0.0, 0.0, 1.0);
    let inputs: Inputs = batch.inputs();
    let e = common::engine(LossConfig::new(3));
    let err = e
        .capture(&levels, &inputs, false, &LossWeights::default())
        .unwrap_err();
    assert!(matches!(err, FcosError::InvalidCall(_)), "{err}");
}
