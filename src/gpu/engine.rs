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

mod locate;

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
        // The fused pass keeps one vec4<f32> per thread in workgroup memory, plus a flag word.
        let storage = 16 * n as u64 + 16;
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

    /// Input value checks (on by default): the host path checks the values on the
    /// CPU before uploading ([`crate::validate::check_values`]); the device path
    /// checks them on the GPU inside the fused pass and, when one is bad, finds the
    /// first bad element and returns the same [`FcosError::Value`] the host path
    /// would. Turning them off saves that time; bad values then give unspecified
    /// (possibly non-finite) losses instead of an error.
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
        .map(|t| Timed {
            value: t.value.0,
            kernel: t.kernel,
            call: t.call,
        })
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
    /// sums them. Its value is meaningless; its time is the point.
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
        Ok(Timed {
            value: (),
            kernel: t.kernel,
            call: t.call,
        })
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
    /// `grads` buffers on the device (nothing but the losses comes back).
    pub fn forward_backward_device(
        &self,
        levels: &Levels,
        inputs: &DeviceInputs,
        grads: &DeviceGradients,
        weights: &LossWeights,
    ) -> Result<Timed<Losses>, FcosError> {
        self.device_call(levels, inputs, Some(grads), FusedVariant::Backward, weights)
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

    fn check_buffer_sizes(&self, levels: &Levels, b: usize) -> Result<(), FcosError> {
        let limits = &self.ctx.limits;
        for (i, name) in INPUT_NAMES.iter().enumerate() {
            let bytes = self.input_bytes(levels, b, i);
            if bytes > limits.max_buffer_size || bytes > u32::MAX as u64 * 4 {
                return Err(FcosError::Limit(format!(
                    "{name} needs a {bytes}-byte buffer; the adapter allows max_buffer_size = {}",
                    limits.max_buffer_size
                )));
            }
        }
        Ok(())
    }

    fn backward_available(&self, variant: FusedVariant) -> Result<(), FcosError> {
        if variant == FusedVariant::Backward && self.pipelines.backward.is_none() {
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

    fn host_call(
        &self,
        levels: &Levels,
        inputs: &Inputs,
        variant: FusedVariant,
        weights: &LossWeights,
    ) -> Result<Timed<(Losses, Option<Gradients>)>, FcosError> {
        let start = Instant::now();
        self.backward_available(variant)?;
        inputs.check_shapes(levels, self.config.num_classes as usize)?;
        if self.checks {
            crate::validate::check_values(levels, inputs, self.config.num_classes as usize)?;
        }
        let b = inputs.batch;
        let backward = variant == FusedVariant::Backward;
        if levels.positions() == 0 {
            let grads = backward.then(|| self.empty_grads(levels, b));
            return Ok(Timed {
                value: (self.zero_losses(b), grads),
                kernel: None,
                call: start.elapsed(),
            });
        }
        self.check_buffer_sizes(levels, b)?;
        let plan = self.plan(levels, b)?;
        let mut guard = self.lock_pool()?;
        let pool = &mut *guard;
        let device = &self.ctx.device;
        scoped(device, || {
            let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
            for (i, name) in INPUT_NAMES.iter().enumerate() {
                let bytes = self.input_bytes(levels, b, i);
                Pool::ensure(
                    &mut pool.inputs[i],
                    &mut pool.created,
                    device,
                    name,
                    bytes,
                    usage,
                );
            }
            if backward {
                let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
                let mut total = 0;
                for (i, name) in ["grad cls_logits", "grad cnt_logits", "grad reg_preds"]
                    .iter()
                    .enumerate()
                {
                    let bytes = self.input_bytes(levels, b, i);
                    total += bytes;
                    Pool::ensure(
                        &mut pool.grads[i],
                        &mut pool.created,
                        device,
                        name,
                        bytes,
                        usage,
                    );
                }
                Pool::ensure(
                    &mut pool.grad_readback,
                    &mut pool.created,
                    device,
                    "grad readback",
                    total,
                    wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                );
            }
        })?;
        self.upload(pool, levels, inputs)?;
        let grad_source = backward.then_some(Source::Pool);
        // Values were checked on the host: the kernel need not check them again.
        let (losses, kernel, _) = self.execute(
            pool,
            levels,
            &plan,
            Source::Pool,
            grad_source,
            variant,
            false,
            weights,
        )?;
        let grads = if backward {
            Some(self.read_grads(pool, levels, b)?)
        } else {
            None
        };
        Ok(Timed {
            value: (losses, grads),
            kernel,
            call: start.elapsed(),
        })
    }

    fn device_call(
        &self,
        levels: &Levels,
        inputs: &DeviceInputs,
        grads: Option<&DeviceGradients>,
        variant: FusedVariant,
        weights: &LossWeights,
    ) -> Result<Timed<Losses>, FcosError> {
        let start = Instant::now();
        self.backward_available(variant)?;
        let b = inputs.batch;
        if b == 0 {
            return Err(FcosError::shape("batch", "B >= 1", "B = 0"));
        }
        let mut named: Vec<(String, &wgpu::Buffer, u64)> = inputs
            .buffers()
            .iter()
            .enumerate()
            .map(|(i, buf)| {
                (
                    format!("{} buffer", INPUT_NAMES[i]),
                    *buf,
                    self.input_bytes(levels, b, i),
                )
            })
            .collect();
        if let Some(g) = grads {
            for (i, buf) in [g.cls_logits, g.cnt_logits, g.reg_preds]
                .into_iter()
                .enumerate()
            {
                named.push((
                    format!("grad {} buffer", INPUT_NAMES[i]),
                    buf,
                    self.input_bytes(levels, b, i),
                ));
            }
        }
        for (name, buf, need) in &named {
            if buf.size() < *need {
                return Err(FcosError::shape(
                    name.clone(),
                    format!("at least {need} bytes ({} f32)", need / 4),
                    format!("{} bytes", buf.size()),
                ));
            }
            if !buf.usage().contains(wgpu::BufferUsages::STORAGE) {
                return Err(FcosError::Gpu(format!(
                    "{name} lacks BufferUsages::STORAGE (its usage is {:?})",
                    buf.usage()
                )));
            }
        }
        if variant == FusedVariant::Backward && grads.is_none() {
            return Err(FcosError::Gpu(
                "the backward pass needs gradient buffers".into(),
            ));
        }
        if levels.positions() == 0 {
            return Ok(Timed {
                value: self.zero_losses(b),
                kernel: None,
                call: start.elapsed(),
            });
        }
        let plan = self.plan(levels, b)?;
        let mut guard = self.lock_pool()?;
        let grad_source = grads.map(|g| Source::User([g.cls_logits, g.cnt_logits, g.reg_preds]));
        let checked = self.checks && variant != FusedVariant::Roofline;
        let (losses, kernel, flags) = self.execute(
            &mut guard,
            levels,
            &plan,
            Source::User(inputs.buffers()),
            grad_source,
            variant,
            checked,
            weights,
        )?;
        if flags != 0 {
            drop(guard);
            return Err(self.locate_bad_input(levels, inputs, flags));
        }
        Ok(Timed {
            value: losses,
            kernel,
            call: start.elapsed(),
        })
    }

    /// Makes the work buffers, encodes every dispatch of `plan` in one compute pass,
    /// submits, and reads back the per-image losses and the kernel time.
    #[allow(clippy::too_many_arguments)]
    fn execute(
        &self,
        pool: &mut Pool,
        levels: &Levels,
        plan: &Plan,
        inputs: Source<'_, 6>,
        grads: Option<Source<'_, 3>>,
        variant: FusedVariant,
        checked: bool,
        weights: &LossWeights,
    ) -> Result<(Losses, Option<Duration>, u32), FcosError> {
        let device = &self.ctx.device;
        let b = plan.batch as u64;
        let backward = variant == FusedVariant::Backward;
        let stride = (std::mem::size_of::<Params>() as u64)
            .next_multiple_of(self.ctx.limits.min_uniform_buffer_offset_alignment.max(16) as u64);
        let slots = 1 + plan.segments.len() as u64;
        let out_bytes = std::mem::size_of::<ImageLoss>() as u64 * b;
        scoped(device, || {
            let created = &mut pool.created;
            let storage = wgpu::BufferUsages::STORAGE;
            // Sized by a bound that only grows with B, so a smaller batch never regrows it.
            let partial_bytes = PARTIAL_BYTES * b * plan.partials_capacity_per_image as u64;
            Pool::ensure(
                &mut pool.partials,
                created,
                device,
                "fcos partials",
                partial_bytes,
                storage,
            );
            Pool::ensure(
                &mut pool.image_losses,
                created,
                device,
                "fcos image losses",
                out_bytes,
                storage | wgpu::BufferUsages::COPY_SRC,
            );
            Pool::ensure(
                &mut pool.readback,
                created,
                device,
                "fcos readback",
                out_bytes + 16,
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            );
            Pool::ensure(
                &mut pool.params,
                created,
                device,
                "fcos params",
                stride * slots,
                wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            );
            if backward {
                Pool::ensure(
                    &mut pool.num_pos,
                    created,
                    device,
                    "fcos num_pos",
                    4 * b,
                    storage,
                );
            }
            if self.query_set.is_some() {
                Pool::ensure(
                    &mut pool.timestamps,
                    created,
                    device,
                    "fcos timestamps",
                    16,
                    wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                );
            }
        })?;
        let pool = &*pool;
        let partials = pool.partials.as_ref().ok_or_else(missing)?;
        let image_losses = pool.image_losses.as_ref().ok_or_else(missing)?;
        let readback = pool.readback.as_ref().ok_or_else(missing)?;
        let params_buf = pool.params.as_ref().ok_or_else(missing)?;
        let input_bufs: [&wgpu::Buffer; 6] = match inputs {
            Source::User(bufs) => bufs,
            Source::Pool => {
                let mut out = Vec::with_capacity(6);
                for slot in &pool.inputs {
                    out.push(slot.as_ref().ok_or_else(missing)?);
                }
                out.try_into().map_err(|_| missing())?
            }
        };
        let grad_bufs: Option<[&wgpu::Buffer; 3]> = match grads {
            None => None,
            Some(Source::User(bufs)) => Some(bufs),
            Some(Source::Pool) => {
                let mut out = Vec::with_capacity(3);
                for slot in &pool.grads {
                    out.push(slot.as_ref().ok_or_else(missing)?);
                }
                Some(out.try_into().map_err(|_| missing())?)
            }
        };
        let num_pos = if backward {
            Some(pool.num_pos.as_ref().ok_or_else(missing)?)
        } else {
            None
        };
        let p = &self.pipelines;
        let kernel: &Kernel = match (variant, checked) {
            (FusedVariant::Forward, false) => &p.forward,
            (FusedVariant::Forward, true) => &p.forward_checked,
            (FusedVariant::Roofline, _) => &p.roofline,
            (FusedVariant::Backward, false) => p.backward.as_ref().ok_or_else(missing)?,
            (FusedVariant::Backward, true) => p.backward_checked.as_ref().ok_or_else(missing)?,
        };

        // Params: slot 0 global, slot 1 + s for segment s.
        let global = plan.global_params(&Params::global(
            &self.config,
            weights,
            plan.batch,
            levels.positions() as u32,
        ));
        let mut param_bytes = vec![0u8; (stride * slots) as usize];
        let mut put = |slot: usize, p: &Params| {
            let at = slot * stride as usize;
            param_bytes[at..at + std::mem::size_of::<Params>()]
                .copy_from_slice(bytemuck::bytes_of(p));
        };
        put(0, &global);
        for (s, seg) in plan.segments.iter().enumerate() {
            put(1 + s, &plan.params(&global, levels, seg));
        }
        let params_size = std::num::NonZeroU64::new(std::mem::size_of::<Params>() as u64);
        let params_entry = |slot: u64| wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: params_buf,
                offset: slot * stride,
                size: params_size,
            }),
        };
        let submitted = scoped(device, || {
            self.ctx.queue.write_buffer(params_buf, 0, &param_bytes);
            let mut groups = Vec::with_capacity(plan.segments.len());
            for (s, seg) in plan.segments.iter().enumerate() {
                let mut entries = vec![params_entry(1 + s as u64)];
                for (i, buf) in input_bufs.iter().enumerate() {
                    entries.push(range_entry(1 + i as u32, buf, seg.ranges[i]));
                }
                entries.push(whole(7, partials));
                if let (Some(g), Some(np)) = (grad_bufs, num_pos) {
                    entries.push(whole(8, np));
                    for (i, buf) in g.iter().enumerate() {
                        entries.push(range_entry(9 + i as u32, buf, seg.ranges[i]));
                    }
                }
                groups.push(device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("fcos fused segment"),
                    layout: &kernel.layout,
                    entries: &entries,
                }));
            }
            let finalize_bg = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("fcos finalize"),
                layout: &self.pipelines.finalize.layout,
                entries: &[params_entry(0), whole(1, partials), whole(2, image_losses)],
            });
            let count_bg = num_pos.map(|np| {
                device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("fcos count"),
                    layout: &self.pipelines.count.layout,
                    entries: &[
                        params_entry(0),
                        // Only the [B, P] the layout uses: a user's buffer may be larger
                        // than one binding.
                        range_entry(
                            1,
                            input_bufs[4],
                            crate::gpu::plan::BindRange {
                                offset: 0,
                                size: self.input_bytes(levels, plan.batch as usize, 4),
                                base: 0,
                            },
                        ),
                        whole(2, np),
                    ],
                })
            });
            let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("fcos loss"),
            });
            {
                let timestamp_writes =
                    self.query_set
                        .as_ref()
                        .map(|q| wgpu::ComputePassTimestampWrites {
                            query_set: q,
                            beginning_of_pass_write_index: Some(0),
                            end_of_pass_write_index: Some(1),
                        });
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("fcos loss"),
                    timestamp_writes,
                });
                if let Some(bg) = &count_bg {
                    pass.set_pipeline(&self.pipelines.count.pipeline);
                    pass.set_bind_group(0, bg, &[]);
                    pass.dispatch_workgroups(plan.batch, 1, 1);
                }
                pass.set_pipeline(&kernel.pipeline);
                for (seg, bg) in plan.segments.iter().zip(&groups) {
                    pass.set_bind_group(0, bg, &[]);
                    pass.dispatch_workgroups(seg.tiles, plan.chunks, seg.images);
                }
                pass.set_pipeline(&self.pipelines.finalize.pipeline);
                pass.set_bind_group(0, &finalize_bg, &[]);
                pass.dispatch_workgroups(plan.batch, 1, 1);
            }
            encoder.copy_buffer_to_buffer(image_losses, 0, readback, 0, out_bytes);
            if let (Some(q), Some(ts)) = (&self.query_set, &pool.timestamps) {
                encoder.resolve_query_set(q, 0..2, ts, 0);
                encoder.copy_buffer_to_buffer(ts, 0, readback, out_bytes, 16);
            }
            if let (Some(g), Some(staging)) = (grad_bufs, &pool.grad_readback) {
                if matches!(grads, Some(Source::Pool)) {
                    let mut at = 0;
                    for (i, buf) in g.iter().enumerate() {
                        let bytes = self.input_bytes(levels, plan.batch as usize, i);
                        encoder.copy_buffer_to_buffer(buf, 0, staging, at, bytes);
                        at += bytes;
                    }
                }
            }
            self.ctx.queue.submit([encoder.finish()])
        })?;
        let bytes = self.map_read(readback, 0..out_bytes + 16, submitted)?;
        let images: Vec<ImageLoss> = bytemuck::pod_collect_to_vec(&bytes[..out_bytes as usize]);
        let kernel_time = self.query_set.as_ref().and_then(|_| {
            let ts: Vec<u64> = bytemuck::pod_collect_to_vec(&bytes[out_bytes as usize..]);
            let ticks = ts.get(1)?.checked_sub(*ts.first()?)?;
            let ns = ticks as f64 * self.ctx.queue.get_timestamp_period() as f64;
            Some(Duration::from_nanos(ns as u64))
        });
        let f = |g: fn(&ImageLoss) -> f32| images.iter().map(|x| g(x) as f64).collect();
        let losses = Losses::from_per_image(
            f(|x| x.cls),
            f(|x| x.cnt),
            f(|x| x.reg),
            images.iter().map(|x| x.num_pos).collect(),
            self.config.add_centerness,
        );
        let flags = images.iter().fold(0, |f, x| f | x.flags);
        Ok((losses, kernel_time, flags))
    }

    /// Reads the pooled gradient staging buffer (already filled by the submission
    /// [`execute`](Self::execute) made) into per-level vectors.
    fn read_grads(&self, pool: &Pool, levels: &Levels, b: usize) -> Result<Gradients, FcosError> {
        let staging = pool.grad_readback.as_ref().ok_or_else(missing)?;
        let total: u64 = (0..3).map(|i| self.input_bytes(levels, b, i)).sum();
        let bytes = self.map_read(staging, 0..total, None)?;
        let floats: &[f32] = bytemuck::try_cast_slice(&bytes)
            .map_err(|e| FcosError::Gpu(format!("gradient readback: {e}")))?;
        let mut at = 0usize;
        let mut head = |ch: usize| -> Vec<Vec<f32>> {
            let mut out = Vec::with_capacity(levels.len());
            for l in 0..levels.len() {
                let n = levels.level_len(l, b, ch);
                out.push(floats[at..at + n].to_vec());
                at += n;
            }
            out
        };
        Ok(Gradients {
            cls_logits: head(self.config.num_classes as usize),
            cnt_logits: head(1),
            reg_preds: head(4),
        })
    }

    /// Maps `range` of a mappable buffer in `mode` once the GPU finished `index` (or
    /// all submitted work). Waits at most the engine's timeout; on a timeout the
    /// pending mapping is cancelled so the buffer can be reused.
    fn map(
        &self,
        buf: &wgpu::Buffer,
        range: std::ops::Range<u64>,
        mode: wgpu::MapMode,
        index: Option<wgpu::SubmissionIndex>,
    ) -> Result<(), FcosError> {
        let (tx, rx) = futures_intrusive::channel::shared::oneshot_channel();
        buf.slice(range).map_async(mode, move |r| {
            // A failed send only means the receiver gave up waiting.
            let _ = tx.send(r);
        });
        let waited = self.ctx.device.poll(wgpu::PollType::Wait {
            submission_index: index,
            timeout: Some(self.timeout),
        });
        match waited {
            Ok(_) => {}
            Err(wgpu::PollError::Timeout) => {
                buf.unmap();
                return Err(FcosError::Timeout(self.timeout));
            }
            Err(e) => {
                self.ctx.health()?;
                return Err(FcosError::Gpu(format!("waiting for the GPU failed: {e}")));
            }
        }
        match pollster::block_on(rx.receive()) {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => {
                self.ctx.health()?;
                Err(FcosError::Gpu(format!("mapping a buffer failed: {e}")))
            }
            None => Err(FcosError::Gpu("a buffer was never mapped".into())),
        }
    }

    /// Maps `range` of a MAP_READ buffer after the GPU finished `index` (or all work),
    /// copies it out and unmaps.
    fn map_read(
        &self,
        buf: &wgpu::Buffer,
        range: std::ops::Range<u64>,
        index: impl Into<Option<wgpu::SubmissionIndex>>,
    ) -> Result<Vec<u8>, FcosError> {
        self.map(buf, range.clone(), wgpu::MapMode::Read, index.into())?;
        let out = {
            let view = buf
                .slice(range)
                .get_mapped_range()
                .map_err(|e| FcosError::Gpu(format!("reading the result failed: {e}")));
            view.map(|v| v.to_vec())
        };
        buf.unmap();
        let out = out?;
        self.ctx.health()?;
        Ok(out)
    }

    /// The host path's upload: the inputs are written straight into the pooled,
    /// mapped staging buffer (the one staging copy), then copied on the device into
    /// the pooled input buffers. Unlike `Queue::write_buffer`, this allocates nothing
    /// per call, so large batches do not pay for fresh pages every time.
    fn upload(&self, pool: &mut Pool, levels: &Levels, inputs: &Inputs) -> Result<(), FcosError> {
        let b = inputs.batch;
        let sizes: Vec<u64> = (0..INPUT_NAMES.len())
            .map(|i| self.input_bytes(levels, b, i))
            .collect();
        let starts: Vec<u64> = sizes
            .iter()
            .scan(0u64, |at, &n| {
                let start = *at;
                *at += n;
                Some(start)
            })
            .collect();
        let total: u64 = sizes.iter().sum();
        let device = &self.ctx.device;
        scoped(device, || {
            Pool::ensure(
                &mut pool.upload,
                &mut pool.created,
                device,
                "fcos upload",
                total,
                wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
            )
        })?;
        let staging = pool.upload.as_ref().ok_or_else(missing)?;
        self.map(staging, 0..total, wgpu::MapMode::Write, None)?;
        {
            let mut view = match staging.slice(0..total).get_mapped_range_mut() {
                Ok(v) => v,
                Err(e) => {
                    staging.unmap();
                    return Err(FcosError::Gpu(format!("writing the inputs failed: {e}")));
                }
            };
            let mut put = |at: u64, data: &[f32]| {
                let at = at as usize;
                view.slice(at..at + 4 * data.len())
                    .copy_from_slice(bytemuck::cast_slice(data));
            };
            let heads = [&inputs.cls_logits, &inputs.cnt_logits, &inputs.reg_preds];
            for (i, slices) in heads.iter().enumerate() {
                for (l, s) in slices.iter().enumerate() {
                    put(
                        starts[i] + 4 * levels.packed_offset(l, b, self.channels(i)) as u64,
                        s,
                    );
                }
            }
            for (i, s) in [inputs.cls_targets, inputs.cnt_targets, inputs.reg_targets]
                .iter()
                .enumerate()
            {
                put(starts[3 + i], s);
            }
        }
        staging.unmap();
        scoped(device, || -> Result<(), FcosError> {
            let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("fcos upload"),
            });
            for (i, slot) in pool.inputs.iter().enumerate() {
                let dst = slot.as_ref().ok_or_else(missing)?;
                encoder.copy_buffer_to_buffer(staging, starts[i], dst, 0, sizes[i]);
            }
            self.ctx.queue.submit([encoder.finish()]);
            Ok(())
        })?
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
