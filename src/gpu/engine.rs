//! [`FcosLoss`]: the engine's settings and its public calls, each a few lines over
//! the host path ([`host`]) or the device path ([`device`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{LossConfig, LossWeights};
use crate::counts::Counts;
use crate::error::FcosError;
use crate::gpu::capture::CallCapture;
use crate::gpu::context::GpuContext;
use crate::gpu::core::Core;
use crate::gpu::device_inputs::{DeviceDenominators, DeviceGradients, DeviceInputs};
use crate::gpu::pass::Pass;
use crate::gpu::pipelines::Pipelines;
use crate::gpu::pool::Pool;
use crate::gpu::ranges::{RangedGradients, RangedInputs};
use crate::gpu::ring::{Ring, DEFAULT_RING_SIZE};
use crate::gpu::scope::scoped;
use crate::gpu::shaders::{Kernel, Spec, WORKGROUP_SIZE};
use crate::gpu::timed::Timed;
use crate::gpu::{counting, device, host};
use crate::input::Element;
use crate::inputs::Inputs;
use crate::layout::Levels;
use crate::losses::{Gradients, Losses};

/// Default time a call waits for the GPU before it returns [`FcosError::Timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Workgroups the fused pass aims for (positions × class chunks × images) on a GPU:
/// enough to fill a large one even at B = 1.
pub const GPU_TARGET_WORKGROUPS: u32 = 4096;

/// Workgroups the fused pass aims for on a CPU adapter (lavapipe, llvmpipe, WARP),
/// where each workgroup has a fixed cost and a few hundred keep every core busy.
pub const CPU_TARGET_WORKGROUPS: u32 = 256;

/// The FCOS loss on a GPU. Pipelines are built on first use and kept; buffers are
/// pooled.
///
/// The engine is `Send + Sync`: calls from several threads are serialised on an
/// internal lock around the buffer pool, and each gets the same result it would get alone.
#[derive(Debug)]
pub struct FcosLoss {
    pub(crate) core: Core,
}

impl FcosLoss {
    /// Opens a device of its own on the best adapter (see [`GpuContext::open`]).
    pub fn new(config: LossConfig) -> Result<Self, FcosError> {
        Self::with_context(GpuContext::open()?, config)
    }

    /// Runs on a device and queue the application already has.
    pub fn from_device(
        device: wgpu::Device,
        queue: wgpu::Queue,
        config: LossConfig,
    ) -> Result<Self, FcosError> {
        Self::with_context(GpuContext::from_device(device, queue), config)
    }

    /// Runs on a prepared [`GpuContext`]. Fails when the device cannot bind the
    /// forward pass's storage buffers.
    pub fn with_context(ctx: GpuContext, config: LossConfig) -> Result<Self, FcosError> {
        config.validate()?;
        let forward = Kernel::Fused {
            backward: false,
            checks: true,
            boxes: false,
            heads: crate::input::Dtype::F32,
        };
        let need = forward.storage_buffers();
        if ctx.limits.max_storage_buffers_per_shader_stage < need {
            return Err(FcosError::Limit(format!(
                "the forward pass binds {need} storage buffers; the device allows max_storage_buffers_per_shader_stage = {}",
                ctx.limits.max_storage_buffers_per_shader_stage
            )));
        }
        let spec = Spec {
            gamma_is_two: config.gamma == 2.0,
            workgroup_size: WORKGROUP_SIZE,
            subgroups: ctx.features.contains(wgpu::Features::SUBGROUP),
        };
        let query_set = timestamp_queries(&ctx);
        let target_workgroups = match ctx.info.device_type {
            wgpu::DeviceType::Cpu => CPU_TARGET_WORKGROUPS,
            _ => GPU_TARGET_WORKGROUPS,
        };
        Ok(FcosLoss {
            core: Core {
                ctx,
                config,
                pipelines: Pipelines::new(spec),
                pool: Mutex::new(Pool::default()),
                ring: Arc::new(Ring::new(DEFAULT_RING_SIZE)),
                query_set,
                timeout: DEFAULT_TIMEOUT,
                target_workgroups,
                checks: true,
                half_grads: false,
            },
        })
    }

    /// The loss configuration.
    pub fn config(&self) -> &LossConfig {
        &self.core.config
    }

    /// Replaces the loss configuration. Pipelines are rebuilt only when γ switches
    /// between 2 and another value (γ = 2 is compiled in as a square).
    pub fn set_config(&mut self, config: LossConfig) -> Result<(), FcosError> {
        config.validate()?;
        self.respec(Spec {
            gamma_is_two: config.gamma == 2.0,
            ..self.spec()
        });
        self.core.config = config;
        Ok(())
    }

    /// Threads per workgroup of every kernel (default [`WORKGROUP_SIZE`]): a power of
    /// two from 32 up to what the device allows. Rebuilds the pipelines.
    pub fn set_workgroup_size(&mut self, n: u32) -> Result<(), FcosError> {
        let l = &self.core.ctx.limits;
        // Workgroup memory per thread: the fused and finalize passes each keep a
        // vec4<f32> and a flag word (20 bytes), count.wgsl and norm.wgsl two
        // 4-byte words.
        let storage = 20 * n as u64;
        if !n.is_power_of_two()
            || !(32..=1024).contains(&n)
            || n > l.max_compute_invocations_per_workgroup
            || n > l.max_compute_workgroup_size_x
            || storage > l.max_compute_workgroup_storage_size as u64
        {
            return Err(FcosError::InvalidConfig(format!(
                "workgroup size must be a power of two in 32..=1024 within the device's limits (max_compute_invocations_per_workgroup = {}, max_compute_workgroup_size_x = {}, max_compute_workgroup_storage_size = {} bytes for {storage}), got {n}",
                l.max_compute_invocations_per_workgroup, l.max_compute_workgroup_size_x, l.max_compute_workgroup_storage_size
            )));
        }
        self.respec(Spec {
            workgroup_size: n,
            ..self.spec()
        });
        Ok(())
    }

    /// Threads per workgroup of every kernel.
    pub fn workgroup_size(&self) -> u32 {
        self.spec().workgroup_size
    }

    /// Whether the fused pass reduces each workgroup with subgroup operations (the
    /// default where the device has `Features::SUBGROUP`) or with the shared-memory
    /// tree (everywhere else). Rebuilds the pipelines; asking for subgroups on a
    /// device without them is an [`FcosError::InvalidCall`].
    pub fn set_subgroups(&mut self, enabled: bool) -> Result<(), FcosError> {
        if enabled && !self.core.ctx.features.contains(wgpu::Features::SUBGROUP) {
            return Err(FcosError::InvalidCall(format!(
                "subgroups were asked for, but the device on '{}' has no Features::SUBGROUP",
                self.adapter_name()
            )));
        }
        self.respec(Spec {
            subgroups: enabled,
            ..self.spec()
        });
        Ok(())
    }

    /// Whether the fused pass reduces with subgroup operations.
    pub fn subgroups(&self) -> bool {
        self.spec().subgroups
    }

    fn spec(&self) -> Spec {
        self.core.pipelines.spec()
    }

    /// A new (empty, lazily filled) pipeline cache when the constants change.
    fn respec(&mut self, spec: Spec) {
        if spec != self.spec() {
            self.core.pipelines = Pipelines::new(spec);
        }
    }

    /// How long a call waits for the GPU before failing with [`FcosError::Timeout`]
    /// (default [`DEFAULT_TIMEOUT`]).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.core.timeout = timeout;
    }

    /// How many workgroups the fused pass aims for (more fill a large GPU; fewer cost
    /// less on a CPU adapter). The default is [`GPU_TARGET_WORKGROUPS`], or
    /// [`CPU_TARGET_WORKGROUPS`] on a CPU adapter. Results stay bitwise deterministic
    /// for a given value (and differ from other values only by float rounding).
    pub fn set_target_workgroups(&mut self, n: u32) {
        self.core.target_workgroups = n.max(1);
    }

    /// Input value checks (on by default): both paths check the values on the GPU
    /// inside the fused pass (flags reduced with the losses). When one is bad, the
    /// host path runs [`crate::check_values`] on the caller's slices and the device
    /// path reads its buffers back to do the same, so both return the same
    /// [`FcosError::Value`] naming the first bad element. Turning them off saves that
    /// time; bad values then give unspecified (possibly non-finite) losses instead
    /// of an error.
    pub fn set_checks(&mut self, enabled: bool) {
        self.core.checks = enabled;
    }

    /// Half gradients (off by default): where the heads are `f16` or `bf16`,
    /// backward passes write the gradients in that dtype, rounded to nearest even
    /// (docs/contract.md §9), after computing them in `f32`. Device gradient
    /// buffers and ranges then hold 2-byte elements (in the heads' layout, each
    /// rounded up to a whole 4-byte word); host calls read the halves back and
    /// return them widened to `f32` (exactly). Calls on `f32` heads are unchanged.
    pub fn set_half_gradients(&mut self, enabled: bool) {
        self.core.half_grads = enabled;
    }

    /// Whether half gradients are on ([`set_half_gradients`](Self::set_half_gradients)).
    pub fn half_gradients(&self) -> bool {
        self.core.half_grads
    }

    /// Whether input value checks are on.
    pub fn checks(&self) -> bool {
        self.core.checks
    }

    /// The device context (device, queue, adapter info, limits).
    pub fn context(&self) -> &GpuContext {
        &self.core.ctx
    }

    /// `"<adapter name> (<backend>)"`.
    pub fn adapter_name(&self) -> String {
        self.core.ctx.adapter_label()
    }

    /// Whether kernel times come from timestamp queries.
    pub fn has_timestamps(&self) -> bool {
        self.core.query_set.is_some()
    }

    /// Buffers the engine has created so far (they are reused across calls), in
    /// its pool and its result slots.
    pub fn buffers_created(&self) -> u64 {
        let pool = self.core.pool.lock().map(|p| p.created).unwrap_or(0);
        pool + self.core.ring.buffers_created()
    }

    /// Loss of one batch from host slices: uploads the inputs, runs the kernels,
    /// reads back the per-image losses. A thin wrapper:
    /// `pollster::block_on(self.compute_async(levels, inputs))`.
    pub fn compute<T: Element>(
        &self,
        levels: &Levels,
        inputs: &Inputs<T>,
    ) -> Result<Losses, FcosError> {
        pollster::block_on(self.compute_async(levels, inputs))
    }

    /// [`compute`](Self::compute) with its kernel and call times: its own
    /// submission, with timestamp queries around the pass where the device has them,
    /// over the engine's pool (the same results, bit for bit).
    pub fn compute_timed<T: Element>(
        &self,
        levels: &Levels,
        inputs: &Inputs<T>,
    ) -> Result<Timed<Losses>, FcosError> {
        let t = host::run(
            &self.core,
            levels,
            inputs,
            Pass::Forward,
            &LossWeights::default(),
        )?;
        Ok(t.map(|(losses, _)| losses))
    }

    /// Loss of one batch whose inputs are already on the device (see [`DeviceInputs`]
    /// for the layout). Only the per-image losses come back to the host.
    pub fn compute_device(
        &self,
        levels: &Levels,
        inputs: &DeviceInputs,
    ) -> Result<Losses, FcosError> {
        Ok(self.compute_device_timed(levels, inputs)?.value)
    }

    /// [`compute_device`](Self::compute_device) with its kernel and call times.
    pub fn compute_device_timed(
        &self,
        levels: &Levels,
        inputs: &DeviceInputs,
    ) -> Result<Timed<Losses>, FcosError> {
        let weights = LossWeights::default();
        device::run(
            &self.core,
            levels,
            inputs,
            None,
            None,
            Pass::Forward,
            &weights,
        )
    }

    /// The call [`compute`](Self::compute) (or, with `backward`,
    /// [`forward_backward`](Self::forward_backward) with `weights`) makes on these
    /// slices, described for replay on another WebGPU implementation: the shader
    /// variant of each pipeline, every buffer with its contents just before the
    /// call, the clear and the dispatches in order with their bindings, and where
    /// the results lie ([`CallCapture`]). The call also runs here, and each result
    /// range keeps what this device computed. The engine's settings decide the
    /// variants (subgroups, workgroup size) and the plan (the context's limits and
    /// alignments); a value the checks flag is not an error here, it shows in the
    /// captured flags.
    pub fn capture<T: Element>(
        &self,
        levels: &Levels,
        inputs: &Inputs<T>,
        backward: bool,
        weights: &LossWeights,
    ) -> Result<CallCapture, FcosError> {
        let pass = Pass::losses(backward);
        host::capture(&self.core, levels, inputs, pass, weights)
    }

    /// Loss of one batch whose inputs lie in ranges of device buffers, one range
    /// per level of each head ([`RangedInputs`]): a framework's per-level tensors as
    /// they are, with no packing copy. Equal to
    /// [`compute_device`](Self::compute_device) on the same values packed. Misaligned
    /// or short ranges, or buffers without `STORAGE`, are errors naming the tensor
    /// and level, before anything is recorded.
    pub fn compute_ranges(
        &self,
        levels: &Levels,
        inputs: &RangedInputs,
    ) -> Result<Losses, FcosError> {
        let weights = LossWeights::default();
        let t = device::run_ranges(&self.core, levels, inputs, None, Pass::Forward, &weights)?;
        Ok(t.value)
    }

    /// Losses, with the gradients written into ranges of device buffers, one per
    /// level of each head ([`RangedGradients`], laid out like the head's level):
    /// [`forward_backward_device`](Self::forward_backward_device) for per-level
    /// ranges. A gradient range may not share a buffer with an input (wgpu cannot
    /// bind one buffer read-only and read-write in one dispatch) nor overlap another.
    pub fn forward_backward_ranges(
        &self,
        levels: &Levels,
        inputs: &RangedInputs,
        grads: &RangedGradients,
        weights: &LossWeights,
    ) -> Result<Losses, FcosError> {
        let t = device::run_ranges(
            &self.core,
            levels,
            inputs,
            Some(grads),
            Pass::Backward,
            weights,
        )?;
        Ok(t.value)
    }

    /// Losses and gradients from host slices: the gradients of
    /// `L = w.cls·cls_loss + w.cnt·cnt_loss + w.reg·reg_loss` (batch means) with
    /// respect to every input logit and box, per level in the input layouts.
    /// A thin wrapper: `pollster::block_on(self.forward_backward_async(..))`.
    pub fn forward_backward<T: Element>(
        &self,
        levels: &Levels,
        inputs: &Inputs<T>,
        weights: &LossWeights,
    ) -> Result<(Losses, Gradients), FcosError> {
        pollster::block_on(self.forward_backward_async(levels, inputs, weights))
    }

    /// [`forward_backward`](Self::forward_backward) with its kernel and call times.
    pub fn forward_backward_timed<T: Element>(
        &self,
        levels: &Levels,
        inputs: &Inputs<T>,
        weights: &LossWeights,
    ) -> Result<Timed<(Losses, Gradients)>, FcosError> {
        host::with_gradients(host::run(
            &self.core,
            levels,
            inputs,
            Pass::Backward,
            weights,
        )?)
    }

    /// Losses from device buffers, with the gradients written into the user's
    /// `grads` buffers on the device (nothing but the losses comes back). When the
    /// call fails on a bad input value ([`FcosError::Value`]), the gradient buffers
    /// have been written already and hold unspecified values.
    pub fn forward_backward_device(
        &self,
        levels: &Levels,
        inputs: &DeviceInputs,
        grads: &DeviceGradients,
        weights: &LossWeights,
    ) -> Result<Timed<Losses>, FcosError> {
        device::run(
            &self.core,
            levels,
            inputs,
            Some(grads),
            None,
            Pass::Backward,
            weights,
        )
    }

    /// [`compute_device`](Self::compute_device) with the global normalisation's
    /// denominators `(N_g, Z_g)` read from a device buffer (the config's
    /// normalisation must be [`Normalization::Global`](crate::Normalization::Global);
    /// its host values are then ignored): for data-parallel training, where a
    /// collective on the GPU produced them.
    pub fn compute_device_global(
        &self,
        levels: &Levels,
        inputs: &DeviceInputs,
        denominators: &DeviceDenominators,
    ) -> Result<Timed<Losses>, FcosError> {
        let weights = LossWeights::default();
        let dens = Some(denominators);
        device::run(
            &self.core,
            levels,
            inputs,
            None,
            dens,
            Pass::Forward,
            &weights,
        )
    }

    /// [`forward_backward_device`](Self::forward_backward_device) with the global
    /// denominators read from a device buffer, as
    /// [`compute_device_global`](Self::compute_device_global).
    pub fn forward_backward_device_global(
        &self,
        levels: &Levels,
        inputs: &DeviceInputs,
        grads: &DeviceGradients,
        weights: &LossWeights,
        denominators: &DeviceDenominators,
    ) -> Result<Timed<Losses>, FcosError> {
        let (grads, dens) = (Some(grads), Some(denominators));
        device::run(
            &self.core,
            levels,
            inputs,
            grads,
            dens,
            Pass::Backward,
            weights,
        )
    }

    /// The counting phase on the device, without the loss: each image's positives
    /// and centerness-target sum of `cnt_targets` (`[B, P]` floats, `STORAGE`),
    /// returned and, with `out = Some((buffer, offset))` (`COPY_DST`, a 4-byte
    /// aligned offset), written there as `1 + B` pairs of `f32`: the totals
    /// `(Σ n_b, Σ Z_b)` first, then `(n_b, Z_b)` per image (counts are exact below
    /// 2^24). After an all-reduce of the first pair (sum over replicas, divided by
    /// their number) the buffer holds the global denominators at `offset`, as
    /// [`DeviceDenominators`] reads them. Host slices: [`Counts::of`].
    pub fn count_device(
        &self,
        levels: &Levels,
        batch: usize,
        cnt_targets: &wgpu::Buffer,
        out: Option<(&wgpu::Buffer, u64)>,
    ) -> Result<Counts, FcosError> {
        counting::run(&self.core, levels, batch, cnt_targets, out)
    }

    /// Checks, without running anything, that a batch of `batch` images at `levels`
    /// fits this engine's device: element counts that fit the address space, each
    /// input within `max_buffer_size`, the host path's staging buffer (and, with
    /// `backward`, its gradient readback buffer) too, and a plan within the binding
    /// and dispatch limits. The errors are the ones a call would return.
    pub fn check_fits(
        &self,
        levels: &Levels,
        batch: usize,
        backward: bool,
    ) -> Result<(), FcosError> {
        self.core.check_batch(levels, batch)?;
        self.core
            .check_buffer_sizes(levels, batch, crate::input::Dtype::F32, backward)?;
        if levels.positions() > 0 {
            self.core.plan(levels, batch)?;
        }
        Ok(())
    }

    /// The engine's state, for the bench harness's roofline calls.
    #[cfg(feature = "bench")]
    pub(crate) fn core(&self) -> &Core {
        &self.core
    }
}

/// Two timestamp queries around the compute pass, where the device has them.
fn timestamp_queries(ctx: &GpuContext) -> Option<wgpu::QuerySet> {
    if !ctx.features.contains(wgpu::Features::TIMESTAMP_QUERY) {
        return None;
    }
    scoped(&ctx.device, || {
        ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("fcos timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        })
    })
    .ok()
}
