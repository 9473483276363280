//! The device path: check the caller's buffers, run the call on them, and read
//! back only the losses (gradients stay in the caller's buffers).

use std::time::Instant;

use crate::config::LossWeights;
use crate::error::FcosError;
use crate::gpu::call::Call;
use crate::gpu::core::Core;
use crate::gpu::device_inputs::{DeviceGradients, DeviceInputs};
use crate::gpu::locate::locate_bad_input;
use crate::gpu::pass::Pass;
use crate::gpu::timed::Timed;
use crate::input::Head;
use crate::layout::Levels;
use crate::losses::Losses;

/// Runs `pass` on device buffers (`grads` for the passes that write gradients).
pub(crate) fn run(
    core: &Core,
    levels: &Levels,
    inputs: &DeviceInputs,
    grads: Option<&DeviceGradients>,
    pass: Pass,
    weights: &LossWeights,
) -> Result<Timed<Losses>, FcosError> {
    let start = Instant::now();
    weights.check()?;
    let b = inputs.batch;
    core.check_batch(levels, b)?;
    check_buffers(core, levels, inputs, grads)?;
    if pass.writes_gradients() && grads.is_none() {
        return Err(FcosError::InvalidCall(
            "the backward pass needs gradient buffers".into(),
        ));
    }
    if levels.positions() == 0 {
        return Ok(Timed {
            value: core.zero_losses(b),
            kernel: None,
            call: start.elapsed(),
        });
    }
    let mut pool = core.lock_pool()?;
    let planned = core.prepare(&mut pool, levels, b, pass, weights, Vec::new())?;
    let call = Call {
        planned: &planned,
        inputs: inputs.buffers(),
        grads: grads.copied(),
        read_grads: None,
    };
    let outcome = core.execute(&pool, &call)?;
    if outcome.flags != 0 {
        drop(pool);
        return Err(locate_bad_input(core, levels, inputs, outcome.flags));
    }
    Ok(Timed {
        value: outcome.losses,
        kernel: outcome.kernel,
        call: start.elapsed(),
    })
}

/// Each buffer at least as large as the layout needs, with `STORAGE` usage.
fn check_buffers(
    core: &Core,
    levels: &Levels,
    inputs: &DeviceInputs,
    grads: Option<&DeviceGradients>,
) -> Result<(), FcosError> {
    let b = inputs.batch;
    let named = inputs
        .buffers()
        .iter()
        .map(|(input, buf)| {
            (
                format!("{input} buffer"),
                *buf,
                core.bytes(input, levels, b),
            )
        })
        .collect::<Vec<_>>();
    let grad_named = grads.into_iter().flat_map(|g| {
        Head::ALL.map(|h| {
            (
                format!("grad {h} buffer"),
                g[h],
                core.bytes(h.input(), levels, b),
            )
        })
    });
    for (name, buf, need) in named.into_iter().chain(grad_named) {
        if buf.size() < need {
            return Err(FcosError::shape(
                name,
                format!("at least {need} bytes ({} f32)", need / 4),
                format!("{} bytes", buf.size()),
            ));
        }
        if !buf.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(FcosError::InvalidCall(format!(
                "{name} lacks BufferUsages::STORAGE (its usage is {:?})",
                buf.usage()
            )));
        }
    }
    Ok(())
}
