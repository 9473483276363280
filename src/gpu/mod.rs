//! The GPU side. A call flows through these modules in order:
//!
//! - [`engine`]: [`FcosLoss`], its settings and public calls;
//! - [`host`] / [`device`]: the two ways in (host slices uploaded through the pool,
//!   or the caller's device buffers), each checking its inputs first;
//! - [`plan`]: pure arithmetic, the dispatches and bindings within the device's
//!   limits; [`uniforms`]: their `Params`;
//! - [`call`]: the stages of one call, plan → bind ([`bind`]) → encode ([`encode`])
//!   → submit → read back ([`results`], [`readback`]);
//! - [`pipelines`] / [`shaders`]: kernels assembled from `shaders/*.wgsl`, built on
//!   first use; [`pool`] / [`work`]: buffers reused across calls;
//! - [`context`] / [`scope`]: the device and its error scopes; [`locate`]: naming a
//!   bad input the on-device checks flagged.

mod bind;
pub(crate) mod call;
mod capture;
mod context;
pub(crate) mod core;
mod counting;
pub(crate) mod device;
mod device_batch;
mod device_inputs;
pub(crate) mod encode;
mod engine;
mod execute;
mod from_boxes;
mod host;
pub(crate) mod locate;
pub(crate) mod params;
pub(crate) mod pass;
mod pending;
mod pipelined;
pub(crate) mod pipelines;
pub(crate) mod plan;
pub(crate) mod pool;
mod ranges;
mod readback;
pub(crate) mod results;
mod ring;
pub(crate) mod scope;
#[cfg(test)]
mod shader_checks;
#[cfg(test)]
mod shader_translate;
pub(crate) mod shaders;
mod target_pass;
mod timed;
mod uniforms;
mod upload;
pub(crate) mod work;

pub use capture::{CallCapture, CapturedBinding, CapturedBuffer, CapturedCommand, CapturedRange};
pub use context::{adapter_label, GpuContext};
pub use device_batch::DeviceBatch;
pub use device_inputs::{
    ClassDtype, DeviceDenominators, DeviceGradients, DeviceGroundTruth, DeviceInputs,
    DevicePredictions, DeviceTargets,
};
pub use engine::{FcosLoss, CPU_TARGET_WORKGROUPS, DEFAULT_TIMEOUT, GPU_TARGET_WORKGROUPS};
pub use pending::PendingLosses;
pub use ranges::{
    BufferRange, RangedGradients, RangedGroundTruth, RangedInputs, RangedPredictions,
};
pub use ring::DEFAULT_RING_SIZE;
pub use shaders::{shader_variants, ShaderVariant, WORKGROUP_SIZE};
pub use timed::Timed;
