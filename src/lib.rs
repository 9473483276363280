//! # fcos-loss
//!
//! The FCOS object-detection loss (sigmoid focal loss + centerness BCE + IoU/GIoU
//! box loss) as fused WGSL compute shaders on [`wgpu`], with a CPU reference in `f64`.
//!
//! ```no_run
//! use fcos_loss::{FcosLoss, LossConfig, Levels, synthetic};
//!
//! # fn main() -> Result<(), fcos_loss::FcosError> {
//! let config = LossConfig::new(80);
//! let levels = Levels::from_image(800, 1024, &config.strides)?;
//! let batch = synthetic::generate(&levels, &config.strides, &synthetic::SyntheticSpec::new(2, 80))?;
//! let engine = FcosLoss::new(config.clone())?;
//! let gpu = engine.compute(&levels, &batch.inputs())?;
//! let cpu = fcos_loss::reference::losses(&config, &levels, &batch.inputs())?;
//! println!("total {} (cpu {})", gpu.total, cpu.total);
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

pub mod bench;
pub mod config;
pub mod error;
pub mod gpu;
pub mod inputs;
pub mod io;
pub mod layout;
pub mod losses;
pub mod reference;
pub mod synthetic;
pub mod validate;

pub use config::{LossConfig, LossWeights, RegLoss};
pub use error::FcosError;
pub use gpu::{DeviceGradients, DeviceInputs, FcosLoss, Timed};
pub use inputs::{Batch, Inputs};
pub use layout::Levels;
pub use losses::{Gradients, Losses};

/// Relative tolerance of SPEC §3 for per-image losses.
pub const REL_TOL: f64 = 1e-4;
/// Absolute tolerance of SPEC §3 for per-image losses near zero.
pub const ABS_TOL: f64 = 1e-5;

/// The README's code blocks, compiled as doctests so they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
