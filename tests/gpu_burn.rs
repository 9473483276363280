//! The burn op (`fcos_loss::burn`, feature `burn`, issue 15).
//!
//! - Parity on the golden cases (IoU and GIoU, B = 1 and C = 1 among them): the
//!   objective, the losses tensor, [`BurnLoss::read`] and the gradients burn's
//!   `backward()` gives the heads equal the crate's host call
//!   (`FcosLoss::forward_backward`) and a plain burn-tensor-ops version of the same
//!   loss (`common/burn_ops.rs`), within 1e-4.
//! - Every normalisation mode, with and without the centerness-weighted box loss;
//!   an upstream gradient; heads without autodiff; a batch without positives;
//!   non-contiguous heads; bad values and bad shapes as typed errors.
//! - Data-parallel: two burn devices, each with half the batch, the positive counts
//!   reduced across them, `Global` on each: the replicas' mean objective equals the
//!   whole batch's `Batch` objective on one device within 1e-5, and so do the
//!   gradients. burn 0.22's own `all_reduce` has no transport on wgpu (it panics;
//!   asserted below), so the counts are reduced through the host (`to_device`).
//!
//! - From boxes (`BurnFcos::loss_from_boxes`) on the golden box cases, IoU and GIoU:
//!   the outputs and gradients equal the engine's host call from boxes (within
//!   1e-6; the read exactly) and the op on the dense targets PyTorch assigned, and
//!   the losses match PyTorch's within the contract's tolerances; no boxes at all
//!   (`M = 0`) equals the op on background targets; a bad box or class is named by
//!   `read`; bad shapes are typed errors.
//!
//! Without an adapter these tests fail (never skip).
#![cfg(all(feature = "burn", feature = "casefile"))]

#[path = "common/burn_ops.rs"]
mod burn_ops;
mod common;

use burn::tensor::{Device, Int, Tensor, TensorData};
use fcos_loss::burn::{BurnBoxes, BurnFcos, BurnLoss, BurnTargets};
use fcos_loss::casefile::Case;
use fcos_loss::synthetic::{self, SyntheticSpec};
use fcos_loss::{
    max_tensor_error, Batch, Denominators, FcosError, Gradients, Heads, Levels, LossConfig,
    LossWeights, Losses, Normalization, Predictions, RegLoss, Targets,
};

const TOL: f64 = 1e-4;

/// A new wgpu device registered with burn, and the op on it.
fn open(config: LossConfig) -> (Device, BurnFcos) {
    BurnFcos::open(config).unwrap_or_else(|e| {
        panic!(
            "could not open a wgpu device for burn: {e}\n{}",
            common::NO_ADAPTER_HELP
        )
    })
}

fn tensor<const D: usize>(v: &[f32], shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), device)
}

/// The heads of a batch as burn tensors, one per level, on `device`.
fn heads(batch: &Batch, device: &Device, grad: bool) -> Heads<Vec<Tensor<4>>> {
    let (b, c) = (batch.batch, batch.classes);
    Heads::from_fn(|h| {
        let ch = h.channels(c);
        batch
            .inputs()
            .head(h)
            .iter()
            .enumerate()
            .map(|(l, v)| {
                let (hl, wl) = batch.levels.shapes()[l];
                let t = tensor(v, [b, ch, hl as usize, wl as usize], device);
                if grad {
                    t.require_grad()
                } else {
                    t
                }
            })
            .collect()
    })
}

fn targets(batch: &Batch, device: &Device) -> BurnTargets {
    let (b, p) = (batch.batch, batch.levels.positions());
    BurnTargets {
        cls: tensor(&batch.cls_targets, [b, p], device),
        cnt: tensor(&batch.cnt_targets, [b, p], device),
        reg: tensor(&batch.reg_targets, [b, p, 4], device),
    }
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().expect("f32 values")
}

/// Each head level's gradient after `backward`.
fn head_grads(heads: &Heads<Vec<Tensor<4>>>, grads: &burn::tensor::Gradients) -> Gradients {
    Heads::from_fn(|h| {
        heads[h]
            .iter()
            .enumerate()
            .map(|(l, t)| {
                values(
                    t.grad(grads)
                        .unwrap_or_else(|| panic!("no gradient for {h} level {l}")),
                )
            })
            .collect()
    })
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-6)
}

fn assert_grads(what: &str, got: &Gradients, want: &Gradients, tol: f64) {
    for (h, g) in got.iter() {
        let err = max_tensor_error(g, &want[h]);
        assert!(err <= tol, "{what}: {h} gradient error {err:e} > {tol:e}");
    }
}

/// The op's three outputs against the host's losses: the objective tensor, the
/// losses tensor and the host read.
fn assert_outputs(what: &str, out: &BurnLoss, host: &Losses, weights: &LossWeights, tol: f64) {
    let want = weights.cls as f64 * host.cls_loss
        + weights.cnt as f64 * host.cnt_loss
        + weights.reg as f64 * host.reg_loss;
    let objective = values(out.objective.clone());
    assert_eq!(objective.len(), 1, "{what}: objective shape");
    assert!(
        rel(objective[0] as f64, want) <= tol,
        "{what}: objective {} vs host {want}",
        objective[0]
    );
    let losses = values(out.losses.clone());
    for (got, (name, want)) in losses.iter().zip([
        ("cls_loss", host.cls_loss),
        ("cnt_loss", host.cnt_loss),
        ("reg_loss", host.reg_loss),
    ]) {
        assert!(
            (*got as f64 - want).abs() <= tol * want.abs().max(1e-6),
            "{what}: losses tensor {name} {got} vs host {want}"
        );
    }
    let read = out.read().expect("BurnLoss::read");
    assert_eq!(read.num_pos, host.num_pos, "{what}: positives");
    common::assert_close_rel(&format!("{what}: read"), &read, host, 1e-6);
}

/// Golden case `name`: the op against the host call and plain burn ops.
fn parity(name: &str, mode: RegLoss) {
    let case = common::golden(name);
    let batch = &case.batch;
    let config = LossConfig::new(batch.classes as u32).with_reg_loss(mode);
    let (device, fcos) = open(config.clone());
    let weights = LossWeights::for_config(&config);
    let ad = device.autodiff();

    let (host, host_grads) = fcos
        .engine()
        .forward_backward(&batch.levels, &batch.inputs(), &weights)
        .expect("host forward_backward");

    let fused_heads = heads(batch, &ad, true);
    let out = fcos
        .loss(fused_heads.clone(), targets(batch, &ad))
        .expect("the burn op");
    assert!(out.objective.is_autodiff());
    assert_outputs(&format!("{name} {mode:?}"), &out, &host, &weights, TOL);
    let fused = values(out.objective.clone())[0] as f64;
    let fused_grads = head_grads(&fused_heads, &out.objective.backward());

    let plain_heads = heads(batch, &ad, true);
    let plain = burn_ops::objective(&plain_heads, batch, mode, &ad);
    let plain_value = values(plain.clone())[0] as f64;
    let plain_grads = head_grads(&plain_heads, &plain.backward());

    println!(
        "{name} {mode:?} on {}: fused {fused:.7} host {:.7} plain {plain_value:.7}; positives {:?}",
        fcos.engine().adapter_name(),
        host.total,
        host.num_pos
    );
    assert!(
        rel(plain_value, host.total) <= TOL,
        "{name} {mode:?}: plain {plain_value} vs host {}",
        host.total
    );
    assert!(
        rel(fused, plain_value) <= TOL,
        "{name} {mode:?}: fused {fused} vs plain {plain_value}"
    );
    assert_grads(
        &format!("{name} {mode:?} fused vs host"),
        &fused_grads,
        &host_grads,
        TOL,
    );
    assert_grads(
        &format!("{name} {mode:?} plain vs host"),
        &plain_grads,
        &host_grads,
        TOL,
    );
    assert_grads(
        &format!("{name} {mode:?} fused vs plain"),
        &fused_grads,
        &plain_grads,
        TOL,
    );
}

#[test]
fn odd_case_iou() {
    parity("odd_b3_c7_100x150", RegLoss::Iou);
}

#[test]
fn odd_case_giou() {
    parity("odd_b3_c7_100x150", RegLoss::Giou);
}

#[test]
fn voc_case_iou() {
    parity("voc_b2_c20_512x512", RegLoss::Iou);
}

#[test]
fn voc_case_giou() {
    parity("voc_b2_c20_512x512", RegLoss::Giou);
}

#[test]
fn single_image_single_class_case() {
    parity("single_b1_c1_64x64", RegLoss::Giou);
}

const CLASSES: usize = 6;
const STRIDES: [u32; 4] = [8, 16, 32, 64];

/// 8 images of 48×80 (83 positions), images 0, 1 and 7 without positives, image 5
/// all positive.
fn synthetic_batch(pos_frac: Vec<f64>) -> Batch {
    let levels = Levels::from_image(48, 80, &STRIDES).unwrap();
    let spec = SyntheticSpec {
        batch: 8,
        classes: CLASSES,
        pos_frac,
        logit_scale: 1.5,
        logit_shift: -2.0,
        seed: 0x0b42_4e15,
    };
    synthetic::generate(&levels, &STRIDES, &spec).unwrap()
}

fn mixed_batch() -> Batch {
    synthetic_batch(vec![0.0, 0.0, 0.15, 0.4, 0.05, 1.0, 0.25, 0.0])
}

fn config(norm: Normalization, weighted: bool, reg: RegLoss) -> LossConfig {
    common::mode_config(CLASSES, &STRIDES, norm, weighted, reg)
}

const WEIGHTS: LossWeights = common::UNEVEN_WEIGHTS;

/// The op against the host call under `config` and `WEIGHTS`, on `batch`.
fn against_host(what: &str, batch: &Batch, config: LossConfig) {
    let (device, mut fcos) = open(config);
    fcos.set_weights(WEIGHTS).unwrap();
    let ad = device.autodiff();
    let (host, host_grads) = fcos
        .engine()
        .forward_backward(&batch.levels, &batch.inputs(), &WEIGHTS)
        .expect("host forward_backward");
    let h = heads(batch, &ad, true);
    let out = fcos
        .loss(h.clone(), targets(batch, &ad))
        .expect("the burn op");
    assert_outputs(what, &out, &host, &WEIGHTS, TOL);
    let got = head_grads(&h, &out.objective.backward());
    assert_grads(what, &got, &host_grads, TOL);
}

#[test]
fn every_normalisation_matches_the_host_call() {
    let batch = mixed_batch();
    let global = Normalization::Global(Denominators {
        num_pos: 37.5,
        ctr: 11.25,
    });
    for norm in [Normalization::PerImage, Normalization::Batch, global] {
        for weighted in [false, true] {
            for reg in [RegLoss::Iou, RegLoss::Giou] {
                let what = format!("{norm:?} weighted {weighted} {reg:?}");
                against_host(&what, &batch, config(norm, weighted, reg));
            }
        }
    }
}

#[test]
fn a_batch_without_positives_and_one_all_positive() {
    against_host(
        "no positives",
        &synthetic_batch(vec![0.0]),
        config(Normalization::PerImage, false, RegLoss::Giou),
    );
    against_host(
        "all positive",
        &synthetic_batch(vec![1.0]),
        config(Normalization::Batch, true, RegLoss::Iou),
    );
}

/// `backward` of `k · objective` gives `k` times the fused gradients; without
/// autodiff the op runs forward only and gives the same losses; heads made
/// non-contiguous (a swap of the spatial axes, swapped back) give the same
/// gradients.
#[test]
fn upstream_gradient_forward_only_and_non_contiguous_heads() {
    let case = common::golden("odd_b3_c7_100x150");
    let batch = &case.batch;
    let config = LossConfig::new(batch.classes as u32);
    let (device, fcos) = open(config.clone());
    let ad = device.clone().autodiff();
    let weights = LossWeights::for_config(&config);
    let (host, host_grads) = fcos
        .engine()
        .forward_backward(&batch.levels, &batch.inputs(), &weights)
        .unwrap();

    let h = heads(batch, &ad, true);
    let out = fcos.loss(h.clone(), targets(batch, &ad)).unwrap();
    let got = head_grads(&h, &out.objective.mul_scalar(2.5).backward());
    let want: Gradients = Heads::from_fn(|k| {
        host_grads[k]
            .iter()
            .map(|v| v.iter().map(|x| x * 2.5).collect())
            .collect()
    });
    assert_grads("2.5 · objective", &got, &want, TOL);

    let plain = fcos
        .loss(heads(batch, &device, false), targets(batch, &device))
        .unwrap();
    assert!(!plain.objective.is_autodiff());
    assert_outputs("without autodiff", &plain, &host, &weights, TOL);

    let h = heads(batch, &ad, true);
    let strided: Heads<Vec<Tensor<4>>> = Heads::from_fn(|k| {
        h[k].iter()
            .map(|t| t.clone().swap_dims(2, 3).swap_dims(2, 3))
            .collect()
    });
    let out = fcos.loss(strided, targets(batch, &ad)).unwrap();
    assert_outputs("non-contiguous heads", &out, &host, &weights, TOL);
    let got = head_grads(&h, &out.objective.backward());
    assert_grads("non-contiguous heads", &got, &host_grads, TOL);
}

/// A NaN in a head is reported by `read` with the host call's error (tensor, level,
/// index); a wrong class count, a missing level and a wrong target shape are
/// typed errors before anything runs.
#[test]
fn bad_values_and_shapes_are_typed_errors() {
    let case = common::golden("odd_b3_c7_100x150");
    let mut batch = case.batch.clone();
    batch.reg_preds[1][17] = f32::NAN;
    let config = LossConfig::new(batch.classes as u32);
    let (device, fcos) = open(config);
    let ad = device.autodiff();
    let host_err = fcos
        .engine()
        .compute(&batch.levels, &batch.inputs())
        .expect_err("NaN on the host path");
    let out = fcos
        .loss(heads(&batch, &ad, true), targets(&batch, &ad))
        .expect("recorded: the value is checked on the device");
    let err = out.read().expect_err("the read reports the NaN");
    assert!(matches!(err, FcosError::Value { .. }), "{err:?}");
    assert_eq!(err.to_string(), host_err.to_string());
    println!("{err}");

    let (_, other) = open(LossConfig::new(batch.classes as u32 + 1));
    let e = other
        .loss(heads(&batch, &ad, true), targets(&batch, &ad))
        .expect_err("class count");
    assert!(e.to_string().contains("cls_logits level 0"), "{e}");

    let mut short = heads(&batch, &ad, true);
    short.cnt_logits.pop();
    let e = fcos.loss(short, targets(&batch, &ad)).expect_err("levels");
    assert!(e.to_string().contains("cnt_logits"), "{e}");

    let mut t = targets(&batch, &ad);
    t.reg = t.reg.narrow(1, 0, 10);
    let e = fcos.loss(heads(&batch, &ad, true), t).expect_err("targets");
    assert!(e.to_string().contains("reg_targets"), "{e}");
}

/// burn 0.22's collective on wgpu: `all_reduce` panics (cubecl-wgpu 0.11 has no
/// transport between devices). Should a later burn run it, this fails: then the
/// data-parallel test below should use it instead of the host.
#[test]
fn burns_all_reduce_has_no_wgpu_transport() {
    use burn::tensor::distributed::{
        all_reduce, DistributedConfig, DistributedContext, ReduceOperation,
    };
    let devices: Vec<Device> = (0..2).map(|_| open(LossConfig::new(1)).0).collect();
    let _context = DistributedContext::init(
        devices.clone(),
        DistributedConfig {
            all_reduce_op: ReduceOperation::Sum,
        },
    );
    let result = std::panic::catch_unwind(|| {
        let x = Tensor::<1>::from_data(TensorData::new(vec![1f32, 2.0], [2]), &devices[0]);
        let reduced = all_reduce(x, ReduceOperation::Sum, devices.clone()).resolve();
        values(reduced)
    });
    match result {
        Ok(v) => panic!("burn's all_reduce ran on wgpu ({v:?}): use it in the data-parallel test"),
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            println!("burn's all_reduce on wgpu panicked: {msg}");
        }
    }
}

/// Two replicas on two burn devices, half the batch each: counts on each device,
/// reduced to their mean across the devices, `Global` on each; the mean objective
/// and the gradients (× 1/2, images side by side) equal the whole batch's `Batch`
/// call on one device.
#[test]
fn two_devices_with_half_the_batch_each_match_the_whole_batch() {
    let whole = mixed_batch();
    for (weighted, reg) in [(false, RegLoss::Giou), (true, RegLoss::Iou)] {
        let what = format!("weighted {weighted} {reg:?}");
        let (d0, mut single) = open(config(Normalization::Batch, weighted, reg));
        single.set_weights(WEIGHTS).unwrap();
        let ad0 = d0.autodiff();
        let h = heads(&whole, &ad0, true);
        let out = single.loss(h.clone(), targets(&whole, &ad0)).unwrap();
        let want = values(out.objective.clone())[0] as f64;
        let want_grads = head_grads(&h, &out.objective.backward());

        let parts = [
            common::sub_batch(&whole, 0..4),
            common::sub_batch(&whole, 4..8),
        ];
        let replicas: Vec<(Device, BurnFcos)> = parts
            .iter()
            .map(|_| {
                let (d, mut f) = open(config(Normalization::PerImage, weighted, reg));
                f.set_weights(WEIGHTS).unwrap();
                (d.autodiff(), f)
            })
            .collect();
        // Each replica's positives and centerness-target sum, on its device.
        let counts: Vec<Tensor<1>> = parts
            .iter()
            .zip(&replicas)
            .map(|(part, (d, _))| {
                let cnt = targets(part, d).cnt;
                let pos = cnt.clone().greater_elem(-1.0).float();
                let n = pos.clone().sum();
                let z = (cnt * pos).sum();
                Tensor::cat(vec![n, z], 0)
            })
            .collect();
        // The mean over the replicas, through the host (burn's all_reduce has no
        // wgpu transport): replica 1's counts to device 0, added, halved.
        let mean = (counts[0].clone() + counts[1].clone().to_device(&replicas[0].0)) / 2.0;
        let mean = values(mean);
        let global = Normalization::Global(Denominators {
            num_pos: mean[0],
            ctr: mean[1],
        });
        let mut objectives = Vec::new();
        let mut grads = Vec::new();
        for (part, (d, f)) in parts.iter().zip(replicas) {
            let mut f = f;
            f.set_normalization(global).unwrap();
            let h = heads(part, &d, true);
            let out = f.loss(h.clone(), targets(part, &d)).unwrap();
            objectives.push(values(out.objective.clone())[0] as f64);
            grads.push(head_grads(&h, &out.objective.backward()));
        }
        let got = objectives.iter().sum::<f64>() / 2.0;
        println!("{what}: replicas {objectives:?}, mean {got}, whole batch {want}");
        assert!(rel(got, want) <= 1e-5, "{what}: mean {got} vs whole {want}");
        let joined = common::concat_images(&grads, 0.5);
        for (h, w) in want_grads.iter() {
            let e = max_tensor_error(&joined[h], w);
            assert!(e <= 1e-5, "{what}: {h} gradients {e:e}");
        }
    }
}

/// `BurnFcos::init` shares burn's default wgpu runtime (its own adapter choice):
/// the op runs there as on a device of `open`; a second `init` in the process is a
/// typed error, not a panic.
#[test]
fn init_shares_burns_default_runtime_once() {
    let case = common::golden("single_b1_c1_64x64");
    let batch = &case.batch;
    let config = LossConfig::new(batch.classes as u32);
    let (device, fcos) = BurnFcos::init(config.clone()).unwrap_or_else(|e| {
        panic!(
            "could not initialise burn's wgpu runtime: {e}\n{}",
            common::NO_ADAPTER_HELP
        )
    });
    let weights = LossWeights::for_config(&config);
    let (host, host_grads) = fcos
        .engine()
        .forward_backward(&batch.levels, &batch.inputs(), &weights)
        .unwrap();
    let ad = device.autodiff();
    let h = heads(batch, &ad, true);
    let out = fcos.loss(h.clone(), targets(batch, &ad)).unwrap();
    assert_outputs("init", &out, &host, &weights, TOL);
    assert_grads(
        "init",
        &head_grads(&h, &out.objective.backward()),
        &host_grads,
        TOL,
    );

    let again = BurnFcos::init(config).expect_err("a second init");
    assert!(matches!(again, FcosError::InvalidCall(_)), "{again:?}");
    println!("{again}");
}

/// Heads and targets that are views into larger tensors (images 1 and 2 of 3,
/// narrowed along the batch: ranges that start inside another tensor's
/// allocation, at offsets the device may not bind, then copied) give the host
/// call's losses and gradients for those images.
#[test]
fn views_into_larger_tensors() {
    let case = common::golden("odd_b3_c7_100x150");
    let whole = &case.batch;
    let part = common::sub_batch(whole, 1..3);
    let config = LossConfig::new(whole.classes as u32);
    let (device, fcos) = open(config.clone());
    let weights = LossWeights::for_config(&config);
    let (host, host_grads) = fcos
        .engine()
        .forward_backward(&part.levels, &part.inputs(), &weights)
        .unwrap();
    let ad = device.autodiff();
    let full = heads(whole, &ad, true);
    let t = targets(whole, &ad);
    let views: Heads<Vec<Tensor<4>>> =
        Heads::from_fn(|h| full[h].iter().map(|x| x.clone().narrow(0, 1, 2)).collect());
    let t = BurnTargets {
        cls: t.cls.narrow(0, 1, 2),
        cnt: t.cnt.narrow(0, 1, 2),
        reg: t.reg.narrow(0, 1, 2),
    };
    let out = fcos.loss(views, t).expect("the op on views");
    assert_outputs("views", &out, &host, &weights, TOL);
    let grads = out.objective.backward();
    // The full tensors' gradients: zero for image 0, the host's for images 1 and 2.
    let got = head_grads(&full, &grads);
    let zeros: Gradients = Heads::from_fn(|h| {
        host_grads[h]
            .iter()
            .map(|g| vec![0.0; g.len() / 2])
            .collect()
    });
    let want = common::concat_images(&[zeros, host_grads], 1.0);
    for (h, g) in got.iter() {
        let e = max_tensor_error(g, &want[h]);
        assert!(e <= TOL, "views: {h} gradients {e:e}");
    }
}

/// A box case's ground truth as burn tensors (classes as `i32`).
fn burn_boxes(case: &Case, device: &Device) -> BurnBoxes {
    let bx = case.boxes.as_ref().expect("a case from boxes");
    let (b, m) = (case.batch.batch, bx.boxes_per_image);
    let classes: Vec<i32> = bx.classes.iter().map(|&c| c as i32).collect();
    BurnBoxes {
        boxes: tensor(&bx.boxes, [b, m, 4], device),
        classes: Tensor::<2, Int>::from_data(TensorData::new(classes, [b, m]), device),
    }
}

/// The objective's one value.
fn objective(out: &BurnLoss) -> f64 {
    values(out.objective.clone())[0] as f64
}

#[test]
fn from_boxes_matches_the_engine_the_dense_targets_and_pytorch() {
    for name in common::GOLDEN_BOXES {
        let case = common::golden(name);
        let batch = &case.batch;
        let expected = case.expected.as_ref().expect("expected losses");
        for reg in [RegLoss::Iou, RegLoss::Giou] {
            let what = format!("{name} {reg:?}");
            let config = LossConfig::new(batch.classes as u32).with_reg_loss(reg);
            let (device, fcos) = open(config);
            let weights = fcos.weights();
            let ad = device.clone().autodiff();
            let bx = case.boxes.as_ref().unwrap();
            let (host, host_grads) = fcos
                .engine()
                .forward_backward_from_boxes(
                    &batch.levels,
                    &Predictions::of(&batch.inputs()),
                    &bx.ground_truth(batch.batch),
                    &weights,
                )
                .expect("host forward_backward_from_boxes")
                .value;

            let from_boxes = heads(batch, &ad, true);
            let out = fcos
                .loss_from_boxes(from_boxes.clone(), burn_boxes(&case, &ad))
                .expect("the burn op from boxes");
            assert!(out.objective.is_autodiff(), "{what}: tracked");
            assert_outputs(&what, &out, &host, &weights, 1e-6);
            let read = out.read().unwrap();
            assert_eq!(common::bits(&read), common::bits(&host), "{what}: read");
            let reg_want = match reg {
                RegLoss::Iou => &expected.reg_loss,
                RegLoss::Giou => expected.reg_loss_giou.as_ref().unwrap(),
            };
            common::assert_golden(
                &format!("{what} vs PyTorch"),
                &read,
                &expected.cls_loss,
                &expected.cnt_loss,
                reg_want,
            );
            let grads = head_grads(&from_boxes, &out.objective.backward());
            assert_grads(&format!("{what} vs host"), &grads, &host_grads, 1e-6);

            // Forward only, on the device without autodiff.
            let plain = fcos
                .loss_from_boxes(heads(batch, &device, false), burn_boxes(&case, &device))
                .expect("the burn op from boxes, no autodiff");
            assert!(!plain.objective.is_autodiff(), "{what}: untracked");
            assert_eq!(
                common::bits(&plain.read().unwrap()),
                common::bits(&host),
                "{what}: no autodiff"
            );

            // The op on the targets PyTorch assigned from the same boxes.
            let dense = heads(batch, &ad, true);
            let two_step = fcos
                .loss(dense.clone(), targets(batch, &ad))
                .expect("the burn op on targets");
            assert!(
                rel(objective(&out), objective(&two_step)) <= 1e-6,
                "{what}: from boxes {} vs from targets {}",
                objective(&out),
                objective(&two_step)
            );
            let dense_grads = head_grads(&dense, &two_step.objective.backward());
            assert_grads(
                &format!("{what} vs dense targets"),
                &grads,
                &dense_grads,
                1e-6,
            );
        }
    }
}

#[test]
fn from_boxes_without_boxes_bad_values_and_shapes() {
    let case = common::golden("boxes_odd_b3_c7_100x150_m9");
    let batch = &case.batch;
    let (b, c) = (batch.batch, batch.classes);
    let (device, fcos) = open(LossConfig::new(c as u32));
    let ad = device.autodiff();

    // No boxes: every position is background, as the op on background targets.
    let none = BurnBoxes {
        boxes: Tensor::zeros([b, 0, 4], &ad),
        classes: Tensor::zeros([b, 0], &ad),
    };
    let out = fcos
        .loss_from_boxes(heads(batch, &ad, true), none)
        .expect("M = 0");
    let bg = Targets::background(b, batch.levels.positions());
    let p = batch.levels.positions();
    let background = BurnTargets {
        cls: tensor(&bg.cls_targets, [b, p], &ad),
        cnt: tensor(&bg.cnt_targets, [b, p], &ad),
        reg: tensor(&bg.reg_targets, [b, p, 4], &ad),
    };
    let want = fcos
        .loss(heads(batch, &ad, true), background)
        .expect("background targets");
    assert_eq!(
        common::bits(&out.read().unwrap()),
        common::bits(&want.read().unwrap()),
        "M = 0"
    );
    assert_eq!(out.read().unwrap().num_pos, vec![0; b]);

    // Classes of another integer dtype (u32, padding as 0; i64 data is held as i32
    // by burn's wgpu backend already): converted, the same losses as i32 ones. A
    // u32 class beyond i32 is a class above C, not a wrapped-around padding row.
    let bx = case.boxes.as_ref().unwrap();
    let m = bx.boxes_per_image;
    let unsigned: Vec<i32> = bx.classes.iter().map(|&v| v.max(0.0) as i32).collect();
    let signed = BurnBoxes {
        boxes: tensor(&bx.boxes, [b, m, 4], &ad),
        classes: Tensor::<2, Int>::from_data(TensorData::new(unsigned, [b, m]), &ad),
    };
    let mut gt = signed.clone();
    gt.classes = gt.classes.cast(burn::tensor::IntDType::U32);
    assert_eq!(gt.classes.dtype(), burn::tensor::DType::U32);
    let out = fcos
        .loss_from_boxes(heads(batch, &ad, true), gt)
        .expect("u32 classes");
    let want = fcos
        .loss_from_boxes(heads(batch, &ad, true), signed.clone())
        .expect("i32 classes");
    assert_eq!(want.read().unwrap(), out.read().unwrap());
    let mut huge = signed;
    huge.classes = huge.classes.cast(burn::tensor::IntDType::U32) + (1u32 << 31) as i64;
    let err = fcos
        .loss_from_boxes(heads(batch, &ad, true), huge)
        .expect("u32 classes beyond i32")
        .read()
        .expect_err("a class beyond i32");
    assert!(err.to_string().contains("gt_classes"), "{err}");
    assert_eq!(
        common::bits(&out.read().unwrap()),
        common::bits(&want.read().unwrap()),
        "u32 classes"
    );

    // Bad values, named by the read as the host call names them.
    let preds = Predictions::of(&batch.inputs());
    for (what, at, field) in [
        ("a NaN corner", 4 * 5 + 1, "gt_boxes"),
        ("class C + 1", 7, "gt_classes"),
    ] {
        let mut boxes = bx.boxes.clone();
        let mut classes: Vec<i32> = bx.classes.iter().map(|&v| v as i32).collect();
        if field == "gt_boxes" {
            boxes[at] = f32::NAN;
        } else {
            classes[at] = c as i32 + 1;
        }
        let host_err = fcos
            .engine()
            .compute_from_boxes(
                &batch.levels,
                &preds,
                &fcos_loss::GroundTruth {
                    batch: b,
                    boxes_per_image: m,
                    boxes: &boxes,
                    classes: fcos_loss::GtClasses::I32(&classes),
                },
            )
            .expect_err(what);
        let gt = BurnBoxes {
            boxes: tensor(&boxes, [b, m, 4], &ad),
            classes: Tensor::<2, Int>::from_data(TensorData::new(classes, [b, m]), &ad),
        };
        let out = fcos
            .loss_from_boxes(heads(batch, &ad, true), gt)
            .expect("recorded: the values are checked on the device");
        let err = out.read().expect_err(what);
        assert!(matches!(err, FcosError::Value { .. }), "{what}: {err:?}");
        assert!(err.to_string().contains(field), "{what}: {err}");
        assert_eq!(err.to_string(), host_err.to_string(), "{what}");
    }

    // With the engine's checks off the boxes and classes are still checked, and
    // the read still names a bad one (the loss keeps them, not the heads).
    let (device, mut unchecked) = open(LossConfig::new(c as u32));
    unchecked.engine_mut().set_checks(false);
    let ad2 = device.autodiff();
    let mut gt = burn_boxes(&case, &ad2);
    let mut classes: Vec<i32> = bx.classes.iter().map(|&v| v as i32).collect();
    classes[4] = c as i32 + 3;
    gt.classes = Tensor::<2, Int>::from_data(TensorData::new(classes, [b, m]), &ad2);
    let out = unchecked
        .loss_from_boxes(heads(batch, &ad2, true), gt)
        .expect("checks off");
    let err = out.read().expect_err("a bad class with the checks off");
    assert!(
        matches!(err, FcosError::Value { .. }),
        "checks off: {err:?}"
    );
    assert!(err.to_string().contains("gt_classes"), "checks off: {err}");

    // Shapes.
    let mut gt = burn_boxes(&case, &ad);
    gt.classes = gt.classes.narrow(1, 0, m - 1);
    let e = fcos
        .loss_from_boxes(heads(batch, &ad, true), gt)
        .expect_err("classes shape");
    assert!(e.to_string().contains("gt_classes"), "{e}");
    let mut gt = burn_boxes(&case, &ad);
    gt.boxes = gt.boxes.narrow(0, 0, b - 1);
    let e = fcos
        .loss_from_boxes(heads(batch, &ad, true), gt)
        .expect_err("boxes shape");
    assert!(e.to_string().contains("gt_boxes"), "{e}");
}
