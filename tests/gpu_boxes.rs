//! Targets from ground-truth boxes (docs/contract.md §7) on the golden box cases:
//! the CPU twin against PyTorch's targets, the GPU target pass against the twin
//! (bit for bit), and the fused loss from boxes against the two-step path and the
//! golden losses and gradients, IoU and GIoU, host and device paths.
#![cfg(feature = "casefile")]

mod common;

use fcos_loss::casefile::Case;
use fcos_loss::{
    reference, ClassDtype, Counts, DeviceBatch, DeviceGroundTruth, DevicePredictions,
    DeviceTargets, LossConfig, LossWeights, Predictions, RegLoss, Targets,
};

use common::GOLDEN_BOXES as CASES;

/// Class and box targets bit for bit, centerness within 1e-6 relative.
fn assert_targets(what: &str, got: &Targets, cls: &[f32], cnt: &[f32], reg: &[f32]) {
    let differ = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .filter(|(x, y)| x.to_bits() != y.to_bits())
            .count()
    };
    assert_eq!(got.cls_targets.len(), cls.len(), "{what}: cls length");
    assert_eq!(
        differ(&got.cls_targets, cls),
        0,
        "{what}: class targets differ"
    );
    assert_eq!(
        differ(&got.reg_targets, reg),
        0,
        "{what}: box targets differ"
    );
    let worst = got
        .cnt_targets
        .iter()
        .zip(cnt)
        .map(|(&a, &b)| ((a - b).abs() / b.abs().max(1e-30)) as f64)
        .fold(0.0, f64::max);
    assert!(worst <= 1e-6, "{what}: centerness relative error {worst:e}");
}

fn config(case: &Case, reg: RegLoss) -> LossConfig {
    LossConfig::new(case.batch.classes as u32).with_reg_loss(reg)
}

#[test]
fn cpu_twin_reproduces_pytorch_targets() {
    for name in CASES {
        let case = common::golden(name);
        let b = &case.batch;
        let gt = case.boxes.as_ref().expect("gt_boxes").ground_truth(b.batch);
        let t = reference::assign_targets(&config(&case, RegLoss::Iou), &b.levels, &gt).unwrap();
        assert_targets(name, &t, &b.cls_targets, &b.cnt_targets, &b.reg_targets);
    }
}

#[test]
fn gpu_target_pass_equals_the_twin() {
    let mut engine = common::engine(LossConfig::new(1));
    for name in CASES {
        let case = common::golden(name);
        let b = &case.batch;
        engine.set_config(config(&case, RegLoss::Iou)).unwrap();
        let gt = case.boxes.as_ref().unwrap().ground_truth(b.batch);
        let cpu = reference::assign_targets(engine.config(), &b.levels, &gt).unwrap();
        let gpu = engine.assign_targets(&b.levels, &gt).unwrap().value;
        assert_targets(
            name,
            &gpu,
            &cpu.cls_targets,
            &cpu.cnt_targets,
            &cpu.reg_targets,
        );
        // The device target pass, classes as i32 words, and its counts.
        let device = &engine.context().device;
        let bx = case.boxes.as_ref().unwrap();
        let boxes = common::storage_buffer(device, bytemuck::cast_slice(&bx.boxes));
        let ints: Vec<i32> = bx.classes.iter().map(|&c| c as i32).collect();
        let classes = common::storage_buffer(device, bytemuck::cast_slice(&ints));
        let n = b.batch * b.levels.positions();
        let outs = [4 * n, 4 * n, 16 * n].map(|k| common::storage_buffer(device, &vec![0u8; k]));
        let dgt = DeviceGroundTruth {
            boxes_per_image: bx.boxes_per_image,
            boxes: &boxes,
            classes: &classes,
            class_dtype: ClassDtype::I32,
        };
        let out = DeviceTargets {
            cls_targets: &outs[0],
            cnt_targets: &outs[1],
            reg_targets: &outs[2],
        };
        let counts = engine
            .assign_targets_device(&b.levels, b.batch, &dgt, &out)
            .unwrap()
            .value;
        let read = |i: usize| common::read_buffer(engine.context(), &outs[i]);
        let dev = Targets {
            cls_targets: read(0),
            cnt_targets: read(1),
            reg_targets: read(2),
        };
        let what = format!("{name} device");
        assert_targets(
            &what,
            &dev,
            &cpu.cls_targets,
            &cpu.cnt_targets,
            &cpu.reg_targets,
        );
        let want = Counts::of(&b.levels, b.batch, &cpu.cnt_targets).unwrap();
        assert_eq!(counts.num_pos, want.num_pos, "{name}: device counts");
        for (g, w) in counts.ctr.iter().zip(&want.ctr) {
            assert!((g - w).abs() <= 1e-5 * w.max(1.0), "{name}: ctr {g} vs {w}");
        }
    }
}

#[test]
fn fused_from_boxes_equals_two_steps_and_pytorch() {
    let mut engine = common::engine(LossConfig::new(1));
    for name in CASES {
        let case = common::golden(name);
        let b = &case.batch;
        let gt = case.boxes.as_ref().unwrap().ground_truth(b.batch);
        let preds = Predictions::of(&b.inputs());
        let expected = case.expected.as_ref().unwrap();
        for reg in [RegLoss::Iou, RegLoss::Giou] {
            engine.set_config(config(&case, reg)).unwrap();
            let what = format!("{name} {reg:?}");
            let two_step = engine.compute(&b.levels, &b.inputs()).unwrap();
            let fused = engine
                .compute_from_boxes(&b.levels, &preds, &gt)
                .unwrap()
                .value;
            common::assert_close_rel(&what, &fused, &two_step, 1e-6);
            let reg_want = match reg {
                RegLoss::Iou => &expected.reg_loss,
                RegLoss::Giou => expected.reg_loss_giou.as_ref().unwrap(),
            };
            common::assert_golden(
                &what,
                &fused,
                &expected.cls_loss,
                &expected.cnt_loss,
                reg_want,
            );
            let w = LossWeights::default();
            let (l2, g2) = engine.forward_backward(&b.levels, &b.inputs(), &w).unwrap();
            let (l1, g1) = engine
                .forward_backward_from_boxes(&b.levels, &preds, &gt, &w)
                .unwrap()
                .value;
            common::assert_close_rel(&format!("{what} backward"), &l1, &l2, 1e-6);
            common::assert_heads(&format!("{what} grads"), &g1, &g2, 1e-6);
            // The device path, classes as f32 and as i32 words.
            let up = DeviceBatch::upload(&engine.context().device, b).unwrap();
            let dev_preds = DevicePredictions::of(&up.inputs());
            let bx = case.boxes.as_ref().unwrap();
            let device = &engine.context().device;
            let boxes = common::storage_buffer(device, bytemuck::cast_slice(&bx.boxes));
            let f32s: Vec<f32> = bx.classes.iter().map(|&c| c as f32).collect();
            let i32s: Vec<i32> = bx.classes.iter().map(|&c| c as i32).collect();
            for (dtype, words) in [
                (ClassDtype::F32, bytemuck::cast_slice::<f32, u8>(&f32s)),
                (ClassDtype::I32, bytemuck::cast_slice::<i32, u8>(&i32s)),
            ] {
                let classes = common::storage_buffer(device, words);
                let dgt = DeviceGroundTruth {
                    boxes_per_image: bx.boxes_per_image,
                    boxes: &boxes,
                    classes: &classes,
                    class_dtype: dtype,
                };
                let dev = engine
                    .compute_device_from_boxes(&b.levels, &dev_preds, &dgt, None)
                    .unwrap()
                    .value;
                common::assert_close_rel(
                    &format!("{what} device {dtype:?}"),
                    &dev,
                    &two_step,
                    1e-6,
                );
            }
            // The device backward from boxes, into gradient buffers.
            let classes = common::storage_buffer(device, bytemuck::cast_slice(&i32s));
            let dgt = DeviceGroundTruth {
                boxes_per_image: bx.boxes_per_image,
                boxes: &boxes,
                classes: &classes,
                class_dtype: ClassDtype::I32,
            };
            let grads = up.gradient_buffers(device).unwrap();
            let grad_refs = fcos_loss::Heads::from_fn(|h| &grads[h]);
            let dl = engine
                .forward_backward_device_from_boxes(
                    &b.levels, &dev_preds, &dgt, &grad_refs, &w, None,
                )
                .unwrap()
                .value;
            common::assert_close_rel(&format!("{what} device backward"), &dl, &l2, 1e-6);
            let dg =
                common::read_gradients(engine.context(), &b.levels, b.batch, b.classes, &grad_refs);
            common::assert_heads(&format!("{what} device grads"), &dg, &g2, 1e-6);
        }
    }
}
