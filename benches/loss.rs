//! Criterion benches of the fused FCOS loss on three shapes (VOC, COCO, COCO-large),
//! built on `fcos_loss::bench`.
//!
//! `WGPU_BACKEND=vulkan cargo bench --bench loss` runs one criterion group per
//! shape with the functions
//!
//! - `kernel`: fused forward pass from device buffers, timestamp-query kernel time
//!   (the wall clock of the device call where the adapter has no timestamps);
//! - `call_host`: the whole call from host slices (upload, kernels, readback);
//! - `call_device`: the whole call from device buffers;
//! - `roofline`: a kernel reading exactly the fused pass's bytes (kernel time);
//! - `forward_backward_kernel`: forward + backward from device buffers (kernel time);
//! - `backward_roofline`: the backward pass's reads and gradient writes without the
//!   maths (kernel time);
//! - `boxes_kernel_m50`: the fused loss from 50 ground-truth boxes per image
//!   (targets assigned inside the pass; device buffers, kernel time);
//! - `targets_kernel_m50`: the target pass alone on the same boxes (kernel time);
//! - `cpu_reference`: the `f64` CPU reference.
//!
//! Two other modes print the `bench` module's table instead of running criterion:
//!
//! - `FCOS_BENCH=report cargo bench --bench loss`: every preset (or those named in
//!   `FCOS_BENCH_PRESETS=voc,coco`), `FCOS_BENCH_REPS` repetitions (default 10),
//!   JSON written to `FCOS_BENCH_OUT` (default `bench/results.json`); with
//!   `FCOS_BENCH_NORMS=1` each preset also times the forward and forward +
//!   backward kernels under every normalisation mode (`bench::NORMS`), printed
//!   per preset and kept in the JSON (`kernel_ms_by_norm`, ...);
//! - `FCOS_BENCH=scaling cargo bench --bench loss`: COCO (`C = 80`, `800 × 1024`)
//!   at B = 1, 2, 4, 8, 16, 32, CSV written to `FCOS_BENCH_OUT` (default
//!   `bench/scaling.csv`) for `bench/scaling.py`.

use std::time::Duration;

use criterion::{Criterion, SamplingMode};
use fcos_loss::bench::{self, BenchSpec, Workload};
use fcos_loss::{FcosLoss, LossConfig};

fn open_engine() -> FcosLoss {
    match FcosLoss::new(LossConfig::new(80)) {
        Ok(engine) => engine,
        Err(e) => panic!(
            "the loss benches need a wgpu adapter and none could be opened: {e}\n\
             (on a machine without a GPU: apt-get install mesa-vulkan-drivers, then WGPU_BACKEND=vulkan cargo bench)"
        ),
    }
}

fn ok<T>(what: &str, r: Result<T, fcos_loss::FcosError>) -> T {
    r.unwrap_or_else(|e| panic!("{what} failed: {e}"))
}

/// The kernel time of a backward-pass call that worked once in the warm-up.
fn backward_kernel<T>(
    what: &str,
    r: Result<Option<fcos_loss::Timed<T>>, fcos_loss::FcosError>,
) -> Duration {
    match ok(what, r) {
        Some(t) => bench::kernel_time(&t),
        None => panic!("{what}: the backward pass became unavailable mid-bench"),
    }
}

/// Sums `f`'s durations over `iters` calls.
fn total(iters: u64, mut f: impl FnMut() -> Duration) -> Duration {
    (0..iters).map(|_| f()).sum()
}

fn bench_shape(c: &mut Criterion, engine: &FcosLoss, name: &str, spec: &BenchSpec) {
    let work = ok("preparing the workload", Workload::new(engine, spec));
    // Warm every path once (pipelines, pooled buffers) and probe the backward pass.
    ok("warm-up forward", work.forward_device());
    ok("warm-up host call", work.forward_host());
    ok("warm-up roofline", work.roofline());
    let backward = ok("warm-up forward+backward", work.forward_backward()).is_some()
        && ok("warm-up backward roofline", work.backward_roofline()).is_some();
    eprintln!(
        "{name}: {} on {} (timestamps: {}), {:.1} MB read per call",
        spec.label(),
        work.engine().adapter_name(),
        work.engine().has_timestamps(),
        work.input_bytes() as f64 / 1e6
    );

    let mut group = c.benchmark_group(name);
    group.sampling_mode(SamplingMode::Flat);
    group.bench_function("kernel", |b| {
        b.iter_custom(|iters| {
            total(iters, || {
                bench::kernel_time(&ok("forward (device)", work.forward_device()))
            })
        })
    });
    group.bench_function("call_host", |b| {
        b.iter_custom(|iters| total(iters, || ok("forward (host)", work.forward_host()).call))
    });
    group.bench_function("call_device", |b| {
        b.iter_custom(|iters| total(iters, || ok("forward (device)", work.forward_device()).call))
    });
    group.bench_function("roofline", |b| {
        b.iter_custom(|iters| {
            total(iters, || {
                bench::kernel_time(&ok("roofline", work.roofline()))
            })
        })
    });
    if backward {
        group.bench_function("forward_backward_kernel", |b| {
            b.iter_custom(|iters| {
                total(iters, || {
                    backward_kernel("forward+backward", work.forward_backward())
                })
            })
        });
        group.bench_function("backward_roofline", |b| {
            b.iter_custom(|iters| {
                total(iters, || {
                    backward_kernel("backward roofline", work.backward_roofline())
                })
            })
        });
    } else {
        eprintln!(
            "{name}: forward_backward_kernel and backward_roofline skipped: the adapter cannot bind the backward pass"
        );
    }
    let boxes = ok("drawing 50 boxes per image", bench::BoxRuns::new(&work, 50));
    ok("warm-up from boxes", boxes.forward(&work));
    ok("warm-up target pass", boxes.targets(&work));
    group.bench_function("boxes_kernel_m50", |b| {
        b.iter_custom(|iters| {
            total(iters, || {
                bench::kernel_time(&ok("forward from boxes", boxes.forward(&work)))
            })
        })
    });
    group.bench_function("targets_kernel_m50", |b| {
        b.iter_custom(|iters| {
            total(iters, || {
                bench::kernel_time(&ok("target pass", boxes.targets(&work)))
            })
        })
    });
    group.bench_function("cpu_reference", |b| {
        b.iter_custom(|iters| total(iters, || ok("CPU reference", work.cpu_reference()).1))
    });
    group.finish();
}

fn criterion_benches() {
    let engine = open_engine();
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    for (name, spec) in BenchSpec::presets() {
        bench_shape(&mut c, &engine, name, &spec);
    }
    c.final_summary();
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

fn write(path: &str, text: &str) {
    if let Err(e) = std::fs::write(path, text) {
        panic!("writing {path} failed: {e}");
    }
    eprintln!("wrote {path}");
}

fn reps() -> usize {
    let s = env_or("FCOS_BENCH_REPS", "10");
    s.parse()
        .unwrap_or_else(|_| panic!("FCOS_BENCH_REPS must be a count, got '{s}'"))
}

fn report_mode() {
    let engine = open_engine();
    let wanted = env_or("FCOS_BENCH_PRESETS", "voc,coco,coco-large");
    let mut reports = Vec::new();
    for name in wanted.split(',').filter(|s| !s.is_empty()) {
        let spec = ok("preset", BenchSpec::preset(name)).with_reps(reps());
        eprintln!("timing {name} ({}) ...", spec.label());
        let options = bench::BenchOptions {
            norms: env_or("FCOS_BENCH_NORMS", "0") == "1",
            ..bench::BenchOptions::default()
        };
        reports.push(ok("benchmark", bench::run_with(&engine, &spec, &options)));
    }
    print!("{}", bench::table(&reports));
    for r in &reports {
        if let Some(n) = &r.norms {
            let (h, w) = r.image;
            println!(
                "\nB{} C{} {h}x{w}, normalisation modes:",
                r.batch, r.classes
            );
            print!("{}", n.table());
        }
    }
    let json = ok(
        "serialising the reports",
        serde_json::to_string_pretty(&reports)
            .map_err(|e| fcos_loss::FcosError::File(e.to_string())),
    );
    write(
        &env_or("FCOS_BENCH_OUT", "bench/results.json"),
        &(json + "\n"),
    );
}

fn scaling_mode() {
    let engine = open_engine();
    let base = BenchSpec::coco().with_reps(reps());
    let reports = ok(
        "scaling sweep",
        bench::scaling(&engine, &base, &bench::SCALING_BATCHES),
    );
    print!("{}", bench::table(&reports));
    write(
        &env_or("FCOS_BENCH_OUT", "bench/scaling.csv"),
        &bench::csv(&reports),
    );
}

fn main() {
    match std::env::var("FCOS_BENCH").as_deref() {
        Ok("report") => report_mode(),
        Ok("scaling") => scaling_mode(),
        Ok("") | Ok("criterion") | Err(_) => criterion_benches(),
        Ok(other) => panic!("FCOS_BENCH must be report, scaling or criterion, got '{other}'"),
    }
}
