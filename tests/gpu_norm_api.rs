//! The normalisation API's calls and their errors (docs/contract.md §8): global
//! denominators read from a device buffer (`compute_device_global`,
//! `forward_backward_device_global`) give what the same values in the config
//! give, and other values give other losses; a bad denominators buffer, a bad
//! counting call (`count_device`) and bad denominators in the config are errors
//! that name what is wrong, after which the engine still works.

mod common;

use common::buffers::{unusual_input_buffer, Unusual};
use fcos_loss::synthetic::{self, SyntheticSpec};
use fcos_loss::{
    reference, Batch, Counts, Denominators, DeviceBatch, DeviceDenominators, FcosError, FcosLoss,
    Gradients, Input, Levels, LossConfig, LossWeights, Losses, Normalization,
};
use wgpu::util::DeviceExt;

const CLASSES: usize = 5;

const WEIGHTS: LossWeights = LossWeights {
    cls: 1.0,
    cnt: 0.5,
    reg: 2.0,
};

/// Three images of 40×56 (strides 8 to 64), image 1 without positives.
fn batch() -> Batch {
    let levels = Levels::from_image(40, 56, &[8, 16, 32, 64]).unwrap();
    let mut spec = SyntheticSpec::new(3, CLASSES);
    spec.pos_frac = vec![0.2, 0.0, 0.5];
    spec.logit_shift = -1.5;
    spec.seed = 1313;
    synthetic::generate(&levels, &[8, 16, 32, 64], &spec).unwrap()
}

fn global(num_pos: f32, ctr: f32, weighted: bool) -> LossConfig {
    LossConfig::new(CLASSES as u32)
        .with_normalization(Normalization::Global(Denominators { num_pos, ctr }))
        .with_centerness_weighted_reg(weighted)
}

/// A buffer on the engine's device holding `data`, with `usage`.
fn buffer_with(engine: &FcosLoss, data: &[f32], usage: wgpu::BufferUsages) -> wgpu::Buffer {
    engine
        .context()
        .device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("test buffer"),
            contents: bytemuck::cast_slice(data),
            usage,
        })
}

/// `(N_g, Z_g)` at byte `at` of a buffer filled with `-7` elsewhere (so that
/// reading the wrong place shows), `STORAGE | COPY_DST`.
fn denominators_buffer(engine: &FcosLoss, at: u64, d: [f32; 2]) -> wgpu::Buffer {
    let mut data = vec![-7.0f32; at as usize / 4 + 2 + 3];
    data[at as usize / 4..at as usize / 4 + 2].copy_from_slice(&d);
    buffer_with(
        engine,
        &data,
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
    )
}

fn storage_alignment(engine: &FcosLoss) -> u64 {
    engine.context().limits.min_storage_buffer_offset_alignment as u64
}

/// Every raw per-image sum and count of a result as bits, for bitwise comparisons.
fn sums_bits(l: &Losses) -> Vec<u64> {
    let s = &l.sums;
    s.cls
        .iter()
        .chain(&s.cnt)
        .chain(&s.reg)
        .chain(&s.reg_w)
        .chain(&s.ctr)
        .map(|x| x.to_bits())
        .chain(s.num_pos.iter().map(|&n| n as u64))
        .collect()
}

/// `got` equals `want` to `1e-12` relative in every per-image and normalised loss.
fn assert_losses_equal(what: &str, got: &Losses, want: &Losses) {
    let pairs = got
        .cls
        .iter()
        .chain(&got.cnt)
        .chain(&got.reg)
        .chain([&got.cls_loss, &got.cnt_loss, &got.reg_loss, &got.total])
        .zip(want.cls.iter().chain(&want.cnt).chain(&want.reg).chain([
            &want.cls_loss,
            &want.cnt_loss,
            &want.reg_loss,
            &want.total,
        ]));
    for (i, (&a, &b)) in pairs.enumerate() {
        assert!(
            (a - b).abs() <= 1e-12 * b.abs(),
            "{what}: value {i}: {a} vs {b}\n got  {got:?}\n want {want:?}"
        );
    }
    assert_eq!(got.num_pos, want.num_pos, "{what}");
}

/// `r` is an error of one of `kinds` (`"InvalidCall"`, `"Shape"`,
/// `"InvalidConfig"`) whose message contains `name`.
fn assert_error<T: std::fmt::Debug>(
    what: &str,
    r: Result<T, FcosError>,
    kinds: &[&str],
    name: &str,
) {
    let e = match r {
        Ok(v) => panic!("{what}: expected an error naming '{name}', got {v:?}"),
        Err(e) => e,
    };
    let kind = match &e {
        FcosError::InvalidCall(_) => "InvalidCall",
        FcosError::Shape { .. } => "Shape",
        FcosError::InvalidConfig(_) => "InvalidConfig",
        _ => "other",
    };
    assert!(
        kinds.contains(&kind),
        "{what}: expected {kinds:?}, got {kind}: {e}"
    );
    assert!(
        e.to_string().contains(name),
        "{what}: '{e}' does not name '{name}'"
    );
}

/// The values of `compute_device_global` and the gradients of
/// `forward_backward_device_global` with `(N_g, Z_g)` read from a buffer equal
/// those of the same values in a host `Global` config (the sums and gradients
/// bitwise; the losses, normalised on the host in f64, to 1e-12), whatever the
/// config's own values; other values in the buffer give other losses, equal to
/// a host config with those values, over the same sums.
#[test]
fn denominators_from_a_buffer_equal_the_same_values_from_the_config() {
    let b = batch();
    let levels = &b.levels;
    let mut engine = common::engine(global(1.0, 1.0, false));
    let ctx = engine.context().clone();
    let up = DeviceBatch::upload(&ctx.device, &b).unwrap();
    let grads = up.gradient_buffers(&ctx.device).unwrap();
    let read = |g: &fcos_loss::Heads<wgpu::Buffer>| -> Gradients {
        common::read_gradients(&ctx, levels, 3, CLASSES, &g.as_ref())
    };
    let at = storage_alignment(&engine);
    for weighted in [false, true] {
        let (n1, z1) = (37.5f32, 11.25f32);
        let (n2, z2) = (74.0f32, 3.0f32);
        let buf = denominators_buffer(&engine, at, [n1, z1]);
        let dd = DeviceDenominators {
            buffer: &buf,
            offset: at,
        };
        // From the config.
        engine.set_config(global(n1, z1, weighted)).unwrap();
        let want = engine.compute_device(levels, &up.inputs()).unwrap();
        let want_b = engine
            .forward_backward_device(levels, &up.inputs(), &grads.as_ref(), &WEIGHTS)
            .unwrap()
            .value;
        let want_g = read(&grads);
        let cpu = reference::losses(engine.config(), levels, &b.inputs()).unwrap();
        common::assert_close("config vs CPU", &want, &cpu);
        // From the buffer, the config's own values wrong on purpose.
        engine.set_config(global(5.0, 0.5, weighted)).unwrap();
        let what = format!("weighted {weighted}");
        let got = engine
            .compute_device_global(levels, &up.inputs(), &dd)
            .unwrap()
            .value;
        assert_eq!(sums_bits(&got), sums_bits(&want), "{what}: sums");
        assert_losses_equal(&format!("{what} forward"), &got, &want);
        let got_b = engine
            .forward_backward_device_global(levels, &up.inputs(), &grads.as_ref(), &WEIGHTS, &dd)
            .unwrap()
            .value;
        assert_eq!(
            sums_bits(&got_b),
            sums_bits(&want_b),
            "{what}: backward sums"
        );
        assert_losses_equal(&format!("{what} backward"), &got_b, &want_b);
        assert_eq!(read(&grads), want_g, "{what}: gradients");

        // Other values in the buffer: other losses, the same sums.
        ctx.queue
            .write_buffer(&buf, at, bytemuck::cast_slice(&[n2, z2]));
        let other = engine
            .compute_device_global(levels, &up.inputs(), &dd)
            .unwrap()
            .value;
        assert_eq!(sums_bits(&other), sums_bits(&want), "{what}: sums");
        assert_ne!(other.cls_loss, want.cls_loss, "{what}");
        assert_ne!(other.cnt_loss, want.cnt_loss, "{what}");
        assert_ne!(other.reg_loss, want.reg_loss, "{what}");
        let host_other = Losses::from_sums(want.sums.clone(), &global(n2, z2, weighted), None);
        assert_losses_equal(&format!("{what} other values"), &other, &host_other);
        let ratio = n1 as f64 / n2 as f64;
        assert!((other.cls_loss - want.cls_loss * ratio).abs() <= 1e-12 * other.cls_loss);
        // The gradients follow the new denominators: the class head scales by N1/N2.
        engine
            .forward_backward_device_global(levels, &up.inputs(), &grads.as_ref(), &WEIGHTS, &dd)
            .unwrap();
        let g2 = read(&grads);
        let scaled: Vec<Vec<f64>> = want_g
            .cls_logits
            .iter()
            .map(|v| v.iter().map(|&x| x as f64 * ratio).collect())
            .collect();
        let e = fcos_loss::max_tensor_error(&g2.cls_logits, &scaled);
        assert!(e <= 1e-6, "{what}: class gradients × N1/N2: {e:e}");
        assert_ne!(g2.reg_preds, want_g.reg_preds, "{what}");
    }
}

/// A denominators buffer at a misaligned offset, too short (from offset 0 and
/// from an aligned offset), without `STORAGE`, or given with a config that is not
/// `Global`: an error naming the "global denominators buffer", on both calls;
/// after each the engine gives the same results as before. A buffer exactly
/// `offset + 8` bytes long is accepted.
#[test]
fn bad_denominators_buffers_are_errors_that_name_them() {
    const NAME: &str = "global denominators buffer";
    let b = batch();
    let levels = &b.levels;
    let mut engine = common::engine(global(20.0, 6.0, true));
    let ctx = engine.context().clone();
    let up = DeviceBatch::upload(&ctx.device, &b).unwrap();
    let grads = up.gradient_buffers(&ctx.device).unwrap();
    let at = storage_alignment(&engine);
    let good_buf = denominators_buffer(&engine, at, [20.0, 6.0]);
    let good = DeviceDenominators {
        buffer: &good_buf,
        offset: at,
    };
    let baseline = engine
        .compute_device_global(levels, &up.inputs(), &good)
        .unwrap()
        .value;
    let baseline_b = engine
        .forward_backward_device_global(levels, &up.inputs(), &grads.as_ref(), &WEIGHTS, &good)
        .unwrap()
        .value;
    let baseline_g = common::read_gradients(&ctx, levels, 3, CLASSES, &grads.as_ref());
    let still_works = |engine: &FcosLoss, what: &str| {
        let l = engine
            .compute_device_global(levels, &up.inputs(), &good)
            .unwrap_or_else(|e| panic!("after {what}: {e}"))
            .value;
        assert_eq!(common::bits(&l), common::bits(&baseline), "after {what}");
        let l = engine
            .forward_backward_device_global(levels, &up.inputs(), &grads.as_ref(), &WEIGHTS, &good)
            .unwrap_or_else(|e| panic!("after {what}: {e}"))
            .value;
        assert_eq!(common::bits(&l), common::bits(&baseline_b), "after {what}");
        let g = common::read_gradients(&ctx, levels, 3, CLASSES, &grads.as_ref());
        assert_eq!(g, baseline_g, "after {what}");
    };
    let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
    let misaligned = if at > 4 { 4 } else { 2 };
    let long = buffer_with(&engine, &[20.0; 64 + 2], storage);
    let short = buffer_with(&engine, &[20.0], storage);
    let exact = buffer_with(&engine, &[20.0, 6.0], storage);
    let exact_at = denominators_buffer(&engine, at, [20.0, 6.0]);
    let no_storage = buffer_with(
        &engine,
        &[20.0, 6.0],
        wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
    );
    let cases: [(&str, DeviceDenominators, &[&str]); 4] = [
        (
            "a misaligned offset",
            DeviceDenominators {
                buffer: &long,
                offset: misaligned,
            },
            &["InvalidCall", "Shape"],
        ),
        (
            "a buffer of one f32",
            DeviceDenominators {
                buffer: &short,
                offset: 0,
            },
            &["Shape"],
        ),
        (
            "two f32 that end past the buffer",
            DeviceDenominators {
                buffer: &exact,
                offset: at,
            },
            &["Shape"],
        ),
        (
            "a buffer without STORAGE",
            DeviceDenominators {
                buffer: &no_storage,
                offset: 0,
            },
            &["InvalidCall"],
        ),
    ];
    for (what, dd, kinds) in cases {
        let r = engine.compute_device_global(levels, &up.inputs(), &dd);
        assert_error(what, r.map(|t| t.value), kinds, NAME);
        still_works(&engine, what);
        let r = engine.forward_backward_device_global(
            levels,
            &up.inputs(),
            &grads.as_ref(),
            &WEIGHTS,
            &dd,
        );
        assert_error(what, r.map(|t| t.value), kinds, NAME);
        still_works(&engine, what);
    }
    // Exactly offset + 8 bytes: accepted, at offset 0 and at an aligned offset.
    for (buffer, offset) in [(&exact, 0), (&exact_at, at)] {
        let dd = DeviceDenominators { buffer, offset };
        let l = engine
            .compute_device_global(levels, &up.inputs(), &dd)
            .unwrap()
            .value;
        assert_eq!(common::bits(&l), common::bits(&baseline));
    }
    // A config that is not Global.
    for norm in [Normalization::PerImage, Normalization::Batch] {
        let what = format!("normalisation {}", norm.name());
        engine
            .set_config(LossConfig::new(CLASSES as u32).with_normalization(norm))
            .unwrap();
        let r = engine.compute_device_global(levels, &up.inputs(), &good);
        assert_error(&what, r.map(|t| t.value), &["InvalidCall"], NAME);
        let r = engine.forward_backward_device_global(
            levels,
            &up.inputs(),
            &grads.as_ref(),
            &WEIGHTS,
            &good,
        );
        assert_error(&what, r.map(|t| t.value), &["InvalidCall"], NAME);
        // The engine works in that mode ...
        let l = engine.compute_device(levels, &up.inputs()).unwrap();
        let cpu = reference::losses(engine.config(), levels, &b.inputs()).unwrap();
        common::assert_close(&what, &l, &cpu);
        // ... and back in Global.
        engine.set_config(global(20.0, 6.0, true)).unwrap();
        still_works(&engine, &what);
    }
}

/// `count_device` with an output buffer too small (by one f32, or from its
/// offset), at an offset that is not a multiple of 4, or without `COPY_DST`, and
/// with a `cnt_targets` buffer without `STORAGE` or one f32 short: an error
/// naming the buffer, nothing written, and the engine counts (and computes) as
/// before. The host's `Counts::of` refuses targets of the wrong length.
#[test]
fn bad_counting_calls_are_errors_that_name_the_buffer() {
    let b = batch();
    let levels = &b.levels;
    let engine = common::engine(LossConfig::new(CLASSES as u32));
    let ctx = engine.context().clone();
    let up = DeviceBatch::upload(&ctx.device, &b).unwrap();
    let targets = up.buffer(Input::CntTargets);
    let host = Counts::of(levels, 3, &b.cnt_targets).unwrap();
    assert_eq!(host.num_pos[1], 0);
    let bytes = 8 * (1 + 3);
    let out_usage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
    let sentinel = vec![-3.0f32; bytes / 4 + 4];
    let out = buffer_with(&engine, &sentinel, out_usage);
    let counted = engine
        .count_device(levels, 3, targets, Some((&out, 16)))
        .unwrap();
    assert_eq!(counted.num_pos, host.num_pos);
    let written = common::read_buffer(&ctx, &out);
    assert_eq!(&written[..4], &[-3.0; 4], "before the offset");
    let (n, _) = host.totals();
    assert_eq!(written[4] as f64, n);
    let baseline = engine.compute(levels, &b.inputs()).unwrap();
    let still_works = |what: &str| {
        let c = engine
            .count_device(levels, 3, targets, None)
            .unwrap_or_else(|e| panic!("after {what}: {e}"));
        assert_eq!(c, counted, "after {what}");
        let l = engine.compute(levels, &b.inputs()).unwrap();
        assert_eq!(common::bits(&l), common::bits(&baseline), "after {what}");
    };

    let too_small = buffer_with(&engine, &sentinel[..bytes / 4 - 1], out_usage);
    let exact = buffer_with(&engine, &sentinel[..bytes / 4], out_usage);
    let fresh = buffer_with(&engine, &sentinel, out_usage);
    let no_copy_dst = buffer_with(
        &engine,
        &sentinel,
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    );
    let outs: [(&str, &wgpu::Buffer, u64, &[&str]); 4] = [
        ("an output one f32 too small", &too_small, 0, &["Shape"]),
        ("an output too small from its offset", &exact, 4, &["Shape"]),
        (
            "an output offset not a multiple of 4",
            &fresh,
            2,
            &["Shape", "InvalidCall"],
        ),
        (
            "an output without COPY_DST",
            &no_copy_dst,
            0,
            &["InvalidCall"],
        ),
    ];
    for (what, buf, at, kinds) in outs {
        let r = engine.count_device(levels, 3, targets, Some((buf, at)));
        assert_error(what, r, kinds, "counts output buffer");
        if buf.usage().contains(wgpu::BufferUsages::COPY_SRC) {
            let after = common::read_buffer(&ctx, buf);
            assert!(
                after.iter().all(|&x| x == -3.0),
                "{what}: written {after:?}"
            );
        }
        still_works(what);
    }
    // Exactly the bytes needed, at offset 0: accepted.
    let c = engine
        .count_device(levels, 3, targets, Some((&exact, 0)))
        .unwrap();
    assert_eq!(c, counted);

    let no_storage = unusual_input_buffer(
        &ctx.device,
        &b,
        Input::CntTargets,
        Unusual::Usage(wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST),
    );
    let one_short = unusual_input_buffer(&ctx.device, &b, Input::CntTargets, Unusual::OneShort);
    for (what, buf, kinds) in [
        ("cnt_targets without STORAGE", &no_storage, &["InvalidCall"]),
        ("cnt_targets one f32 short", &one_short, &["Shape"]),
    ] {
        let r = engine.count_device(levels, 3, buf, Some((&out, 16)));
        assert_error(what, r, kinds, "cnt_targets buffer");
        still_works(what);
    }
    // On the host: the wrong number of targets.
    let r = Counts::of(levels, 3, &b.cnt_targets[1..]);
    assert_error("host counts", r, &["Shape"], "cnt_targets");
    let r = Counts::of(levels, 2, &b.cnt_targets);
    assert_error("host counts", r, &["Shape"], "cnt_targets");
}

/// Non-finite or negative `Global` denominators in the config: `InvalidConfig`
/// naming the denominator, from `validate`, `FcosLoss::new`, `set_config` (which
/// keeps the engine's config and results), the CPU reference and its gradients.
/// Zero is allowed (the floors apply).
#[test]
fn bad_global_denominators_in_the_config_are_invalid() {
    let b = batch();
    let levels = &b.levels;
    let good = global(12.0, 4.0, true);
    let mut engine = common::engine(good.clone());
    let baseline = engine.compute(levels, &b.inputs()).unwrap();
    let bad_values = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -1.0, -1e-30];
    let mut first = true;
    for v in bad_values {
        for (name, n, z) in [("num_pos (N_g)", v, 4.0), ("ctr (Z_g)", 12.0, v)] {
            let what = format!("{name} = {v}");
            let bad = global(n, z, true);
            assert_error(&what, bad.validate(), &["InvalidConfig"], name);
            assert_error(
                &what,
                Denominators { num_pos: n, ctr: z }.check(),
                &["InvalidConfig"],
                name,
            );
            if first {
                // Opening a device is slow on some adapters: once.
                assert_error(&what, FcosLoss::new(bad.clone()), &["InvalidConfig"], name);
                first = false;
            }
            assert_error(
                &what,
                engine.set_config(bad.clone()),
                &["InvalidConfig"],
                name,
            );
            assert_eq!(engine.config(), &good, "{what}: the config changed");
            let l = engine.compute(levels, &b.inputs()).unwrap();
            assert_eq!(common::bits(&l), common::bits(&baseline), "{what}");
            assert_error(
                &what,
                reference::losses(&bad, levels, &b.inputs()),
                &["InvalidConfig"],
                name,
            );
            assert_error(
                &what,
                reference::grad::gradients(&bad, levels, &b.inputs(), &WEIGHTS),
                &["InvalidConfig"],
                name,
            );
        }
    }
    // Zero denominators are valid: max(0, 1) and max(0, 1e-6).
    let zero = global(0.0, 0.0, true);
    engine.set_config(zero.clone()).unwrap();
    let l = engine.compute(levels, &b.inputs()).unwrap();
    let cpu = reference::losses(&zero, levels, &b.inputs()).unwrap();
    common::assert_close("zero denominators", &l, &cpu);
    let (s_cls, s_regw) = (
        l.sums.cls.iter().sum::<f64>(),
        l.sums.reg_w.iter().sum::<f64>(),
    );
    assert_eq!(l.cls_loss, s_cls);
    assert!((l.reg_loss - s_regw / 1e-6).abs() <= 1e-12 * l.reg_loss);
}

/// A device whose storage bindings are 64 KiB: the targets of 12 images (and
/// the class logits) do not fit one binding, so the counting and normalisation
/// passes run over split bindings. Counts (host and GPU), and every mode's losses
/// and gradients on the host and device paths, match the reference.
#[test]
fn split_bindings_in_every_mode() {
    let (device, queue) = common::app_device_with(|mut l| {
        l.max_storage_buffer_binding_size = 64 << 10;
        l
    });
    let strides = [8, 16, 32, 64, 128];
    let levels = Levels::from_image(256, 320, &strides).unwrap();
    let mut spec = SyntheticSpec::new(12, 3);
    spec.pos_frac = vec![0.05, 0.0, 0.3, 0.01];
    spec.logit_shift = -2.0;
    spec.seed = 64;
    let b = synthetic::generate(&levels, &strides, &spec).unwrap();
    assert!(4 * b.cnt_targets.len() > 64 << 10);
    let mut engine = FcosLoss::from_device(device.clone(), queue, LossConfig::new(3)).unwrap();
    assert_eq!(
        engine.context().limits.max_storage_buffer_binding_size,
        64 << 10
    );
    let up = DeviceBatch::upload(&device, &b).unwrap();
    let grads = up.gradient_buffers(&device).unwrap();
    let host = Counts::of(&levels, 12, &b.cnt_targets).unwrap();
    let gpu = engine
        .count_device(&levels, 12, up.buffer(Input::CntTargets), None)
        .unwrap();
    assert_eq!(gpu.num_pos, host.num_pos);
    for (g, h) in gpu.ctr.iter().zip(&host.ctr) {
        assert!((g - h).abs() <= 1e-6 * h.abs(), "Z {g} vs {h}");
    }
    let (n, z) = host.totals();
    let d = Denominators {
        num_pos: (n * 0.75) as f32,
        ctr: (z * 1.5) as f32,
    };
    for norm in [
        Normalization::PerImage,
        Normalization::Batch,
        Normalization::Global(d),
    ] {
        for weighted in [false, true] {
            let what = format!("{norm:?} weighted {weighted}");
            let config = LossConfig::new(3)
                .with_normalization(norm)
                .with_centerness_weighted_reg(weighted);
            engine.set_config(config.clone()).unwrap();
            let (cpu, cg) =
                reference::grad::gradients(&config, &levels, &b.inputs(), &WEIGHTS).unwrap();
            let (hl, hg) = engine
                .forward_backward(&levels, &b.inputs(), &WEIGHTS)
                .unwrap();
            common::assert_close(&format!("{what} host"), &hl, &cpu);
            common::assert_heads(&format!("{what} host"), &hg, &cg, 1e-4);
            let dl = engine
                .forward_backward_device(&levels, &up.inputs(), &grads.as_ref(), &WEIGHTS)
                .unwrap()
                .value;
            common::assert_close(&format!("{what} device"), &dl, &cpu);
            let dg = common::read_gradients(engine.context(), &levels, 12, 3, &grads.as_ref());
            common::assert_heads(&format!("{what} device"), &dg, &cg, 1e-4);
            let fl = engine.compute(&levels, &b.inputs()).unwrap();
            common::assert_close(&format!("{what} forward"), &fl, &cpu);
        }
    }
}

/// Levels that hold no positions: the counting phase gives `B` zero counts on
/// the host (`Counts::of`) and on the GPU (`count_device`, which writes `1 + B`
/// zero pairs), and the all-reduce of such replicas is zero.
#[test]
fn counts_of_levels_without_positions_are_zeros() {
    let levels = Levels::from_shapes(&[(0, 3), (2, 0)]).unwrap();
    let b = synthetic::generate(&levels, &[8, 16], &SyntheticSpec::new(2, CLASSES)).unwrap();
    assert!(b.cnt_targets.is_empty());
    let zeros = Counts {
        num_pos: vec![0; 2],
        ctr: vec![0.0; 2],
    };
    let host = Counts::of(&levels, 2, &b.cnt_targets).unwrap();
    assert_eq!(host, zeros, "host counts of 2 images without positions");
    let engine = common::engine(LossConfig::new(CLASSES as u32));
    let targets = buffer_with(&engine, &[0.0], wgpu::BufferUsages::STORAGE);
    let out = buffer_with(
        &engine,
        &[-3.0; 8],
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
    );
    let gpu = engine
        .count_device(&levels, 2, &targets, Some((&out, 8)))
        .unwrap();
    assert_eq!(gpu, zeros, "GPU counts");
    let written = common::read_buffer(engine.context(), &out);
    assert_eq!(written, [-3.0, -3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    let d = Denominators::mean_of(&[host, gpu]);
    assert_eq!((d.num_pos, d.ctr), (0.0, 0.0));
}
