//! The CPU reference gradients (`reference::grad`) against PyTorch autograd (the
//! golden files, docs/contract.md §4), against central finite differences of the `f64` forward
//! pass, and at extreme logits.

mod common;

use fcos_loss::reference::{
    self,
    grad::{self, F64Heads},
};
use fcos_loss::synthetic::{self, SyntheticSpec};
use fcos_loss::{
    Batch, Denominators, Head, Heads, Levels, LossConfig, LossWeights, Normalization, RegLoss,
};

/// Tolerance against PyTorch: relative to the largest magnitude of the expected head.
#[cfg(feature = "casefile")]
const GOLDEN_TOL: f64 = 1e-4;

/// Worst `|got − want|` over all levels of one head, with its place, and the
/// largest `|want|`.
#[cfg(feature = "casefile")]
struct Worst {
    err: f64,
    level: usize,
    index: usize,
    got: f64,
    want: f64,
    scale: f64,
}

#[cfg(feature = "casefile")]
fn worst(got: &[Vec<f64>], want: &[Vec<f32>]) -> Worst {
    assert_eq!(got.len(), want.len(), "level count");
    let scale = want
        .iter()
        .flat_map(|v| v.iter())
        .fold(0.0f64, |a, &x| a.max((x as f64).abs()));
    let mut w = Worst {
        err: 0.0,
        level: 0,
        index: 0,
        got: 0.0,
        want: 0.0,
        scale,
    };
    for (l, (g, e)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), e.len(), "level {l} length");
        for (i, (&a, &b)) in g.iter().zip(e).enumerate() {
            assert!(a.is_finite(), "level {l} index {i}: {a}");
            // NaN in the expected tensor must not pass: it becomes an infinite error.
            let d = (a - b as f64).abs();
            let d = if d.is_nan() { f64::INFINITY } else { d };
            if d > w.err {
                w = Worst {
                    err: d,
                    level: l,
                    index: i,
                    got: a,
                    want: b as f64,
                    scale,
                };
            }
        }
    }
    w
}

#[cfg(feature = "casefile")]
fn assert_head(what: &str, got: &[Vec<f64>], want: &[Vec<f32>]) -> f64 {
    let w = worst(got, want);
    let rel = w.err / w.scale.max(f64::MIN_POSITIVE);
    println!(
        "{what}: worst |err| {:.3e} = {rel:.3e} × max|expected| ({:.3e}) at level {} index {}",
        w.err, w.scale, w.level, w.index
    );
    assert!(
        w.err <= GOLDEN_TOL * w.scale,
        "{what}: worst error {:.3e} > {GOLDEN_TOL:e} × max|expected| {:.3e} (relative {rel:.3e}) \
         at level {} index {}: got {:e}, PyTorch {:e}",
        w.err,
        w.scale,
        w.level,
        w.index,
        w.got,
        w.want
    );
    rel
}

#[cfg(feature = "casefile")]
#[test]
fn golden_gradients_iou_all_heads() {
    for name in common::GOLDEN {
        let case = common::golden(name);
        let b = &case.batch;
        let want = case
            .expected
            .as_ref()
            .and_then(|e| e.grad.as_ref())
            .unwrap_or_else(|| panic!("{name}: no expected.grad.*"));
        let config = LossConfig::new(b.classes as u32);
        let (losses, g) =
            grad::gradients(&config, &b.levels, &b.inputs(), &LossWeights::default()).unwrap();
        assert!(losses.total.is_finite());
        for h in Head::ALL {
            assert_head(&format!("{name} iou {h}"), &g[h], &want[h]);
        }
    }
}

#[cfg(feature = "casefile")]
#[test]
fn golden_gradients_giou_reg() {
    for name in common::GOLDEN {
        let case = common::golden(name);
        let b = &case.batch;
        let want = case
            .expected
            .as_ref()
            .and_then(|e| e.grad_giou_reg.as_ref())
            .unwrap_or_else(|| panic!("{name}: no expected.grad_giou.reg_preds.*"));
        let config = LossConfig::new(b.classes as u32).with_reg_loss(RegLoss::Giou);
        let weights = LossWeights {
            cls: 0.0,
            cnt: 0.0,
            reg: 1.0,
        };
        let (_, g) = grad::gradients(&config, &b.levels, &b.inputs(), &weights).unwrap();
        assert_head(&format!("{name} giou reg_preds"), &g.reg_preds, want);
        // The other heads carry no weight.
        let m = g.max_abs();
        assert_eq!((m.cls_logits, m.cnt_logits), (0.0, 0.0));
    }
}

/// A small random case: `B = 3`, `C = 4`, three tiny levels; image 0 has some
/// positives, image 1 none, image 2 mostly positives.
fn small_case(seed: u64, classes: usize) -> Batch {
    let levels = Levels::from_shapes(&[(4, 5), (2, 3), (1, 2)]).unwrap();
    let spec = SyntheticSpec {
        batch: 3,
        classes,
        pos_frac: vec![0.35, 0.0, 0.9],
        logit_scale: 2.0,
        logit_shift: -1.5,
        seed,
    };
    let b = synthetic::generate(&levels, &[8, 16, 32], &spec).unwrap();
    assert!(
        b.cnt_targets.iter().any(|&c| c > -1.0),
        "seed {seed}: no positives"
    );
    b
}

/// `losses_f64` and `gradients_f64` (the `f64` entry points the central
/// differences evaluate) at the widened `f32` heads return exactly what `losses`
/// and `gradients` return. This is a consistency check between two entry points
/// over the same element functions, not evidence that either is right: the
/// golden, central-difference and hand-derived tests are that.
#[test]
fn f64_entry_points_are_consistent_with_the_f32_ones() {
    let weights = LossWeights {
        cls: 0.7,
        cnt: 1.3,
        reg: 2.0,
    };
    for (seed, classes) in (0..4).map(|s| (s, 5)).chain((10..13).map(|s| (s, 4))) {
        let b = small_case(seed, classes);
        for mode in [RegLoss::Iou, RegLoss::Giou] {
            let config = LossConfig::new(classes as u32).with_reg_loss(mode);
            let inputs = b.inputs();
            let heads = grad::widen(&inputs);
            let want = reference::losses(&config, &b.levels, &inputs).unwrap();
            let got = grad::losses_f64(&config, &b.levels, &inputs, &heads).unwrap();
            assert_eq!(got, want, "seed {seed} {mode:?}: losses_f64 vs losses");
            let (l32, g32) = grad::gradients(&config, &b.levels, &inputs, &weights).unwrap();
            let (l64, g64) =
                grad::gradients_f64(&config, &b.levels, &inputs, &heads, &weights).unwrap();
            assert_eq!(l64, l32, "seed {seed} {mode:?}: gradients_f64 vs gradients");
            assert_eq!(g64, g32, "seed {seed} {mode:?}: gradients_f64 vs gradients");
        }
    }
}

/// Worst relative error of the reference's gradient of `heads` against central
/// differences of the `f64` forward pass, at every element of those heads (the
/// cases are tiny): `|analytic − numeric| / max(|analytic|, 1e-3)`, per head, with
/// the number of elements checked and a description of each one beyond `tol`.
fn central_difference_errors(
    config: &LossConfig,
    b: &Batch,
    weights: &LossWeights,
    heads_checked: &[Head],
    tol: f64,
) -> (Heads<f64>, usize, Vec<String>) {
    let inputs = b.inputs();
    let heads = grad::widen(&inputs);
    let (_, g) = grad::gradients(config, &b.levels, &inputs, weights).unwrap();
    let objective = |h: &F64Heads| {
        let l = grad::losses_f64(config, &b.levels, &inputs, h).unwrap();
        grad::objective(&l, weights)
    };
    let mut worst = Heads::<f64>::default();
    let mut checked = 0usize;
    let mut failures = Vec::new();
    let mut h = heads.clone();
    for &which in heads_checked {
        for l in 0..b.levels.len() {
            for i in 0..g[which][l].len() {
                let x = heads[which][l][i];
                let step = 1e-6 * x.abs().max(1.0);
                h[which][l][i] = x + step;
                let up = objective(&h);
                h[which][l][i] = x - step;
                let down = objective(&h);
                h[which][l][i] = x;
                let numeric = (up - down) / (2.0 * step);
                let analytic = g[which][l][i];
                let err = (analytic - numeric).abs() / analytic.abs().max(1e-3);
                worst[which] = worst[which].max(err);
                checked += 1;
                // NaN fails too.
                if err.is_nan() || err > tol {
                    failures.push(format!(
                        "{which} level {l} index {i}: analytic {analytic:e} vs central \
                         difference {numeric:e} (relative {err:.2e})"
                    ));
                }
            }
        }
    }
    (worst, checked, failures)
}

#[test]
fn gradients_match_central_differences() {
    let weights = LossWeights {
        cls: 0.7,
        cnt: 1.3,
        reg: 2.0,
    };
    let classes = 4;
    let mut worst = Heads::<f64>::default();
    let mut checked = 0usize;
    for seed in 10..13 {
        let b = small_case(seed, classes);
        for mode in [RegLoss::Iou, RegLoss::Giou] {
            let config = LossConfig::new(classes as u32).with_reg_loss(mode);
            let (w, n, failures) =
                central_difference_errors(&config, &b, &weights, &Head::ALL, 1e-5);
            assert!(
                failures.is_empty(),
                "seed {seed} {mode:?}:\n{}",
                failures.join("\n")
            );
            checked += n;
            for h in Head::ALL {
                worst[h] = worst[h].max(w[h]);
            }
        }
    }
    println!(
        "central differences: {checked} elements, worst relative error cls {:.2e}, cnt {:.2e}, reg {:.2e}",
        worst.cls_logits, worst.cnt_logits, worst.reg_preds
    );
}

/// [`small_case`] with centerness targets at both ends: image 2's first positive
/// at exactly 0 (its box loss then weighs nothing), its second at exactly 1.
fn small_case_ctr_edges(seed: u64, classes: usize) -> Batch {
    let mut b = small_case(seed, classes);
    let p = b.levels.positions();
    let positives: Vec<usize> = (2 * p..3 * p)
        .filter(|&i| b.cnt_targets[i] > -1.0)
        .collect();
    assert!(
        positives.len() >= 2,
        "seed {seed}: image 2 has < 2 positives"
    );
    b.cnt_targets[positives[0]] = 0.0;
    b.cnt_targets[positives[1]] = 1.0;
    b
}

/// The centerness-weighted box loss (`Σ ct · box loss` over the mode's centerness
/// denominator) in every normalisation mode, IoU and GIoU: the reference's
/// gradients of every head against central differences of its `f64` forward
/// pass. Also the unweighted `Batch` and `Global` (`PerImage` unweighted is
/// [`gradients_match_central_differences`]), and `Global` below both floors
/// (`max(N_g, 1)`, `max(Z_g, 1e-6)`), where the box term dominates and only the
/// box head is weighted. A positive whose centerness target is 0 gets a zero box
/// gradient when the box loss is weighted.
#[test]
fn centerness_weighted_gradients_match_central_differences_in_every_mode() {
    let weights = LossWeights {
        cls: 0.7,
        cnt: 1.3,
        reg: 2.0,
    };
    let reg_only = LossWeights {
        cls: 0.0,
        cnt: 0.0,
        reg: 1.0,
    };
    let global = Normalization::Global(Denominators {
        num_pos: 23.5,
        ctr: 4.75,
    });
    let floors = Normalization::Global(Denominators {
        num_pos: 0.5,
        ctr: 1e-7,
    });
    let runs = [
        (Normalization::PerImage, true, weights),
        (Normalization::Batch, true, weights),
        (global, true, weights),
        (Normalization::Batch, false, weights),
        (global, false, weights),
        (floors, true, reg_only),
        (floors, false, reg_only),
    ];
    let classes = 4;
    let mut checked = 0usize;
    let mut worst_reg = 0.0f64;
    for seed in 20..23 {
        let b = small_case_ctr_edges(seed, classes);
        let zero_ct = (2 * b.levels.positions()..)
            .find(|&i| b.cnt_targets[i] == 0.0)
            .unwrap();
        for mode in [RegLoss::Iou, RegLoss::Giou] {
            for (norm, weighted, w) in runs {
                let config = LossConfig::new(classes as u32)
                    .with_reg_loss(mode)
                    .with_normalization(norm)
                    .with_centerness_weighted_reg(weighted);
                let what = format!("seed {seed} {mode:?} {norm:?} weighted {weighted}");
                let (worst, n, failures) =
                    central_difference_errors(&config, &b, &w, &Head::ALL, 1e-5);
                assert!(failures.is_empty(), "{what}:\n{}", failures.join("\n"));
                checked += n;
                worst_reg = worst_reg.max(worst.reg_preds);
                // The positive with centerness target 0: no box gradient when weighted.
                let (_, g) = grad::gradients(&config, &b.levels, &b.inputs(), &w).unwrap();
                let p = zero_ct - 2 * b.levels.positions();
                let (l, pix) = b.levels.locate(p).unwrap();
                let box_grad: Vec<f64> = (0..4)
                    .map(|k| g.reg_preds[l][b.levels.nchw_index(l, 4, 2, k, pix)])
                    .collect();
                assert_eq!(
                    box_grad.iter().all(|&x| x == 0.0),
                    weighted,
                    "{what}: box gradient {box_grad:?} at a positive with centerness target 0"
                );
            }
        }
    }
    println!("weighted central differences: {checked} elements, worst reg relative error {worst_reg:.2e}");
}

/// One image, one position, two classes: the losses and gradients written out by
/// hand from the textbook formulas (docs/contract.md §2 and §4), independently of
/// the reference's element functions. The box prediction lies strictly inside the
/// target, so the intersection is the prediction and the enclosing box the target:
/// IoU = a_p / a_t, with d(-log IoU)/d p_l = -1 / (p_l + p_r) and, for GIoU (whose
/// penalty term vanishes here), d(1 - IoU)/d p_l = -(p_t + p_b) / a_t.
#[test]
fn one_position_matches_hand_derived_values() {
    let levels = Levels::from_shapes(&[(1, 1)]).unwrap();
    let (z, x, y) = ([0.3f32, -1.2], 0.4f32, 0.5f32);
    let p = [1.0f32, 2.0, 3.0, 1.5];
    let t = [2.0f32, 3.0, 4.0, 2.5];
    let b = Batch {
        levels: levels.clone(),
        batch: 1,
        classes: 2,
        cls_logits: vec![z.to_vec()],
        cnt_logits: vec![vec![x]],
        reg_preds: vec![p.to_vec()],
        // Class 1: channel 0 is the positive, channel 1 a negative.
        cls_targets: vec![1.0],
        cnt_targets: vec![y],
        reg_targets: t.to_vec(),
    };
    fcos_loss::check_values(&levels, &b.inputs(), 2).unwrap();
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    let [p0, p1, p2, p3] = p.map(f64::from);
    let [t0, t1, t2, t3] = t.map(f64::from);
    let (ap, at) = ((p0 + p2) * (p1 + p3), (t0 + t2) * (t1 + t3));
    for (gamma, alpha) in [(2.0f32, 0.25f32), (1.5, 0.4), (0.0, 0.75)] {
        let (g, a) = (gamma as f64, alpha as f64);
        // Focal loss and its derivative for the positive channel and the negative one.
        let s0 = sig(z[0] as f64);
        let s1 = sig(z[1] as f64);
        let cls = -a * (1.0 - s0).powf(g) * s0.ln() - (1.0 - a) * s1.powf(g) * (1.0 - s1).ln();
        let d_z0 = a * (1.0 - s0).powf(g) * (g * s0 * s0.ln() - (1.0 - s0));
        let d_z1 = (1.0 - a) * s1.powf(g) * (s1 - g * (1.0 - s1) * (1.0 - s1).ln());
        // Centerness BCE with logits.
        let sx = sig(x as f64);
        let yy = y as f64;
        let cnt = -(yy * sx.ln() + (1.0 - yy) * (1.0 - sx).ln());
        let d_x = sx - yy;
        for mode in [RegLoss::Iou, RegLoss::Giou] {
            let (reg, d_p) = match mode {
                RegLoss::Iou => (
                    -(ap / at).ln(),
                    [
                        -1.0 / (p0 + p2),
                        -1.0 / (p1 + p3),
                        -1.0 / (p0 + p2),
                        -1.0 / (p1 + p3),
                    ],
                ),
                RegLoss::Giou => (
                    1.0 - ap / at,
                    [
                        -(p1 + p3) / at,
                        -(p0 + p2) / at,
                        -(p1 + p3) / at,
                        -(p0 + p2) / at,
                    ],
                ),
            };
            let config = LossConfig {
                gamma,
                alpha,
                ..LossConfig::new(2).with_reg_loss(mode)
            };
            let what = format!("gamma {gamma} alpha {alpha} {mode:?}");
            let close = |got: f64, want: f64, name: &str| {
                assert!(
                    (got - want).abs() <= 1e-12 * want.abs().max(1e-3),
                    "{what} {name}: {got:e} vs by hand {want:e}"
                );
            };
            let (l, grads) =
                grad::gradients(&config, &levels, &b.inputs(), &LossWeights::default()).unwrap();
            assert_eq!(l.num_pos, vec![1]);
            close(l.cls[0], cls, "cls loss");
            close(l.cnt[0], cnt, "cnt loss");
            close(l.reg[0], reg, "reg loss");
            close(l.total, cls + cnt + reg, "total");
            close(grads.cls_logits[0][0], d_z0, "d/d z (positive class)");
            close(grads.cls_logits[0][1], d_z1, "d/d z (negative class)");
            close(grads.cnt_logits[0][0], d_x, "d/d x (centerness)");
            for (k, &d) in d_p.iter().enumerate() {
                close(grads.reg_preds[0][k], d, &format!("d/d p[{k}]"));
            }
        }
    }
}

#[test]
fn off_positive_gradients_are_zero_and_image_without_positives_scales_by_one() {
    let b = small_case(3, 4);
    let config = LossConfig::new(4);
    let (_, g) = grad::gradients(&config, &b.levels, &b.inputs(), &LossWeights::default()).unwrap();
    let p = b.levels.positions();
    for bi in 0..b.batch {
        for pos in 0..p {
            let (l, pix) = b.levels.locate(pos).unwrap();
            let positive = b.cnt_targets[bi * p + pos] > -1.0;
            let c = g.cnt_logits[l][b.levels.nchw_index(l, 1, bi, 0, pix)];
            assert_eq!(
                c != 0.0,
                positive,
                "image {bi} position {pos}: cnt grad {c}"
            );
            for k in 0..4 {
                let r = g.reg_preds[l][b.levels.nchw_index(l, 4, bi, k, pix)];
                if !positive {
                    assert_eq!(r, 0.0, "image {bi} position {pos} k {k}");
                }
            }
        }
    }
    // Image 1 has no positives: its class gradient is the element derivative / (B · 1).
    assert!(b.cnt_targets[p..2 * p].iter().all(|&c| c <= -1.0));
    let (l, pix) = b.levels.locate(0).unwrap();
    let i = b.levels.nchw_index(l, 4, 1, 2, pix);
    let z = b.cls_logits[l][i] as f64;
    let want = grad::focal_grad(z, false, 2.0, 0.25) / 3.0;
    assert!((g.cls_logits[l][i] - want).abs() <= 1e-15 * want.abs().max(1e-300));
}

#[test]
fn extreme_logits_give_finite_gradients() {
    let levels = Levels::from_shapes(&[(3, 3), (2, 2)]).unwrap();
    let spec = SyntheticSpec {
        batch: 2,
        classes: 3,
        pos_frac: vec![0.5],
        logit_scale: 1.0,
        logit_shift: 0.0,
        seed: 7,
    };
    let mut b = synthetic::generate(&levels, &[8, 16], &spec).unwrap();
    for &mag in &[50.0f32, 1e4, 3e38] {
        for head in [&mut b.cls_logits, &mut b.cnt_logits] {
            for v in head.iter_mut() {
                for (i, x) in v.iter_mut().enumerate() {
                    *x = if i % 2 == 0 { mag } else { -mag };
                }
            }
        }
        for mode in [RegLoss::Iou, RegLoss::Giou] {
            let config = LossConfig::new(3).with_reg_loss(mode);
            let (losses, g) =
                grad::gradients(&config, &levels, &b.inputs(), &LossWeights::default()).unwrap();
            assert!(
                losses.total.is_finite(),
                "|z| = {mag}: total {}",
                losses.total
            );
            for (h, levels) in g.iter() {
                assert!(
                    levels.iter().flatten().all(|x| x.is_finite()),
                    "|z| = {mag} {mode:?}: non-finite {h} gradient"
                );
            }
            // Every class gradient is bounded by max(α, 1−α) / (B · num_pos_b) ≤ 0.75 / 2.
            assert!(g.max_abs().cls_logits <= 0.375 + 1e-12);
        }
    }
    // A confidently wrong positive (z = −50) gets ≈ −α; a confidently wrong negative
    // (z = +50) gets ≈ 1 − α. Check against the closed forms in f64.
    let (alpha, gamma) = (0.25f64, 2.0f64);
    for (z, t) in [
        (-50.0f64, true),
        (50.0, false),
        (-30.0, true),
        (30.0, false),
    ] {
        let s = 1.0 / (1.0 + (-z).exp());
        let log_s = -(1.0 + (-z).exp()).ln(); // log σ(z), exact enough here
        let log_1ms = -(1.0 + z.exp()).ln(); // log(1 − σ(z))
        let closed = if t {
            alpha * (1.0 - s).powf(gamma) * (gamma * s * log_s - (1.0 - s))
        } else {
            (1.0 - alpha) * s.powf(gamma) * (s - gamma * (1.0 - s) * log_1ms)
        };
        let got = grad::focal_grad(z, t, gamma, alpha);
        assert!(
            (got - closed).abs() <= 1e-12,
            "z {z} t {t}: {got} vs {closed}"
        );
        let limit = if t { -alpha } else { 1.0 - alpha };
        assert!(
            (got - limit).abs() <= 1e-11,
            "z {z} t {t}: {got} vs {limit}"
        );
    }
    // And through `gradients`: a positive with its class logit at −50.
    let levels = Levels::from_shapes(&[(1, 1)]).unwrap();
    let b = Batch {
        levels: levels.clone(),
        batch: 1,
        classes: 2,
        cls_logits: vec![vec![-50.0, -50.0]],
        cnt_logits: vec![vec![-50.0]],
        reg_preds: vec![vec![4.0, 5.0, 6.0, 7.0]],
        cls_targets: vec![1.0],
        cnt_targets: vec![1.0],
        reg_targets: vec![4.5, 5.5, 5.0, 7.5],
    };
    let (_, g) = grad::gradients(
        &LossConfig::new(2),
        &levels,
        &b.inputs(),
        &LossWeights::default(),
    )
    .unwrap();
    assert!(
        (g.cls_logits[0][0] + alpha).abs() < 1e-12,
        "{}",
        g.cls_logits[0][0]
    );
    // Class 2 is a negative at −50: a vanishing gradient.
    assert!(g.cls_logits[0][1].abs() < 1e-40);
    // Centerness target 1 at x = −50: σ(x) − 1 ≈ −1.
    assert!((g.cnt_logits[0][0] + 1.0).abs() < 1e-12);
}

#[test]
fn max_abs_and_narrow_follow_the_heads() {
    let b = small_case(1, 3);
    let (_, g) = grad::gradients(
        &LossConfig::new(3),
        &b.levels,
        &b.inputs(),
        &LossWeights::default(),
    )
    .unwrap();
    let m = g.max_abs();
    let f = grad::narrow(&g);
    for h in Head::ALL {
        let (mx, h32, h64) = (m[h], &f[h], &g[h]);
        assert!(mx > 0.0, "{h}");
        let want = h64.iter().flatten().fold(0.0f64, |a, &x| a.max(x.abs()));
        assert_eq!(mx, want, "{h}");
        assert_eq!(h32.len(), h64.len(), "{h}");
        for (a, b) in h32.iter().zip(h64) {
            assert_eq!(a.len(), b.len(), "{h}");
            assert!(a.iter().zip(b).all(|(&x, &y)| x == y as f32), "{h}");
        }
    }
}
