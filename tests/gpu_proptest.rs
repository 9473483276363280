//! Property tests of the on-device value checks: over random shapes and values,
//! each case is either valid or carries exactly one bad value of one kind (NaN or
//! ±Inf in any of the six inputs, a class target above `C`, negative or not
//! whole, a centerness target outside `{-1} ∪ [0, 1]`, a negative box target at a
//! positive position). A valid case must give the CPU reference's losses on the
//! host path and bitwise the same on the device path; a bad one must be the
//! `FcosError::Value` naming that tensor and that element (the first bad one, as
//! `check_values` reports it) on both paths. With one bad value per case, a flag
//! the GPU misses cannot hide behind another input's.

mod common;

use std::sync::{Mutex, OnceLock};

use fcos_loss::synthetic::Rng;
use fcos_loss::{
    check_values, reference, Batch, DeviceBatch, FcosError, FcosLoss, Head, Input, Levels,
    LossConfig, RegLoss,
};
use proptest::prelude::*;

fn engine() -> &'static Mutex<FcosLoss> {
    static ENGINE: OnceLock<Mutex<FcosLoss>> = OnceLock::new();
    ENGINE.get_or_init(|| Mutex::new(common::engine(LossConfig::new(1))))
}

/// The one bad value a case carries.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Bad {
    /// NaN, +Inf or -Inf anywhere in the input.
    NonFinite(Input, f32),
    /// A class target of `C` plus this much.
    ClassAboveC(f32),
    /// A negative class target.
    ClassNegative(f32),
    /// A class target this far above a whole class in `0..C`.
    ClassFraction(f32),
    /// A centerness target outside `{-1} ∪ [0, 1]`.
    CntOutside(f32),
    /// This (negative) box target at a positive position.
    BoxAtPositive(f32),
}

impl Bad {
    /// The input the bad value goes into.
    fn input(self) -> Input {
        match self {
            Bad::NonFinite(input, _) => input,
            Bad::ClassAboveC(_) | Bad::ClassNegative(_) | Bad::ClassFraction(_) => {
                Input::ClsTargets
            }
            Bad::CntOutside(_) => Input::CntTargets,
            Bad::BoxAtPositive(_) => Input::RegTargets,
        }
    }
}

/// Every kind of bad value, for every input it applies to.
fn catalog() -> Vec<Bad> {
    let mut v: Vec<Bad> = Input::ALL
        .into_iter()
        .flat_map(|input| {
            [f32::NAN, f32::INFINITY, f32::NEG_INFINITY].map(|x| Bad::NonFinite(input, x))
        })
        .collect();
    v.extend([1.0, 6.0, 1e6].map(Bad::ClassAboveC));
    v.extend([-1.0, -3.0, -0.5].map(Bad::ClassNegative));
    v.extend([0.5, 0.25, 1e-3].map(Bad::ClassFraction));
    v.extend([-0.5, -1e-4, -1.5, -2.0, 1.5, 1.0001].map(Bad::CntOutside));
    v.extend([-0.5, -3.0, -1e-3].map(Bad::BoxAtPositive));
    v
}

/// A valid batch drawn from `seed`: logits with some at ±60, 0 and ±1e30, box
/// predictions with some zero sides, positives (30 %) with a class in `1..=C`
/// (sometimes `C`), a centerness in `[0, 1]` (sometimes 0 or 1) and box targets
/// `>= 0` (sometimes a zero side); negatives with class 0, centerness -1 and any
/// finite box target (negative ones included: valid at a negative).
fn valid_batch(levels: &Levels, b: usize, c: usize, seed: u64) -> Batch {
    let mut rng = Rng::new(seed);
    let mut pick = |lo: f64, hi: f64, edges: &[f32]| -> f32 {
        if !edges.is_empty() && rng.range(0, 19) == 0 {
            edges[rng.range(0, edges.len() as u64 - 1) as usize]
        } else {
            (lo + (hi - lo) * rng.uniform()) as f32
        }
    };
    let p = levels.positions();
    let mut head = |h: Head, lo: f64, hi: f64, edges: &[f32]| -> Vec<Vec<f32>> {
        (0..levels.len())
            .map(|l| {
                (0..levels.level_len(l, b, h.channels(c)))
                    .map(|_| pick(lo, hi, edges))
                    .collect()
            })
            .collect()
    };
    let cls_logits = head(
        Head::ClsLogits,
        -10.0,
        4.0,
        &[-60.0, 60.0, 0.0, 1e30, -1e30],
    );
    let cnt_logits = head(Head::CntLogits, -3.0, 3.0, &[-60.0, 60.0, 0.0, 1e30, -1e30]);
    let reg_preds = head(Head::RegPreds, 1.0, 60.0, &[0.0]);
    let mut rng = Rng::new(seed ^ 0x7a26_e7f3);
    let mut cls_targets = Vec::with_capacity(b * p);
    let mut cnt_targets = Vec::with_capacity(b * p);
    let mut reg_targets = Vec::with_capacity(4 * b * p);
    for _ in 0..b * p {
        if rng.uniform() < 0.3 {
            cls_targets.push(rng.range(1, c as u64) as f32);
            cnt_targets.push(match rng.range(0, 9) {
                0 => 0.0,
                1 => 1.0,
                _ => rng.uniform() as f32,
            });
            for _ in 0..4 {
                let side = if rng.range(0, 19) == 0 {
                    0.0
                } else {
                    (1.0 + 59.0 * rng.uniform()) as f32
                };
                reg_targets.push(side);
            }
        } else {
            cls_targets.push(0.0);
            cnt_targets.push(-1.0);
            for _ in 0..4 {
                reg_targets.push(if rng.range(0, 3) == 0 {
                    (-60.0 * rng.uniform()) as f32
                } else {
                    -1.0
                });
            }
        }
    }
    Batch {
        levels: levels.clone(),
        batch: b,
        classes: c,
        cls_logits,
        cnt_logits,
        reg_preds,
        cls_targets,
        cnt_targets,
        reg_targets,
    }
}

/// Where a bad value went: the tensor name an error gives it and its flat index.
#[derive(Debug, Clone, PartialEq)]
struct Placed {
    tensor: String,
    index: usize,
    value: f32,
}

/// Puts `bad` into `batch` at the element `at` selects, keeping everything else
/// valid; `None` when the batch has no element to hold it (no positions at all).
fn place(batch: &mut Batch, bad: Bad, at: u64) -> Option<Placed> {
    let c = batch.classes;
    let input = bad.input();
    // The part (a non-empty level of a head, or the target) and the index.
    let sizes: Vec<usize> = batch
        .inputs()
        .parts(input)
        .iter()
        .map(|s| s.len())
        .collect();
    let filled: Vec<usize> = (0..sizes.len()).filter(|&k| sizes[k] > 0).collect();
    if filled.is_empty() {
        return None;
    }
    let part = filled[(at % filled.len() as u64) as usize];
    let mut index = ((at / 7) % sizes[part] as u64) as usize;
    let value = match bad {
        Bad::NonFinite(_, x) => x,
        Bad::ClassAboveC(x) => c as f32 + x,
        Bad::ClassNegative(x) => x,
        Bad::ClassFraction(x) => (index % c) as f32 + x,
        Bad::CntOutside(x) => x,
        Bad::BoxAtPositive(x) => {
            // A positive position: the first at or after the selected one, or
            // the selected one made positive (with a valid class and box).
            let positions = batch.cnt_targets.len();
            let start = index / 4;
            let q = (0..positions)
                .map(|k| (start + k) % positions)
                .find(|&q| batch.cnt_targets[q] > -1.0)
                .unwrap_or_else(|| {
                    batch.cls_targets[start] = 1.0;
                    batch.cnt_targets[start] = 0.5;
                    batch.reg_targets[4 * start..4 * start + 4].fill(4.0);
                    start
                });
            index = 4 * q + index % 4;
            x
        }
    };
    if input == Input::CntTargets && value > -1.0 {
        // The position turns positive: its box must be valid there, or it would be
        // a second bad value.
        let q = index;
        for side in &mut batch.reg_targets[4 * q..4 * q + 4] {
            *side = side.abs();
        }
    }
    common::part_mut(batch, input, part)[index] = value;
    Some(Placed {
        tensor: common::part_name(input, part),
        index,
        value,
    })
}

fn case() -> impl Strategy<Value = (Vec<(u32, u32)>, usize, usize, bool, u64)> {
    (
        prop::collection::vec((0u32..6, 0u32..7), 1..4),
        1usize..4,
        1usize..9,
        any::<bool>(),
        any::<u64>(),
    )
}

/// Runs `batch` on both paths of `engine` and checks the outcome: the reference's
/// losses (valid), or the error naming `placed` (bad). `Err` describes a failure.
fn run_both_paths(
    engine: &FcosLoss,
    config: &LossConfig,
    batch: &Batch,
    placed: Option<&Placed>,
) -> Result<(), String> {
    let levels = &batch.levels;
    let inputs = batch.inputs();
    let host = engine.compute(levels, &inputs);
    let up = DeviceBatch::upload(&engine.context().device, batch).map_err(|e| e.to_string())?;
    let device = engine.compute_device(levels, &up.inputs());
    let validator = check_values(levels, &inputs, batch.classes);
    match (placed, validator) {
        (None, Ok(())) => {
            let host = host.map_err(|e| format!("valid case refused on the host path: {e}"))?;
            let device =
                device.map_err(|e| format!("valid case refused on the device path: {e}"))?;
            let cpu = reference::losses(config, levels, &inputs).map_err(|e| e.to_string())?;
            let d = host.max_rel_diff(&cpu, fcos_loss::REL_TOL, fcos_loss::ABS_TOL);
            if d > fcos_loss::REL_TOL || host.num_pos != cpu.num_pos {
                return Err(format!("rel diff {d:e}: gpu {host:?} cpu {cpu:?}"));
            }
            if common::bits(&device) != common::bits(&host) {
                return Err(format!("device {device:?} != host {host:?}"));
            }
            Ok(())
        }
        (Some(p), Err(v)) => {
            let FcosError::Value { tensor, index, .. } = &v else {
                return Err(format!("the validator gave no Value error: {v}"));
            };
            if (tensor.as_str(), *index) != (p.tensor.as_str(), p.index) {
                return Err(format!("the validator names {tensor}[{index}], not {p:?}"));
            }
            for (path, got) in [("host", host), ("device", device)] {
                match got {
                    Err(e @ FcosError::Value { .. }) if e.to_string() == v.to_string() => {}
                    other => {
                        return Err(format!(
                            "{path} path: expected `{v}` for {p:?}, got {other:?}"
                        ))
                    }
                }
            }
            Ok(())
        }
        (placed, validator) => Err(format!(
            "the case was built with {placed:?} but the validator says {validator:?}"
        )),
    }
}

proptest! {
    // A fixed seed: CI runs the same cases every time (change it locally to explore).
    #![proptest_config(ProptestConfig {
        cases: 160,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x5eed_fc05),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn gpu_matches_cpu_on_random_inputs(
        (shapes, b, c, giou, seed) in case(),
        bad in prop::option::weighted(0.75, prop::sample::select(catalog())),
        at in any::<u64>(),
    ) {
        let levels = Levels::from_shapes(&shapes).unwrap();
        let mut batch = valid_batch(&levels, b, c, seed);
        // With no positions at all there is nowhere to put a bad value: the case
        // stays valid.
        let placed = bad.and_then(|bad| place(&mut batch, bad, at));
        let config = LossConfig::new(c as u32)
            .with_reg_loss(if giou { RegLoss::Giou } else { RegLoss::Iou });
        let mut e = engine().lock().unwrap_or_else(|p| p.into_inner());
        e.set_config(config.clone()).unwrap();
        let outcome = run_both_paths(&e, &config, &batch, placed.as_ref());
        prop_assert!(outcome.is_ok(), "{:?} at {:?}: {}", bad, placed, outcome.unwrap_err());
    }
}

/// Every kind of bad value in every input it applies to, at the first element of
/// its tensor, at the last, and in between, on both paths, with the subgroup and
/// the shared-memory reductions of the flags (where the adapter has subgroups).
#[test]
fn every_kind_of_bad_value_is_named_on_both_paths() {
    let levels = Levels::from_shapes(&[(5, 7), (3, 4), (1, 1)]).unwrap();
    let (b, c) = (2, 5);
    let config = LossConfig::new(c as u32);
    let mut engine = common::engine(config.clone());
    let reductions: &[bool] = if engine.subgroups() {
        &[true, false]
    } else {
        &[false]
    };
    let base = valid_batch(&levels, b, c, 11);
    run_both_paths(&engine, &config, &base, None).unwrap();
    let mut runs = 0;
    for &subgroups in reductions {
        engine.set_subgroups(subgroups).unwrap();
        for bad in catalog() {
            // `at` selects part `at % parts` and index `(at / 7) % len`: the first
            // part's first element, a later part, and far into the tensor.
            for at in [0, 1, 7 * 1000 + 2, u64::MAX] {
                let mut batch = base.clone();
                let placed = place(&mut batch, bad, at).expect("the batch has positions");
                if let Err(e) = run_both_paths(&engine, &config, &batch, Some(&placed)) {
                    panic!("subgroups {subgroups}, {bad:?} at {placed:?}: {e}");
                }
                runs += 1;
            }
        }
    }
    assert_eq!(runs, reductions.len() * catalog().len() * 4);
}
