//! Moving data between the host and the device: the host path's upload through
//! the pooled staging buffer, mapping with a timeout, and the gradient readback.

use super::*;

impl FcosLoss {
    /// Reads the pooled gradient staging buffer (already filled by the submission
    /// [`execute`](Self::execute) made) into per-level vectors.
    pub(super) fn read_grads(
        &self,
        pool: &Pool,
        levels: &Levels,
        b: usize,
    ) -> Result<Gradients, FcosError> {
        let staging = pool.grad_readback.as_ref().ok_or_else(missing)?;
        let total: u64 = (0..3).map(|i| self.input_bytes(levels, b, i)).sum();
        let bytes = self.map_read(staging, 0..total, None)?;
        let floats: &[f32] = bytemuck::try_cast_slice(&bytes)
            .map_err(|e| FcosError::Gpu(format!("gradient readback: {e}")))?;
        let mut at = 0usize;
        let mut head = |ch: usize| -> Vec<Vec<f32>> {
            let mut out = Vec::with_capacity(levels.len());
            for l in 0..levels.len() {
                let n = levels.level_len(l, b, ch);
                out.push(floats[at..at + n].to_vec());
                at += n;
            }
            out
        };
        Ok(Gradients {
            cls_logits: head(self.config.num_classes as usize),
            cnt_logits: head(1),
            reg_preds: head(4),
        })
    }

    /// Maps `range` of a mappable buffer in `mode` once the GPU finished `index` (or
    /// all submitted work). Waits at most the engine's timeout; on a timeout the
    /// pending mapping is cancelled so the buffer can be reused.
    pub(super) fn map(
        &self,
        buf: &wgpu::Buffer,
        range: std::ops::Range<u64>,
        mode: wgpu::MapMode,
        index: Option<wgpu::SubmissionIndex>,
    ) -> Result<(), FcosError> {
        self.map_all(&[(buf, range)], mode, index)
    }

    /// [`map`](Self::map) for several buffers at once, with one wait. On a failure no
    /// buffer is left mapped (or pending). wgpu's validation errors (a mapping wgpu
    /// refuses) come back as errors here, not through the device's error handler,
    /// which panics by default on a device the application made.
    pub(super) fn map_all(
        &self,
        bufs: &[(&wgpu::Buffer, std::ops::Range<u64>)],
        mode: wgpu::MapMode,
        index: Option<wgpu::SubmissionIndex>,
    ) -> Result<(), FcosError> {
        scoped(&self.ctx.device, || {
            self.map_all_unscoped(bufs, mode, index)
        })?
    }

    fn map_all_unscoped(
        &self,
        bufs: &[(&wgpu::Buffer, std::ops::Range<u64>)],
        mode: wgpu::MapMode,
        index: Option<wgpu::SubmissionIndex>,
    ) -> Result<(), FcosError> {
        let mut receivers = Vec::with_capacity(bufs.len());
        for (buf, range) in bufs {
            let (tx, rx) = futures_intrusive::channel::shared::oneshot_channel();
            buf.slice(range.clone()).map_async(mode, move |r| {
                // A failed send only means the receiver gave up waiting.
                let _ = tx.send(r);
            });
            receivers.push(rx);
        }
        let waited = self.ctx.device.poll(wgpu::PollType::Wait {
            submission_index: index,
            timeout: Some(self.timeout),
        });
        match waited {
            Ok(_) => {}
            Err(wgpu::PollError::Timeout) => {
                // Cancels the pending mappings (and undoes any that completed).
                bufs.iter().for_each(|(b, _)| b.unmap());
                return Err(FcosError::Timeout(self.timeout));
            }
            Err(e) => {
                self.ctx.health()?;
                return Err(FcosError::Gpu(format!("waiting for the GPU failed: {e}")));
            }
        }
        let results: Vec<_> = receivers
            .into_iter()
            .map(|rx| pollster::block_on(rx.receive()))
            .collect();
        let failed = results.iter().find_map(|r| match r {
            Some(Ok(())) => None,
            Some(Err(e)) => Some(format!("mapping a buffer failed: {e}")),
            None => Some("a buffer was never mapped".to_string()),
        });
        let Some(failed) = failed else {
            return Ok(());
        };
        // Unmap only what did map: unmapping an unmapped buffer is itself an error.
        for ((buf, _), r) in bufs.iter().zip(&results) {
            if matches!(r, Some(Ok(()))) {
                buf.unmap();
            }
        }
        self.ctx.health()?;
        Err(FcosError::Gpu(failed))
    }

    /// Maps `range` of a MAP_READ buffer after the GPU finished `index` (or all work),
    /// copies it out and unmaps.
    pub(super) fn map_read(
        &self,
        buf: &wgpu::Buffer,
        range: std::ops::Range<u64>,
        index: impl Into<Option<wgpu::SubmissionIndex>>,
    ) -> Result<Vec<u8>, FcosError> {
        self.map(buf, range.clone(), wgpu::MapMode::Read, index.into())?;
        let out = {
            let view = buf
                .slice(range)
                .get_mapped_range()
                .map_err(|e| FcosError::Gpu(format!("reading the result failed: {e}")));
            view.map(|v| v.to_vec())
        };
        buf.unmap();
        let out = out?;
        self.ctx.health()?;
        Ok(out)
    }

    /// The host path's upload. Where the adapter shares host memory and storage
    /// buffers can be mapped ([`GpuContext::zero_copy_upload`]), the inputs are
    /// written straight into the pooled input buffers: no staging copy at all.
    /// Otherwise they are written into the pooled, mapped staging buffer (the one
    /// staging copy), then copied on the device into the pooled input buffers.
    /// Unlike `Queue::write_buffer`, neither allocates per call, so large batches do
    /// not pay for fresh pages every time.
    pub(super) fn upload(
        &self,
        pool: &mut Pool,
        levels: &Levels,
        inputs: &Inputs,
    ) -> Result<(), FcosError> {
        let b = inputs.batch;
        let sizes: Vec<u64> = (0..INPUT_NAMES.len())
            .map(|i| self.input_bytes(levels, b, i))
            .collect();
        if self.ctx.zero_copy_upload() {
            let mut bufs = Vec::with_capacity(INPUT_NAMES.len());
            for (i, slot) in pool.inputs.iter().enumerate() {
                bufs.push((slot.as_ref().ok_or_else(missing)?, 0..sizes[i]));
            }
            self.map_all(&bufs, wgpu::MapMode::Write, None)?;
            let mut failed = None;
            for (i, (buf, range)) in bufs.iter().enumerate() {
                match buf.slice(range.clone()).get_mapped_range_mut() {
                    Ok(mut view) => self.write_input(&mut view, 0, levels, inputs, i),
                    Err(e) => failed = Some(e),
                }
            }
            bufs.iter().for_each(|(buf, _)| buf.unmap());
            return match failed {
                Some(e) => Err(FcosError::Gpu(format!("writing the inputs failed: {e}"))),
                None => Ok(()),
            };
        }
        let starts: Vec<u64> = sizes
            .iter()
            .scan(0u64, |at, &n| {
                let start = *at;
                *at += n;
                Some(start)
            })
            .collect();
        let total: u64 = sizes.iter().sum();
        let device = &self.ctx.device;
        pool.grow(device, |pool| {
            Pool::ensure(
                &mut pool.upload,
                &mut pool.created,
                device,
                "fcos upload",
                total,
                wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
            )
        })?;
        let staging = pool.upload.as_ref().ok_or_else(missing)?;
        self.map(staging, 0..total, wgpu::MapMode::Write, None)?;
        {
            let mut view = match staging.slice(0..total).get_mapped_range_mut() {
                Ok(v) => v,
                Err(e) => {
                    staging.unmap();
                    return Err(FcosError::Gpu(format!("writing the inputs failed: {e}")));
                }
            };
            for (i, &at) in starts.iter().enumerate() {
                self.write_input(&mut view, at, levels, inputs, i);
            }
        }
        staging.unmap();
        scoped(device, || -> Result<(), FcosError> {
            let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("fcos upload"),
            });
            for (i, slot) in pool.inputs.iter().enumerate() {
                let dst = slot.as_ref().ok_or_else(missing)?;
                encoder.copy_buffer_to_buffer(staging, starts[i], dst, 0, sizes[i]);
            }
            self.ctx.queue.submit([encoder.finish()]);
            Ok(())
        })?
    }

    /// Writes input `i` (in [`INPUT_NAMES`] order) into `view` from byte `at`, heads
    /// packed by level (`B·ch·off_l`), targets as they are.
    fn write_input(
        &self,
        view: &mut wgpu::BufferViewMut,
        at: u64,
        levels: &Levels,
        inputs: &Inputs,
        i: usize,
    ) {
        let b = inputs.batch;
        let mut put = |from: u64, data: &[f32]| {
            let from = from as usize;
            view.slice(from..from + 4 * data.len())
                .copy_from_slice(bytemuck::cast_slice(data));
        };
        match i {
            0..=2 => {
                let heads = [&inputs.cls_logits, &inputs.cnt_logits, &inputs.reg_preds];
                for (l, s) in heads[i].iter().enumerate() {
                    put(
                        at + 4 * levels.packed_offset(l, b, self.channels(i)) as u64,
                        s,
                    );
                }
            }
            3 => put(at, inputs.cls_targets),
            4 => put(at, inputs.cnt_targets),
            _ => put(at, inputs.reg_targets),
        }
    }
}
