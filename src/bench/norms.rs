//! Kernel times per normalisation mode (docs/contract.md §8), measured in the
//! same sitting as the rest of a [`BenchReport`](super::BenchReport): one engine
//! per mode on the workload's device, with the workload engine's settings, all
//! running on the workload's device buffers.
//!
//! The modes ([`NORMS`]):
//!
//! - `per-image`: the notebook's (the default);
//! - `batch`: the batch's sums over its positives (torchvision);
//! - `global-ctr`: `Global` with the batch's own totals `N = Σ n_b`, `Z = Σ Z_b`
//!   as host values in the config, box loss weighted by centerness (mmdet, the
//!   official FCOS);
//! - `global-ctr-device`: the same denominators read from a device buffer that
//!   [`FcosLoss::count_device`] filled ([`FcosLoss::compute_device_global`],
//!   [`FcosLoss::forward_backward_device_global`]): the data-parallel path with a
//!   collective on the GPU, whose forward call also runs the counting and
//!   normalisation passes.

use std::collections::BTreeMap;

use serde::Serialize;

use super::workload::Workload;
use crate::{
    Counts, Denominators, DeviceDenominators, FcosError, FcosLoss, Losses, Normalization, Timed,
};

/// The modes timed, in the order of the table.
pub const NORMS: [&str; 4] = ["per-image", "batch", "global-ctr", "global-ctr-device"];

/// One engine per mode of [`NORMS`], and the device buffer of the counts that
/// `global-ctr-device` reads its denominators from.
#[derive(Debug)]
pub(super) struct NormRuns {
    engines: Vec<FcosLoss>,
    counts: wgpu::Buffer,
}

impl NormRuns {
    /// Makes the engines on the workload engine's device and queue (its config,
    /// checks, workgroup size and subgroups; each with its mode) and counts the
    /// batch into a device buffer for `global-ctr-device`.
    pub(super) fn new(work: &Workload<'_>) -> Result<Self, FcosError> {
        let base = work.engine();
        let batch = work.host_batch();
        let counts = Counts::of(&batch.levels, batch.batch, &batch.cnt_targets)?;
        let own = Denominators::mean_of(std::slice::from_ref(&counts));
        let configs = NORMS.map(|name| {
            let config = base.config().clone();
            match name {
                "per-image" => config
                    .with_normalization(Normalization::PerImage)
                    .with_centerness_weighted_reg(false),
                "batch" => config
                    .with_normalization(Normalization::Batch)
                    .with_centerness_weighted_reg(false),
                _ => config
                    .with_normalization(Normalization::Global(own))
                    .with_centerness_weighted_reg(true),
            }
        });
        let ctx = base.context();
        let mut engines = Vec::with_capacity(NORMS.len());
        for config in configs {
            let mut e = FcosLoss::from_device(ctx.device.clone(), ctx.queue.clone(), config)?;
            e.set_checks(base.checks());
            e.set_workgroup_size(base.workgroup_size())?;
            e.set_subgroups(base.subgroups())?;
            engines.push(e);
        }
        // `1 + B` pairs of f32: the totals first, which DeviceDenominators reads.
        let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let counts_buffer = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("bench counts"),
            size: 8 * (1 + batch.batch as u64),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(FcosError::gpu_from(format!("bench counts buffer: {e}"), e));
        }
        let inputs = work.device_inputs();
        let device_engine = &engines[NORMS.len() - 1];
        device_engine.count_device(
            work.levels(),
            batch.batch,
            inputs.cnt_targets,
            Some((&counts_buffer, 0)),
        )?;
        Ok(NormRuns {
            engines,
            counts: counts_buffer,
        })
    }

    /// The engine of mode `i`, with its configuration.
    pub(super) fn engine(&self, i: usize) -> &FcosLoss {
        &self.engines[i]
    }

    /// Whether mode `i` reads its denominators from the device buffer.
    fn from_device(i: usize) -> bool {
        NORMS[i] == "global-ctr-device"
    }

    fn denominators(&self) -> DeviceDenominators<'_> {
        DeviceDenominators {
            buffer: &self.counts,
            offset: 0,
        }
    }

    /// Mode `i`'s forward pass from the workload's device buffers.
    pub(super) fn forward(
        &self,
        i: usize,
        work: &Workload<'_>,
    ) -> Result<Timed<Losses>, FcosError> {
        let (engine, inputs) = (&self.engines[i], work.device_inputs());
        if Self::from_device(i) {
            engine.compute_device_global(work.levels(), &inputs, &self.denominators())
        } else {
            engine.compute_device_timed(work.levels(), &inputs)
        }
    }

    /// Mode `i`'s forward + backward pass into the workload's gradient buffers;
    /// `None` where the device cannot hold or bind the backward pass.
    pub(super) fn forward_backward(
        &self,
        i: usize,
        work: &Workload<'_>,
    ) -> Result<Option<Timed<Losses>>, FcosError> {
        let (engine, inputs, weights) = (&self.engines[i], work.device_inputs(), work.weights());
        work.with_grads(|grads| {
            if Self::from_device(i) {
                engine.forward_backward_device_global(
                    work.levels(),
                    &inputs,
                    grads,
                    weights,
                    &self.denominators(),
                )
            } else {
                engine.forward_backward_device(work.levels(), &inputs, grads, weights)
            }
        })
    }
}

/// Kernel times per normalisation mode, keyed by the names of [`NORMS`]
/// (milliseconds; medians and minima over the repetitions). In a
/// [`BenchReport`](super::BenchReport)'s JSON these keys sit beside the others.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NormTimes {
    /// Fused forward pass from device buffers, kernel time, median.
    pub kernel_ms_by_norm: BTreeMap<String, f64>,
    /// Fused forward pass, kernel time, minimum.
    pub kernel_min_ms_by_norm: BTreeMap<String, f64>,
    /// Each mode's forward kernel over `per-image`'s: the median over the
    /// repetitions of the ratio within each repetition.
    pub kernel_over_per_image_by_norm: BTreeMap<String, f64>,
    /// Forward + backward kernel time, median; `None` where the backward pass
    /// was not measured.
    pub backward_kernel_ms_by_norm: Option<BTreeMap<String, f64>>,
    /// Forward + backward kernel time, minimum.
    pub backward_kernel_min_ms_by_norm: Option<BTreeMap<String, f64>>,
    /// Each mode's forward + backward kernel over `per-image`'s, paired by
    /// repetition as `kernel_over_per_image_by_norm`.
    pub backward_over_per_image_by_norm: Option<BTreeMap<String, f64>>,
    /// Largest relative difference of each mode's GPU losses (objective, per-image
    /// losses and raw sums) from the CPU reference under the same mode; `None`
    /// when the reference was skipped.
    pub max_rel_diff_by_norm: Option<BTreeMap<String, f64>>,
}

impl NormTimes {
    /// The times of the modes from their samples (one vector per mode, in the
    /// order of [`NORMS`]).
    pub(super) fn from_samples(
        forward: &[Vec<f64>],
        backward: Option<&[Vec<f64>]>,
        max_rel_diff: Option<Vec<f64>>,
        median: fn(&[f64]) -> f64,
        min: fn(&[f64]) -> f64,
    ) -> Self {
        let by = |v: &[Vec<f64>], f: &dyn Fn(&[f64]) -> f64| -> BTreeMap<String, f64> {
            NORMS
                .iter()
                .zip(v)
                .map(|(n, x)| (n.to_string(), f(x)))
                .collect()
        };
        // Paired: each repetition's time over per-image's in the same repetition
        // (the modes run back to back there), then the median of those ratios, so
        // that a machine whose speed drifts between repetitions cancels out.
        let over = |v: &[Vec<f64>]| -> BTreeMap<String, f64> {
            NORMS
                .iter()
                .zip(v)
                .map(|(n, x)| {
                    let ratios: Vec<f64> = x.iter().zip(&v[0]).map(|(a, b)| a / b).collect();
                    (n.to_string(), median(&ratios))
                })
                .collect()
        };
        NormTimes {
            kernel_ms_by_norm: by(forward, &median),
            kernel_min_ms_by_norm: by(forward, &min),
            kernel_over_per_image_by_norm: over(forward),
            backward_kernel_ms_by_norm: backward.map(|b| by(b, &median)),
            backward_kernel_min_ms_by_norm: backward.map(|b| by(b, &min)),
            backward_over_per_image_by_norm: backward.map(over),
            max_rel_diff_by_norm: max_rel_diff.map(|d| {
                NORMS
                    .iter()
                    .zip(d)
                    .map(|(n, x)| (n.to_string(), x))
                    .collect()
            }),
        }
    }

    /// A plain-text table, one row per mode: forward kernel ms (median, min) and
    /// its paired ratio to `per-image`, the same for forward + backward, and the largest
    /// relative difference from the CPU reference.
    pub fn table(&self) -> String {
        fn cell(m: Option<&BTreeMap<String, f64>>, n: &str, f: impl Fn(f64) -> String) -> String {
            m.and_then(|m| m.get(n))
                .map_or_else(|| "-".into(), |&v| f(v))
        }
        let ms = |v: f64| format!("{v:.2}");
        let ratio = |v: f64| format!("{v:.3}");
        let header = [
            "norm",
            "fwd kernel ms (med, min)",
            "fwd ÷ per-image",
            "fwd+bwd kernel ms (med, min)",
            "fwd+bwd ÷ per-image",
            "GPU vs CPU",
        ];
        let rows: Vec<[String; 6]> = NORMS
            .iter()
            .map(|&n| {
                let bwd = self.backward_kernel_ms_by_norm.as_ref();
                let bwd_min = self.backward_kernel_min_ms_by_norm.as_ref();
                [
                    n.to_string(),
                    format!(
                        "{}, {}",
                        cell(Some(&self.kernel_ms_by_norm), n, ms),
                        cell(Some(&self.kernel_min_ms_by_norm), n, ms)
                    ),
                    cell(Some(&self.kernel_over_per_image_by_norm), n, ratio),
                    match bwd {
                        Some(_) => format!("{}, {}", cell(bwd, n, ms), cell(bwd_min, n, ms)),
                        None => "-".into(),
                    },
                    cell(self.backward_over_per_image_by_norm.as_ref(), n, ratio),
                    cell(self.max_rel_diff_by_norm.as_ref(), n, |v| {
                        format!("{v:.1e}")
                    }),
                ]
            })
            .collect();
        super::report::format_table(&header, &rows, 1)
    }
}
