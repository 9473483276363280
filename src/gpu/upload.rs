//! The host path's upload of the six inputs into the pool. Where the adapter shares
//! host memory and storage buffers can be mapped
//! ([`GpuContext::zero_copy_upload`](crate::GpuContext::zero_copy_upload)), the
//! inputs are written straight into the pooled input buffers: no staging copy at
//! all. Otherwise they are written into the pooled, mapped staging buffer (the one
//! staging copy), then copied on the device into the pooled input buffers. Unlike
//! `Queue::write_buffer`, neither allocates per call, so large batches do not pay
//! for fresh pages every time.

use crate::error::FcosError;
use crate::gpu::core::Core;
use crate::gpu::pool::{Need, Pool, Slot};
use crate::gpu::scope::scoped;
use crate::input::Input;
use crate::inputs::Inputs;
use crate::layout::Levels;

/// What the host path's inputs need reserved in the pool (the staging buffer
/// only where the upload is not zero-copy).
pub(crate) fn needs(core: &Core, levels: &Levels, b: usize) -> Vec<Need> {
    use wgpu::BufferUsages as U;
    let zero_copy = core.ctx.zero_copy_upload();
    let usage = U::STORAGE | if zero_copy { U::MAP_WRITE } else { U::COPY_DST };
    let mut needs: Vec<Need> = Input::ALL
        .iter()
        .map(|&input| Need {
            slot: Slot::Input(input),
            size: core.bytes(input, levels, b),
            usage,
        })
        .collect();
    if !zero_copy {
        needs.push(Need {
            slot: Slot::Upload,
            size: needs.iter().map(|n| n.size).sum(),
            usage: U::MAP_WRITE | U::COPY_SRC,
        });
    }
    needs
}

/// A mapped buffer and the inputs written into it, each at its byte offset.
struct Placement<'b> {
    buffer: &'b wgpu::Buffer,
    bytes: u64,
    inputs: Vec<(Input, u64)>,
}

/// Writes `inputs` into the pool's input buffers (reserved by [`needs`]).
pub(crate) fn upload(
    core: &Core,
    pool: &Pool,
    levels: &Levels,
    inputs: &Inputs,
) -> Result<(), FcosError> {
    let b = inputs.batch;
    let sizes: Vec<(Input, u64)> = Input::ALL
        .iter()
        .map(|&i| (i, core.bytes(i, levels, b)))
        .collect();
    if core.ctx.zero_copy_upload() {
        let placements = sizes
            .iter()
            .map(|&(input, bytes)| {
                Ok(Placement {
                    buffer: pool.get(Slot::Input(input))?,
                    bytes,
                    inputs: vec![(input, 0)],
                })
            })
            .collect::<Result<Vec<_>, FcosError>>()?;
        return write_mapped(core, &placements, inputs);
    }
    let staging = Placement {
        buffer: pool.get(Slot::Upload)?,
        bytes: sizes.iter().map(|s| s.1).sum(),
        inputs: sizes
            .iter()
            .scan(0u64, |at, &(input, n)| {
                let start = *at;
                *at += n;
                Some((input, start))
            })
            .collect(),
    };
    write_mapped(core, std::slice::from_ref(&staging), inputs)?;
    let device = &core.ctx.device;
    scoped(device, || -> Result<(), FcosError> {
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("fcos upload"),
        });
        for (&(input, start), &(_, n)) in staging.inputs.iter().zip(&sizes) {
            let dst = pool.get(Slot::Input(input))?;
            encoder.copy_buffer_to_buffer(staging.buffer, start, dst, 0, n);
        }
        core.ctx.queue.submit([encoder.finish()]);
        Ok(())
    })?
}

/// Maps every placement's buffer for writing (one wait) and writes its inputs.
fn write_mapped(core: &Core, placements: &[Placement], inputs: &Inputs) -> Result<(), FcosError> {
    let bufs: Vec<_> = placements.iter().map(|p| (p.buffer, 0..p.bytes)).collect();
    core.readback().map_all(&bufs, wgpu::MapMode::Write, None)?;
    let mut failed = None;
    for p in placements {
        match p.buffer.slice(0..p.bytes).get_mapped_range_mut() {
            Ok(mut view) => {
                for &(input, at) in &p.inputs {
                    write_input(&mut view, at, inputs, input);
                }
            }
            Err(e) => failed = Some(e),
        }
    }
    placements.iter().for_each(|p| p.buffer.unmap());
    match failed {
        Some(e) => Err(FcosError::gpu_from("writing the inputs failed", e)),
        None => Ok(()),
    }
}

/// Writes `input`'s parts one after another from byte `at` of `view`: a head's
/// levels packed (`B·ch·off_l`), a target as it is.
fn write_input(view: &mut wgpu::BufferViewMut, at: u64, inputs: &Inputs, input: Input) {
    let mut from = at as usize;
    for part in inputs.parts(input) {
        let bytes: &[u8] = bytemuck::cast_slice(part);
        view.slice(from..from + bytes.len()).copy_from_slice(bytes);
        from += bytes.len();
    }
}
