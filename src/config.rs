//! Loss configuration: the notebook's `DefaultConfig` fields that change the loss.

use crate::assign::Assignment;
use crate::error::FcosError;

/// The box-regression loss applied at positive positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RegLoss {
    /// `-log(max(iou, 1e-6))`, the notebook's default mode `'iou'`.
    #[default]
    Iou,
    /// `1 - giou`, the notebook's mode `'giou'`.
    Giou,
}

impl RegLoss {
    /// The name used by the notebook and the CLI (`"iou"` or `"giou"`).
    pub fn name(self) -> &'static str {
        match self {
            RegLoss::Iou => "iou",
            RegLoss::Giou => "giou",
        }
    }
}

impl std::str::FromStr for RegLoss {
    type Err = FcosError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "iou" => Ok(RegLoss::Iou),
            "giou" => Ok(RegLoss::Giou),
            other => Err(FcosError::InvalidConfig(format!(
                "regression loss must be 'iou' or 'giou', got '{other}'"
            ))),
        }
    }
}

/// How the per-image sums become the three losses (docs/contract.md §8).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Normalization {
    /// Each image's sums over that image's positives, then the mean over images:
    /// the notebook's (and the default). `cls = mean_b S_cls[b] / max(n_b, 1)`.
    #[default]
    PerImage,
    /// The batch's sums over the batch's positives (torchvision):
    /// `cls = Σ_b S_cls[b] / max(Σ_b n_b, 1)`.
    Batch,
    /// The call's sums over caller-given denominators (mmdet, the official FCOS,
    /// AdelaiDet; data-parallel training): `cls = Σ_b S_cls[b] / max(N_g, 1)`. On the
    /// device path the denominators may also come from a buffer
    /// ([`crate::DeviceDenominators`]).
    Global(Denominators),
}

/// The denominators of [`Normalization::Global`]: what a data-parallel replica
/// all-reduces before its loss call ([`crate::FcosLoss::count`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Denominators {
    /// `N_g`: the mean over replicas of each replica's positives `Σ_b n_b`.
    pub num_pos: f32,
    /// `Z_g`: the mean over replicas of each replica's centerness-target sum
    /// `Σ_b Z_b` (used when the box loss is weighted by centerness).
    pub ctr: f32,
}

impl Normalization {
    /// The name the CLI uses (`per-image`, `batch`, `global`).
    pub fn name(self) -> &'static str {
        match self {
            Normalization::PerImage => "per-image",
            Normalization::Batch => "batch",
            Normalization::Global(_) => "global",
        }
    }
}

/// The FCOS loss configuration (the notebook's `DefaultConfig`, loss-related fields only).
#[derive(Debug, Clone, PartialEq)]
pub struct LossConfig {
    /// Number of foreground classes `C` (class index `0` is background).
    pub num_classes: u32,
    /// Strides of the pyramid levels, used to derive level shapes from an image size.
    pub strides: Vec<u32>,
    /// Whether the centerness loss enters `total` (it is computed and reported either way).
    pub add_centerness: bool,
    /// Focal-loss focusing parameter γ (notebook: 2.0).
    pub gamma: f32,
    /// Focal-loss balance α for positives (notebook: 0.25).
    pub alpha: f32,
    /// Box-regression loss at positives.
    pub reg_loss: RegLoss,
    /// How the per-image sums become the losses (default: the notebook's per image).
    pub normalization: Normalization,
    /// Weight each positive's box loss by its centerness target and divide by the
    /// centerness-target sum instead of the positive count (mmdet, the official
    /// FCOS): `reg = Σ cnt_target · box loss / max(Z, 1e-6)`. Off by default.
    pub centerness_weighted_reg: bool,
    /// How targets are assigned from ground-truth boxes (calls from boxes only;
    /// docs/contract.md §7). Default: the notebook's ranges and radius 1.5.
    pub assignment: Assignment,
}

impl Default for LossConfig {
    /// The notebook's defaults with its `class_num = 20`.
    fn default() -> Self {
        Self::new(20)
    }
}

impl LossConfig {
    /// The notebook's defaults (strides 8..128, centerness on, γ = 2, α = 0.25, IoU) for `num_classes` classes.
    pub fn new(num_classes: u32) -> Self {
        LossConfig {
            num_classes,
            strides: vec![8, 16, 32, 64, 128],
            add_centerness: true,
            gamma: 2.0,
            alpha: 0.25,
            reg_loss: RegLoss::Iou,
            normalization: Normalization::PerImage,
            centerness_weighted_reg: false,
            assignment: Assignment::default(),
        }
    }

    /// Returns the config with the given normalisation.
    pub fn with_normalization(mut self, normalization: Normalization) -> Self {
        self.normalization = normalization;
        self
    }

    /// Returns the config with the box loss weighted by centerness, or not.
    pub fn with_centerness_weighted_reg(mut self, weighted: bool) -> Self {
        self.centerness_weighted_reg = weighted;
        self
    }

    /// Returns the config with the given regression loss.
    pub fn with_reg_loss(mut self, reg_loss: RegLoss) -> Self {
        self.reg_loss = reg_loss;
        self
    }

    /// Returns the config with the given target assignment.
    pub fn with_assignment(mut self, assignment: Assignment) -> Self {
        self.assignment = assignment;
        self
    }

    /// Returns the config with `add_centerness` set.
    pub fn with_centerness(mut self, add_centerness: bool) -> Self {
        self.add_centerness = add_centerness;
        self
    }

    /// Checks that every field is usable.
    pub fn validate(&self) -> Result<(), FcosError> {
        if self.num_classes == 0 {
            return Err(FcosError::InvalidConfig(
                "num_classes (C) must be at least 1, got 0".into(),
            ));
        }
        if let Some(s) = self.strides.iter().find(|&&s| s == 0) {
            return Err(FcosError::InvalidConfig(format!(
                "strides must be positive, got {s} in {:?}",
                self.strides
            )));
        }
        if !(self.gamma.is_finite() && self.gamma >= 0.0) {
            return Err(FcosError::InvalidConfig(format!(
                "focal gamma must be finite and >= 0, got {}",
                self.gamma
            )));
        }
        if !(self.alpha.is_finite() && (0.0..=1.0).contains(&self.alpha)) {
            return Err(FcosError::InvalidConfig(format!(
                "focal alpha must lie in [0, 1], got {}",
                self.alpha
            )));
        }
        if let Normalization::Global(d) = self.normalization {
            d.check()?;
        }
        Ok(())
    }
}

impl Denominators {
    /// Checks that both are finite and not negative: [`FcosError::InvalidConfig`]
    /// naming the one that is not.
    pub fn check(&self) -> Result<(), FcosError> {
        for (name, v) in [("num_pos (N_g)", self.num_pos), ("ctr (Z_g)", self.ctr)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(FcosError::InvalidConfig(format!(
                    "global denominator {name} must be finite and >= 0, got {v}"
                )));
            }
        }
        Ok(())
    }
}

/// Weights of the three batch-mean losses in the objective the backward pass
/// differentiates, `L = cls · cls_loss + cnt · cnt_loss + reg · reg_loss`. They are
/// also the upstream gradients `dOut/d(cls_loss)` etc. when the loss feeds a larger graph.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossWeights {
    /// Weight of the classification loss.
    pub cls: f32,
    /// Weight of the centerness loss.
    pub cnt: f32,
    /// Weight of the regression loss.
    pub reg: f32,
}

impl LossWeights {
    /// The notebook's total: `1, 1, 1`, with the centerness weight 0 when
    /// `add_centerness` is false.
    pub fn for_config(config: &LossConfig) -> Self {
        LossWeights {
            cls: 1.0,
            cnt: if config.add_centerness { 1.0 } else { 0.0 },
            reg: 1.0,
        }
    }

    /// Checks that every weight is finite (NaN or ±Inf would reach the shaders,
    /// which must never see them): [`FcosError::InvalidConfig`] naming the weight.
    pub fn check(&self) -> Result<(), FcosError> {
        for (name, w) in [("cls", self.cls), ("cnt", self.cnt), ("reg", self.reg)] {
            if !w.is_finite() {
                return Err(FcosError::InvalidConfig(format!(
                    "loss weight '{name}' must be finite, got {w}"
                )));
            }
        }
        Ok(())
    }
}

impl Default for LossWeights {
    fn default() -> Self {
        LossWeights {
            cls: 1.0,
            cnt: 1.0,
            reg: 1.0,
        }
    }
}
