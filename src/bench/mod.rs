//! Benchmarks of the fused loss: the logic behind `cargo bench` and the CLI's
//! `bench` command.
//!
//! A [`Workload`] draws a deterministic synthetic batch (strides 8..128), uploads it
//! once into device buffers of the engine's device and makes gradient buffers for
//! the backward pass. [`run`] then times, per repetition and interleaved so that
//! machine noise hits every path alike:
//!
//! 1. the fused forward pass from device buffers: its kernel time (timestamp
//!    queries; the call's wall clock where the adapter has none) and its wall clock;
//! 2. the same loss from host slices (upload + kernels + readback);
//! 3. the memory roofline: a kernel reading exactly the bytes the fused pass reads;
//! 4. the fused forward + backward pass from device buffers (kernel time);
//! 5. the backward pass's memory roofline: the same positive count, reads and
//!    gradient writes without the maths (kernel time);
//! 6. the CPU `f64` reference (first [`BenchOptions::cpu_reps`] repetitions only);
//! 7. with [`BenchOptions::norms`], the forward and the forward + backward kernels
//!    under each normalisation mode of [`NORMS`] (per-image, batch, global-ctr
//!    with host denominators, global-ctr with denominators in a device buffer), one
//!    engine per mode on the same device, in a rotating order;
//! 8. with [`BenchOptions::boxes`], the loss from `M` ground-truth boxes per image
//!    (`boxes.rs`): the fused pass, the target pass alone, the whole call from host
//!    slices and the fused forward + backward.
//!
//! It reports medians and minima in milliseconds in a [`BenchReport`] (serialisable
//! to JSON), and [`table`] and [`csv`] format several reports.
//!
//! One job per file: `spec.rs` (the shapes), `workload.rs` (one shape on the
//! device), `measure.rs` (timing), `report.rs` (the report and its formats),
//! `roofline.rs` (the engine's memory-roofline calls), `norms.rs` (the
//! normalisation modes), `boxes.rs` (targets from boxes).
//!
//! ```no_run
//! use fcos_loss::{bench, FcosLoss, LossConfig};
//!
//! # fn main() -> Result<(), fcos_loss::FcosError> {
//! let engine = FcosLoss::new(LossConfig::new(80))?;
//! let reports = vec![
//!     bench::run(&engine, &bench::BenchSpec::voc())?,
//!     bench::run(&engine, &bench::BenchSpec::coco())?,
//! ];
//! println!("{}", bench::table(&reports));
//! # Ok(()) }
//! ```

mod boxes;
mod measure;
mod norms;
mod report;
mod roofline;
mod spec;
mod workload;

pub use boxes::{BoxRuns, BoxTimes};
pub use measure::{kernel_time, measure, run, run_with, scaling, BenchOptions, SCALING_BATCHES};
pub use norms::{NormTimes, NORMS};
pub use report::{csv, table, BenchReport};
pub use spec::BenchSpec;
pub use workload::Workload;
