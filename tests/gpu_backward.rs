//! The fused backward pass: against PyTorch autograd (golden files), against the f64
//! CPU reference on randomized shapes, on both input paths, at extreme logits.

mod common;

use fcos_loss::reference::grad;
use fcos_loss::synthetic::{self, Rng, SyntheticSpec};
use fcos_loss::{DeviceBatch, Head, Levels, LossConfig, LossWeights, RegLoss};

#[cfg(feature = "casefile")]
#[test]
fn golden_gradients_match_pytorch() {
    let mut engine = common::engine(LossConfig::new(1));
    for name in common::GOLDEN {
        let case = common::golden(name);
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
        common::assert_heads(&format!("{name} IoU vs PyTorch"), &g, want, 1e-4);
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
        let want = exp.grad_giou_reg.as_ref().expect("golden GIoU gradients");
        let err = fcos_loss::max_tensor_error(&g.reg_preds, want);
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
        common::assert_heads(&what, &gg, &cg, 1e-4);
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
    for (h, levels) in gg.iter() {
        assert!(
            levels.iter().flatten().all(|x| x.is_finite()),
            "extreme logits: a non-finite {h} gradient"
        );
    }
    common::assert_close("extreme logits", &gl, &cl);
    common::assert_heads("extreme logits", &gg, &cg, 1e-4);
}

#[test]
fn device_path_writes_the_same_gradients_into_user_buffers() {
    let config = LossConfig::new(20).with_reg_loss(RegLoss::Giou);
    let levels = Levels::from_image(200, 264, &config.strides).unwrap();
    let mut spec = SyntheticSpec::new(3, 20);
    spec.pos_frac = vec![0.05, 0.0, 1.0];
    let batch = synthetic::generate(&levels, &config.strides, &spec).unwrap();
    let engine = common::engine(config.clone());
    let ctx = engine.context();
    let bufs = DeviceBatch::upload(&ctx.device, &batch).unwrap();
    let grads = bufs.gradient_buffers(&ctx.device).unwrap();
    let inputs = bufs.inputs();
    let w = LossWeights::default();
    let dev = engine
        .forward_backward_device(&levels, &inputs, &grads.as_ref(), &w)
        .unwrap();
    let (host, hg) = engine
        .forward_backward(&levels, &batch.inputs(), &w)
        .unwrap();
    assert_eq!(dev.value, host);
    // Read the user's gradient buffers back and compare with the host path, bitwise.
    for (h, buf) in grads.iter() {
        assert_eq!(
            common::read_buffer(ctx, buf),
            hg[h].concat(),
            "grad {h}: device and host paths differ"
        );
    }
    // A gradient buffer one f32 too small is a shape error naming it.
    for head in Head::ALL {
        let small = common::buffers::unusual_input_buffer(
            &ctx.device,
            &batch,
            head.input(),
            common::buffers::Unusual::OneShort,
        );
        let mut short = grads.as_ref();
        short[head] = &small;
        let e = engine
            .forward_backward_device(&levels, &inputs, &short, &w)
            .unwrap_err();
        assert!(e.to_string().contains(&format!("grad {head}")), "{e}");
    }
}

/// The backward pass's roofline writes every element of the three gradients once,
/// from the value read at its place (`coef_b · z` for the class logits with
/// `coef_b = 1 / (B · max(num_pos_b, 1))`, the centerness logit and the boxes at the
/// positives, zero elsewhere): no sentinel survives, with checks on and off, on odd
/// level sizes with partial tiles and class chunks.
#[cfg(feature = "bench")]
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
    let ctx = engine.context().clone();
    let bufs = DeviceBatch::upload(&ctx.device, &batch).unwrap();
    let inputs = bufs.inputs();
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
            // Gradient buffers filled with the sentinel.
            let grads = bufs.gradient_buffers(&ctx.device).unwrap();
            for (_, g) in grads.iter() {
                let n = g.size() as usize / 4;
                ctx.queue
                    .write_buffer(g, 0, bytemuck::cast_slice(&vec![SENTINEL; n]));
            }
            let t = engine
                .backward_roofline_device(&levels, &inputs, &grads.as_ref())
                .unwrap();
            assert!(t.call.as_nanos() > 0);
            let got: fcos_loss::Heads<Vec<f32>> =
                grads.as_ref().map(|_, g| common::read_buffer(&ctx, g));
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
                        let g = got.cls_logits[at_cls + k];
                        assert!(
                            (g - coef * z).abs() <= 1e-6 * (coef * z).abs(),
                            "{what}: grad cls level {l} image {i} element {k}: {g} != {coef} * {z}"
                        );
                    }
                    for q in 0..hw {
                        let x = batch.cnt_logits[l][i * hw + q];
                        let want = if positive(q) { x } else { 0.0 };
                        assert_eq!(
                            got.cnt_logits[at_cnt + q],
                            want,
                            "{what}: grad cnt level {l} image {i} position {q}"
                        );
                        for ch in 0..Head::RegPreds.channels(c) {
                            let r = batch.reg_preds[l][(i * 4 + ch) * hw + q];
                            let want = if positive(q) { r } else { 0.0 };
                            assert_eq!(
                                got.reg_preds[at_reg + ch * hw + q],
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
            assert_eq!(at_cls, got.cls_logits.len());
            for (h, g) in got.iter() {
                assert!(
                    g.iter().all(|&x| x != SENTINEL),
                    "{what}: a sentinel survived in grad {h}"
                );
            }
        }
    }
}
