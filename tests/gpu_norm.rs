//! The normalisation modes (docs/contract.md §8) on the golden box cases: the raw
//! per-image sums, the `Batch` and `Global` (centerness-weighted) objectives and
//! the `global_ctr` gradients against PyTorch's, on the GPU (host and device
//! paths) and the CPU reference.
#![cfg(feature = "casefile")]

mod common;

use fcos_loss::casefile::{Case, ExpectedObjective};
use fcos_loss::{
    max_tensor_error, reference, Denominators, DeviceBatch, FcosLoss, LossConfig, LossWeights,
    Losses, Normalization, RegLoss, ABS_TOL, REL_TOL,
};

use common::GOLDEN_BOXES as CASES;

fn close(what: &str, got: f64, want: f64) {
    let d = (got - want).abs() / want.abs().max(ABS_TOL / REL_TOL);
    assert!(d <= REL_TOL, "{what}: {got} vs {want} (relative {d:e})");
}

/// `Global` with the case's own totals (`N = Σ n`, `Z = Σ Z`), the box loss
/// weighted by centerness: the golden files' `global_ctr`.
fn global_ctr(case: &Case, reg: RegLoss) -> LossConfig {
    let sums = case.expected.as_ref().unwrap().sums.as_ref().unwrap();
    LossConfig::new(case.batch.classes as u32)
        .with_reg_loss(reg)
        .with_normalization(Normalization::Global(Denominators {
            num_pos: sums.num_pos.iter().sum::<f64>() as f32,
            ctr: sums.ctr.iter().sum::<f64>() as f32,
        }))
        .with_centerness_weighted_reg(true)
}

fn check_objective(what: &str, got: &Losses, want: &ExpectedObjective, reg: RegLoss) {
    close(&format!("{what} cls"), got.cls_loss, want.cls_loss);
    close(&format!("{what} cnt"), got.cnt_loss, want.cnt_loss);
    let reg_want = match reg {
        RegLoss::Iou => want.reg_loss,
        RegLoss::Giou => want.reg_giou_loss,
    };
    close(&format!("{what} reg"), got.reg_loss, reg_want);
}

/// Losses of `case` under `config` on the host path, the device path and the CPU.
fn three_ways(engine: &mut FcosLoss, case: &Case, config: &LossConfig) -> [Losses; 3] {
    let b = &case.batch;
    engine.set_config(config.clone()).unwrap();
    let host = engine.compute(&b.levels, &b.inputs()).unwrap();
    let up = DeviceBatch::upload(&engine.context().device, b).unwrap();
    let device = engine.compute_device(&b.levels, &up.inputs()).unwrap();
    let cpu = reference::losses(config, &b.levels, &b.inputs()).unwrap();
    [host, device, cpu]
}

#[test]
fn golden_sums_and_objectives_in_every_mode() {
    let mut engine = common::engine(LossConfig::new(1));
    for name in CASES {
        let case = common::golden(name);
        let e = case.expected.clone().unwrap();
        let sums = e.sums.clone().expect("box cases carry expected.sums");
        for reg in [RegLoss::Iou, RegLoss::Giou] {
            let batch = LossConfig::new(case.batch.classes as u32)
                .with_reg_loss(reg)
                .with_normalization(Normalization::Batch);
            for (path, got) in
                ["host", "device", "cpu"]
                    .iter()
                    .zip(three_ways(&mut engine, &case, &batch))
            {
                let what = format!("{name} {} {path}", reg.name());
                let (s_reg, s_reg_w) = match reg {
                    RegLoss::Iou => (&sums.reg, &sums.reg_ctr),
                    RegLoss::Giou => (&sums.reg_giou, &sums.reg_ctr_giou),
                };
                for b in 0..case.batch.batch {
                    close(&format!("{what} S_cls[{b}]"), got.sums.cls[b], sums.cls[b]);
                    close(&format!("{what} S_cnt[{b}]"), got.sums.cnt[b], sums.cnt[b]);
                    close(&format!("{what} S_reg[{b}]"), got.sums.reg[b], s_reg[b]);
                    close(
                        &format!("{what} S_regw[{b}]"),
                        got.sums.reg_w[b],
                        s_reg_w[b],
                    );
                    close(&format!("{what} Z[{b}]"), got.sums.ctr[b], sums.ctr[b]);
                    assert_eq!(got.sums.num_pos[b] as f64, sums.num_pos[b], "{what} n[{b}]");
                }
                check_objective(
                    &format!("{what} batch"),
                    &got,
                    e.batch.as_ref().unwrap(),
                    reg,
                );
            }
            let global = global_ctr(&case, reg);
            for (path, got) in
                ["host", "device", "cpu"]
                    .iter()
                    .zip(three_ways(&mut engine, &case, &global))
            {
                let what = format!("{name} {} {path} global_ctr", reg.name());
                check_objective(&what, &got, e.global_ctr.as_ref().unwrap(), reg);
            }
        }
    }
}

#[test]
fn golden_global_ctr_gradients() {
    let mut engine = common::engine(LossConfig::new(1));
    for name in CASES {
        let case = common::golden(name);
        let want = case
            .expected
            .as_ref()
            .unwrap()
            .grad_global_ctr
            .clone()
            .unwrap();
        let config = global_ctr(&case, RegLoss::Iou);
        engine.set_config(config.clone()).unwrap();
        let b = &case.batch;
        let weights = LossWeights::default();
        let (_, got) = engine
            .forward_backward(&b.levels, &b.inputs(), &weights)
            .unwrap();
        let (_, cpu) =
            reference::grad::gradients(&config, &b.levels, &b.inputs(), &weights).unwrap();
        let cpu = reference::grad::narrow(&cpu);
        for (h, want) in want.iter() {
            let e = max_tensor_error(&got[h], want);
            assert!(e <= 1e-4, "{name} {h}: GPU vs PyTorch {e:e}");
            let e = max_tensor_error(&cpu[h], want);
            assert!(e <= 1e-4, "{name} {h}: CPU vs PyTorch {e:e}");
        }
    }
}
