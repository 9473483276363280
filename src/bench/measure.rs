//! Timing: [`run`] / [`run_with`] / [`measure`] time one shape, [`scaling`] a
//! batch-size sweep; medians and minima of the repetitions make a [`BenchReport`].

use std::time::Duration;

use super::boxes::{BoxRuns, BoxTimes};
use super::norms::{NormRuns, NormTimes, NORMS};
use super::report::BenchReport;
use super::spec::BenchSpec;
use super::workload::Workload;
use crate::{reference, FcosError, FcosLoss, Losses, Timed, ABS_TOL, REL_TOL};

/// The batch sizes of the scaling sweep ([`scaling`]).
pub const SCALING_BATCHES: [usize; 6] = [1, 2, 4, 8, 16, 32];

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
    /// Whether to time the forward (and, with `backward`, the forward + backward)
    /// kernel under every normalisation mode of [`NORMS`] too
    /// ([`BenchReport::norms`]); with `cpu_reps > 0` each mode's losses are also
    /// compared with the CPU reference under that mode.
    pub norms: bool,
    /// With `Some(M)`, also time the loss from `M` ground-truth boxes per image
    /// (the fused pass, the target pass alone, the whole host call and, with
    /// `backward`, the fused forward + backward; [`BenchReport::boxes`]).
    pub boxes: Option<usize>,
}

impl Default for BenchOptions {
    /// One warm-up call, three CPU reference runs, backward timed, no
    /// normalisation modes.
    fn default() -> Self {
        BenchOptions {
            warmup: 1,
            cpu_reps: 3,
            backward: true,
            norms: false,
            boxes: None,
        }
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

/// Times one shape: see the [module docs](super) for what is measured and in which
/// order. `spec.reps` must be at least 1.
pub fn run_with(
    engine: &FcosLoss,
    spec: &BenchSpec,
    options: &BenchOptions,
) -> Result<BenchReport, FcosError> {
    check_reps(spec.reps)?;
    let work = Workload::new(engine, spec)?;
    measure(&work, spec.reps, options)
}

/// Times a prepared [`Workload`] `reps` times (see [`run_with`]).
pub fn measure(
    work: &Workload<'_>,
    reps: usize,
    options: &BenchOptions,
) -> Result<BenchReport, FcosError> {
    check_reps(reps)?;
    let norms = options.norms.then(|| NormRuns::new(work)).transpose()?;
    let boxes = options.boxes.map(|m| BoxRuns::new(work, m)).transpose()?;
    let backward = warm_up(work, options, norms.as_ref(), boxes.as_ref())?;
    let cpu_reps = options.cpu_reps.min(reps);
    let runs = Runs {
        norms: norms.as_ref(),
        boxes: boxes.as_ref(),
    };
    let samples = Samples::take(work, reps, cpu_reps, backward, runs)?;
    let mut report = samples.report(work, reps);
    if let (Some(runs), Some(m)) = (&boxes, options.boxes) {
        report.boxes = Some(samples.box_times(m, report.kernel_ms, runs.two_step_diff(work)?));
    }
    if let Some(runs) = &norms {
        let check = (cpu_reps > 0)
            .then(|| samples.norm_diffs(work, runs))
            .transpose()?;
        report.norms = Some(samples.norm_times(check));
    }
    Ok(report)
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
        norms: false,
        boxes: None,
    };
    let mut out = Vec::with_capacity(batches.len());
    for &b in batches {
        out.push(run_with(engine, &base.clone().with_batch(b), &options)?);
    }
    Ok(out)
}

fn check_reps(reps: usize) -> Result<(), FcosError> {
    if reps == 0 {
        return Err(FcosError::InvalidConfig(
            "a benchmark needs reps >= 1, got 0".into(),
        ));
    }
    Ok(())
}

/// Calls every GPU path `options.warmup` times (each mode's too, with `norms`);
/// whether the backward pass is still to be timed (asked for, and the device
/// could run it).
fn warm_up(
    work: &Workload<'_>,
    options: &BenchOptions,
    norms: Option<&NormRuns>,
    boxes: Option<&BoxRuns>,
) -> Result<bool, FcosError> {
    let mut backward = options.backward;
    for _ in 0..options.warmup {
        if let Some(b) = boxes {
            b.forward(work)?;
            b.targets(work)?;
            b.host_call(work)?;
            if backward && b.forward_backward(work)?.is_none() {
                backward = false;
            }
        }
        work.forward_device()?;
        work.forward_host()?;
        work.roofline()?;
        if backward && (work.forward_backward()?.is_none() || work.backward_roofline()?.is_none()) {
            backward = false;
        }
        if let Some(runs) = norms {
            for i in 0..NORMS.len() {
                runs.forward(i, work)?;
                if backward && runs.forward_backward(i, work)?.is_none() {
                    backward = false;
                }
            }
        }
    }
    Ok(backward)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Millisecond times of every path, one per repetition, and the first losses of
/// the GPU and of the CPU reference.
#[derive(Default)]
struct Samples {
    kernel: Vec<f64>,
    call: Vec<f64>,
    device_call: Vec<f64>,
    roofline: Vec<f64>,
    backward: Vec<f64>,
    backward_roofline: Vec<f64>,
    /// Whether the backward pass ran in every repetition.
    backward_measured: bool,
    cpu: Vec<f64>,
    gpu_losses: Option<Losses>,
    cpu_losses: Option<Losses>,
    /// Per mode of [`NORMS`] (when timed): forward kernel times, forward +
    /// backward kernel times, and the first forward losses.
    norm_kernel: Vec<Vec<f64>>,
    norm_backward: Vec<Vec<f64>>,
    norm_losses: Vec<Option<Losses>>,
    /// From boxes (when timed): the fused loss's kernel, the target pass's
    /// kernel, the whole host call, the fused forward + backward's kernel, and the
    /// positives of the first call.
    boxes_kernel: Vec<f64>,
    targets_kernel: Vec<f64>,
    boxes_call: Vec<f64>,
    boxes_backward: Vec<f64>,
    boxes_positives: u64,
}

/// The optional paths a repetition also times.
#[derive(Clone, Copy)]
struct Runs<'a> {
    norms: Option<&'a NormRuns>,
    boxes: Option<&'a BoxRuns>,
}

impl Samples {
    /// `reps` interleaved repetitions of every path, so that machine noise hits
    /// them alike; the CPU reference in the first `cpu_reps` only. The backward
    /// pass is dropped (from then on and from the report) the first time the
    /// device cannot run it. With `norms`, every mode's forward and forward +
    /// backward kernels follow in each repetition, starting from a different
    /// mode each time.
    fn take(
        work: &Workload<'_>,
        reps: usize,
        cpu_reps: usize,
        mut backward: bool,
        runs: Runs<'_>,
    ) -> Result<Self, FcosError> {
        let norms = runs.norms;
        let mut s = Samples::default();
        let modes = norms.map_or(0, |_| NORMS.len());
        s.norm_kernel = vec![Vec::new(); modes];
        s.norm_backward = vec![Vec::new(); modes];
        s.norm_losses = vec![None; modes];
        for rep in 0..reps {
            let t = work.forward_device()?;
            s.kernel.push(ms(kernel_time(&t)));
            s.device_call.push(ms(t.call));
            s.gpu_losses.get_or_insert(t.value);
            s.call.push(ms(work.forward_host()?.call));
            s.roofline.push(ms(kernel_time(&work.roofline()?)));
            if backward {
                match (work.forward_backward()?, work.backward_roofline()?) {
                    (Some(t), Some(r)) => {
                        s.backward.push(ms(kernel_time(&t)));
                        s.backward_roofline.push(ms(kernel_time(&r)));
                    }
                    _ => backward = false,
                }
            }
            if let Some(runs) = norms {
                s.take_norms(work, runs, rep, &mut backward)?;
            }
            if let Some(b) = runs.boxes {
                s.take_boxes(work, b, &mut backward)?;
            }
            if rep < cpu_reps {
                let (l, d) = work.cpu_reference()?;
                s.cpu.push(ms(d));
                s.cpu_losses.get_or_insert(l);
            }
        }
        s.backward_measured = backward && !s.backward.is_empty();
        Ok(s)
    }

    /// One repetition of every mode, from mode `rep mod modes` on.
    fn take_norms(
        &mut self,
        work: &Workload<'_>,
        runs: &NormRuns,
        rep: usize,
        backward: &mut bool,
    ) -> Result<(), FcosError> {
        let modes = NORMS.len();
        for k in 0..modes {
            let i = (rep + k) % modes;
            let t = runs.forward(i, work)?;
            self.norm_kernel[i].push(ms(kernel_time(&t)));
            self.norm_losses[i].get_or_insert(t.value);
            if *backward {
                match runs.forward_backward(i, work)? {
                    Some(t) => self.norm_backward[i].push(ms(kernel_time(&t))),
                    None => *backward = false,
                }
            }
        }
        Ok(())
    }

    /// One repetition of the paths from boxes.
    fn take_boxes(
        &mut self,
        work: &Workload<'_>,
        runs: &BoxRuns,
        backward: &mut bool,
    ) -> Result<(), FcosError> {
        let t = runs.forward(work)?;
        self.boxes_kernel.push(ms(kernel_time(&t)));
        if self.boxes_positives == 0 {
            self.boxes_positives = t.value.num_pos.iter().map(|&n| u64::from(n)).sum();
        }
        self.targets_kernel
            .push(ms(kernel_time(&runs.targets(work)?)));
        self.boxes_call.push(ms(runs.host_call(work)?.call));
        if *backward {
            match runs.forward_backward(work)? {
                Some(t) => self.boxes_backward.push(ms(kernel_time(&t))),
                None => *backward = false,
            }
        }
        Ok(())
    }

    /// The from-boxes times, against the forward kernel from target tensors.
    fn box_times(&self, m: usize, kernel_ms: f64, max_rel_diff: f64) -> BoxTimes {
        let boxes_kernel_ms = median(&self.boxes_kernel);
        let backward =
            self.backward_measured && self.boxes_backward.len() == self.boxes_kernel.len();
        BoxTimes {
            boxes: m,
            boxes_kernel_ms,
            boxes_kernel_min_ms: min(&self.boxes_kernel),
            targets_kernel_ms: median(&self.targets_kernel),
            boxes_over_targets: boxes_kernel_ms / kernel_ms,
            boxes_call_ms: median(&self.boxes_call),
            boxes_backward_kernel_ms: backward.then(|| median(&self.boxes_backward)),
            boxes_positives: self.boxes_positives,
            boxes_max_rel_diff: max_rel_diff,
        }
    }

    /// Each mode's first GPU losses against the CPU reference under that mode.
    fn norm_diffs(&self, work: &Workload<'_>, runs: &NormRuns) -> Result<Vec<f64>, FcosError> {
        let inputs = work.host_batch().inputs();
        (0..NORMS.len())
            .map(|i| {
                let cpu = reference::losses(runs.engine(i).config(), work.levels(), &inputs)?;
                let gpu = self.norm_losses[i]
                    .as_ref()
                    .ok_or_else(|| FcosError::InvalidConfig("a mode was not timed".to_string()))?;
                Ok(gpu.max_rel_diff(&cpu, REL_TOL, ABS_TOL))
            })
            .collect()
    }

    /// The modes' times: the backward pass's only where it ran in every
    /// repetition (as for the report's own backward times).
    fn norm_times(&self, max_rel_diff: Option<Vec<f64>>) -> NormTimes {
        let backward = self.backward_measured
            && self
                .norm_backward
                .iter()
                .zip(&self.norm_kernel)
                .all(|(b, f)| !b.is_empty() && b.len() == f.len());
        NormTimes::from_samples(
            &self.norm_kernel,
            backward.then_some(self.norm_backward.as_slice()),
            max_rel_diff,
            median,
            min,
        )
    }

    /// Median and minimum of `v`, or `None`s when `v` is not to be reported.
    fn med_min(v: &[f64], reported: bool) -> (Option<f64>, Option<f64>) {
        if reported {
            (Some(median(v)), Some(min(v)))
        } else {
            (None, None)
        }
    }

    /// The report: medians, minima and the ratios between them.
    fn report(&self, work: &Workload<'_>, reps: usize) -> BenchReport {
        let kernel_ms = median(&self.kernel);
        let call_ms = median(&self.call);
        let roofline_ms = median(&self.roofline);
        let bytes = work.input_bytes();
        let measured = self.backward_measured;
        let (backward_kernel_ms, backward_kernel_min_ms) = Self::med_min(&self.backward, measured);
        let (backward_roofline_ms, backward_roofline_min_ms) =
            Self::med_min(&self.backward_roofline, measured);
        let (cpu_ms, cpu_min_ms) = Self::med_min(&self.cpu, !self.cpu.is_empty());
        let max_rel_diff = match (&self.gpu_losses, &self.cpu_losses) {
            (Some(g), Some(c)) => Some(g.max_rel_diff(c, REL_TOL, ABS_TOL)),
            _ => None,
        };
        let per_s = |x: f64| x / (kernel_ms * 1e-3) / 1e9;
        let spec = work.spec();
        BenchReport {
            adapter: work.engine().adapter_name(),
            batch: spec.batch,
            classes: spec.classes,
            image: spec.image,
            positions: work.levels().positions(),
            reps,
            timestamps: work.engine().has_timestamps(),
            kernel_ms,
            kernel_min_ms: min(&self.kernel),
            call_ms,
            call_min_ms: min(&self.call),
            device_call_ms: median(&self.device_call),
            device_call_min_ms: min(&self.device_call),
            roofline_ms,
            roofline_min_ms: min(&self.roofline),
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
            cpu_reps: self.cpu.len(),
            cpu_over_call: cpu_ms.map(|c| c / call_ms),
            max_rel_diff,
            bytes,
            dtype: work.spec().dtype.name().to_string(),
            input_bytes: bytes,
            gb_per_s: per_s(bytes as f64),
            gelem_per_s: per_s(work.elements() as f64),
            norms: None,
            boxes: None,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_min() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(min(&[4.0, 1.0, 2.0]), 1.0);
    }
}
