//! The embedding path: an application opens its own wgpu device, hands it to the
//! engine with `FcosLoss::from_device`, and passes inputs already in its buffers.

mod common;

use std::collections::HashMap;

use common::buffers::{unusual_input_buffer, Unusual};
use fcos_loss::synthetic::{self, SyntheticSpec};
use fcos_loss::{
    reference, Batch, DeviceBatch, DeviceInputs, FcosError, FcosLoss, Input, Levels, LossConfig,
    RegLoss,
};

/// An engine on the application's device, and that device.
fn app_engine(config: LossConfig) -> (wgpu::Device, FcosLoss) {
    let engine = common::app_engine(config);
    (engine.context().device.clone(), engine)
}

fn case(classes: usize, shapes: &[(u32, u32)], pos_frac: Vec<f64>, seed: u64) -> (Levels, Batch) {
    let levels = Levels::from_shapes(shapes).unwrap();
    let mut spec = SyntheticSpec::new(pos_frac.len(), classes);
    spec.pos_frac = pos_frac;
    spec.logit_scale = 2.0;
    spec.seed = seed;
    let batch = synthetic::generate(&levels, &[8, 16, 32, 64, 128], &spec).unwrap();
    (levels, batch)
}

/// Checks the device path against the host path (bitwise) and the CPU reference.
fn check_device_path(
    engine: &FcosLoss,
    levels: &Levels,
    batch: &Batch,
    inputs: &DeviceInputs,
    what: &str,
) {
    let on_device = engine
        .compute_device(levels, inputs)
        .expect("compute_device");
    let host = engine.compute(levels, &batch.inputs()).expect("compute");
    assert_eq!(
        common::bits(&on_device),
        common::bits(&host),
        "{what}: device and host paths differ\n device {on_device:?}\n host   {host:?}"
    );
    let cpu = reference::losses(engine.config(), levels, &batch.inputs()).unwrap();
    common::assert_close(what, &on_device, &cpu);
}

#[test]
fn device_buffers_match_host_path_and_reference() {
    let (device, mut engine) = app_engine(LossConfig::new(7));
    eprintln!("adapter: {}", engine.adapter_name());
    type Case = (usize, &'static [(u32, u32)], Vec<f64>);
    let cases: [Case; 4] = [
        (
            7,
            &[(13, 19), (7, 10), (4, 5), (2, 3), (1, 2)],
            vec![0.05, 0.0, 1.0],
        ),
        (1, &[(5, 5), (0, 3), (1, 1)], vec![0.5]),
        (20, &[(9, 11), (5, 6), (3, 3)], vec![0.1, 1.0]),
        (3, &[(0, 4), (2, 2)], vec![0.0, 0.3, 1.0, 0.7]),
    ];
    for (i, (c, shapes, frac)) in cases.into_iter().enumerate() {
        let (levels, batch) = case(c, shapes, frac, i as u64);
        let bufs = DeviceBatch::upload(&device, &batch).unwrap();
        for reg in [RegLoss::Iou, RegLoss::Giou] {
            engine
                .set_config(LossConfig::new(c as u32).with_reg_loss(reg))
                .unwrap();
            check_device_path(
                &engine,
                &levels,
                &batch,
                &bufs.inputs(),
                &format!("case {i} ({reg:?}) C = {c}, levels {shapes:?}"),
            );
        }
    }
}

#[test]
fn oversized_buffers_with_trailing_data_are_fine() {
    let (device, engine) = app_engine(LossConfig::new(5));
    let (levels, batch) = case(5, &[(6, 7), (3, 4), (1, 1)], vec![0.2, 1.0], 3);
    // Each buffer carries garbage (large, NaN-free) after the data the layout covers.
    let trailing = Unusual::Trailing {
        extra: 64,
        fill: 1.0e4,
    };
    let bufs: HashMap<Input, wgpu::Buffer> = Input::ALL
        .into_iter()
        .map(|input| {
            (
                input,
                unusual_input_buffer(&device, &batch, input, trailing),
            )
        })
        .collect();
    let inputs = common::device_inputs(batch.batch, |input| &bufs[&input]);
    for input in Input::ALL {
        assert!(inputs.buffer(input).size() > 4 * batch.packed(input).len() as u64);
    }
    check_device_path(&engine, &levels, &batch, &inputs, "oversized buffers");
}

#[test]
fn too_small_buffer_is_a_shape_error_naming_it() {
    let (device, engine) = app_engine(LossConfig::new(4));
    let (levels, batch) = case(4, &[(5, 6), (2, 3)], vec![0.3, 1.0], 9);
    let bufs = DeviceBatch::upload(&device, &batch).unwrap();
    for input in Input::ALL {
        // One f32 short of what the layout needs.
        let short = unusual_input_buffer(&device, &batch, input, Unusual::OneShort);
        match engine.compute_device(&levels, &common::with_buffer(bufs.inputs(), input, &short)) {
            Err(FcosError::Shape { tensor, .. }) => {
                assert!(
                    tensor.contains(input.name()),
                    "error names '{tensor}', not {input}"
                )
            }
            other => panic!("{input} one f32 short: expected FcosError::Shape, got {other:?}"),
        }
    }
    // B larger than the buffers hold.
    let mut too_many = bufs.inputs();
    too_many.batch = 3;
    assert!(
        matches!(
            engine.compute_device(&levels, &too_many),
            Err(FcosError::Shape { .. })
        ),
        "B = 3 on buffers of B = 2"
    );
    // B = 0.
    let mut zero = bufs.inputs();
    zero.batch = 0;
    assert!(
        engine.compute_device(&levels, &zero).is_err(),
        "B = 0 accepted"
    );
    check_device_path(
        &engine,
        &levels,
        &batch,
        &bufs.inputs(),
        "after too-small buffers",
    );
}

#[test]
fn buffer_without_storage_usage_is_an_error() {
    let (device, engine) = app_engine(LossConfig::new(4));
    let (levels, batch) = case(4, &[(5, 6), (2, 3)], vec![0.3, 1.0], 9);
    let bufs = DeviceBatch::upload(&device, &batch).unwrap();
    let no_storage = Unusual::Usage(wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST);
    for input in Input::ALL {
        let wrong = unusual_input_buffer(&device, &batch, input, no_storage);
        match engine.compute_device(&levels, &common::with_buffer(bufs.inputs(), input, &wrong)) {
            Err(e) => {
                assert!(
                    matches!(e, FcosError::InvalidCall(_)),
                    "{input} without STORAGE usage: expected FcosError::InvalidCall, got {e:?}"
                );
                let msg = e.to_string();
                assert!(
                    msg.contains(input.name()),
                    "error for {input} does not name it: {msg}"
                );
            }
            Ok(l) => panic!("{input} without STORAGE usage was accepted: {l:?}"),
        }
    }
    // A uniform buffer is not a storage buffer either.
    let uniform = unusual_input_buffer(
        &device,
        &batch,
        Input::ClsTargets,
        Unusual::Usage(wgpu::BufferUsages::UNIFORM),
    );
    let e = engine
        .compute_device(
            &levels,
            &common::with_buffer(bufs.inputs(), Input::ClsTargets, &uniform),
        )
        .unwrap_err();
    assert!(matches!(e, FcosError::InvalidCall(_)), "{e:?}");
    assert!(e.to_string().contains(Input::ClsTargets.name()), "{e}");
    check_device_path(
        &engine,
        &levels,
        &batch,
        &bufs.inputs(),
        "after buffers without STORAGE",
    );
}

#[test]
fn all_empty_levels_on_device_give_zeros() {
    let (device, engine) = app_engine(LossConfig::new(3));
    let (levels, batch) = case(3, &[(0, 4), (5, 0)], vec![0.5, 0.5], 1);
    let bufs = DeviceBatch::upload(&device, &batch).unwrap();
    let got = engine.compute_device(&levels, &bufs.inputs()).unwrap();
    assert_eq!(got.cls, vec![0.0; 2]);
    assert_eq!(got.cnt, vec![0.0; 2]);
    assert_eq!(got.reg, vec![0.0; 2]);
    assert_eq!(got.num_pos, vec![0; 2]);
    assert_eq!(got.total, 0.0);
}

#[test]
fn engine_and_app_share_the_device() {
    let (device, engine) = app_engine(LossConfig::new(2));
    // The app keeps using its device alongside the engine.
    let (levels, batch) = case(2, &[(4, 4), (2, 2)], vec![0.5], 2);
    let bufs = DeviceBatch::upload(&device, &batch).unwrap();
    let first = engine.compute_device(&levels, &bufs.inputs()).unwrap();
    let extra = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("app's own work"),
        size: 1024,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    drop(extra);
    let again = engine.compute_device(&levels, &bufs.inputs()).unwrap();
    assert_eq!(common::bits(&first), common::bits(&again));
    assert_eq!(engine.context().device, device);
}

/// Whether `info`'s adapter works in host memory (a CPU or integrated adapter).
fn shares_host_memory(info: &wgpu::AdapterInfo) -> bool {
    matches!(
        info.device_type,
        wgpu::DeviceType::Cpu | wgpu::DeviceType::IntegratedGpu
    )
}

/// An engine from `FcosLoss::new` uploads without a staging copy exactly where
/// it can: on a CPU or integrated adapter that has `MAPPABLE_PRIMARY_BUFFERS`.
/// lavapipe (Vulkan, a CPU adapter) has the feature, so there it must be on.
#[test]
fn zero_copy_upload_is_on_wherever_the_adapter_allows_it() {
    let engine = common::engine(LossConfig::new(3));
    let info = &engine.context().info;
    // The adapter `FcosLoss::new` chose (the same policy as `common::adapters`).
    let adapter = common::adapter();
    assert_eq!(
        &adapter.get_info(),
        info,
        "the tests and the engine pick different adapters"
    );
    let mappable = adapter
        .features()
        .contains(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS);
    let want = mappable && shares_host_memory(info);
    assert_eq!(
        engine.context().zero_copy_upload(),
        want,
        "{}: {:?}, MAPPABLE_PRIMARY_BUFFERS {mappable}",
        engine.adapter_name(),
        info.device_type
    );
    if info.backend == wgpu::Backend::Vulkan && info.device_type == wgpu::DeviceType::Cpu {
        // lavapipe: a CPU adapter with the feature.
        assert!(
            mappable,
            "{} lacks MAPPABLE_PRIMARY_BUFFERS",
            engine.adapter_name()
        );
        assert!(engine.context().zero_copy_upload());
    }
    if !shares_host_memory(info) {
        assert!(!engine.context().zero_copy_upload());
    }
    // Without the feature on the device there is no zero-copy upload anywhere.
    let (device, queue) = common::app_device_with(|l| l);
    let staged = FcosLoss::from_device(device, queue, LossConfig::new(3)).unwrap();
    assert!(!staged.context().zero_copy_upload());
}

/// The host path's two uploads give bitwise the same losses and gradients: straight
/// into mappable storage buffers (a device with `MAPPABLE_PRIMARY_BUFFERS` on a CPU
/// or integrated adapter, e.g. lavapipe) and through the staging buffer (a device
/// without the feature).
#[test]
fn zero_copy_and_staged_uploads_agree() {
    let config = LossConfig::new(7).with_reg_loss(RegLoss::Giou);
    let (levels, batch) = case(7, &[(13, 17), (7, 9), (1, 3)], vec![0.1, 1.0], 5);
    let mappable = wgpu::Features::MAPPABLE_PRIMARY_BUFFERS;
    let (dev_a, queue_a) = common::app_device_with_features(|f| f & mappable, |l| l);
    let (dev_b, queue_b) = common::app_device_with(|l| l);
    let direct = FcosLoss::from_device(dev_a, queue_a, config.clone()).unwrap();
    let staged = FcosLoss::from_device(dev_b, queue_b, config.clone()).unwrap();
    assert!(!staged.context().zero_copy_upload());
    let info = &direct.context().info;
    let has_feature = direct.context().features.contains(mappable);
    assert_eq!(
        direct.context().zero_copy_upload(),
        has_feature && shares_host_memory(info),
        "{}: {:?}, MAPPABLE_PRIMARY_BUFFERS {has_feature}",
        direct.adapter_name(),
        info.device_type
    );
    if info.backend == wgpu::Backend::Vulkan && info.device_type == wgpu::DeviceType::Cpu {
        // lavapipe: the two engines really take the two different uploads.
        assert!(direct.context().zero_copy_upload());
    }
    let w = fcos_loss::LossWeights::for_config(&config);
    for _ in 0..2 {
        let (la, ga) = direct
            .forward_backward(&levels, &batch.inputs(), &w)
            .unwrap();
        let (lb, gb) = staged
            .forward_backward(&levels, &batch.inputs(), &w)
            .unwrap();
        assert_eq!(common::bits(&la), common::bits(&lb));
        assert_eq!(ga, gb);
        let a = direct.compute(&levels, &batch.inputs()).unwrap();
        assert_eq!(common::bits(&a), common::bits(&la));
    }
    let cpu = reference::losses(&config, &levels, &batch.inputs()).unwrap();
    common::assert_close(
        "zero-copy upload",
        &direct.compute(&levels, &batch.inputs()).unwrap(),
        &cpu,
    );
}
