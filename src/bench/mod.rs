//! Benchmarks of the fused loss: the shared logic behind `cargo bench` and the CLI.
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
//! 6. the CPU `f64` reference (first [`BenchOptions::cpu_reps`] repetitions only).
//!
//! It reports medians and minima in milliseconds in a [`BenchReport`] (serialisable
//! to JSON), and [`table`] and [`csv`] format several reports.
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

use std::fmt::Write as _;
use std::ops::Deref;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::synthetic::{self, SyntheticSpec};
use crate::{
    Batch, DeviceBatch, DeviceGradients, DeviceInputs, FcosError, FcosLoss, Heads, Levels,
    LossConfig, LossWeights, Losses, Timed, ABS_TOL, REL_TOL,
};

mod roofline;

/// The pyramid strides every benchmark uses (FCOS P3..P7).
pub const STRIDES: [u32; 5] = [8, 16, 32, 64, 128];

/// The batch sizes of the scaling sweep ([`scaling`]).
pub const SCALING_BATCHES: [usize; 6] = [1, 2, 4, 8, 16, 32];

/// One benchmark shape: what to generate and how often to time it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BenchSpec {
    /// Images per batch, `B`.
    pub batch: usize,
    /// Foreground classes, `C`.
    pub classes: u32,
    /// Image size `(H, W)` in pixels; level `l` is `ceil(H / s_l) × ceil(W / s_l)`.
    pub image: (u32, u32),
    /// Timed repetitions of each GPU measurement (medians and minima are over these).
    pub reps: usize,
    /// Seed of the synthetic batch.
    pub seed: u64,
}

impl BenchSpec {
    /// A shape with 10 repetitions and seed 0.
    pub fn new(batch: usize, classes: u32, image: (u32, u32)) -> Self {
        BenchSpec {
            batch,
            classes,
            image,
            reps: 10,
            seed: 0,
        }
    }

    /// Pascal VOC: `B = 2`, `C = 20`, `512 × 512`.
    pub fn voc() -> Self {
        Self::new(2, 20, (512, 512))
    }

    /// COCO: `B = 8`, `C = 80`, `800 × 1024` (the demo's batch).
    pub fn coco() -> Self {
        Self::new(8, 80, (800, 1024))
    }

    /// COCO at the full training size: `B = 16`, `C = 80`, `800 × 1333`.
    pub fn coco_large() -> Self {
        Self::new(16, 80, (800, 1333))
    }

    /// The three named presets, with their names: `voc`, `coco`, `coco-large`.
    pub fn presets() -> Vec<(&'static str, BenchSpec)> {
        vec![
            ("voc", Self::voc()),
            ("coco", Self::coco()),
            ("coco-large", Self::coco_large()),
        ]
    }

    /// A preset by name (`voc`, `coco`, `coco-large` or `coco_large`, any case).
    pub fn preset(name: &str) -> Result<BenchSpec, FcosError> {
        let wanted = name.to_ascii_lowercase().replace('_', "-");
        Self::presets()
            .into_iter()
            .find(|(n, _)| *n == wanted)
            .map(|(_, s)| s)
            .ok_or_else(|| {
                FcosError::InvalidConfig(format!(
                    "unknown benchmark preset '{name}': expected voc, coco or coco-large"
                ))
            })
    }

    /// The same shape with `batch` images.
    pub fn with_batch(mut self, batch: usize) -> Self {
        self.batch = batch;
        self
    }

    /// The same shape timed `reps` times.
    pub fn with_reps(mut self, reps: usize) -> Self {
        self.reps = reps;
        self
    }

    /// The same shape drawn with `seed`.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// `"B8 C80 800x1024"`.
    pub fn label(&self) -> String {
        shape_label(self.batch, self.classes, self.image)
    }

    /// The pyramid levels of this shape (strides [`STRIDES`]).
    pub fn levels(&self) -> Result<Levels, FcosError> {
        Levels::from_image(self.image.0, self.image.1, &STRIDES)
    }

    fn check(&self) -> Result<(), FcosError> {
        if self.batch == 0 || self.classes == 0 {
            return Err(FcosError::InvalidConfig(format!(
                "a benchmark needs B >= 1 and C >= 1, got B = {}, C = {}",
                self.batch, self.classes
            )));
        }
        if self.image.0 == 0 || self.image.1 == 0 {
            return Err(FcosError::InvalidConfig(format!(
                "a benchmark needs a non-empty image, got {}x{}",
                self.image.0, self.image.1
            )));
        }
        Ok(())
    }
}

fn shape_label(batch: usize, classes: u32, image: (u32, u32)) -> String {
    format!("B{batch} C{classes} {}x{}", image.0, image.1)
}

/// What [`run_with`] measures besides the forward pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchOptions {
    /// Untimed calls of every GPU path before timing.
    pub warmup: usize,
    /// Timed runs of the CPU reference (at most [`BenchSpec::reps`]; `0` skips it and
    /// the GPU-vs-CPU check).
    pub cpu_reps: usize,
    /// Whether to time the forward + backward pass.
    pub backward: bool,
}

impl Default for BenchOptions {
    /// One warm-up call, three CPU reference runs, backward timed.
    fn default() -> Self {
        BenchOptions {
            warmup: 1,
            cpu_reps: 3,
            backward: true,
        }
    }
}

/// The result of one benchmark shape. Times are milliseconds; `*_ms` are medians
/// over the repetitions, `*_min_ms` minima.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    /// `"<adapter name> (<backend>)"`.
    pub adapter: String,
    /// Images, `B`.
    pub batch: usize,
    /// Classes, `C`.
    pub classes: u32,
    /// Image `(H, W)`.
    pub image: (u32, u32),
    /// Pyramid positions per image, `P`.
    pub positions: usize,
    /// Timed repetitions of each GPU measurement.
    pub reps: usize,
    /// Whether kernel times come from timestamp queries (else from the wall clock
    /// of the device-buffer call, which includes submission and readback).
    pub timestamps: bool,
    /// Fused forward pass (from device buffers), kernel time, median.
    pub kernel_ms: f64,
    /// Fused forward pass, kernel time, minimum.
    pub kernel_min_ms: f64,
    /// Whole call from host slices (upload, kernels, readback), median.
    pub call_ms: f64,
    /// Whole call from host slices, minimum.
    pub call_min_ms: f64,
    /// Whole call from device buffers (kernels, readback of `[B]` losses), median.
    pub device_call_ms: f64,
    /// Whole call from device buffers, minimum.
    pub device_call_min_ms: f64,
    /// Roofline kernel (reads the fused pass's bytes and only sums them), median.
    pub roofline_ms: f64,
    /// Roofline kernel, minimum.
    pub roofline_min_ms: f64,
    /// `kernel_ms / roofline_ms`: how far the fused pass is from reading memory alone.
    pub kernel_over_roofline: f64,
    /// Fused forward + backward pass (device buffers), kernel time, median; `None`
    /// when not measured or the adapter cannot bind the backward pass.
    pub backward_kernel_ms: Option<f64>,
    /// Forward + backward kernel time, minimum.
    pub backward_kernel_min_ms: Option<f64>,
    /// `backward_kernel_ms / kernel_ms`.
    pub backward_over_forward: Option<f64>,
    /// The backward pass's roofline (its reads and gradient writes, no maths), kernel
    /// time, median; `None` where the backward pass was not measured.
    pub backward_roofline_ms: Option<f64>,
    /// The backward pass's roofline, minimum.
    pub backward_roofline_min_ms: Option<f64>,
    /// `backward_kernel_ms / backward_roofline_ms`: how far the fused backward pass
    /// is from moving its bytes alone.
    pub backward_over_roofline: Option<f64>,
    /// `backward_roofline_ms / roofline_ms`: what the gradient writes alone add to
    /// the forward pass's memory traffic, as a ratio of the two rooflines.
    pub backward_roofline_over_roofline: Option<f64>,
    /// CPU `f64` reference, median; `None` when skipped.
    pub cpu_ms: Option<f64>,
    /// CPU reference, minimum.
    pub cpu_min_ms: Option<f64>,
    /// Timed runs of the CPU reference.
    pub cpu_reps: usize,
    /// `cpu_ms / call_ms`: the host-slice call's speed-up over the CPU reference.
    pub cpu_over_call: Option<f64>,
    /// Largest relative difference of the GPU per-image losses from the CPU
    /// reference ([`Losses::max_rel_diff`] with the tolerances of docs/contract.md §3); `None` when
    /// the reference was skipped.
    pub max_rel_diff: Option<f64>,
    /// Bytes the forward pass reads per call (every input once).
    pub bytes: u64,
    /// `bytes / kernel_ms`, in GB/s (10⁹ bytes).
    pub gb_per_s: f64,
    /// Class-logit elements `B·C·P` per second of kernel time, in 10⁹.
    pub gelem_per_s: f64,
}

impl BenchReport {
    /// `"B8 C80 800x1024"`.
    pub fn shape(&self) -> String {
        shape_label(self.batch, self.classes, self.image)
    }
}

/// An engine borrowed from the caller, or one made on its device for another `C`.
#[derive(Debug)]
enum EngineRef<'e> {
    Borrowed(&'e FcosLoss),
    Owned(Box<FcosLoss>),
}

impl Deref for EngineRef<'_> {
    type Target = FcosLoss;

    fn deref(&self) -> &FcosLoss {
        match self {
            EngineRef::Borrowed(e) => e,
            EngineRef::Owned(e) => e,
        }
    }
}

/// One benchmark shape, ready to time: the batch on the host, the same batch in
/// device buffers, gradient buffers, and an engine whose `C` matches.
///
/// The building block of [`run`] and of the criterion benches: each method times
/// one path once.
#[derive(Debug)]
pub struct Workload<'e> {
    engine: EngineRef<'e>,
    spec: BenchSpec,
    batch: Batch,
    inputs: DeviceBatch,
    grads: Option<Heads<wgpu::Buffer>>,
    weights: LossWeights,
}

impl<'e> Workload<'e> {
    /// Generates the batch of `spec` and uploads it into buffers on the engine's
    /// device. When the engine's `num_classes` differs from `spec.classes`, a second
    /// engine is made on the same device and queue with the engine's config but
    /// `spec.classes` (it uses the default dispatch size for the adapter).
    /// Gradient buffers are made too; if they exceed the device's buffer limits the
    /// backward pass is left out ([`forward_backward`](Self::forward_backward) gives `None`).
    pub fn new(engine: &'e FcosLoss, spec: &BenchSpec) -> Result<Self, FcosError> {
        spec.check()?;
        let engine = if engine.config().num_classes == spec.classes {
            EngineRef::Borrowed(engine)
        } else {
            let ctx = engine.context();
            let config = LossConfig {
                num_classes: spec.classes,
                ..engine.config().clone()
            };
            let mut owned = FcosLoss::from_device(ctx.device.clone(), ctx.queue.clone(), config)?;
            owned.set_checks(engine.checks());
            owned.set_workgroup_size(engine.workgroup_size())?;
            owned.set_subgroups(engine.subgroups())?;
            EngineRef::Owned(Box::new(owned))
        };
        let levels = spec.levels()?;
        // Before drawing the batch: a shape that cannot fit fails here, not in a
        // host allocation of the synthetic inputs.
        engine.check_fits(&levels, spec.batch, false)?;
        let synth = SyntheticSpec {
            seed: spec.seed,
            ..SyntheticSpec::new(spec.batch, spec.classes as usize)
        };
        let batch = synthetic::generate(&levels, &STRIDES, &synth)?;
        let device = &engine.context().device;
        let inputs = DeviceBatch::upload(device, &batch)?;
        let grads = match inputs.gradient_buffers(device) {
            Ok(g) => Some(g),
            // A buffer over the device's limits leaves the backward pass out; any
            // other failure is the caller's to see.
            Err(FcosError::Limit(_)) => None,
            Err(e) => return Err(e),
        };
        Ok(Workload {
            engine,
            spec: spec.clone(),
            batch,
            inputs,
            grads,
            weights: LossWeights::default(),
        })
    }

    /// The engine the workload runs on (the caller's, or one made for its `C`).
    pub fn engine(&self) -> &FcosLoss {
        &self.engine
    }

    /// The shape.
    pub fn spec(&self) -> &BenchSpec {
        &self.spec
    }

    /// The synthetic batch on the host.
    pub fn batch(&self) -> &Batch {
        &self.batch
    }

    /// The pyramid levels.
    pub fn levels(&self) -> &Levels {
        &self.batch.levels
    }

    /// Bytes the forward pass reads per call (every input once).
    pub fn input_bytes(&self) -> u64 {
        self.batch.input_bytes() as u64
    }

    /// Class-logit elements `B·C·P`.
    pub fn elements(&self) -> u64 {
        (self.batch.batch * self.batch.classes * self.batch.levels.positions()) as u64
    }

    /// The device buffers as [`DeviceInputs`].
    pub fn device_inputs(&self) -> DeviceInputs<'_> {
        self.inputs.inputs()
    }

    /// The loss from the device buffers, with its kernel and wall-clock times.
    pub fn forward_device(&self) -> Result<Timed<Losses>, FcosError> {
        self.engine
            .compute_device_timed(self.levels(), &self.device_inputs())
    }

    /// The loss from host slices (upload, kernels, readback), with its times.
    pub fn forward_host(&self) -> Result<Timed<Losses>, FcosError> {
        self.engine
            .compute_timed(self.levels(), &self.batch.inputs())
    }

    /// The roofline kernel on the device buffers, with its times.
    pub fn roofline(&self) -> Result<Timed<()>, FcosError> {
        self.engine
            .roofline_device(self.levels(), &self.device_inputs())
    }

    /// Forward + backward from the device buffers into the workload's gradient
    /// buffers; `None` when the device cannot hold or bind the backward pass
    /// ([`FcosError::Limit`]).
    pub fn forward_backward(&self) -> Result<Option<Timed<Losses>>, FcosError> {
        self.with_grads(|grads| {
            self.engine.forward_backward_device(
                self.levels(),
                &self.device_inputs(),
                grads,
                &self.weights,
            )
        })
    }

    /// The backward pass's roofline ([`FcosLoss::backward_roofline_device`]) into the
    /// workload's gradient buffers; `None` when the device cannot hold or bind the
    /// backward pass.
    pub fn backward_roofline(&self) -> Result<Option<Timed<()>>, FcosError> {
        self.with_grads(|grads| {
            self.engine
                .backward_roofline_device(self.levels(), &self.device_inputs(), grads)
        })
    }

    /// Runs `f` on the workload's gradient buffers; `None` when there are none or
    /// the device cannot hold or bind the backward pass ([`FcosError::Limit`]).
    fn with_grads<T>(
        &self,
        f: impl FnOnce(&DeviceGradients) -> Result<T, FcosError>,
    ) -> Result<Option<T>, FcosError> {
        let Some(g) = &self.grads else {
            return Ok(None);
        };
        match f(&g.as_ref()) {
            Ok(t) => Ok(Some(t)),
            Err(FcosError::Limit(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The CPU `f64` reference on the host batch, with its wall-clock time.
    pub fn cpu_reference(&self) -> Result<(Losses, Duration), FcosError> {
        let start = Instant::now();
        let losses =
            crate::reference::losses(self.engine.config(), self.levels(), &self.batch.inputs())?;
        Ok((losses, start.elapsed()))
    }
}

/// The kernel time of a call: its timestamp-query time, or its wall clock where the
/// adapter has no timestamps.
pub fn kernel_time<T>(t: &Timed<T>) -> Duration {
    t.kernel.unwrap_or(t.call)
}

/// Times one shape with the default [`BenchOptions`] (one warm-up, three CPU
/// reference runs capped at `spec.reps`, backward timed).
pub fn run(engine: &FcosLoss, spec: &BenchSpec) -> Result<BenchReport, FcosError> {
    run_with(engine, spec, &BenchOptions::default())
}

/// Times one shape: see the [module docs](self) for what is measured and in which
/// order. `spec.reps` must be at least 1.
pub fn run_with(
    engine: &FcosLoss,
    spec: &BenchSpec,
    options: &BenchOptions,
) -> Result<BenchReport, FcosError> {
    if spec.reps == 0 {
        return Err(FcosError::InvalidConfig(
            "a benchmark needs reps >= 1, got 0".into(),
        ));
    }
    let work = Workload::new(engine, spec)?;
    measure(&work, spec.reps, options)
}

/// Times a prepared [`Workload`] `reps` times (see [`run_with`]).
pub fn measure(
    work: &Workload<'_>,
    reps: usize,
    options: &BenchOptions,
) -> Result<BenchReport, FcosError> {
    if reps == 0 {
        return Err(FcosError::InvalidConfig(
            "a benchmark needs reps >= 1, got 0".into(),
        ));
    }
    let mut backward = options.backward;
    for _ in 0..options.warmup {
        work.forward_device()?;
        work.forward_host()?;
        work.roofline()?;
        if backward && (work.forward_backward()?.is_none() || work.backward_roofline()?.is_none()) {
            backward = false;
        }
    }
    let cpu_reps = options.cpu_reps.min(reps);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (mut kernel, mut call, mut device_call) = (vec![], vec![], vec![]);
    let (mut roofline, mut bwd, mut bwd_roofline, mut cpu) = (vec![], vec![], vec![], vec![]);
    let mut gpu_losses = None;
    let mut cpu_losses = None;
    for rep in 0..reps {
        let t = work.forward_device()?;
        kernel.push(ms(kernel_time(&t)));
        device_call.push(ms(t.call));
        gpu_losses.get_or_insert(t.value);
        call.push(ms(work.forward_host()?.call));
        roofline.push(ms(kernel_time(&work.roofline()?)));
        if backward {
            match (work.forward_backward()?, work.backward_roofline()?) {
                (Some(t), Some(r)) => {
                    bwd.push(ms(kernel_time(&t)));
                    bwd_roofline.push(ms(kernel_time(&r)));
                }
                _ => backward = false,
            }
        }
        if rep < cpu_reps {
            let (l, d) = work.cpu_reference()?;
            cpu.push(ms(d));
            cpu_losses.get_or_insert(l);
        }
    }
    let kernel_ms = median(&kernel);
    let call_ms = median(&call);
    let roofline_ms = median(&roofline);
    let bytes = work.input_bytes();
    let measured = backward && !bwd.is_empty();
    let (backward_kernel_ms, backward_kernel_min_ms) = if measured {
        (Some(median(&bwd)), Some(min(&bwd)))
    } else {
        (None, None)
    };
    let (backward_roofline_ms, backward_roofline_min_ms) = if measured {
        (Some(median(&bwd_roofline)), Some(min(&bwd_roofline)))
    } else {
        (None, None)
    };
    let (cpu_ms, cpu_min_ms) = if cpu.is_empty() {
        (None, None)
    } else {
        (Some(median(&cpu)), Some(min(&cpu)))
    };
    let max_rel_diff = match (&gpu_losses, &cpu_losses) {
        (Some(g), Some(c)) => Some(g.max_rel_diff(c, REL_TOL, ABS_TOL)),
        _ => None,
    };
    let per_s = |x: f64| x / (kernel_ms * 1e-3) / 1e9;
    let spec = work.spec();
    Ok(BenchReport {
        adapter: work.engine().adapter_name(),
        batch: spec.batch,
        classes: spec.classes,
        image: spec.image,
        positions: work.levels().positions(),
        reps,
        timestamps: work.engine().has_timestamps(),
        kernel_ms,
        kernel_min_ms: min(&kernel),
        call_ms,
        call_min_ms: min(&call),
        device_call_ms: median(&device_call),
        device_call_min_ms: min(&device_call),
        roofline_ms,
        roofline_min_ms: min(&roofline),
        kernel_over_roofline: kernel_ms / roofline_ms,
        backward_kernel_ms,
        backward_kernel_min_ms,
        backward_over_forward: backward_kernel_ms.map(|b| b / kernel_ms),
        backward_roofline_ms,
        backward_roofline_min_ms,
        backward_over_roofline: backward_kernel_ms
            .zip(backward_roofline_ms)
            .map(|(k, r)| k / r),
        backward_roofline_over_roofline: backward_roofline_ms.map(|r| r / roofline_ms),
        cpu_ms,
        cpu_min_ms,
        cpu_reps: cpu.len(),
        cpu_over_call: cpu_ms.map(|c| c / call_ms),
        max_rel_diff,
        bytes,
        gb_per_s: per_s(bytes as f64),
        gelem_per_s: per_s(work.elements() as f64),
    })
}

/// The batch-size sweep: `base` with each of `batches` images, forward, host call
/// and roofline only (no backward, no CPU reference), smallest first.
pub fn scaling(
    engine: &FcosLoss,
    base: &BenchSpec,
    batches: &[usize],
) -> Result<Vec<BenchReport>, FcosError> {
    let options = BenchOptions {
        warmup: 1,
        cpu_reps: 0,
        backward: false,
    };
    let mut out = Vec::with_capacity(batches.len());
    for &b in batches {
        out.push(run_with(engine, &base.clone().with_batch(b), &options)?);
    }
    Ok(out)
}

/// Median of a non-empty slice (mean of the middle two for an even length).
fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => s[n / 2],
        _ => 0.5 * (s[n / 2 - 1] + s[n / 2]),
    }
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn opt(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

/// A plain-text table of reports, one row each: adapter; shape; kernel ms (median,
/// min); call ms from host slices; call ms from device buffers; roofline ms;
/// fused ÷ roofline; forward + backward kernel ms; its ratio to the forward kernel;
/// the backward pass's roofline ms; CPU ms; GB/s; G elem/s.
pub fn table(reports: &[BenchReport]) -> String {
    let header = [
        "adapter",
        "shape",
        "kernel ms (med, min)",
        "call ms host",
        "call ms device",
        "roofline ms",
        "fused ÷ roofline",
        "fwd+bwd kernel ms",
        "fwd+bwd ÷ fwd",
        "bwd roofline ms",
        "CPU ms",
        "GB/s",
        "G elem/s",
    ];
    let rows: Vec<[String; 13]> = reports
        .iter()
        .map(|r| {
            [
                r.adapter.clone(),
                r.shape(),
                format!("{:.2}, {:.2}", r.kernel_ms, r.kernel_min_ms),
                format!("{:.2}", r.call_ms),
                format!("{:.2}", r.device_call_ms),
                format!("{:.2}", r.roofline_ms),
                format!("{:.2}", r.kernel_over_roofline),
                opt(r.backward_kernel_ms, 2),
                opt(r.backward_over_forward, 2),
                opt(r.backward_roofline_ms, 2),
                opt(r.cpu_ms, 1),
                format!("{:.2}", r.gb_per_s),
                format!("{:.3}", r.gelem_per_s),
            ]
        })
        .collect();
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .chain(std::iter::once(header[i].chars().count()))
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..header.len()).map(width).collect();
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, &w))| {
                let pad = w.saturating_sub(c.chars().count());
                // Text columns left-aligned, numbers right-aligned.
                if i < 2 {
                    format!("{c}{}", " ".repeat(pad))
                } else {
                    format!("{}{c}", " ".repeat(pad))
                }
            })
            .collect();
        let _ = writeln!(out, "{}", parts.join(" | ").trim_end());
    };
    line(&header.map(String::from));
    line(&widths.iter().map(|&w| "-".repeat(w)).collect::<Vec<_>>());
    for r in &rows {
        line(r);
    }
    out
}

/// Reports as CSV (header line first): `adapter,batch,classes,height,width,positions,
/// reps,timestamps,kernel_ms,kernel_min_ms,call_ms,device_call_ms,roofline_ms,
/// kernel_over_roofline,backward_kernel_ms,backward_roofline_ms,cpu_ms,bytes,gb_per_s,gelem_per_s`
/// (empty cells where a value was not measured).
pub fn csv(reports: &[BenchReport]) -> String {
    let mut out = String::from(
        "adapter,batch,classes,height,width,positions,reps,timestamps,kernel_ms,kernel_min_ms,call_ms,device_call_ms,roofline_ms,kernel_over_roofline,backward_kernel_ms,backward_roofline_ms,cpu_ms,bytes,gb_per_s,gelem_per_s\n",
    );
    let o = |x: Option<f64>| x.map_or_else(String::new, |v| format!("{v:.4}"));
    for r in reports {
        let _ = writeln!(
            out,
            "\"{}\",{},{},{},{},{},{},{},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{},{},{},{},{:.4},{:.4}",
            r.adapter.replace('"', "\"\""),
            r.batch,
            r.classes,
            r.image.0,
            r.image.1,
            r.positions,
            r.reps,
            r.timestamps,
            r.kernel_ms,
            r.kernel_min_ms,
            r.call_ms,
            r.device_call_ms,
            r.roofline_ms,
            r.kernel_over_roofline,
            o(r.backward_kernel_ms),
            o(r.backward_roofline_ms),
            o(r.cpu_ms),
            r.bytes,
            r.gb_per_s,
            r.gelem_per_s,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_the_documented_shapes() {
        assert_eq!(BenchSpec::voc().label(), "B2 C20 512x512");
        assert_eq!(BenchSpec::coco().label(), "B8 C80 800x1024");
        assert_eq!(BenchSpec::coco_large().label(), "B16 C80 800x1333");
        assert_eq!(
            BenchSpec::preset("COCO_large").unwrap(),
            BenchSpec::coco_large()
        );
        assert!(BenchSpec::preset("imagenet").is_err());
    }

    #[test]
    fn median_and_min() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(min(&[4.0, 1.0, 2.0]), 1.0);
    }

    fn sample() -> BenchReport {
        BenchReport {
            adapter: "llvmpipe (Vulkan)".into(),
            batch: 8,
            classes: 80,
            image: (800, 1024),
            positions: 17064,
            reps: 5,
            timestamps: true,
            kernel_ms: 50.0,
            kernel_min_ms: 48.0,
            call_ms: 60.0,
            call_min_ms: 58.0,
            device_call_ms: 51.0,
            device_call_min_ms: 50.0,
            roofline_ms: 20.0,
            roofline_min_ms: 19.0,
            kernel_over_roofline: 2.5,
            backward_kernel_ms: None,
            backward_kernel_min_ms: None,
            backward_over_forward: None,
            backward_roofline_ms: None,
            backward_roofline_min_ms: None,
            backward_over_roofline: None,
            backward_roofline_over_roofline: None,
            cpu_ms: Some(500.0),
            cpu_min_ms: Some(490.0),
            cpu_reps: 3,
            cpu_over_call: Some(500.0 / 60.0),
            max_rel_diff: Some(1e-6),
            bytes: 1000,
            gb_per_s: 1.0,
            gelem_per_s: 0.2,
        }
    }

    #[test]
    fn table_and_csv_have_one_row_per_report() {
        let r = sample();
        let t = table(&[r.clone(), r.clone()]);
        assert_eq!(t.lines().count(), 4);
        assert!(t.contains("B8 C80 800x1024"));
        assert!(t.contains("fused ÷ roofline"));
        let c = csv(&[r]);
        assert_eq!(c.lines().count(), 2);
        assert_eq!(
            c.lines().next().unwrap().split(',').count(),
            c.lines().nth(1).unwrap().split(',').count()
        );
    }

    #[test]
    fn report_serialises_with_the_documented_keys() {
        let v = serde_json::to_value(sample()).unwrap();
        for key in [
            "adapter",
            "kernel_ms",
            "call_ms",
            "device_call_ms",
            "roofline_ms",
            "kernel_over_roofline",
            "cpu_ms",
            "kernel_min_ms",
            "backward_kernel_ms",
            "backward_over_forward",
            "backward_roofline_ms",
            "backward_over_roofline",
            "gb_per_s",
            "gelem_per_s",
            "batch",
            "classes",
            "image",
            "timestamps",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["image"], serde_json::json!([800, 1024]));
    }
}
