//! The GPU side: device context, shaders, pipelines, buffer pool and the engine.

pub mod context;
pub mod engine;
pub mod params;
pub mod pipelines;
pub mod pool;
pub mod shaders;

pub use context::GpuContext;
pub use engine::{DeviceInputs, FcosLoss, DEFAULT_TIMEOUT};
