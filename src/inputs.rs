//! What a call reads from host memory: the network outputs per level and the
//! flattened targets, borrowed ([`Inputs`]).

use crate::error::FcosError;
use crate::input::{Head, Input, TensorLayout};
use crate::layout::Levels;

/// Borrowed host inputs of one call, in the layouts of docs/contract.md §1.
///
/// Each head is one slice per level, NCHW contiguous: `cls_logits[l]` is
/// `[B, C, H_l, W_l]`, `cnt_logits[l]` is `[B, 1, H_l, W_l]`, `reg_preds[l]` is
/// `[B, 4, H_l, W_l]`. Targets are flattened over levels: `cls_targets` and
/// `cnt_targets` are `[B, P, 1]`, `reg_targets` is `[B, P, 4]`.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    /// Images in the batch, `B`.
    pub batch: usize,
    /// Class logits, one slice per level.
    pub cls_logits: Vec<&'a [f32]>,
    /// Centerness logits, one slice per level.
    pub cnt_logits: Vec<&'a [f32]>,
    /// Box regressions (ltrb, pixels), one slice per level.
    pub reg_preds: Vec<&'a [f32]>,
    /// Class index per position: `0` background, `1..=C` class.
    pub cls_targets: &'a [f32],
    /// Centerness target per position: `[0, 1]` at positives, `-1` elsewhere.
    pub cnt_targets: &'a [f32],
    /// ltrb box target per position (read at positives only).
    pub reg_targets: &'a [f32],
}

impl<'a> Inputs<'a> {
    /// One head's slices, one per level.
    pub fn head(&self, head: Head) -> &[&'a [f32]] {
        match head {
            Head::ClsLogits => &self.cls_logits,
            Head::CntLogits => &self.cnt_logits,
            Head::RegPreds => &self.reg_preds,
        }
    }

    /// The parts of `input` in memory order: a head's levels, or the one target
    /// slice. One after another they are the packed layout of the device path.
    pub fn parts(&self, input: Input) -> &[&'a [f32]] {
        match input {
            Input::ClsLogits => &self.cls_logits,
            Input::CntLogits => &self.cnt_logits,
            Input::RegPreds => &self.reg_preds,
            Input::ClsTargets => std::slice::from_ref(&self.cls_targets),
            Input::CntTargets => std::slice::from_ref(&self.cnt_targets),
            Input::RegTargets => std::slice::from_ref(&self.reg_targets),
        }
    }

    /// Checks every slice length against the layout, `B` and `C`.
    pub fn check_shapes(&self, levels: &Levels, classes: usize) -> Result<(), FcosError> {
        let b = self.batch;
        check_heads(levels, b, classes, |h| self.head(h))?;
        for input in Input::ALL {
            let ch = input.channels(classes);
            let parts = self.parts(input);
            match input.layout() {
                TensorLayout::PerLevel => {}
                TensorLayout::Flattened => {
                    let p = levels.positions();
                    let got = parts.iter().map(|s| s.len()).sum::<usize>();
                    if got != b * p * ch {
                        return Err(FcosError::shape(
                            input.name(),
                            format!("[{b}, {p}, {ch}] = {} elements", b * p * ch),
                            format!("{got} elements"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// `B >= 1`, `C >= 1`, element counts within the address space, and each head's
/// slices, one per level, `[B, ch, H_l, W_l]` each (the network outputs of a call
/// from targets or from boxes).
pub(crate) fn check_heads<'a>(
    levels: &Levels,
    b: usize,
    classes: usize,
    head: impl Fn(Head) -> &'a [&'a [f32]],
) -> Result<(), FcosError> {
    if b == 0 {
        return Err(FcosError::shape("batch", "B >= 1", "B = 0"));
    }
    if classes == 0 {
        return Err(FcosError::InvalidConfig(
            "num_classes (C) must be at least 1, got 0".into(),
        ));
    }
    check_extent(levels, b, classes)?;
    for h in Head::ALL {
        let input = h.input();
        check_levels(levels, input, head(h), b, input.channels(classes))?;
    }
    Ok(())
}

/// One slice per level, each `[B, ch, H_l, W_l]`.
pub(crate) fn check_levels(
    levels: &Levels,
    input: Input,
    slices: &[&[f32]],
    b: usize,
    ch: usize,
) -> Result<(), FcosError> {
    if slices.len() != levels.len() {
        return Err(FcosError::shape(
            input.name(),
            format!("{} levels", levels.len()),
            format!("{} levels", slices.len()),
        ));
    }
    for (l, s) in slices.iter().enumerate() {
        let (h, w) = levels.shapes()[l];
        let want = levels.level_len(l, b, ch);
        if s.len() != want {
            return Err(FcosError::shape(
                format!("{input}.{l}"),
                format!("[{b}, {ch}, {h}, {w}] = {want} elements"),
                format!("{} elements", s.len()),
            ));
        }
    }
    Ok(())
}

/// Checks that the largest tensor of a call, `B · max(C, 4) · P` elements, has a
/// byte count that fits `usize` (and so every element count and offset below it): a
/// shape error naming `B` otherwise, before any size is computed.
pub(crate) fn check_extent(levels: &Levels, b: usize, classes: usize) -> Result<(), FcosError> {
    let p = levels.positions();
    let fits = b
        .checked_mul(classes.max(4))
        .and_then(|n| n.checked_mul(p))
        .and_then(|n| n.checked_mul(4))
        .is_some();
    if fits {
        Ok(())
    } else {
        Err(FcosError::shape(
            "batch",
            format!(
                "B · max(C, 4) · P · 4 bytes within the address space (C = {classes}, P = {p})"
            ),
            format!("B = {b}"),
        ))
    }
}
