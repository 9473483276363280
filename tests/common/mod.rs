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
