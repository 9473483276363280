//! Shared test helpers: the one adapter policy of the GPU tests, case builders,
//! tolerance checks, buffer read-back, and (in [`buffers`]) the deliberately
//! unusual device buffers a few tests need.
//!
//! Adapter policy: every GPU test opens its engine ([`engine`], [`app_engine`]) or
//! its application device ([`app_device_with`]) through this module. When no
//! adapter opens, the test fails (it never skips and never passes) with a message
//! that says how to get one ([`NO_ADAPTER_HELP`]).
#![allow(dead_code)]

pub mod buffers;

use fcos_loss::{
    max_tensor_error, Batch, DeviceInputs, FcosLoss, GpuContext, Head, Heads, Input, Levels,
    LossConfig, Losses, Normalization, RegLoss, ABS_TOL, REL_TOL,
};

/// How to get an adapter, for every failure to open one.
pub const NO_ADAPTER_HELP: &str = "GPU tests need a wgpu adapter and fail without one \
    (they never skip). On Debian/Ubuntu: `apt-get install mesa-vulkan-drivers` (lavapipe, \
    Vulkan) or `apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri` (llvmpipe, GL); select \
    one with WGPU_BACKEND=vulkan|gl (and WGPU_ADAPTER_NAME). The CPU-only tests are \
    `cargo test --lib` and the tests/cpu_*.rs files (see tests/README.md).";

/// The golden case files under tests/data (scored by PyTorch, docs/contract.md §5).
pub const GOLDEN: [&str; 3] = [
    "voc_b2_c20_512x512",
    "odd_b3_c7_100x150",
    "single_b1_c1_64x64",
];

/// The golden cases made from ground-truth boxes (`gt_boxes`, `gt_classes`, the
/// targets PyTorch assigned from them, and the §8 expectations).
pub const GOLDEN_BOXES: [&str; 3] = [
    "boxes_voc_b2_c20_512x512_m12",
    "boxes_odd_b3_c7_100x150_m9",
    "boxes_coco_b1_c80_320x480_m40",
];

/// Reads a golden case file by its name (without `.safetensors`).
#[cfg(feature = "casefile")]
pub fn golden(name: &str) -> fcos_loss::casefile::Case {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/data/{name}.safetensors"));
    fcos_loss::casefile::read_case(&path).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Opens the engine on the adapter the environment selects (`FcosLoss::new`).
/// Without one the test fails and says how to get one.
pub fn engine(config: LossConfig) -> FcosLoss {
    match FcosLoss::new(config) {
        Ok(e) => e,
        Err(e) => panic!("could not open an engine: {e}\n{NO_ADAPTER_HELP}"),
    }
}

/// An engine on a device the test opened the way an application would
/// ([`app_device_with`], the adapter's own limits), via `FcosLoss::from_device`.
pub fn app_engine(config: LossConfig) -> FcosLoss {
    let (device, queue) = app_device_with(|limits| limits);
    FcosLoss::from_device(device, queue, config).expect("an engine on the application's device")
}

/// Opens a device the way an application would, honouring `WGPU_BACKEND`, with the
/// adapter's limits passed through `adjust`.
pub fn app_device_with(
    adjust: impl FnOnce(wgpu::Limits) -> wgpu::Limits,
) -> (wgpu::Device, wgpu::Queue) {
    app_device_with_features(|_| wgpu::Features::empty(), adjust)
}

/// The adapters `WGPU_BACKEND` and `WGPU_ADAPTER_NAME` allow, best first in the
/// engine's own order, so that an application device and `FcosLoss::new` pick the
/// same one.
pub fn adapters() -> Vec<wgpu::Adapter> {
    fcos_loss::GpuContext::adapters()
}

/// The first adapter of [`adapters`]; fails the test (with [`NO_ADAPTER_HELP`])
/// when there is none.
pub fn adapter() -> wgpu::Adapter {
    adapters().into_iter().next().unwrap_or_else(|| {
        panic!(
            "no wgpu adapter found (WGPU_BACKEND={:?}, WGPU_ADAPTER_NAME={:?}).\n{NO_ADAPTER_HELP}",
            std::env::var("WGPU_BACKEND").ok(),
            std::env::var("WGPU_ADAPTER_NAME").ok()
        )
    })
}

/// [`app_device_with`], requesting the features `features` picks from the adapter's.
pub fn app_device_with_features(
    features: impl FnOnce(wgpu::Features) -> wgpu::Features,
    adjust: impl FnOnce(wgpu::Limits) -> wgpu::Limits,
) -> (wgpu::Device, wgpu::Queue) {
    let adapter = adapter();
    let info = adapter.get_info();
    pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("test application device"),
        required_features: features(adapter.features()),
        required_limits: adjust(adapter.limits()),
        experimental_features: wgpu::ExperimentalFeatures::disabled(),
        memory_hints: wgpu::MemoryHints::default(),
        trace: wgpu::Trace::Off,
    }))
    .unwrap_or_else(|e| {
        panic!(
            "could not open a device on adapter '{}' ({:?}): {e}\n{NO_ADAPTER_HELP}",
            info.name, info.backend
        )
    })
}

/// A batch filled with one value per tensor (the notebook's cells use `ones`).
pub fn constant_batch(
    levels: &Levels,
    b: usize,
    c: usize,
    logit: f32,
    cls_t: f32,
    cnt_t: f32,
    reg: f32,
) -> Batch {
    let p = levels.positions();
    let head = |h: Head, x: f32| -> Vec<Vec<f32>> {
        (0..levels.len())
            .map(|l| vec![x; levels.level_len(l, b, h.channels(c))])
            .collect()
    };
    Batch {
        levels: levels.clone(),
        batch: b,
        classes: c,
        cls_logits: head(Head::ClsLogits, logit),
        cnt_logits: head(Head::CntLogits, logit),
        reg_preds: head(Head::RegPreds, reg),
        cls_targets: vec![cls_t; b * p],
        cnt_targets: vec![cnt_t; b * p],
        reg_targets: vec![reg; b * p * Input::RegTargets.channels(c)],
    }
}

/// Asserts that `got` matches `want` per image within docs/contract.md §3's tolerance.
pub fn assert_close(what: &str, got: &Losses, want: &Losses) {
    let d = got.max_rel_diff(want, REL_TOL, ABS_TOL);
    assert!(
        d <= REL_TOL,
        "{what}: relative difference {d:e} > {REL_TOL:e}\n got  {got:?}\n want {want:?}"
    );
    assert_eq!(got.num_pos, want.num_pos, "{what}: num_pos");
}

/// Asserts, head by head, that `got` has the levels and lengths of `want` and that
/// each level tensor is within `tol` of its largest magnitude
/// ([`max_tensor_error`], docs/contract.md §4).
pub fn assert_heads<A, B>(what: &str, got: &Heads<Vec<Vec<A>>>, want: &Heads<Vec<Vec<B>>>, tol: f64)
where
    A: Copy + Into<f64>,
    B: Copy + Into<f64>,
{
    for (h, g) in got.iter() {
        let w = &want[h];
        assert_eq!(g.len(), w.len(), "{what}: {h} levels");
        for (l, (a, b)) in g.iter().zip(w.iter()).enumerate() {
            assert_eq!(a.len(), b.len(), "{what}: {h}.{l} length");
        }
        let err = max_tensor_error(g, w);
        assert!(
            err <= tol,
            "{what}: {h} max error {err:e} of its tensor's largest magnitude > {tol:e}"
        );
    }
}

/// Every value of a result as bits (per-image losses, means, total, num_pos), for
/// bitwise comparisons.
pub fn bits(l: &Losses) -> Vec<u64> {
    l.cls
        .iter()
        .chain(&l.cnt)
        .chain(&l.reg)
        .chain([&l.cls_loss, &l.cnt_loss, &l.reg_loss, &l.total])
        .map(|x| x.to_bits())
        .chain(l.num_pos.iter().map(|&n| n as u64))
        .collect()
}

/// The bits of every value of a head's levels, in order.
pub fn bits_of(levels: &[Vec<f32>]) -> Vec<u32> {
    levels.iter().flatten().map(|x| x.to_bits()).collect()
}

/// A buffer's contents as `f32`, copied back through a staging buffer (the buffer
/// needs `COPY_SRC`, as every [`fcos_loss::DeviceBatch`] buffer has).
pub fn read_buffer(ctx: &GpuContext, buf: &wgpu::Buffer) -> Vec<f32> {
    let device = &ctx.device;
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("test read-back"),
        size: buf.size(),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = device.create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(buf, 0, &staging, 0, buf.size());
    ctx.queue.submit([enc.finish()]);
    staging.slice(..).map_async(wgpu::MapMode::Read, |r| {
        r.expect("mapping the read-back buffer")
    });
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .expect("waiting for the read-back");
    let v = bytemuck::pod_collect_to_vec(&staging.slice(..).get_mapped_range().unwrap());
    v
}

/// [`DeviceInputs`] of `batch` images, each input's buffer from `buffer`.
pub fn device_inputs<'a>(
    batch: usize,
    mut buffer: impl FnMut(Input) -> &'a wgpu::Buffer,
) -> DeviceInputs<'a> {
    DeviceInputs {
        dtype: fcos_loss::Dtype::F32,
        batch,
        cls_logits: buffer(Input::ClsLogits),
        cnt_logits: buffer(Input::CntLogits),
        reg_preds: buffer(Input::RegPreds),
        cls_targets: buffer(Input::ClsTargets),
        cnt_targets: buffer(Input::CntTargets),
        reg_targets: buffer(Input::RegTargets),
    }
}

/// `inputs` with the buffer of `input` replaced by `buf`.
pub fn with_buffer<'a>(
    inputs: DeviceInputs<'a>,
    input: Input,
    buf: &'a wgpu::Buffer,
) -> DeviceInputs<'a> {
    device_inputs(inputs.batch, |i| {
        if i == input {
            buf
        } else {
            inputs.buffer(i)
        }
    })
}

/// Part `part` of `input` in `batch`, mutably: level `part` of a head, or the
/// target itself (`part` 0), as `Inputs::parts` orders them.
pub fn part_mut(batch: &mut Batch, input: Input, part: usize) -> &mut Vec<f32> {
    match input {
        Input::ClsLogits => &mut batch.cls_logits[part],
        Input::CntLogits => &mut batch.cnt_logits[part],
        Input::RegPreds => &mut batch.reg_preds[part],
        Input::ClsTargets => one_part(part, &mut batch.cls_targets),
        Input::CntTargets => one_part(part, &mut batch.cnt_targets),
        Input::RegTargets => one_part(part, &mut batch.reg_targets),
    }
}

fn one_part(part: usize, target: &mut Vec<f32>) -> &mut Vec<f32> {
    assert_eq!(part, 0, "a target is one part");
    target
}

/// The name a value error gives part `part` of `input`: `cls_logits.2` for a
/// head's level, `cls_targets` for a target (docs/contract.md §5).
pub fn part_name(input: Input, part: usize) -> String {
    match input.head() {
        Some(_) => format!("{input}.{part}"),
        None => input.name().to_string(),
    }
}

/// Gradients written into device buffers (each head packed, docs/contract.md
/// §1.2), read back and split into one vector per level, as the host path
/// returns them.
pub fn read_gradients(
    ctx: &GpuContext,
    levels: &Levels,
    batch: usize,
    classes: usize,
    bufs: &Heads<&wgpu::Buffer>,
) -> fcos_loss::Gradients {
    Heads::from_fn(|h| {
        let packed = read_buffer(ctx, bufs[h]);
        let ch = h.channels(classes);
        (0..levels.len())
            .map(|l| {
                let at = levels.packed_offset(l, batch, ch);
                packed[at..at + levels.level_len(l, batch, ch)].to_vec()
            })
            .collect()
    })
}

/// Images `images` of `batch` as a batch of their own (a data-parallel
/// replica's share): each level of each head and each target sliced by image.
pub fn sub_batch(batch: &Batch, images: std::ops::Range<usize>) -> Batch {
    let levels = &batch.levels;
    let (b, c, p) = (batch.batch, batch.classes, levels.positions());
    assert!(
        images.end <= b && images.start < images.end,
        "{images:?} of {b}"
    );
    let head = |h: Head, data: &[Vec<f32>]| -> Vec<Vec<f32>> {
        let ch = h.channels(c);
        (0..levels.len())
            .map(|l| {
                let per = ch * levels.level_size(l);
                data[l][images.start * per..images.end * per].to_vec()
            })
            .collect()
    };
    let target =
        |data: &[f32], ch: usize| data[images.start * p * ch..images.end * p * ch].to_vec();
    Batch {
        levels: levels.clone(),
        batch: images.len(),
        classes: c,
        cls_logits: head(Head::ClsLogits, &batch.cls_logits),
        cnt_logits: head(Head::CntLogits, &batch.cnt_logits),
        reg_preds: head(Head::RegPreds, &batch.reg_preds),
        cls_targets: target(&batch.cls_targets, 1),
        cnt_targets: target(&batch.cnt_targets, 1),
        reg_targets: target(&batch.reg_targets, 4),
    }
}

/// Per-level tensors of consecutive image ranges put side by side again (the
/// inverse of [`sub_batch`] for gradients: NCHW levels are image-major), each
/// element times `scale`.
pub fn concat_images<T: Copy + Into<f64>>(
    parts: &[Heads<Vec<Vec<T>>>],
    scale: f64,
) -> Heads<Vec<Vec<f64>>> {
    Heads::from_fn(|h| {
        let levels = parts[0][h].len();
        (0..levels)
            .map(|l| {
                parts
                    .iter()
                    .flat_map(|g| g[h][l].iter().map(|&x| x.into() * scale))
                    .collect()
            })
            .collect()
    })
}

/// Objective weights that are not all 1 (each head's weight must show in the
/// gradients).
pub const UNEVEN_WEIGHTS: fcos_loss::LossWeights = fcos_loss::LossWeights {
    cls: 1.0,
    cnt: 0.6,
    reg: 1.4,
};

/// A config of `classes` classes over `strides` with a normalisation mode, the
/// box loss weighted by centerness or not, and a box loss.
pub fn mode_config(
    classes: usize,
    strides: &[u32],
    norm: Normalization,
    weighted: bool,
    reg: RegLoss,
) -> LossConfig {
    let mut c = LossConfig::new(classes as u32)
        .with_reg_loss(reg)
        .with_normalization(norm)
        .with_centerness_weighted_reg(weighted);
    c.strides = strides.to_vec();
    c
}

/// Asserts that `got` matches `want` per image within `tol` relative (values
/// below 1e-6 compared absolutely), and that the positives agree.
pub fn assert_close_rel(what: &str, got: &Losses, want: &Losses, tol: f64) {
    let d = got.max_rel_diff(want, tol, tol * 1e-6);
    assert!(
        d <= tol,
        "{what}: relative difference {d:e} > {tol:e}\n got  {got:?}\n want {want:?}"
    );
    assert_eq!(got.num_pos, want.num_pos, "{what}: num_pos");
}

/// Asserts per-image losses against a golden file's within docs/contract.md §3.
pub fn assert_golden(what: &str, got: &Losses, cls: &[f64], cnt: &[f64], reg: &[f64]) {
    for (name, g, w) in [
        ("cls", &got.cls, cls),
        ("cnt", &got.cnt, cnt),
        ("reg", &got.reg, reg),
    ] {
        assert_eq!(g.len(), w.len(), "{what} {name}: images");
        for (i, (&a, &b)) in g.iter().zip(w).enumerate() {
            let d = (a - b).abs() / b.abs().max(ABS_TOL / REL_TOL);
            assert!(
                d <= REL_TOL,
                "{what} {name}[{i}]: {a} vs PyTorch {b} (relative {d:e})"
            );
        }
    }
}

/// A STORAGE buffer holding `bytes` (at least 16 bytes: one row of boxes).
pub fn storage_buffer(device: &wgpu::Device, bytes: &[u8]) -> wgpu::Buffer {
    use wgpu::util::DeviceExt;
    let mut padded = bytes.to_vec();
    padded.resize(bytes.len().max(16).next_multiple_of(4), 0);
    device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("test storage"),
        contents: &padded,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
    })
}
