//! Inputs and gradients as ranges of device buffers, one per level of each head
//! (`compute_ranges`, `forward_backward_ranges`): spread over several buffers at
//! non-zero aligned offsets, with other data between them, the losses and
//! gradients are bitwise those of the packed device path, forward and backward,
//! IoU and GIoU, and also when small bindings split a level's images over several
//! dispatches. Bad ranges are errors naming the tensor and level, before anything
//! runs; a bad value is named exactly as on the packed path. From ground-truth
//! boxes (`compute_ranges_from_boxes`, `forward_backward_ranges_from_boxes`,
//! `record_ranges_from_boxes`), the boxes and classes in ranges beside the heads,
//! the same holds against the packed device path from boxes.
#![cfg(feature = "casefile")]

mod common;

use fcos_loss::casefile::Case;
use fcos_loss::{
    Batch, BufferRange, ClassDtype, DeviceBatch, DeviceGroundTruth, DevicePredictions, FcosError,
    FcosLoss, Head, Heads, Input, LossConfig, LossWeights, Losses, RangedGradients,
    RangedGroundTruth, RangedInputs, RangedPredictions, RegLoss,
};

/// Where each part went: `(buffer, offset, bytes)`.
type Placed = Vec<(usize, u64, u64)>;

/// `parts` laid out over `n` new buffers in turn, each at an aligned offset past
/// the previous part with a gap of 0 to 2 alignments, every other byte `fill`.
fn arena(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    parts: &[Vec<f32>],
    n: usize,
    fill: f32,
) -> (Vec<wgpu::Buffer>, Placed) {
    let align = device.limits().min_storage_buffer_offset_alignment.max(4) as u64;
    let mut ends = vec![0u64; n];
    let mut placed = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let k = i % n;
        let at = ends[k].next_multiple_of(align) + align * (i as u64 % 3);
        let bytes = 4 * p.len() as u64;
        placed.push((k, at, bytes));
        ends[k] = at + bytes;
    }
    let buffers = (0..n)
        .map(|k| {
            let size = (ends[k] + align).next_multiple_of(4);
            let mut words = vec![fill; (size / 4) as usize];
            for (i, &(b, at, _)) in placed.iter().enumerate() {
                if b == k {
                    let s = (at / 4) as usize;
                    words[s..s + parts[i].len()].copy_from_slice(&parts[i]);
                }
            }
            let buf = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("test arena"),
                size,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_DST
                    | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            queue.write_buffer(&buf, 0, bytemuck::cast_slice(&words));
            buf
        })
        .collect();
    (buffers, placed)
}

/// The inputs of `batch` in per-level ranges over three buffers, made through
/// the three `From` conversions in turn.
fn ranged<'a>(batch: &Batch, bufs: &'a [wgpu::Buffer], placed: &Placed) -> RangedInputs<'a> {
    let mut k = 0;
    let mut next = || {
        let (b, at, bytes) = placed[k];
        let buf = &bufs[b];
        let r: BufferRange = match k % 3 {
            0 => buf.slice(at..at + bytes).into(),
            1 => wgpu::BufferBinding {
                buffer: buf,
                offset: at,
                size: std::num::NonZeroU64::new(bytes),
            }
            .into(),
            _ => BufferRange::new(buf, at, bytes),
        };
        k += 1;
        r
    };
    let levels = batch.levels.len();
    let mut head = || (0..levels).map(|_| next()).collect::<Vec<_>>();
    let (cls_logits, cnt_logits, reg_preds) = (head(), head(), head());
    RangedInputs {
        dtype: fcos_loss::Dtype::F32,
        batch: batch.batch,
        cls_logits,
        cnt_logits,
        reg_preds,
        cls_targets: next(),
        cnt_targets: next(),
        reg_targets: next(),
    }
}

/// Every level of each head, then the three targets.
fn parts(batch: &Batch) -> Vec<Vec<f32>> {
    let inputs = batch.inputs();
    let mut out: Vec<Vec<f32>> = Vec::new();
    for h in Head::ALL {
        out.extend(inputs.parts(h.input()).iter().map(|p| p.to_vec()));
    }
    for t in [Input::ClsTargets, Input::CntTargets, Input::RegTargets] {
        out.push(batch.packed(t));
    }
    out
}

/// Zeroed gradient ranges, per level of each head, over two buffers of their own.
fn grad_arena(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    batch: &Batch,
) -> (Vec<wgpu::Buffer>, Placed) {
    let inputs = batch.inputs();
    let parts: Vec<Vec<f32>> = Head::ALL
        .iter()
        .flat_map(|h| inputs.parts(h.input()).iter().map(|p| vec![0.0; p.len()]))
        .collect();
    arena(device, queue, &parts, 2, 7.0)
}

fn grad_ranges<'a>(
    bufs: &'a [wgpu::Buffer],
    placed: &Placed,
    levels: usize,
) -> RangedGradients<'a> {
    Heads::from_fn(|h| {
        let first = Head::ALL.iter().position(|&x| x == h).unwrap() * levels;
        (first..first + levels)
            .map(|k| {
                let (b, at, bytes) = placed[k];
                BufferRange::new(&bufs[b], at, bytes)
            })
            .collect()
    })
}

/// Each gradient range read back, level by level; and the words between and
/// after them, which must still hold the fill.
fn read_grads(
    engine: &FcosLoss,
    bufs: &[wgpu::Buffer],
    placed: &Placed,
    levels: usize,
) -> fcos_loss::Gradients {
    let ctx = engine.context();
    let words: Vec<Vec<f32>> = bufs.iter().map(|b| common::read_buffer(ctx, b)).collect();
    for (k, w) in words.iter().enumerate() {
        for (i, x) in w.iter().enumerate() {
            let inside = placed
                .iter()
                .any(|&(b, at, bytes)| b == k && (at / 4..(at + bytes) / 4).contains(&(i as u64)));
            assert!(
                inside || *x == 7.0,
                "word {i} of gradient buffer {k} was written"
            );
        }
    }
    Heads::from_fn(|h| {
        let first = Head::ALL.iter().position(|&x| x == h).unwrap() * levels;
        (first..first + levels)
            .map(|k| {
                let (b, at, bytes) = placed[k];
                words[b][(at / 4) as usize..((at + bytes) / 4) as usize].to_vec()
            })
            .collect()
    })
}

fn bits(g: &fcos_loss::Gradients) -> Vec<u32> {
    Head::ALL
        .iter()
        .flat_map(|&h| g[h].iter().flatten().map(|x| x.to_bits()))
        .collect()
}

/// Ranged against packed on `engine`'s device: losses and gradients bit for bit.
fn assert_ranged_is_packed(engine: &mut FcosLoss, batch: &Batch, what: &str) {
    let ctx = engine.context().clone();
    let (device, queue) = (&ctx.device, &ctx.queue);
    let levels = &batch.levels;
    let packed = DeviceBatch::upload(device, batch).unwrap();
    let (bufs, placed) = arena(device, queue, &parts(batch), 3, 1.0e4);
    let inputs = ranged(batch, &bufs, &placed);
    let weights = LossWeights::default();
    for reg in [RegLoss::Iou, RegLoss::Giou] {
        engine
            .set_config(LossConfig::new(batch.classes as u32).with_reg_loss(reg))
            .unwrap();
        let what = format!("{what} {reg:?}");
        let want = engine.compute_device(levels, &packed.inputs()).unwrap();
        let got = engine.compute_ranges(levels, &inputs).unwrap();
        assert_eq!(common::bits(&got), common::bits(&want), "{what}: forward");
        // Backward.
        let grads = packed.gradient_buffers(device).unwrap();
        let want = engine
            .forward_backward_device(levels, &packed.inputs(), &grads.as_ref(), &weights)
            .unwrap();
        let want_g =
            common::read_gradients(&ctx, levels, batch.batch, batch.classes, &grads.as_ref());
        let (gbufs, gplaced) = grad_arena(device, queue, batch);
        let granges = grad_ranges(&gbufs, &gplaced, levels.len());
        let got = engine
            .forward_backward_ranges(levels, &inputs, &granges, &weights)
            .unwrap();
        assert_eq!(
            common::bits(&got),
            common::bits(&want.value),
            "{what}: backward"
        );
        let got_g = read_grads(engine, &gbufs, &gplaced, levels.len());
        assert_eq!(bits(&got_g), bits(&want_g), "{what}: gradients");
    }
}

#[test]
fn ranges_over_several_buffers_give_the_packed_bits() {
    let mut engine = common::app_engine(LossConfig::new(1));
    for name in common::GOLDEN {
        let case = common::golden(name);
        assert_ranged_is_packed(&mut engine, &case.batch, name);
    }
}

#[test]
fn ranges_with_levels_split_over_dispatches_give_the_packed_bits() {
    // 512 KiB bindings: the VOC case's first level (20 × 64 × 64 floats, 320 KiB
    // an image) takes one image per dispatch, so the second segment starts inside
    // a range.
    let (device, queue) = common::app_device_with(|l| wgpu::Limits {
        max_storage_buffer_binding_size: 1 << 19,
        ..l
    });
    let mut engine = FcosLoss::from_device(device, queue, LossConfig::new(20)).unwrap();
    let case = common::golden("voc_b2_c20_512x512");
    assert_ranged_is_packed(&mut engine, &case.batch, "voc, 512 KiB bindings");
}

#[test]
fn a_bad_value_is_named_as_on_the_packed_path() {
    let engine = common::app_engine(LossConfig::new(7));
    let ctx = engine.context().clone();
    let case = common::golden("odd_b3_c7_100x150");
    for (input, part, at, value) in [
        (Input::ClsLogits, 1, 17, f32::NAN),
        (Input::RegPreds, 2, 3, f32::INFINITY),
        (Input::CntTargets, 0, 41, 1.5),
    ] {
        let mut batch = case.batch.clone();
        common::part_mut(&mut batch, input, part)[at] = value;
        let packed = DeviceBatch::upload(&ctx.device, &batch).unwrap();
        let want = engine
            .compute_device(&batch.levels, &packed.inputs())
            .unwrap_err();
        let (bufs, placed) = arena(&ctx.device, &ctx.queue, &parts(&batch), 2, 0.5);
        let got = engine
            .compute_ranges(&batch.levels, &ranged(&batch, &bufs, &placed))
            .unwrap_err();
        assert!(matches!(got, FcosError::Value { .. }), "{got}");
        assert_eq!(got.to_string(), want.to_string());
    }
}

#[test]
fn bad_ranges_are_errors_naming_the_tensor_and_level() {
    let engine = common::app_engine(LossConfig::new(7));
    let ctx = engine.context().clone();
    let (device, queue) = (&ctx.device, &ctx.queue);
    let case = common::golden("odd_b3_c7_100x150");
    let batch = &case.batch;
    let levels = &batch.levels;
    let (bufs, placed) = arena(device, queue, &parts(batch), 3, 1.0);
    let good = ranged(batch, &bufs, &placed);
    let (gbufs, gplaced) = grad_arena(device, queue, batch);
    let ggood = grad_ranges(&gbufs, &gplaced, levels.len());
    let weights = LossWeights::default();
    let align = device.limits().min_storage_buffer_offset_alignment as u64;
    let no_storage = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("no storage"),
        size: 1 << 20,
        usage: wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let expect = |err: FcosError, words: &[&str]| {
        let text = err.to_string();
        for w in words {
            assert!(text.contains(w), "'{w}' not in: {text}");
        }
        // The engine still works.
        engine.compute_ranges(levels, &good).unwrap();
    };
    // A misaligned level.
    let mut bad = good.clone();
    bad.cnt_logits[2].offset += if align > 4 { align / 2 } else { 2 };
    expect(
        engine.compute_ranges(levels, &bad).unwrap_err(),
        &["cnt_logits level 2", "min_storage_buffer_offset_alignment"],
    );
    // One float short.
    let mut bad = good.clone();
    bad.reg_preds[1].size -= 4;
    expect(
        engine.compute_ranges(levels, &bad).unwrap_err(),
        &["reg_preds level 1", "bytes"],
    );
    // Past the end of its buffer.
    let mut bad = good.clone();
    bad.cls_targets.offset = (bad.cls_targets.buffer.size() / align - 1) * align;
    expect(
        engine.compute_ranges(levels, &bad).unwrap_err(),
        &["cls_targets range", "buffer of"],
    );
    // No STORAGE.
    let mut bad = good.clone();
    bad.cls_logits[0] = BufferRange::new(&no_storage, 0, 1 << 20);
    expect(
        engine.compute_ranges(levels, &bad).unwrap_err(),
        &["cls_logits level 0", "STORAGE"],
    );
    // A level missing.
    let mut bad = good.clone();
    bad.cls_logits.pop();
    expect(
        engine.compute_ranges(levels, &bad).unwrap_err(),
        &["cls_logits ranges", "one range per level"],
    );
    // A gradient in an input's buffer.
    let mut gbad = ggood.clone();
    gbad[Head::CntLogits][0] = good.cnt_logits[0];
    expect(
        engine
            .forward_backward_ranges(levels, &good, &gbad, &weights)
            .unwrap_err(),
        &["grad cnt_logits level 0", "same buffer as", "read-write"],
    );
    // Two gradients overlapping.
    let mut gbad = ggood.clone();
    gbad[Head::RegPreds][1] = gbad[Head::ClsLogits][1];
    expect(
        engine
            .forward_backward_ranges(levels, &good, &gbad, &weights)
            .unwrap_err(),
        &["overlap"],
    );
    // Too few gradient levels.
    let mut gbad = ggood.clone();
    gbad[Head::ClsLogits].truncate(1);
    expect(
        engine
            .forward_backward_ranges(levels, &good, &gbad, &weights)
            .unwrap_err(),
        &["grad cls_logits ranges"],
    );
    // B = 0.
    let mut bad = good.clone();
    bad.batch = 0;
    expect(engine.compute_ranges(levels, &bad).unwrap_err(), &["B = 0"]);
}

/// A case's heads (every level of each head), then its boxes and its classes as
/// `i32` words (carried as `f32` bit patterns), in an arena of three buffers: the
/// ground truth shares buffers with the heads (both are bound read-only).
fn boxes_arena(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    case: &Case,
) -> (Vec<wgpu::Buffer>, Placed) {
    let batch = &case.batch;
    let bx = case.boxes.as_ref().expect("a case from boxes");
    let mut all = parts(batch);
    all.truncate(3 * batch.levels.len());
    all.push(bx.boxes.clone());
    all.push(
        bx.classes
            .iter()
            .map(|&c| f32::from_bits(c as i32 as u32))
            .collect(),
    );
    arena(device, queue, &all, 3, 1.0e4)
}

/// The predictions and ground truth [`boxes_arena`] placed.
fn ranged_boxes<'a>(
    case: &Case,
    bufs: &'a [wgpu::Buffer],
    placed: &Placed,
) -> (RangedPredictions<'a>, RangedGroundTruth<'a>) {
    let batch = &case.batch;
    let l = batch.levels.len();
    let range = |k: usize| {
        let (b, at, bytes) = placed[k];
        BufferRange::new(&bufs[b], at, bytes)
    };
    let head = |h: usize| (h * l..(h + 1) * l).map(range).collect::<Vec<_>>();
    let preds = RangedPredictions {
        batch: batch.batch,
        dtype: fcos_loss::Dtype::F32,
        cls_logits: head(0),
        cnt_logits: head(1),
        reg_preds: head(2),
    };
    let gt = RangedGroundTruth {
        boxes_per_image: case.boxes.as_ref().unwrap().boxes_per_image,
        boxes: range(3 * l),
        classes: range(3 * l + 1),
        class_dtype: ClassDtype::I32,
    };
    (preds, gt)
}

/// The packed device path's ground truth of a case (`i32` classes).
fn device_gt(device: &wgpu::Device, case: &Case) -> (wgpu::Buffer, wgpu::Buffer) {
    let bx = case.boxes.as_ref().unwrap();
    let classes: Vec<i32> = bx.classes.iter().map(|&c| c as i32).collect();
    (
        common::storage_buffer(device, bytemuck::cast_slice(&bx.boxes)),
        common::storage_buffer(device, bytemuck::cast_slice(&classes)),
    )
}

/// Submits `encoder` and reads the recorded call's losses.
fn submit_and_read(
    engine: &FcosLoss,
    encoder: wgpu::CommandEncoder,
    pending: &fcos_loss::PendingLosses<'_>,
) -> Result<Losses, FcosError> {
    engine.context().queue.submit([encoder.finish()]);
    pollster::block_on(engine.read_losses(pending))
}

#[test]
fn ranges_from_boxes_give_the_packed_device_bits() {
    let mut engine = common::app_engine(LossConfig::new(1));
    let ctx = engine.context().clone();
    let (device, queue) = (&ctx.device, &ctx.queue);
    let weights = LossWeights::default();
    for name in common::GOLDEN_BOXES {
        let case = common::golden(name);
        let batch = &case.batch;
        let levels = &batch.levels;
        let packed = DeviceBatch::upload(device, batch).unwrap();
        let dev_preds = DevicePredictions::of(&packed.inputs());
        let (boxes, classes) = device_gt(device, &case);
        let dgt = DeviceGroundTruth {
            boxes_per_image: case.boxes.as_ref().unwrap().boxes_per_image,
            boxes: &boxes,
            classes: &classes,
            class_dtype: ClassDtype::I32,
        };
        let (bufs, placed) = boxes_arena(device, queue, &case);
        let (preds, gt) = ranged_boxes(&case, &bufs, &placed);
        for reg in [RegLoss::Iou, RegLoss::Giou] {
            engine
                .set_config(LossConfig::new(batch.classes as u32).with_reg_loss(reg))
                .unwrap();
            let what = format!("{name} {reg:?}");
            // Forward: blocking and recorded.
            let want = engine
                .compute_device_from_boxes(levels, &dev_preds, &dgt, None)
                .unwrap()
                .value;
            let got = engine
                .compute_ranges_from_boxes(levels, &preds, &gt)
                .unwrap();
            assert_eq!(common::bits(&got), common::bits(&want), "{what}: forward");
            // The classes as whole f32 values instead of i32 words.
            let f32s: Vec<f32> = case
                .boxes
                .as_ref()
                .unwrap()
                .classes
                .iter()
                .map(|&c| c as f32)
                .collect();
            let f32_classes = common::storage_buffer(device, bytemuck::cast_slice(&f32s));
            let gt_f32 = RangedGroundTruth {
                classes: BufferRange::from(&f32_classes),
                class_dtype: ClassDtype::F32,
                ..gt
            };
            let got = engine
                .compute_ranges_from_boxes(levels, &preds, &gt_f32)
                .unwrap();
            assert_eq!(
                common::bits(&got),
                common::bits(&want),
                "{what}: f32 classes"
            );
            let mut encoder = device.create_command_encoder(&Default::default());
            let pending = engine
                .record_ranges_from_boxes(&mut encoder, levels, &preds, &gt, None, &weights)
                .unwrap();
            let got = submit_and_read(&engine, encoder, &pending).unwrap();
            assert_eq!(common::bits(&got), common::bits(&want), "{what}: recorded");
            drop(pending);
            // Backward: blocking and recorded, gradients bit for bit.
            let grads = packed.gradient_buffers(device).unwrap();
            let want = engine
                .forward_backward_device_from_boxes(
                    levels,
                    &dev_preds,
                    &dgt,
                    &grads.as_ref(),
                    &weights,
                    None,
                )
                .unwrap()
                .value;
            let want_g =
                common::read_gradients(&ctx, levels, batch.batch, batch.classes, &grads.as_ref());
            let (gbufs, gplaced) = grad_arena(device, queue, batch);
            let granges = grad_ranges(&gbufs, &gplaced, levels.len());
            let got = engine
                .forward_backward_ranges_from_boxes(levels, &preds, &gt, &granges, &weights)
                .unwrap();
            assert_eq!(common::bits(&got), common::bits(&want), "{what}: backward");
            let got_g = read_grads(&engine, &gbufs, &gplaced, levels.len());
            assert_eq!(bits(&got_g), bits(&want_g), "{what}: gradients");
            let (gbufs, gplaced) = grad_arena(device, queue, batch);
            let granges = grad_ranges(&gbufs, &gplaced, levels.len());
            let mut encoder = device.create_command_encoder(&Default::default());
            let pending = engine
                .record_ranges_from_boxes(
                    &mut encoder,
                    levels,
                    &preds,
                    &gt,
                    Some(&granges),
                    &weights,
                )
                .unwrap();
            let got = submit_and_read(&engine, encoder, &pending).unwrap();
            drop(pending);
            assert_eq!(
                common::bits(&got),
                common::bits(&want),
                "{what}: recorded backward"
            );
            let got_g = read_grads(&engine, &gbufs, &gplaced, levels.len());
            assert_eq!(bits(&got_g), bits(&want_g), "{what}: recorded gradients");
        }
    }
}

/// What to spoil in a case, how, and the words the error must hold.
type Spoil = (&'static str, fn(&mut Case), &'static [&'static str]);

#[test]
fn a_bad_box_class_or_head_value_is_named_on_the_ranged_path() {
    let engine = common::app_engine(LossConfig::new(7));
    let ctx = engine.context().clone();
    let (device, queue) = (&ctx.device, &ctx.queue);
    let clean = common::golden("boxes_odd_b3_c7_100x150_m9");
    let l = clean.batch.levels.len();
    let spoil: [Spoil; 4] = [
        (
            "a NaN box corner",
            |c| c.boxes.as_mut().unwrap().boxes[4 * 10 + 2] = f32::NAN,
            &["gt_boxes", "index"],
        ),
        (
            "a class above C",
            |c| c.boxes.as_mut().unwrap().classes[5] = 8.0,
            &["gt_classes", "index 5"],
        ),
        (
            "an infinite class logit",
            |c| common::part_mut(&mut c.batch, Input::ClsLogits, 1)[17] = f32::INFINITY,
            &["cls_logits"],
        ),
        (
            "a NaN box prediction",
            |c| common::part_mut(&mut c.batch, Input::RegPreds, 2)[3] = f32::NAN,
            &["reg_preds"],
        ),
    ];
    let weights = LossWeights::default();
    for (what, spoil, words) in spoil {
        let mut case = clean.clone();
        spoil(&mut case);
        let levels = &case.batch.levels;
        // The packed device path's error, for the same values.
        let packed = DeviceBatch::upload(device, &case.batch).unwrap();
        let (boxes, classes) = device_gt(device, &case);
        let dgt = DeviceGroundTruth {
            boxes_per_image: case.boxes.as_ref().unwrap().boxes_per_image,
            boxes: &boxes,
            classes: &classes,
            class_dtype: ClassDtype::I32,
        };
        let want = engine
            .compute_device_from_boxes(levels, &DevicePredictions::of(&packed.inputs()), &dgt, None)
            .unwrap_err();
        let (bufs, placed) = boxes_arena(device, queue, &case);
        let (preds, gt) = ranged_boxes(&case, &bufs, &placed);
        let got = engine
            .compute_ranges_from_boxes(levels, &preds, &gt)
            .unwrap_err();
        assert!(matches!(got, FcosError::Value { .. }), "{what}: {got}");
        assert_eq!(got.to_string(), want.to_string(), "{what}");
        for w in words {
            assert!(got.to_string().contains(w), "{what}: '{w}' not in: {got}");
        }
        // The recorded call reports it at the read.
        let mut encoder = device.create_command_encoder(&Default::default());
        let pending = engine
            .record_ranges_from_boxes(&mut encoder, levels, &preds, &gt, None, &weights)
            .unwrap();
        let read = submit_and_read(&engine, encoder, &pending).unwrap_err();
        assert_eq!(read.to_string(), want.to_string(), "{what}: recorded");
        assert_eq!(3 * l + 2, placed.len());
    }
}

#[test]
fn bad_ground_truth_ranges_are_errors_naming_the_tensor() {
    let engine = common::app_engine(LossConfig::new(7));
    let ctx = engine.context().clone();
    let (device, queue) = (&ctx.device, &ctx.queue);
    let case = common::golden("boxes_odd_b3_c7_100x150_m9");
    let levels = &case.batch.levels;
    let (bufs, placed) = boxes_arena(device, queue, &case);
    let (preds, good) = ranged_boxes(&case, &bufs, &placed);
    let (gbufs, gplaced) = grad_arena(device, queue, &case.batch);
    let grads = grad_ranges(&gbufs, &gplaced, levels.len());
    let weights = LossWeights::default();
    let align = device.limits().min_storage_buffer_offset_alignment as u64;
    let expect = |err: FcosError, words: &[&str]| {
        let text = err.to_string();
        for w in words {
            assert!(text.contains(w), "'{w}' not in: {text}");
        }
        engine
            .compute_ranges_from_boxes(levels, &preds, &good)
            .unwrap();
    };
    let mut bad = good;
    bad.boxes.offset += if align > 4 { align / 2 } else { 2 };
    expect(
        engine
            .compute_ranges_from_boxes(levels, &preds, &bad)
            .unwrap_err(),
        &["gt_boxes range", "min_storage_buffer_offset_alignment"],
    );
    let mut bad = good;
    bad.classes.size -= 4;
    expect(
        engine
            .compute_ranges_from_boxes(levels, &preds, &bad)
            .unwrap_err(),
        &["gt_classes range", "bytes"],
    );
    let mut bad = good;
    bad.boxes_per_image += 1;
    expect(
        engine
            .compute_ranges_from_boxes(levels, &preds, &bad)
            .unwrap_err(),
        &["gt_boxes range", "bytes"],
    );
    // A gradient in the buffer of the boxes (bound read-only), a buffer that holds
    // no head.
    let bx = case.boxes.as_ref().unwrap();
    let mut words = bx.boxes.clone();
    words.resize(
        words.len() + (grads[Head::RegPreds][0].size / 4) as usize,
        0.0,
    );
    let own = common::storage_buffer(device, bytemuck::cast_slice(&words));
    let alone = RangedGroundTruth {
        boxes: BufferRange::from(&own),
        ..good
    };
    let mut gbad = grads.clone();
    gbad[Head::RegPreds][0] = BufferRange::new(&own, 0, gbad[Head::RegPreds][0].size);
    expect(
        engine
            .forward_backward_ranges_from_boxes(levels, &preds, &alone, &gbad, &weights)
            .unwrap_err(),
        &["grad reg_preds level 0", "same buffer as gt_boxes range"],
    );
}
