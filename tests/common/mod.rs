//! Shared test helpers: the GPU engine (failing loudly without an adapter), case
//! builders and tolerance checks.
#![allow(dead_code)]

use fcos_loss::{Batch, FcosLoss, Levels, LossConfig, Losses, ABS_TOL, REL_TOL};

/// Opens the engine on the adapter the environment selects. Without one the test
/// fails and says how to get one.
pub fn engine(config: LossConfig) -> FcosLoss {
    match FcosLoss::new(config) {
        Ok(e) => e,
        Err(e) => panic!(
            "GPU tests need a wgpu adapter and none could be opened: {e}\n\
             On Debian/Ubuntu: `apt-get install mesa-vulkan-drivers` (lavapipe, Vulkan) \
             or an EGL/OpenGL driver (llvmpipe); select one with WGPU_BACKEND=vulkan|gl."
        ),
    }
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
    Batch {
        levels: levels.clone(),
        batch: b,
        classes: c,
        cls_logits: (0..levels.len())
            .map(|l| vec![logit; levels.level_len(l, b, c)])
            .collect(),
        cnt_logits: (0..levels.len())
            .map(|l| vec![logit; levels.level_len(l, b, 1)])
            .collect(),
        reg_preds: (0..levels.len())
            .map(|l| vec![reg; levels.level_len(l, b, 4)])
            .collect(),
        cls_targets: vec![cls_t; b * p],
        cnt_targets: vec![cnt_t; b * p],
        reg_targets: vec![reg; b * p * 4],
    }
}

/// Asserts that `got` matches `want` per image within SPEC §3's tolerance.
pub fn assert_close(what: &str, got: &Losses, want: &Losses) {
    let d = got.max_rel_diff(want, REL_TOL, ABS_TOL);
    assert!(
        d <= REL_TOL,
        "{what}: relative difference {d:e} > {REL_TOL:e}\n got  {got:?}\n want {want:?}"
    );
    assert_eq!(got.num_pos, want.num_pos, "{what}: num_pos");
}

/// Opens a device the way an application would, honouring `WGPU_BACKEND`, with the
/// adapter's limits passed through `adjust`.
pub fn app_device_with(
    adjust: impl FnOnce(wgpu::Limits) -> wgpu::Limits,
) -> (wgpu::Device, wgpu::Queue) {
    app_device_with_features(|_| wgpu::Features::empty(), adjust)
}

/// [`app_device_with`], requesting the features `features` picks from the adapter's.
pub fn app_device_with_features(
    features: impl FnOnce(wgpu::Features) -> wgpu::Features,
    adjust: impl FnOnce(wgpu::Limits) -> wgpu::Limits,
) -> (wgpu::Device, wgpu::Queue) {
    pollster::block_on(async {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
        let mut adapters = instance.enumerate_adapters(backends).await;
        // Prefer real GPUs over software ones, as an application would.
        adapters.sort_by_key(|a| match a.get_info().device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Cpu => 3,
            wgpu::DeviceType::Other => 4,
        });
        let Some(adapter) = adapters.into_iter().next() else {
            panic!(
                "the embedding tests need a wgpu adapter and none was found for backends {backends:?} \
                 (WGPU_BACKEND={:?}). On Debian/Ubuntu: `apt-get install mesa-vulkan-drivers` \
                 (lavapipe, Vulkan) or an EGL/OpenGL driver (llvmpipe); select one with \
                 WGPU_BACKEND=vulkan|gl.",
                std::env::var("WGPU_BACKEND").ok()
            )
        };
        let info = adapter.get_info();
        adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("embedding test app"),
                required_features: features(adapter.features()),
                required_limits: adjust(adapter.limits()),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::default(),
                trace: wgpu::Trace::Off,
            })
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "could not open a device on adapter '{}' ({:?}): {e}; try another one with WGPU_BACKEND=vulkan|gl",
                    info.name, info.backend
                )
            })
    })
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
