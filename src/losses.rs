//! The result of a loss call, and the error measures that compare results.

use crate::config::{Denominators, LossConfig, Normalization};
use crate::input::Heads;

/// The raw per-image sums of a call (docs/contract.md §8), from which every
/// normalisation is computed: a caller can normalise them in any other way.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sums {
    /// `S_cls[b]`: the focal loss summed over the image's `P·C` elements.
    pub cls: Vec<f64>,
    /// `S_cnt[b]`: the centerness BCE summed over the image's positives.
    pub cnt: Vec<f64>,
    /// `S_reg[b]`: the box loss summed over the image's positives.
    pub reg: Vec<f64>,
    /// `S_regw[b]`: the box loss times the centerness target, summed over the positives.
    pub reg_w: Vec<f64>,
    /// `n[b]`: the image's positives.
    pub num_pos: Vec<u32>,
    /// `Z[b]`: the image's centerness targets summed over its positives.
    pub ctr: Vec<f64>,
}

impl Sums {
    /// Sums of `batch` images, all zero.
    pub fn zeros(batch: usize) -> Self {
        Sums {
            cls: vec![0.0; batch],
            cnt: vec![0.0; batch],
            reg: vec![0.0; batch],
            reg_w: vec![0.0; batch],
            num_pos: vec![0; batch],
            ctr: vec![0.0; batch],
        }
    }

    /// `Σ_b n_b` and `Σ_b Z_b`: what a replica contributes to the global denominators.
    pub fn totals(&self) -> (f64, f64) {
        (
            self.num_pos.iter().map(|&n| n as f64).sum(),
            self.ctr.iter().sum(),
        )
    }
}

/// Per-image and batch losses, as the notebook's `LOSS.forward` reports them, under
/// the configured normalisation, with the raw sums they come from.
///
/// GPU sums are accumulated in `f32` and widened; the CPU reference accumulates in
/// `f64`. Both normalise in `f64`.
#[derive(Debug, Clone, PartialEq)]
pub struct Losses {
    /// Classification (focal) loss per image, `S_cls[b] / max(n_b, 1)`, `[B]`
    /// (the notebook's per-image loss, whatever the normalisation).
    pub cls: Vec<f64>,
    /// Centerness (BCE) loss per image, `S_cnt[b] / max(n_b, 1)`, `[B]`.
    pub cnt: Vec<f64>,
    /// Box regression (IoU or GIoU) loss per image, `S_reg[b] / max(n_b, 1)`, or
    /// `S_regw[b] / max(Z_b, 1e-6)` with the box loss weighted by centerness, `[B]`.
    pub reg: Vec<f64>,
    /// Positive positions per image (before the `max(1, ·)` clamp), `[B]`.
    pub num_pos: Vec<u32>,
    /// The classification loss under the normalisation (`PerImage`: `mean_b cls[b]`).
    pub cls_loss: f64,
    /// The centerness loss under the normalisation.
    pub cnt_loss: f64,
    /// The box loss under the normalisation.
    pub reg_loss: f64,
    /// `cls_loss + cnt_loss + reg_loss`, or without `cnt_loss` when `add_centerness` is off.
    pub total: f64,
    /// The raw per-image sums.
    pub sums: Sums,
}

/// The floor of a centerness-target denominator (docs/contract.md §8).
pub const CTR_FLOOR: f64 = 1e-6;

impl Losses {
    /// The losses of `sums` under `config`'s normalisation, box-loss weighting and
    /// `add_centerness`. `global` replaces the denominators of
    /// [`Normalization::Global`] (those read from a device buffer); `None` takes the
    /// config's.
    pub fn from_sums(sums: Sums, config: &LossConfig, global: Option<Denominators>) -> Self {
        let weighted = config.centerness_weighted_reg;
        let per = |s: &[f64], d: &dyn Fn(usize) -> f64| -> Vec<f64> {
            s.iter().enumerate().map(|(b, x)| x / d(b)).collect()
        };
        let by_pos = |b: usize| sums.num_pos[b].max(1) as f64;
        let by_ctr = |b: usize| sums.ctr[b].max(CTR_FLOOR);
        let cls = per(&sums.cls, &by_pos);
        let cnt = per(&sums.cnt, &by_pos);
        let reg = if weighted {
            per(&sums.reg_w, &by_ctr)
        } else {
            per(&sums.reg, &by_pos)
        };
        let total = |v: &[f64]| v.iter().sum::<f64>();
        let reg_sum = total(if weighted { &sums.reg_w } else { &sums.reg });
        let (n, z) = sums.totals();
        let over = |num_pos: f64, ctr: f64| {
            let n = num_pos.max(1.0);
            let reg_den = if weighted { ctr.max(CTR_FLOOR) } else { n };
            (
                total(&sums.cls) / n,
                total(&sums.cnt) / n,
                reg_sum / reg_den,
            )
        };
        let mean = |v: &[f64]| total(v) / v.len().max(1) as f64;
        let (cls_loss, cnt_loss, reg_loss) = match config.normalization {
            Normalization::PerImage => (mean(&cls), mean(&cnt), mean(&reg)),
            Normalization::Batch => over(n, z),
            Normalization::Global(d) => {
                let d = global.unwrap_or(d);
                over(d.num_pos as f64, d.ctr as f64)
            }
        };
        let num_pos = sums.num_pos.clone();
        let per_image = [cls, cnt, reg];
        let losses = [cls_loss, cnt_loss, reg_loss];
        Self::assemble(per_image, num_pos, losses, config.add_centerness, sums)
    }

    /// The result of per-image losses and the three normalised losses: `total` is
    /// their sum, without `cnt_loss` when `add_centerness` is off.
    fn assemble(
        [cls, cnt, reg]: [Vec<f64>; 3],
        num_pos: Vec<u32>,
        [cls_loss, cnt_loss, reg_loss]: [f64; 3],
        add_centerness: bool,
        sums: Sums,
    ) -> Self {
        let total = if add_centerness {
            cls_loss + cnt_loss + reg_loss
        } else {
            cls_loss + reg_loss
        };
        Losses {
            cls,
            cnt,
            reg,
            num_pos,
            cls_loss,
            cnt_loss,
            reg_loss,
            total,
            sums,
        }
    }

    /// Per-image losses known without their sums (a case file's expected values,
    /// say), under the notebook's per-image normalisation: the means and total
    /// follow; `sums` is empty.
    pub fn from_per_image(
        cls: Vec<f64>,
        cnt: Vec<f64>,
        reg: Vec<f64>,
        num_pos: Vec<u32>,
        add_centerness: bool,
    ) -> Self {
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let losses = [mean(&cls), mean(&cnt), mean(&reg)];
        Self::assemble(
            [cls, cnt, reg],
            num_pos,
            losses,
            add_centerness,
            Sums::default(),
        )
    }

    /// Images in the batch.
    pub fn batch(&self) -> usize {
        self.cls.len()
    }

    /// The largest relative difference between two results over every per-image
    /// loss, the three normalised losses and every raw sum (`num_pos` is compared
    /// exactly by callers), measured as `|a - b| / max(|b|, abs_floor / rel_tol)`
    /// so that values near zero are held to an absolute bound instead. Sums are
    /// compared only where both results have them (a result built from expected
    /// per-image losses has none).
    pub fn max_rel_diff(&self, other: &Losses, rel_tol: f64, abs_floor: f64) -> f64 {
        let floor = abs_floor / rel_tol;
        let scalars = [
            (self.cls_loss, other.cls_loss),
            (self.cnt_loss, other.cnt_loss),
            (self.reg_loss, other.reg_loss),
        ];
        let (a, b) = (&self.sums, &other.sums);
        let with_sums = !a.cls.is_empty() && !b.cls.is_empty();
        let sums = [
            (&a.cls, &b.cls),
            (&a.cnt, &b.cnt),
            (&a.reg, &b.reg),
            (&a.reg_w, &b.reg_w),
            (&a.ctr, &b.ctr),
        ];
        [
            (&self.cls, &other.cls),
            (&self.cnt, &other.cnt),
            (&self.reg, &other.reg),
        ]
        .into_iter()
        .chain(sums.into_iter().filter(|_| with_sums))
        .flat_map(|(a, b)| a.iter().copied().zip(b.iter().copied()))
        .chain(scalars)
        .map(|(a, b)| {
            let d = (a - b).abs() / b.abs().max(floor);
            // NaN never passes a tolerance check.
            if d.is_nan() {
                f64::INFINITY
            } else {
                d
            }
        })
        .fold(0.0, f64::max)
    }
}

/// Gradients on the host, one vector per level of each head, in the input
/// layouts (NCHW): `cls_logits[l]` is `[B, C, H_l, W_l]`, `cnt_logits[l]`
/// `[B, 1, H_l, W_l]`, `reg_preds[l]` `[B, 4, H_l, W_l]`.
pub type Gradients = Heads<Vec<Vec<f32>>>;

/// The largest `|got - want|` over all levels of one head, relative to the largest
/// `|want|` of the whole head (every level): the gradient check of the CLI. Unlike
/// [`max_tensor_error`], a level whose gradients are all tiny (a few positives with
/// targets near their predictions) is measured against the head's scale, so f32
/// rounding there is not mistaken for an error. A NaN never passes.
pub fn max_head_error<A, B>(got: &[Vec<A>], want: &[Vec<B>]) -> f64
where
    A: Copy + Into<f64>,
    B: Copy + Into<f64>,
{
    if got.len() != want.len() || got.iter().zip(want).any(|(g, w)| g.len() != w.len()) {
        return f64::INFINITY;
    }
    scaled_error(got.iter().flatten().zip(want.iter().flatten()))
}

/// The largest `|got - want|` of each level tensor of one head, relative to that
/// tensor's largest `|want|` (docs/contract.md §4's tolerance for gradients: each element within
/// `1e-4` of the largest magnitude in its tensor), over all levels. A tensor whose
/// elements all match counts 0 (even when all zero); a NaN never passes.
pub fn max_tensor_error<A, B>(got: &[Vec<A>], want: &[Vec<B>]) -> f64
where
    A: Copy + Into<f64>,
    B: Copy + Into<f64>,
{
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    got.iter()
        .zip(want)
        .map(|(g, w)| {
            if g.len() != w.len() {
                return f64::INFINITY;
            }
            scaled_error(g.iter().zip(w))
        })
        .fold(0.0, f64::max)
}

/// The largest `|got - want|` of the pairs over their largest `|want|`, in one pass:
/// 0 when every pair matches (even all zero), infinite when a difference is NaN.
fn scaled_error<'a, A, B>(pairs: impl Iterator<Item = (&'a A, &'a B)>) -> f64
where
    A: Copy + Into<f64> + 'a,
    B: Copy + Into<f64> + 'a,
{
    let (scale, err) = pairs.fold((0.0f64, 0.0f64), |(scale, err), (&a, &b)| {
        let d = (a.into() - b.into()).abs();
        let err = if d.is_nan() {
            f64::INFINITY
        } else {
            err.max(d)
        };
        (scale.max(b.into().abs()), err)
    });
    if err == 0.0 {
        0.0
    } else {
        err / scale
    }
}
