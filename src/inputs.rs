//! What a call reads: the network outputs per level and the flattened targets,
//! borrowed from host memory ([`Inputs`]) or owned ([`Batch`]).

use crate::error::FcosError;
use crate::layout::Levels;

/// Borrowed host inputs of one call, in the layouts of SPEC §1.
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

impl Inputs<'_> {
    /// Checks every slice length against the layout, `B` and `C`.
    pub fn check_shapes(&self, levels: &Levels, classes: usize) -> Result<(), FcosError> {
        let b = self.batch;
        if b == 0 {
            return Err(FcosError::shape("batch", "B >= 1", "B = 0"));
        }
        if classes == 0 {
            return Err(FcosError::InvalidConfig(
                "num_classes (C) must be at least 1, got 0".into(),
            ));
        }
        check_extent(levels, b, classes)?;
        let heads: [(&str, &Vec<&[f32]>, usize); 3] = [
            ("cls_logits", &self.cls_logits, classes),
            ("cnt_logits", &self.cnt_logits, 1),
            ("reg_preds", &self.reg_preds, 4),
        ];
        for (name, slices, ch) in heads {
            if slices.len() != levels.len() {
                return Err(FcosError::shape(
                    name,
                    format!("{} levels", levels.len()),
                    format!("{} levels", slices.len()),
                ));
            }
            for (l, s) in slices.iter().enumerate() {
                let (h, w) = levels.shapes()[l];
                let want = levels.level_len(l, b, ch);
                if s.len() != want {
                    return Err(FcosError::shape(
                        format!("{name}.{l}"),
                        format!("[{b}, {ch}, {h}, {w}] = {want} elements"),
                        format!("{} elements", s.len()),
                    ));
                }
            }
        }
        let p = levels.positions();
        for (name, s, ch) in [
            ("cls_targets", self.cls_targets, 1),
            ("cnt_targets", self.cnt_targets, 1),
            ("reg_targets", self.reg_targets, 4),
        ] {
            if s.len() != b * p * ch {
                return Err(FcosError::shape(
                    name,
                    format!("[{b}, {p}, {ch}] = {} elements", b * p * ch),
                    format!("{} elements", s.len()),
                ));
            }
        }
        Ok(())
    }
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

/// Owned inputs of one call: what the CLI reads from a file and the demo generates.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// The pyramid levels.
    pub levels: Levels,
    /// Images, `B`.
    pub batch: usize,
    /// Classes, `C`.
    pub classes: usize,
    /// `[B, C, H_l, W_l]` per level.
    pub cls_logits: Vec<Vec<f32>>,
    /// `[B, 1, H_l, W_l]` per level.
    pub cnt_logits: Vec<Vec<f32>>,
    /// `[B, 4, H_l, W_l]` per level.
    pub reg_preds: Vec<Vec<f32>>,
    /// `[B, P, 1]`.
    pub cls_targets: Vec<f32>,
    /// `[B, P, 1]`.
    pub cnt_targets: Vec<f32>,
    /// `[B, P, 4]`.
    pub reg_targets: Vec<f32>,
}

impl Batch {
    /// Borrows the batch as [`Inputs`].
    pub fn inputs(&self) -> Inputs<'_> {
        Inputs {
            batch: self.batch,
            cls_logits: self.cls_logits.iter().map(Vec::as_slice).collect(),
            cnt_logits: self.cnt_logits.iter().map(Vec::as_slice).collect(),
            reg_preds: self.reg_preds.iter().map(Vec::as_slice).collect(),
            cls_targets: &self.cls_targets,
            cnt_targets: &self.cnt_targets,
            reg_targets: &self.reg_targets,
        }
    }

    /// Bytes of all inputs together.
    pub fn input_bytes(&self) -> usize {
        let heads: usize = [&self.cls_logits, &self.cnt_logits, &self.reg_preds]
            .iter()
            .flat_map(|h| h.iter())
            .map(Vec::len)
            .sum();
        4 * (heads + self.cls_targets.len() + self.cnt_targets.len() + self.reg_targets.len())
    }

    /// Packs one head's levels one after another (the device-buffer layout).
    pub fn packed(head: &[Vec<f32>]) -> Vec<f32> {
        head.concat()
    }
}
