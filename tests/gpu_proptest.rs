//! Property test: over random shapes and random (valid or invalid) values, the GPU
//! and the CPU reference agree — same losses within tolerance when the inputs pass
//! the checks, the same error when they do not — and nothing panics.

mod common;

use std::sync::OnceLock;

use fcos_loss::{reference, Batch, FcosLoss, Levels, LossConfig, RegLoss};
use proptest::prelude::*;

fn engine() -> &'static std::sync::Mutex<FcosLoss> {
    static ENGINE: OnceLock<std::sync::Mutex<FcosLoss>> = OnceLock::new();
    ENGINE.get_or_init(|| std::sync::Mutex::new(common::engine(LossConfig::new(1))))
}

/// A value: mostly ordinary, sometimes special.
fn value() -> impl Strategy<Value = f32> {
    prop_oneof![
        8 => -8.0f32..8.0,
        1 => prop::sample::select(vec![-60.0f32, 60.0, -1.0, 0.0, 1.0, 0.5, 2.5, 1e30, f32::NAN, f32::INFINITY]),
    ]
}

fn case() -> impl Strategy<Value = (Vec<(u32, u32)>, usize, usize, bool, Vec<u32>)> {
    (
        prop::collection::vec((0u32..6, 0u32..7), 1..4),
        1usize..4,
        1usize..9,
        any::<bool>(),
        prop::collection::vec(any::<u32>(), 8),
    )
}

proptest! {
    // A fixed seed: CI runs the same cases every time (change it locally to explore).
    #![proptest_config(ProptestConfig {
        cases: 96,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x5eed_fc05),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn gpu_matches_cpu_on_random_inputs(
        (shapes, b, c, giou, seeds) in case(),
        specials in prop::collection::vec(value(), 16),
        special_rate in 0u32..3,
    ) {
        let levels = Levels::from_shapes(&shapes).unwrap();
        let p = levels.positions();
        // Deterministic fill from the seeds, with `specials` sprinkled in at a low rate.
        let mut rng = fcos_loss::synthetic::Rng::new(seeds[0] as u64);
        let mut draw = |lo: f64, hi: f64| -> f32 {
            if special_rate > 0 && rng.range(0, 400) < special_rate as u64 {
                specials[rng.range(0, 15) as usize]
            } else {
                (lo + (hi - lo) * rng.uniform()) as f32
            }
        };
        let head = |ch: usize, lo: f64, hi: f64, draw: &mut dyn FnMut(f64, f64) -> f32| -> Vec<Vec<f32>> {
            (0..levels.len()).map(|l| (0..levels.level_len(l, b, ch)).map(|_| draw(lo, hi)).collect()).collect()
        };
        let cls_logits = head(c, -10.0, 4.0, &mut draw);
        let cnt_logits = head(1, -3.0, 3.0, &mut draw);
        let reg_preds = head(4, 1.0, 60.0, &mut draw);
        let mut cls_targets = Vec::with_capacity(b * p);
        let mut cnt_targets = Vec::with_capacity(b * p);
        let mut reg_targets = Vec::with_capacity(4 * b * p);
        for _ in 0..b * p {
            let pos = draw(0.0, 1.0) < 0.3;
            cls_targets.push(if pos { (draw(0.0, 1.0) * c as f32).floor() + 1.0 } else { 0.0 });
            cnt_targets.push(if pos { draw(0.0, 1.0) } else { -1.0 });
            for _ in 0..4 {
                reg_targets.push(if pos { draw(1.0, 60.0) } else { -1.0 });
            }
        }
        let batch = Batch { levels: levels.clone(), batch: b, classes: c, cls_logits, cnt_logits, reg_preds, cls_targets, cnt_targets, reg_targets };
        let config = LossConfig::new(c as u32).with_reg_loss(if giou { RegLoss::Giou } else { RegLoss::Iou });
        let mut e = engine().lock().unwrap_or_else(|p| p.into_inner());
        e.set_config(config.clone()).unwrap();
        let gpu = e.compute(&levels, &batch.inputs());
        let valid = fcos_loss::check_values(&levels, &batch.inputs(), c);
        match (gpu, valid) {
            (Ok(g), Ok(())) => {
                let cpu = reference::losses(&config, &levels, &batch.inputs()).unwrap();
                let d = g.max_rel_diff(&cpu, fcos_loss::REL_TOL, fcos_loss::ABS_TOL);
                prop_assert!(d <= fcos_loss::REL_TOL, "rel diff {d:e}: gpu {g:?} cpu {cpu:?}");
                prop_assert_eq!(g.num_pos, cpu.num_pos);
            }
            (Err(ge), Err(ve)) => prop_assert_eq!(ge.to_string(), ve.to_string()),
            (g, v) => prop_assert!(false, "GPU {g:?} but the validator says {v:?}"),
        }
    }
}
