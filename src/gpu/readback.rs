//! Mapping buffers once the GPU is done with them, with a timeout: the one place
//! the engine waits for the device.

use std::ops::Range;
use std::time::Duration;

use crate::error::FcosError;
use crate::gpu::context::GpuContext;
use crate::gpu::scope::scoped;

/// Maps buffers of one device, waiting at most `timeout`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Readback<'a> {
    pub ctx: &'a GpuContext,
    pub timeout: Duration,
}

impl Readback<'_> {
    /// Maps every `(buffer, range)` in `mode` once the GPU finished `index` (or all
    /// submitted work), with one wait. On a failure no buffer is left mapped (or
    /// pending); on a timeout the pending mappings are cancelled so the buffers can
    /// be reused. wgpu's validation errors (a mapping wgpu refuses) come back as
    /// errors here, not through the device's error handler.
    pub fn map_all(
        &self,
        bufs: &[(&wgpu::Buffer, Range<u64>)],
        mode: wgpu::MapMode,
        index: Option<wgpu::SubmissionIndex>,
    ) -> Result<(), FcosError> {
        scoped(&self.ctx.device, || {
            self.map_all_unscoped(bufs, mode, index)
        })?
    }

    fn map_all_unscoped(
        &self,
        bufs: &[(&wgpu::Buffer, Range<u64>)],
        mode: wgpu::MapMode,
        index: Option<wgpu::SubmissionIndex>,
    ) -> Result<(), FcosError> {
        let receivers: Vec<_> = bufs
            .iter()
            .map(|(buf, range)| {
                let (tx, rx) = futures_intrusive::channel::shared::oneshot_channel();
                buf.slice(range.clone()).map_async(mode, move |r| {
                    // A failed send only means the receiver gave up waiting.
                    let _ = tx.send(r);
                });
                rx
            })
            .collect();
        self.wait(bufs, index)?;
        let results: Vec<_> = receivers
            .into_iter()
            .map(|rx| pollster::block_on(rx.receive()))
            .collect();
        let failed = results.iter().find_map(|r| match r {
            Some(Ok(())) => None,
            Some(Err(e)) => Some(FcosError::gpu_from("mapping a buffer failed", e.clone())),
            None => Some(FcosError::gpu("a buffer was never mapped")),
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
        Err(failed)
    }

    /// Waits for submission `index` (or all work); on a timeout cancels the
    /// pending mappings of `bufs`.
    fn wait(
        &self,
        bufs: &[(&wgpu::Buffer, Range<u64>)],
        index: Option<wgpu::SubmissionIndex>,
    ) -> Result<(), FcosError> {
        let waited = self.ctx.device.poll(wgpu::PollType::Wait {
            submission_index: index,
            timeout: Some(self.timeout),
        });
        match waited {
            Ok(_) => Ok(()),
            Err(wgpu::PollError::Timeout) => {
                // Cancels the pending mappings (and undoes any that completed).
                bufs.iter().for_each(|(b, _)| b.unmap());
                Err(FcosError::Timeout(self.timeout))
            }
            Err(e) => {
                self.ctx.health()?;
                Err(FcosError::gpu_from("waiting for the GPU failed", e))
            }
        }
    }

    /// Maps `range` of a MAP_READ buffer after the GPU finished `index` (or all
    /// work), copies it out and unmaps.
    pub fn read(
        &self,
        buf: &wgpu::Buffer,
        range: Range<u64>,
        index: Option<wgpu::SubmissionIndex>,
    ) -> Result<Vec<u8>, FcosError> {
        self.map_all(&[(buf, range.clone())], wgpu::MapMode::Read, index)?;
        let out = buf
            .slice(range)
            .get_mapped_range()
            .map(|v| v.to_vec())
            .map_err(|e| FcosError::gpu_from("reading the result failed", e));
        buf.unmap();
        let out = out?;
        self.ctx.health()?;
        Ok(out)
    }
}
