//! The host path: check the slices, upload them into the pool, run the call, and
//! read back the losses (and, for the backward pass, the gradients).

use std::time::Instant;

use crate::config::LossWeights;
use crate::error::FcosError;
use crate::gpu::call::Call;
use crate::gpu::core::Core;
use crate::gpu::locate::name_bad_input;
use crate::gpu::pass::Pass;
use crate::gpu::pool::{Need, Pool, Slot};
use crate::gpu::timed::Timed;
use crate::gpu::upload;
use crate::input::{ByInput, Head, Heads};
use crate::inputs::Inputs;
use crate::layout::Levels;
use crate::losses::{Gradients, Losses};

/// Runs `pass` on host slices.
pub(crate) fn run(
    core: &Core,
    levels: &Levels,
    inputs: &Inputs,
    pass: Pass,
    weights: &LossWeights,
) -> Result<Timed<(Losses, Option<Gradients>)>, FcosError> {
    let start = Instant::now();
    weights.check()?;
    inputs.check_shapes(levels, core.classes())?;
    let b = inputs.batch;
    let backward = pass.writes_gradients();
    if levels.positions() == 0 {
        let grads = backward.then(|| core.empty_grads(levels, b));
        return Ok(Timed {
            value: (core.zero_losses(b), grads),
            kernel: None,
            call: start.elapsed(),
        });
    }
    core.check_buffer_sizes(levels, b, backward)?;
    // Before any upload: a pass the device cannot build fails here.
    core.call_pipelines(pass, core.checks, pass.writes_gradients())?;
    let mut pool = core.lock_pool()?;
    let mut extra = upload::needs(core, levels, b);
    if backward {
        extra.extend(gradient_needs(core, levels, b));
    }
    let planned = core.prepare(&mut pool, levels, b, pass, weights, None, extra)?;
    let pool = &*pool;
    upload::upload(core, pool, levels, inputs)?;
    let call = Call {
        planned: &planned,
        inputs: ByInput::try_from_fn(|input| pool.get(Slot::Input(input)))?,
        grads: backward
            .then(|| Heads::try_from_fn(|h| pool.get(Slot::Grad(h))))
            .transpose()?,
        read_grads: backward.then(|| pool.get(Slot::GradReadback)).transpose()?,
    };
    // The values are checked inside the fused pass, as on the device path (cheaper
    // than a separate pass over the host slices); only when it flags one does the
    // host validator look for the first bad element, in the caller's slices.
    let outcome = core.execute(pool, &call)?;
    if outcome.flags != 0 {
        return Err(name_bad_input(core, levels, inputs, outcome.flags));
    }
    let grads = backward
        .then(|| read_gradients(core, pool, levels, b))
        .transpose()?;
    Ok(Timed {
        value: (outcome.losses, grads),
        kernel: outcome.kernel,
        call: start.elapsed(),
    })
}

/// The pooled gradient buffers and their mappable copy.
fn gradient_needs(core: &Core, levels: &Levels, b: usize) -> Vec<Need> {
    use wgpu::BufferUsages as U;
    let mut needs: Vec<Need> = Head::ALL
        .iter()
        .map(|&h| Need {
            slot: Slot::Grad(h),
            size: core.bytes(h.input(), levels, b),
            usage: U::STORAGE | U::COPY_SRC,
        })
        .collect();
    needs.push(Need {
        slot: Slot::GradReadback,
        size: needs.iter().map(|n| n.size).sum(),
        usage: U::MAP_READ | U::COPY_DST,
    });
    needs
}

/// Reads the pooled gradient copy (filled by the call's submission) into
/// per-level vectors.
fn read_gradients(
    core: &Core,
    pool: &Pool,
    levels: &Levels,
    b: usize,
) -> Result<Gradients, FcosError> {
    let staging = pool.get(Slot::GradReadback)?;
    let total: u64 = Head::ALL
        .iter()
        .map(|h| core.bytes(h.input(), levels, b))
        .sum();
    let bytes = core.readback().read(staging, 0..total, None)?;
    let floats: &[f32] = bytemuck::try_cast_slice(&bytes)
        .map_err(|e| FcosError::gpu(format!("gradient readback: {e}")))?;
    let mut at = 0usize;
    Ok(Heads::from_fn(|h| {
        let ch = h.channels(core.classes());
        (0..levels.len())
            .map(|l| {
                let n = levels.level_len(l, b, ch);
                at += n;
                floats[at - n..at].to_vec()
            })
            .collect()
    }))
}
