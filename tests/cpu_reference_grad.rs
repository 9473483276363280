//! The CPU reference gradients (`reference::grad`) against PyTorch autograd (the
//! golden files, SPEC §4), against central finite differences of the `f64` forward
//! pass, and at extreme logits.

use fcos_loss::reference::{
    self,
    grad::{self, HeadsF64, RefGradients},
};
use fcos_loss::synthetic::{self, SyntheticSpec};
use fcos_loss::{io, Batch, Levels, LossConfig, LossWeights, RegLoss};
use std::path::Path;

const CASES: [&str; 3] = [
    "voc_b2_c20_512x512",
    "odd_b3_c7_100x150",
    "single_b1_c1_64x64",
];

/// Tolerance against PyTorch: relative to the largest magnitude of the expected head.
const GOLDEN_TOL: f64 = 1e-4;

fn read(name: &str) -> io::Case {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/data/{name}.safetensors"));
    io::read_case(&path).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Worst `|got − want|` over all levels of one head, with its place, and the
/// largest `|want|`.
struct Worst {
    err: f64,
    level: usize,
    index: usize,
    got: f64,
    want: f64,
    scale: f64,
}

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

#[test]
fn golden_gradients_iou_all_heads() {
    for name in CASES {
        let case = read(name);
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
        assert_head(
            &format!("{name} iou cls_logits"),
            &g.cls_logits,
            &want.cls_logits,
        );
        assert_head(
            &format!("{name} iou cnt_logits"),
            &g.cnt_logits,
            &want.cnt_logits,
        );
        assert_head(
            &format!("{name} iou reg_preds"),
            &g.reg_preds,
            &want.reg_preds,
        );
    }
}

#[test]
fn golden_gradients_giou_reg() {
    for name in CASES {
        let case = read(name);
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
        assert_eq!(g.max_abs()[..2], [0.0, 0.0]);
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

#[test]
fn f64_forward_agrees_with_the_reference() {
    for seed in 0..4 {
        let b = small_case(seed, 5);
        for mode in [RegLoss::Iou, RegLoss::Giou] {
            let config = LossConfig::new(5).with_reg_loss(mode);
            let inputs = b.inputs();
            let want = reference::losses(&config, &b.levels, &inputs).unwrap();
            let got =
                grad::losses_f64(&config, &b.levels, &inputs, &HeadsF64::from_inputs(&inputs))
                    .unwrap();
            assert_eq!(got.num_pos, want.num_pos);
            for (a, w) in [
                (&got.cls, &want.cls),
                (&got.cnt, &want.cnt),
                (&got.reg, &want.reg),
            ] {
                for (x, y) in a.iter().zip(w.iter()) {
                    assert!(
                        (x - y).abs() <= 1e-12 * y.abs().max(1.0),
                        "seed {seed} {mode:?}: {x} vs {y}"
                    );
                }
            }
        }
    }
}

/// Which head of `HeadsF64` / `RefGradients`.
#[derive(Clone, Copy, Debug)]
enum Head {
    Cls,
    Cnt,
    Reg,
}

fn head_mut(h: &mut HeadsF64, which: Head) -> &mut Vec<Vec<f64>> {
    match which {
        Head::Cls => &mut h.cls_logits,
        Head::Cnt => &mut h.cnt_logits,
        Head::Reg => &mut h.reg_preds,
    }
}

fn grad_head(g: &RefGradients, which: Head) -> &Vec<Vec<f64>> {
    match which {
        Head::Cls => &g.cls_logits,
        Head::Cnt => &g.cnt_logits,
        Head::Reg => &g.reg_preds,
    }
}

#[test]
fn gradients_match_central_differences() {
    let weights = LossWeights {
        cls: 0.7,
        cnt: 1.3,
        reg: 2.0,
    };
    let classes = 4;
    let mut worst = [0.0f64; 3];
    let mut checked = 0usize;
    for seed in 10..13 {
        let b = small_case(seed, classes);
        let inputs = b.inputs();
        for mode in [RegLoss::Iou, RegLoss::Giou] {
            let config = LossConfig::new(classes as u32).with_reg_loss(mode);
            let heads = HeadsF64::from_inputs(&inputs);
            let (losses, g) = grad::gradients(&config, &b.levels, &inputs, &weights).unwrap();
            let (losses64, g64) =
                grad::gradients_f64(&config, &b.levels, &inputs, &heads, &weights).unwrap();
            assert_eq!(losses, losses64, "f32 and f64 entry points disagree");
            assert_eq!(g, g64, "f32 and f64 entry points disagree");
            let objective = |h: &HeadsF64| {
                let l = grad::losses_f64(&config, &b.levels, &inputs, h).unwrap();
                grad::objective(&l, &weights)
            };
            for (hi, which) in [Head::Cls, Head::Cnt, Head::Reg].into_iter().enumerate() {
                for l in 0..b.levels.len() {
                    // The levels are tiny: check every element.
                    for i in 0..grad_head(&g, which)[l].len() {
                        let mut h = heads.clone();
                        let x = head_mut(&mut h, which)[l][i];
                        let step = 1e-6 * x.abs().max(1.0);
                        head_mut(&mut h, which)[l][i] = x + step;
                        let up = objective(&h);
                        head_mut(&mut h, which)[l][i] = x - step;
                        let down = objective(&h);
                        let numeric = (up - down) / (2.0 * step);
                        let analytic = grad_head(&g, which)[l][i];
                        let err = (analytic - numeric).abs() / analytic.abs().max(1e-3);
                        worst[hi] = worst[hi].max(err);
                        checked += 1;
                        assert!(
                            err <= 1e-5,
                            "seed {seed} {mode:?} {which:?} level {l} index {i}: \
                             analytic {analytic:e} vs central difference {numeric:e} \
                             (relative {err:.2e})"
                        );
                    }
                }
            }
        }
    }
    println!("central differences: {checked} elements, worst relative error cls {:.2e}, cnt {:.2e}, reg {:.2e}", worst[0], worst[1], worst[2]);
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
            for (name, h) in [
                ("cls", &g.cls_logits),
                ("cnt", &g.cnt_logits),
                ("reg", &g.reg_preds),
            ] {
                assert!(
                    h.iter().flatten().all(|x| x.is_finite()),
                    "|z| = {mag} {mode:?}: non-finite {name} gradient"
                );
            }
            // Every class gradient is bounded by max(α, 1−α) / (B · num_pos_b) ≤ 0.75 / 2.
            assert!(g.max_abs()[0] <= 0.375 + 1e-12);
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
fn max_abs_and_to_f32_follow_the_heads() {
    let b = small_case(1, 3);
    let (_, g) = grad::gradients(
        &LossConfig::new(3),
        &b.levels,
        &b.inputs(),
        &LossWeights::default(),
    )
    .unwrap();
    let m = g.max_abs();
    let f = g.to_f32();
    let (c, n, r) = (f.cls_logits, f.cnt_logits, f.reg_preds);
    for (mx, h32, h64) in [
        (m[0], &c, &g.cls_logits),
        (m[1], &n, &g.cnt_logits),
        (m[2], &r, &g.reg_preds),
    ] {
        assert!(mx > 0.0);
        let want = h64.iter().flatten().fold(0.0f64, |a, &x| a.max(x.abs()));
        assert_eq!(mx, want);
        assert_eq!(h32.len(), h64.len());
        for (a, b) in h32.iter().zip(h64) {
            assert_eq!(a.len(), b.len());
            assert!(a.iter().zip(b).all(|(&x, &y)| x == y as f32));
        }
    }
}
