//! What a benchmark reports ([`BenchReport`], serialisable to JSON) and two
//! formats for several reports: a plain-text [`table`] and [`csv`].

use std::fmt::Write as _;

use serde::Serialize;

use super::boxes::BoxTimes;
use super::norms::NormTimes;
use super::spec::shape_label;

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
    /// reference ([`Losses::max_rel_diff`](crate::Losses::max_rel_diff) with the tolerances of docs/contract.md §3); `None` when
    /// the reference was skipped.
    pub max_rel_diff: Option<f64>,
    /// Bytes the forward pass reads per call (every input once, the heads at
    /// their element type's size).
    pub bytes: u64,
    /// The heads' element type: `f32`, `f16` or `bf16`.
    pub dtype: String,
    /// The same bytes as `bytes`, under the name the JSON reports of every dtype
    /// share.
    pub input_bytes: u64,
    /// `bytes / kernel_ms`, in GB/s (10⁹ bytes).
    pub gb_per_s: f64,
    /// Class-logit elements `B·C·P` per second of kernel time, in 10⁹.
    pub gelem_per_s: f64,
    /// Kernel times per normalisation mode, when they were asked for
    /// ([`BenchOptions::norms`](super::BenchOptions::norms)). In the JSON their keys
    /// (`kernel_ms_by_norm`, `backward_kernel_ms_by_norm`, ...) sit beside the
    /// others, and are absent when not measured.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub norms: Option<NormTimes>,
    /// Times from ground-truth boxes, when they were asked for
    /// ([`BenchOptions::boxes`](super::BenchOptions::boxes)): `boxes_kernel_ms`,
    /// `targets_kernel_ms`, `boxes_over_targets`, ... beside the others in the
    /// JSON, absent when not measured.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub boxes: Option<BoxTimes>,
}

impl BenchReport {
    /// `"B8 C80 800x1024"`.
    fn shape(&self) -> String {
        shape_label(self.batch, self.classes, self.image)
    }
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
    format_table(&header, &rows, 2)
}

/// `rows` under `header`, columns padded to their widest cell and joined with
/// `" | "`: the first `text_columns` left-aligned, the rest (numbers) right-aligned.
pub(super) fn format_table<const N: usize>(
    header: &[&str; N],
    rows: &[[String; N]],
    text_columns: usize,
) -> String {
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .chain(std::iter::once(header[i].chars().count()))
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..N).map(width).collect();
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, &w))| {
                let pad = w.saturating_sub(c.chars().count());
                if i < text_columns {
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
    for r in rows {
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
            dtype: "f32".into(),
            input_bytes: 1000,
            gb_per_s: 1.0,
            gelem_per_s: 0.2,
            norms: None,
            boxes: None,
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
