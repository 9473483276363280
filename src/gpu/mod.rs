//! The GPU side: device context, shaders, dispatch plan, pipelines, buffer pool and the engine.

pub mod context;
pub mod engine;
pub mod params;
pub mod pipelines;
pub mod plan;
pub mod pool;
pub mod shaders;

pub use context::GpuContext;
pub use engine::{DeviceGradients, DeviceInputs, FcosLoss, Timed, DEFAULT_TIMEOUT};
