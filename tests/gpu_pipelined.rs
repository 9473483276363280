//! Calls that do not block: recorded into the caller's encoder and read later
//! (`record_device`, `record_ranges`, `read_losses`, `try_read_losses`), and the
//! `async` calls from host slices. 100 steps recorded back to back with one read
//! at the end equal 100 blocking calls bit for bit; the results can be read on the
//! GPU in the same submission; the ring's errors; a call never submitted is an
//! error, not a hang; bad values are named when read; pollster and tokio.
#![cfg(feature = "casefile")]

mod common;

use std::future::Future;
use std::sync::Arc;

use fcos_loss::{Batch, DeviceBatch, FcosError, FcosLoss, Head, Input, LossConfig, LossWeights};

/// The golden case with its class logits shifted by `step / 10` (a different
/// loss each step).
fn step_batch(case: &Batch, step: usize) -> Batch {
    let mut b = case.clone();
    for part in 0..b.levels.len() {
        for x in common::part_mut(&mut b, Input::ClsLogits, part).iter_mut() {
            *x += step as f32 / 10.0;
        }
    }
    b
}

fn encoder(engine: &FcosLoss) -> wgpu::CommandEncoder {
    engine
        .context()
        .device
        .create_command_encoder(&Default::default())
}

fn submit(engine: &FcosLoss, e: wgpu::CommandEncoder) {
    engine.context().queue.submit([e.finish()]);
}

#[test]
fn a_hundred_recorded_steps_equal_a_hundred_blocking_calls() {
    let case = common::golden("odd_b3_c7_100x150").batch;
    let levels = case.levels.clone();
    let mut engine = common::app_engine(LossConfig::new(7));
    engine.set_ring_size(100).unwrap();
    let device = engine.context().device.clone();
    let batches: Vec<Batch> = (0..100).map(|s| step_batch(&case, s)).collect();
    let bufs: Vec<DeviceBatch> = batches
        .iter()
        .map(|b| DeviceBatch::upload(&device, b).unwrap())
        .collect();
    // Every fourth step also writes gradients, into buffers of its own.
    let grads: Vec<Option<fcos_loss::Heads<wgpu::Buffer>>> = bufs
        .iter()
        .enumerate()
        .map(|(s, b)| (s % 4 == 0).then(|| b.gradient_buffers(&device).unwrap()))
        .collect();
    let grad_refs: Vec<Option<fcos_loss::DeviceGradients>> = grads
        .iter()
        .map(|g| g.as_ref().map(|g| g.as_ref()))
        .collect();
    let weights = LossWeights::default();
    let inputs: Vec<_> = bufs.iter().map(|b| b.inputs()).collect();
    let mut enc = encoder(&engine);
    let pending: Vec<_> = (0..100)
        .map(|s| {
            engine
                .record_device(
                    &mut enc,
                    &levels,
                    &inputs[s],
                    grad_refs[s].as_ref(),
                    &weights,
                )
                .unwrap()
        })
        .collect();
    submit(&engine, enc);
    let got: Vec<_> = pending
        .iter()
        .map(|p| pollster::block_on(engine.read_losses(p)).unwrap())
        .collect();
    let ctx = engine.context().clone();
    for s in 0..100 {
        let want = match &grads[s] {
            None => engine.compute_device(&levels, &inputs[s]).unwrap(),
            Some(g) => {
                let recorded = common::read_gradients(&ctx, &levels, 3, 7, &g.as_ref());
                let fresh = bufs[s].gradient_buffers(&device).unwrap();
                let want = engine
                    .forward_backward_device(&levels, &inputs[s], &fresh.as_ref(), &weights)
                    .unwrap()
                    .value;
                let blocking = common::read_gradients(&ctx, &levels, 3, 7, &fresh.as_ref());
                for h in Head::ALL {
                    assert_eq!(
                        common::bits_of(&recorded[h]),
                        common::bits_of(&blocking[h]),
                        "step {s}: {h}"
                    );
                }
                want
            }
        };
        assert_eq!(common::bits(&got[s]), common::bits(&want), "step {s}");
    }
    // Different steps, different losses: nothing was read twice.
    assert_ne!(got[0].total, got[99].total);
}

#[test]
fn ranged_calls_record_and_the_results_are_readable_on_the_gpu() {
    let case = common::golden("voc_b2_c20_512x512").batch;
    let levels = case.levels.clone();
    let engine = common::app_engine(LossConfig::new(20));
    let ctx = engine.context().clone();
    let bufs = DeviceBatch::upload(&ctx.device, &case).unwrap();
    // Each level of each head, and each target, in a buffer of its own.
    let store = |data: &[f32]| {
        let buf = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("a tensor of its own"),
            size: (4 * data.len() as u64).max(4),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        ctx.queue.write_buffer(&buf, 0, bytemuck::cast_slice(data));
        buf
    };
    let host = case.inputs();
    let heads: Vec<Vec<wgpu::Buffer>> = Head::ALL
        .iter()
        .map(|h| host.parts(h.input()).iter().map(|p| store(p)).collect())
        .collect();
    let targets: Vec<wgpu::Buffer> = [Input::ClsTargets, Input::CntTargets, Input::RegTargets]
        .iter()
        .map(|&t| store(&case.packed(t)))
        .collect();
    let ranges = |k: usize| heads[k].iter().map(|b| b.into()).collect::<Vec<_>>();
    let inputs = fcos_loss::RangedInputs {
        dtype: fcos_loss::Dtype::F32,
        batch: case.batch,
        cls_logits: ranges(0),
        cnt_logits: ranges(1),
        reg_preds: ranges(2),
        cls_targets: (&targets[0]).into(),
        cnt_targets: (&targets[1]).into(),
        reg_targets: (&targets[2]).into(),
    };
    let want = engine.compute_device(&levels, &bufs.inputs()).unwrap();
    let weights = LossWeights::default();
    let mut enc = encoder(&engine);
    let p = engine
        .record_ranges(&mut enc, &levels, &inputs, None, &weights)
        .unwrap();
    // Work recorded after the call, in the same submission, reads its results.
    let results = p.results().expect("results on the device");
    let mine = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("the app's copy"),
        size: results.size,
        usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    enc.copy_buffer_to_buffer(results.buffer, results.offset, &mine, 0, results.size);
    submit(&engine, enc);
    let got = pollster::block_on(engine.read_losses(&p)).unwrap();
    assert_eq!(common::bits(&got), common::bits(&want));
    let words = common::read_buffer(&ctx, &mine);
    for b in 0..case.batch {
        let rec = &words[8 * b..8 * b + 8];
        assert_eq!(f64::from(rec[0]), got.sums.cls[b], "S_cls of image {b}");
        assert_eq!(rec[5].to_bits(), got.num_pos[b], "n of image {b}");
    }
}

#[test]
fn try_read_polls_until_done() {
    let case = common::golden("single_b1_c1_64x64").batch;
    let engine = common::app_engine(LossConfig::new(1));
    let bufs = DeviceBatch::upload(&engine.context().device, &case).unwrap();
    let want = engine.compute_device(&case.levels, &bufs.inputs()).unwrap();
    let weights = LossWeights::default();
    let mut enc = encoder(&engine);
    let p = engine
        .record_device(&mut enc, &case.levels, &bufs.inputs(), None, &weights)
        .unwrap();
    submit(&engine, enc);
    let start = std::time::Instant::now();
    let got = loop {
        if let Some(l) = engine.try_read_losses(&p).unwrap() {
            break l;
        }
        assert!(start.elapsed().as_secs() < 60, "no result within 60 s");
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    assert_eq!(common::bits(&got), common::bits(&want));
    // Read once only.
    let e = engine.try_read_losses(&p).unwrap_err();
    assert!(e.to_string().contains("already read"), "{e}");
}

#[test]
fn the_ring_and_unsubmitted_calls_give_errors_not_hangs() {
    let case = common::golden("single_b1_c1_64x64").batch;
    let levels = case.levels.clone();
    let mut engine = common::app_engine(LossConfig::new(1));
    engine.set_ring_size(2).unwrap();
    let bufs = DeviceBatch::upload(&engine.context().device, &case).unwrap();
    let inputs = bufs.inputs();
    let weights = LossWeights::default();
    let want = engine.compute_device(&levels, &inputs).unwrap();
    let mut enc = encoder(&engine);
    let a = engine
        .record_device(&mut enc, &levels, &inputs, None, &weights)
        .unwrap();
    let b = engine
        .record_device(&mut enc, &levels, &inputs, None, &weights)
        .unwrap();
    // A third call has no slot.
    let e = engine
        .record_device(&mut enc, &levels, &inputs, None, &weights)
        .unwrap_err();
    assert!(matches!(e, FcosError::InvalidCall(_)), "{e}");
    assert!(e.to_string().contains("all 2 result slots"), "{e}");
    // Not submitted yet: an error, not a wait, by either read.
    let e = pollster::block_on(engine.read_losses(&a)).unwrap_err();
    assert!(e.to_string().contains("have not run"), "{e}");
    let e = engine.try_read_losses(&b).unwrap_err();
    assert!(e.to_string().contains("have not run"), "{e}");
    // Submitted: both read, and equal the blocking call.
    submit(&engine, enc);
    for p in [&a, &b] {
        let got = pollster::block_on(engine.read_losses(p)).unwrap();
        assert_eq!(common::bits(&got), common::bits(&want));
    }
    let e = pollster::block_on(engine.read_losses(&a)).unwrap_err();
    assert!(e.to_string().contains("already read"), "{e}");
    drop((a, b));
    // An unread call's handle dropped frees its slot; the size cannot change while
    // one is held.
    let mut enc = encoder(&engine);
    let c = engine
        .record_device(&mut enc, &levels, &inputs, None, &weights)
        .unwrap();
    let d = engine
        .record_device(&mut enc, &levels, &inputs, None, &weights)
        .unwrap();
    drop(d);
    let e2 = engine
        .record_device(&mut enc, &levels, &inputs, None, &weights)
        .unwrap();
    submit(&engine, enc);
    for p in [&c, &e2] {
        let got = pollster::block_on(engine.read_losses(p)).unwrap();
        assert_eq!(common::bits(&got), common::bits(&want));
    }
    drop((c, e2));
    // A gradient buffer that is an input buffer: an error before anything is
    // recorded (wgpu would reject the dispatch in the caller's encoder).
    let grads = bufs.gradient_buffers(&engine.context().device).unwrap();
    let mut clash = grads.as_ref();
    clash[Head::CntLogits] = bufs.buffer(Input::CntLogits);
    let mut enc = encoder(&engine);
    let e = engine
        .record_device(&mut enc, &levels, &inputs, Some(&clash), &weights)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("grad cnt_logits buffer is the cnt_logits buffer"),
        "{e}"
    );
    drop(enc);
    assert!(engine.set_ring_size(0).is_err());
    engine.set_ring_size(3).unwrap();
    assert_eq!(engine.ring_size(), 3);
}

#[test]
fn a_dropped_handle_never_lets_a_later_call_change_its_commands() {
    let case = common::golden("odd_b3_c7_100x150").batch;
    let levels = case.levels.clone();
    let mut engine = common::app_engine(LossConfig::new(7));
    engine.set_ring_size(1).unwrap();
    let device = engine.context().device.clone();
    let ctx = engine.context().clone();
    let (a, b) = (step_batch(&case, 0), step_batch(&case, 5));
    let (bufs_a, bufs_b) = (
        DeviceBatch::upload(&device, &a).unwrap(),
        DeviceBatch::upload(&device, &b).unwrap(),
    );
    let (inputs_a, inputs_b) = (bufs_a.inputs(), bufs_b.inputs());
    let w = LossWeights {
        cls: 2.0,
        reg: 0.5,
        ..Default::default()
    };
    let plain = LossWeights::default();
    let grads = bufs_a.gradient_buffers(&device).unwrap();
    let grad_refs = grads.as_ref();
    // Call p (backward, its own weights) is dropped unread; q reuses its slot in
    // the same encoder. p's commands must still run with p's params.
    let mut enc = encoder(&engine);
    let p = engine
        .record_device(&mut enc, &levels, &inputs_a, Some(&grad_refs), &w)
        .unwrap();
    drop(p);
    let q = engine
        .record_device(&mut enc, &levels, &inputs_b, None, &plain)
        .unwrap();
    submit(&engine, enc);
    let got_q = pollster::block_on(engine.read_losses(&q)).unwrap();
    drop(q);
    let got_g = common::read_gradients(&ctx, &levels, 3, 7, &grad_refs);
    let want_q = engine.compute_device(&levels, &inputs_b).unwrap();
    assert_eq!(common::bits(&got_q), common::bits(&want_q));
    let fresh = bufs_a.gradient_buffers(&device).unwrap();
    engine
        .forward_backward_device(&levels, &inputs_a, &fresh.as_ref(), &w)
        .unwrap();
    let want_g = common::read_gradients(&ctx, &levels, 3, 7, &fresh.as_ref());
    for h in Head::ALL {
        assert_eq!(
            common::bits_of(&got_g[h]),
            common::bits_of(&want_g[h]),
            "{h}"
        );
    }
    // p recorded into E1 and dropped, q into E2 over the same slot; only E1 runs:
    // q's read sees that its own commands have not run.
    let mut e1 = encoder(&engine);
    let p = engine
        .record_device(&mut e1, &levels, &inputs_a, None, &plain)
        .unwrap();
    drop(p);
    let mut e2 = encoder(&engine);
    let q = engine
        .record_device(&mut e2, &levels, &inputs_b, None, &plain)
        .unwrap();
    submit(&engine, e1);
    let e = pollster::block_on(engine.read_losses(&q)).unwrap_err();
    assert!(e.to_string().contains("have not run"), "{e}");
    submit(&engine, e2);
    let got = pollster::block_on(engine.read_losses(&q)).unwrap();
    assert_eq!(common::bits(&got), common::bits(&want_q));
    drop(q);
    // With the one slot held by an unread recorded call, a blocking call is an
    // error at once, not a wait that could never end.
    let mut enc = encoder(&engine);
    let p = engine
        .record_device(&mut enc, &levels, &inputs_a, None, &plain)
        .unwrap();
    let e = engine.compute(&levels, &a.inputs()).unwrap_err();
    assert!(e.to_string().contains("result slots"), "{e}");
    submit(&engine, enc);
    pollster::block_on(engine.read_losses(&p)).unwrap();
}

#[test]
fn an_async_call_dropped_while_reading_keeps_its_slot_until_the_read_ends() {
    let case = common::golden("voc_b2_c20_512x512").batch;
    let mut engine = common::engine(LossConfig::new(20));
    engine.set_ring_size(1).unwrap();
    let want = engine
        .compute_timed(&case.levels, &case.inputs())
        .unwrap()
        .value;
    // Ten drops while reading. On a loaded machine the read-back thread can end
    // before the first poll returns (the call is then simply done); such a
    // round does not count, and 100 rounds must give ten that do.
    let mut dropped_while_reading = 0;
    for _ in 0..100 {
        {
            // Polled once: uploaded, submitted, its read-back thread started.
            let inputs = case.inputs();
            let fut = engine.compute_async(&case.levels, &inputs);
            let mut fut = std::pin::pin!(fut);
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            match fut.as_mut().poll(&mut cx) {
                std::task::Poll::Pending => dropped_while_reading += 1,
                std::task::Poll::Ready(done) => {
                    assert_eq!(common::bits(&done.unwrap()), common::bits(&want));
                }
            }
        }
        // The only slot is freed by that thread once it unmaps: this call waits
        // for it and reuses the slot's buffers.
        let got = engine.compute(&case.levels, &case.inputs()).unwrap();
        assert_eq!(common::bits(&got), common::bits(&want));
        if dropped_while_reading == 10 {
            return;
        }
    }
    panic!("only {dropped_while_reading} of 100 calls were still reading after one poll");
}

#[test]
fn a_bad_value_is_named_when_the_results_are_read() {
    let case = common::golden("odd_b3_c7_100x150").batch;
    let mut bad = case.clone();
    common::part_mut(&mut bad, Input::RegPreds, 1)[9] = f32::NAN;
    let engine = common::app_engine(LossConfig::new(7));
    let bufs = DeviceBatch::upload(&engine.context().device, &bad).unwrap();
    let want = engine
        .compute_device(&bad.levels, &bufs.inputs())
        .unwrap_err();
    let weights = LossWeights::default();
    let mut enc = encoder(&engine);
    let p = engine
        .record_device(&mut enc, &bad.levels, &bufs.inputs(), None, &weights)
        .unwrap();
    submit(&engine, enc);
    let got = pollster::block_on(engine.read_losses(&p)).unwrap_err();
    assert!(matches!(got, FcosError::Value { .. }), "{got}");
    assert_eq!(got.to_string(), want.to_string());
    // The host path's async call names it too.
    let got = pollster::block_on(engine.compute_async(&bad.levels, &bad.inputs())).unwrap_err();
    assert_eq!(got.to_string(), want.to_string());
    // And the engine goes on.
    let ok = DeviceBatch::upload(&engine.context().device, &case).unwrap();
    engine.compute_device(&case.levels, &ok.inputs()).unwrap();
}

#[test]
fn async_calls_equal_blocking_ones_under_pollster() {
    let weights = LossWeights::default();
    for name in common::GOLDEN {
        let case = common::golden(name).batch;
        let engine = common::engine(LossConfig::new(case.classes as u32));
        let inputs = case.inputs();
        // The timed calls keep their own submission (timestamps, the engine's pool).
        let want = engine.compute_timed(&case.levels, &inputs).unwrap().value;
        let got = pollster::block_on(engine.compute_async(&case.levels, &inputs)).unwrap();
        assert_eq!(common::bits(&got), common::bits(&want), "{name}");
        let (wl, wg) = engine
            .forward_backward_timed(&case.levels, &inputs, &weights)
            .unwrap()
            .value;
        let (gl, gg) =
            pollster::block_on(engine.forward_backward_async(&case.levels, &inputs, &weights))
                .unwrap();
        assert_eq!(common::bits(&gl), common::bits(&wl), "{name}");
        for h in Head::ALL {
            assert_eq!(
                common::bits_of(&gg[h]),
                common::bits_of(&wg[h]),
                "{name}: {h}"
            );
        }
    }
}

#[test]
fn async_calls_run_concurrently_under_tokio() {
    let case = Arc::new(common::golden("voc_b2_c20_512x512").batch);
    let engine = Arc::new(common::engine(LossConfig::new(20)));
    let want: Vec<_> = (0..8)
        .map(|s| {
            let b = step_batch(&case, s);
            engine.compute_timed(&b.levels, &b.inputs()).unwrap().value
        })
        .collect();
    assert_eq!(engine.ring_size(), 4);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(3)
        .build()
        .unwrap();
    let got: Vec<_> = rt.block_on(async {
        let tasks: Vec<_> = (0..8)
            .map(|s| {
                let (engine, case) = (engine.clone(), case.clone());
                tokio::spawn(async move {
                    let b = step_batch(&case, s);
                    // 8 calls, 4 result slots: a call that finds none waits for one.
                    engine.compute_async(&b.levels, &b.inputs()).await.unwrap()
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    for s in 0..8 {
        assert_eq!(common::bits(&got[s]), common::bits(&want[s]), "task {s}");
    }
}
