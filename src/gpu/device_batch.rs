//! A [`Batch`] uploaded into device buffers of its own: the one helper benches,
//! examples and tests use to exercise the device path.

use crate::batch::Batch;
use crate::error::FcosError;
use crate::gpu::device_inputs::DeviceInputs;
use crate::gpu::scope::scoped;
use crate::input::{ByInput, Dtype, Head, Heads, Input};
use crate::layout::Levels;

/// A batch in device buffers, each input packed as [`DeviceInputs`] describes
/// (`STORAGE | COPY_SRC | COPY_DST`, so a test can read them back or overwrite them).
#[derive(Debug)]
pub struct DeviceBatch {
    levels: Levels,
    batch: usize,
    classes: usize,
    /// The heads' element type.
    dtype: Dtype,
    buffers: ByInput<wgpu::Buffer>,
}

impl DeviceBatch {
    /// Uploads every input of `batch` into a buffer of its own on `device`. A
    /// tensor over the device's `max_buffer_size` is a [`FcosError::Limit`] naming
    /// it; wgpu's errors come back as [`FcosError::Gpu`].
    pub fn upload(device: &wgpu::Device, batch: &Batch) -> Result<Self, FcosError> {
        Self::upload_as(device, batch, Dtype::F32)
    }

    /// [`upload`](Self::upload) with the heads rounded to `dtype` (nearest even)
    /// and stored as 2-byte elements where it is `f16` or `bf16` (targets stay
    /// `f32`). `batch`'s heads should already hold values of that type (widened)
    /// for a CPU reference on the same values.
    pub fn upload_as(
        device: &wgpu::Device,
        batch: &Batch,
        dtype: Dtype,
    ) -> Result<Self, FcosError> {
        use wgpu::util::DeviceExt;
        let max = device.limits().max_buffer_size;
        let buffers = ByInput::try_from_fn(|input| {
            let data = batch.packed(input);
            let mut bytes: Vec<u8> = match input.dtype(dtype) {
                Dtype::F16 => data
                    .iter()
                    .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                    .collect(),
                Dtype::Bf16 => data
                    .iter()
                    .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                    .collect(),
                Dtype::F32 => bytemuck::cast_slice(&data).to_vec(),
            };
            bytes.resize(bytes.len().next_multiple_of(4), 0);
            check_size(input.name(), bytes.len() as u64, max)?;
            scoped(device, || {
                device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(input.name()),
                    contents: &bytes,
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_SRC
                        | wgpu::BufferUsages::COPY_DST,
                })
            })
        })?;
        Ok(DeviceBatch {
            levels: batch.levels.clone(),
            batch: batch.batch,
            classes: batch.classes,
            dtype,
            buffers,
        })
    }

    /// The buffers as [`DeviceInputs`].
    pub fn inputs(&self) -> DeviceInputs<'_> {
        DeviceInputs {
            dtype: self.dtype,
            batch: self.batch,
            cls_logits: &self.buffers[Input::ClsLogits],
            cnt_logits: &self.buffers[Input::CntLogits],
            reg_preds: &self.buffers[Input::RegPreds],
            cls_targets: &self.buffers[Input::ClsTargets],
            cnt_targets: &self.buffers[Input::CntTargets],
            reg_targets: &self.buffers[Input::RegTargets],
        }
    }

    /// The buffer holding `input`.
    pub fn buffer(&self, input: Input) -> &wgpu::Buffer {
        &self.buffers[input]
    }

    /// The pyramid levels of the batch.
    pub fn levels(&self) -> &Levels {
        &self.levels
    }

    /// Gradient buffers for this batch, one per head in the input layout
    /// (`STORAGE | COPY_SRC | COPY_DST`, zero-filled); borrow them with
    /// [`Heads::as_ref`] as [`DeviceGradients`](crate::DeviceGradients).
    pub fn gradient_buffers(
        &self,
        device: &wgpu::Device,
    ) -> Result<Heads<wgpu::Buffer>, FcosError> {
        let max = device.limits().max_buffer_size;
        Heads::try_from_fn(|h: Head| {
            let bytes = h
                .input()
                .bytes(&self.levels, self.batch, self.classes, Dtype::F32);
            let name = format!("grad {h}");
            check_size(&name, bytes, max)?;
            scoped(device, || {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(&name),
                    size: bytes.max(4),
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_SRC
                        | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            })
        })
    }
}

fn check_size(name: &str, bytes: u64, max: u64) -> Result<(), FcosError> {
    if bytes > max {
        return Err(FcosError::Limit(format!(
            "{name} needs a {bytes}-byte buffer; the adapter allows max_buffer_size = {max}"
        )));
    }
    Ok(())
}
