//! The crate's one error type.

use thiserror::Error;

/// The underlying error a [`FcosError::Gpu`] keeps: wgpu's own (a validation or
/// out-of-memory error, a failed mapping or wait), reachable through
/// [`std::error::Error::source`] and downcastable to its wgpu type.
pub type GpuSource = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in `fcos_loss`. Messages name the tensor, the shape
/// or index, and the value involved. New variants may be added.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FcosError {
    /// No GPU adapter matched the request (or none exists).
    #[error("no wgpu adapter found{detail}: install a Vulkan driver (e.g. `apt-get install mesa-vulkan-drivers` for lavapipe) or an OpenGL/EGL driver, or pick one with WGPU_BACKEND=vulkan|gl|metal|dx12 and WGPU_ADAPTER_NAME")]
    NoAdapter {
        /// What was asked for (backend, adapter name), for the message.
        detail: String,
    },
    /// The adapter refused to open a device.
    #[error("could not open a device on adapter '{adapter}': {source}")]
    RequestDevice {
        /// The adapter's name and backend.
        adapter: String,
        /// wgpu's reason.
        #[source]
        source: wgpu::RequestDeviceError,
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
        /// The tensor's name in docs/contract.md §5 terms (e.g. `cls_logits.2`).
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
    /// The call itself is wrong: a buffer without the usage the engine needs, a
    /// backward call without gradient buffers, a feature the device lacks.
    #[error("invalid call: {0}")]
    InvalidCall(String),
    /// The input is larger than the adapter can hold or dispatch.
    #[error("limit exceeded: {0}")]
    Limit(String),
    /// wgpu reported an error (validation, out of memory, a failed mapping or wait),
    /// kept as the [`source`](std::error::Error::source) where there is one.
    #[error("wgpu error: {message}")]
    Gpu {
        /// What the engine was doing, and wgpu's description.
        message: String,
        /// wgpu's error, where there is one.
        #[source]
        source: Option<GpuSource>,
    },
    /// The device was lost; make a new engine.
    #[error("the GPU device was lost: {0}; create a new engine")]
    DeviceLost(String),
    /// Waiting for the GPU took longer than the configured timeout.
    #[error("timed out after {0:?} waiting for the GPU")]
    Timeout(std::time::Duration),
    /// Reading or writing a case file failed.
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

    /// A [`FcosError::Gpu`] without an underlying wgpu error.
    pub(crate) fn gpu(message: impl Into<String>) -> Self {
        FcosError::Gpu {
            message: message.into(),
            source: None,
        }
    }

    /// A [`FcosError::Gpu`] that keeps wgpu's error as its source.
    pub(crate) fn gpu_from(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        FcosError::Gpu {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_send_sync_and_keep_their_source() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<FcosError>();
        let e = FcosError::gpu_from("mapping failed", wgpu::BufferAsyncError);
        let source = std::error::Error::source(&e).expect("a source");
        assert!(source.downcast_ref::<wgpu::BufferAsyncError>().is_some());
        assert!(e.to_string().contains("mapping failed"));
    }

    #[test]
    fn large_values_show_in_exponent_form() {
        assert_eq!(show_value(1e300), "1e300");
        assert_eq!(show_value(2.5), "2.5");
        assert_eq!(show_value(f64::NAN), "NaN");
    }
}
