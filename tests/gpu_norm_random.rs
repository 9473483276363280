//! Every normalisation mode (docs/contract.md §8) on the GPU against the f64 CPU
//! reference, on random batches: `PerImage`, `Batch` and `Global`, each with and
//! without the centerness-weighted box loss, IoU and GIoU; the losses and the raw
//! sums of the forward pass and the gradients of the backward pass, on the host
//! path and the device path (and, for `Global`, with the denominators read from a
//! device buffer); images without positives, one and all.

mod common;

use fcos_loss::synthetic::{self, Rng, SyntheticSpec};
use fcos_loss::{
    reference, Batch, Denominators, DeviceBatch, DeviceDenominators, FcosLoss, Gradients, Heads,
    Levels, LossConfig, LossWeights, Losses, Normalization, RegLoss, ABS_TOL, REL_TOL,
};
use wgpu::util::DeviceExt;

/// Losses: docs/contract.md §3's tolerance. Gradients: each element within this
/// fraction of its tensor's largest magnitude (`max_tensor_error`).
const GRAD_TOL: f64 = 1e-4;

/// How a case's `Global` denominators relate to its own totals `(Σn, ΣZ)`.
#[derive(Debug, Clone, Copy)]
enum GlobalKind {
    /// Exactly the batch's own totals (`Global` then equals `Batch`).
    Own,
    /// Other replicas' shares: more positives, less centerness.
    Scaled,
    /// Below both floors: `max(N_g, 1) = 1`, `max(Z_g, 1e-6) = 1e-6`.
    Floors,
    /// Drawn at random.
    Drawn(f32, f32),
}

/// One random case, printed when it fails.
#[derive(Debug, Clone)]
struct Case {
    batch: usize,
    classes: usize,
    shapes: Vec<(u32, u32)>,
    pos_frac: Vec<f64>,
    reg: RegLoss,
    weights: LossWeights,
    global: GlobalKind,
    /// Set some positives' centerness targets to exactly 0 and 1, and every
    /// positive of image 0 to 0 (`n_0 > 0`, `Z_0 = 0`).
    ctr_edges: bool,
    seed: u64,
}

impl Case {
    fn draw(index: usize, rng: &mut Rng) -> Case {
        let batch = rng.range(2, 5) as usize;
        let levels = rng.range(2, 4) as usize;
        let shapes = (0..levels)
            .map(|l| {
                let s = 12u64 >> l;
                (rng.range(1, s.max(1)) as u32, rng.range(1, s.max(1)) as u32)
            })
            .collect();
        let pos_frac = (0..batch)
            .map(|_| match rng.range(0, 4) {
                0 => 0.0,
                1 => 1.0,
                2 => rng.uniform() * 0.1,
                _ => rng.uniform(),
            })
            .collect();
        let w = |rng: &mut Rng| (0.25 + 1.75 * rng.uniform()) as f32;
        let weights = LossWeights {
            cls: w(rng),
            cnt: if index % 3 == 2 { 0.0 } else { w(rng) },
            reg: w(rng),
        };
        let global = match index % 4 {
            0 => GlobalKind::Own,
            1 => GlobalKind::Scaled,
            2 => GlobalKind::Floors,
            _ => GlobalKind::Drawn(
                (1.0 + 199.0 * rng.uniform()) as f32,
                (0.1 + 50.0 * rng.uniform()) as f32,
            ),
        };
        Case {
            batch,
            classes: rng.range(1, 12) as usize,
            shapes,
            pos_frac,
            reg: if index.is_multiple_of(2) {
                RegLoss::Iou
            } else {
                RegLoss::Giou
            },
            weights,
            global,
            ctr_edges: index % 3 == 1,
            seed: rng.next_u64(),
        }
    }

    /// A case whose images have the given positive fractions (0: none).
    fn fixed(pos_frac: Vec<f64>, reg: RegLoss, seed: u64) -> Case {
        Case {
            batch: pos_frac.len(),
            classes: 5,
            shapes: vec![(6, 7), (3, 4), (2, 2), (1, 1)],
            pos_frac,
            reg,
            weights: LossWeights {
                cls: 0.8,
                cnt: 1.2,
                reg: 1.7,
            },
            global: GlobalKind::Scaled,
            ctr_edges: false,
            seed,
        }
    }

    fn batch(&self, levels: &Levels) -> Batch {
        let spec = SyntheticSpec {
            batch: self.batch,
            classes: self.classes,
            pos_frac: self.pos_frac.clone(),
            logit_scale: 1.5,
            logit_shift: -1.0,
            seed: self.seed,
        };
        let strides: Vec<u32> = (0..levels.len()).map(|l| 8 << l).collect();
        let mut b = synthetic::generate(levels, &strides, &spec).expect("synthetic batch");
        if self.ctr_edges {
            let p = levels.positions();
            let mut k = 0;
            for (i, ct) in b.cnt_targets.iter_mut().enumerate() {
                if *ct > -1.0 {
                    if i < p {
                        *ct = 0.0;
                    } else {
                        *ct = [*ct, 0.0, 1.0][k % 3];
                        k += 1;
                    }
                }
            }
        }
        b
    }

    fn denominators(&self, batch: &Batch) -> Denominators {
        let (n, z) = totals(batch);
        let (num_pos, ctr) = match self.global {
            GlobalKind::Own => (n, z),
            GlobalKind::Scaled => (2.5 * n + 3.0, 0.4 * z + 0.25),
            GlobalKind::Floors => (0.5, 1e-7),
            GlobalKind::Drawn(n, z) => (n as f64, z as f64),
        };
        Denominators {
            num_pos: num_pos as f32,
            ctr: ctr as f32,
        }
    }
}

/// `(Σn, ΣZ)` of a batch's centerness targets.
fn totals(batch: &Batch) -> (f64, f64) {
    let pos = batch.cnt_targets.iter().filter(|&&c| c > -1.0);
    (
        pos.clone().count() as f64,
        pos.map(|&c| c as f64).sum::<f64>(),
    )
}

/// The six (normalisation, weighted) pairs of a case.
fn modes(d: Denominators) -> [(Normalization, bool); 6] {
    let n = [
        Normalization::PerImage,
        Normalization::Batch,
        Normalization::Global(d),
    ];
    [
        (n[0], false),
        (n[0], true),
        (n[1], false),
        (n[1], true),
        (n[2], false),
        (n[2], true),
    ]
}

fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= REL_TOL * want.abs().max(ABS_TOL / REL_TOL)
}

/// What differs between a GPU result and the reference beyond tolerance: every
/// per-image loss, raw sum and normalised loss (`max_rel_diff`), the counts
/// exactly, and `total`.
fn loss_mismatches(got: &Losses, want: &Losses) -> Vec<String> {
    let mut out = Vec::new();
    let d = got.max_rel_diff(want, REL_TOL, ABS_TOL);
    if d > REL_TOL {
        out.push(format!("losses/sums relative difference {d:e}"));
    }
    if got.num_pos != want.num_pos || got.sums.num_pos != want.sums.num_pos {
        out.push(format!(
            "num_pos {:?} / sums {:?} vs {:?}",
            got.num_pos, got.sums.num_pos, want.num_pos
        ));
    }
    if got.sums.cls.len() != want.sums.cls.len() {
        out.push("sums missing".into());
    }
    if !close(got.total, want.total) {
        out.push(format!("total {} vs {}", got.total, want.total));
    }
    out
}

fn grad_mismatches(got: &Gradients, want: &Heads<Vec<Vec<f64>>>) -> Vec<String> {
    got.iter()
        .filter_map(|(h, g)| {
            let e = fcos_loss::max_tensor_error(g, &want[h]);
            (e > GRAD_TOL).then(|| format!("{h} gradient error {e:e}"))
        })
        .collect()
}

/// Images without positives: finite, `S_cnt = S_reg = S_regw = Z = 0` and their
/// per-image losses 0, the classification sum still there (and per image the
/// sum itself, over `max(0, 1) = 1`).
fn zero_positive_mismatches(l: &Losses) -> Vec<String> {
    let mut out = Vec::new();
    let s = &l.sums;
    let finite = [l.cls_loss, l.cnt_loss, l.reg_loss, l.total]
        .iter()
        .chain(&l.cls)
        .chain(&l.cnt)
        .chain(&l.reg)
        .chain(&s.cls)
        .chain(&s.cnt)
        .chain(&s.reg)
        .chain(&s.reg_w)
        .chain(&s.ctr)
        .all(|x| x.is_finite());
    if !finite {
        out.push("a non-finite value".into());
    }
    for b in (0..l.batch()).filter(|&b| l.num_pos[b] == 0) {
        let zeros = [s.cnt[b], s.reg[b], s.reg_w[b], s.ctr[b], l.cnt[b], l.reg[b]];
        if zeros != [0.0; 6] {
            out.push(format!(
                "image {b} has no positives but S_cnt, S_reg, S_regw, Z, cnt, reg = {zeros:?}"
            ));
        }
        if !(s.cls[b] > 0.0 && l.cls[b] == s.cls[b]) {
            out.push(format!(
                "image {b}: S_cls {} and cls {} (want the whole focal sum)",
                s.cls[b], l.cls[b]
            ));
        }
    }
    if l.num_pos.iter().all(|&n| n == 0) && !(l.cnt_loss == 0.0 && l.reg_loss == 0.0) {
        out.push(format!(
            "no positives at all, but cnt_loss {} reg_loss {}",
            l.cnt_loss, l.reg_loss
        ));
    }
    if l.cls_loss.is_nan() || l.cls_loss <= 0.0 {
        out.push(format!("cls_loss {}", l.cls_loss));
    }
    out
}

/// Counts of what a run covered, for the coverage assertions.
#[derive(Debug, Default)]
struct Covered {
    runs: usize,
    giou: usize,
    no_pos_image: usize,
    zero_ctr_image: usize,
    floors: usize,
}

/// Runs `case` in every mode on the host and device paths; returns the failures.
fn run_case(
    engine: &mut FcosLoss,
    case: &Case,
    zero_checks: bool,
    covered: &mut Covered,
) -> Vec<String> {
    let levels = Levels::from_shapes(&case.shapes).expect("levels");
    let batch = case.batch(&levels);
    let dens = case.denominators(&batch);
    let ctx = engine.context().clone();
    let up = DeviceBatch::upload(&ctx.device, &batch).expect("upload");
    let grads = up.gradient_buffers(&ctx.device).expect("gradient buffers");
    let dens_buf = ctx
        .device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("global denominators"),
            contents: bytemuck::cast_slice(&[dens.num_pos, dens.ctr]),
            usage: wgpu::BufferUsages::STORAGE,
        });
    let device_dens = DeviceDenominators {
        buffer: &dens_buf,
        offset: 0,
    };
    let (b, c) = (case.batch, case.classes);
    let inputs = batch.inputs();
    let w = case.weights;
    let mut failures = Vec::new();
    for (norm, weighted) in modes(dens) {
        let config = LossConfig::new(c as u32)
            .with_reg_loss(case.reg)
            .with_normalization(norm)
            .with_centerness_weighted_reg(weighted);
        engine.set_config(config.clone()).expect("config");
        let want = reference::losses(&config, &levels, &inputs).expect("reference");
        let (want_l, want_g) =
            reference::grad::gradients(&config, &levels, &inputs, &w).expect("reference grads");
        assert_eq!(want, want_l);
        covered.runs += 1;
        covered.giou += usize::from(case.reg == RegLoss::Giou);
        covered.no_pos_image += usize::from(want.num_pos.contains(&0));
        covered.zero_ctr_image +=
            usize::from((0..b).any(|i| want.sums.num_pos[i] > 0 && want.sums.ctr[i] == 0.0));
        covered.floors += usize::from(
            matches!(case.global, GlobalKind::Floors) && matches!(norm, Normalization::Global(_)),
        );
        let mut results: Vec<(&str, Losses, Option<Gradients>)> = Vec::new();
        let mut push = |what, r: Result<(Losses, Option<Gradients>), fcos_loss::FcosError>| match r
        {
            Ok((l, g)) => results.push((what, l, g)),
            Err(e) => failures.push(format!("{case:?} {norm:?} weighted {weighted} {what}: {e}")),
        };
        push(
            "host forward",
            engine.compute(&levels, &inputs).map(|l| (l, None)),
        );
        push(
            "host backward",
            engine
                .forward_backward(&levels, &inputs, &w)
                .map(|(l, g)| (l, Some(g))),
        );
        push(
            "device forward",
            engine
                .compute_device(&levels, &up.inputs())
                .map(|l| (l, None)),
        );
        let read = |l: Losses| {
            let g = common::read_gradients(&ctx, &levels, b, c, &grads.as_ref());
            (l, Some(g))
        };
        push(
            "device backward",
            engine
                .forward_backward_device(&levels, &up.inputs(), &grads.as_ref(), &w)
                .map(|t| read(t.value)),
        );
        if matches!(norm, Normalization::Global(_)) {
            push(
                "device forward, denominators from a buffer",
                engine
                    .compute_device_global(&levels, &up.inputs(), &device_dens)
                    .map(|t| (t.value, None)),
            );
            push(
                "device backward, denominators from a buffer",
                engine
                    .forward_backward_device_global(
                        &levels,
                        &up.inputs(),
                        &grads.as_ref(),
                        &w,
                        &device_dens,
                    )
                    .map(|t| read(t.value)),
            );
        }
        let mut all = vec![("cpu", want.clone(), None)];
        all.extend(results);
        for (what, got, g) in &all {
            let mut bad = loss_mismatches(got, &want);
            if let Some(g) = g {
                bad.extend(grad_mismatches(g, &want_g));
                if zero_checks && want.num_pos.iter().all(|&n| n == 0) {
                    let m = g.max_abs();
                    if m.cnt_logits != 0.0
                        || m.reg_preds != 0.0
                        || m.cls_logits.is_nan()
                        || m.cls_logits <= 0.0
                    {
                        bad.push(format!("no positives, but gradient magnitudes {m:?}"));
                    }
                }
            }
            if zero_checks {
                bad.extend(zero_positive_mismatches(got));
            }
            if !bad.is_empty() {
                failures.push(format!(
                    "{case:?}\n  {norm:?} weighted {weighted}, {what}: {}\n  got  {got:?}\n  want {want:?}",
                    bad.join("; ")
                ));
            }
        }
    }
    failures
}

/// 16 random cases, each in the six (mode, weighted) pairs, on the host and
/// device paths, forward and backward (and, in `Global`, with the denominators
/// from a device buffer): 96 configurations, 448 GPU results, each against the
/// reference's losses, sums and gradients.
#[test]
fn every_mode_matches_the_cpu_reference_on_random_cases() {
    let mut rng = Rng::new(0x0000_1309_a11d);
    let mut engine = common::engine(LossConfig::new(1));
    let mut covered = Covered::default();
    let mut failures = Vec::new();
    for index in 0..16 {
        let case = Case::draw(index, &mut rng);
        failures.extend(run_case(&mut engine, &case, false, &mut covered));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!("{covered:?}");
    assert!(
        covered.giou > 0 && covered.giou < covered.runs,
        "{covered:?}"
    );
    assert!(
        covered.no_pos_image > 0 && covered.zero_ctr_image > 0 && covered.floors > 0,
        "{covered:?}"
    );
}

/// One image without positives, then none in the whole batch, in every mode
/// (IoU and GIoU): finite results, `S_cnt = S_reg = 0` for those images, the
/// classification loss still there; with no positives at all, every centerness
/// and box gradient exactly 0 and the classification gradient not.
#[test]
fn images_without_positives_in_every_mode() {
    let mut engine = common::engine(LossConfig::new(1));
    let mut covered = Covered::default();
    let mut failures = Vec::new();
    for (i, reg) in [RegLoss::Iou, RegLoss::Giou].into_iter().enumerate() {
        let one = Case::fixed(vec![0.3, 0.0, 0.6], reg, 40 + i as u64);
        let none = Case::fixed(vec![0.0; 3], reg, 50 + i as u64);
        for case in [one, none] {
            failures.extend(run_case(&mut engine, &case, true, &mut covered));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(covered.no_pos_image, covered.runs, "{covered:?}");
}
