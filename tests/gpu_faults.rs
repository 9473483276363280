//! Bad input, limits and faults on the GPU paths: typed errors, never a panic, a
//! hang or a lost engine; concurrency and determinism.

mod common;

use std::sync::Arc;
use std::time::Duration;

use fcos_loss::synthetic::{self, SyntheticSpec};
use fcos_loss::{reference, Batch, DeviceBatch, FcosError, FcosLoss, Input, Levels, LossConfig};

fn batch(b: usize, c: usize, h: u32, w: u32, seed: u64) -> Batch {
    let levels = Levels::from_image(h, w, &[8, 16, 32, 64, 128]).unwrap();
    let mut spec = SyntheticSpec::new(b, c);
    spec.seed = seed;
    spec.pos_frac = vec![0.05];
    synthetic::generate(&levels, &[8, 16, 32, 64, 128], &spec).unwrap()
}

/// Each kind of bad value: the device path (checked on the GPU) reports exactly the
/// error the host path (checked on the CPU) reports, with the flags reduced by
/// subgroup operations (where the adapter has them) and by the shared-memory tree.
#[test]
fn device_checks_report_the_same_error_as_the_host() {
    let mut engine = common::engine(LossConfig::new(6));
    let reductions: &[bool] = if engine.subgroups() {
        &[true, false]
    } else {
        &[false]
    };
    let good = batch(2, 6, 96, 130, 1);
    let p = good.levels.positions();
    let pos = good
        .cnt_targets
        .iter()
        .position(|&t| t > -1.0)
        .expect("a positive");
    let neg = good
        .cnt_targets
        .iter()
        .position(|&t| t == -1.0)
        .expect("a negative");
    let mut cases: Vec<(&str, Batch)> = Vec::new();
    let mut b = good.clone();
    b.cls_logits[2][17] = f32::NAN;
    cases.push(("cls_logits.2", b));
    let mut b = good.clone();
    b.reg_preds[0][5] = f32::INFINITY;
    cases.push(("reg_preds.0", b));
    let mut b = good.clone();
    b.cnt_logits[1][3] = f32::NEG_INFINITY;
    cases.push(("cnt_logits.1", b));
    let mut b = good.clone();
    b.cls_targets[p + 7] = 2.5;
    cases.push(("cls_targets", b));
    let mut b = good.clone();
    b.cls_targets[11] = 7.0;
    cases.push(("cls_targets", b));
    let mut b = good.clone();
    b.cnt_targets[neg] = -0.5;
    cases.push(("cnt_targets", b));
    let mut b = good.clone();
    b.reg_targets[pos * 4 + 2] = -3.0;
    cases.push(("reg_targets", b));
    for &sg in reductions {
        engine.set_subgroups(sg).unwrap();
        for (tensor, bad) in &cases {
            let host = engine.compute(&bad.levels, &bad.inputs()).unwrap_err();
            let up = DeviceBatch::upload(&engine.context().device, bad).unwrap();
            let dev = engine
                .compute_device(&bad.levels, &up.inputs())
                .unwrap_err();
            match &dev {
                FcosError::Value { tensor: t, .. } => {
                    assert_eq!(t, tensor, "subgroups {sg}: {dev}")
                }
                other => panic!("{tensor}, subgroups {sg}: expected a Value error, got {other}"),
            }
            assert_eq!(
                dev.to_string(),
                host.to_string(),
                "{tensor}, subgroups {sg}"
            );
            assert_eq!(dev.to_string().lines().count(), 1);
        }
    }
    // The engine still works after every error, and a negative reg target at a
    // negative position is fine.
    let mut ok = good.clone();
    ok.reg_targets[neg * 4] = -1.0;
    let up = DeviceBatch::upload(&engine.context().device, &ok).unwrap();
    let got = engine.compute_device(&ok.levels, &up.inputs()).unwrap();
    let cpu = reference::losses(engine.config(), &ok.levels, &ok.inputs()).unwrap();
    common::assert_close("after errors", &got, &cpu);
}

#[test]
fn checks_can_be_turned_off() {
    let mut engine = common::engine(LossConfig::new(3));
    let mut b = batch(1, 3, 64, 64, 2);
    b.cls_targets[0] = 9.0; // out of range: with checks off it is simply no class
    assert!(engine.compute(&b.levels, &b.inputs()).is_err());
    engine.set_checks(false);
    assert!(!engine.checks());
    let l = engine.compute(&b.levels, &b.inputs()).unwrap();
    assert!(l.total.is_finite());
    let up = DeviceBatch::upload(&engine.context().device, &b).unwrap();
    assert!(engine.compute_device(&b.levels, &up.inputs()).is_ok());
}

/// A device whose bindings are small: inputs larger than one binding are split and
/// still match the reference; inputs larger than a buffer give a Limit error.
#[test]
fn small_binding_limits_split_and_large_buffers_are_refused() {
    let (device, queue) = common::app_device_with(|mut l| {
        l.max_storage_buffer_binding_size = 1 << 20;
        l.max_buffer_size = 4 << 20;
        l
    });
    let config = LossConfig::new(20);
    let engine = FcosLoss::from_device(device.clone(), queue, config.clone()).unwrap();
    // 3 × 20 × 5456 floats = 1.3 MB of class logits: more than one binding.
    let b = batch(3, 20, 256, 640, 3);
    let host = engine.compute(&b.levels, &b.inputs()).unwrap();
    let cpu = reference::losses(&config, &b.levels, &b.inputs()).unwrap();
    common::assert_close("split bindings, host path", &host, &cpu);
    let up = DeviceBatch::upload(&device, &b).unwrap();
    let dev = engine.compute_device(&b.levels, &up.inputs()).unwrap();
    assert_eq!(common::bits(&dev), common::bits(&host));
    let (gl, gg) = engine
        .forward_backward(&b.levels, &b.inputs(), &fcos_loss::LossWeights::default())
        .unwrap();
    let (_, cg) = reference::grad::gradients(
        &config,
        &b.levels,
        &b.inputs(),
        &fcos_loss::LossWeights::default(),
    )
    .unwrap();
    common::assert_close("split bindings, backward", &gl, &cpu);
    let worst = fcos_loss::max_tensor_error(&gg.cls_logits, &cg.cls_logits);
    assert!(worst <= 1e-4, "cls gradient error {worst:e}");
    // 8 × 20 × 21760 floats = 13.9 MB > max_buffer_size.
    let big = batch(8, 20, 512, 1024, 4);
    let e = engine.compute(&big.levels, &big.inputs()).unwrap_err();
    assert!(matches!(e, FcosError::Limit(_)), "{e}");
    assert!(e.to_string().contains("max_buffer_size"), "{e}");
}

/// The error of a device call whose `input` buffer was destroyed, and whether the
/// engine still works on good buffers afterwards.
fn destroyed_input_error(input: Input) -> (FcosError, bool) {
    let engine = common::engine(LossConfig::new(4));
    let b = batch(1, 4, 64, 96, 5);
    let good = DeviceBatch::upload(&engine.context().device, &b).unwrap();
    let doomed = DeviceBatch::upload(&engine.context().device, &b).unwrap();
    doomed.buffer(input).destroy();
    let inputs = common::with_buffer(good.inputs(), input, doomed.buffer(input));
    let e = engine.compute_device(&b.levels, &inputs).unwrap_err();
    let still_works = engine.compute_device(&b.levels, &good.inputs()).is_ok();
    (e, still_works)
}

/// A wgpu validation error (here: a destroyed input buffer) comes back as an
/// error from an error scope, not as a panic, and the engine stays usable.
#[test]
fn a_wgpu_validation_error_is_an_error_not_a_panic() {
    let (e, still_works) = destroyed_input_error(Input::ClsLogits);
    assert!(matches!(e, FcosError::Gpu { .. }), "{e}");
    assert!(e.to_string().contains("destroyed"), "{e}");
    assert!(
        still_works,
        "the engine failed on good buffers after the error"
    );
}

/// The `FcosError::Gpu` of a wgpu validation error keeps wgpu's own error as its
/// `std::error::Error::source()`, downcastable to `wgpu::Error`, and its message
/// carries wgpu's description.
#[test]
fn a_wgpu_validation_error_keeps_the_wgpu_error_as_its_source() {
    let (e, still_works) = destroyed_input_error(Input::RegTargets);
    let FcosError::Gpu { message, .. } = &e else {
        panic!("expected FcosError::Gpu, got {e:?}")
    };
    let source = std::error::Error::source(&e)
        .unwrap_or_else(|| panic!("FcosError::Gpu without a source: {e}"));
    let wgpu_error = source
        .downcast_ref::<wgpu::Error>()
        .unwrap_or_else(|| panic!("the source is not a wgpu::Error: {source:?}"));
    let wgpu::Error::Validation { description, .. } = wgpu_error else {
        panic!("expected a wgpu validation error, got {wgpu_error:?}")
    };
    assert!(description.contains("destroyed"), "{description}");
    assert!(message.contains(description.as_str()), "{message}");
    assert!(
        still_works,
        "the engine failed on good buffers after the error"
    );
}

#[test]
fn an_expired_timeout_is_an_error_and_the_next_call_works() {
    let mut engine = common::engine(LossConfig::new(80));
    let b = batch(4, 80, 512, 768, 6);
    let want = engine.compute(&b.levels, &b.inputs()).unwrap();
    engine.set_timeout(Duration::from_nanos(1));
    let mut saw_timeout = false;
    for _ in 0..5 {
        match engine.compute(&b.levels, &b.inputs()) {
            Err(FcosError::Timeout(d)) => {
                assert_eq!(d, Duration::from_nanos(1));
                saw_timeout = true;
                break;
            }
            Err(e) => panic!("expected a timeout, got {e}"),
            Ok(_) => {}
        }
    }
    // wgpu's GL backend maps buffers with glMapBufferRange, which blocks until the
    // GPU is done, so there a wait can never expire; every other backend must time out.
    let gl = engine.context().info.backend == wgpu::Backend::Gl;
    assert!(
        saw_timeout || gl,
        "a 1 ns timeout never expired on {}",
        engine.adapter_name()
    );
    engine.set_timeout(Duration::from_secs(60));
    let again = engine.compute(&b.levels, &b.inputs()).unwrap();
    assert_eq!(common::bits(&again), common::bits(&want));
}

#[test]
fn a_destroyed_device_gives_an_error_and_a_new_engine_works() {
    let engine = common::engine(LossConfig::new(5));
    let b = batch(1, 5, 64, 64, 7);
    let want = engine.compute(&b.levels, &b.inputs()).unwrap();
    engine.context().device.destroy();
    let e = engine.compute(&b.levels, &b.inputs()).unwrap_err();
    assert!(
        matches!(e, FcosError::DeviceLost(_) | FcosError::Gpu { .. }),
        "{e}"
    );
    let fresh = common::engine(LossConfig::new(5));
    assert_eq!(
        common::bits(&fresh.compute(&b.levels, &b.inputs()).unwrap()),
        common::bits(&want)
    );
}

#[test]
fn four_threads_get_the_serial_results() {
    let engine = Arc::new(common::engine(LossConfig::new(12)));
    let batches: Vec<Batch> = (0..8)
        .map(|i| batch(1 + i % 3, 12, 96 + 16 * i as u32, 128, i as u64))
        .collect();
    let serial: Vec<Vec<u64>> = batches
        .iter()
        .map(|b| common::bits(&engine.compute(&b.levels, &b.inputs()).unwrap()))
        .collect();
    let batches = Arc::new(batches);
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let engine = engine.clone();
            let batches = batches.clone();
            std::thread::spawn(move || {
                (0..batches.len())
                    .map(|k| {
                        let i = (k + t) % batches.len();
                        let b = &batches[i];
                        (
                            i,
                            common::bits(&engine.compute(&b.levels, &b.inputs()).unwrap()),
                        )
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for h in handles {
        for (i, got) in h.join().expect("a thread panicked") {
            assert_eq!(got, serial[i], "batch {i}");
        }
    }
}

#[test]
fn a_hundred_calls_are_bitwise_identical() {
    let engine = common::engine(LossConfig::new(20));
    let b = batch(2, 20, 128, 160, 8);
    let first = engine.compute(&b.levels, &b.inputs()).unwrap();
    let up = DeviceBatch::upload(&engine.context().device, &b).unwrap();
    for i in 0..100 {
        let l = if i % 2 == 0 {
            engine.compute(&b.levels, &b.inputs()).unwrap()
        } else {
            engine.compute_device(&b.levels, &up.inputs()).unwrap()
        };
        assert_eq!(common::bits(&l), common::bits(&first), "call {i}");
        assert_eq!(l.num_pos, first.num_pos);
    }
}
