//! The CPU twin of the target pass (docs/contract.md §7): every operation in `f32`
//! in the contract's order, so that class and box targets are exact.

use crate::assign::{AssignRule, GroundTruth, Targets};
use crate::config::LossConfig;
use crate::error::FcosError;
use crate::layout::Levels;

/// One box as the rule reads it.
#[derive(Debug, Clone, Copy)]
struct GtBox {
    x1: f32,
    y1: f32,
    x2: f32,
    y2: f32,
    class: f32,
}

/// What a candidate box gives a point.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    area: f32,
    ltrb: [f32; 4],
    class: f32,
}

/// The settings of one level: stride, range and the centre-sampling limit.
#[derive(Debug, Clone, Copy)]
struct LevelRule {
    stride: u32,
    lo: f32,
    hi: f32,
    near: f32,
    rule: AssignRule,
}

impl LevelRule {
    /// Box `g` as a candidate for the point `(px, py)`, or `None`.
    fn candidate(&self, px: f32, py: f32, g: &GtBox) -> Option<Candidate> {
        let l = px - g.x1;
        let t = py - g.y1;
        let r = g.x2 - px;
        let b = g.y2 - py;
        let inside = l.min(t).min(r).min(b) > 0.0;
        let far = l.max(t).max(r).max(b);
        let in_range = match self.rule {
            AssignRule::Fcos => self.lo < far && far <= self.hi,
            AssignRule::Mmdet => self.lo <= far && far <= self.hi,
        };
        let cx = (g.x1 + g.x2) / 2.0;
        let cy = (g.y1 + g.y2) / 2.0;
        let near = (px - cx).max(py - cy).max(cx - px).max(cy - py) < self.near;
        if !(inside && in_range && near && g.class >= 1.0) {
            return None;
        }
        let area = match self.rule {
            AssignRule::Fcos => (l + r) * (t + b),
            AssignRule::Mmdet => (g.x2 - g.x1) * (g.y2 - g.y1),
        };
        Some(Candidate {
            area,
            ltrb: [l, t, r, b],
            class: g.class,
        })
    }
}

/// The centerness target of ltrb distances, in f32:
/// `sqrt(min(l, r)·min(t, b) / (max(l, r)·max(t, b) + 1e-10))`.
pub fn centerness(ltrb: [f32; 4]) -> f32 {
    let [l, t, r, b] = ltrb;
    (l.min(r) * t.min(b) / (l.max(r) * t.max(b) + 1e-10)).sqrt()
}

/// Assigns the targets of every position of every image (docs/contract.md §7).
/// `gt` is checked first ([`GroundTruth::check`]).
pub fn assign_targets(
    config: &LossConfig,
    levels: &Levels,
    gt: &GroundTruth,
) -> Result<Targets, FcosError> {
    let assignment = &config.assignment;
    assignment.validate(&config.strides)?;
    if levels.len() > config.strides.len() {
        return Err(FcosError::InvalidConfig(format!(
            "{} levels but {} strides",
            levels.len(),
            config.strides.len()
        )));
    }
    gt.check(gt.batch, config.num_classes)?;
    let b_n = gt.batch;
    let p_n = levels.positions();
    let mut out = Targets::background(b_n, p_n);
    for b in 0..b_n {
        let boxes: Vec<GtBox> = (0..gt.boxes_per_image)
            .map(|m| {
                let (c, class) = gt.row(b, m);
                GtBox {
                    x1: c[0],
                    y1: c[1],
                    x2: c[2],
                    y2: c[3],
                    class: class as f32,
                }
            })
            .collect();
        for (l, &(h, w)) in levels.shapes().iter().enumerate() {
            let stride = config.strides[l];
            let rule = LevelRule {
                stride,
                lo: assignment.ranges[l][0],
                hi: assignment.ranges[l][1],
                near: assignment.near_limit(stride),
                rule: assignment.rule,
            };
            let half = (rule.stride / 2) as f32;
            for y in 0..h as usize {
                for x in 0..w as usize {
                    let px = x as f32 * stride as f32 + half;
                    let py = y as f32 * stride as f32 + half;
                    let best = boxes.iter().fold(None::<Candidate>, |best, g| {
                        match (best, rule.candidate(px, py, g)) {
                            // Strictly smaller only: equal areas keep the lower index.
                            (Some(a), Some(c)) if c.area < a.area => Some(c),
                            (None, c) => c,
                            (a, _) => a,
                        }
                    });
                    if let Some(c) = best {
                        let i = b * p_n + levels.offsets()[l] as usize + y * w as usize + x;
                        out.cls_targets[i] = c.class;
                        out.cnt_targets[i] = centerness(c.ltrb);
                        out.reg_targets[4 * i..4 * i + 4].copy_from_slice(&c.ltrb);
                    }
                }
            }
        }
    }
    Ok(out)
}
