//! The GPU engine against the f64 CPU reference on randomized batches, extreme
//! logits and empty levels; determinism, buffer reuse and shape errors.

mod common;

use fcos_loss::synthetic::{self, Rng, SyntheticSpec};
use fcos_loss::{
    reference, Batch, FcosError, FcosLoss, Levels, LossConfig, Losses, RegLoss, ABS_TOL, REL_TOL,
};

/// Keeps each case's `B·C·P` (class logits) under this many, so lavapipe stays fast.
const MAX_CLASS_LOGITS: usize = 200_000;

/// `|got - want|` within docs/contract.md §3's tolerance (relative, absolute near zero).
fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= REL_TOL * want.abs().max(ABS_TOL / REL_TOL)
}

/// Everything that differs between `got` (GPU) and `want` (CPU) beyond tolerance.
fn mismatches(got: &Losses, want: &Losses) -> Vec<String> {
    let mut out = Vec::new();
    let d = got.max_rel_diff(want, REL_TOL, ABS_TOL);
    if d > REL_TOL || d.is_nan() {
        out.push(format!("per-image relative difference {d:e} > {REL_TOL:e}"));
    }
    if got.num_pos != want.num_pos {
        out.push(format!("num_pos {:?} != {:?}", got.num_pos, want.num_pos));
    }
    for (what, g, w) in [
        ("cls_loss", got.cls_loss, want.cls_loss),
        ("cnt_loss", got.cnt_loss, want.cnt_loss),
        ("reg_loss", got.reg_loss, want.reg_loss),
        ("total", got.total, want.total),
    ] {
        if !g.is_finite() || !close(g, w) {
            out.push(format!("{what} {g} vs reference {w}"));
        }
    }
    out
}

fn all_finite(l: &Losses) -> bool {
    l.cls
        .iter()
        .chain(&l.cnt)
        .chain(&l.reg)
        .all(|x| x.is_finite())
        && [l.cls_loss, l.cnt_loss, l.reg_loss, l.total]
            .iter()
            .all(|x| x.is_finite())
}

/// The parameters of one randomized case, printed when it fails.
#[derive(Debug, Clone)]
struct Case {
    batch: usize,
    classes: usize,
    shapes: Vec<(u32, u32)>,
    strides: Vec<u32>,
    pos_frac: Vec<f64>,
    logit_scale: f64,
    logit_shift: f64,
    reg_loss: RegLoss,
    add_centerness: bool,
    gamma: f32,
    alpha: f32,
    seed: u64,
}

/// The focal γ values every run covers besides γ = 2 (the notebook's, compiled in
/// as a square): 0 (no modulation), fractional and integer powers of the general
/// `pow` path.
const OTHER_GAMMAS: [f32; 5] = [0.0, 0.5, 1.0, 1.5, 3.0];

/// Draws the focal parameters of one case from `rng` (a stream of its own, so
/// that the shapes and batches of the cases do not depend on it): γ = 2 in about
/// 40 % of the cases, one of [`OTHER_GAMMAS`] in about 45 %, else any γ in
/// `[0, 4)`; α = 0 or 1 in about 10 % each, else any α in `[0, 1)`.
fn draw_focal(rng: &mut Rng) -> (f32, f32) {
    let g = rng.uniform();
    let gamma = if g < 0.4 {
        2.0
    } else if g < 0.85 {
        OTHER_GAMMAS[rng.range(0, OTHER_GAMMAS.len() as u64 - 1) as usize]
    } else {
        (rng.uniform() * 4.0) as f32
    };
    let a = rng.uniform();
    let alpha = if a < 0.1 {
        0.0
    } else if a < 0.2 {
        1.0
    } else {
        rng.uniform() as f32
    };
    (gamma, alpha)
}

impl Case {
    fn draw(index: usize, rng: &mut Rng, focal: &mut Rng) -> Case {
        let batch = rng.range(1, 8) as usize;
        let num_levels = rng.range(1, 6) as usize;
        let shapes: Vec<(u32, u32)> = (0..num_levels)
            .map(|_| {
                let r = rng.uniform();
                if r < 0.12 {
                    (1, 1)
                } else if r < 0.2 {
                    // A level that holds no positions.
                    let n = rng.range(0, 23) as u32;
                    if rng.uniform() < 0.5 {
                        (0, n)
                    } else {
                        (n, 0)
                    }
                } else {
                    (rng.range(1, 23) as u32, rng.range(1, 23) as u32)
                }
            })
            .collect();
        let strides = (0..num_levels).map(|l| 8u32 << l).collect();
        let positions: usize = shapes.iter().map(|&(h, w)| (h * w) as usize).sum();
        let classes = (rng.range(1, 100) as usize)
            .min((MAX_CLASS_LOGITS / (batch * positions).max(1)).max(1));
        // Cycle through the kinds of positive fractions so that every kind shows up.
        let pos_frac = match index % 5 {
            0 => vec![0.0],
            1 => vec![1.0],
            2 => vec![rng.uniform() * 0.1],
            _ => (0..batch)
                .map(|_| match rng.range(0, 3) {
                    0 => 0.0,
                    1 => 1.0,
                    2 => rng.uniform(),
                    _ => rng.uniform() * 0.05,
                })
                .collect(),
        };
        let logit_scale = [0.3, 1.0, 1.5, 3.0, 8.0][rng.range(0, 4) as usize];
        let logit_shift = [-8.0, -4.6, -1.0, 0.0, 2.5][rng.range(0, 4) as usize];
        let (gamma, alpha) = draw_focal(focal);
        Case {
            batch,
            classes,
            shapes,
            strides,
            pos_frac,
            logit_scale,
            logit_shift,
            reg_loss: if index.is_multiple_of(2) {
                RegLoss::Iou
            } else {
                RegLoss::Giou
            },
            add_centerness: (index / 2).is_multiple_of(2),
            gamma,
            alpha,
            seed: rng.next_u64(),
        }
    }

    fn config(&self) -> LossConfig {
        let mut c = LossConfig::new(self.classes as u32)
            .with_reg_loss(self.reg_loss)
            .with_centerness(self.add_centerness);
        c.strides = self.strides.clone();
        c.gamma = self.gamma;
        c.alpha = self.alpha;
        c
    }

    fn batch(&self, levels: &Levels) -> Batch {
        let spec = SyntheticSpec {
            batch: self.batch,
            classes: self.classes,
            pos_frac: self.pos_frac.clone(),
            logit_scale: self.logit_scale,
            logit_shift: self.logit_shift,
            seed: self.seed,
        };
        synthetic::generate(levels, &self.strides, &spec).expect("synthetic batch")
    }
}

/// 120 random cases (shapes, positives, logits, box loss, centerness, γ and α),
/// each run with the engine's value checks on and off: valid inputs give the
/// reference's losses either way. γ = 2 and γ ≠ 2 run on two engines, so that the
/// pipelines (γ = 2 is compiled in as a square) are not rebuilt case after case.
#[test]
fn random_cases_match_the_cpu_reference() {
    const CASES: usize = 120;
    let mut rng = Rng::new(0x0fc0_5105);
    let mut focal = Rng::new(0x0fc0_6a44);
    let mut square = common::engine(LossConfig::new(1));
    let mut general = common::engine(LossConfig {
        gamma: 1.5,
        ..LossConfig::new(1)
    });
    eprintln!("adapter: {}", square.adapter_name());
    let mut failures = Vec::new();
    let mut logits = 0;
    let (mut empty_level, mut one_by_one, mut no_pos, mut all_pos, mut mixed) = (0, 0, 0, 0, 0);
    let mut gammas: Vec<f32> = Vec::new();
    let (mut alpha_zero, mut alpha_one, mut alpha_inner) = (0, 0, 0);
    for index in 0..CASES {
        let case = Case::draw(index, &mut rng, &mut focal);
        let levels = Levels::from_shapes(&case.shapes).expect("levels");
        let config = case.config();
        let batch = case.batch(&levels);
        let engine = if config.gamma == 2.0 {
            &mut square
        } else {
            &mut general
        };
        engine.set_config(config.clone()).expect("config");
        let want = reference::losses(&config, &levels, &batch.inputs()).expect("reference");
        let p = levels.positions() as u32;
        logits += case.batch * case.classes * p as usize;
        empty_level += usize::from(case.shapes.iter().any(|&(h, w)| h * w == 0));
        one_by_one += usize::from(case.shapes.contains(&(1, 1)));
        no_pos += usize::from(p > 0 && want.num_pos.contains(&0));
        all_pos += usize::from(p > 0 && want.num_pos.contains(&p));
        mixed += usize::from(want.num_pos.iter().any(|&n| n > 0 && n < p));
        gammas.push(case.gamma);
        if case.alpha == 0.0 {
            alpha_zero += 1;
        } else if case.alpha == 1.0 {
            alpha_one += 1;
        } else {
            alpha_inner += 1;
        }
        for checks in [true, false] {
            engine.set_checks(checks);
            match engine.compute(&levels, &batch.inputs()) {
                Ok(got) => {
                    let mut bad = mismatches(&got, &want);
                    // `total` follows add_centerness.
                    let expect_total = if case.add_centerness {
                        got.cls_loss + got.cnt_loss + got.reg_loss
                    } else {
                        got.cls_loss + got.reg_loss
                    };
                    if !close(got.total, expect_total) {
                        bad.push(format!(
                            "total {} ignores add_centerness (want {expect_total})",
                            got.total
                        ));
                    }
                    if !bad.is_empty() {
                        failures.push(format!(
                            "case {index}, checks {checks}: {case:?}\n  {}\n  got  {got:?}\n  want {want:?}",
                            bad.join("; ")
                        ));
                    }
                }
                Err(e) => failures.push(format!(
                    "case {index}, checks {checks}: {case:?}\n  error: {e}"
                )),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} random runs ({CASES} cases, checks on and off) differ from the CPU reference:\n{}",
        failures.len(),
        2 * CASES,
        failures.join("\n")
    );
    let square_cases = gammas.iter().filter(|&&g| g == 2.0).count();
    eprintln!(
        "{CASES} cases (each with checks on and off), {logits} class logits; empty levels in \
         {empty_level}, 1x1 in {one_by_one}, images without positives in {no_pos}, all positive \
         in {all_pos}, mixed in {mixed}; gamma = 2 in {square_cases}, alpha 0 / 1 / inside in \
         {alpha_zero} / {alpha_one} / {alpha_inner}"
    );
    // The generator must actually have covered the interesting layouts.
    assert!(
        empty_level > 0 && one_by_one > 0,
        "no empty or 1x1 level drawn"
    );
    assert!(
        no_pos > 0 && all_pos > 0 && mixed > 0,
        "positive fractions not covered"
    );
    // ... and the focal parameters: γ = 2 often, every other listed γ, some γ
    // outside the list, and α at both ends and inside.
    assert!(
        square_cases >= CASES / 4,
        "gamma = 2 in only {square_cases} of {CASES} cases"
    );
    for g in OTHER_GAMMAS {
        assert!(gammas.contains(&g), "gamma = {g} never drawn: {gammas:?}");
    }
    assert!(
        gammas
            .iter()
            .any(|g| *g != 2.0 && !OTHER_GAMMAS.contains(g)),
        "no gamma outside the list drawn"
    );
    assert!(
        alpha_zero > 0 && alpha_one > 0 && alpha_inner > 0,
        "alpha not covered: 0 in {alpha_zero}, 1 in {alpha_one}, inside in {alpha_inner}"
    );
}

/// A layout and batch for the extreme-logit tests: image 0 mixed, image 1 all
/// positive, image 2 without positives.
fn extreme_batch(pattern: &dyn Fn(usize) -> f32, classes: usize) -> (Levels, Batch) {
    let levels = Levels::from_shapes(&[(5, 7), (3, 3), (1, 1), (2, 5)]).unwrap();
    let mut spec = SyntheticSpec::new(3, classes);
    spec.pos_frac = vec![0.3, 1.0, 0.0];
    spec.seed = 17;
    let mut batch = synthetic::generate(&levels, &[8, 16, 32, 64], &spec).unwrap();
    let mut i = 0;
    for head in batch
        .cls_logits
        .iter_mut()
        .chain(batch.cnt_logits.iter_mut())
    {
        for x in head.iter_mut() {
            *x = pattern(i);
            i += 1;
        }
    }
    (levels, batch)
}

#[test]
fn extreme_logits_stay_finite_and_match() {
    const VALUES: [f32; 9] = [50.0, -50.0, 30.0, -30.0, 17.0, -17.0, 0.0, 17.5, -16.9];
    type Pattern = Box<dyn Fn(usize) -> f32>;
    let patterns: Vec<(&str, Pattern)> = vec![
        ("cycle", Box::new(|i| VALUES[i % VALUES.len()])),
        (
            "cycle7",
            Box::new(|i| VALUES[(i * 7 + i / 3) % VALUES.len()]),
        ),
        ("all +50", Box::new(|_| 50.0)),
        ("all -50", Box::new(|_| -50.0)),
        ("all +30", Box::new(|_| 30.0)),
        ("all -30", Box::new(|_| -30.0)),
        ("all +17", Box::new(|_| 17.0)),
        ("all -17", Box::new(|_| -17.0)),
        ("all 0", Box::new(|_| 0.0)),
        ("+-50", Box::new(|i| if i % 2 == 0 { 50.0 } else { -50.0 })),
    ];
    let mut engine = common::engine(LossConfig::new(1));
    let mut failures = Vec::new();
    for classes in [1usize, 6] {
        for (name, pattern) in &patterns {
            let (levels, batch) = extreme_batch(pattern.as_ref(), classes);
            for reg in [RegLoss::Iou, RegLoss::Giou] {
                let config = LossConfig::new(classes as u32).with_reg_loss(reg);
                engine.set_config(config.clone()).unwrap();
                let want = reference::losses(&config, &levels, &batch.inputs()).unwrap();
                assert!(
                    all_finite(&want),
                    "reference not finite for {name}: {want:?}"
                );
                let got = engine.compute(&levels, &batch.inputs()).unwrap();
                let mut bad = mismatches(&got, &want);
                if !all_finite(&got) {
                    bad.push("GPU result not finite".into());
                }
                if !bad.is_empty() {
                    failures.push(format!(
                        "pattern {name}, C = {classes}, {reg:?}: {}\n  got  {got:?}\n  want {want:?}",
                        bad.join("; ")
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "extreme logits:\n{}",
        failures.join("\n")
    );
}

fn determinism_case() -> (LossConfig, Levels, Batch) {
    let config = LossConfig::new(23);
    let levels = Levels::from_image(100, 150, &config.strides).unwrap();
    let mut spec = SyntheticSpec::new(3, 23);
    spec.pos_frac = vec![0.05, 0.0, 1.0];
    spec.seed = 5;
    let batch = synthetic::generate(&levels, &config.strides, &spec).unwrap();
    (config, levels, batch)
}

#[test]
fn repeated_calls_are_bitwise_identical() {
    let (config, levels, batch) = determinism_case();
    let engine = common::engine(config.clone());
    let first = engine.compute(&levels, &batch.inputs()).unwrap();
    for i in 1..20 {
        let again = engine.compute(&levels, &batch.inputs()).unwrap();
        assert_eq!(
            common::bits(&again),
            common::bits(&first),
            "call {i} differs:\n {again:?}\n {first:?}"
        );
    }
    let want = reference::losses(&config, &levels, &batch.inputs()).unwrap();
    common::assert_close("determinism case", &first, &want);
}

#[test]
fn each_target_workgroups_setting_is_deterministic() {
    let (config, levels, batch) = determinism_case();
    let want = reference::losses(&config, &levels, &batch.inputs()).unwrap();
    let mut engine = common::engine(config);
    for target in [1u32, 3, 17, 64, 256, 1000, 4096, 100_000] {
        engine.set_target_workgroups(target);
        let first = engine.compute(&levels, &batch.inputs()).unwrap();
        common::assert_close(&format!("target_workgroups = {target}"), &first, &want);
        for i in 1..6 {
            let again = engine.compute(&levels, &batch.inputs()).unwrap();
            assert_eq!(
                common::bits(&again),
                common::bits(&first),
                "target_workgroups = {target}, call {i} differs:\n {again:?}\n {first:?}"
            );
        }
    }
}

/// One call of a reuse sequence: `B`, `C` and the level shapes.
type Call = (usize, usize, Vec<(u32, u32)>);

/// Runs `(B, C, shapes)` calls in order on one engine and reports every call after
/// the first that created buffers, checking each result against the reference.
fn buffers_grown(engine: &mut FcosLoss, calls: &[Call]) -> Vec<String> {
    let mut grown = Vec::new();
    let mut before = None;
    for (i, (b, c, shapes)) in calls.iter().enumerate() {
        let levels = Levels::from_shapes(shapes).unwrap();
        let config = LossConfig::new(*c as u32);
        engine.set_config(config.clone()).unwrap();
        let mut spec = SyntheticSpec::new(*b, *c);
        spec.pos_frac = vec![0.2, 1.0, 0.0];
        spec.seed = i as u64;
        let batch = synthetic::generate(&levels, &config.strides, &spec).unwrap();
        let got = engine.compute(&levels, &batch.inputs()).unwrap();
        let want = reference::losses(&config, &levels, &batch.inputs()).unwrap();
        common::assert_close(
            &format!("call {i}: B = {b}, C = {c}, levels {shapes:?}"),
            &got,
            &want,
        );
        let n = engine.buffers_created();
        if let Some(prev) = before {
            if n > prev {
                grown.push(format!(
                    "call {i} (B = {b}, C = {c}, levels {shapes:?}) created {} buffer(s) after {:?}",
                    n - prev,
                    &calls[..i]
                ));
            }
        }
        before = Some(n);
    }
    grown
}

#[test]
fn smaller_batches_reuse_buffers() {
    let mut engine = common::engine(LossConfig::new(20));
    engine.set_target_workgroups(256);
    let big = vec![(13, 19), (7, 10), (4, 5), (2, 3), (1, 2)];
    let calls = vec![
        (4, 20, big.clone()),
        (4, 20, big.clone()),
        (3, 20, big.clone()),
        (2, 20, big.clone()),
        (1, 20, big.clone()),
        (4, 20, vec![(7, 10), (1, 1)]),
        (2, 20, vec![(3, 3)]),
        (4, 20, big.clone()),
    ];
    let grown = buffers_grown(&mut engine, &calls);
    assert!(
        grown.is_empty(),
        "same-or-smaller calls created buffers:\n{}",
        grown.join("\n")
    );
}

#[test]
fn smaller_batch_with_more_class_chunks_reuses_buffers() {
    // With 256 target workgroups, B = 8, C = 8 and 1280 positions (5 tiles) cut the
    // classes into 4 chunks (160 partials); B = 5 cuts them into 8 chunks (200 partials).
    let mut engine = common::engine(LossConfig::new(8));
    engine.set_target_workgroups(256);
    let calls = vec![(8, 8, vec![(32, 40)]), (5, 8, vec![(32, 40)])];
    let grown = buffers_grown(&mut engine, &calls);
    assert!(
        grown.is_empty(),
        "a smaller batch created buffers:\n{}",
        grown.join("\n")
    );
}

#[test]
fn empty_levels_match_the_reference() {
    let layouts: [&[(u32, u32)]; 5] = [
        &[(3, 5), (0, 4), (2, 2), (7, 0), (1, 1)],
        &[(0, 3), (4, 4)],
        &[(4, 4), (0, 0)],
        &[(0, 0), (0, 0), (1, 1), (0, 9)],
        &[(1, 1), (0, 2), (0, 2), (5, 3)],
    ];
    let mut engine = common::engine(LossConfig::new(1));
    for shapes in layouts {
        for (c, reg) in [(3u32, RegLoss::Iou), (11, RegLoss::Giou)] {
            let levels = Levels::from_shapes(shapes).unwrap();
            let config = LossConfig::new(c).with_reg_loss(reg);
            engine.set_config(config.clone()).unwrap();
            let mut spec = SyntheticSpec::new(3, c as usize);
            spec.pos_frac = vec![0.4, 1.0, 0.0];
            let batch = synthetic::generate(&levels, &[8, 16, 32, 64, 128], &spec).unwrap();
            let got = engine.compute(&levels, &batch.inputs()).unwrap();
            let want = reference::losses(&config, &levels, &batch.inputs()).unwrap();
            common::assert_close(&format!("levels {shapes:?}, C = {c}, {reg:?}"), &got, &want);
        }
    }
}

#[test]
fn all_empty_levels_give_zeros() {
    let engine = common::engine(LossConfig::new(4));
    for shapes in [vec![(0, 0)], vec![(0, 5), (3, 0), (0, 0)]] {
        let levels = Levels::from_shapes(&shapes).unwrap();
        let batch = synthetic::generate(&levels, &[8], &SyntheticSpec::new(2, 4)).unwrap();
        let got = engine.compute(&levels, &batch.inputs()).unwrap();
        assert_eq!(got.batch(), 2, "{shapes:?}");
        assert_eq!(
            common::bits(&got),
            common::bits(&Losses::from_per_image(
                vec![0.0; 2],
                vec![0.0; 2],
                vec![0.0; 2],
                vec![0; 2],
                true
            ))
        );
        let cpu = reference::losses(engine.config(), &levels, &batch.inputs()).unwrap();
        common::assert_close(&format!("levels {shapes:?}"), &got, &cpu);
    }
}

fn shape_tensor(r: Result<Losses, FcosError>) -> String {
    match r {
        Err(FcosError::Shape { tensor, .. }) => tensor,
        other => panic!("expected FcosError::Shape, got {other:?}"),
    }
}

#[test]
fn shape_errors_name_the_tensor() {
    let config = LossConfig::new(5);
    let levels = Levels::from_shapes(&[(4, 3), (2, 2), (1, 1)]).unwrap();
    let batch = synthetic::generate(&levels, &config.strides, &SyntheticSpec::new(2, 5)).unwrap();
    let engine = common::engine(config.clone());

    // Wrong slice length of one level.
    let short = &batch.cls_logits[1][1..];
    let mut i = batch.inputs();
    i.cls_logits[1] = short;
    assert_eq!(shape_tensor(engine.compute(&levels, &i)), "cls_logits.1");
    let long: Vec<f32> = batch.reg_preds[2].iter().chain(&[1.0]).copied().collect();
    let mut i = batch.inputs();
    i.reg_preds[2] = &long;
    assert_eq!(shape_tensor(engine.compute(&levels, &i)), "reg_preds.2");
    let mut i = batch.inputs();
    i.cnt_logits[0] = &batch.cnt_logits[1];
    assert_eq!(shape_tensor(engine.compute(&levels, &i)), "cnt_logits.0");

    // Wrong target lengths.
    let mut i = batch.inputs();
    i.cls_targets = &batch.cls_targets[2..];
    assert_eq!(shape_tensor(engine.compute(&levels, &i)), "cls_targets");
    let mut i = batch.inputs();
    i.cnt_targets = &batch.cls_targets[..0];
    assert_eq!(shape_tensor(engine.compute(&levels, &i)), "cnt_targets");
    let mut i = batch.inputs();
    i.reg_targets = &batch.reg_targets[..batch.reg_targets.len() - 1];
    assert_eq!(shape_tensor(engine.compute(&levels, &i)), "reg_targets");

    // Wrong level counts.
    let mut i = batch.inputs();
    i.cls_logits.pop();
    assert_eq!(shape_tensor(engine.compute(&levels, &i)), "cls_logits");
    let mut i = batch.inputs();
    i.cnt_logits.push(&batch.cnt_logits[0]);
    assert_eq!(shape_tensor(engine.compute(&levels, &i)), "cnt_logits");
    let mut i = batch.inputs();
    i.reg_preds.clear();
    assert_eq!(shape_tensor(engine.compute(&levels, &i)), "reg_preds");

    // B that does not fit the data, and a C the engine was not configured for.
    let mut i = batch.inputs();
    i.batch = 3;
    assert_eq!(shape_tensor(engine.compute(&levels, &i)), "cls_logits.0");
    let other = synthetic::generate(&levels, &config.strides, &SyntheticSpec::new(2, 4)).unwrap();
    assert_eq!(
        shape_tensor(engine.compute(&levels, &other.inputs())),
        "cls_logits.0"
    );

    // B = 0, with and without data.
    let mut i = batch.inputs();
    i.batch = 0;
    assert_eq!(shape_tensor(engine.compute(&levels, &i)), "batch");
    let empty: Vec<Vec<f32>> = vec![Vec::new(); levels.len()];
    let zero = fcos_loss::Inputs {
        batch: 0,
        cls_logits: empty.iter().map(Vec::as_slice).collect(),
        cnt_logits: empty.iter().map(Vec::as_slice).collect(),
        reg_preds: empty.iter().map(Vec::as_slice).collect(),
        cls_targets: &[],
        cnt_targets: &[],
        reg_targets: &[],
    };
    assert_eq!(shape_tensor(engine.compute(&levels, &zero)), "batch");
    assert!(
        reference::losses(&config, &levels, &zero).is_err(),
        "reference accepts B = 0"
    );

    // The engine still works after all of that.
    let got = engine.compute(&levels, &batch.inputs()).unwrap();
    let want = reference::losses(&config, &levels, &batch.inputs()).unwrap();
    common::assert_close("after shape errors", &got, &want);
}

/// Every workgroup size (an override constant) gives the reference's losses and
/// gradients; bad sizes are refused with a message.
#[test]
fn every_workgroup_size_matches_the_reference() {
    let config = LossConfig::new(9).with_reg_loss(RegLoss::Giou);
    let mut engine = common::engine(config.clone());
    let levels = Levels::from_shapes(&[(23, 31), (12, 16), (1, 1)]).unwrap();
    let mut spec = SyntheticSpec::new(3, 9);
    spec.pos_frac = vec![0.1, 0.0, 1.0];
    let batch = synthetic::generate(&levels, &[8, 16, 32], &spec).unwrap();
    let cpu = reference::losses(&config, &levels, &batch.inputs()).unwrap();
    let w = fcos_loss::LossWeights::default();
    let (_, cg) = reference::grad::gradients(&config, &levels, &batch.inputs(), &w).unwrap();
    for wg in [32, 64, 128, 256, 512] {
        engine.set_workgroup_size(wg).unwrap();
        assert_eq!(engine.workgroup_size(), wg);
        let got = engine.compute(&levels, &batch.inputs()).unwrap();
        assert!(
            mismatches(&got, &cpu).is_empty(),
            "WG {wg}: {:?}",
            mismatches(&got, &cpu)
        );
        let (_, g) = engine
            .forward_backward(&levels, &batch.inputs(), &w)
            .unwrap();
        let worst = fcos_loss::max_tensor_error(&g.cls_logits, &cg.cls_logits);
        assert!(worst <= 1e-4, "WG {wg}: gradient error {worst}");
    }
    for bad in [0, 48, 16, 2048] {
        let e = engine.set_workgroup_size(bad).unwrap_err();
        assert!(e.to_string().contains("workgroup size"), "{e}");
    }
}

/// The subgroup reduction (where the device has `Features::SUBGROUP`) and the
/// shared-memory tree both match the reference, forward and backward, and each is
/// bitwise repeatable.
#[test]
fn subgroup_and_shared_memory_reductions_match_the_reference() {
    let config = LossConfig::new(13);
    let mut engine = common::engine(config.clone());
    let has_subgroups = engine.context().features.contains(wgpu::Features::SUBGROUP);
    assert_eq!(
        engine.subgroups(),
        has_subgroups,
        "subgroups are the default where available"
    );
    let levels = Levels::from_shapes(&[(19, 27), (10, 14), (5, 7), (1, 1)]).unwrap();
    let mut spec = SyntheticSpec::new(2, 13);
    spec.pos_frac = vec![0.08, 1.0];
    let batch = synthetic::generate(&levels, &[8, 16, 32, 64], &spec).unwrap();
    let cpu = reference::losses(&config, &levels, &batch.inputs()).unwrap();
    let w = fcos_loss::LossWeights::default();
    let (_, cg) = reference::grad::gradients(&config, &levels, &batch.inputs(), &w).unwrap();
    let modes: &[bool] = if has_subgroups {
        &[true, false]
    } else {
        &[false]
    };
    for &sg in modes {
        engine.set_subgroups(sg).unwrap();
        for wg in [64, 256] {
            engine.set_workgroup_size(wg).unwrap();
            let got = engine.compute(&levels, &batch.inputs()).unwrap();
            assert!(
                mismatches(&got, &cpu).is_empty(),
                "subgroups {sg}, WG {wg}: {:?}",
                mismatches(&got, &cpu)
            );
            let again = engine.compute(&levels, &batch.inputs()).unwrap();
            assert_eq!(
                common::bits(&got),
                common::bits(&again),
                "subgroups {sg}, WG {wg}"
            );
            let (_, g) = engine
                .forward_backward(&levels, &batch.inputs(), &w)
                .unwrap();
            let worst = fcos_loss::max_tensor_error(&g.cls_logits, &cg.cls_logits);
            assert!(
                worst <= 1e-4,
                "subgroups {sg}, WG {wg}: gradient error {worst:e}"
            );
        }
    }
    if !has_subgroups {
        let e = engine.set_subgroups(true).unwrap_err();
        assert!(matches!(e, FcosError::InvalidCall(_)), "{e:?}");
    }
}
