//! Data-parallel training simulated (issue 13, docs/contract.md §8): a batch of 8
//! split over 2 and over 4 replicas, each replica on its own engine (its own
//! device; once, engines sharing one device). Each replica counts its positives
//! and centerness targets (on the host and on the GPU, which must agree), the
//! counts are all-reduced on the host (the mean over replicas, mmdet's
//! `reduce_mean`), and each replica runs `Global` with the result. The mean of
//! the replicas' objectives must equal the whole batch's `Batch` objective on one
//! engine, and their gradients, scaled by 1/R and put side by side, the whole
//! batch's gradients: on the host path, and on the device path with the counts
//! written into device buffers and the all-reduced denominators read from one.

mod common;

use fcos_loss::synthetic::{self, SyntheticSpec};
use fcos_loss::{
    reference, Batch, Counts, Denominators, DeviceBatch, DeviceDenominators, FcosLoss, Gradients,
    Heads, Input, Levels, LossConfig, LossWeights, Losses, Normalization, RegLoss,
};

/// The equalities hold within this, relative (losses) and relative to each
/// tensor's largest magnitude (gradients).
const TOL: f64 = 1e-5;

const CLASSES: usize = 6;
const STRIDES: [u32; 4] = [8, 16, 32, 64];

/// The whole batch: 8 images of 48×80 (83 positions), images 0, 1 and 7 without
/// positives, so that replica 0 of 4 has none at all; image 5 all positive.
fn whole_batch() -> Batch {
    let levels = Levels::from_image(48, 80, &STRIDES).unwrap();
    let spec = SyntheticSpec {
        batch: 8,
        classes: CLASSES,
        pos_frac: vec![0.0, 0.0, 0.15, 0.4, 0.05, 1.0, 0.25, 0.0],
        logit_scale: 1.5,
        logit_shift: -2.0,
        seed: 0x0da7_a9a2,
    };
    synthetic::generate(&levels, &STRIDES, &spec).unwrap()
}

fn config(norm: Normalization, weighted: bool, reg: RegLoss) -> LossConfig {
    common::mode_config(CLASSES, &STRIDES, norm, weighted, reg)
}

const WEIGHTS: LossWeights = common::UNEVEN_WEIGHTS;

/// The four losses a replica's objective is made of.
fn objectives(l: &Losses) -> [(&'static str, f64); 4] {
    [
        ("total", l.total),
        ("cls_loss", l.cls_loss),
        ("cnt_loss", l.cnt_loss),
        ("reg_loss", l.reg_loss),
    ]
}

/// The mean of the replicas' objectives against the whole batch's, and the
/// replicas' gradients (scaled by 1/R, images side by side) against the whole
/// batch's.
fn assert_replicas_match(
    what: &str,
    replicas: &[(Losses, Gradients)],
    whole: &(Losses, Gradients),
) {
    let r = replicas.len() as f64;
    for (i, (name, want)) in objectives(&whole.0).into_iter().enumerate() {
        let mean = replicas
            .iter()
            .map(|(l, _)| objectives(l)[i].1)
            .sum::<f64>()
            / r;
        let d = (mean - want).abs() / want.abs();
        assert!(
            want > 0.0 && d <= TOL,
            "{what}: mean over {r} replicas of {name} = {mean} vs the whole batch's {want} (relative {d:e})"
        );
    }
    let grads: Vec<&Gradients> = replicas.iter().map(|(_, g)| g).collect();
    let joined = concat(&grads, 1.0 / r);
    for (h, want) in whole.1.iter() {
        assert!(
            want.iter().flatten().any(|&x| x != 0.0),
            "{what}: {h} all zero"
        );
        let e = fcos_loss::max_tensor_error(&joined[h], want);
        assert!(
            e <= TOL,
            "{what}: {h} gradients of the replicas (× 1/{r}, side by side) vs the whole batch's: {e:e}"
        );
    }
}

fn concat(parts: &[&Gradients], scale: f64) -> Heads<Vec<Vec<f64>>> {
    let owned: Vec<Gradients> = parts.iter().map(|&g| g.clone()).collect();
    common::concat_images(&owned, scale)
}

/// `a` and `b` within `1e-6` relative (exactly equal when `b` is 0).
fn close_ctr(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * b.abs()
}

/// The counts of a replica on the host and the GPU, and the GPU's output buffer.
fn check_counts(what: &str, host: &Counts, device: &Counts, written: &[f32]) {
    assert_eq!(host.num_pos, device.num_pos, "{what}: positives");
    for (b, (&h, &d)) in host.ctr.iter().zip(&device.ctr).enumerate() {
        assert!(close_ctr(d, h), "{what}: Z[{b}] GPU {d} vs host {h}");
    }
    // The buffer: the totals, then (n_b, Z_b) per image, as the call returned them.
    let (n, z) = device.totals();
    assert_eq!(written.len(), 2 * (1 + device.num_pos.len()), "{what}");
    assert_eq!(written[0] as f64, n, "{what}: written Σn");
    assert!(
        close_ctr(written[1] as f64, z),
        "{what}: written ΣZ {} vs {z}",
        written[1]
    );
    for (b, pair) in written[2..].chunks(2).enumerate() {
        assert_eq!(pair[0] as u32, device.num_pos[b], "{what}: written n[{b}]");
        assert_eq!(pair[1] as f64, device.ctr[b], "{what}: written Z[{b}]");
    }
}

/// A buffer for one replica's counts at byte `at` (`STORAGE`, so the loss call
/// can read the all-reduced denominators from it; `COPY_DST` for the counts;
/// `COPY_SRC` to read them back).
fn counts_buffer(engine: &FcosLoss, at: u64, batch: usize) -> wgpu::Buffer {
    engine
        .context()
        .device
        .create_buffer(&wgpu::BufferDescriptor {
            label: Some("replica counts"),
            size: at + 8 * (1 + batch as u64),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
}

/// One data-parallel step over `replicas` (one engine each) against `whole` (one
/// engine, the whole batch), in the four (weighted, box loss) settings, on the
/// host path and on the device path.
fn simulate(label: &str, whole: &mut FcosLoss, replicas: &mut [FcosLoss]) {
    let batch = whole_batch();
    let levels = batch.levels.clone();
    let r = replicas.len();
    let per = batch.batch / r;
    let parts: Vec<Batch> = (0..r)
        .map(|i| common::sub_batch(&batch, i * per..(i + 1) * per))
        .collect();
    let whole_up = DeviceBatch::upload(&whole.context().device, &batch).unwrap();
    let whole_grads = whole_up.gradient_buffers(&whole.context().device).unwrap();
    let ups: Vec<DeviceBatch> = replicas
        .iter()
        .zip(&parts)
        .map(|(e, p)| DeviceBatch::upload(&e.context().device, p).unwrap())
        .collect();
    let grad_bufs: Vec<Heads<wgpu::Buffer>> = replicas
        .iter()
        .zip(&ups)
        .map(|(e, u)| u.gradient_buffers(&e.context().device).unwrap())
        .collect();
    // Counting phase, on the host and on each replica's GPU (into a buffer at an
    // offset the loss call can read denominators from).
    let host_counts: Vec<Counts> = parts
        .iter()
        .map(|p| Counts::of(&levels, p.batch, &p.cnt_targets).unwrap())
        .collect();
    assert!(
        r != 4 || host_counts[0].num_pos.iter().all(|&n| n == 0),
        "replica 0 of 4 should have no positives"
    );
    let mut device_counts = Vec::new();
    let mut count_bufs = Vec::new();
    for (i, (e, u)) in replicas.iter().zip(&ups).enumerate() {
        let at = e.context().limits.min_storage_buffer_offset_alignment as u64;
        let buf = counts_buffer(e, at, per);
        let c = e
            .count_device(&levels, per, u.buffer(Input::CntTargets), Some((&buf, at)))
            .unwrap();
        let written = common::read_buffer(e.context(), &buf);
        let written = &written[at as usize / 4..];
        check_counts(
            &format!("{label} replica {i}"),
            &host_counts[i],
            &c,
            written,
        );
        device_counts.push(c);
        count_bufs.push((buf, at));
    }
    // The all-reduce, on the host.
    let dens = Denominators::mean_of(&host_counts);
    let dens_gpu = Denominators::mean_of(&device_counts);
    assert_eq!(dens.num_pos, dens_gpu.num_pos, "{label}: N_g");
    assert!(
        close_ctr(dens_gpu.ctr as f64, dens.ctr as f64),
        "{label}: Z_g"
    );
    let (n_all, z_all) = Counts::of(&levels, 8, &batch.cnt_targets).unwrap().totals();
    assert_eq!(
        dens.num_pos as f64,
        n_all / r as f64,
        "{label}: N_g = Σn / R"
    );
    assert!(
        close_ctr(dens.ctr as f64, z_all / r as f64),
        "{label}: Z_g = ΣZ / R"
    );

    for weighted in [false, true] {
        for reg in [RegLoss::Iou, RegLoss::Giou] {
            let what = format!("{label}, weighted {weighted}, {reg:?}");
            let batch_cfg = config(Normalization::Batch, weighted, reg);
            whole.set_config(batch_cfg.clone()).unwrap();
            // Host path.
            let want = whole
                .forward_backward(&levels, &batch.inputs(), &WEIGHTS)
                .unwrap();
            if weighted {
                // Weighted Batch box loss: Σ S_regw / Σ Z.
                let (s, (_, z)) = (&want.0.sums, want.0.sums.totals());
                let reg_w = s.reg_w.iter().sum::<f64>() / z;
                assert!((want.0.reg_loss - reg_w).abs() <= 1e-12 * reg_w, "{what}");
            }
            let global = config(Normalization::Global(dens), weighted, reg);
            let got: Vec<(Losses, Gradients)> = replicas
                .iter_mut()
                .zip(&parts)
                .map(|(e, p)| {
                    e.set_config(global.clone()).unwrap();
                    e.forward_backward(&levels, &p.inputs(), &WEIGHTS).unwrap()
                })
                .collect();
            assert_replicas_match(&format!("{what}, host path"), &got, &want);
            // The same identity in the CPU reference, to f64 rounding.
            let cpu_whole = reference::losses(&batch_cfg, &levels, &batch.inputs()).unwrap();
            let cpu_mean = parts
                .iter()
                .map(|p| {
                    reference::losses(&global, &levels, &p.inputs())
                        .unwrap()
                        .total
                })
                .sum::<f64>()
                / r as f64;
            let d = (cpu_mean - cpu_whole.total).abs() / cpu_whole.total;
            assert!(
                d <= 1e-7,
                "{what}: CPU reference {cpu_mean} vs {} ({d:e})",
                cpu_whole.total
            );

            // Device path: the whole batch's gradients into its buffers; each
            // replica's denominators all-reduced into its counts buffer, in place.
            let whole_dev = whole
                .forward_backward_device(
                    &levels,
                    &whole_up.inputs(),
                    &whole_grads.as_ref(),
                    &WEIGHTS,
                )
                .unwrap()
                .value;
            let whole_dev_g =
                common::read_gradients(whole.context(), &levels, 8, CLASSES, &whole_grads.as_ref());
            let totals: Vec<[f32; 2]> = replicas
                .iter()
                .zip(&count_bufs)
                .map(|(e, (buf, at))| {
                    let v = common::read_buffer(e.context(), buf);
                    [v[*at as usize / 4], v[*at as usize / 4 + 1]]
                })
                .collect();
            let mean =
                |k: usize| (totals.iter().map(|t| t[k] as f64).sum::<f64>() / r as f64) as f32;
            let reduced = [mean(0), mean(1)];
            // The host's values in the config are ignored on this path: make them wrong.
            let decoy = config(
                Normalization::Global(Denominators {
                    num_pos: 1e6,
                    ctr: 1e6,
                }),
                weighted,
                reg,
            );
            let mut got = Vec::new();
            for (i, e) in replicas.iter_mut().enumerate() {
                let (buf, at) = &count_bufs[i];
                e.context()
                    .queue
                    .write_buffer(buf, *at, bytemuck::cast_slice(&reduced));
                e.set_config(decoy.clone()).unwrap();
                let dd = DeviceDenominators {
                    buffer: buf,
                    offset: *at,
                };
                let l = e
                    .forward_backward_device_global(
                        &levels,
                        &ups[i].inputs(),
                        &grad_bufs[i].as_ref(),
                        &WEIGHTS,
                        &dd,
                    )
                    .unwrap()
                    .value;
                let g = common::read_gradients(
                    e.context(),
                    &levels,
                    per,
                    CLASSES,
                    &grad_bufs[i].as_ref(),
                );
                got.push((l, g));
                // Restore the counts for the next setting's all-reduce.
                e.count_device(
                    &levels,
                    per,
                    ups[i].buffer(Input::CntTargets),
                    Some((buf, *at)),
                )
                .unwrap();
            }
            assert_replicas_match(
                &format!("{what}, device path"),
                &got,
                &(whole_dev, whole_dev_g),
            );
        }
    }
}

/// Two replicas and four, each on an engine with a device of its own
/// (`FcosLoss::new` opens a wgpu instance and a device per engine), against a
/// fifth engine holding the whole batch.
#[test]
fn replicas_on_separate_devices_match_the_whole_batch() {
    let mut whole = common::engine(LossConfig::new(1));
    let mut engines: Vec<FcosLoss> = (0..4).map(|_| common::engine(LossConfig::new(1))).collect();
    simulate("2 replicas", &mut whole, &mut engines[..2]);
    simulate("4 replicas", &mut whole, &mut engines);
}

/// Four replicas whose engines share one application device
/// (`FcosLoss::from_device` with clones of one device and queue), the whole batch
/// on a fifth engine on that device too.
#[test]
fn replicas_sharing_one_device_match_the_whole_batch() {
    let (device, queue) = common::app_device_with(|l| l);
    let open = || FcosLoss::from_device(device.clone(), queue.clone(), LossConfig::new(1)).unwrap();
    let mut whole = open();
    let mut engines: Vec<FcosLoss> = (0..4).map(|_| open()).collect();
    assert!(engines.iter().all(|e| e.context().device == device));
    simulate("4 replicas on one device", &mut whole, &mut engines);
}
