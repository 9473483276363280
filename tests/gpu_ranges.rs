//! Inputs and gradients as ranges of device buffers, one per level of each head
//! (`compute_ranges`, `forward_backward_ranges`): spread over several buffers at
//! non-zero aligned offsets, with other data between them, the losses and
//! gradients are bitwise those of the packed device path, forward and backward,
//! IoU and GIoU, and also when small bindings split a level's images over several
//! dispatches. Bad ranges are errors naming the tensor and level, before anything
//! runs; a bad value is named exactly as on the packed path.
#![cfg(feature = "casefile")]

mod common;

use fcos_loss::{
    Batch, BufferRange, DeviceBatch, FcosError, FcosLoss, Head, Heads, Input, LossConfig,
    LossWeights, RangedGradients, RangedInputs, RegLoss,
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
