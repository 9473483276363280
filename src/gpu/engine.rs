//! The engine: validates a call, uploads (host path) or binds (device path) the
//! inputs, runs the fused pass and the finalize reduce in one submission, and reads
//! back only the `[B] × {cls, cnt, reg, num_pos}` result (and, for the host backward
//! path, the gradients).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{LossConfig, LossWeights};
use crate::error::FcosError;
use crate::gpu::context::GpuContext;
use crate::gpu::params::{ImageLoss, Params, PARTIAL_BYTES};
use crate::gpu::pipelines::{Kernel, Pipelines, Spec, BACKWARD_STORAGE_BUFFERS};
use crate::gpu::plan::{Plan, PlanLimits, CHANNELS};
use crate::gpu::pool::{Pool, INPUT_NAMES};
use crate::gpu::shaders::{FusedVariant, WORKGROUP_SIZE};
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

/// Inputs already on the device, for apps that produce them there.
///
/// Each head's levels are packed one after another in one buffer, each level NCHW
/// contiguous: level `l` of `cls_logits` starts at element `B·C·off_l` (byte
/// `4·B·C·off_l`), of `cnt_logits` at `B·off_l`, of `reg_preds` at `4·B·off_l`,
/// where `off_l = Σ_{k<l} H_k·W_k` ([`Levels::packed_offset`]). Targets are as in
/// SPEC §1: `cls_targets`, `cnt_targets` `[B, P]`, `reg_targets` `[B, P, 4]`, `f32`.
/// Every buffer needs `BufferUsages::STORAGE` and must come from the engine's device.
#[derive(Debug, Clone, Copy)]
pub struct DeviceInputs<'a> {
    /// Images `B`.
    pub batch: usize,
    /// `Σ_l B·C·H_l·W_l` floats.
    pub cls_logits: &'a wgpu::Buffer,
    /// `B·P` floats.
    pub cnt_logits: &'a wgpu::Buffer,
    /// `4·B·P` floats.
    pub reg_preds: &'a wgpu::Buffer,
    /// `B·P` floats.
    pub cls_targets: &'a wgpu::Buffer,
    /// `B·P` floats.
    pub cnt_targets: &'a wgpu::Buffer,
    /// `4·B·P` floats.
    pub reg_targets: &'a wgpu::Buffer,
}

impl DeviceInputs<'_> {
    fn buffers(&self) -> [&wgpu::Buffer; 6] {
        [
            self.cls_logits,
            self.cnt_logits,
            self.reg_preds,
            self.cls_targets,
            self.cnt_targets,
            self.reg_targets,
        ]
    }
}

/// Gradient buffers on the device, laid out exactly like the matching
/// [`DeviceInputs`] heads (levels packed, NCHW). Each needs `BufferUsages::STORAGE`.
#[derive(Debug, Clone, Copy)]
pub struct DeviceGradients<'a> {
    /// dL/d`cls_logits`, `Σ_l B·C·H_l·W_l` floats.
    pub cls_logits: &'a wgpu::Buffer,
    /// dL/d`cnt_logits`, `B·P` floats.
    pub cnt_logits: &'a wgpu::Buffer,
    /// dL/d`reg_preds`, `4·B·P` floats.
    pub reg_preds: &'a wgpu::Buffer,
}

/// A result with its timing.
#[derive(Debug, Clone, PartialEq)]
pub struct Timed<T> {
    /// The result.
    pub value: T,
    /// GPU time of the kernels, from timestamp queries (`None` when the adapter has no
    /// `TIMESTAMP_QUERY`).
    pub kernel: Option<Duration>,
    /// Wall-clock time of the whole call (upload, kernels, readback).
    pub call: Duration,
}

impl<T> Timed<T> {
    /// The same times with `f` applied to the result.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Timed<U> {
        Timed {
            value: f(self.value),
            kernel: self.kernel,
            call: self.call,
        }
    }
}

/// The FCOS loss on a GPU. Pipelines and layouts are made once; buffers are pooled.
///
/// The engine is `Send + Sync`: calls from several threads are serialised on an
/// internal lock around the buffer pool, and each gets the same result it would get alone.
#[derive(Debug)]
pub struct FcosLoss {
    ctx: GpuContext,
    config: LossConfig,
    pipelines: Pipelines,
    pool: Mutex<Pool>,
    query_set: Option<wgpu::QuerySet>,
    timeout: Duration,
    target_workgroups: u32,
    checks: bool,
    spec: Spec,
}

mod dispatch;
mod locate;
mod transfer;

/// Where a call's inputs (or gradients) live.
enum Source<'a, const N: usize> {
    /// In the pool (host path).
    Pool,
    /// In the user's buffers (device path).
    User([&'a wgpu::Buffer; N]),
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

    /// Runs on a prepared [`GpuContext`].
    pub fn with_context(ctx: GpuContext, config: LossConfig) -> Result<Self, FcosError> {
        config.validate()?;
        let need = 7;
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
        let pipelines = scoped(&ctx.device, || Pipelines::new(&ctx.device, spec))?;
        let query_set = ctx
            .features
            .contains(wgpu::Features::TIMESTAMP_QUERY)
            .then(|| {
                scoped(&ctx.device, || {
                    ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
                        label: Some("fcos timestamps"),
                        ty: wgpu::QueryType::Timestamp,
                        count: 2,
                    })
                })
                .ok()
            })
            .flatten();
        let target_workgroups = match ctx.info.device_type {
            wgpu::DeviceType::Cpu => CPU_TARGET_WORKGROUPS,
            _ => GPU_TARGET_WORKGROUPS,
        };
        Ok(FcosLoss {
            ctx,
            config,
            pipelines,
            pool: Mutex::new(Pool::default()),
            query_set,
            timeout: DEFAULT_TIMEOUT,
            target_workgroups,
            checks: true,
            spec,
        })
    }

    /// The loss configuration.
    pub fn config(&self) -> &LossConfig {
        &self.config
    }

    /// Replaces the loss configuration. Pipelines are rebuilt only when γ switches
    /// between 2 and another value (γ = 2 is compiled in as a square).
    pub fn set_config(&mut self, config: LossConfig) -> Result<(), FcosError> {
        config.validate()?;
        self.rebuild(Spec {
            gamma_is_two: config.gamma == 2.0,
            ..self.spec
        })?;
        self.config = config;
        Ok(())
    }

    /// Threads per workgroup of every kernel (default [`WORKGROUP_SIZE`]): a power of
    /// two from 32 up to what the device allows. Rebuilds the pipelines.
    pub fn set_workgroup_size(&mut self, n: u32) -> Result<(), FcosError> {
        let l = &self.ctx.limits;
        // Workgroup memory per thread: the fused pass keeps a vec4<f32> and a flag
        // word (20 bytes), the finalize pass a vec3<f32> (16-byte stride) and two
        // u32 words (24 bytes).
        let storage = 24 * n as u64;
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
        self.rebuild(Spec {
            workgroup_size: n,
            ..self.spec
        })
    }

    /// Threads per workgroup of every kernel.
    pub fn workgroup_size(&self) -> u32 {
        self.spec.workgroup_size
    }

    /// Whether the fused pass reduces each workgroup with subgroup operations (the
    /// default where the device has `Features::SUBGROUP`) or with the shared-memory
    /// tree (everywhere else). Rebuilds the pipelines; asking for subgroups on a
    /// device without them is an error.
    pub fn set_subgroups(&mut self, enabled: bool) -> Result<(), FcosError> {
        if enabled && !self.ctx.features.contains(wgpu::Features::SUBGROUP) {
            return Err(FcosError::InvalidConfig(format!(
                "the device on '{}' has no Features::SUBGROUP",
                self.adapter_name()
            )));
        }
        self.rebuild(Spec {
            subgroups: enabled,
            ..self.spec
        })
    }

    /// Whether the fused pass reduces with subgroup operations.
    pub fn subgroups(&self) -> bool {
        self.spec.subgroups
    }

    fn rebuild(&mut self, spec: Spec) -> Result<(), FcosError> {
        if spec != self.spec {
            let device = &self.ctx.device;
            self.pipelines = scoped(device, || Pipelines::new(device, spec))?;
            self.spec = spec;
        }
        Ok(())
    }

    /// How long a call waits for the GPU before failing with [`FcosError::Timeout`]
    /// (default [`DEFAULT_TIMEOUT`]).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// How many workgroups the fused pass aims for (more fill a large GPU; fewer cost
    /// less on a CPU adapter). The default is [`GPU_TARGET_WORKGROUPS`], or
    /// [`CPU_TARGET_WORKGROUPS`] on a CPU adapter. Results stay bitwise deterministic
    /// for a given value (and differ from other values only by float rounding).
    pub fn set_target_workgroups(&mut self, n: u32) {
        self.target_workgroups = n.max(1);
    }

    /// Input value checks (on by default): both paths check the values on the GPU
    /// inside the fused pass (flags reduced with the losses). When one is bad, the
    /// host path runs [`crate::validate::check_values`] on the caller's slices and
    /// the device path reads its buffers back to do the same, so both return the
    /// same [`FcosError::Value`] naming the first bad element. Turning them off
    /// saves that time; bad values then give unspecified (possibly non-finite)
    /// losses instead of an error.
    pub fn set_checks(&mut self, enabled: bool) {
        self.checks = enabled;
    }

    /// Whether input value checks are on.
    pub fn checks(&self) -> bool {
        self.checks
    }

    /// The device context (device, queue, adapter info, limits).
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// `"<adapter name> (<backend>)"`.
    pub fn adapter_name(&self) -> String {
        self.ctx.adapter_label()
    }

    /// Whether kernel times come from timestamp queries.
    pub fn has_timestamps(&self) -> bool {
        self.query_set.is_some()
    }

    /// Buffers the engine has created so far (they are reused across calls).
    pub fn buffers_created(&self) -> u64 {
        self.pool.lock().map(|p| p.created).unwrap_or(0)
    }

    /// Loss of one batch from host slices: uploads the inputs, runs the kernels,
    /// reads back the per-image losses.
    pub fn compute(&self, levels: &Levels, inputs: &Inputs) -> Result<Losses, FcosError> {
        Ok(self.compute_timed(levels, inputs)?.value)
    }

    /// [`compute`](Self::compute) with its kernel and call times.
    pub fn compute_timed(
        &self,
        levels: &Levels,
        inputs: &Inputs,
    ) -> Result<Timed<Losses>, FcosError> {
        self.host_call(
            levels,
            inputs,
            FusedVariant::Forward,
            &LossWeights::default(),
        )
        .map(|t| t.map(|(losses, _)| losses))
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
        self.device_call(
            levels,
            inputs,
            None,
            FusedVariant::Forward,
            &LossWeights::default(),
        )
    }

    /// The memory roofline of this call on this adapter: a kernel that reads exactly
    /// the bytes the fused forward pass reads, in the same layout and order, and only
    /// sums them. With checks on (the default) that is every input element, as the
    /// checked pass reads; with checks off, the class logits and targets everywhere
    /// and the centerness and box inputs at the positives. Its value is meaningless;
    /// its time is the point.
    pub fn roofline_device(
        &self,
        levels: &Levels,
        inputs: &DeviceInputs,
    ) -> Result<Timed<()>, FcosError> {
        let t = self.device_call(
            levels,
            inputs,
            None,
            FusedVariant::Roofline,
            &LossWeights::default(),
        )?;
        Ok(t.map(drop))
    }

    /// The memory roofline of [`forward_backward_device`](Self::forward_backward_device)
    /// on this adapter: the same positive count, the same reads as the fused
    /// backward pass (every input element with checks on; without, the class logits
    /// and targets everywhere and the centerness and box inputs at the positives)
    /// and the same writes (every element of the three gradients once), with the
    /// maths replaced by a sum and a product (and no second read of the target
    /// class). Its losses are meaningless and it leaves meaningless values in
    /// `grads`; its time is the point: what moving the backward pass's bytes in its
    /// layout and order takes on this adapter, beside
    /// [`roofline_device`](Self::roofline_device) for the forward pass.
    pub fn backward_roofline_device(
        &self,
        levels: &Levels,
        inputs: &DeviceInputs,
        grads: &DeviceGradients,
    ) -> Result<Timed<()>, FcosError> {
        let t = self.device_call(
            levels,
            inputs,
            Some(grads),
            FusedVariant::BackwardRoofline,
            &LossWeights::default(),
        )?;
        Ok(t.map(drop))
    }

    /// Losses and gradients from host slices: the gradients of
    /// `L = w.cls·cls_loss + w.cnt·cnt_loss + w.reg·reg_loss` (batch means) with
    /// respect to every input logit and box, per level in the input layouts.
    pub fn forward_backward(
        &self,
        levels: &Levels,
        inputs: &Inputs,
        weights: &LossWeights,
    ) -> Result<(Losses, Gradients), FcosError> {
        let t = self.forward_backward_timed(levels, inputs, weights)?;
        Ok(t.value)
    }

    /// [`forward_backward`](Self::forward_backward) with its kernel and call times.
    pub fn forward_backward_timed(
        &self,
        levels: &Levels,
        inputs: &Inputs,
        weights: &LossWeights,
    ) -> Result<Timed<(Losses, Gradients)>, FcosError> {
        let t = self.host_call(levels, inputs, FusedVariant::Backward, weights)?;
        let (losses, grads) = t.value;
        let grads = grads
            .ok_or_else(|| FcosError::Gpu("the backward pass returned no gradients".into()))?;
        Ok(Timed {
            value: (losses, grads),
            kernel: t.kernel,
            call: t.call,
        })
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
        self.device_call(levels, inputs, Some(grads), FusedVariant::Backward, weights)
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
        if batch == 0 {
            return Err(FcosError::shape("batch", "B >= 1", "B = 0"));
        }
        crate::inputs::check_extent(levels, batch, self.config.num_classes as usize)?;
        self.check_buffer_sizes(levels, batch, backward)?;
        if levels.positions() > 0 {
            self.plan(levels, batch)?;
        }
        Ok(())
    }

    fn lock_pool(&self) -> Result<std::sync::MutexGuard<'_, Pool>, FcosError> {
        self.ctx.health()?;
        // Every pooled buffer is replaced whole, so a lock poisoned by a panic in
        // another thread still guards a consistent pool.
        Ok(self.pool.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn channels(&self, input: usize) -> usize {
        match CHANNELS[input] {
            0 => self.config.num_classes as usize,
            c => c as usize,
        }
    }

    fn input_bytes(&self, levels: &Levels, b: usize, input: usize) -> u64 {
        4 * levels.packed_len(b, self.channels(input)) as u64
    }

    fn plan(&self, levels: &Levels, b: usize) -> Result<Plan, FcosError> {
        if b as u64 > u32::MAX as u64 {
            return Err(FcosError::Limit(format!("B = {b} images is too many")));
        }
        Plan::new(
            levels,
            b as u32,
            self.config.num_classes,
            self.spec.workgroup_size,
            self.target_workgroups,
            PlanLimits::of(&self.ctx.limits),
        )
    }

    /// The host path's buffers against `max_buffer_size`: each input, the staging
    /// buffer that holds all six (where the upload is not zero-copy) and, for the
    /// backward pass, the readback buffer that holds the three gradients.
    fn check_buffer_sizes(
        &self,
        levels: &Levels,
        b: usize,
        backward: bool,
    ) -> Result<(), FcosError> {
        let max = self.ctx.limits.max_buffer_size;
        let bytes: Vec<u64> = (0..INPUT_NAMES.len())
            .map(|i| self.input_bytes(levels, b, i))
            .collect();
        for (name, &n) in INPUT_NAMES.iter().zip(&bytes) {
            if n > max || n > u32::MAX as u64 * 4 {
                return Err(FcosError::Limit(format!(
                    "{name} needs a {n}-byte buffer; the adapter allows max_buffer_size = {max}"
                )));
            }
        }
        let staged: u64 = bytes.iter().sum();
        if !self.ctx.zero_copy_upload() && staged > max {
            return Err(FcosError::Limit(format!(
                "the host path stages all six inputs in one {staged}-byte buffer; the adapter allows max_buffer_size = {max} (pass device buffers instead, or a smaller batch)"
            )));
        }
        let grads: u64 = bytes[..3].iter().sum();
        if backward && grads > max {
            return Err(FcosError::Limit(format!(
                "the host path reads the three gradients back through one {grads}-byte buffer; the adapter allows max_buffer_size = {max} (pass device gradient buffers instead, or a smaller batch)"
            )));
        }
        Ok(())
    }

    fn backward_available(&self, variant: FusedVariant) -> Result<(), FcosError> {
        if variant.writes_gradients() && self.pipelines.backward.is_none() {
            return Err(FcosError::Limit(format!(
                "the backward pass binds {BACKWARD_STORAGE_BUFFERS} storage buffers; the device allows max_storage_buffers_per_shader_stage = {}",
                self.ctx.limits.max_storage_buffers_per_shader_stage
            )));
        }
        Ok(())
    }

    fn zero_losses(&self, b: usize) -> Losses {
        Losses::from_per_image(
            vec![0.0; b],
            vec![0.0; b],
            vec![0.0; b],
            vec![0; b],
            self.config.add_centerness,
        )
    }

    fn empty_grads(&self, levels: &Levels, b: usize) -> Gradients {
        let head = |ch: usize| {
            (0..levels.len())
                .map(|l| vec![0.0; levels.level_len(l, b, ch)])
                .collect()
        };
        Gradients {
            cls_logits: head(self.config.num_classes as usize),
            cnt_logits: head(1),
            reg_preds: head(4),
        }
    }
}

fn whole(binding: u32, buf: &wgpu::Buffer) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry {
        binding,
        resource: buf.as_entire_binding(),
    }
}

fn range_entry(
    binding: u32,
    buf: &wgpu::Buffer,
    r: crate::gpu::plan::BindRange,
) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry {
        binding,
        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: buf,
            offset: r.offset,
            size: std::num::NonZeroU64::new(r.size),
        }),
    }
}

fn missing() -> FcosError {
    FcosError::Gpu("a pooled buffer is missing (an earlier allocation failed)".into())
}

/// Runs `f` inside validation and out-of-memory error scopes and turns what they
/// catch into [`FcosError::Gpu`].
pub(crate) fn scoped<T>(device: &wgpu::Device, f: impl FnOnce() -> T) -> Result<T, FcosError> {
    let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let out = f();
    let v = pollster::block_on(validation.pop());
    let o = pollster::block_on(oom.pop());
    match (v, o) {
        (Some(e), _) => Err(FcosError::Gpu(describe(&e))),
        (None, Some(e)) => Err(FcosError::Gpu(describe(&e))),
        (None, None) => Ok(out),
    }
}

/// wgpu's error with its full description (its `Display` alone says only the kind).
pub(crate) fn describe(e: &wgpu::Error) -> String {
    match e {
        wgpu::Error::OutOfMemory { .. } => "out of memory".to_string(),
        wgpu::Error::Validation { description, .. } => format!("validation: {description}"),
        wgpu::Error::Internal { description, .. } => format!("internal: {description}"),
    }
}
