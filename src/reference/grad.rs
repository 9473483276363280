//! The CPU twin of the backward pass: gradients of the weighted objective
//! `L = w.cls · cls_loss + w.cnt · cnt_loss + w.reg · reg_loss` (docs/contract.md §4) with
//! respect to the three heads, every term in `f64`.
//!
//! The derivative rules follow PyTorch autograd of the notebook's code (the golden
//! gradients came from it), with the stable log-sigmoid of docs/contract.md §3:
//!
//! - `torch.min` / `torch.minimum` / `torch.maximum` of two tensors send the
//!   gradient to the chosen argument and split it in halves at a tie;
//! - `clamp(min = m)` passes the gradient where its input is `>= m` (inclusive);
//! - the IoU clamp at `1e-6` therefore passes nothing where `iou < 1e-6`;
//! - a zero union gives `iou = 0` in the forward pass (PyTorch: NaN), and no
//!   gradient flows through the `iou` term there.
//!
//! [`losses_f64`] is the forward pass of [`super::losses`] on `f64` heads (the same
//! element functions, the same summation order), so the gradients can be checked
//! against central finite differences without rounding the perturbed inputs to `f32`.

use super::{sigmoid, softplus};
use crate::config::{LossConfig, LossWeights, RegLoss};
use crate::error::FcosError;
use crate::input::{Element, Heads};
use crate::inputs::Inputs;
use crate::layout::Levels;
use crate::losses::{Gradients, Losses, Sums};

/// The three heads (or their gradients) in `f64`, one vector per level, in the
/// input layouts (NCHW per level): the point at which [`losses_f64`] and
/// [`gradients_f64`] evaluate (the targets stay in [`Inputs`]), and the gradients
/// they return.
pub type F64Heads = Heads<Vec<Vec<f64>>>;

/// The heads of `inputs`, widened exactly to `f64`.
pub fn widen<T: Element>(inputs: &Inputs<T>) -> F64Heads {
    Heads::from_fn(|h| {
        inputs
            .head(h)
            .iter()
            .map(|v| v.iter().map(|&x| x.widen() as f64).collect())
            .collect()
    })
}

/// `f64` gradients rounded to `f32`, as a case file's `expected.grad.*` holds them.
pub fn narrow(g: &F64Heads) -> Gradients {
    g.as_ref().map(|_, levels| {
        levels
            .iter()
            .map(|v| v.iter().map(|&x| x as f32).collect())
            .collect()
    })
}

/// Checks that every level of `heads` has the length of the same head of `inputs`.
fn check_against<T: Element>(heads: &F64Heads, inputs: &Inputs<T>) -> Result<(), FcosError> {
    for (h, mine) in heads.iter() {
        let theirs = inputs.head(h);
        if mine.len() != theirs.len() {
            return Err(FcosError::shape(
                format!("{h} (f64)"),
                format!("{} levels", theirs.len()),
                format!("{} levels", mine.len()),
            ));
        }
        for (l, (a, b)) in mine.iter().zip(theirs.iter()).enumerate() {
            if a.len() != b.len() {
                return Err(FcosError::shape(
                    format!("{h}.{l} (f64)"),
                    format!("{} elements", b.len()),
                    format!("{} elements", a.len()),
                ));
            }
        }
    }
    Ok(())
}

/// `d FL / d z` of the sigmoid focal loss [`focal`] of one logit `z` against a
/// binary target (docs/contract.md §4), with `σ = σ(z)`:
///
/// - `positive`: `α (1−σ)^γ (γ σ log σ − (1−σ))`
/// - otherwise:  `(1−α) σ^γ (σ − γ (1−σ) log(1−σ))`
///
/// using `log σ = −softplus(−z)`, `log(1−σ) = −softplus(z)`; `γ = 2` squares by a
/// product. Finite for every non-NaN `z`, infinities included.
pub fn focal_grad(z: f64, positive: bool, gamma: f64, alpha: f64) -> f64 {
    // `q` is 1 − pt, `s` is pt, `nl` is −log(pt); d(pt)/dz = s·q for a positive and
    // −s·q for a negative, so dFL/dz = ±w q^γ (−γ s nl − q).
    let (q, s, nl, w) = if positive {
        (sigmoid(-z), sigmoid(z), softplus(-z), alpha)
    } else {
        (sigmoid(z), sigmoid(-z), softplus(z), 1.0 - alpha)
    };
    let m = if gamma == 2.0 { q * q } else { q.powf(gamma) };
    // s · (−log s): zero where s underflows (keeps 0 · ∞ out at infinite logits).
    let s_nl = if s == 0.0 { 0.0 } else { s * nl };
    // Positive: dFL/dz = w q^γ (−γ s nl − q); negative: the same with the sign flipped.
    let g = w * m * (-gamma * s_nl - q);
    if positive {
        g
    } else {
        -g
    }
}

/// `d BCE / d x` of [`bce_with_logits`]: `σ(x) − y`.
pub fn bce_grad(x: f64, y: f64) -> f64 {
    sigmoid(x) - y
}

/// Weight of `a` in the gradient of `torch.minimum(a, b)`: 1, ½ at a tie, else 0.
fn min_share(a: f64, b: f64) -> f64 {
    if a < b {
        1.0
    } else if a == b {
        0.5
    } else {
        0.0
    }
}

/// Weight of `a` in the gradient of `torch.maximum(a, b)`: 1, ½ at a tie, else 0.
fn max_share(a: f64, b: f64) -> f64 {
    min_share(b, a)
}

/// Gradient of `clamp(x, min = 0)`: passes where `x >= 0`.
fn clamp0_pass(x: f64) -> f64 {
    if x >= 0.0 {
        1.0
    } else {
        0.0
    }
}

/// `d loss / d p` of [`box_loss`] of ltrb prediction `p` against ltrb target `t`.
///
/// `min`/`max` follow `torch.minimum`/`torch.maximum` (the chosen argument gets the
/// gradient, a tie splits it in halves), `clamp(min = 0)` passes where its input is
/// `>= 0`, IoU's `max(iou, 1e-6)` passes nothing where `iou < 1e-6`, GIoU's
/// `max(enclose, 1e-10)` passes where `enclose >= 1e-10`, and a zero union (where the
/// forward pass sets `iou = 0`) passes nothing through the `iou` term. Always finite
/// for finite inputs.
pub fn box_loss_grad(p: [f64; 4], t: [f64; 4], mode: RegLoss) -> [f64; 4] {
    // Forward, as in `box_terms`, keeping the pieces.
    let mn: [f64; 4] = std::array::from_fn(|k| p[k].min(t[k]));
    let w_raw = mn[0] + mn[2];
    let h_raw = mn[1] + mn[3];
    let (iw, ih) = (w_raw.max(0.0), h_raw.max(0.0));
    let inter = iw * ih;
    let (pw, ph) = (p[0] + p[2], p[1] + p[3]);
    let ap = pw * ph;
    let at = (t[0] + t[2]) * (t[1] + t[3]);
    let union = ap + at - inter;
    let iou = if union != 0.0 { inter / union } else { 0.0 };

    // Upstream: d loss / d iou, then d loss / d inter (direct), d loss / d union,
    // d loss / d enclose.
    let mut d_iou = 0.0;
    let mut d_union = 0.0;
    let mut d_enclose = 0.0;
    let mut enclose_parts = None;
    match mode {
        RegLoss::Iou => {
            if union != 0.0 && iou >= 1e-6 {
                d_iou = -1.0 / iou;
            }
        }
        RegLoss::Giou => {
            // loss = 1 − iou + (enclose − union) / max(enclose, 1e-10)
            if union != 0.0 {
                d_iou = -1.0;
            }
            let mx: [f64; 4] = std::array::from_fn(|k| p[k].max(t[k]));
            let ew_raw = mx[0] + mx[2];
            let eh_raw = mx[1] + mx[3];
            let (ew, eh) = (ew_raw.max(0.0), eh_raw.max(0.0));
            let enclose = ew * eh;
            let den = enclose.max(1e-10);
            d_union -= 1.0 / den;
            d_enclose = 1.0 / den;
            if enclose >= 1e-10 {
                d_enclose -= (enclose - union) / (den * den);
            }
            enclose_parts = Some((ew_raw, eh_raw, ew, eh));
        }
    }
    let mut d_inter = 0.0;
    if union != 0.0 && d_iou != 0.0 {
        d_inter += d_iou / union;
        d_union -= d_iou * inter / (union * union);
    }
    // union = ap + at − inter
    d_inter -= d_union;
    let d_ap = d_union;

    let mut g = [0.0f64; 4];
    // inter = clamp(w_raw, 0) · clamp(h_raw, 0), w_raw = min(p0, t0) + min(p2, t2), ...
    let d_w = d_inter * ih * clamp0_pass(w_raw);
    let d_h = d_inter * iw * clamp0_pass(h_raw);
    for k in [0, 2] {
        g[k] += d_w * min_share(p[k], t[k]) + d_ap * ph;
    }
    for k in [1, 3] {
        g[k] += d_h * min_share(p[k], t[k]) + d_ap * pw;
    }
    if let Some((ew_raw, eh_raw, ew, eh)) = enclose_parts {
        let d_ew = d_enclose * eh * clamp0_pass(ew_raw);
        let d_eh = d_enclose * ew * clamp0_pass(eh_raw);
        for k in [0, 2] {
            g[k] += d_ew * max_share(p[k], t[k]);
        }
        for k in [1, 3] {
            g[k] += d_eh * max_share(p[k], t[k]);
        }
    }
    g
}

/// The weighted objective of docs/contract.md §4: `w.cls · cls_loss + w.cnt · cnt_loss + w.reg · reg_loss`
/// (independent of `add_centerness`: the weights say what enters).
pub fn objective(losses: &Losses, weights: &LossWeights) -> f64 {
    weights.cls as f64 * losses.cls_loss
        + weights.cnt as f64 * losses.cnt_loss
        + weights.reg as f64 * losses.reg_loss
}

/// [`super::losses`] evaluated at `f64` heads (`inputs` gives the shapes and the
/// targets; its heads are ignored). The same accumulation, so at `widen(inputs)`
/// it returns exactly what [`super::losses`] does.
pub fn losses_f64<T: Element>(
    config: &LossConfig,
    levels: &Levels,
    inputs: &Inputs<T>,
    heads: &F64Heads,
) -> Result<Losses, FcosError> {
    config.validate()?;
    inputs.check_shapes(levels, config.num_classes as usize)?;
    check_against(heads, inputs)?;
    let sums = super::sums_with(config, levels, inputs, |h, l, i| heads[h][l][i]);
    Ok(Losses::from_sums(sums, config, None))
}

/// The gradients of the weighted objective at `f64` heads (shapes and targets from
/// `inputs`). Assumes the shapes were checked.
fn grads_at<T: Element>(
    config: &LossConfig,
    levels: &Levels,
    inputs: &Inputs<T>,
    heads: &F64Heads,
    weights: &LossWeights,
    sums: &Sums,
) -> F64Heads {
    let c_n = config.num_classes as usize;
    let b_n = inputs.batch;
    let p_n = levels.positions();
    let (gamma, alpha) = (config.gamma as f64, config.alpha as f64);
    let mut g = F64Heads::zeros(levels, b_n, c_n);
    let scales = super::gradient_scales(config, weights, sums, None);
    for (b, &[f_cls, f_cnt, f_reg]) in scales.iter().enumerate() {
        for (l, &off) in levels.offsets().iter().enumerate() {
            for pix in 0..levels.level_size(l) {
                let bp = b * p_n + off as usize + pix;
                let tcls = inputs.cls_targets[bp];
                for c in 0..c_n {
                    let i = levels.nchw_index(l, c_n, b, c, pix);
                    let t = tcls == (c + 1) as f32;
                    g.cls_logits[l][i] =
                        f_cls * focal_grad(heads.cls_logits[l][i], t, gamma, alpha);
                }
                let ct = inputs.cnt_targets[bp];
                if ct > -1.0 {
                    let i = levels.nchw_index(l, 1, b, 0, pix);
                    g.cnt_logits[l][i] = f_cnt * bce_grad(heads.cnt_logits[l][i], ct as f64);
                    let idx: [usize; 4] =
                        std::array::from_fn(|k| levels.nchw_index(l, 4, b, k, pix));
                    let pr: [f64; 4] = std::array::from_fn(|k| heads.reg_preds[l][idx[k]]);
                    let tg: [f64; 4] =
                        std::array::from_fn(|k| inputs.reg_targets[bp * 4 + k] as f64);
                    let d = box_loss_grad(pr, tg, config.reg_loss);
                    // Weighted by centerness: each positive's box loss times its target.
                    let f = if config.centerness_weighted_reg {
                        f_reg * ct as f64
                    } else {
                        f_reg
                    };
                    for k in 0..4 {
                        g.reg_preds[l][idx[k]] = f * d[k];
                    }
                }
            }
        }
    }
    g
}

/// The forward losses ([`super::losses`]) and the gradients of
/// `L = w.cls · cls_loss + w.cnt · cnt_loss + w.reg · reg_loss` with respect to the
/// three heads, all in `f64`.
///
/// Each element's gradient is `w / (B · max(1, num_pos_b))` times the element
/// derivative ([`focal_grad`], [`bce_grad`], [`box_loss_grad`]); centerness and box
/// gradients are zero off the positives (`cnt_target <= -1`), class gradients cover
/// every position. Errors: the config, shape and weight checks.
pub fn gradients<T: Element>(
    config: &LossConfig,
    levels: &Levels,
    inputs: &Inputs<T>,
    weights: &LossWeights,
) -> Result<(Losses, F64Heads), FcosError> {
    weights.check()?;
    let losses = super::losses(config, levels, inputs)?;
    let heads = widen(inputs);
    let grads = grads_at(config, levels, inputs, &heads, weights, &losses.sums);
    Ok((losses, grads))
}

/// [`gradients`] at `f64` heads: the forward pass is [`losses_f64`] and the
/// gradients are taken at `heads` (shapes and targets from `inputs`).
pub fn gradients_f64<T: Element>(
    config: &LossConfig,
    levels: &Levels,
    inputs: &Inputs<T>,
    heads: &F64Heads,
    weights: &LossWeights,
) -> Result<(Losses, F64Heads), FcosError> {
    weights.check()?;
    let losses = losses_f64(config, levels, inputs, heads)?;
    let grads = grads_at(config, levels, inputs, heads, weights, &losses.sums);
    Ok((losses, grads))
}

#[cfg(test)]
mod tests {
    use super::super::{bce_with_logits, box_loss, focal};
    use super::*;

    /// Central difference of `f` at `x`.
    fn fd(f: impl Fn(f64) -> f64, x: f64) -> f64 {
        let h = 1e-6 * x.abs().max(1.0);
        (f(x + h) - f(x - h)) / (2.0 * h)
    }

    #[test]
    fn focal_grad_is_the_derivative_of_focal() {
        for &gamma in &[2.0, 0.0, 0.5, 1.5, 3.0] {
            for &alpha in &[0.25, 0.6] {
                for &z in &[-9.0, -3.0, -0.4, 0.0, 0.3, 2.0, 7.5] {
                    for &t in &[true, false] {
                        let g = focal_grad(z, t, gamma, alpha);
                        let n = fd(|z| focal(z, t, gamma, alpha), z);
                        assert!(
                            (g - n).abs() <= 1e-7 * g.abs().max(1e-3),
                            "γ {gamma} α {alpha} z {z} t {t}: {g} vs {n}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn focal_grad_matches_the_closed_forms() {
        let (gamma, alpha) = (2.0, 0.25);
        for &z in &[-6.0, -1.0, 0.0, 1.2, 6.0f64] {
            let s = 1.0 / (1.0 + (-z).exp());
            let pos = alpha * (1.0 - s).powi(2) * (gamma * s * s.ln() - (1.0 - s));
            let neg = (1.0 - alpha) * s.powi(2) * (s - gamma * (1.0 - s) * (1.0 - s).ln());
            assert!((focal_grad(z, true, gamma, alpha) - pos).abs() < 1e-12);
            assert!((focal_grad(z, false, gamma, alpha) - neg).abs() < 1e-12);
        }
    }

    #[test]
    fn focal_grad_is_finite_everywhere() {
        for &z in &[f64::NEG_INFINITY, -1e300, -50.0, 50.0, 1e300, f64::INFINITY] {
            for &t in &[true, false] {
                assert!(focal_grad(z, t, 2.0, 0.25).is_finite(), "z {z} t {t}");
                assert!(focal_grad(z, t, 0.5, 0.25).is_finite(), "z {z} t {t}");
            }
        }
        assert!((focal_grad(-50.0, true, 2.0, 0.25) + 0.25).abs() < 1e-12);
        assert!((focal_grad(50.0, false, 2.0, 0.25) - 0.75).abs() < 1e-12);
    }

    #[test]
    fn bce_grad_is_the_derivative_of_bce() {
        for &x in &[-7.0, -0.5, 0.0, 0.8, 6.0] {
            for &y in &[0.0, 0.3, 1.0] {
                let n = fd(|x| bce_with_logits(x, y), x);
                assert!((bce_grad(x, y) - n).abs() < 1e-8);
            }
        }
    }

    #[test]
    fn box_grad_is_the_derivative_of_box_loss() {
        let cases = [
            ([3.0, 4.0, 5.0, 6.0], [3.5, 3.1, 4.2, 7.0]),
            ([10.0, 2.0, 1.0, 8.0], [4.0, 6.0, 9.0, 2.5]),
            ([0.5, 0.7, 0.2, 0.9], [20.0, 30.0, 25.0, 15.0]),
        ];
        for mode in [RegLoss::Iou, RegLoss::Giou] {
            for (p, t) in cases {
                let g = box_loss_grad(p, t, mode);
                for k in 0..4 {
                    let n = fd(
                        |x| {
                            let mut q = p;
                            q[k] = x;
                            box_loss(q, t, mode)
                        },
                        p[k],
                    );
                    assert!(
                        (g[k] - n).abs() <= 1e-6 * g[k].abs().max(1e-3),
                        "{mode:?} {p:?} {t:?} k {k}: {} vs {n}",
                        g[k]
                    );
                }
            }
        }
    }

    #[test]
    fn box_grad_ties_split_and_clamps_block() {
        // Identical boxes: every min and max ties; IoU loss is −log(1) with gradient
        // from the area terms only through the halves.
        let b = [3.0, 4.0, 5.0, 6.0];
        for mode in [RegLoss::Iou, RegLoss::Giou] {
            let g = box_loss_grad(b, b, mode);
            assert!(g.iter().all(|x| x.is_finite()), "{mode:?} {g:?}");
        }
        // Disjoint (negative-width) intersection: iou = 0 < 1e-6, no IoU gradient.
        let g = box_loss_grad([-5.0, 1.0, -1.0, 1.0], [1.0, 1.0, 1.0, 1.0], RegLoss::Iou);
        assert_eq!(g, [0.0; 4]);
        // Zero union: finite everywhere.
        for mode in [RegLoss::Iou, RegLoss::Giou] {
            let g = box_loss_grad([0.0; 4], [0.0; 4], mode);
            assert!(g.iter().all(|x| x.is_finite()), "{mode:?} {g:?}");
        }
    }
}
