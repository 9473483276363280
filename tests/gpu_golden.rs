//! Every golden file (scored by PyTorch, docs/contract.md §5) in IoU and GIoU mode,
//! on the GPU with its value checks on and off and on the CPU reference, within
//! docs/contract.md §3's tolerance.
#![cfg(feature = "casefile")]

mod common;

use fcos_loss::{reference, FcosLoss, LossConfig, Losses, RegLoss, ABS_TOL, REL_TOL};

/// Checks one golden file in `mode` with the engine's checks on and then off
/// (valid inputs: the same losses either way), leaving them on.
fn check(engine: &mut FcosLoss, name: &str, mode: RegLoss) {
    for checks in [true, false] {
        engine.set_checks(checks);
        check_once(engine, name, mode);
    }
    engine.set_checks(true);
}

fn check_once(engine: &mut FcosLoss, name: &str, mode: RegLoss) {
    let case = common::golden(name);
    let expected = case
        .expected
        .as_ref()
        .expect("golden files carry expected losses");
    let batch = &case.batch;
    let config = LossConfig::new(batch.classes as u32).with_reg_loss(mode);
    engine.set_config(config.clone()).unwrap();
    let gpu = engine.compute(&batch.levels, &batch.inputs()).unwrap();
    let cpu = reference::losses(&config, &batch.levels, &batch.inputs()).unwrap();
    let reg = match mode {
        RegLoss::Iou => expected.reg_loss.clone(),
        RegLoss::Giou => expected
            .reg_loss_giou
            .clone()
            .expect("golden files carry GIoU losses"),
    };
    let want = Losses::from_per_image(
        expected.cls_loss.clone(),
        expected.cnt_loss.clone(),
        reg,
        cpu.num_pos.clone(),
        true,
    );
    let what = format!("{name} ({}, checks {})", mode.name(), engine.checks());
    common::assert_close(&format!("{what}: GPU vs PyTorch"), &gpu, &want);
    common::assert_close(&format!("{what}: CPU vs PyTorch"), &cpu, &want);
    common::assert_close(&format!("{what}: GPU vs CPU"), &gpu, &cpu);
    // The batch means too.
    for (g, w) in [
        (gpu.cls_loss, want.cls_loss),
        (gpu.cnt_loss, want.cnt_loss),
        (gpu.reg_loss, want.reg_loss),
    ] {
        assert!(
            (g - w).abs() <= REL_TOL * w.abs() + ABS_TOL,
            "{what}: mean {g} vs {w}"
        );
    }
}

#[test]
fn golden_files_iou() {
    let mut engine = common::engine(LossConfig::new(1));
    for name in common::GOLDEN {
        check(&mut engine, name, RegLoss::Iou);
    }
}

#[test]
fn golden_files_giou() {
    let mut engine = common::engine(LossConfig::new(1));
    for name in common::GOLDEN {
        check(&mut engine, name, RegLoss::Giou);
    }
}

#[test]
fn odd_case_has_an_empty_and_a_full_image() {
    let case = common::golden("odd_b3_c7_100x150");
    let engine = common::engine(LossConfig::new(7));
    let gpu = engine
        .compute(&case.batch.levels, &case.batch.inputs())
        .unwrap();
    assert_eq!(gpu.num_pos[1], 0, "image 1 has no positives");
    assert_eq!(gpu.num_pos[2], 345, "image 2 is all positives");
    assert_eq!(gpu.cnt[1], 0.0);
    assert_eq!(gpu.reg[1], 0.0);
}
