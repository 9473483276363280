//! The device path: check the caller's buffers, run the call on them, and read
//! back only the losses (gradients stay in the caller's buffers).

use std::time::Instant;

use crate::config::{LossWeights, Normalization};
use crate::error::FcosError;
use crate::gpu::call::Call;
use crate::gpu::core::Core;
use crate::gpu::device_inputs::{DeviceDenominators, DeviceGradients, DeviceInputs};
use crate::gpu::locate::locate_bad_input;
use crate::gpu::pass::Pass;
use crate::gpu::timed::Timed;
use crate::input::Head;
use crate::layout::Levels;
use crate::losses::Losses;

/// Runs `pass` on device buffers (`grads` for the passes that write gradients;
/// `denominators` for the global normalisation from a device buffer).
pub(crate) fn run(
    core: &Core,
    levels: &Levels,
    inputs: &DeviceInputs,
    grads: Option<&DeviceGradients>,
    denominators: Option<&DeviceDenominators>,
    pass: Pass,
    weights: &LossWeights,
) -> Result<Timed<Losses>, FcosError> {
    let start = Instant::now();
    weights.check()?;
    let b = inputs.batch;
    core.check_batch(levels, b)?;
    check_buffers(core, levels, inputs, grads)?;
    if let Some(d) = denominators {
        check_denominators(core, d)?;
    }
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
    let dens = denominators.copied();
    let planned = core.prepare(&mut pool, levels, b, pass, weights, dens, Vec::new())?;
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

/// A device buffer of global denominators: only with the global normalisation,
/// `STORAGE` usage, an aligned offset and two floats there.
fn check_denominators(core: &Core, d: &DeviceDenominators) -> Result<(), FcosError> {
    const NAME: &str = "global denominators buffer";
    if !matches!(core.config.normalization, Normalization::Global(_)) {
        return Err(FcosError::InvalidCall(format!(
            "a {NAME} was given, but the normalisation is {} (denominators from a buffer need Normalization::Global)",
            core.config.normalization.name()
        )));
    }
    let align = core.ctx.limits.min_storage_buffer_offset_alignment as u64;
    if !d.offset.is_multiple_of(align) {
        return Err(FcosError::InvalidCall(format!(
            "the {NAME}'s offset {} is not a multiple of min_storage_buffer_offset_alignment = {align}",
            d.offset
        )));
    }
    if d.buffer.size() < d.offset.saturating_add(8) {
        return Err(FcosError::shape(
            NAME,
            format!(
                "at least {} bytes (two f32 at offset {})",
                d.offset + 8,
                d.offset
            ),
            format!("{} bytes", d.buffer.size()),
        ));
    }
    if !d.buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
        return Err(FcosError::InvalidCall(format!(
            "the {NAME} lacks BufferUsages::STORAGE (its usage is {:?})",
            d.buffer.usage()
        )));
    }
    Ok(())
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
