//! The embedding path: an application opens its own wgpu device, hands it to the
//! engine with `FcosLoss::from_device`, and passes inputs already in its buffers.

mod common;

use fcos_loss::synthetic::{self, SyntheticSpec};
use fcos_loss::{reference, Batch, DeviceInputs, FcosError, FcosLoss, Levels, LossConfig, RegLoss};
use wgpu::util::DeviceExt;

/// Opens a device the way an application would, honouring `WGPU_BACKEND`.
fn app_device() -> (wgpu::Device, wgpu::Queue) {
    common::app_device_with(|limits| limits)
}

fn app_engine(config: LossConfig) -> (wgpu::Device, FcosLoss) {
    let (device, queue) = app_device();
    let engine = FcosLoss::from_device(device.clone(), queue.clone(), config)
        .expect("engine on the app's device");
    (device, engine)
}

/// The application's own buffers holding a batch (heads packed by level).
struct AppBuffers {
    bufs: [wgpu::Buffer; 6],
    batch: usize,
}

/// The six inputs, in the engine's order.
const NAMES: [&str; 6] = fcos_loss::gpu::pool::INPUT_NAMES;

fn upload(
    device: &wgpu::Device,
    data: &[f32],
    name: &str,
    usage: wgpu::BufferUsages,
) -> wgpu::Buffer {
    // A zero-sized buffer cannot be bound; the engine never reads past the data anyway.
    let data: Vec<f32> = if data.is_empty() {
        vec![0.0; 4]
    } else {
        data.to_vec()
    };
    device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some(name),
        contents: bytemuck::cast_slice(&data),
        usage,
    })
}

fn host_data(batch: &Batch) -> [Vec<f32>; 6] {
    [
        Batch::packed(&batch.cls_logits),
        Batch::packed(&batch.cnt_logits),
        Batch::packed(&batch.reg_preds),
        batch.cls_targets.clone(),
        batch.cnt_targets.clone(),
        batch.reg_targets.clone(),
    ]
}

impl AppBuffers {
    fn new(device: &wgpu::Device, batch: &Batch) -> Self {
        let data = host_data(batch);
        AppBuffers {
            bufs: std::array::from_fn(|i| {
                upload(device, &data[i], NAMES[i], wgpu::BufferUsages::STORAGE)
            }),
            batch: batch.batch,
        }
    }

    fn inputs(&self) -> DeviceInputs<'_> {
        let [a, b, c, d, e, f] = &self.bufs;
        DeviceInputs {
            batch: self.batch,
            cls_logits: a,
            cnt_logits: b,
            reg_preds: c,
            cls_targets: d,
            cnt_targets: e,
            reg_targets: f,
        }
    }

    /// The inputs with buffer `i` replaced by `buf`.
    fn with<'a>(&'a self, i: usize, buf: &'a wgpu::Buffer) -> DeviceInputs<'a> {
        let mut d = self.inputs();
        match i {
            0 => d.cls_logits = buf,
            1 => d.cnt_logits = buf,
            2 => d.reg_preds = buf,
            3 => d.cls_targets = buf,
            4 => d.cnt_targets = buf,
            _ => d.reg_targets = buf,
        }
        d
    }
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
    bufs: &AppBuffers,
    what: &str,
) {
    let on_device = engine
        .compute_device(levels, &bufs.inputs())
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
        let bufs = AppBuffers::new(&device, &batch);
        for reg in [RegLoss::Iou, RegLoss::Giou] {
            engine
                .set_config(LossConfig::new(c as u32).with_reg_loss(reg))
                .unwrap();
            check_device_path(
                &engine,
                &levels,
                &batch,
                &bufs,
                &format!("case {i} ({reg:?}) C = {c}, levels {shapes:?}"),
            );
        }
    }
}

#[test]
fn oversized_buffers_with_trailing_data_are_fine() {
    let (device, engine) = app_engine(LossConfig::new(5));
    let (levels, batch) = case(5, &[(6, 7), (3, 4), (1, 1)], vec![0.2, 1.0], 3);
    let data = host_data(&batch);
    // Each buffer carries garbage (large, NaN-free) after the data the layout covers.
    let bufs = AppBuffers {
        bufs: std::array::from_fn(|i| {
            let mut d = data[i].clone();
            d.extend(std::iter::repeat_n(1.0e4, 64));
            upload(
                &device,
                &d,
                NAMES[i],
                wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            )
        }),
        batch: batch.batch,
    };
    check_device_path(&engine, &levels, &batch, &bufs, "oversized buffers");
}

#[test]
fn too_small_buffer_is_a_shape_error_naming_it() {
    let (device, engine) = app_engine(LossConfig::new(4));
    let (levels, batch) = case(4, &[(5, 6), (2, 3)], vec![0.3, 1.0], 9);
    let bufs = AppBuffers::new(&device, &batch);
    let data = host_data(&batch);
    for i in 0..6 {
        // One f32 short of what the layout needs.
        let short = upload(
            &device,
            &data[i][..data[i].len() - 1],
            NAMES[i],
            wgpu::BufferUsages::STORAGE,
        );
        match engine.compute_device(&levels, &bufs.with(i, &short)) {
            Err(FcosError::Shape { tensor, .. }) => {
                assert!(
                    tensor.contains(NAMES[i]),
                    "error names '{tensor}', not {}",
                    NAMES[i]
                )
            }
            other => panic!(
                "{} one f32 short: expected FcosError::Shape, got {other:?}",
                NAMES[i]
            ),
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
    check_device_path(&engine, &levels, &batch, &bufs, "after too-small buffers");
}

#[test]
fn buffer_without_storage_usage_is_an_error() {
    let (device, engine) = app_engine(LossConfig::new(4));
    let (levels, batch) = case(4, &[(5, 6), (2, 3)], vec![0.3, 1.0], 9);
    let bufs = AppBuffers::new(&device, &batch);
    let data = host_data(&batch);
    for i in 0..6 {
        let wrong = upload(
            &device,
            &data[i],
            NAMES[i],
            wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        );
        match engine.compute_device(&levels, &bufs.with(i, &wrong)) {
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(NAMES[i]),
                    "error for {} does not name it: {msg}",
                    NAMES[i]
                );
            }
            Ok(l) => panic!("{} without STORAGE usage was accepted: {l:?}", NAMES[i]),
        }
    }
    // A uniform buffer is not a storage buffer either.
    let uniform = upload(&device, &data[3], NAMES[3], wgpu::BufferUsages::UNIFORM);
    assert!(engine
        .compute_device(&levels, &bufs.with(3, &uniform))
        .is_err());
    check_device_path(
        &engine,
        &levels,
        &batch,
        &bufs,
        "after buffers without STORAGE",
    );
}

#[test]
fn all_empty_levels_on_device_give_zeros() {
    let (device, engine) = app_engine(LossConfig::new(3));
    let (levels, batch) = case(3, &[(0, 4), (5, 0)], vec![0.5, 0.5], 1);
    let bufs = AppBuffers::new(&device, &batch);
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
    let bufs = AppBuffers::new(&device, &batch);
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
    println!(
        "{}: zero-copy upload {}",
        direct.adapter_name(),
        direct.context().zero_copy_upload()
    );
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
