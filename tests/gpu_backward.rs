//! The fused backward pass: against PyTorch autograd (golden files), against the f64
//! CPU reference on randomized shapes, on both input paths, at extreme logits.

mod common;

use std::path::Path;

use fcos_loss::reference::grad::{self, RefGradients};
use fcos_loss::synthetic::{self, Rng, SyntheticSpec};
use fcos_loss::{
    io, DeviceGradients, DeviceInputs, Gradients, Levels, LossConfig, LossWeights, RegLoss,
};
use wgpu::util::DeviceExt;

fn assert_heads(what: &str, got: &Gradients, want: &RefGradients, tol: f64) {
    for (name, g, w) in [
        ("cls_logits", &got.cls_logits, &want.cls_logits),
        ("cnt_logits", &got.cnt_logits, &want.cnt_logits),
        ("reg_preds", &got.reg_preds, &want.reg_preds),
    ] {
        assert_eq!(g.len(), w.len(), "{what}: {name} levels");
        for (l, (a, b)) in g.iter().zip(w.iter()).enumerate() {
            assert_eq!(a.len(), b.len(), "{what}: {name}.{l} length");
        }
        let err = fcos_loss::losses::max_tensor_error(g, w);
        assert!(
            err <= tol,
            "{what}: {name} max error {err:e} of its tensor's largest magnitude > {tol:e}"
        );
    }
}

fn as_f64(h: &[Vec<f32>]) -> Vec<Vec<f64>> {
    h.iter()
        .map(|v| v.iter().map(|&x| x as f64).collect())
        .collect()
}

/// The batch's six inputs in `STORAGE` buffers, in `DeviceInputs` order.
fn upload_inputs(device: &wgpu::Device, batch: &fcos_loss::Batch) -> [wgpu::Buffer; 6] {
    let upload = |data: &[f32]| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("test input"),
            contents: bytemuck::cast_slice(data),
            usage: wgpu::BufferUsages::STORAGE,
        })
    };
    [
        upload(&batch.cls_logits.concat()),
        upload(&batch.cnt_logits.concat()),
        upload(&batch.reg_preds.concat()),
        upload(&batch.cls_targets),
        upload(&batch.cnt_targets),
        upload(&batch.reg_targets),
    ]
}

/// [`upload_inputs`]' buffers as the [`DeviceInputs`] of `batch` images.
fn device_inputs(batch: usize, b: &[wgpu::Buffer; 6]) -> DeviceInputs<'_> {
    DeviceInputs {
        batch,
        cls_logits: &b[0],
        cnt_logits: &b[1],
        reg_preds: &b[2],
        cls_targets: &b[3],
        cnt_targets: &b[4],
        reg_targets: &b[5],
    }
}

/// The three gradient buffers, in head order, as [`DeviceGradients`].
fn device_grads(g: &[wgpu::Buffer; 3]) -> DeviceGradients<'_> {
    DeviceGradients {
        cls_logits: &g[0],
        cnt_logits: &g[1],
        reg_preds: &g[2],
    }
}

/// A buffer's contents as f32, copied back through a staging buffer.
fn read_buffer(engine: &fcos_loss::FcosLoss, buf: &wgpu::Buffer) -> Vec<f32> {
    let device = &engine.context().device;
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: buf.size(),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = device.create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(buf, 0, &staging, 0, buf.size());
    engine.context().queue.submit([enc.finish()]);
    staging
        .slice(..)
        .map_async(wgpu::MapMode::Read, |r| r.unwrap());
    device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
    let v = bytemuck::pod_collect_to_vec(&staging.slice(..).get_mapped_range().unwrap());
    v
}

#[test]
fn golden_gradients_match_pytorch() {
    let mut engine = common::engine(LossConfig::new(1));
    for name in [
        "voc_b2_c20_512x512",
        "odd_b3_c7_100x150",
        "single_b1_c1_64x64",
    ] {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/data/{name}.safetensors"));
        let case = io::read_case(&path).unwrap();
        let exp = case.expected.as_ref().unwrap();
        let b = &case.batch;
        // IoU: d(cls + cnt + reg)/d inputs.
        engine
            .set_config(LossConfig::new(b.classes as u32))
            .unwrap();
        let (losses, g) = engine
            .forward_backward(&b.levels, &b.inputs(), &LossWeights::default())
            .unwrap();
        let fwd = engine.compute(&b.levels, &b.inputs()).unwrap();
        assert_eq!(
            losses, fwd,
            "{name}: forward_backward losses equal the forward's"
        );
        let want = exp.grad.as_ref().expect("golden gradients");
        let want = RefGradients {
            cls_logits: as_f64(&want.cls_logits),
            cnt_logits: as_f64(&want.cnt_logits),
            reg_preds: as_f64(&want.reg_preds),
        };
        assert_heads(&format!("{name} IoU vs PyTorch"), &g, &want, 1e-4);
        // GIoU: d(reg_loss)/d reg_preds alone.
        engine
            .set_config(LossConfig::new(b.classes as u32).with_reg_loss(RegLoss::Giou))
            .unwrap();
        let w = LossWeights {
            cls: 0.0,
            cnt: 0.0,
            reg: 1.0,
        };
        let (_, g) = engine.forward_backward(&b.levels, &b.inputs(), &w).unwrap();
        let want = as_f64(exp.grad_giou_reg.as_ref().expect("golden GIoU gradients"));
        let err = fcos_loss::losses::max_tensor_error(&g.reg_preds, &want);
        assert!(err <= 1e-4, "{name} GIoU reg_preds: {err:e} > 1e-4");
        assert!(
            g.cls_logits.iter().flatten().all(|&x| x == 0.0),
            "{name}: w_cls = 0 gives zero cls grads"
        );
    }
}

#[test]
fn random_shapes_match_the_cpu_reference() {
    let mut rng = Rng::new(7);
    let mut engine = common::engine(LossConfig::new(1));
    for case in 0..36 {
        let b = rng.range(1, 5) as usize;
        let c = rng.range(1, 40) as u32;
        let l_n = rng.range(1, 5) as usize;
        let shapes: Vec<(u32, u32)> = (0..l_n)
            .map(|_| (rng.range(0, 17) as u32, rng.range(1, 19) as u32))
            .collect();
        let levels = Levels::from_shapes(&shapes).unwrap();
        let mut spec = SyntheticSpec::new(b, c as usize);
        spec.seed = case;
        spec.pos_frac = match case % 4 {
            0 => vec![0.0],
            1 => vec![1.0],
            2 => vec![0.0, 1.0, 0.2],
            _ => vec![0.05],
        };
        spec.logit_scale = 1.0 + rng.uniform() * 4.0;
        let batch = synthetic::generate(&levels, &[8, 16, 32, 64, 128], &spec).unwrap();
        let mode = if case % 2 == 0 {
            RegLoss::Iou
        } else {
            RegLoss::Giou
        };
        let mut config = LossConfig::new(c)
            .with_reg_loss(mode)
            .with_centerness(case % 3 != 0);
        // Some cases leave the notebook's focal parameters (the shader's general
        // pow path instead of the gamma = 2 square).
        (config.gamma, config.alpha) = match case % 6 {
            3 => (1.5, 0.4),
            5 => (3.0, 0.5),
            _ => (config.gamma, config.alpha),
        };
        let weights = if case % 5 == 0 {
            LossWeights {
                cls: 0.5,
                cnt: 2.0,
                reg: 1.5,
            }
        } else {
            LossWeights::for_config(&config)
        };
        engine.set_config(config.clone()).unwrap();
        let what = format!(
            "case {case}: B {b} C {c} levels {shapes:?} {mode:?} pos {:?} gamma {} alpha {}",
            spec.pos_frac, config.gamma, config.alpha
        );
        let (gl, gg) = engine
            .forward_backward(&levels, &batch.inputs(), &weights)
            .unwrap();
        let (cl, cg) = grad::gradients(&config, &levels, &batch.inputs(), &weights).unwrap();
        common::assert_close(&what, &gl, &cl);
        assert_heads(&what, &gg, &cg, 1e-4);
    }
}

#[test]
fn extreme_logits_give_finite_gradients() {
    let levels = Levels::from_shapes(&[(3, 5), (2, 2)]).unwrap();
    let config = LossConfig::new(4);
    let engine = common::engine(config.clone());
    let mut spec = SyntheticSpec::new(2, 4);
    spec.pos_frac = vec![0.5];
    let mut batch = synthetic::generate(&levels, &[8, 16], &spec).unwrap();
    let pattern = [-50.0f32, 50.0, -30.0, 30.0, -17.0, 17.0, 0.0];
    for head in batch
        .cls_logits
        .iter_mut()
        .chain(batch.cnt_logits.iter_mut())
    {
        for (i, x) in head.iter_mut().enumerate() {
            *x = pattern[i % pattern.len()];
        }
    }
    let w = LossWeights::default();
    let (gl, gg) = engine
        .forward_backward(&levels, &batch.inputs(), &w)
        .unwrap();
    let (cl, cg) = grad::gradients(&config, &levels, &batch.inputs(), &w).unwrap();
    assert!(gg
        .cls_logits
        .iter()
        .chain(&gg.cnt_logits)
        .chain(&gg.reg_preds)
        .flatten()
        .all(|x| x.is_finite()));
    common::assert_close("extreme logits", &gl, &cl);
    assert_heads("extreme logits", &gg, &cg, 1e-4);
}

#[test]
fn device_path_writes_the_same_gradients_into_user_buffers() {
    let config = LossConfig::new(20).with_reg_loss(RegLoss::Giou);
    let levels = Levels::from_image(200, 264, &config.strides).unwrap();
    let mut spec = SyntheticSpec::new(3, 20);
    spec.pos_frac = vec![0.05, 0.0, 1.0];
    let batch = synthetic::generate(&levels, &config.strides, &spec).unwrap();
    let engine = common::engine(config.clone());
    let device = &engine.context().device;
    let bufs = upload_inputs(device, &batch);
    let grad_buf = |n: usize| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("test grad"),
            size: 4 * n as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
    };
    let grads = [
        grad_buf(levels.packed_len(3, 20)),
        grad_buf(levels.packed_len(3, 1)),
        grad_buf(levels.packed_len(3, 4)),
    ];
    let inputs = device_inputs(3, &bufs);
    let w = LossWeights::default();
    let dev = engine
        .forward_backward_device(&levels, &inputs, &device_grads(&grads), &w)
        .unwrap();
    let (host, hg) = engine
        .forward_backward(&levels, &batch.inputs(), &w)
        .unwrap();
    assert_eq!(dev.value, host);
    // Read the user's gradient buffers back and compare with the host path, bitwise.
    let read = |buf: &wgpu::Buffer| read_buffer(&engine, buf);
    assert_eq!(read(&grads[0]), hg.cls_logits.concat());
    assert_eq!(read(&grads[1]), hg.cnt_logits.concat());
    assert_eq!(read(&grads[2]), hg.reg_preds.concat());
    // A gradient buffer that is too small is a shape error naming it.
    let small = grad_buf(10);
    let e = engine
        .forward_backward_device(
            &levels,
            &inputs,
            &DeviceGradients {
                cls_logits: &small,
                cnt_logits: &grads[1],
                reg_preds: &grads[2],
            },
            &w,
        )
        .unwrap_err();
    assert!(e.to_string().contains("grad cls_logits"), "{e}");
}

/// The backward pass's roofline writes every element of the three gradients once,
/// from the value read at its place (`coef_b · z` for the class logits with
/// `coef_b = 1 / (B · max(num_pos_b, 1))`, the centerness logit and the boxes at the
/// positives, zero elsewhere): no sentinel survives, with checks on and off, on odd
/// level sizes with partial tiles and class chunks.
#[test]
fn backward_roofline_writes_every_gradient_element_once() {
    const SENTINEL: f32 = 7777.0;
    let (b, c) = (3usize, 7usize);
    let config = LossConfig::new(c as u32);
    let levels = Levels::from_image(100, 150, &config.strides).unwrap();
    let mut spec = SyntheticSpec::new(b, c);
    spec.pos_frac = vec![0.1, 0.0, 1.0];
    let batch = synthetic::generate(&levels, &config.strides, &spec).unwrap();
    let mut engine = common::engine(config);
    let device = engine.context().device.clone();
    // Gradient buffers filled with the sentinel.
    let sentinel = |ch: usize| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("test gradient"),
            contents: bytemuck::cast_slice(&vec![SENTINEL; levels.packed_len(b, ch)]),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        })
    };
    let bufs = upload_inputs(&device, &batch);
    let inputs = device_inputs(b, &bufs);
    let p = levels.positions();
    let num_pos: Vec<usize> = (0..b)
        .map(|i| {
            batch.cnt_targets[i * p..(i + 1) * p]
                .iter()
                .filter(|&&t| t > -1.0)
                .count()
        })
        .collect();
    assert!(num_pos[0] > 0 && num_pos[1] == 0 && num_pos[2] == p);
    for checks in [true, false] {
        engine.set_checks(checks);
        for chunks in [1, 1000] {
            // 1000 target workgroups: one class per chunk.
            engine.set_target_workgroups(chunks);
            let grads = [sentinel(c), sentinel(1), sentinel(4)];
            let t = engine
                .backward_roofline_device(&levels, &inputs, &device_grads(&grads))
                .unwrap();
            assert!(t.call.as_nanos() > 0);
            let got: Vec<Vec<f32>> = grads.iter().map(|g| read_buffer(&engine, g)).collect();
            let what = format!("checks {checks}, target workgroups {chunks}");
            // Walk the packed layout: level-major, then image, channel, position.
            let (mut at_cls, mut at_cnt, mut at_reg) = (0, 0, 0);
            for l in 0..levels.len() {
                let hw = levels.level_size(l);
                let off = levels.offsets()[l] as usize;
                for (i, &np) in num_pos.iter().enumerate() {
                    let coef = 1.0f32 / (b as f32 * np.max(1) as f32);
                    let positive = |q: usize| batch.cnt_targets[i * p + off + q] > -1.0;
                    for k in 0..c * hw {
                        let z = batch.cls_logits[l][(i * c) * hw + k];
                        let g = got[0][at_cls + k];
                        assert!(
                            (g - coef * z).abs() <= 1e-6 * (coef * z).abs(),
                            "{what}: grad cls level {l} image {i} element {k}: {g} != {coef} * {z}"
                        );
                    }
                    for q in 0..hw {
                        let x = batch.cnt_logits[l][i * hw + q];
                        let want = if positive(q) { x } else { 0.0 };
                        assert_eq!(
                            got[1][at_cnt + q],
                            want,
                            "{what}: grad cnt level {l} image {i} position {q}"
                        );
                        for ch in 0..4 {
                            let r = batch.reg_preds[l][(i * 4 + ch) * hw + q];
                            let want = if positive(q) { r } else { 0.0 };
                            assert_eq!(
                                got[2][at_reg + ch * hw + q],
                                want,
                                "{what}: grad reg level {l} image {i} coordinate {ch} position {q}"
                            );
                        }
                    }
                    at_cls += c * hw;
                    at_cnt += hw;
                    at_reg += 4 * hw;
                }
            }
            assert_eq!(at_cls, got[0].len());
            assert!(
                got.iter().flatten().all(|&x| x != SENTINEL),
                "{what}: a sentinel survived"
            );
        }
    }
}
