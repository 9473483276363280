//! The notebook's own cells (docs/contract.md §2), to 4 decimals, on the GPU and the CPU reference.

mod common;

use approx::assert_abs_diff_eq;
use fcos_loss::{reference, Levels, LossConfig, Losses};

fn cells() -> (Levels, LossConfig) {
    (
        Levels::from_shapes(&[(4, 4); 5]).unwrap(),
        LossConfig::new(5),
    )
}

fn both(config: &LossConfig, levels: &Levels, batch: &fcos_loss::Batch) -> [Losses; 2] {
    let gpu = common::engine(config.clone())
        .compute(levels, &batch.inputs())
        .unwrap();
    let cpu = reference::losses(config, levels, &batch.inputs()).unwrap();
    [gpu, cpu]
}

fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

#[test]
fn cls_cell_is_2_1113_and_focal_sum_168_9016() {
    let (levels, config) = cells();
    // compute_cls_loss([ones[2,5,4,4]]x5, ones[2,80,1], ones mask)
    let batch = common::constant_batch(&levels, 2, 5, 1.0, 1.0, 1.0, 1.0);
    for l in both(&config, &levels, &batch) {
        assert_eq!(
            l.cls.iter().map(|&x| round4(x)).collect::<Vec<_>>(),
            vec![2.1113, 2.1113]
        );
        assert_eq!(l.num_pos, vec![80, 80]);
        // focal_loss_from_logits(ones[80,5], onehot(class 1)) = per-image sum before / num_pos.
        assert_eq!(round4(l.cls[0] * 80.0), 168.9016);
        assert_abs_diff_eq!(l.cls[0] * 80.0, 168.9016, epsilon = 5e-5);
    }
}

#[test]
fn cnt_cell_is_0_3133() {
    let (levels, config) = cells();
    let batch = common::constant_batch(&levels, 2, 5, 1.0, 1.0, 1.0, 1.0);
    for l in both(&config, &levels, &batch) {
        assert_eq!(
            l.cnt.iter().map(|&x| round4(x)).collect::<Vec<_>>(),
            vec![0.3133, 0.3133]
        );
    }
}

#[test]
fn reg_cell_is_zero() {
    let (levels, config) = cells();
    let batch = common::constant_batch(&levels, 2, 5, 1.0, 1.0, 1.0, 1.0);
    for l in both(&config, &levels, &batch) {
        assert_eq!(
            l.reg.iter().map(|&x| round4(x).abs()).collect::<Vec<_>>(),
            vec![0.0, 0.0]
        );
    }
    let giou = config.with_reg_loss(fcos_loss::RegLoss::Giou);
    for l in both(&giou, &levels, &batch) {
        assert_eq!(
            l.reg.iter().map(|&x| round4(x).abs()).collect::<Vec<_>>(),
            vec![0.0, 0.0]
        );
    }
}
