//! The result of a loss call, and the error measures that compare results.

use crate::input::Heads;

/// Per-image and batch losses, as the notebook's `LOSS.forward` reports them.
///
/// GPU results are computed in `f32` and widened; the CPU reference accumulates in `f64`.
#[derive(Debug, Clone, PartialEq)]
pub struct Losses {
    /// Classification (focal) loss per image, `[B]`.
    pub cls: Vec<f64>,
    /// Centerness (BCE) loss per image, `[B]`.
    pub cnt: Vec<f64>,
    /// Box regression (IoU or GIoU) loss per image, `[B]`.
    pub reg: Vec<f64>,
    /// Positive positions per image (before the `max(1, ·)` clamp), `[B]`.
    pub num_pos: Vec<u32>,
    /// `mean_b cls[b]`.
    pub cls_loss: f64,
    /// `mean_b cnt[b]`.
    pub cnt_loss: f64,
    /// `mean_b reg[b]`.
    pub reg_loss: f64,
    /// `cls_loss + cnt_loss + reg_loss`, or without `cnt_loss` when `add_centerness` is off.
    pub total: f64,
}

impl Losses {
    /// Builds the batch means and total from per-image losses.
    pub fn from_per_image(
        cls: Vec<f64>,
        cnt: Vec<f64>,
        reg: Vec<f64>,
        num_pos: Vec<u32>,
        add_centerness: bool,
    ) -> Self {
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let (cls_loss, cnt_loss, reg_loss) = (mean(&cls), mean(&cnt), mean(&reg));
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
        }
    }

    /// Images in the batch.
    pub fn batch(&self) -> usize {
        self.cls.len()
    }

    /// The largest relative difference between two results over every per-image
    /// loss, measured as `|a - b| / max(|b|, abs_floor / rel_tol)` so that values
    /// near zero are held to an absolute bound instead.
    pub fn max_rel_diff(&self, other: &Losses, rel_tol: f64, abs_floor: f64) -> f64 {
        let floor = abs_floor / rel_tol;
        [
            (&self.cls, &other.cls),
            (&self.cnt, &other.cnt),
            (&self.reg, &other.reg),
        ]
        .iter()
        .flat_map(|(a, b)| a.iter().zip(b.iter()))
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
