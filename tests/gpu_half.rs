//! Half-precision heads (docs/contract.md §9): `f16` and `bf16` network outputs
//! uploaded as 2-byte elements and widened on the device.
//!
//! - The golden half cases (PyTorch-scored from the widened values) within the
//!   contract's tolerances, IoU and GIoU, checks on and off.
//! - Every half call equals, bit for bit, the `f32` call on the same values
//!   widened on the host: the widening is exact and the maths after it is the
//!   `f32` kernel's. This holds at the edges of the formats (±60 logits, the
//!   largest finite f16, the smallest normal and subnormal), at odd element
//!   counts and levels that start at odd elements (halves that do not pair into
//!   words evenly), from boxes, and on the device path (packed buffers and
//!   ranges).
//! - NaN and ±Inf halves are flagged and named exactly as the same `f32` values.
#![cfg(feature = "casefile")]

mod common;

use fcos_loss::synthetic::{generate, SyntheticSpec};
use fcos_loss::{
    reference, Batch, BufferRange, DeviceGradients, DeviceInputs, Dtype, Element, FcosError,
    FcosLoss, Head, Heads, Input, Inputs, Levels, LossConfig, LossWeights, Losses, RangedInputs,
    RegLoss,
};
use half::{bf16, f16};

/// The golden half cases under tests/data.
const HALF_CASES: [&str; 2] = [
    "half_f16_voc_b2_c20_512x512",
    "half_bf16_voc_b2_c20_512x512",
];

/// A batch's heads rounded to `T` (nearest even), and the batch with its heads
/// replaced by those values widened back to `f32`.
fn to_half<T: Element>(batch: &Batch, from: impl Fn(f32) -> T) -> (Heads<Vec<Vec<T>>>, Batch) {
    let heads = Heads::from_fn(|h: Head| {
        head_of(batch, h)
            .iter()
            .map(|v| v.iter().map(|&x| from(x)).collect::<Vec<T>>())
            .collect::<Vec<_>>()
    });
    let mut widened = batch.clone();
    for h in Head::ALL {
        *head_of_mut(&mut widened, h) = heads[h]
            .iter()
            .map(|v| v.iter().map(|x| x.widen()).collect())
            .collect();
    }
    (heads, widened)
}

fn head_of(batch: &Batch, h: Head) -> &Vec<Vec<f32>> {
    match h {
        Head::ClsLogits => &batch.cls_logits,
        Head::CntLogits => &batch.cnt_logits,
        Head::RegPreds => &batch.reg_preds,
    }
}

fn head_of_mut(batch: &mut Batch, h: Head) -> &mut Vec<Vec<f32>> {
    match h {
        Head::ClsLogits => &mut batch.cls_logits,
        Head::CntLogits => &mut batch.cnt_logits,
        Head::RegPreds => &mut batch.reg_preds,
    }
}

/// Half heads over `batch`'s targets.
fn half_inputs<'a, T: Element>(batch: &'a Batch, heads: &'a Heads<Vec<Vec<T>>>) -> Inputs<'a, T> {
    let view = |h: Head| heads[h].iter().map(|v| v.as_slice()).collect();
    Inputs {
        batch: batch.batch,
        cls_logits: view(Head::ClsLogits),
        cnt_logits: view(Head::CntLogits),
        reg_preds: view(Head::RegPreds),
        cls_targets: &batch.cls_targets,
        cnt_targets: &batch.cnt_targets,
        reg_targets: &batch.reg_targets,
    }
}

fn assert_bits(what: &str, got: &Losses, want: &Losses) {
    assert_eq!(
        common::bits(got),
        common::bits(want),
        "{what}: {got:?} vs {want:?}"
    );
}

fn assert_grad_bits(what: &str, got: &fcos_loss::Gradients, want: &fcos_loss::Gradients) {
    for h in Head::ALL {
        assert_eq!(
            common::bits_of(&got[h]),
            common::bits_of(&want[h]),
            "{what}: {h} gradients differ"
        );
    }
}

/// The half call and the f32 call on the widened values agree bit for bit,
/// forward and backward; the CPU reference within tolerance.
fn check_against_f32<T: Element>(
    engine: &FcosLoss,
    what: &str,
    batch: &Batch,
    from: impl Fn(f32) -> T,
) {
    let (heads, widened) = to_half(batch, from);
    let inputs = half_inputs(batch, &heads);
    let levels = &batch.levels;
    let half = engine.compute(levels, &inputs).unwrap();
    let full = engine.compute(levels, &widened.inputs()).unwrap();
    assert_bits(&format!("{what}: forward"), &half, &full);
    let w = LossWeights::default();
    let (hl, hg) = engine.forward_backward(levels, &inputs, &w).unwrap();
    let (fl, fg) = engine
        .forward_backward(levels, &widened.inputs(), &w)
        .unwrap();
    assert_bits(&format!("{what}: backward losses"), &hl, &fl);
    assert_grad_bits(&format!("{what}: backward"), &hg, &fg);
    let cpu = reference::losses(engine.config(), levels, &inputs).unwrap();
    common::assert_close(&format!("{what}: GPU vs CPU"), &half, &cpu);
}

#[test]
fn golden_half_cases_match_pytorch() {
    let mut engine = common::engine(LossConfig::new(20));
    for name in HALF_CASES {
        let case = common::golden(name);
        let half = case.half.as_ref().expect("the file's heads are half");
        let expected = case.expected.as_ref().expect("expected values");
        let batch = &case.batch;
        for mode in [RegLoss::Iou, RegLoss::Giou] {
            let config = LossConfig::new(batch.classes as u32).with_reg_loss(mode);
            engine.set_config(config.clone()).unwrap();
            let reg = match mode {
                RegLoss::Iou => expected.reg_loss.clone(),
                RegLoss::Giou => expected.reg_loss_giou.clone().expect("GIoU losses"),
            };
            for checks in [true, false] {
                engine.set_checks(checks);
                let what = format!("{name} ({}, checks {checks})", mode.name());
                let (gpu, grads) = match half.dtype {
                    Dtype::F16 => {
                        let inputs = half.f16_inputs(batch).unwrap();
                        engine.forward_backward(&batch.levels, &inputs, &LossWeights::default())
                    }
                    _ => {
                        let inputs = half.bf16_inputs(batch).unwrap();
                        engine.forward_backward(&batch.levels, &inputs, &LossWeights::default())
                    }
                }
                .unwrap();
                let want = Losses::from_per_image(
                    expected.cls_loss.clone(),
                    expected.cnt_loss.clone(),
                    reg.clone(),
                    gpu.num_pos.clone(),
                    true,
                );
                common::assert_close(&format!("{what}: GPU vs PyTorch"), &gpu, &want);
                // The files score gradients in IoU mode (and GIoU's box
                // gradients where they carry them).
                let mut want_grads = expected.grad.clone().expect("gradients");
                match (mode, &expected.grad_giou_reg) {
                    (RegLoss::Iou, _) => {}
                    (RegLoss::Giou, Some(g)) => want_grads.reg_preds = g.clone(),
                    (RegLoss::Giou, None) => {
                        want_grads.reg_preds = grads.reg_preds.clone();
                    }
                }
                common::assert_heads(&format!("{what}: gradients"), &grads, &want_grads, 1e-4);
            }
        }
        engine.set_checks(true);
    }
}

#[test]
fn golden_half_cases_equal_their_widened_f32_call() {
    let engine = common::engine(LossConfig::new(20));
    for name in HALF_CASES {
        let case = common::golden(name);
        let batch = &case.batch;
        let half = case.half.as_ref().unwrap();
        let what = format!("{name} ({})", half.dtype);
        // `batch` holds the file's values widened on the host.
        let full = engine.compute(&batch.levels, &batch.inputs()).unwrap();
        let got = match half.dtype {
            Dtype::F16 => engine.compute(&batch.levels, &half.f16_inputs(batch).unwrap()),
            _ => engine.compute(&batch.levels, &half.bf16_inputs(batch).unwrap()),
        }
        .unwrap();
        assert_bits(&what, &got, &full);
    }
}

/// A synthetic batch whose class logits include the formats' edges.
fn edge_batch(levels: &Levels, b: usize, c: usize, seed: u64) -> Batch {
    let mut spec = SyntheticSpec::new(b, c);
    spec.seed = seed;
    let mut batch = generate(levels, &[8, 16, 32, 64, 128], &spec).unwrap();
    let edges = [
        60.0,
        -60.0,
        65504.0, // the largest finite f16
        -65504.0,
        6.103_515_6e-5, // the smallest normal f16, 2^-14
        5.960_464_5e-8, // the smallest subnormal f16, 2^-24
        -5.960_464_5e-8,
        3.0e-6, // a subnormal f16 with several bits
        0.0,
        -0.0,
        1.0e38, // a large bf16 (f16: rounds to ±Inf, not used there)
    ];
    for (l, level) in batch.cls_logits.iter_mut().enumerate() {
        for (i, x) in level.iter_mut().enumerate() {
            if (i + l) % 3 == 0 {
                *x = edges[(i / 3) % (edges.len() - 1)];
            }
        }
    }
    for level in batch.cnt_logits.iter_mut() {
        for (i, x) in level.iter_mut().enumerate() {
            if i % 2 == 0 {
                *x = edges[i % 8];
            }
        }
    }
    batch
}

#[test]
fn edge_values_widen_exactly() {
    for (h, w) in [(64, 64), (37, 53)] {
        let levels = Levels::from_image(h, w, &[8, 16, 32, 64, 128]).unwrap();
        for (b, c) in [(2, 20), (1, 1), (3, 7)] {
            let engine = common::engine(LossConfig::new(c as u32));
            let batch = edge_batch(&levels, b, c, (h as usize * 31 + c) as u64);
            let what = format!("{h}x{w} B {b} C {c}");
            check_against_f32(&engine, &format!("{what} f16"), &batch, f16::from_f32);
            check_against_f32(&engine, &format!("{what} bf16"), &batch, bf16::from_f32);
        }
    }
    // The widened edges are what they should be.
    let want = [60.0f32, 65504.0, 6.103_515_6e-5, 5.960_464_5e-8, 0.0];
    for x in want {
        assert_eq!(f16::from_f32(x).to_f32(), x);
    }
}

#[test]
fn odd_counts_and_odd_starts_pair_correctly() {
    // B = 1, C = 1 over odd level sizes: every level after the first starts at
    // an odd element of its packed head (a half in the high half of a word), and
    // odd sizes end inside a word. C = 3 and B = 3 likewise.
    for (h, w) in [(9, 9), (25, 41), (1, 1)] {
        let levels = Levels::from_shapes(&odd_shapes(h, w)).unwrap();
        for (b, c) in [(1, 1), (3, 3), (1, 5)] {
            let engine = common::engine(LossConfig::new(c as u32));
            let mut spec = SyntheticSpec::new(b, c);
            spec.seed = (h * w) as u64 + c as u64;
            let batch = generate(&levels, &[8, 16, 32], &spec).unwrap();
            let what = format!("levels {:?} B {b} C {c}", levels.shapes());
            check_against_f32(&engine, &format!("{what} f16"), &batch, f16::from_f32);
            check_against_f32(&engine, &format!("{what} bf16"), &batch, bf16::from_f32);
        }
    }
}

/// Three odd level shapes from (h, w).
fn odd_shapes(h: u32, w: u32) -> Vec<(u32, u32)> {
    vec![(h, w), (h.div_ceil(2) | 1, w.div_ceil(2) | 1), (1, 3)]
}

#[test]
fn bad_halves_are_named_as_f32_values_are() {
    let levels = Levels::from_image(64, 64, &[8, 16, 32, 64, 128]).unwrap();
    let engine = common::engine(LossConfig::new(4));
    let batch = generate(&levels, &[8, 16, 32, 64, 128], &SyntheticSpec::new(2, 4)).unwrap();
    let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
    for head in Head::ALL {
        for (k, &bad) in specials.iter().enumerate() {
            let mut b = batch.clone();
            let level = k % 2;
            let at = 3 + 2 * k;
            head_of_mut(&mut b, head)[level][at] = bad;
            for dtype in [Dtype::F16, Dtype::Bf16] {
                let (half_err, f32_err) = match dtype {
                    Dtype::F16 => errors(&engine, &b, f16::from_f32),
                    _ => errors(&engine, &b, bf16::from_f32),
                };
                let what = format!("{head}.{level}[{at}] = {bad} as {dtype}");
                assert!(
                    matches!(half_err, FcosError::Value { .. }),
                    "{what}: {half_err}"
                );
                assert_eq!(half_err.to_string(), f32_err.to_string(), "{what}");
                assert!(
                    half_err.to_string().contains(head.name()),
                    "{what}: {half_err}"
                );
            }
        }
    }
}

/// The errors of the half call and of the f32 call on the widened values.
fn errors<T: Element>(
    engine: &FcosLoss,
    batch: &Batch,
    from: impl Fn(f32) -> T,
) -> (FcosError, FcosError) {
    let (heads, widened) = to_half(batch, from);
    let half = engine
        .compute(&batch.levels, &half_inputs(batch, &heads))
        .expect_err("a bad half is flagged");
    let full = engine
        .compute(&batch.levels, &widened.inputs())
        .expect_err("a bad f32 is flagged");
    (half, full)
}

#[test]
fn from_boxes_with_half_predictions() {
    let case = common::golden("boxes_odd_b3_c7_100x150_m9");
    let boxes = case.boxes.as_ref().unwrap();
    let batch = &case.batch;
    let engine = common::engine(LossConfig::new(batch.classes as u32));
    let gt = boxes.ground_truth(batch.batch);
    let (heads, widened) = to_half(batch, f16::from_f32);
    let inputs = half_inputs(batch, &heads);
    let preds = fcos_loss::Predictions::of(&inputs);
    let full_preds = fcos_loss::Predictions::of(&widened.inputs());
    let half = engine
        .compute_from_boxes(&batch.levels, &preds, &gt)
        .unwrap();
    let full = engine
        .compute_from_boxes(&batch.levels, &full_preds, &gt)
        .unwrap();
    assert_bits("from boxes, f16", &half.value, &full.value);
    let w = LossWeights::default();
    let (hl, hg) = engine
        .forward_backward_from_boxes(&batch.levels, &preds, &gt, &w)
        .unwrap()
        .value;
    let (fl, fg) = engine
        .forward_backward_from_boxes(&batch.levels, &full_preds, &gt, &w)
        .unwrap()
        .value;
    assert_bits("from boxes, f16, backward", &hl, &fl);
    assert_grad_bits("from boxes, f16", &hg, &fg);
}

/// Packs one head's levels as little-endian bytes, rounded up to a word.
fn packed_bytes<T: Element>(levels: &[Vec<T>]) -> Vec<u8> {
    let mut out: Vec<u8> = levels
        .iter()
        .flat_map(|v| bytemuck::cast_slice(v).to_vec())
        .collect();
    out.resize(out.len().next_multiple_of(4), 0);
    out
}

#[test]
fn device_buffers_and_ranges_of_halves() {
    let levels = Levels::from_shapes(&odd_shapes(25, 41)).unwrap();
    let (b, c) = (3, 5);
    let engine = common::app_engine(LossConfig::new(c as u32));
    let device = &engine.context().device;
    let batch = generate(&levels, &[8, 16, 32], &SyntheticSpec::new(b, c)).unwrap();
    let (heads, widened) = to_half(&batch, bf16::from_f32);
    let host = engine
        .forward_backward(
            &levels,
            &half_inputs(&batch, &heads),
            &LossWeights::default(),
        )
        .unwrap();
    let head_bufs = Heads::from_fn(|h| common::storage_buffer(device, &packed_bytes(&heads[h])));
    let target =
        |input: Input| common::storage_buffer(device, bytemuck::cast_slice(&widened.packed(input)));
    let (ct, nt, rt) = (
        target(Input::ClsTargets),
        target(Input::CntTargets),
        target(Input::RegTargets),
    );
    let inputs = DeviceInputs {
        batch: b,
        dtype: Dtype::Bf16,
        cls_logits: &head_bufs.cls_logits,
        cnt_logits: &head_bufs.cnt_logits,
        reg_preds: &head_bufs.reg_preds,
        cls_targets: &ct,
        cnt_targets: &nt,
        reg_targets: &rt,
    };
    let grad_bufs = Heads::from_fn(|h: Head| {
        let n = h.input().elements(&levels, b, c);
        common::storage_buffer(device, &vec![0u8; 4 * n])
    });
    let grads: DeviceGradients = grad_bufs.as_ref().map(|_, g| g);
    let dev = engine
        .forward_backward_device(&levels, &inputs, &grads, &LossWeights::default())
        .unwrap();
    assert_bits("device path, bf16", &dev.value, &host.0);
    let read = common::read_gradients(engine.context(), &levels, b, c, &grads);
    assert_grad_bits("device path, bf16", &read, &host.1);

    // Each level of each head its own range of one shared buffer, at aligned
    // offsets (so a level's first element is the first half of a word).
    let align = engine
        .context()
        .device
        .limits()
        .min_storage_buffer_offset_alignment as usize;
    let (shared, at) = level_ranges(device, &heads, align);
    let ranges = ranges_of(&shared, &at);
    let ranged = RangedInputs {
        batch: b,
        dtype: Dtype::Bf16,
        cls_logits: ranges.cls_logits,
        cnt_logits: ranges.cnt_logits,
        reg_preds: ranges.reg_preds,
        cls_targets: BufferRange::from(&ct),
        cnt_targets: BufferRange::from(&nt),
        reg_targets: BufferRange::from(&rt),
    };
    let got = engine.compute_ranges(&levels, &ranged).unwrap();
    assert_bits("ranges, bf16", &got, &host.0);
}

/// `f32` gradients rounded to `T` (nearest even, by the `half` crate), widened.
/// Each level of each head copied into its own range of one buffer, at offsets
/// aligned to `align` (so a level's first element is the first half of a word):
/// the buffer and each level's (offset, size) in bytes, sizes whole words.
fn level_ranges<T: Element>(
    device: &wgpu::Device,
    heads: &Heads<Vec<Vec<T>>>,
    align: usize,
) -> (wgpu::Buffer, Heads<Vec<(u64, u64)>>) {
    let mut bytes = Vec::new();
    let mut at: Heads<Vec<(u64, u64)>> = Heads::default();
    for h in Head::ALL {
        for v in &heads[h] {
            let start = bytes.len().next_multiple_of(align);
            bytes.resize(start, 0);
            bytes.extend_from_slice(bytemuck::cast_slice(v));
            at[h].push((start as u64, (2 * v.len()).next_multiple_of(4) as u64));
        }
    }
    bytes.resize(bytes.len().next_multiple_of(4) + 4, 0);
    (common::storage_buffer(device, &bytes), at)
}

/// The ranges of `buffer` at `at` (from [`level_ranges`]).
fn ranges_of<'a>(
    buffer: &'a wgpu::Buffer,
    at: &Heads<Vec<(u64, u64)>>,
) -> Heads<Vec<BufferRange<'a>>> {
    Heads::from_fn(|h| {
        at[h]
            .iter()
            .map(|&(o, s)| BufferRange::new(buffer, o, s))
            .collect()
    })
}

fn rounded<T: Element>(g: &fcos_loss::Gradients, from: impl Fn(f32) -> T) -> fcos_loss::Gradients {
    g.as_ref().map(|_, levels| {
        levels
            .iter()
            .map(|v| v.iter().map(|&x| from(x).widen()).collect())
            .collect()
    })
}

/// Elements of `g` that lie exactly halfway between two values of `T` (the
/// round-to-nearest-even ties the pack must break towards the even one).
fn ties<T: Element>(g: &fcos_loss::Gradients, from: impl Fn(f32) -> T + Copy) -> usize {
    Head::ALL
        .iter()
        .flat_map(|&h| g[h].iter().flatten())
        .filter(|&&x| {
            let r = from(x).widen();
            let next = from(x + (x - r)).widen();
            r != x && (x - r).abs() == (next - x).abs() && next != r
        })
        .count()
}

/// Half gradients (`set_half_gradients`) are the f32 gradients rounded to the
/// heads' dtype, nearest even, bit for bit: host and device paths, at weights that
/// push them into f16's subnormals and past its largest finite value.
fn check_half_gradients<T: Element>(dtype: Dtype, from: impl Fn(f32) -> T + Copy) {
    let levels = Levels::from_shapes(&[(64, 64), (31, 33), (9, 9), (1, 3)]).unwrap();
    let (b, c) = (2, 20);
    let mut engine = common::app_engine(LossConfig::new(c as u32));
    let mut spec = SyntheticSpec::new(b, c);
    spec.seed = 7;
    let batch = generate(&levels, &[8, 16, 32, 64], &spec).unwrap();
    let (heads, _) = to_half(&batch, from);
    let inputs = half_inputs(&batch, &heads);
    let mut seen_ties = 0;
    for scale in [1.0f32, 1e-6, 1e9] {
        let w = LossWeights {
            cls: scale,
            cnt: scale,
            reg: scale,
        };
        let what = format!("{dtype}, weights {scale:e}");
        engine.set_half_gradients(false);
        let (l32, g32) = engine.forward_backward(&levels, &inputs, &w).unwrap();
        engine.set_half_gradients(true);
        let (lh, gh) = engine.forward_backward(&levels, &inputs, &w).unwrap();
        assert_bits(&format!("{what}: losses"), &lh, &l32);
        let want = rounded(&g32, from);
        assert_grad_bits(&format!("{what}: host half gradients"), &gh, &want);
        seen_ties += ties(&g32, from);

        // Device path: the caller's buffers hold 2-byte elements, filled with a
        // pattern first, so that a word the pack must share is seen kept.
        let device = &engine.context().device;
        let bufs = |x: &Batch| {
            let (hb, _) = to_half(x, from);
            Heads::from_fn(|h| common::storage_buffer(device, &packed_bytes(&hb[h])))
        };
        let head_bufs = bufs(&batch);
        let target = |input: Input| {
            common::storage_buffer(device, bytemuck::cast_slice(&batch.packed(input)))
        };
        let (ct, nt, rt) = (
            target(Input::ClsTargets),
            target(Input::CntTargets),
            target(Input::RegTargets),
        );
        let dev_inputs = DeviceInputs {
            batch: b,
            dtype,
            cls_logits: &head_bufs.cls_logits,
            cnt_logits: &head_bufs.cnt_logits,
            reg_preds: &head_bufs.reg_preds,
            cls_targets: &ct,
            cnt_targets: &nt,
            reg_targets: &rt,
        };
        let grad_bufs = Heads::from_fn(|h: Head| {
            let n = h.input().elements(&levels, b, c);
            common::storage_buffer(device, &vec![0xab; (2 * n).next_multiple_of(4)])
        });
        let grads: DeviceGradients = grad_bufs.as_ref().map(|_, g| g);
        let dev = engine
            .forward_backward_device(&levels, &dev_inputs, &grads, &w)
            .unwrap();
        assert_bits(&format!("{what}: device losses"), &dev.value, &l32);
        for h in Head::ALL {
            let n = h.input().elements(&levels, b, c);
            let bytes: Vec<u8> =
                bytemuck::cast_slice(&common::read_buffer(engine.context(), grads[h])).to_vec();
            let got: Vec<u16> = bytes[..2 * n]
                .chunks_exact(2)
                .map(|p| u16::from_le_bytes([p[0], p[1]]))
                .collect();
            let want: Vec<u16> = g32[h]
                .iter()
                .flatten()
                .map(|&x| bytemuck::cast::<T, u16>(from(x)))
                .collect();
            assert_eq!(got, want, "{what}: device half gradients of {h}");
            if n % 2 == 1 {
                assert_eq!(
                    &bytes[2 * n..2 * n + 2],
                    &[0xab, 0xab],
                    "{what}: {h}'s last word's other half"
                );
            }
        }
    }
    if dtype == Dtype::F16 {
        assert!(
            seen_ties > 0,
            "no f16 rounding tie among the gradients: the test misses the even rule"
        );
    }
}

#[test]
fn half_gradients_are_the_f32_ones_rounded_to_nearest_even() {
    check_half_gradients(Dtype::F16, f16::from_f32);
    check_half_gradients(Dtype::Bf16, bf16::from_f32);
}

#[test]
fn half_gradients_into_ranges_keep_their_neighbours() {
    // Each level of each head's half gradients in one shared buffer, at aligned
    // offsets; the bytes between the ranges hold a pattern the pack must keep.
    let levels = Levels::from_shapes(&odd_shapes(25, 41)).unwrap();
    let (b, c) = (1, 3);
    let mut engine = common::app_engine(LossConfig::new(c as u32));
    let batch = generate(&levels, &[8, 16, 32], &SyntheticSpec::new(b, c)).unwrap();
    let (heads, _) = to_half(&batch, f16::from_f32);
    let inputs = half_inputs(&batch, &heads);
    let w = LossWeights::default();
    let (_, g32) = engine.forward_backward(&levels, &inputs, &w).unwrap();
    engine.set_half_gradients(true);
    let device = &engine.context().device;
    let align = device.limits().min_storage_buffer_offset_alignment as usize;
    let target =
        |input: Input| common::storage_buffer(device, bytemuck::cast_slice(&batch.packed(input)));
    let (ct, nt, rt) = (
        target(Input::ClsTargets),
        target(Input::CntTargets),
        target(Input::RegTargets),
    );
    // Gradient ranges: aligned, each level its own range of one buffer.
    let mut at: Heads<Vec<(u64, usize)>> = Heads::default();
    let mut size = 0usize;
    for h in Head::ALL {
        for l in 0..levels.len() {
            let n = levels.level_len(l, b, h.channels(c));
            size = size.next_multiple_of(align);
            at[h].push((size as u64, n));
            size += (2 * n).next_multiple_of(4) + align;
        }
    }
    let shared = common::storage_buffer(device, &vec![0xcd; size]);
    // Inputs as ranges of their packed buffers, level by level, at aligned
    // copies (ranges must start aligned).
    let (in_buf, in_at) = level_ranges(device, &heads, align);
    let in_ranges = ranges_of(&in_buf, &in_at);
    let ranged = RangedInputs {
        batch: b,
        dtype: Dtype::F16,
        cls_logits: in_ranges.cls_logits,
        cnt_logits: in_ranges.cnt_logits,
        reg_preds: in_ranges.reg_preds,
        cls_targets: BufferRange::from(&ct),
        cnt_targets: BufferRange::from(&nt),
        reg_targets: BufferRange::from(&rt),
    };
    let grads: fcos_loss::RangedGradients = Heads::from_fn(|h| {
        at[h]
            .iter()
            .map(|&(o, n)| BufferRange::new(&shared, o, (2 * n).next_multiple_of(4) as u64))
            .collect()
    });
    engine
        .forward_backward_ranges(&levels, &ranged, &grads, &w)
        .unwrap();
    let bytes: Vec<u8> =
        bytemuck::cast_slice(&common::read_buffer(engine.context(), &shared)).to_vec();
    let mut covered = vec![false; size];
    for h in Head::ALL {
        for (l, &(o, n)) in at[h].iter().enumerate() {
            let o = o as usize;
            let got: Vec<u16> = bytes[o..o + 2 * n]
                .chunks_exact(2)
                .map(|p| u16::from_le_bytes([p[0], p[1]]))
                .collect();
            let want: Vec<u16> = g32[h][l]
                .iter()
                .map(|&x| f16::from_f32(x).to_bits())
                .collect();
            assert_eq!(got, want, "{h}.{l}: half gradients in its range");
            covered[o..o + 2 * n].iter_mut().for_each(|x| *x = true);
        }
    }
    for (i, &k) in covered.iter().enumerate() {
        if !k {
            assert_eq!(bytes[i], 0xcd, "byte {i} outside every range was written");
        }
    }
}
