//! # fcos-loss
//!
//! The FCOS object-detection loss (sigmoid focal loss + centerness BCE + IoU/GIoU
//! box loss) as fused WGSL compute shaders on [`wgpu`], with a CPU reference in `f64`.
//! What it computes, bit for bit where possible, is written down in the project's
//! `docs/contract.md`.
//!
//! ```no_run
//! use fcos_loss::{synthetic, FcosLoss, Levels, LossConfig};
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
//!
//! Features: `cli` (the `fcos-loss` command), `bench` (the bench harness and the
//! memory rooflines, module `bench`) and `casefile` (safetensors case files,
//! module `casefile`) are on by default; an application that only needs the loss links
//! none of them with `default-features = false`. The `burn` feature (off by default)
//! adds module `burn`: the loss as an autodiff op on burn 0.22's wgpu backend.

#![deny(missing_docs)]

mod assign;
mod batch;
mod config;
mod counts;
mod error;
mod gpu;
mod input;
mod inputs;
mod layout;
mod losses;
mod validate;

#[cfg(feature = "bench")]
pub mod bench;
#[cfg(feature = "burn")]
pub mod burn;
#[cfg(feature = "casefile")]
pub mod casefile;
pub mod reference;
pub mod synthetic;

pub use assign::{
    AssignRule, Assignment, GroundTruth, GtClasses, Predictions, Targets, DEFAULT_RANGES, GT_BOXES,
    GT_CLASSES,
};
pub use batch::Batch;
pub use config::{Denominators, LossConfig, LossWeights, Normalization, RegLoss};
pub use counts::Counts;
pub use error::{FcosError, GpuSource};
pub use gpu::{
    adapter_label, shader_variants, BufferRange, CallCapture, CapturedBinding, CapturedBuffer,
    CapturedCommand, CapturedRange, ClassDtype, DeviceBatch, DeviceDenominators, DeviceGradients,
    DeviceGroundTruth, DeviceInputs, DevicePredictions, DeviceTargets, FcosLoss, GpuContext,
    PendingLosses, RangedGradients, RangedGroundTruth, RangedInputs, RangedPredictions,
    ShaderVariant, Timed, CPU_TARGET_WORKGROUPS, DEFAULT_RING_SIZE, DEFAULT_TIMEOUT,
    GPU_TARGET_WORKGROUPS, WORKGROUP_SIZE,
};
/// The `half` crate, whose `f16` and `bf16` are the host types of half-precision heads.
pub use half;
pub use input::{Dtype, Element, Head, Heads, Input, TensorLayout};
pub use inputs::Inputs;
pub use layout::{Levels, MAX_LEVELS};
pub use losses::{max_head_error, max_tensor_error, Gradients, Losses, Sums, CTR_FLOOR};
pub use validate::check_values;

/// Relative tolerance of docs/contract.md §3 for per-image losses.
pub const REL_TOL: f64 = 1e-4;
/// Absolute tolerance of docs/contract.md §3 for per-image losses near zero.
pub const ABS_TOL: f64 = 1e-5;

/// The README's code blocks, compiled as doctests so they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
