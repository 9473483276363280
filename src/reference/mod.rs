//! The CPU twin of the shaders: the notebook's maths (docs/contract.md §2) with the stable
//! log-sigmoid of docs/contract.md §3, every term in `f64` and every sum accumulated in `f64`.
//! It is the oracle every GPU result is held to.

pub mod assign;
pub mod grad;

pub use assign::assign_targets;

use crate::config::{Denominators, LossConfig, LossWeights, Normalization, RegLoss};
use crate::error::FcosError;
use crate::input::{Element, Head};
use crate::inputs::Inputs;
use crate::layout::Levels;
use crate::losses::{Losses, Sums, CTR_FLOOR};

/// `softplus(u) = max(u, 0) + log(1 + exp(-|u|))`, finite for every finite `u`.
pub fn softplus(u: f64) -> f64 {
    u.max(0.0) + (-u.abs()).exp().ln_1p()
}

/// `σ(z)`, computed without cancellation for either sign of `z`.
pub fn sigmoid(z: f64) -> f64 {
    let e = (-z.abs()).exp();
    if z >= 0.0 {
        1.0 / (1.0 + e)
    } else {
        e / (1.0 + e)
    }
}

/// Sigmoid focal loss of one logit `z` against a binary target:
/// `-w (1 - pt)^γ log(pt)` with `log σ(z) = -softplus(-z)`, `log(1 - σ(z)) = -softplus(z)`.
pub fn focal(z: f64, target: bool, gamma: f64, alpha: f64) -> f64 {
    // `q` is 1 - pt, `nl` is -log(pt).
    let (q, nl, w) = if target {
        (sigmoid(-z), softplus(-z), alpha)
    } else {
        (sigmoid(z), softplus(z), 1.0 - alpha)
    };
    let m = if gamma == 2.0 { q * q } else { q.powf(gamma) };
    w * m * nl
}

/// `binary_cross_entropy_with_logits(x, y)` for one element.
pub fn bce_with_logits(x: f64, y: f64) -> f64 {
    x.max(0.0) - x * y + (-x.abs()).exp().ln_1p()
}

/// The intermediate quantities of the box loss (shared by the loss and its gradient).
#[derive(Debug, Clone, Copy)]
pub struct BoxTerms {
    /// Intersection area.
    pub inter: f64,
    /// Union area.
    pub union: f64,
    /// `inter / union`, or 0 where the union is 0 (PyTorch gives NaN there).
    pub iou: f64,
    /// Area of the enclosing box (GIoU).
    pub enclose: f64,
}

/// Box terms of ltrb prediction `p` against ltrb target `t`.
pub fn box_terms(p: [f64; 4], t: [f64; 4]) -> BoxTerms {
    let iw = (p[0].min(t[0]) + p[2].min(t[2])).max(0.0);
    let ih = (p[1].min(t[1]) + p[3].min(t[3])).max(0.0);
    let inter = iw * ih;
    let ap = (p[0] + p[2]) * (p[1] + p[3]);
    let at = (t[0] + t[2]) * (t[1] + t[3]);
    let union = ap + at - inter;
    let iou = if union != 0.0 { inter / union } else { 0.0 };
    let ew = (p[0].max(t[0]) + p[2].max(t[2])).max(0.0);
    let eh = (p[1].max(t[1]) + p[3].max(t[3])).max(0.0);
    BoxTerms {
        inter,
        union,
        iou,
        enclose: ew * eh,
    }
}

/// IoU loss `-log(max(iou, 1e-6))` or GIoU loss `1 - giou` of one box pair.
pub fn box_loss(p: [f64; 4], t: [f64; 4], mode: RegLoss) -> f64 {
    let bt = box_terms(p, t);
    match mode {
        RegLoss::Iou => -bt.iou.max(1e-6).ln(),
        RegLoss::Giou => {
            let giou = bt.iou - (bt.enclose - bt.union) / bt.enclose.max(1e-10);
            1.0 - giou
        }
    }
}

/// The raw per-image sums of docs/contract.md §8, every term and sum in `f64`,
/// reading the heads through `head(h, l, i)` (element `i` of level `l` of head
/// `h`); the targets come from `inputs`. Assumes the shapes were checked.
pub(crate) fn sums_with<T: Element>(
    config: &LossConfig,
    levels: &Levels,
    inputs: &Inputs<T>,
    head: impl Fn(Head, usize, usize) -> f64,
) -> Sums {
    let c_n = config.num_classes as usize;
    let p_n = levels.positions();
    let (gamma, alpha) = (config.gamma as f64, config.alpha as f64);
    let mut s = Sums::zeros(inputs.batch);
    for b in 0..inputs.batch {
        for (l, &off) in levels.offsets().iter().enumerate() {
            for pix in 0..levels.level_size(l) {
                let bp = b * p_n + off as usize + pix;
                let tcls = inputs.cls_targets[bp];
                for c in 0..c_n {
                    let z = head(Head::ClsLogits, l, levels.nchw_index(l, c_n, b, c, pix));
                    // The notebook's one-hot: float compare of the target with c + 1.
                    s.cls[b] += focal(z, tcls == (c + 1) as f32, gamma, alpha);
                }
                let ct = inputs.cnt_targets[bp];
                if ct > -1.0 {
                    s.num_pos[b] += 1;
                    s.ctr[b] += ct as f64;
                    let x = head(Head::CntLogits, l, levels.nchw_index(l, 1, b, 0, pix));
                    s.cnt[b] += bce_with_logits(x, ct as f64);
                    let pr: [f64; 4] = std::array::from_fn(|k| {
                        head(Head::RegPreds, l, levels.nchw_index(l, 4, b, k, pix))
                    });
                    let tg: [f64; 4] =
                        std::array::from_fn(|k| inputs.reg_targets[bp * 4 + k] as f64);
                    let loss = box_loss(pr, tg, config.reg_loss);
                    s.reg[b] += loss;
                    s.reg_w[b] += ct as f64 * loss;
                }
            }
        }
    }
    s
}

/// Computes the loss of one batch on the CPU (docs/contract.md §2, normalised as
/// §8 and the config say), checking shapes first.
pub fn losses<T: Element>(
    config: &LossConfig,
    levels: &Levels,
    inputs: &Inputs<T>,
) -> Result<Losses, FcosError> {
    config.validate()?;
    inputs.check_shapes(levels, config.num_classes as usize)?;
    let sums = sums_with(config, levels, inputs, |h, l, i| {
        inputs.head(h)[l][i].widen() as f64
    });
    Ok(Losses::from_sums(sums, config, None))
}

/// Each image's factor on the element derivatives of the weighted objective
/// `w.cls · cls_loss + w.cnt · cnt_loss + w.reg · reg_loss` (docs/contract.md §8):
/// `[cls, cnt, reg]`, each its weight over its denominator under the config's
/// normalisation (`global` replaces the denominators of `Global`). With the box
/// loss weighted by centerness the box factor is still to be multiplied by each
/// positive's centerness target.
pub fn gradient_scales(
    config: &LossConfig,
    weights: &LossWeights,
    sums: &Sums,
    global: Option<Denominators>,
) -> Vec<[f64; 3]> {
    let b_n = sums.num_pos.len();
    let weighted = config.centerness_weighted_reg;
    let (n_all, z_all) = sums.totals();
    let w = [weights.cls as f64, weights.cnt as f64, weights.reg as f64];
    (0..b_n)
        .map(|b| {
            // (positives, centerness) denominators of this image's terms.
            let (n, z) = match config.normalization {
                Normalization::PerImage => (
                    b_n as f64 * sums.num_pos[b].max(1) as f64,
                    b_n as f64 * sums.ctr[b].max(CTR_FLOOR),
                ),
                Normalization::Batch => (n_all.max(1.0), z_all.max(CTR_FLOOR)),
                Normalization::Global(d) => {
                    let d = global.unwrap_or(d);
                    ((d.num_pos as f64).max(1.0), (d.ctr as f64).max(CTR_FLOOR))
                }
            };
            [w[0] / n, w[1] / n, w[2] / if weighted { z } else { n }]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn focal_matches_the_naive_formula_where_finite() {
        for &z in &[-8.0, -2.0, -0.3, 0.0, 0.7, 3.0, 9.0] {
            let s = 1.0 / (1.0 + f64::exp(-z));
            let pos = -0.25 * (1.0 - s).powi(2) * s.ln();
            let neg = -0.75 * s.powi(2) * (1.0 - s).ln();
            assert!((focal(z, true, 2.0, 0.25) - pos).abs() < 1e-12 * (1.0 + pos));
            assert!((focal(z, false, 2.0, 0.25) - neg).abs() < 1e-12 * (1.0 + neg));
        }
    }

    #[test]
    fn focal_is_finite_at_extreme_logits() {
        for &z in &[-1e4, -50.0, 50.0, 1e4] {
            assert!(focal(z, true, 2.0, 0.25).is_finite());
            assert!(focal(z, false, 2.0, 0.25).is_finite());
        }
        // A confident wrong positive costs about alpha * |z|.
        assert!((focal(-50.0, true, 2.0, 0.25) - 12.5).abs() < 1e-9);
    }

    #[test]
    fn identical_boxes_cost_nothing() {
        let b = [3.0, 4.0, 5.0, 6.0];
        assert!(box_loss(b, b, RegLoss::Iou).abs() < 1e-12);
        assert!(box_loss(b, b, RegLoss::Giou).abs() < 1e-12);
    }
}
