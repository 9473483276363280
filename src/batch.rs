//! Owned inputs of one call ([`Batch`]): what a case file holds and the demo draws.

use crate::input::Input;
use crate::inputs::Inputs;
use crate::layout::Levels;

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
        let inputs = self.inputs();
        Input::ALL
            .iter()
            .flat_map(|&i| inputs.parts(i).iter())
            .map(|s| 4 * s.len())
            .sum()
    }

    /// One input packed into one vector: a head's levels one after another (the
    /// device-buffer layout), or the target as it is.
    pub fn packed(&self, input: Input) -> Vec<f32> {
        self.inputs().parts(input).concat()
    }
}
