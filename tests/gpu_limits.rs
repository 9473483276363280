//! Small device limits: every call that does not fit is a typed error, the engine
//! stays usable afterwards, and what fits gives the reference's numbers. On an
//! application's device (where wgpu's default error handler panics) none of this
//! may panic.

mod common;

use fcos_loss::reference::{self, grad};
use fcos_loss::synthetic::{self, SyntheticSpec};
use fcos_loss::{Batch, DeviceBatch, FcosError, FcosLoss, Levels, LossConfig, LossWeights};

const STRIDES: [u32; 5] = [8, 16, 32, 64, 128];

fn batch(levels: &Levels, b: usize, c: usize, pos_frac: f64, seed: u64) -> Batch {
    let mut spec = SyntheticSpec::new(b, c);
    spec.pos_frac = vec![pos_frac];
    spec.seed = seed;
    synthetic::generate(levels, &STRIDES[..levels.len().min(5)], &spec).unwrap()
}

/// An engine on an application's device whose storage bindings and buffers are at
/// most `binding` and `buffer` bytes.
fn small_engine(binding: u64, buffer: u64, config: LossConfig) -> FcosLoss {
    let (device, queue) = common::app_device_with(|mut l| {
        l.max_storage_buffer_binding_size = binding;
        l.max_buffer_size = buffer;
        l
    });
    FcosLoss::from_device(device, queue, config).unwrap()
}

fn small_call_works(engine: &FcosLoss, what: &str) {
    let levels = Levels::from_image(64, 64, &STRIDES).unwrap();
    let small = batch(&levels, 1, engine.config().num_classes as usize, 0.2, 2);
    let got = engine
        .compute(&levels, &small.inputs())
        .unwrap_or_else(|e| panic!("{what}: the next small call failed: {e}"));
    let want = reference::losses(engine.config(), &levels, &small.inputs()).unwrap();
    common::assert_close(what, &got, &want);
}

/// The host path stages all six inputs in one buffer: where that buffer would
/// exceed max_buffer_size (though no single input does), the call is a Limit
/// error naming the staging buffer, and the engine carries on.
#[test]
fn a_staging_buffer_over_the_limit_is_an_error_and_the_engine_carries_on() {
    let engine = small_engine(1 << 20, 4 << 20, LossConfig::new(20));
    let levels = Levels::from_image(400, 1024, &STRIDES).unwrap();
    let big = batch(&levels, 5, 20, 0.2, 1);
    let cls_bytes = 4 * levels.packed_len(5, 20) as u64;
    assert!(cls_bytes < 4 << 20 && big.input_bytes() > 4 << 20);
    small_call_works(&engine, "before");
    match engine.compute(&levels, &big.inputs()) {
        // Zero-copy adapters have no staging buffer: then the call must be right.
        Ok(got) => {
            assert!(engine.context().zero_copy_upload());
            let want = reference::losses(engine.config(), &levels, &big.inputs()).unwrap();
            common::assert_close("big", &got, &want);
        }
        Err(FcosError::Limit(m)) => assert!(
            m.contains("stages all six inputs") && m.contains("max_buffer_size"),
            "{m}"
        ),
        Err(e) => panic!("expected a Limit error about the staging buffer, got {e}"),
    }
    small_call_works(&engine, "after the big call");
}

/// Many classes, one position, many images: the partial sums (bound as one
/// storage binding) are planned within the binding limit, and a smaller batch
/// after a larger one reuses them.
#[test]
fn partial_sums_are_bound_within_the_limit() {
    let config = LossConfig::new(256);
    let engine = small_engine(1 << 20, 4 << 20, config.clone());
    let levels = Levels::from_shapes(&[(1, 1)]).unwrap();
    for b in [200, 600, 2] {
        let mut spec = SyntheticSpec::new(b, 256);
        spec.pos_frac = vec![1.0];
        spec.seed = b as u64;
        let batch = synthetic::generate(&levels, &[8], &spec).unwrap();
        let got = engine
            .compute(&levels, &batch.inputs())
            .unwrap_or_else(|e| panic!("B = {b}: {e}"));
        let want = reference::losses(&config, &levels, &batch.inputs()).unwrap();
        common::assert_close(&format!("B = {b}"), &got, &want);
    }
}

/// Non-finite loss weights are refused on the GPU as by the CPU reference, on both
/// input paths, naming the weight.
#[test]
fn non_finite_weights_are_refused_like_the_reference() {
    let config = LossConfig::new(4);
    let engine = common::engine(config.clone());
    let levels = Levels::from_shapes(&[(3, 5), (2, 2)]).unwrap();
    let b = batch(&levels, 2, 4, 0.5, 4);
    for w in [
        LossWeights {
            cls: f32::NAN,
            ..LossWeights::default()
        },
        LossWeights {
            reg: f32::INFINITY,
            ..LossWeights::default()
        },
        LossWeights {
            cnt: f32::NEG_INFINITY,
            ..LossWeights::default()
        },
    ] {
        let cpu = grad::gradients(&config, &levels, &b.inputs(), &w).unwrap_err();
        let gpu = engine
            .forward_backward(&levels, &b.inputs(), &w)
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(gpu, FcosError::InvalidConfig(_)), "{gpu}");
        assert_eq!(gpu.to_string(), cpu.to_string());
    }
}

/// Targets of the whole batch larger than one binding: the positive count of the
/// backward pass runs in several dispatches of whole images, and the gradients
/// still match the reference.
#[test]
fn the_positive_count_splits_across_bindings() {
    let config = LossConfig::new(5);
    let (device, queue) = common::app_device_with(|mut l| {
        l.max_storage_buffer_binding_size = 16 << 10;
        l
    });
    let engine = FcosLoss::from_device(device, queue, config.clone()).unwrap();
    let levels = Levels::from_image(128, 96, &STRIDES).unwrap();
    let b = batch(&levels, 40, 5, 0.3, 9);
    // 40 images × P floats of cnt_targets: more than 16 KiB.
    assert!(4 * 40 * levels.positions() > 16 << 10);
    let w = LossWeights::default();
    let (gl, gg) = engine.forward_backward(&levels, &b.inputs(), &w).unwrap();
    let (cl, cg) = grad::gradients(&config, &levels, &b.inputs(), &w).unwrap();
    common::assert_close("losses", &gl, &cl);
    common::assert_heads("positive count split across bindings", &gg, &cg, 1e-4);
}

/// lavapipe's (and llvmpipe's) real `max_storage_buffer_binding_size`: 128 MiB.
const REAL_BINDING: u64 = 128 << 20;

/// At real scale: a pyramid level whose class logits for the batch are larger than
/// one 128 MiB storage binding (two images of 64 MiB each), so the plan must bind
/// it in segments of one image, as on a real device; the losses still match the
/// CPU reference. On an adapter whose binding limit is larger than 128 MiB, a
/// batch that splits there would take gigabytes, so the test then opens a device
/// on the same adapter with the limit lowered to 128 MiB (the buffers stay real
/// buffers of the real size) and checks the same batch there.
#[test]
fn a_level_over_the_real_128_mib_binding_is_split_and_matches_the_reference() {
    let c = 80usize;
    let config = LossConfig::new(c as u32);
    let mut engine = common::engine(config.clone());
    if engine.context().limits.max_storage_buffer_binding_size > REAL_BINDING {
        eprintln!(
            "{}: max_storage_buffer_binding_size {} > 128 MiB; lowering it to 128 MiB",
            engine.adapter_name(),
            engine.context().limits.max_storage_buffer_binding_size
        );
        let (device, queue) = common::app_device_with(|mut l| {
            l.max_storage_buffer_binding_size = REAL_BINDING;
            l
        });
        engine = FcosLoss::from_device(device, queue, config.clone()).unwrap();
    }
    let binding = engine.context().limits.max_storage_buffer_binding_size;
    assert!(binding <= REAL_BINDING);
    // Level 0: 410 × 512 positions, 80 classes: 64.06 MiB of class logits per image.
    let levels = Levels::from_shapes(&[(410, 512), (3, 4)]).unwrap();
    let b = 2;
    let per_image = 4 * levels.level_len(0, 1, c) as u64;
    let level0 = 4 * levels.level_len(0, b, c) as u64;
    assert!(
        per_image <= binding && level0 > binding,
        "one image ({per_image} bytes) must fit the binding ({binding} bytes) and the batch ({level0} bytes) must not"
    );
    let mut spec = SyntheticSpec::new(b, c);
    spec.pos_frac = vec![0.01, 0.2];
    spec.seed = 128;
    let batch = synthetic::generate(&levels, &STRIDES[..2], &spec).unwrap();
    let got = engine.compute(&levels, &batch.inputs()).unwrap();
    let want = reference::losses(&config, &levels, &batch.inputs()).unwrap();
    common::assert_close("level over one 128 MiB binding, host path", &got, &want);
    // The device path binds the same segments at offsets into the caller's buffer.
    let up = DeviceBatch::upload(&engine.context().device, &batch).unwrap();
    let dev = engine.compute_device(&levels, &up.inputs()).unwrap();
    assert_eq!(
        common::bits(&dev),
        common::bits(&got),
        "device vs host path"
    );
}
