//! Value checks on the host inputs of one call: the inputs the loss can use.
//!
//! WGSL lets an implementation assume that no infinity or NaN appears during
//! execution (docs/contract.md §3), so the shaders cannot be trusted to spot bad values.
//! [`check_values`] finds them on the host instead, before anything is uploaded:
//! one pass over each tensor, no allocation unless it reports an error.
//!
//! Inputs that pass [`Inputs::check_shapes`] and [`check_values`] give finite
//! losses (the contract `tests/validate.rs` holds the CPU reference to).

use crate::error::FcosError;
use crate::inputs::Inputs;
use crate::layout::Levels;

/// Elements per block of the fast path: each block is checked with a
/// branch-free, vectorizable reduction; the exact index is searched only in a
/// block that fails.
const BLOCK: usize = 1024;

/// Checks the values of inputs whose shapes [`Inputs::check_shapes`] has
/// accepted, and reports the first problem as [`FcosError::Value`].
///
/// Tensors are checked in this order, each from its first element to its last,
/// and the first bad element of the first tensor that has one is reported with
/// the tensor's docs/contract.md §5 name (`cls_logits.2`, `cls_targets`, ...), its flat
/// element index in that tensor, its value, and in the message the image,
/// channel and position it belongs to:
///
/// 1. `cls_logits.{l}`, `cnt_logits.{l}`, `reg_preds.{l}` (each level in turn):
///    every value finite (no NaN, no ±Inf);
/// 2. `cls_targets`: finite, a whole number, in `0..=classes`;
/// 3. `cnt_targets`: finite, exactly `-1` (a negative position) or in `[0, 1]`;
/// 4. `reg_targets`: finite everywhere, and `>= 0` at positive positions
///    (`cnt_targets > -1`); at negative positions any finite value is accepted.
///
/// The checks read each tensor once and allocate nothing when the inputs are
/// valid. Called with shapes that `check_shapes` would refuse, it does not
/// panic, but what it reports is then unspecified.
pub fn check_values(levels: &Levels, inputs: &Inputs, classes: usize) -> Result<(), FcosError> {
    let heads: [(&str, &[&[f32]], usize); 3] = [
        ("cls_logits", &inputs.cls_logits, classes),
        ("cnt_logits", &inputs.cnt_logits, 1),
        ("reg_preds", &inputs.reg_preds, 4),
    ];
    for (head, slices, ch) in heads {
        for (l, s) in slices.iter().enumerate() {
            if let Some(i) = first_bad(s, is_finite) {
                return Err(level_error(levels, head, l, ch, i, s[i]));
            }
        }
    }

    let at = |i: usize, ch: usize| Where { levels, ch, i };

    // Class indices: whole numbers in 0..=C. `min` keeps the integer round trip
    // in i32 range; every f32 at or above 2^24 is a whole number anyway.
    let cmax = classes as f32;
    let class_ok = |x: f32| {
        let y = x.min(16_777_216.0);
        (x >= 0.0) & (x <= cmax) & ((y as i32) as f32 == y)
    };
    if let Some(i) = first_bad(inputs.cls_targets, class_ok) {
        let x = inputs.cls_targets[i];
        let problem = if !x.is_finite() {
            "not finite".to_string()
        } else if x.fract() != 0.0 {
            format!("class index must be a whole number in 0..={classes}")
        } else {
            format!("class index must lie in 0..={classes} (0 = background)")
        };
        return Err(value_error("cls_targets", i, x, problem, at(i, 1)));
    }

    let cnt_ok = |x: f32| (x == -1.0) | (0.0..=1.0).contains(&x);
    if let Some(i) = first_bad(inputs.cnt_targets, cnt_ok) {
        let x = inputs.cnt_targets[i];
        let problem = if !x.is_finite() {
            "not finite".to_string()
        } else {
            "centerness target must be -1 (negative position) or lie in [0, 1]".to_string()
        };
        return Err(value_error("cnt_targets", i, x, problem, at(i, 1)));
    }

    let reg = inputs.reg_targets;
    if let Some(i) = first_bad(reg, is_finite) {
        return Err(value_error(
            "reg_targets",
            i,
            reg[i],
            "not finite".to_string(),
            at(i, 4),
        ));
    }
    if let Some(i) = first_negative_at_positive(reg, inputs.cnt_targets) {
        let ct = inputs.cnt_targets[i / 4];
        let side = ["l", "t", "r", "b"][i % 4];
        let problem =
            format!("box target ({side}) at a positive position (cnt_target {ct}) must be >= 0");
        return Err(value_error("reg_targets", i, reg[i], problem, at(i, 4)));
    }
    Ok(())
}

/// `x` is neither NaN nor ±Inf (a comparison that vectorizes).
#[inline(always)]
fn is_finite(x: f32) -> bool {
    x.abs() < f32::INFINITY
}

/// Index of the first element of `s` for which `ok` is false.
///
/// Each block of [`BLOCK`] elements is reduced with a non-short-circuit `&`,
/// which the compiler turns into SIMD compares; only a failing block is
/// searched element by element.
#[inline(always)]
fn first_bad(s: &[f32], ok: impl Fn(f32) -> bool + Copy) -> Option<usize> {
    let mut blocks = s.chunks_exact(BLOCK);
    for (k, block) in blocks.by_ref().enumerate() {
        if !block.iter().fold(true, |acc, &x| acc & ok(x)) {
            return block.iter().position(|&x| !ok(x)).map(|i| k * BLOCK + i);
        }
    }
    let rest = blocks.remainder();
    let start = s.len() - rest.len();
    rest.iter().position(|&x| !ok(x)).map(|i| start + i)
}

/// Index (into `reg`) of the first negative box target at a position whose
/// centerness target marks it positive (`> -1`).
fn first_negative_at_positive(reg: &[f32], cnt: &[f32]) -> Option<usize> {
    const POS: usize = BLOCK / 4;
    let bad = |r: &[f32], c: f32| {
        (c > -1.0) & ((r[0] < 0.0) | (r[1] < 0.0) | (r[2] < 0.0) | (r[3] < 0.0))
    };
    let mut r_blocks = reg.chunks_exact(BLOCK);
    let mut c_blocks = cnt.chunks_exact(POS);
    for (k, (rb, cb)) in r_blocks.by_ref().zip(c_blocks.by_ref()).enumerate() {
        let any = rb
            .chunks_exact(4)
            .zip(cb)
            .fold(false, |acc, (r, &c)| acc | bad(r, c));
        if any {
            return first_negative_in(rb, cb).map(|i| k * BLOCK + i);
        }
    }
    let start = reg.len() - r_blocks.remainder().len();
    let c_start = start / 4;
    first_negative_in(r_blocks.remainder(), cnt.get(c_start..).unwrap_or(&[])).map(|i| start + i)
}

/// Element-by-element search behind [`first_negative_at_positive`].
fn first_negative_in(reg: &[f32], cnt: &[f32]) -> Option<usize> {
    reg.chunks_exact(4)
        .zip(cnt)
        .enumerate()
        .find_map(|(p, (r, &c))| {
            if c > -1.0 {
                r.iter().position(|&x| x < 0.0).map(|k| 4 * p + k)
            } else {
                None
            }
        })
}

/// Where flat element `i` of a `[B, P, ch]` target tensor lies, for messages.
struct Where<'a> {
    levels: &'a Levels,
    ch: usize,
    i: usize,
}

impl std::fmt::Display for Where<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p_n = self.levels.positions();
        let bp = self.i / self.ch.max(1);
        let (b, p) = match bp.checked_div(p_n) {
            Some(b) => (b, bp % p_n),
            None => (0, bp),
        };
        write!(f, "image {b}, position {p}")?;
        if let Some((l, pix)) = self.levels.locate(p) {
            let w = (self.levels.shapes()[l].1 as usize).max(1);
            write!(f, " = level {l}, y {}, x {}", pix / w, pix % w)?;
        }
        Ok(())
    }
}

fn value_error(
    tensor: &str,
    index: usize,
    value: f32,
    problem: String,
    at: Where<'_>,
) -> FcosError {
    FcosError::Value {
        tensor: tensor.to_string(),
        index,
        value: value as f64,
        problem: format!("{problem} ({at})"),
    }
}

/// A non-finite value at flat index `i` of level `l` of a head with `ch` channels.
fn level_error(
    levels: &Levels,
    head: &str,
    l: usize,
    ch: usize,
    i: usize,
    value: f32,
) -> FcosError {
    let hw = levels
        .shapes()
        .get(l)
        .map_or(0, |&(h, w)| h as usize * w as usize);
    let w = levels
        .shapes()
        .get(l)
        .map_or(1, |&(_, w)| (w as usize).max(1));
    let (b, c, pix) = match i.checked_div(hw) {
        Some(bc) => (bc / ch.max(1), bc % ch.max(1), i % hw),
        None => (0, 0, i),
    };
    FcosError::Value {
        tensor: format!("{head}.{l}"),
        index: i,
        value: value as f64,
        problem: format!(
            "not finite (image {b}, channel {c}, y {}, x {}; flat position {})",
            pix / w,
            pix % w,
            levels.offsets().get(l).map_or(0, |&o| o as usize) + pix
        ),
    }
}
