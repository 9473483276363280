//! The host path's upload of the six inputs into the pool. Where the adapter shares
//! host memory and storage buffers can be mapped
//! ([`GpuContext::zero_copy_upload`](crate::GpuContext::zero_copy_upload)), the
//! inputs are written straight into the pooled input buffers: no staging copy at
//! all. Otherwise they are written into the pooled, mapped staging buffer (the one
//! staging copy), then copied on the device into the pooled input buffers. Unlike
//! `Queue::write_buffer`, neither allocates per call, so large batches do not pay
//! for fresh pages every time.

use crate::assign::GroundTruth;
use crate::error::FcosError;
use crate::gpu::call::GtBuffers;
use crate::gpu::core::Core;
use crate::gpu::params::BoxSpec;
use crate::gpu::pool::{Need, Pool, Slot};
use crate::gpu::scope::scoped;
use crate::input::{Element, Input};
use crate::inputs::Inputs;
use crate::layout::Levels;

/// One buffer the host path uploads: its pool slot and its bytes, in parts
/// written one after another (a head's levels packed, a target as it is).
pub(crate) struct Upload<'a> {
    pub slot: Slot,
    pub parts: Vec<&'a [u8]>,
}

impl Upload<'_> {
    /// Its bytes rounded up to a whole 4-byte word (copies and bindings move
    /// words; a half head of an odd element count ends inside one, whose other
    /// half the shaders never read).
    fn bytes(&self) -> u64 {
        self.parts
            .iter()
            .map(|p| p.len() as u64)
            .sum::<u64>()
            .next_multiple_of(4)
    }
}

/// The six inputs of a call from targets, as uploads (the heads as they are, 2
/// or 4 bytes an element).
pub(crate) fn of_inputs<'a, T: Element>(inputs: &Inputs<'a, T>) -> Vec<Upload<'a>> {
    Input::ALL
        .iter()
        .map(|&input| Upload {
            slot: Slot::Input(input),
            parts: inputs.byte_parts(input),
        })
        .collect()
}

/// The ground truth of a host call of `batch` images, checked (the assignment's
/// settings, its shapes and values, the device's limit) and staged: its two
/// uploads (the classes as `i32` words, kept in `classes`) and what the params
/// carry of it.
pub(crate) fn of_ground_truth<'a>(
    core: &Core,
    levels: &Levels,
    gt: &GroundTruth<'a>,
    batch: usize,
    classes: &'a mut Vec<i32>,
) -> Result<([Upload<'a>; 2], BoxSpec), FcosError> {
    core.check_assignment(levels)?;
    gt.check(batch, core.config.num_classes)?;
    core.check_boxes(gt.batch, gt.boxes_per_image)?;
    *classes = gt.class_words();
    let uploads = [
        Upload {
            slot: Slot::GtBoxes,
            parts: vec![bytemuck::cast_slice(gt.boxes)],
        },
        Upload {
            slot: Slot::GtClasses,
            parts: vec![bytemuck::cast_slice(classes.as_slice())],
        },
    ];
    let spec = BoxSpec {
        boxes_per_image: gt.boxes_per_image as u32,
        class_f32: false,
    };
    Ok((uploads, spec))
}

/// The pooled buffers [`of_ground_truth`]'s uploads went to.
pub(crate) fn pooled_ground_truth(pool: &Pool, spec: BoxSpec) -> Result<GtBuffers<'_>, FcosError> {
    Ok(GtBuffers {
        boxes: pool.get(Slot::GtBoxes)?.into(),
        classes: pool.get(Slot::GtClasses)?.into(),
        boxes_per_image: spec.boxes_per_image,
    })
}

/// What the uploads need reserved in the pool (the staging buffer only where the
/// upload is not zero-copy). Every buffer is at least 16 bytes (one `vec4`, the
/// smallest binding a shader's array of boxes takes).
pub(crate) fn needs(core: &Core, uploads: &[Upload]) -> Vec<Need> {
    use wgpu::BufferUsages as U;
    let zero_copy = core.ctx.zero_copy_upload();
    let usage = U::STORAGE | if zero_copy { U::MAP_WRITE } else { U::COPY_DST };
    let mut needs: Vec<Need> = uploads
        .iter()
        .map(|u| Need {
            slot: u.slot,
            size: u.bytes().max(16),
            usage,
        })
        .collect();
    if !zero_copy {
        needs.push(Need {
            slot: Slot::Upload,
            size: uploads.iter().map(|u| u.bytes()).sum::<u64>().max(4),
            usage: U::MAP_WRITE | U::COPY_SRC,
        });
    }
    needs
}

/// A mapped buffer and the uploads written into it, each at its byte offset.
struct Placement<'b> {
    buffer: &'b wgpu::Buffer,
    bytes: u64,
    uploads: Vec<(usize, u64)>,
}

/// Writes `uploads` into their pool buffers (reserved by [`needs`]).
pub(crate) fn upload(core: &Core, pool: &Pool, uploads: &[Upload]) -> Result<(), FcosError> {
    let live: Vec<usize> = (0..uploads.len())
        .filter(|&i| uploads[i].bytes() > 0)
        .collect();
    if live.is_empty() {
        return Ok(());
    }
    if core.ctx.zero_copy_upload() {
        let placements = live
            .iter()
            .map(|&i| {
                Ok(Placement {
                    buffer: pool.get(uploads[i].slot)?,
                    bytes: uploads[i].bytes(),
                    uploads: vec![(i, 0)],
                })
            })
            .collect::<Result<Vec<_>, FcosError>>()?;
        return write_mapped(core, &placements, uploads);
    }
    let staging = Placement {
        buffer: pool.get(Slot::Upload)?,
        bytes: live.iter().map(|&i| uploads[i].bytes()).sum(),
        uploads: live
            .iter()
            .scan(0u64, |at, &i| {
                let start = *at;
                *at += uploads[i].bytes();
                Some((i, start))
            })
            .collect(),
    };
    write_mapped(core, std::slice::from_ref(&staging), uploads)?;
    let device = &core.ctx.device;
    scoped(device, || -> Result<(), FcosError> {
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("fcos upload"),
        });
        for &(i, start) in &staging.uploads {
            let dst = pool.get(uploads[i].slot)?;
            encoder.copy_buffer_to_buffer(staging.buffer, start, dst, 0, uploads[i].bytes());
        }
        core.ctx.queue.submit([encoder.finish()]);
        Ok(())
    })?
}

/// Maps every placement's buffer for writing (one wait) and writes its uploads.
fn write_mapped(
    core: &Core,
    placements: &[Placement],
    uploads: &[Upload],
) -> Result<(), FcosError> {
    let bufs: Vec<_> = placements.iter().map(|p| (p.buffer, 0..p.bytes)).collect();
    core.readback().map_all(&bufs, wgpu::MapMode::Write, None)?;
    let mut failed = None;
    for p in placements {
        match p.buffer.slice(0..p.bytes).get_mapped_range_mut() {
            Ok(mut view) => {
                for &(i, at) in &p.uploads {
                    let mut from = at as usize;
                    for part in &uploads[i].parts {
                        view.slice(from..from + part.len()).copy_from_slice(part);
                        from += part.len();
                    }
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
