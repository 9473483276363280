//! Targets from boxes on random cases (docs/contract.md §7): the GPU target pass
//! against the CPU twin bit for bit, and the fused loss from boxes against the
//! two-step path, over M from 0 to 300 boxes with padding rows, exact ties,
//! zero-width, reversed, outside-the-image and larger-than-the-image boxes,
//! corners on multiples of 4 pixels (points on edges and exactly 1.5 strides from
//! centres), odd image sizes, 1×1 levels, f32 / i32 / i64 classes, both rules,
//! with and without centre sampling; then 1,000 boxes, and the bad-input errors.

mod common;

use fcos_loss::synthetic::{self, RandomBoxes, Rng, SyntheticSpec};
use fcos_loss::{
    reference, AssignRule, Assignment, ClassDtype, DeviceBatch, DeviceGroundTruth,
    DevicePredictions, DeviceTargets, FcosError, GroundTruth, GtClasses, Levels, LossConfig,
    LossWeights, Predictions, Targets,
};

/// The class tensor of a case in one of the three host types.
enum Classes {
    I64(Vec<i64>),
    I32(Vec<i32>),
    F32(Vec<f32>),
}

impl Classes {
    fn view(&self) -> GtClasses<'_> {
        match self {
            Classes::I64(v) => GtClasses::I64(v),
            Classes::I32(v) => GtClasses::I32(v),
            Classes::F32(v) => GtClasses::F32(v),
        }
    }
}

struct BoxCase {
    h: u32,
    w: u32,
    batch: usize,
    classes: u32,
    m: usize,
    boxes: Vec<f32>,
    class_values: Vec<i64>,
    assignment: Assignment,
}

/// Overwrites some rows of image `b` with the edge cases the contract names.
fn edge_rows(case: &mut BoxCase, b: usize, rng: &mut Rng) {
    let (w, h) = (case.w as f32, case.h as f32);
    let four = |rng: &mut Rng, hi: f32| 4.0 * rng.range(0, (hi / 4.0) as u64) as f32;
    let mut rows: Vec<([f32; 4], i64)> = Vec::new();
    let c = |rng: &mut Rng| rng.range(1, u64::from(case.classes)) as i64;
    // Corners on multiples of 4: points fall on edges and 1.5 strides from centres.
    for _ in 0..6 {
        let x1 = four(rng, w);
        let y1 = four(rng, h);
        let bw = 4.0 * rng.range(1, 40) as f32;
        let bh = 4.0 * rng.range(1, 40) as f32;
        rows.push(([x1, y1, x1 + bw, y1 + bh], c(rng)));
    }
    // A box exactly 24 px wide around a stride-8 point: its centre lies 12 = 1.5·8
    // from the neighbouring points.
    rows.push(([4.0, 4.0, 28.0, 28.0], c(rng)));
    // The same box twice with another class (a tie: the lower index wins).
    let (dup, _) = rows[0];
    rows.push((dup, c(rng) % i64::from(case.classes) + 1));
    // Zero width, reversed, outside the image, larger than the image.
    rows.push(([10.0, 10.0, 10.0, 40.0], c(rng)));
    rows.push(([50.0, 10.0, 20.0, 40.0], c(rng)));
    rows.push(([w + 5.0, h + 5.0, w + 60.0, h + 70.0], c(rng)));
    rows.push(([-50.0, -40.0, w + 80.0, h + 90.0], c(rng)));
    for (k, (r, cl)) in rows.into_iter().enumerate().take(case.m) {
        // Spread over the image's rows, keeping row order meaningful for ties.
        let j = (k * case.m) / 12 % case.m;
        let at = b * case.m + j;
        case.boxes[4 * at..4 * at + 4].copy_from_slice(&r);
        case.class_values[at] = cl;
    }
}

fn draw(index: usize) -> BoxCase {
    let mut rng = Rng::new(0xb0c5 + index as u64);
    let ms = [0usize, 1, 3, 12, 17, 50, 120, 300];
    let m = ms[index % ms.len()];
    let h = rng.range(9, 330) as u32 | 1;
    let w = rng.range(9, 420) as u32 | 1;
    let batch = rng.range(1, 3) as usize;
    let classes = rng.range(1, 25) as u32;
    let drawn = RandomBoxes::draw(batch, m, h, w, classes, index as u64);
    let assignment = Assignment {
        rule: if index % 4 == 3 {
            AssignRule::Mmdet
        } else {
            AssignRule::Fcos
        },
        radius: match index % 5 {
            4 => None,
            3 => Some(2.0),
            _ => Some(1.5),
        },
        ..Assignment::default()
    };
    let mut case = BoxCase {
        h,
        w,
        batch,
        classes,
        m,
        boxes: drawn.boxes,
        class_values: drawn.classes,
        assignment,
    };
    if m >= 12 {
        for b in 0..batch {
            edge_rows(&mut case, b, &mut rng);
        }
    }
    case
}

fn assert_targets(what: &str, got: &Targets, want: &Targets) {
    let differ = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .filter(|(x, y)| x.to_bits() != y.to_bits())
            .count()
    };
    assert_eq!(got.cls_targets.len(), want.cls_targets.len(), "{what}");
    assert_eq!(
        differ(&got.cls_targets, &want.cls_targets),
        0,
        "{what}: class targets"
    );
    assert_eq!(
        differ(&got.reg_targets, &want.reg_targets),
        0,
        "{what}: box targets"
    );
    for (i, (&a, &b)) in got.cnt_targets.iter().zip(&want.cnt_targets).enumerate() {
        let d = (a - b).abs() as f64 / (b.abs() as f64).max(1e-30);
        assert!(d <= 1e-6, "{what}: centerness {i}: {a} vs {b}");
    }
}

#[test]
fn random_cases_match_the_twin_and_the_two_step_path() {
    let mut engine = common::engine(LossConfig::new(1));
    let mut positives = 0u64;
    for index in 0..56 {
        let case = draw(index);
        let config = LossConfig::new(case.classes).with_assignment(case.assignment.clone());
        engine.set_config(config.clone()).unwrap();
        let levels = Levels::from_image(case.h, case.w, &config.strides).unwrap();
        let classes = match index % 3 {
            0 => Classes::I64(case.class_values.clone()),
            1 => Classes::I32(case.class_values.iter().map(|&c| c as i32).collect()),
            _ => Classes::F32(case.class_values.iter().map(|&c| c as f32).collect()),
        };
        let gt = GroundTruth {
            batch: case.batch,
            boxes_per_image: case.m,
            boxes: &case.boxes,
            classes: classes.view(),
        };
        let what = format!(
            "case {index} ({}x{}, B {}, C {}, M {}, {:?})",
            case.h, case.w, case.batch, case.classes, case.m, case.assignment
        );
        let cpu = reference::assign_targets(&config, &levels, &gt).unwrap();
        let gpu = engine.assign_targets(&levels, &gt).unwrap().value;
        assert_targets(&what, &gpu, &cpu);
        positives += cpu.cnt_targets.iter().filter(|&&c| c > -1.0).count() as u64;

        let spec = SyntheticSpec {
            batch: case.batch,
            classes: case.classes as usize,
            seed: index as u64,
            ..SyntheticSpec::new(case.batch, case.classes as usize)
        };
        let logits = synthetic::generate(&levels, &config.strides, &spec).unwrap();
        let preds = Predictions::of(&logits.inputs());
        let two_step = engine.compute(&levels, &preds.with_targets(&cpu)).unwrap();
        let fused = engine
            .compute_from_boxes(&levels, &preds, &gt)
            .unwrap()
            .value;
        common::assert_close_rel(&what, &fused, &two_step, 1e-6);
        if index % 4 == 0 {
            let w = LossWeights::default();
            let (l2, g2) = engine
                .forward_backward(&levels, &preds.with_targets(&cpu), &w)
                .unwrap();
            let (l1, g1) = engine
                .forward_backward_from_boxes(&levels, &preds, &gt, &w)
                .unwrap()
                .value;
            common::assert_close_rel(&format!("{what} backward"), &l1, &l2, 1e-6);
            common::assert_heads(&format!("{what} grads"), &g1, &g2, 1e-6);
        }
    }
    assert!(
        positives > 1000,
        "the cases hold only {positives} positives"
    );
}

#[test]
fn a_thousand_boxes_per_image() {
    let mut engine = common::engine(LossConfig::new(80));
    let config = LossConfig::new(80);
    engine.set_config(config.clone()).unwrap();
    let levels = Levels::from_image(320, 480, &config.strides).unwrap();
    let drawn = RandomBoxes::draw(2, 1000, 320, 480, 80, 7);
    let gt = drawn.ground_truth(2);
    let cpu = reference::assign_targets(&config, &levels, &gt).unwrap();
    let gpu = engine.assign_targets(&levels, &gt).unwrap().value;
    assert_targets("M 1000", &gpu, &cpu);
    let logits = synthetic::generate(&levels, &config.strides, &SyntheticSpec::new(2, 80)).unwrap();
    let preds = Predictions::of(&logits.inputs());
    let two_step = engine.compute(&levels, &preds.with_targets(&cpu)).unwrap();
    let fused = engine
        .compute_from_boxes(&levels, &preds, &gt)
        .unwrap()
        .value;
    common::assert_close_rel("M 1000", &fused, &two_step, 1e-6);
}

fn value_error(e: FcosError) -> (String, usize) {
    match e {
        FcosError::Value { tensor, index, .. } => (tensor, index),
        other => panic!("expected a value error, got {other}"),
    }
}

#[test]
fn bad_boxes_and_classes_are_named_on_both_paths() {
    let config = LossConfig::new(5);
    let engine = common::engine(config.clone());
    let levels = Levels::from_image(64, 96, &config.strides).unwrap();
    let logits = synthetic::generate(&levels, &config.strides, &SyntheticSpec::new(2, 5)).unwrap();
    let preds = Predictions::of(&logits.inputs());
    let up = DeviceBatch::upload(&engine.context().device, &logits).unwrap();
    let dev_preds = DevicePredictions::of(&up.inputs());
    let device = &engine.context().device;
    let good = RandomBoxes::draw(2, 7, 64, 96, 5, 3);
    let cases: Vec<(usize, f32, Option<f32>, &str)> = vec![
        // (row, coordinate value, class value, tensor)
        (9, f32::NAN, None, "gt_boxes"),
        (3, f32::INFINITY, None, "gt_boxes"),
        (12, f32::NEG_INFINITY, None, "gt_boxes"),
        (5, 1.0, Some(6.0), "gt_classes"),
        (11, 1.0, Some(2.5), "gt_classes"),
    ];
    for (row, coord, class, tensor) in cases {
        let mut boxes = good.boxes.clone();
        let mut classes: Vec<f32> = good.classes.iter().map(|&c| c as f32).collect();
        let want_index = match class {
            None => {
                boxes[4 * row + 2] = coord;
                4 * row + 2
            }
            Some(c) => {
                classes[row] = c;
                row
            }
        };
        let gt = GroundTruth::new(2, 7, &boxes, &classes);
        let what = format!("{tensor}[{want_index}]");
        let host = engine.compute_from_boxes(&levels, &preds, &gt).unwrap_err();
        assert_eq!(
            value_error(host),
            (tensor.to_string(), want_index),
            "{what} host"
        );
        let e = engine.assign_targets(&levels, &gt).unwrap_err();
        assert_eq!(
            value_error(e),
            (tensor.to_string(), want_index),
            "{what} target pass"
        );
        let b = common::storage_buffer(device, bytemuck::cast_slice(&boxes));
        let c = common::storage_buffer(device, bytemuck::cast_slice(&classes));
        let dgt = DeviceGroundTruth {
            boxes_per_image: 7,
            boxes: &b,
            classes: &c,
            class_dtype: ClassDtype::F32,
        };
        let e = engine
            .compute_device_from_boxes(&levels, &dev_preds, &dgt, None)
            .unwrap_err();
        assert_eq!(
            value_error(e),
            (tensor.to_string(), want_index),
            "{what} device"
        );
        // The engine still works after each error.
        let ok_classes = classes_of(&good);
        let ok = GroundTruth::new(2, 7, &good.boxes, &ok_classes);
        engine.compute_from_boxes(&levels, &preds, &ok).unwrap();
    }
    // A class above C as an i32 word on the device path.
    let mut ints: Vec<i32> = good.classes.iter().map(|&c| c as i32).collect();
    ints[4] = 9;
    let b = common::storage_buffer(device, bytemuck::cast_slice(&good.boxes));
    let c = common::storage_buffer(device, bytemuck::cast_slice(&ints));
    let dgt = DeviceGroundTruth {
        boxes_per_image: 7,
        boxes: &b,
        classes: &c,
        class_dtype: ClassDtype::I32,
    };
    let e = engine
        .compute_device_from_boxes(&levels, &dev_preds, &dgt, None)
        .unwrap_err();
    assert_eq!(value_error(e), ("gt_classes".to_string(), 4));
    // Beyond the device's binding: a Limit error before anything runs.
    let dgt = DeviceGroundTruth {
        boxes_per_image: 100_000_000,
        ..dgt
    };
    let e = engine
        .compute_device_from_boxes(&levels, &dev_preds, &dgt, None)
        .unwrap_err();
    assert!(matches!(e, FcosError::Limit(_)), "{e}");
    // Shapes: the wrong number of boxes or classes.
    let classes = classes_of(&good);
    let short = GroundTruth::new(2, 7, &good.boxes[..20], &classes);
    let e = engine
        .compute_from_boxes(&levels, &preds, &short)
        .unwrap_err();
    assert!(
        matches!(&e, FcosError::Shape { tensor, .. } if tensor == "gt_boxes"),
        "{e}"
    );
    let e = engine
        .compute_from_boxes(
            &levels,
            &preds,
            &GroundTruth::new(1, 7, &good.boxes, &classes),
        )
        .unwrap_err();
    assert!(matches!(&e, FcosError::Shape { .. }), "{e}");
}

fn classes_of(r: &RandomBoxes) -> Vec<f32> {
    r.classes.iter().map(|&c| c as f32).collect()
}

#[test]
fn no_boxes_and_padding_only_give_background() {
    let config = LossConfig::new(3);
    let engine = common::engine(config.clone());
    let levels = Levels::from_image(40, 56, &config.strides).unwrap();
    for (m, boxes, classes) in [
        (0usize, vec![], vec![]),
        (2, vec![-1.0; 8], vec![-1.0f32, 0.0]),
    ] {
        let gt = GroundTruth::new(1, m, &boxes, &classes);
        let t = engine.assign_targets(&levels, &gt).unwrap().value;
        assert_eq!(t, Targets::background(1, levels.positions()), "M {m}");
        let logits =
            synthetic::generate(&levels, &config.strides, &SyntheticSpec::new(1, 3)).unwrap();
        let preds = Predictions::of(&logits.inputs());
        let l = engine
            .compute_from_boxes(&levels, &preds, &gt)
            .unwrap()
            .value;
        assert_eq!(l.num_pos, vec![0], "M {m}");
        let want = engine.compute(&levels, &preds.with_targets(&t)).unwrap();
        common::assert_close_rel("background", &l, &want, 1e-6);
        // The device path and the device target pass, the same boxes.
        let device = &engine.context().device;
        let up = DeviceBatch::upload(device, &logits).unwrap();
        let b = common::storage_buffer(device, bytemuck::cast_slice(&boxes));
        let c = common::storage_buffer(device, bytemuck::cast_slice(&classes));
        let dgt = DeviceGroundTruth {
            boxes_per_image: m,
            boxes: &b,
            classes: &c,
            class_dtype: ClassDtype::F32,
        };
        let dev_preds = DevicePredictions::of(&up.inputs());
        let l = engine
            .compute_device_from_boxes(&levels, &dev_preds, &dgt, None)
            .unwrap()
            .value;
        common::assert_close_rel("background device", &l, &want, 1e-6);
        let p = levels.positions() as u64;
        let outs =
            [4 * p, 4 * p, 16 * p].map(|n| common::storage_buffer(device, &vec![0u8; n as usize]));
        let out = DeviceTargets {
            cls_targets: &outs[0],
            cnt_targets: &outs[1],
            reg_targets: &outs[2],
        };
        let counts = engine
            .assign_targets_device(&levels, 1, &dgt, &out)
            .unwrap()
            .value;
        assert_eq!(counts.num_pos, vec![0], "M {m} device target pass");
        assert_eq!(
            common::read_buffer(engine.context(), &outs[1]),
            t.cnt_targets,
            "M {m}"
        );
    }
}
