//! The engine: validates a call, uploads (host path) or binds (device path) the
//! inputs, runs the fused pass and the finalize reduce in one submission, and reads
//! back only the `[B] × {cls, cnt, reg, num_pos}` result.

use std::sync::Mutex;
use std::time::Duration;

use crate::config::LossConfig;
use crate::error::FcosError;
use crate::gpu::context::GpuContext;
use crate::gpu::params::{Grid, ImageLoss, Params};
use crate::gpu::pipelines::Pipelines;
use crate::gpu::pool::{Pool, INPUT_NAMES};
use crate::gpu::shaders::WORKGROUP_SIZE;
use crate::inputs::Inputs;
use crate::layout::Levels;
use crate::losses::Losses;

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

/// Channels of each input in [`INPUT_NAMES`] order (`0` stands for `C`).
const CHANNELS: [usize; 6] = [0, 1, 4, 1, 1, 4];

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
    timeout: Duration,
    target_workgroups: u32,
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
        let pipelines = scoped(&ctx.device, || Pipelines::new(&ctx.device))?;
        let target_workgroups = match ctx.info.device_type {
            wgpu::DeviceType::Cpu => CPU_TARGET_WORKGROUPS,
            _ => GPU_TARGET_WORKGROUPS,
        };
        Ok(FcosLoss {
            ctx,
            config,
            pipelines,
            pool: Mutex::new(Pool::new()),
            timeout: DEFAULT_TIMEOUT,
            target_workgroups,
        })
    }

    /// The loss configuration.
    pub fn config(&self) -> &LossConfig {
        &self.config
    }

    /// Replaces the loss configuration (no pipeline is rebuilt).
    pub fn set_config(&mut self, config: LossConfig) -> Result<(), FcosError> {
        config.validate()?;
        self.config = config;
        Ok(())
    }

    /// How long a call waits for the GPU before failing with [`FcosError::Timeout`].
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

    /// The device context (device, queue, adapter info, limits).
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// `"<adapter name> (<backend>)"`.
    pub fn adapter_name(&self) -> String {
        self.ctx.adapter_label()
    }

    /// Buffers the engine has created so far (they are reused across calls).
    pub fn buffers_created(&self) -> u64 {
        self.pool.lock().map(|p| p.created).unwrap_or(0)
    }

    /// Loss of one batch from host slices: uploads the inputs, runs the kernels,
    /// reads back the per-image losses.
    pub fn compute(&self, levels: &Levels, inputs: &Inputs) -> Result<Losses, FcosError> {
        inputs.check_shapes(levels, self.config.num_classes as usize)?;
        let b = inputs.batch;
        if levels.positions() == 0 {
            return Ok(self.empty(b));
        }
        let mut pool = self.lock_pool()?;
        let pool = &mut *pool;
        self.ensure_work_buffers(pool, levels, b)?;
        let device = &self.ctx.device;
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        let heads = [&inputs.cls_logits, &inputs.cnt_logits, &inputs.reg_preds];
        let targets = [inputs.cls_targets, inputs.cnt_targets, inputs.reg_targets];
        scoped(device, || {
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
        })?;
        for (i, slices) in heads.iter().enumerate() {
            let buf = pool.inputs[i].as_ref().ok_or_else(missing)?;
            let ch = self.channels(i);
            for (l, s) in slices.iter().enumerate() {
                if !s.is_empty() {
                    let at = 4 * levels.packed_offset(l, b, ch) as u64;
                    self.ctx
                        .queue
                        .write_buffer(buf, at, bytemuck::cast_slice(s));
                }
            }
        }
        for (i, s) in targets.iter().enumerate() {
            let buf = pool.inputs[3 + i].as_ref().ok_or_else(missing)?;
            self.ctx.queue.write_buffer(buf, 0, bytemuck::cast_slice(s));
        }
        let [a, b2, c, d, e, f] = &pool.inputs;
        let bufs = [a, b2, c, d, e, f].map(|x| x.as_ref());
        if bufs.iter().any(Option::is_none) {
            return Err(missing());
        }
        let bufs = bufs.map(|x| x.expect("checked above"));
        let (out, readback_cleared) = self.run(pool_view(pool), levels, b, bufs);
        if readback_cleared {
            pool.readback = None;
        }
        out
    }

    /// Loss of one batch whose inputs are already on the device (see [`DeviceInputs`]
    /// for the layout). Only the per-image losses come back to the host.
    pub fn compute_device(
        &self,
        levels: &Levels,
        inputs: &DeviceInputs,
    ) -> Result<Losses, FcosError> {
        let b = inputs.batch;
        if b == 0 {
            return Err(FcosError::shape("batch", "B >= 1", "B = 0"));
        }
        for (i, buf) in inputs.buffers().iter().enumerate() {
            let need = self.input_bytes(levels, b, i);
            if buf.size() < need {
                return Err(FcosError::shape(
                    format!("{} buffer", INPUT_NAMES[i]),
                    format!("at least {need} bytes ({} f32)", need / 4),
                    format!("{} bytes", buf.size()),
                ));
            }
            if !buf.usage().contains(wgpu::BufferUsages::STORAGE) {
                return Err(FcosError::Gpu(format!(
                    "{} buffer lacks BufferUsages::STORAGE (usage {:?})",
                    INPUT_NAMES[i],
                    buf.usage()
                )));
            }
        }
        if levels.positions() == 0 {
            return Ok(self.empty(b));
        }
        let mut pool = self.lock_pool()?;
        let pool = &mut *pool;
        self.ensure_work_buffers(pool, levels, b)?;
        let (out, readback_cleared) = self.run(pool_view(pool), levels, b, inputs.buffers());
        if readback_cleared {
            pool.readback = None;
        }
        out
    }

    fn lock_pool(&self) -> Result<std::sync::MutexGuard<'_, Pool>, FcosError> {
        self.ctx.health()?;
        // A panic in another thread cannot leave the pool half-built: every buffer
        // is replaced whole, so a poisoned lock is safe to take.
        Ok(self.pool.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn empty(&self, b: usize) -> Losses {
        Losses::from_per_image(
            vec![0.0; b],
            vec![0.0; b],
            vec![0.0; b],
            vec![0; b],
            self.config.add_centerness,
        )
    }

    fn channels(&self, input: usize) -> usize {
        match CHANNELS[input] {
            0 => self.config.num_classes as usize,
            c => c,
        }
    }

    fn input_bytes(&self, levels: &Levels, b: usize, input: usize) -> u64 {
        4 * levels.packed_len(b, self.channels(input)) as u64
    }

    fn grid(&self, levels: &Levels, b: usize) -> Grid {
        Grid::new(
            levels.positions() as u32,
            self.config.num_classes,
            b as u32,
            WORKGROUP_SIZE,
            self.target_workgroups,
        )
    }

    /// Checks the call against the device limits and makes the work buffers.
    fn ensure_work_buffers(
        &self,
        pool: &mut Pool,
        levels: &Levels,
        b: usize,
    ) -> Result<(), FcosError> {
        let limits = &self.ctx.limits;
        let grid = self.grid(levels, b);
        let max_dim = limits.max_compute_workgroups_per_dimension;
        for (what, n) in [
            ("position tiles", grid.tiles as u64),
            ("class chunks", grid.chunks as u64),
            ("images (B)", b as u64),
        ] {
            if n > max_dim as u64 {
                return Err(FcosError::Limit(format!(
                    "{what}: {n} workgroups exceed the adapter's max_compute_workgroups_per_dimension = {max_dim}"
                )));
            }
        }
        for (i, name) in INPUT_NAMES.iter().enumerate() {
            let bytes = self.input_bytes(levels, b, i);
            if bytes > limits.max_storage_buffer_binding_size || bytes > limits.max_buffer_size {
                return Err(FcosError::Limit(format!(
                    "{name} needs {bytes} bytes in one binding; the adapter allows max_storage_buffer_binding_size = {} and max_buffer_size = {}",
                    limits.max_storage_buffer_binding_size, limits.max_buffer_size
                )));
            }
        }
        let device = &self.ctx.device;
        let partial_bytes = 16 * b as u64 * grid.partials_per_image() as u64;
        let out_bytes = 16 * b as u64;
        let created = &mut pool.created;
        scoped(device, || {
            Pool::ensure(
                &mut pool.partials,
                created,
                device,
                "fcos partials",
                partial_bytes,
                wgpu::BufferUsages::STORAGE,
            );
            Pool::ensure(
                &mut pool.image_losses,
                created,
                device,
                "fcos image losses",
                out_bytes,
                wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            );
            Pool::ensure(
                &mut pool.readback,
                created,
                device,
                "fcos readback",
                out_bytes,
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            );
            Pool::ensure(
                &mut pool.params,
                created,
                device,
                "fcos params",
                std::mem::size_of::<Params>() as u64,
                wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            );
        })
    }

    /// Encodes, submits and reads back one call. The second value is true when the
    /// readback buffer may be left mapped (after a timeout) and must be replaced.
    fn run(
        &self,
        work: WorkBuffers<'_>,
        levels: &Levels,
        b: usize,
        inputs: [&wgpu::Buffer; 6],
    ) -> (Result<Losses, FcosError>, bool) {
        let Complete {
            partials,
            image_losses,
            readback,
            params_buf,
        } = match work.complete() {
            Ok(w) => w,
            Err(e) => return (Err(e), false),
        };
        let device = &self.ctx.device;
        let grid = self.grid(levels, b);
        let params = Params::new(&self.config, levels, b as u32, grid);
        let out_bytes = 16 * b as u64;
        let submitted = scoped(device, || {
            self.ctx
                .queue
                .write_buffer(params_buf, 0, bytemuck::bytes_of(&params));
            let mut fused_bufs: Vec<&wgpu::Buffer> = inputs.to_vec();
            fused_bufs.push(partials);
            let fused_bg = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("fcos fused"),
                layout: &self.pipelines.fused_layout,
                entries: &bind_entries(params_buf, &fused_bufs),
            });
            let finalize_bg = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("fcos finalize"),
                layout: &self.pipelines.finalize_layout,
                entries: &bind_entries(params_buf, &[partials, image_losses]),
            });
            let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("fcos loss"),
            });
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("fcos loss"),
                    timestamp_writes: None,
                });
                pass.set_pipeline(&self.pipelines.fused);
                pass.set_bind_group(0, &fused_bg, &[]);
                pass.dispatch_workgroups(grid.tiles, grid.chunks, b as u32);
                pass.set_pipeline(&self.pipelines.finalize);
                pass.set_bind_group(0, &finalize_bg, &[]);
                pass.dispatch_workgroups(b as u32, 1, 1);
            }
            encoder.copy_buffer_to_buffer(image_losses, 0, readback, 0, out_bytes);
            self.ctx.queue.submit([encoder.finish()])
        });
        let index = match submitted {
            Ok(i) => i,
            Err(e) => return (Err(e), false),
        };
        match self.read_back(readback, out_bytes, index) {
            Ok(images) => {
                let f = |g: fn(&ImageLoss) -> f32| images.iter().map(|x| g(x) as f64).collect();
                let losses = Losses::from_per_image(
                    f(|x| x.cls),
                    f(|x| x.cnt),
                    f(|x| x.reg),
                    images.iter().map(|x| x.num_pos).collect(),
                    self.config.add_centerness,
                );
                (Ok(losses), false)
            }
            Err(e) => {
                let replace = matches!(e, FcosError::Timeout(_));
                (Err(e), replace)
            }
        }
    }

    fn read_back(
        &self,
        readback: &wgpu::Buffer,
        bytes: u64,
        index: wgpu::SubmissionIndex,
    ) -> Result<Vec<ImageLoss>, FcosError> {
        let slice = readback.slice(0..bytes);
        let (tx, rx) = futures_intrusive::channel::shared::oneshot_channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            // The receiver lives until the end of this function; a failed send only
            // means nobody waits any more.
            let _ = tx.send(r);
        });
        match self.ctx.device.poll(wgpu::PollType::Wait {
            submission_index: Some(index),
            timeout: Some(self.timeout),
        }) {
            Ok(_) => {}
            Err(wgpu::PollError::Timeout) => return Err(FcosError::Timeout(self.timeout)),
            Err(e) => {
                self.ctx.health()?;
                return Err(FcosError::Gpu(format!("waiting for the GPU failed: {e}")));
            }
        }
        match pollster::block_on(rx.receive()) {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                self.ctx.health()?;
                return Err(FcosError::Gpu(format!("mapping the result failed: {e}")));
            }
            None => return Err(FcosError::Gpu("the result was never mapped".into())),
        }
        let out = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| FcosError::Gpu(format!("reading the result failed: {e}")))?;
            bytemuck::pod_collect_to_vec::<u8, ImageLoss>(&view)
        };
        readback.unmap();
        self.ctx.health()?;
        Ok(out)
    }
}

/// The pooled work buffers of one call, borrowed from the pool.
struct WorkBuffers<'a> {
    partials: Option<&'a wgpu::Buffer>,
    image_losses: Option<&'a wgpu::Buffer>,
    readback: Option<&'a wgpu::Buffer>,
    params_buf: Option<&'a wgpu::Buffer>,
}

struct Complete<'a> {
    partials: &'a wgpu::Buffer,
    image_losses: &'a wgpu::Buffer,
    readback: &'a wgpu::Buffer,
    params_buf: &'a wgpu::Buffer,
}

impl<'a> WorkBuffers<'a> {
    fn complete(self) -> Result<Complete<'a>, FcosError> {
        Ok(Complete {
            partials: self.partials.ok_or_else(missing)?,
            image_losses: self.image_losses.ok_or_else(missing)?,
            readback: self.readback.ok_or_else(missing)?,
            params_buf: self.params_buf.ok_or_else(missing)?,
        })
    }
}

fn pool_view(pool: &Pool) -> WorkBuffers<'_> {
    WorkBuffers {
        partials: pool.partials.as_ref(),
        image_losses: pool.image_losses.as_ref(),
        readback: pool.readback.as_ref(),
        params_buf: pool.params.as_ref(),
    }
}

/// Binding 0 is the params, then `bufs` in order.
fn bind_entries<'a>(
    params: &'a wgpu::Buffer,
    bufs: &[&'a wgpu::Buffer],
) -> Vec<wgpu::BindGroupEntry<'a>> {
    std::iter::once(params)
        .chain(bufs.iter().copied())
        .enumerate()
        .map(|(i, buf)| wgpu::BindGroupEntry {
            binding: i as u32,
            resource: buf.as_entire_binding(),
        })
        .collect()
}

fn missing() -> FcosError {
    FcosError::Gpu("a pooled buffer is missing (an earlier allocation failed)".into())
}

/// Runs `f` inside validation and out-of-memory error scopes and turns what they
/// catch into [`FcosError::Gpu`].
fn scoped<T>(device: &wgpu::Device, f: impl FnOnce() -> T) -> Result<T, FcosError> {
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
