//! What a call reads from host memory: the network outputs per level and the
//! flattened targets, borrowed ([`Inputs`]).

use crate::error::FcosError;
use crate::input::{Dtype, Element, Head, Heads, Input, TensorLayout};
use crate::layout::Levels;

/// Borrowed host inputs of one call, in the layouts of docs/contract.md §1.
///
/// Each head is one slice per level, NCHW contiguous: `cls_logits[l]` is
/// `[B, C, H_l, W_l]`, `cnt_logits[l]` is `[B, 1, H_l, W_l]`, `reg_preds[l]` is
/// `[B, 4, H_l, W_l]`. Targets are flattened over levels: `cls_targets` and
/// `cnt_targets` are `[B, P, 1]`, `reg_targets` is `[B, P, 4]`.
///
/// The heads are `T`: `f32` by default, or [`half::f16`] / [`half::bf16`] for a
/// network trained in mixed precision (docs/contract.md §9). Half heads are
/// uploaded as 2-byte elements and widened exactly on the device; targets stay
/// `f32`.
#[derive(Debug, Clone)]
pub struct Inputs<'a, T: Element = f32> {
    /// Images in the batch, `B`.
    pub batch: usize,
    /// Class logits, one slice per level.
    pub cls_logits: Vec<&'a [T]>,
    /// Centerness logits, one slice per level.
    pub cnt_logits: Vec<&'a [T]>,
    /// Box regressions (ltrb, pixels), one slice per level.
    pub reg_preds: Vec<&'a [T]>,
    /// Class index per position: `0` background, `1..=C` class.
    pub cls_targets: &'a [f32],
    /// Centerness target per position: `[0, 1]` at positives, `-1` elsewhere.
    pub cnt_targets: &'a [f32],
    /// ltrb box target per position (read at positives only).
    pub reg_targets: &'a [f32],
}

impl<'a> Inputs<'a> {
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
}

impl<'a, T: Element> Inputs<'a, T> {
    /// The heads' element type.
    pub fn dtype(&self) -> Dtype {
        T::DTYPE
    }

    /// One head's slices, one per level.
    pub fn head(&self, head: Head) -> &[&'a [T]] {
        match head {
            Head::ClsLogits => &self.cls_logits,
            Head::CntLogits => &self.cnt_logits,
            Head::RegPreds => &self.reg_preds,
        }
    }

    /// The parts of `input` in memory order as bytes: a head's levels, or the
    /// one target slice. One after another they are the packed layout of the
    /// device path.
    pub fn byte_parts(&self, input: Input) -> Vec<&'a [u8]> {
        match input.head() {
            Some(h) => self
                .head(h)
                .iter()
                .map(|s| bytemuck::cast_slice(s))
                .collect(),
            None => {
                let t = match input {
                    Input::ClsTargets => self.cls_targets,
                    Input::CntTargets => self.cnt_targets,
                    _ => self.reg_targets,
                };
                vec![bytemuck::cast_slice(t)]
            }
        }
    }

    /// The heads widened to `f32` (exactly), one vector per level: with
    /// [`Inputs::with_heads`] the same call in `f32`, for the CPU reference.
    pub fn widened(&self) -> Heads<Vec<Vec<f32>>> {
        Heads::from_fn(|h| {
            self.head(h)
                .iter()
                .map(|s| s.iter().map(|x| x.widen()).collect())
                .collect()
        })
    }

    /// These targets with the heads `heads` (see [`widened`](Self::widened)).
    pub fn with_heads<'b>(&self, heads: &'b Heads<Vec<Vec<f32>>>) -> Inputs<'b>
    where
        'a: 'b,
    {
        self.with_head_slices(
            heads
                .as_ref()
                .map(|_, v| v.iter().map(Vec::as_slice).collect()),
        )
    }

    /// These targets with the heads `heads`, one slice per level, of any dtype.
    pub(crate) fn with_head_slices<'b, U: Element>(
        &self,
        heads: Heads<Vec<&'b [U]>>,
    ) -> Inputs<'b, U>
    where
        'a: 'b,
    {
        let Heads {
            cls_logits,
            cnt_logits,
            reg_preds,
        } = heads;
        Inputs {
            batch: self.batch,
            cls_logits,
            cnt_logits,
            reg_preds,
            cls_targets: self.cls_targets,
            cnt_targets: self.cnt_targets,
            reg_targets: self.reg_targets,
        }
    }

    /// Checks every slice length against the layout, `B` and `C`.
    pub fn check_shapes(&self, levels: &Levels, classes: usize) -> Result<(), FcosError> {
        let b = self.batch;
        check_heads(levels, b, classes, |h| self.head(h))?;
        for input in Input::ALL {
            let ch = input.channels(classes);
            match input.layout() {
                TensorLayout::PerLevel => {}
                TensorLayout::Flattened => {
                    let p = levels.positions();
                    let got = self.byte_parts(input)[0].len() / 4;
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
pub(crate) fn check_heads<'a, T: 'a>(
    levels: &Levels,
    b: usize,
    classes: usize,
    head: impl Fn(Head) -> &'a [&'a [T]],
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
pub(crate) fn check_levels<T>(
    levels: &Levels,
    input: Input,
    slices: &[&[T]],
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
