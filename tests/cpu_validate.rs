//! `check_values`: one test per rule (tensor name, index and value of
//! the reported element), tensor order, and a property test over random shapes
//! and special values: no panics, the same first problem as a naive scan, and
//! finite CPU-reference losses whenever the inputs pass.

mod common;

use fcos_loss::check_values;
use fcos_loss::synthetic::{self, SyntheticSpec};
use fcos_loss::{reference, Batch, FcosError, Head, Input, Inputs, Levels, LossConfig, RegLoss};
use proptest::prelude::*;

/// Four levels (so `cls_logits.3` exists), B = 2, C = 5, half the positions positive.
fn small_batch() -> Batch {
    let levels = Levels::from_shapes(&[(4, 5), (2, 3), (1, 2), (1, 1)]).unwrap();
    let mut spec = SyntheticSpec::new(2, 5);
    spec.pos_frac = vec![0.5];
    spec.seed = 7;
    synthetic::generate(&levels, &[8, 16, 32, 64], &spec).unwrap()
}

fn check(batch: &Batch) -> Result<(), FcosError> {
    let inputs = batch.inputs();
    inputs.check_shapes(&batch.levels, batch.classes)?;
    check_values(&batch.levels, &inputs, batch.classes)
}

/// The `(tensor, index, value, message)` of a `Value` error; panics on anything else.
fn value_err(r: Result<(), FcosError>) -> (String, usize, f64, String) {
    match r {
        Err(e @ FcosError::Value { .. }) => {
            let msg = e.to_string();
            let FcosError::Value {
                tensor,
                index,
                value,
                ..
            } = e
            else {
                unreachable!()
            };
            (tensor, index, value, msg)
        }
        other => panic!("expected FcosError::Value, got {other:?}"),
    }
}

/// The first positive (or negative) position `b·P + p` of the batch.
fn first_position(batch: &Batch, positive: bool) -> usize {
    batch
        .cnt_targets
        .iter()
        .position(|&c| (c > -1.0) == positive)
        .expect("the batch has both kinds of positions")
}

#[test]
fn valid_synthetic_batch_passes() {
    check(&small_batch()).unwrap();
    let levels = Levels::from_image(100, 150, &[8, 16, 32, 64, 128]).unwrap();
    let b = synthetic::generate(&levels, &[8, 16, 32, 64, 128], &SyntheticSpec::new(3, 7)).unwrap();
    check(&b).unwrap();
}

#[test]
fn levels_with_zero_height_or_width_pass() {
    let levels = Levels::from_shapes(&[(3, 4), (0, 5), (2, 0), (0, 0), (1, 1)]).unwrap();
    let mut spec = SyntheticSpec::new(2, 3);
    spec.pos_frac = vec![0.5];
    let b = synthetic::generate(&levels, &[8], &spec).unwrap();
    assert!(b.cls_logits[1].is_empty() && b.reg_preds[2].is_empty());
    check(&b).unwrap();
    // Even with every level empty (P = 0) there is nothing to object to.
    let levels = Levels::from_shapes(&[(0, 3), (4, 0)]).unwrap();
    let b = synthetic::generate(&levels, &[8], &SyntheticSpec::new(1, 2)).unwrap();
    check(&b).unwrap();
}

#[test]
fn nan_in_cls_logits_3() {
    let mut b = small_batch();
    // Level 3 is 1×1: [B=2, C=5, 1, 1]; element 7 is image 1, class channel 2.
    b.cls_logits[3][7] = f32::NAN;
    let (tensor, index, value, msg) = value_err(check(&b));
    assert_eq!((tensor.as_str(), index), ("cls_logits.3", 7));
    assert!(value.is_nan());
    assert!(msg.contains("image 1, channel 2"), "{msg}");
}

#[test]
fn inf_in_reg_preds_0() {
    let mut b = small_batch();
    // Level 0 is 4×5: element 20·5 + 7 is image 1, channel 1, y 1, x 2.
    b.reg_preds[0][107] = f32::INFINITY;
    let (tensor, index, value, msg) = value_err(check(&b));
    assert_eq!(
        (tensor.as_str(), index, value),
        ("reg_preds.0", 107, f64::INFINITY)
    );
    assert!(msg.contains("image 1, channel 1, y 1, x 2"), "{msg}");
}

#[test]
fn neg_inf_in_cnt_logits() {
    let mut b = small_batch();
    b.cnt_logits[1][3] = f32::NEG_INFINITY;
    let (tensor, index, value, _) = value_err(check(&b));
    assert_eq!(
        (tensor.as_str(), index, value),
        ("cnt_logits.1", 3, f64::NEG_INFINITY)
    );
}

#[test]
fn nan_in_targets() {
    let mut b = small_batch();
    b.cls_targets[5] = f32::NAN;
    let (tensor, index, value, msg) = value_err(check(&b));
    assert_eq!((tensor.as_str(), index), ("cls_targets", 5));
    assert!(value.is_nan() && msg.contains("not finite"), "{msg}");

    let mut b = small_batch();
    b.cnt_targets[9] = f32::INFINITY;
    let (tensor, index, value, _) = value_err(check(&b));
    assert_eq!(
        (tensor.as_str(), index, value),
        ("cnt_targets", 9, f64::INFINITY)
    );

    // A non-finite box target is refused even at a negative position.
    let mut b = small_batch();
    let p = first_position(&b, false);
    b.reg_targets[4 * p + 3] = f32::NAN;
    let (tensor, index, value, _) = value_err(check(&b));
    assert_eq!((tensor.as_str(), index), ("reg_targets", 4 * p + 3));
    assert!(value.is_nan());
}

/// P of `small_batch`: 20 + 6 + 2 + 1.
const P: usize = 29;

#[test]
fn class_not_a_whole_number() {
    let mut b = small_batch();
    // Image 1, position 21 = level 1 (2×3), pixel 1: y 0, x 1.
    b.cls_targets[P + 21] = 2.5;
    let (tensor, index, value, msg) = value_err(check(&b));
    assert_eq!(
        (tensor.as_str(), index, value),
        ("cls_targets", P + 21, 2.5)
    );
    assert!(msg.contains("whole number"), "{msg}");
    assert!(
        msg.contains("image 1, position 21 = level 1, y 0, x 1"),
        "{msg}"
    );
}

#[test]
fn class_above_c() {
    let mut b = small_batch();
    b.cls_targets[3] = 6.0; // C + 1
    let (tensor, index, value, msg) = value_err(check(&b));
    assert_eq!((tensor.as_str(), index, value), ("cls_targets", 3, 6.0));
    assert!(msg.contains("0..=5"), "{msg}");
    assert!(msg.contains("image 0, position 3"), "{msg}");
    // C itself is a class.
    let mut b = small_batch();
    b.cls_targets[3] = 5.0;
    check(&b).unwrap();
}

#[test]
fn class_negative() {
    let mut b = small_batch();
    b.cls_targets[40] = -1.0;
    let (tensor, index, value, _) = value_err(check(&b));
    assert_eq!((tensor.as_str(), index, value), ("cls_targets", 40, -1.0));
    // -0.0 is background, a whole number in range.
    let mut b = small_batch();
    b.cls_targets[40] = -0.0;
    check(&b).unwrap();
}

#[test]
fn cnt_target_between_minus_one_and_zero() {
    let mut b = small_batch();
    b.cnt_targets[P + 4] = -0.5;
    let (tensor, index, value, msg) = value_err(check(&b));
    assert_eq!(
        (tensor.as_str(), index, value),
        ("cnt_targets", P + 4, -0.5)
    );
    assert!(msg.contains("image 1, position 4"), "{msg}");
}

#[test]
fn cnt_target_above_one() {
    let mut b = small_batch();
    b.cnt_targets[11] = 1.5;
    let (tensor, index, value, _) = value_err(check(&b));
    assert_eq!((tensor.as_str(), index, value), ("cnt_targets", 11, 1.5));
}

#[test]
fn cnt_target_below_minus_one() {
    let mut b = small_batch();
    b.cnt_targets[12] = -1.5;
    let (tensor, index, value, _) = value_err(check(&b));
    assert_eq!((tensor.as_str(), index, value), ("cnt_targets", 12, -1.5));
    // The bounds themselves are fine.
    let mut b = small_batch();
    b.cnt_targets[12] = -1.0;
    b.cnt_targets[13] = 0.0;
    b.cnt_targets[14] = 1.0;
    // Positions 13 and 14 are now positive: give them real boxes.
    b.reg_targets[4 * 13..4 * 15].fill(4.0);
    check(&b).unwrap();
}

#[test]
fn negative_reg_target_at_positive() {
    let mut b = small_batch();
    let p = first_position(&b, true);
    b.reg_targets[4 * p + 2] = -3.0;
    let (tensor, index, value, msg) = value_err(check(&b));
    assert_eq!(
        (tensor.as_str(), index, value),
        ("reg_targets", 4 * p + 2, -3.0)
    );
    assert!(msg.contains("(r)") && msg.contains(">= 0"), "{msg}");
    assert!(
        msg.contains(&format!("image {}, position {}", p / P, p % P)),
        "{msg}"
    );
}

#[test]
fn negative_reg_target_at_negative_is_fine() {
    let mut b = small_batch();
    let p = first_position(&b, false);
    b.reg_targets[4 * p + 2] = -3.0;
    check(&b).unwrap();
    // And a positive with a zero-sized box side is fine too.
    let p = first_position(&b, true);
    b.reg_targets[4 * p] = 0.0;
    check(&b).unwrap();
}

#[test]
fn first_problem_in_tensor_order_then_index() {
    let mut b = small_batch();
    b.reg_targets[0] = f32::NAN;
    b.cnt_targets[0] = 7.0;
    b.cls_targets[0] = 0.5;
    b.reg_preds[1][0] = f32::NAN;
    b.cnt_logits[0][0] = f32::NAN;
    b.cls_logits[2][9] = f32::INFINITY;
    b.cls_logits[2][4] = f32::NAN;
    // (input, part: level of a head, 0 for a target, index), in reporting order.
    let order = [
        (Input::ClsLogits, 2, 4),
        (Input::ClsLogits, 2, 9),
        (Input::CntLogits, 0, 0),
        (Input::RegPreds, 1, 0),
        (Input::ClsTargets, 0, 0),
        (Input::CntTargets, 0, 0),
        (Input::RegTargets, 0, 0),
    ];
    for (step, &(input, part, index)) in order.iter().enumerate() {
        let (t, ix, _, _) = value_err(check(&b));
        assert_eq!(
            (t, ix),
            (common::part_name(input, part), index),
            "step {step}"
        );
        // Repair what was reported and look again.
        common::part_mut(&mut b, input, part)[index] = match input {
            Input::ClsLogits | Input::CntLogits | Input::ClsTargets => 0.0,
            Input::RegPreds | Input::RegTargets => 1.0,
            Input::CntTargets => -1.0,
        };
    }
    check(&b).unwrap();
}

#[test]
fn bad_values_past_the_first_block_and_in_the_tail() {
    // Tensors longer than the fast path's blocks, with the bad element in a
    // later block and in the remainder.
    let levels = Levels::from_shapes(&[(37, 41)]).unwrap();
    let spec = SyntheticSpec::new(2, 3);
    let base = synthetic::generate(&levels, &[8], &spec).unwrap();
    let n = base.cls_logits[0].len();
    for i in [0, 1023, 1024, 5000, n - 2, n - 1] {
        let mut b = base.clone();
        b.cls_logits[0][i] = f32::NAN;
        b.cls_logits[0][n - 1] = f32::NAN;
        let (t, ix, _, _) = value_err(check(&b));
        assert_eq!((t.as_str(), ix), ("cls_logits.0", i));
    }
    let m = base.reg_targets.len();
    for i in [1, 1023, 1026, 4097, m - 3, m - 1] {
        let mut b = base.clone();
        b.cnt_targets[i / 4] = 0.5;
        b.reg_targets[i / 4 * 4..i / 4 * 4 + 4].fill(3.0);
        b.reg_targets[i] = -2.0;
        let (t, ix, _, _) = value_err(check(&b));
        assert_eq!((t.as_str(), ix), ("reg_targets", i));
    }
}

#[test]
fn mismatched_shapes_do_not_panic() {
    let b = small_batch();
    let mut inputs = b.inputs();
    inputs.cnt_targets = &b.cnt_targets[..10];
    inputs.cls_logits.pop();
    inputs.reg_preds[0] = &[];
    assert!(inputs.check_shapes(&b.levels, b.classes).is_err());
    let _ = check_values(&b.levels, &inputs, b.classes);
}

// ---------------------------------------------------------------------------
// Property test

const SPECIALS: [f32; 17] = [
    f32::NAN,
    f32::INFINITY,
    f32::NEG_INFINITY,
    -1.0,
    0.0,
    -0.0,
    1.0,
    2.5,
    -0.5,
    1.5,
    f32::MAX,
    -f32::MAX,
    1e30,
    -1e30,
    1e-45,
    16_777_217.0,
    3e9,
];

/// `ordinary` most of the time, a special value with probability `rate`.
fn mixed(rate: f64, ordinary: BoxedStrategy<f32>) -> BoxedStrategy<f32> {
    (
        prop::bool::weighted(rate),
        ordinary,
        prop::sample::select(&SPECIALS[..]),
    )
        .prop_map(|(special, o, s)| if special { s } else { o })
        .boxed()
}

fn values(n: usize, v: &BoxedStrategy<f32>) -> BoxedStrategy<Vec<f32>> {
    prop::collection::vec(v.clone(), n).boxed()
}

/// The tensors of a random case: shapes consistent, values anything (`SPECIALS` mixed in).
fn raw_case() -> impl Strategy<Value = Batch> {
    (
        1usize..4,
        1usize..10,
        prop::collection::vec((0u32..6, 0u32..6), 1..4),
        prop::sample::select(&[0.0, 0.0, 0.001, 0.01, 0.05, 0.3][..]),
    )
        .prop_flat_map(|(b, c, shapes, rate)| {
            let p: usize = shapes.iter().map(|&(h, w)| (h * w) as usize).sum();
            let logit = mixed(rate, (-40.0f32..40.0).boxed());
            let pred = mixed(rate, (-5.0f32..300.0).boxed());
            let class = mixed(rate, (0..=c).prop_map(|k| k as f32).boxed());
            let cnt = mixed(
                rate,
                prop_oneof![Just(-1.0f32), Just(-1.0f32), 0.0f32..=1.0].boxed(),
            );
            let boxes = mixed(rate, (0.0f32..300.0).boxed());
            let level = |ch: usize, v: &BoxedStrategy<f32>| -> Vec<BoxedStrategy<Vec<f32>>> {
                shapes
                    .iter()
                    .map(|&(h, w)| values(b * ch * (h * w) as usize, v))
                    .collect()
            };
            (
                (Just(b), Just(c), Just(shapes.clone())),
                level(c, &logit),
                level(1, &logit),
                level(4, &pred),
                values(b * p, &class),
                values(b * p, &cnt),
                values(4 * b * p, &boxes),
            )
        })
        .prop_map(
            |((batch, classes, shapes), cls_logits, cnt_logits, reg_preds, ct, nt, rt)| Batch {
                levels: Levels::from_shapes(&shapes).expect("shapes of 1..4 levels up to 5×5"),
                batch,
                classes,
                cls_logits,
                cnt_logits,
                reg_preds,
                cls_targets: ct,
                cnt_targets: nt,
                reg_targets: rt,
            },
        )
}

/// The rules of `check_values`, written as plainly as possible: the first bad
/// `(tensor, index)` in tensor order.
fn naive_first_problem(raw: &Batch) -> Option<(String, usize)> {
    let inputs = raw.inputs();
    for h in Head::ALL {
        for (l, s) in inputs.head(h).iter().enumerate() {
            for (i, x) in s.iter().enumerate() {
                if x.is_nan() || x.is_infinite() {
                    return Some((format!("{h}.{l}"), i));
                }
            }
        }
    }
    for (i, &x) in raw.cls_targets.iter().enumerate() {
        let ok = x.is_finite() && x.fract() == 0.0 && x >= 0.0 && x <= raw.classes as f32;
        if !ok {
            return Some(("cls_targets".into(), i));
        }
    }
    for (i, &x) in raw.cnt_targets.iter().enumerate() {
        if !(x == -1.0 || (0.0..=1.0).contains(&x)) {
            return Some(("cnt_targets".into(), i));
        }
    }
    for (i, &x) in raw.reg_targets.iter().enumerate() {
        if !x.is_finite() {
            return Some(("reg_targets".into(), i));
        }
    }
    for (i, &x) in raw.reg_targets.iter().enumerate() {
        if raw.cnt_targets[i / 4] > -1.0 && x < 0.0 {
            return Some(("reg_targets".into(), i));
        }
    }
    None
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 4000,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x5eed_0da7),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn validated_inputs_give_finite_losses(
        raw in raw_case(),
        giou in any::<bool>(),
        victim in prop::sample::select(Input::ALL.to_vec()),
        level in 0usize..3,
    ) {
        let levels = &raw.levels;
        let inputs = raw.inputs();
        inputs.check_shapes(levels, raw.classes).unwrap();
        let got = match check_values(levels, &inputs, raw.classes) {
            Ok(()) => None,
            Err(FcosError::Value { tensor, index, .. }) => Some((tensor, index)),
            Err(e) => return Err(TestCaseError::fail(format!("not a value error: {e}"))),
        };
        prop_assert_eq!(&got, &naive_first_problem(&raw));
        if got.is_none() {
            let mode = if giou { RegLoss::Giou } else { RegLoss::Iou };
            let config = LossConfig::new(raw.classes as u32).with_reg_loss(mode);
            let l = reference::losses(&config, levels, &inputs).unwrap();
            let all = l.cls.iter().chain(&l.cnt).chain(&l.reg)
                .chain([&l.cls_loss, &l.cnt_loss, &l.reg_loss, &l.total]);
            for v in all {
                prop_assert!(v.is_finite(), "non-finite loss {} from validated inputs: {:?}", v, l);
            }
        }

        // Damage one tensor's length: check_shapes must refuse it, and
        // check_values must not panic on it either way.
        let mut bad = raw.clone();
        let part = if victim.head().is_some() { level % bad.levels.len() } else { 0 };
        let victim = common::part_mut(&mut bad, victim, part);
        if victim.pop().is_none() {
            victim.push(f32::NAN);
        }
        let inputs = bad.inputs();
        prop_assert!(inputs.check_shapes(levels, bad.classes).is_err());
        let _ = check_values(levels, &inputs, bad.classes);
    }
}

/// A batch count whose element counts overflow is a shape error naming `B`, from
/// the shape check and from the reference, not a wrapped count or a panic.
#[test]
fn a_batch_too_large_to_count_is_a_shape_error() {
    let levels = Levels::from_shapes(&[(2, 2)]).unwrap();
    let v4 = vec![0.0f32; 4];
    let v16 = vec![0.0f32; 16];
    let inputs = Inputs {
        batch: (1usize << 62) + 1,
        cls_logits: vec![&v4],
        cnt_logits: vec![&v4],
        reg_preds: vec![&v16],
        cls_targets: &v4,
        cnt_targets: &v4,
        reg_targets: &v16,
    };
    for e in [
        inputs.check_shapes(&levels, 1).unwrap_err(),
        fcos_loss::reference::losses(&LossConfig::new(1), &levels, &inputs).unwrap_err(),
    ] {
        let m = e.to_string();
        assert!(matches!(e, FcosError::Shape { .. }), "{m}");
        assert!(
            m.contains("batch") && m.contains("B = 4611686018427387905"),
            "{m}"
        );
    }
}
