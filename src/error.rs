//! The crate's one error type.

use thiserror::Error;

/// Everything that can go wrong in `fcos_loss`. Messages name the tensor, the shape
/// or index, and the value involved.
#[derive(Debug, Error)]
pub enum FcosError {
    /// No GPU adapter matched the request (or none exists).
    #[error("no wgpu adapter found{detail}: install a Vulkan driver (e.g. `apt-get install mesa-vulkan-drivers` for lavapipe) or an OpenGL/EGL driver, or pick one with WGPU_BACKEND=vulkan|gl|metal|dx12 and WGPU_ADAPTER_NAME")]
    NoAdapter {
        /// What was asked for (backend, adapter name), for the message.
        detail: String,
    },
    /// The adapter refused to open a device.
    #[error("could not open a device on adapter '{adapter}': {message}")]
    RequestDevice {
        /// The adapter's name and backend.
        adapter: String,
        /// wgpu's reason.
        message: String,
    },
    /// A configuration value is unusable.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// The pyramid layout is unusable.
    #[error("invalid layout: {0}")]
    InvalidLayout(String),
    /// A tensor (or buffer) does not have the size or shape the layout requires.
    #[error("tensor '{tensor}': expected {expected}, got {got}")]
    Shape {
        /// The tensor's name in SPEC §5 terms (e.g. `cls_logits.2`).
        tensor: String,
        /// What the layout requires.
        expected: String,
        /// What was given.
        got: String,
    },
    /// A tensor holds a value the loss cannot use.
    #[error("tensor '{tensor}' at index {index}: {problem} (value {})", show_value(*.value))]
    Value {
        /// The tensor's name.
        tensor: String,
        /// Flat element index of the first bad value.
        index: usize,
        /// The offending value.
        value: f64,
        /// What is wrong with it.
        problem: String,
    },
    /// The input is larger than the adapter can hold or dispatch.
    #[error("limit exceeded: {0}")]
    Limit(String),
    /// wgpu reported a validation or out-of-memory error.
    #[error("wgpu error: {0}")]
    Gpu(String),
    /// The device was lost; make a new engine.
    #[error("the GPU device was lost: {0}; create a new engine")]
    DeviceLost(String),
    /// Waiting for the GPU took longer than the configured timeout.
    #[error("timed out after {0:?} waiting for the GPU")]
    Timeout(std::time::Duration),
    /// Reading or writing a safetensors file failed.
    #[error("{0}")]
    File(String),
}

/// A value as an error shows it: plain for everyday magnitudes, in exponent form
/// for very large or very small ones (`1e300`, not three hundred digits).
fn show_value(v: f64) -> String {
    let a = v.abs();
    if v.is_finite() && a != 0.0 && !(1e-5..1e16).contains(&a) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

impl FcosError {
    pub(crate) fn shape(
        tensor: impl Into<String>,
        expected: impl ToString,
        got: impl ToString,
    ) -> Self {
        FcosError::Shape {
            tensor: tensor.into(),
            expected: expected.to_string(),
            got: got.to_string(),
        }
    }
}
