//! The error path of the on-device checks: when the fused pass flags a bad input,
//! bring the inputs to the host in bounded chunks (raw bits, through
//! `copy_words.wgsl`, so the user's buffers need no `COPY_SRC`) and let the host
//! validator name the first bad element; the host path, whose slices are at hand,
//! goes straight to that last step ([`FcosLoss::name_bad_input`]).

use super::*;

/// Largest chunk the copy moves at once (also bounded by the binding limit).
const CHUNK_BYTES: u64 = 32 << 20;

impl FcosLoss {
    /// The error for inputs the on-device checks flagged (`flags`, see
    /// [`crate::gpu::params::FLAGS`]).
    pub(super) fn locate_bad_input(
        &self,
        levels: &Levels,
        inputs: &DeviceInputs,
        flags: u32,
    ) -> FcosError {
        let flagged = crate::gpu::params::flag_names(flags);
        let host = match self.read_inputs(levels, inputs) {
            Ok(h) => h,
            Err(e) => {
                return FcosError::Gpu(format!(
                    "the on-device checks flagged bad values in {flagged:?}, and reading them back to locate the first one failed: {e}"
                ))
            }
        };
        let b = inputs.batch;
        let split = |data: &[f32], ch: usize| -> Vec<Vec<f32>> {
            (0..levels.len())
                .map(|l| {
                    let at = levels.packed_offset(l, b, ch);
                    data[at..at + levels.level_len(l, b, ch)].to_vec()
                })
                .collect()
        };
        let c = self.config.num_classes as usize;
        let p = levels.positions();
        let heads = [split(&host[0], c), split(&host[1], 1), split(&host[2], 4)];
        let view = Inputs {
            batch: b,
            cls_logits: heads[0].iter().map(Vec::as_slice).collect(),
            cnt_logits: heads[1].iter().map(Vec::as_slice).collect(),
            reg_preds: heads[2].iter().map(Vec::as_slice).collect(),
            cls_targets: &host[3][..b * p],
            cnt_targets: &host[4][..b * p],
            reg_targets: &host[5][..4 * b * p],
        };
        self.name_bad_input(levels, &view, flags)
    }

    /// The error for host inputs the on-device checks flagged: the host validator's
    /// error naming the first bad element (both paths end here).
    pub(super) fn name_bad_input(&self, levels: &Levels, inputs: &Inputs, flags: u32) -> FcosError {
        let c = self.config.num_classes as usize;
        match crate::validate::check_values(levels, inputs, c) {
            Err(e) => e,
            Ok(()) => FcosError::Gpu(format!(
                "the on-device checks flagged bad values in {:?}, but the host check of the same data found none",
                crate::gpu::params::flag_names(flags)
            )),
        }
    }

    /// The six inputs as host vectors (only what the layout uses of each buffer).
    fn read_inputs(
        &self,
        levels: &Levels,
        inputs: &DeviceInputs,
    ) -> Result<Vec<Vec<f32>>, FcosError> {
        let b = inputs.batch;
        inputs
            .buffers()
            .iter()
            .enumerate()
            .map(|(i, buf)| self.read_words(buf, self.input_bytes(levels, b, i)))
            .collect()
    }

    /// The first `bytes` of a STORAGE buffer, copied chunk by chunk.
    fn read_words(&self, src: &wgpu::Buffer, bytes: u64) -> Result<Vec<f32>, FcosError> {
        let device = &self.ctx.device;
        let align = self.ctx.limits.min_storage_buffer_offset_alignment.max(4) as u64;
        let chunk = CHUNK_BYTES
            .min(self.ctx.limits.max_storage_buffer_binding_size)
            .min(bytes.max(4))
            / align
            * align;
        let chunk = chunk.max(align.min(bytes.max(4)));
        let (staging, readback) = scoped(device, || {
            let make = |label, usage| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: chunk.next_multiple_of(4),
                    usage,
                    mapped_at_creation: false,
                })
            };
            (
                make(
                    "fcos locate staging",
                    wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                ),
                make(
                    "fcos locate readback",
                    wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                ),
            )
        })?;
        let mut out: Vec<f32> = Vec::with_capacity((bytes / 4) as usize);
        let mut at = 0;
        while at < bytes {
            let len = chunk.min(bytes - at);
            let words = (len / 4) as u32;
            let groups = words.div_ceil(256);
            let x = groups.clamp(1, self.ctx.limits.max_compute_workgroups_per_dimension);
            let y = groups.div_ceil(x).max(1);
            let index = scoped(device, || {
                let bg = device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("fcos locate"),
                    layout: &self.pipelines.copy_words.layout,
                    entries: &[
                        wgpu::BindGroupEntry {
                            binding: 0,
                            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer: src,
                                offset: at,
                                size: std::num::NonZeroU64::new(len),
                            }),
                        },
                        whole(1, &staging),
                    ],
                });
                let mut encoder = device.create_command_encoder(&Default::default());
                {
                    let mut pass = encoder.begin_compute_pass(&Default::default());
                    pass.set_pipeline(&self.pipelines.copy_words.pipeline);
                    pass.set_bind_group(0, &bg, &[]);
                    pass.dispatch_workgroups(x, y, 1);
                }
                encoder.copy_buffer_to_buffer(&staging, 0, &readback, 0, len);
                self.ctx.queue.submit([encoder.finish()])
            })?;
            let data = self.map_read(&readback, 0..len, index)?;
            out.extend(
                data.chunks_exact(4)
                    .map(|w| f32::from_le_bytes([w[0], w[1], w[2], w[3]])),
            );
            at += len;
        }
        Ok(out)
    }
}
