//! The counting phase on the device: the counting and normalisation passes alone
//! over `cnt_targets`, their counts copied into the caller's buffer and read back,
//! without computing the loss.

use crate::config::LossWeights;
use crate::counts::Counts;
use crate::error::FcosError;
use crate::gpu::bind;
use crate::gpu::call::DenominatorSource;
use crate::gpu::core::Core;
use crate::gpu::encode;
use crate::gpu::params::Count;
use crate::gpu::pool::{Need, Slot};
use crate::gpu::scope::scoped;
use crate::gpu::shaders::Kernel;
use crate::gpu::work::{count_bytes, counts_need, norm_need, scale_slots_need, NormBuffers};
use crate::input::{Dtype, Input};
use crate::layout::Levels;

/// Where the counting phase writes its counts: `(buffer, byte offset)`.
pub(crate) type CountsOut<'a> = Option<(&'a wgpu::Buffer, u64)>;

/// Counts `batch` images of the device buffer `cnt_targets` (`[B, P]`), writes
/// the counts (totals first) into `out` where given, and returns them.
pub(crate) fn run(
    core: &Core,
    levels: &Levels,
    batch: usize,
    cnt_targets: &wgpu::Buffer,
    out: CountsOut,
) -> Result<Counts, FcosError> {
    core.check_batch(levels, batch)?;
    check_buffers(core, levels, batch, cnt_targets, out)?;
    if levels.positions() == 0 {
        let zeros = vec![0u8; count_bytes(batch as u32) as usize];
        if let Some((buf, at)) = out {
            scoped(&core.ctx.device, || {
                core.ctx.queue.write_buffer(buf, at, &zeros)
            })?;
        }
        return Ok(Counts {
            num_pos: vec![0; batch],
            ctr: vec![0.0; batch],
        });
    }
    let (plan, params) = core.plan_with_params(levels, batch, &LossWeights::default(), None)?;
    let device = &core.ctx.device;
    let count = core.pipelines.get(device, Kernel::Count)?;
    let normalize = core.pipelines.get(device, Kernel::Normalize)?;
    let bytes = count_bytes(plan.batch);
    let mut pool = core.lock_pool()?;
    let mut needs: Vec<Need> = vec![scale_slots_need(plan.batch), norm_need()];
    needs.push(counts_need(plan.batch));
    needs.push(Need {
        slot: Slot::Params,
        size: params.size(),
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
    });
    needs.push(Need {
        slot: Slot::CountsReadback,
        size: bytes,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
    });
    pool.reserve(device, &needs)?;
    let norm = NormBuffers::from_pool(&pool)?;
    let counts = pool.get(Slot::Counts)?;
    let (params_buf, readback) = (pool.get(Slot::Params)?, pool.get(Slot::CountsReadback)?);
    let index = scoped(device, || {
        let source = DenominatorSource::Host([0.0, 0.0]);
        let uniforms = (&params, params_buf);
        let groups = bind::count_groups(device, &count, uniforms, &plan, cnt_targets, counts);
        let total = bind::normalize_group(
            device, &normalize, uniforms, counts, &norm, source, plan.batch,
        );
        core.ctx.queue.write_buffer(params_buf, 0, &params.bytes);
        core.write_denominators(source, &norm);
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("fcos count"),
        });
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            encode::count(&mut pass, &count, &groups);
            // The normalisation pass writes the totals into slot 0.
            encode::normalize(&mut pass, &normalize, &total);
        }
        encoder.copy_buffer_to_buffer(counts, 0, readback, 0, bytes);
        if let Some((buf, at)) = out {
            encoder.copy_buffer_to_buffer(counts, 0, buf, at, bytes);
        }
        core.ctx.queue.submit([encoder.finish()])
    })?;
    let read = core.readback().read(readback, 0..bytes, Some(index))?;
    let counts: Vec<Count> = bytemuck::pod_collect_to_vec(&read);
    Ok(Counts {
        num_pos: counts[1..].iter().map(|c| c.num_pos as u32).collect(),
        ctr: counts[1..].iter().map(|c| c.ctr as f64).collect(),
    })
}

/// `cnt_targets` large enough with `STORAGE`; `out` large enough from its offset
/// (a multiple of 4) with `COPY_DST`.
fn check_buffers(
    core: &Core,
    levels: &Levels,
    batch: usize,
    cnt_targets: &wgpu::Buffer,
    out: CountsOut,
) -> Result<(), FcosError> {
    let need = core.bytes(Input::CntTargets, levels, batch, Dtype::F32);
    if cnt_targets.size() < need {
        return Err(FcosError::shape(
            "cnt_targets buffer",
            format!("at least {need} bytes ({} f32)", need / 4),
            format!("{} bytes", cnt_targets.size()),
        ));
    }
    if !cnt_targets.usage().contains(wgpu::BufferUsages::STORAGE) {
        return Err(FcosError::InvalidCall(format!(
            "cnt_targets buffer lacks BufferUsages::STORAGE (its usage is {:?})",
            cnt_targets.usage()
        )));
    }
    let Some((buf, at)) = out else {
        return Ok(());
    };
    if !at.is_multiple_of(4) {
        return Err(FcosError::InvalidCall(format!(
            "the counts output buffer's offset {at} is not a multiple of 4"
        )));
    }
    let bytes = count_bytes(batch as u32);
    if buf.size() < at.saturating_add(bytes) {
        return Err(FcosError::shape(
            "counts output buffer",
            format!("{bytes} bytes from offset {at}"),
            format!("{} bytes", buf.size()),
        ));
    }
    if !buf.usage().contains(wgpu::BufferUsages::COPY_DST) {
        return Err(FcosError::InvalidCall(format!(
            "counts output buffer lacks BufferUsages::COPY_DST (its usage is {:?})",
            buf.usage()
        )));
    }
    Ok(())
}
