//! Deterministic synthetic batches (the demo's default batch, benches, tests).

use crate::batch::Batch;
use crate::error::FcosError;
use crate::layout::Levels;

/// A small, fast, seedable generator (SplitMix64) so that batches are the same on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x853c_49e6_748f_ea9b)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Integer in `lo..=hi` (the bounds in either order), uniform up to the modulo
    /// bias of a 64-bit draw.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
        match (hi - lo).checked_add(1) {
            Some(span) => lo + self.next_u64() % span,
            // lo = 0 and hi = u64::MAX: every value.
            None => self.next_u64(),
        }
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// How to draw a synthetic batch.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticSpec {
    /// Images, `B`.
    pub batch: usize,
    /// Classes, `C`.
    pub classes: usize,
    /// Fraction of positions that are positive, per image (cycled over the batch).
    pub pos_frac: Vec<f64>,
    /// Class logits are `N(0, 1) · logit_scale + logit_shift` (the prior `-4.6` ≈ `logit(0.01)`).
    pub logit_scale: f64,
    /// See `logit_scale`.
    pub logit_shift: f64,
    /// Seed of the generator.
    pub seed: u64,
}

impl SyntheticSpec {
    /// Realistic defaults for `B` images and `C` classes: logits around the FCOS prior, 1.5 % positives.
    pub fn new(batch: usize, classes: usize) -> Self {
        SyntheticSpec {
            batch,
            classes,
            pos_frac: vec![0.015],
            logit_scale: 1.5,
            logit_shift: -4.6,
            seed: 0,
        }
    }
}

/// Draws a batch in the style of `bench/peers/gen_case.py`: logits around the
/// prior, positives with a random class and centerness, box targets scaled by the
/// level's stride and predictions near them. `strides` scale the boxes (cycled if
/// shorter than the levels).
pub fn generate(
    levels: &Levels,
    strides: &[u32],
    spec: &SyntheticSpec,
) -> Result<Batch, FcosError> {
    if spec.batch == 0 || spec.classes == 0 {
        return Err(FcosError::InvalidConfig(format!(
            "synthetic batch needs B >= 1 and C >= 1, got B = {}, C = {}",
            spec.batch, spec.classes
        )));
    }
    crate::inputs::check_extent(levels, spec.batch, spec.classes)?;
    let mut rng = Rng::new(spec.seed);
    let mut batch = draw_logits(levels, spec, &mut rng)?;
    draw_boxes(&mut batch, strides, spec, &mut rng);
    Ok(batch)
}

/// The batch with its class and centerness logits drawn level by level, the box
/// predictions zero and the targets all negative (`0`, `-1`, `-1`).
fn draw_logits(levels: &Levels, spec: &SyntheticSpec, rng: &mut Rng) -> Result<Batch, FcosError> {
    let (b_n, c_n, p_n) = (spec.batch, spec.classes, levels.positions());
    let mut cls_logits = Vec::with_capacity(levels.len());
    let mut cnt_logits = Vec::with_capacity(levels.len());
    let mut reg_preds = Vec::with_capacity(levels.len());
    for l in 0..levels.len() {
        let n = levels.level_len(l, b_n, c_n);
        let mut v = alloc("cls_logits", n)?;
        v.extend((0..n).map(|_| (rng.normal() * spec.logit_scale + spec.logit_shift) as f32));
        cls_logits.push(v);
        let n = levels.level_len(l, b_n, 1);
        let mut v = alloc("cnt_logits", n)?;
        v.extend((0..n).map(|_| rng.normal() as f32));
        cnt_logits.push(v);
        reg_preds.push(filled("reg_preds", levels.level_len(l, b_n, 4), 0.0)?);
    }
    Ok(Batch {
        levels: levels.clone(),
        batch: b_n,
        classes: c_n,
        cls_logits,
        cnt_logits,
        reg_preds,
        cls_targets: filled("cls_targets", b_n * p_n, 0.0)?,
        cnt_targets: filled("cnt_targets", b_n * p_n, -1.0)?,
        reg_targets: filled("reg_targets", b_n * p_n * 4, -1.0)?,
    })
}

/// Draws every position's box (scaled by its level's stride) and a prediction near
/// it, and makes a fraction of the positions positive with that box as target.
fn draw_boxes(batch: &mut Batch, strides: &[u32], spec: &SyntheticSpec, rng: &mut Rng) {
    let levels = batch.levels.clone();
    let (c_n, p_n) = (batch.classes, levels.positions());
    let stride = |l: usize| -> f64 {
        if strides.is_empty() {
            8.0 * (1u64 << l.min(20)) as f64
        } else {
            strides[l % strides.len()] as f64
        }
    };
    for b in 0..batch.batch {
        let frac = if spec.pos_frac.is_empty() {
            0.0
        } else {
            spec.pos_frac[b % spec.pos_frac.len()]
        };
        // Positions in flattened order: level by level, y·W + x within a level.
        let positions = (0..levels.len())
            .flat_map(|l| (0..levels.level_size(l)).map(move |pix| (l, pix)))
            .enumerate();
        for (p, (l, pix)) in positions {
            let bp = b * p_n + p;
            let pos = rng.uniform() < frac;
            let s = stride(l);
            let mut tgt = [0f64; 4];
            for t in tgt.iter_mut() {
                *t = (rng.normal() * 0.5).exp() * s * 2.0;
            }
            for (k, &t) in tgt.iter().enumerate() {
                let pred = t * (rng.normal() * 0.4).exp();
                batch.reg_preds[l][levels.nchw_index(l, 4, b, k, pix)] = pred as f32;
            }
            if pos {
                batch.cls_targets[bp] = rng.range(1, c_n as u64) as f32;
                batch.cnt_targets[bp] = rng.uniform() as f32;
                for (out, &t) in batch.reg_targets[bp * 4..bp * 4 + 4].iter_mut().zip(&tgt) {
                    *out = t as f32;
                }
            }
        }
    }
}

/// A vector of `n` copies of `x`, or a [`FcosError::Limit`] naming the tensor.
fn filled(name: &str, n: usize, x: f32) -> Result<Vec<f32>, FcosError> {
    let mut v = alloc(name, n)?;
    v.resize(n, x);
    Ok(v)
}

/// An empty vector with room for exactly `n` floats, or a [`FcosError::Limit`]
/// naming the tensor when the host cannot allocate it (instead of aborting).
fn alloc(name: &str, n: usize) -> Result<Vec<f32>, FcosError> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|e| {
        FcosError::Limit(format!(
            "the synthetic {name} ({n} floats, {} bytes) cannot be allocated on the host: {e}",
            n.saturating_mul(4)
        ))
    })?;
    Ok(v)
}

/// The demo's default batch: COCO-shaped, `B = 8`, `C = 80`, an `800 × 1024` image, strides 8..128.
pub fn coco_default() -> Result<Batch, FcosError> {
    let strides = [8, 16, 32, 64, 128];
    let levels = Levels::from_image(800, 1024, &strides)?;
    generate(&levels, &strides, &SyntheticSpec::new(8, 80))
}

/// Ground-truth boxes drawn as the project's peer script `gen_targets.random_boxes`
/// draws them (its distribution, not its bits): sizes log-uniform from 3 to about
/// 1,500 pixels so that every level gets some, centres uniform over the `h × w`
/// image, half the boxes snapped to whole pixels, corners clamped into the image,
/// 5 % exact duplicates of the previous row with another class (ties), 20 %
/// padding rows (`-1` box and class).
#[derive(Debug, Clone, PartialEq)]
pub struct RandomBoxes {
    /// Rows per image `M`.
    pub boxes_per_image: usize,
    /// `[B, M, 4]`.
    pub boxes: Vec<f32>,
    /// `[B, M]`, `1..=C` or `-1`.
    pub classes: Vec<i64>,
}

impl RandomBoxes {
    /// Draws `m` rows for each of `batch` images of `h × w` pixels.
    pub fn draw(batch: usize, m: usize, h: u32, w: u32, classes: u32, seed: u64) -> Self {
        let mut rng = Rng::new(seed ^ 0x6a09_e667_f3bc_c908);
        let (hf, wf) = (h as f64, w as f64);
        let mut boxes = Vec::with_capacity(batch * m * 4);
        let mut cls = Vec::with_capacity(batch * m);
        for _ in 0..batch {
            let mut prev = [0.0f32; 4];
            for j in 0..m {
                let sw = (rng.uniform() * 6.2).exp() * 3.0;
                let sh = (rng.uniform() * 6.2).exp() * 3.0;
                let cx = rng.uniform() * wf;
                let cy = rng.uniform() * hf;
                let mut b = [cx - sw / 2.0, cy - sh / 2.0, cx + sw / 2.0, cy + sh / 2.0];
                if rng.uniform() < 0.5 {
                    b = b.map(f64::round);
                }
                let mut r = [
                    b[0].clamp(0.0, wf - 1.0) as f32,
                    b[1].clamp(0.0, hf - 1.0) as f32,
                    b[2].clamp(1.0, wf) as f32,
                    b[3].clamp(1.0, hf) as f32,
                ];
                let mut c = rng.range(1, u64::from(classes.max(1))) as i64;
                if j > 0 && rng.uniform() < 0.05 {
                    r = prev;
                }
                prev = r;
                if rng.uniform() < 0.2 {
                    r = [-1.0; 4];
                    c = -1;
                }
                boxes.extend_from_slice(&r);
                cls.push(c);
            }
        }
        RandomBoxes {
            boxes_per_image: m,
            boxes,
            classes: cls,
        }
    }

    /// The boxes as a call takes them, for `batch` images.
    pub fn ground_truth(&self, batch: usize) -> crate::GroundTruth<'_> {
        crate::GroundTruth {
            batch,
            boxes_per_image: self.boxes_per_image,
            boxes: &self.boxes,
            classes: crate::GtClasses::I64(&self.classes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_takes_any_bounds() {
        let mut rng = Rng::new(7);
        for _ in 0..100 {
            assert!((3..=9).contains(&rng.range(3, 9)));
            assert!((3..=9).contains(&rng.range(9, 3)));
            assert_eq!(rng.range(5, 5), 5);
        }
        // The whole u64 range: no division by zero.
        let _ = rng.range(0, u64::MAX);
        let _ = rng.range(u64::MAX, 0);
    }
}
