//! Forward and backward on the GPU against the CPU reference at the edges of the
//! maths and of the plan: exact min/max ties and clamp boundaries in the box terms,
//! extreme γ, α and logits, class targets that are not whole class numbers (checks
//! off), and bindings so small that every level splits into many segments.

mod common;

use fcos_loss::reference::grad;
use fcos_loss::synthetic::{self, SyntheticSpec};
use fcos_loss::{Batch, FcosLoss, Levels, LossConfig, LossWeights, RegLoss};

const STRIDES: [u32; 5] = [8, 16, 32, 64, 128];

fn batch(levels: &Levels, b: usize, c: usize, pos_frac: Vec<f64>, seed: u64) -> Batch {
    let mut spec = SyntheticSpec::new(b, c);
    spec.pos_frac = pos_frac;
    spec.seed = seed;
    synthetic::generate(levels, &STRIDES[..levels.len()], &spec).unwrap()
}

/// Losses and all three gradients of `engine` (forward + backward, then forward
/// alone) against the f64 reference.
fn check(what: &str, engine: &mut FcosLoss, config: &LossConfig, levels: &Levels, b: &Batch) {
    engine.set_config(config.clone()).unwrap();
    let w = LossWeights::default();
    let (gl, gg) = engine.forward_backward(levels, &b.inputs(), &w).unwrap();
    let (cl, cg) = grad::gradients(config, levels, &b.inputs(), &w).unwrap();
    common::assert_close(what, &gl, &cl);
    common::assert_heads(what, &gg, &cg, 1e-4);
    let f = engine.compute(levels, &b.inputs()).unwrap();
    common::assert_close(&format!("{what} (forward)"), &f, &cl);
}

#[test]
fn box_ties_and_clamp_boundaries() {
    let levels = Levels::from_shapes(&[(5, 7), (3, 3), (1, 2)]).unwrap();
    let mut engine = common::engine(LossConfig::new(3));
    for mode in [RegLoss::Iou, RegLoss::Giou] {
        let config = LossConfig::new(3).with_reg_loss(mode);
        let mut b = batch(&levels, 2, 3, vec![0.6], 1);
        let p = levels.positions();
        for bi in 0..2 {
            for (l, &off) in levels.offsets().iter().enumerate() {
                for pix in 0..levels.level_size(l) {
                    let bp = bi * p + off as usize + pix;
                    for k in 0..4 {
                        let t = 1.0 + ((bp * 4 + k) % 5) as f32;
                        if b.cnt_targets[bp] > -1.0 {
                            b.reg_targets[bp * 4 + k] = t;
                        }
                        // Even positions: the prediction equals the target (every min
                        // and max ties); odd ones: sides of opposite sign whose sums
                        // land on the clamp at 0.
                        let v = if (bp + k).is_multiple_of(3) { -t } else { t };
                        b.reg_preds[l][levels.nchw_index(l, 4, bi, k, pix)] =
                            if pix % 2 == 0 { t } else { v };
                    }
                }
            }
        }
        check(&format!("{mode:?} ties"), &mut engine, &config, &levels, &b);
    }
}

#[test]
fn extreme_gamma_alpha_and_logits() {
    let levels = Levels::from_shapes(&[(4, 9), (2, 3)]).unwrap();
    let mut engine = common::engine(LossConfig::new(7));
    for (gamma, alpha) in [(0.0, 0.25), (0.5, 0.0), (2.0, 1.0), (1.0, 0.5)] {
        let mut config = LossConfig::new(7);
        config.gamma = gamma;
        config.alpha = alpha;
        let mut b = batch(&levels, 3, 7, vec![0.6], 2);
        for (i, x) in b.cls_logits[0].iter_mut().enumerate() {
            *x = [-120.0, -40.0, -17.0, 0.0, 17.0, 40.0, 120.0][i % 7];
        }
        let what = format!("gamma {gamma} alpha {alpha}");
        check(&what, &mut engine, &config, &levels, &b);
    }
}

/// With the checks off, class targets that are not whole class numbers in range
/// match no class, as with the notebook's float compare; the same with one class
/// per chunk and with every class in one chunk.
#[test]
fn odd_class_targets_with_checks_off() {
    let levels = Levels::from_shapes(&[(3, 5), (2, 2)]).unwrap();
    let mut engine = common::engine(LossConfig::new(6));
    engine.set_checks(false);
    let config = LossConfig::new(6);
    let mut b = batch(&levels, 2, 6, vec![0.6], 3);
    let odd = [
        2.5,
        -1.0,
        7.0,
        6.0,
        1.0,
        1e9,
        -0.0,
        0.999_999_9,
        3.000_000_2,
    ];
    for (i, t) in b.cls_targets.iter_mut().enumerate() {
        *t = odd[i % odd.len()];
    }
    for target in [100_000, 1] {
        engine.set_target_workgroups(target);
        let what = format!("odd class targets, target_workgroups {target}");
        check(&what, &mut engine, &config, &levels, &b);
    }
}

/// 16 KiB storage bindings: every level splits into segments of a few images,
/// with C % 4 tails, many class chunks or one, an empty level, no positives and
/// all positives.
#[test]
fn tiny_bindings_and_many_chunks() {
    let (device, queue) = common::app_device_with(|mut l| {
        l.max_storage_buffer_binding_size = 16 << 10;
        l
    });
    let mut engine = FcosLoss::from_device(device, queue, LossConfig::new(7)).unwrap();
    // (classes, images, level shapes, target workgroups)
    type Case = (u32, usize, &'static [(u32, u32)], u32);
    let cases: [Case; 4] = [
        (7, 5, &[(13, 19), (7, 10), (4, 5), (2, 3), (1, 2)], 100_000),
        (1, 1, &[(30, 31), (1, 1)], 1),
        (5, 3, &[(9, 11), (0, 4), (3, 1)], 50),
        (13, 2, &[(10, 10), (5, 5)], 4096),
    ];
    for (case, (c, b, shapes, target)) in cases.into_iter().enumerate() {
        let levels = Levels::from_shapes(shapes).unwrap();
        for mode in [RegLoss::Iou, RegLoss::Giou] {
            let config = LossConfig::new(c).with_reg_loss(mode);
            engine.set_target_workgroups(target);
            let data = batch(&levels, b, c as usize, vec![0.3, 1.0, 0.0], case as u64);
            let what = format!("case {case} {mode:?}");
            check(&what, &mut engine, &config, &levels, &data);
        }
    }
}

/// Box values far past f32's square root (1e25 to 1e36 px): the areas of the IoU
/// and GIoU terms would overflow f32, so the shader scales each box pair by a
/// power of two first (both losses are scale-free). Losses and gradients stay
/// finite and match the f64 reference, which needs no scaling.
#[test]
fn huge_finite_boxes_stay_finite() {
    let levels = Levels::from_shapes(&[(6, 5), (3, 3), (1, 1)]).unwrap();
    let mut engine = common::engine(LossConfig::new(3));
    for mode in [RegLoss::Iou, RegLoss::Giou] {
        let config = LossConfig::new(3).with_reg_loss(mode);
        let mut b = batch(&levels, 2, 3, vec![0.7], 5);
        let p = levels.positions();
        let mut changed = 0;
        for (i, scale) in [1e25f32, 1e30, 1e36, 3e20]
            .iter()
            .cycle()
            .take(12)
            .enumerate()
        {
            // Position 3·i of image i % 2: its box prediction (channel-major per
            // level, level 0 here) and, for every other one, its target too.
            let (img, pix) = (i % 2, 3 * i % 30);
            let at = img * p + pix;
            if b.cnt_targets[at] <= -1.0 {
                continue;
            }
            let hw = 30;
            for ch in 0..4 {
                b.reg_preds[0][(img * 4 + ch) * hw + pix] *= scale;
            }
            if i % 2 == 0 {
                for ch in 0..4 {
                    b.reg_targets[4 * at + ch] *= scale;
                }
            }
            changed += 1;
        }
        assert!(changed >= 4, "only {changed} positives changed");
        check(
            &format!("huge boxes {mode:?}"),
            &mut engine,
            &config,
            &levels,
            &b,
        );
    }
}
