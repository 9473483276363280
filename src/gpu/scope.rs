//! wgpu error scopes: every piece of the engine's GPU work runs inside one, so
//! that a validation or out-of-memory error comes back as a [`FcosError`] instead
//! of reaching the device's uncaptured-error handler (which panics by default on a
//! device the application made, and belongs to the application).

use crate::error::FcosError;

/// Runs `f` inside validation and out-of-memory error scopes and turns what they
/// catch into [`FcosError::Gpu`], keeping wgpu's error as its source.
pub(crate) fn scoped<T>(device: &wgpu::Device, f: impl FnOnce() -> T) -> Result<T, FcosError> {
    let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let out = f();
    let v = pollster::block_on(validation.pop());
    let o = pollster::block_on(oom.pop());
    match v.or(o) {
        Some(e) => Err(FcosError::gpu_from(describe(&e), e)),
        None => Ok(out),
    }
}

/// wgpu's error with its full description (its `Display` alone says only the kind).
pub(crate) fn describe(e: &wgpu::Error) -> String {
    match e {
        wgpu::Error::OutOfMemory { .. } => "out of memory".to_string(),
        wgpu::Error::Validation { description, .. } => format!("validation: {description}"),
        wgpu::Error::Internal { description, .. } => format!("internal: {description}"),
    }
}
