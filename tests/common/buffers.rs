//! Deliberately unusual device buffers for one input, for the tests of what the
//! device path refuses or tolerates. Everything ordinary uses
//! [`fcos_loss::DeviceBatch`] instead.

use fcos_loss::{Batch, Input};
use wgpu::util::DeviceExt;

/// How a buffer differs from the one `DeviceBatch::upload` makes for the input.
#[derive(Debug, Clone, Copy)]
pub enum Unusual {
    /// The input's packed data exactly, with `usage` instead of
    /// `STORAGE | COPY_SRC | COPY_DST` (e.g. without `STORAGE`, or `UNIFORM`).
    Usage(wgpu::BufferUsages),
    /// One `f32` short of what the layout needs (`STORAGE`).
    OneShort,
    /// The data followed by `extra` copies of `fill` (`STORAGE | COPY_DST`):
    /// larger than the layout needs, with data past its end.
    Trailing {
        /// Floats after the data.
        extra: usize,
        /// Their value.
        fill: f32,
    },
}

/// A buffer holding `input` of `batch` (packed as `DeviceInputs` describes), made
/// unusual as `how` says. An empty tensor gets one float, since a zero-sized
/// buffer cannot be made with contents.
pub fn unusual_input_buffer(
    device: &wgpu::Device,
    batch: &Batch,
    input: Input,
    how: Unusual,
) -> wgpu::Buffer {
    let mut data = batch.packed(input);
    let usage = match how {
        Unusual::Usage(usage) => usage,
        Unusual::OneShort => {
            assert!(data.len() >= 2, "{input} is too small to be made one short");
            data.pop();
            wgpu::BufferUsages::STORAGE
        }
        Unusual::Trailing { extra, fill } => {
            data.extend(std::iter::repeat_n(fill, extra));
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST
        }
    };
    if data.is_empty() {
        data.push(0.0);
    }
    let label = format!("{input} ({how:?})");
    device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some(&label),
        contents: bytemuck::cast_slice(&data),
        usage,
    })
}
