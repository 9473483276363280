//! Targets from ground-truth boxes (docs/contract.md §7): the rule's settings
//! ([`Assignment`]), the boxes a call takes ([`GroundTruth`]), the network outputs
//! without targets ([`Predictions`]) and the dense targets the rule assigns
//! ([`Targets`]).

use crate::error::FcosError;
use crate::input::{Element, Head};
use crate::inputs::{check_heads, Inputs};
use crate::layout::Levels;

/// Which variant of the rule: they differ only in the range test and the area
/// that breaks a point's competition between boxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AssignRule {
    /// The notebook's repository (FCOS-PyTorch-37.2AP): range `lo < max(l,t,r,b) ≤ hi`,
    /// area `(l + r)·(t + b)` from the point's distances.
    #[default]
    Fcos,
    /// mmdet's FCOS (`center_sampling=True`): range `lo ≤ max ≤ hi`, area
    /// `(x2 − x1)·(y2 − y1)` from the box's corners.
    Mmdet,
}

impl AssignRule {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            AssignRule::Fcos => "fcos",
            AssignRule::Mmdet => "mmdet",
        }
    }
}

/// The knobs of target assignment. The strides are the config's
/// ([`LossConfig::strides`](crate::LossConfig::strides)); the defaults are the
/// notebook's `DefaultConfig.limit_range` and its centre-sampling radius 1.5.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// `(lo, hi]` per level: a box is a level's when the largest of a point's
    /// `l, t, r, b` lies in it (one pair per stride).
    pub ranges: Vec<[f32; 2]>,
    /// Centre sampling: a point must lie within `radius · stride` of the box's
    /// centre in both axes (a square). `None` samples the whole box.
    pub radius: Option<f32>,
    /// The range test and area of [`AssignRule`].
    pub rule: AssignRule,
}

/// The notebook's `DefaultConfig.limit_range`.
pub const DEFAULT_RANGES: [[f32; 2]; 5] = [
    [-1.0, 64.0],
    [64.0, 128.0],
    [128.0, 256.0],
    [256.0, 512.0],
    [512.0, 999999.0],
];

impl Default for Assignment {
    fn default() -> Self {
        Assignment {
            ranges: DEFAULT_RANGES.to_vec(),
            radius: Some(1.5),
            rule: AssignRule::Fcos,
        }
    }
}

impl Assignment {
    /// Checks the settings against `strides`: one finite range per stride with
    /// `lo <= hi`, and a positive finite radius.
    pub fn validate(&self, strides: &[u32]) -> Result<(), FcosError> {
        if self.ranges.len() != strides.len() {
            return Err(FcosError::InvalidConfig(format!(
                "assignment ranges: one (lo, hi] per stride, got {} ranges for {} strides",
                self.ranges.len(),
                strides.len()
            )));
        }
        if let Some(r) = self
            .ranges
            .iter()
            .find(|r| !(r[0].is_finite() && r[1].is_finite() && r[0] <= r[1]))
        {
            return Err(FcosError::InvalidConfig(format!(
                "assignment range ({}, {}] must be finite with lo <= hi",
                r[0], r[1]
            )));
        }
        if let Some(r) = self.radius {
            if !(r.is_finite() && r > 0.0) {
                return Err(FcosError::InvalidConfig(format!(
                    "centre-sampling radius must be finite and > 0, got {r}"
                )));
            }
        }
        Ok(())
    }

    /// `radius · stride` in f32, as PyTorch compares it (the product in f64,
    /// rounded once); `f32::MAX` without centre sampling.
    pub(crate) fn near_limit(&self, stride: u32) -> f32 {
        self.radius
            .map_or(f32::MAX, |r| (f64::from(r) * f64::from(stride)) as f32)
    }
}

/// The class tensor of [`GroundTruth`], `[B, M]`: `1..=C` per box, below 1 for a
/// padding row. PyTorch dumps it as `int64`; every type holds whole numbers.
#[derive(Debug, Clone, Copy)]
pub enum GtClasses<'a> {
    /// Whole numbers in `f32`.
    F32(&'a [f32]),
    /// `i32`.
    I32(&'a [i32]),
    /// `i64` (PyTorch's default integer type).
    I64(&'a [i64]),
    /// Whole numbers in `f64`.
    F64(&'a [f64]),
}

impl GtClasses<'_> {
    /// Elements.
    pub fn len(&self) -> usize {
        match self {
            GtClasses::F32(s) => s.len(),
            GtClasses::I32(s) => s.len(),
            GtClasses::I64(s) => s.len(),
            GtClasses::F64(s) => s.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i`, widened.
    fn get(&self, i: usize) -> f64 {
        match self {
            GtClasses::F32(s) => f64::from(s[i]),
            GtClasses::I32(s) => f64::from(s[i]),
            GtClasses::I64(s) => s[i] as f64,
            GtClasses::F64(s) => s[i],
        }
    }
}

/// Ground-truth boxes of a batch, `M` rows per image (pad with class `-1`).
#[derive(Debug, Clone, Copy)]
pub struct GroundTruth<'a> {
    /// Images `B`.
    pub batch: usize,
    /// Rows per image `M` (0 is allowed: no objects).
    pub boxes_per_image: usize,
    /// `[B, M, 4]`: `x1, y1, x2, y2` in input-image pixels. `x2 < x1` is valid and
    /// matches no point.
    pub boxes: &'a [f32],
    /// `[B, M]`.
    pub classes: GtClasses<'a>,
}

/// The name of the box tensor, in errors.
pub const GT_BOXES: &str = "gt_boxes";
/// The name of the class tensor, in errors.
pub const GT_CLASSES: &str = "gt_classes";

impl<'a> GroundTruth<'a> {
    /// Boxes with `f32` classes.
    pub fn new(batch: usize, boxes_per_image: usize, boxes: &'a [f32], classes: &'a [f32]) -> Self {
        GroundTruth {
            batch,
            boxes_per_image,
            boxes,
            classes: GtClasses::F32(classes),
        }
    }

    /// Checks the shapes against `batch` images and every value against `classes`
    /// classes: each coordinate finite, each class a whole number no larger than
    /// `C` (below 1 is padding). The first bad element is a
    /// [`FcosError::Value`] naming the tensor and its flat index.
    pub fn check(&self, batch: usize, classes: u32) -> Result<(), FcosError> {
        let m = self.boxes_per_image;
        if self.batch != batch {
            return Err(FcosError::shape(
                GT_BOXES,
                format!("B = {batch} images (the predictions')"),
                format!("B = {}", self.batch),
            ));
        }
        let rows = batch.checked_mul(m).ok_or_else(|| {
            FcosError::Limit(format!("B·M = {batch}·{m} rows overflow the address space"))
        })?;
        if self.boxes.len() != rows * 4 {
            return Err(FcosError::shape(
                GT_BOXES,
                format!("[{batch}, {m}, 4] = {} elements", rows * 4),
                format!("{} elements", self.boxes.len()),
            ));
        }
        if self.classes.len() != rows {
            return Err(FcosError::shape(
                GT_CLASSES,
                format!("[{batch}, {m}] = {rows} elements"),
                format!("{} elements", self.classes.len()),
            ));
        }
        if let Some((i, &v)) = self.boxes.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(FcosError::Value {
                tensor: GT_BOXES.into(),
                index: i,
                value: f64::from(v),
                problem: "box coordinates must be finite".into(),
            });
        }
        for i in 0..rows {
            let v = self.classes.get(i);
            if let Some(problem) = class_problem(v, classes) {
                return Err(FcosError::Value {
                    tensor: GT_CLASSES.into(),
                    index: i,
                    value: v,
                    problem,
                });
            }
        }
        Ok(())
    }

    /// The classes as the shaders read them (checked first): `i32` words, every
    /// padding row as `0`.
    pub(crate) fn class_words(&self) -> Vec<i32> {
        (0..self.classes.len())
            .map(|i| {
                let v = self.classes.get(i);
                if v < 1.0 {
                    0
                } else {
                    v as i32
                }
            })
            .collect()
    }

    /// Box `m` of image `b`, and its class (below 1: padding).
    pub(crate) fn row(&self, b: usize, m: usize) -> ([f32; 4], f64) {
        let i = b * self.boxes_per_image + m;
        let c = &self.boxes[4 * i..4 * i + 4];
        ([c[0], c[1], c[2], c[3]], self.classes.get(i))
    }
}

/// Why a class value is unusable, or `None`: not a number, not whole, or above
/// `C`. Anything below 1 is padding.
pub(crate) fn class_problem(v: f64, classes: u32) -> Option<String> {
    if !v.is_finite() {
        Some("a class must be finite".into())
    } else if v != v.floor() {
        Some("a class must be a whole number".into())
    } else if v > f64::from(classes) {
        Some(format!("a class must lie in 1..={classes} (below 1 pads)"))
    } else {
        None
    }
}

/// The network outputs of a call from boxes: [`Inputs`] without the targets,
/// `f32` by default or half precision (`T` as in [`Inputs`]).
#[derive(Debug, Clone)]
pub struct Predictions<'a, T: Element = f32> {
    /// Images `B`.
    pub batch: usize,
    /// `[B, C, H_l, W_l]` per level.
    pub cls_logits: Vec<&'a [T]>,
    /// `[B, 1, H_l, W_l]` per level.
    pub cnt_logits: Vec<&'a [T]>,
    /// `[B, 4, H_l, W_l]` per level.
    pub reg_preds: Vec<&'a [T]>,
}

impl<'a, T: Element> Predictions<'a, T> {
    /// The predictions of `inputs` (its targets left out).
    pub fn of(inputs: &Inputs<'a, T>) -> Self {
        Predictions {
            batch: inputs.batch,
            cls_logits: inputs.cls_logits.clone(),
            cnt_logits: inputs.cnt_logits.clone(),
            reg_preds: inputs.reg_preds.clone(),
        }
    }

    /// One head's levels.
    pub fn head(&self, head: Head) -> &[&'a [T]] {
        match head {
            Head::ClsLogits => &self.cls_logits,
            Head::CntLogits => &self.cnt_logits,
            Head::RegPreds => &self.reg_preds,
        }
    }

    /// Checks each head's levels against `levels`, `B` and `C`.
    pub fn check_shapes(&self, levels: &Levels, classes: usize) -> Result<(), FcosError> {
        check_heads(levels, self.batch, classes, |h| self.head(h))
    }

    /// [`Inputs`] over these predictions and `targets`.
    pub fn with_targets<'t>(&self, targets: &'t Targets) -> Inputs<'t, T>
    where
        'a: 't,
    {
        Inputs {
            batch: self.batch,
            cls_logits: self.cls_logits.clone(),
            cnt_logits: self.cnt_logits.clone(),
            reg_preds: self.reg_preds.clone(),
            cls_targets: &targets.cls_targets,
            cnt_targets: &targets.cnt_targets,
            reg_targets: &targets.reg_targets,
        }
    }
}

/// Dense targets in the layouts of docs/contract.md §1: `cls_targets` and
/// `cnt_targets` `[B, P]`, `reg_targets` `[B, P, 4]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Targets {
    /// Class per position, `0` for background.
    pub cls_targets: Vec<f32>,
    /// Centerness target per position, `-1` for background.
    pub cnt_targets: Vec<f32>,
    /// ltrb per position, `-1` for background.
    pub reg_targets: Vec<f32>,
}

impl Targets {
    /// Background everywhere for `b` images of `p` positions.
    pub fn background(b: usize, p: usize) -> Self {
        Targets {
            cls_targets: vec![0.0; b * p],
            cnt_targets: vec![-1.0; b * p],
            reg_targets: vec![-1.0; 4 * b * p],
        }
    }
}
