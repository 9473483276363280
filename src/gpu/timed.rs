//! A result with the time it took.

use std::time::Duration;

/// A result with its timing.
#[derive(Debug, Clone, PartialEq)]
pub struct Timed<T> {
    /// The result.
    pub value: T,
    /// GPU time of the kernels, from timestamp queries (`None` when the adapter has no
    /// `TIMESTAMP_QUERY`).
    pub kernel: Option<Duration>,
    /// Wall-clock time of the whole call (upload, kernels, readback).
    pub call: Duration,
}

impl<T> Timed<T> {
    /// The same times with `f` applied to the result.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Timed<U> {
        Timed {
            value: f(self.value),
            kernel: self.kernel,
            call: self.call,
        }
    }
}
