//! The six tensors a loss call reads, named by type: [`Input`] (name, channels,
//! layout, element type, check flag), [`Head`] for the three network outputs, and
//! [`Heads`], one value per head. Code that treats the inputs alike iterates
//! [`Input::ALL`] or [`Head::ALL`]; nothing indexes them by number.

use std::ops::{Index, IndexMut};

use crate::layout::Levels;

/// One of the six tensors of a loss call (docs/contract.md §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Input {
    /// Class logits, `[B, C, H_l, W_l]` per level.
    ClsLogits,
    /// Centerness logits, `[B, 1, H_l, W_l]` per level.
    CntLogits,
    /// Box regressions (ltrb, pixels), `[B, 4, H_l, W_l]` per level.
    RegPreds,
    /// Class index per position, `[B, P, 1]`.
    ClsTargets,
    /// Centerness target per position, `[B, P, 1]`.
    CntTargets,
    /// ltrb box target per position, `[B, P, 4]`.
    RegTargets,
}

/// How an input is laid out in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorLayout {
    /// One NCHW tensor per pyramid level (the network outputs).
    PerLevel,
    /// Flattened over the levels, `[B, P, ch]` (the targets).
    Flattened,
}

/// The element type of a tensor. The network outputs may be any of these
/// (docs/contract.md §9); targets, boxes and gradients are `f32` unless a call
/// asks otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Dtype {
    /// 32-bit IEEE float.
    #[default]
    F32,
    /// IEEE half precision (binary16), widened to `f32` exactly on the device.
    F16,
    /// bfloat16, the upper half of an `f32`.
    Bf16,
}

impl Dtype {
    /// Every element type, in this order: `f32`, `f16`, `bf16`.
    pub const ALL: [Dtype; 3] = [Dtype::F32, Dtype::F16, Dtype::Bf16];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
        }
    }

    /// `f32`, `f16` or `bf16` (the CLI's and the bench's spelling).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        }
    }

    /// Whether elements are 2 bytes (read as halves of `u32` words on the device).
    pub fn is_half(self) -> bool {
        self.size() == 2
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Dtype {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Dtype::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| format!("unknown dtype `{s}` (f32, f16 or bf16)"))
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

/// An element type host slices of network outputs may have: `f32`, [`half::f16`]
/// or [`half::bf16`]. Half slices are uploaded as they are (2 bytes an element)
/// and widened on the device. Raw `u16` bits become `&[half::f16]` or
/// `&[half::bf16]` without a copy through `half::slice::HalfBitsSliceExt::reinterpret_cast`.
pub trait Element: sealed::Sealed + bytemuck::Pod + Send + Sync + std::fmt::Debug {
    /// The element type.
    const DTYPE: Dtype;
    /// The value as `f32`, exactly.
    fn widen(self) -> f32;
}

/// `n` elements of `dtype` from little-endian `bytes`, widened to `f32` exactly
/// (the host's copy of device data, for the checks that name a bad value).
pub(crate) fn widen_bytes(bytes: &[u8], dtype: Dtype, n: usize) -> Vec<f32> {
    let two = |b: &[u8]| u16::from_le_bytes([b[0], b[1]]);
    match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .take(n)
            .map(|w| f32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .take(n)
            .map(|b| half::f16::from_bits(two(b)).to_f32())
            .collect(),
        Dtype::Bf16 => bytes
            .chunks_exact(2)
            .take(n)
            .map(|b| half::bf16::from_bits(two(b)).to_f32())
            .collect(),
    }
}

impl Element for f32 {
    const DTYPE: Dtype = Dtype::F32;
    fn widen(self) -> f32 {
        self
    }
}

impl Element for half::f16 {
    const DTYPE: Dtype = Dtype::F16;
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

impl Element for half::bf16 {
    const DTYPE: Dtype = Dtype::Bf16;
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

impl Input {
    /// Every input, in the order the engine binds and checks them.
    pub const ALL: [Input; 6] = [
        Input::ClsLogits,
        Input::CntLogits,
        Input::RegPreds,
        Input::ClsTargets,
        Input::CntTargets,
        Input::RegTargets,
    ];

    /// The tensor's name in case files and error messages (`cls_logits`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Input::ClsLogits => "cls_logits",
            Input::CntLogits => "cnt_logits",
            Input::RegPreds => "reg_preds",
            Input::ClsTargets => "cls_targets",
            Input::CntTargets => "cnt_targets",
            Input::RegTargets => "reg_targets",
        }
    }

    /// Channels per position: `C` for the class logits, 4 for boxes, else 1.
    pub fn channels(self, classes: usize) -> usize {
        match self {
            Input::ClsLogits => classes,
            Input::RegPreds | Input::RegTargets => 4,
            Input::CntLogits | Input::ClsTargets | Input::CntTargets => 1,
        }
    }

    /// Per level (network outputs) or flattened (targets).
    pub fn layout(self) -> TensorLayout {
        match self.head() {
            Some(_) => TensorLayout::PerLevel,
            None => TensorLayout::Flattened,
        }
    }

    /// The element type the engine reads when the heads are `heads`: theirs for
    /// a head, `f32` for a target.
    pub fn dtype(self, heads: Dtype) -> Dtype {
        match self.head() {
            Some(_) => heads,
            None => Dtype::F32,
        }
    }

    /// The head this input is, if it is a network output.
    pub fn head(self) -> Option<Head> {
        match self {
            Input::ClsLogits => Some(Head::ClsLogits),
            Input::CntLogits => Some(Head::CntLogits),
            Input::RegPreds => Some(Head::RegPreds),
            Input::ClsTargets | Input::CntTargets | Input::RegTargets => None,
        }
    }

    /// The bit the on-device checks set when this input holds a bad value
    /// (`FLAG_*` in `shaders/common.wgsl`).
    pub(crate) fn flag(self) -> u32 {
        match self {
            Input::ClsLogits => 1,
            Input::CntLogits => 2,
            Input::RegPreds => 4,
            Input::ClsTargets => 8,
            Input::CntTargets => 16,
            Input::RegTargets => 32,
        }
    }

    /// The inputs whose bits are set in `flags`, in [`Input::ALL`] order.
    pub(crate) fn flagged(flags: u32) -> Vec<&'static str> {
        Input::ALL
            .iter()
            .filter(|i| flags & i.flag() != 0)
            .map(|i| i.name())
            .collect()
    }

    /// Elements of the whole tensor for `batch` images: `B · ch · P` (every level
    /// of a head together, or the flattened target).
    pub fn elements(self, levels: &Levels, batch: usize, classes: usize) -> usize {
        levels.packed_len(batch, self.channels(classes))
    }

    /// Bytes of the whole tensor (see [`elements`](Self::elements)) when the
    /// heads are `heads`.
    pub fn bytes(self, levels: &Levels, batch: usize, classes: usize, heads: Dtype) -> u64 {
        (self.elements(levels, batch, classes) * self.dtype(heads).size()) as u64
    }
}

impl std::fmt::Display for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One of the three network outputs the loss differentiates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Head {
    /// Class logits.
    ClsLogits,
    /// Centerness logits.
    CntLogits,
    /// Box regressions.
    RegPreds,
}

impl Head {
    /// The three heads, in [`Input::ALL`] order.
    pub const ALL: [Head; 3] = [Head::ClsLogits, Head::CntLogits, Head::RegPreds];

    /// The input this head is.
    pub fn input(self) -> Input {
        match self {
            Head::ClsLogits => Input::ClsLogits,
            Head::CntLogits => Input::CntLogits,
            Head::RegPreds => Input::RegPreds,
        }
    }

    /// The head's name (`cls_logits`, `cnt_logits`, `reg_preds`).
    pub fn name(self) -> &'static str {
        self.input().name()
    }

    /// Channels: `C`, 1 or 4.
    pub fn channels(self, classes: usize) -> usize {
        self.input().channels(classes)
    }
}

impl std::fmt::Display for Head {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One value per head: gradients, buffers, tolerances, anything the three network
/// outputs each have. Indexed by [`Head`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Heads<T> {
    /// The class-logit head's value.
    pub cls_logits: T,
    /// The centerness head's value.
    pub cnt_logits: T,
    /// The box head's value.
    pub reg_preds: T,
}

impl<T> Heads<T> {
    /// Builds each head's value from its [`Head`].
    pub fn from_fn(mut f: impl FnMut(Head) -> T) -> Self {
        Heads {
            cls_logits: f(Head::ClsLogits),
            cnt_logits: f(Head::CntLogits),
            reg_preds: f(Head::RegPreds),
        }
    }

    /// Like [`from_fn`](Self::from_fn), stopping at the first error.
    pub fn try_from_fn<E>(mut f: impl FnMut(Head) -> Result<T, E>) -> Result<Self, E> {
        Ok(Heads {
            cls_logits: f(Head::ClsLogits)?,
            cnt_logits: f(Head::CntLogits)?,
            reg_preds: f(Head::RegPreds)?,
        })
    }

    /// Each value transformed, with its head.
    pub fn map<U>(self, mut f: impl FnMut(Head, T) -> U) -> Heads<U> {
        Heads {
            cls_logits: f(Head::ClsLogits, self.cls_logits),
            cnt_logits: f(Head::CntLogits, self.cnt_logits),
            reg_preds: f(Head::RegPreds, self.reg_preds),
        }
    }

    /// The values by reference.
    pub fn as_ref(&self) -> Heads<&T> {
        Heads {
            cls_logits: &self.cls_logits,
            cnt_logits: &self.cnt_logits,
            reg_preds: &self.reg_preds,
        }
    }

    /// `(head, value)` in [`Head::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (Head, &T)> {
        Head::ALL.into_iter().map(move |h| (h, &self[h]))
    }
}

impl<T> Index<Head> for Heads<T> {
    type Output = T;

    fn index(&self, head: Head) -> &T {
        match head {
            Head::ClsLogits => &self.cls_logits,
            Head::CntLogits => &self.cnt_logits,
            Head::RegPreds => &self.reg_preds,
        }
    }
}

impl<T> IndexMut<Head> for Heads<T> {
    fn index_mut(&mut self, head: Head) -> &mut T {
        match head {
            Head::ClsLogits => &mut self.cls_logits,
            Head::CntLogits => &mut self.cnt_logits,
            Head::RegPreds => &mut self.reg_preds,
        }
    }
}

impl<T: Clone + Default> Heads<Vec<Vec<T>>> {
    /// Zeros (the default value) shaped like the heads: one `[B, ch, H_l, W_l]`
    /// vector per level.
    pub fn zeros(levels: &Levels, batch: usize, classes: usize) -> Self {
        Heads::from_fn(|h| {
            (0..levels.len())
                .map(|l| vec![T::default(); levels.level_len(l, batch, h.channels(classes))])
                .collect()
        })
    }
}

impl<T: Copy + Into<f64>> Heads<Vec<Vec<T>>> {
    /// The largest magnitude of each head over all its levels.
    pub fn max_abs(&self) -> Heads<f64> {
        self.as_ref().map(|_, levels| {
            levels
                .iter()
                .flatten()
                .fold(0.0f64, |a, &x| a.max(x.into().abs()))
        })
    }
}

/// One value per input, indexed by [`Input`] (the engine's bindings, ranges and
/// buffers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct ByInput<T> {
    pub heads: Heads<T>,
    pub cls_targets: T,
    pub cnt_targets: T,
    pub reg_targets: T,
}

impl<T> ByInput<T> {
    pub fn from_fn(mut f: impl FnMut(Input) -> T) -> Self {
        ByInput {
            heads: Heads::from_fn(|h| f(h.input())),
            cls_targets: f(Input::ClsTargets),
            cnt_targets: f(Input::CntTargets),
            reg_targets: f(Input::RegTargets),
        }
    }

    pub fn try_from_fn<E>(mut f: impl FnMut(Input) -> Result<T, E>) -> Result<Self, E> {
        Ok(ByInput {
            heads: Heads::try_from_fn(|h| f(h.input()))?,
            cls_targets: f(Input::ClsTargets)?,
            cnt_targets: f(Input::CntTargets)?,
            reg_targets: f(Input::RegTargets)?,
        })
    }

    /// `(input, value)` in [`Input::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (Input, &T)> {
        Input::ALL.into_iter().map(move |i| (i, &self[i]))
    }
}

impl<T> Index<Input> for ByInput<T> {
    type Output = T;

    fn index(&self, input: Input) -> &T {
        match (input.head(), input) {
            (Some(head), _) => &self.heads[head],
            (None, Input::ClsTargets) => &self.cls_targets,
            (None, Input::CntTargets) => &self.cnt_targets,
            (None, _) => &self.reg_targets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_channels_and_flags_are_distinct_and_in_order() {
        let names: Vec<&str> = Input::ALL.iter().map(|i| i.name()).collect();
        assert_eq!(
            names,
            [
                "cls_logits",
                "cnt_logits",
                "reg_preds",
                "cls_targets",
                "cnt_targets",
                "reg_targets"
            ]
        );
        let channels: Vec<usize> = Input::ALL.iter().map(|i| i.channels(7)).collect();
        assert_eq!(channels, [7, 1, 4, 1, 1, 4]);
        let all_flags = Input::ALL.iter().fold(0, |f, i| {
            assert_eq!(f & i.flag(), 0, "{i} shares a flag bit");
            f | i.flag()
        });
        assert_eq!(Input::flagged(all_flags), names);
        assert_eq!(Input::flagged(Input::RegPreds.flag()), ["reg_preds"]);
        for h in Head::ALL {
            assert_eq!(h.input().head(), Some(h));
            assert_eq!(h.input().layout(), TensorLayout::PerLevel);
        }
    }

    #[test]
    fn heads_and_by_input_index_by_name() {
        let h = Heads::from_fn(|h| h.name().len());
        assert_eq!(h[Head::RegPreds], "reg_preds".len());
        let by = ByInput::from_fn(|i| i.name());
        for (i, name) in by.iter() {
            assert_eq!(i.name(), *name);
        }
        let levels = Levels::from_shapes(&[(2, 3), (1, 1)]).unwrap();
        let z: Heads<Vec<Vec<f32>>> = Heads::zeros(&levels, 2, 5);
        assert_eq!(z.cls_logits[0].len(), 2 * 5 * 6);
        assert_eq!(z.reg_preds[1].len(), 2 * 4);
    }
}
