//! A call described rather than only run: the shader variants of its pipelines,
//! every buffer it binds with its size and contents just before the call, its
//! commands in order (the clear, each dispatch with its bindings and sizes), and
//! where its results lie. Another WebGPU implementation (a browser's, driven by
//! `tests/browser/replay.mjs`) can replay it from this alone. The description is
//! recorded by the same encoder that records the real call (`encode::dispatches`
//! over [`Record`]), then the call runs here too, so that each result range also
//! holds what this device computed.

use std::collections::HashMap;

use crate::error::FcosError;
use crate::gpu::bind::Group;
use crate::gpu::call::Call;
use crate::gpu::core::Core;
use crate::gpu::encode::{self, Record};
use crate::gpu::pipelines::Pipeline;
use crate::gpu::pool::Pool;
use crate::gpu::shaders::{Kernel, ShaderVariant, Spec};
use crate::gpu::work::result_bytes;
use crate::input::{Head, Heads};
use crate::layout::Levels;

/// One call of [`FcosLoss`](crate::FcosLoss) described for replay elsewhere
/// ([`FcosLoss::capture`](crate::FcosLoss::capture)).
#[derive(Debug, Clone)]
pub struct CallCapture {
    /// The adapter it was captured on (its results are in each range's `native`).
    pub adapter: String,
    /// Images in the call.
    pub batch: usize,
    /// The shader variant of each pipeline the commands use (WebGPU source:
    /// [`ShaderVariant::webgpu_source`]).
    pub pipelines: Vec<ShaderVariant>,
    /// Every buffer the commands touch.
    pub buffers: Vec<CapturedBuffer>,
    /// Which buffer holds the `Params` slots (one per dispatch, uniform-aligned).
    pub params: usize,
    /// The commands in order.
    pub commands: Vec<CapturedCommand>,
    /// The per-image sums the finalize pass writes: `batch` records of 8 words,
    /// `S_cls, S_cnt, S_reg, S_regw, Z` (`f32`), `n`, the check flags (`u32`),
    /// padding (docs/contract.md §8).
    pub image_sums: CapturedRange,
    /// Backward calls: each head's gradients, levels one after another in the
    /// input layouts (`f32`).
    pub gradients: Option<Heads<CapturedRange>>,
}

/// A buffer of a captured call.
#[derive(Debug, Clone)]
pub struct CapturedBuffer {
    /// What it holds (the engine's own label).
    pub label: String,
    /// Bytes.
    pub size: u64,
    /// Bound as a uniform buffer (otherwise as storage).
    pub uniform: bool,
    /// Its bytes just before the call.
    pub contents: Vec<u8>,
}

/// One command of a captured call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CapturedCommand {
    /// Zero the whole buffer (before the compute pass).
    Clear {
        /// The buffer's number in [`CallCapture::buffers`].
        buffer: usize,
    },
    /// One dispatch of a pipeline over bind group 0. The dispatches of a call
    /// run in order within one compute pass.
    Dispatch {
        /// The pipeline's number in [`CallCapture::pipelines`].
        pipeline: usize,
        /// Bind group 0, entry by entry.
        bindings: Vec<CapturedBinding>,
        /// Workgroups in x, y, z.
        workgroups: [u32; 3],
    },
}

/// One entry of a dispatch's bind group 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapturedBinding {
    /// The `@binding` number.
    pub binding: u32,
    /// The buffer's number in [`CallCapture::buffers`].
    pub buffer: usize,
    /// Byte offset of the range.
    pub offset: u64,
    /// Bytes of the range.
    pub size: u64,
}

/// A range of a captured buffer that holds results.
#[derive(Debug, Clone)]
pub struct CapturedRange {
    /// The buffer's number in [`CallCapture::buffers`].
    pub buffer: usize,
    /// Byte offset of the results.
    pub offset: u64,
    /// Bytes of the results.
    pub size: u64,
    /// What the call left there on the capturing adapter.
    pub native: Vec<u8>,
}

/// Describes `call` over the pool's buffers (a host-path call: each head and
/// gradient packed in one buffer), then runs it.
pub(crate) fn capture(
    core: &Core,
    pool: &Pool,
    call: &Call,
    levels: &Levels,
    batch: usize,
) -> Result<CallCapture, FcosError> {
    let planned = call.planned;
    let staged = core.stage(pool, call)?;
    let mut trace = Trace::default();
    if let Some(lists) = staged.work.boxes {
        // As `encode::passes`: the lists' lengths and flags start at zero.
        let buffer = trace.buffer(lists.counts);
        trace.commands.push(CapturedCommand::Clear { buffer });
    }
    encode::dispatches(
        &mut trace,
        &staged.pipelines,
        &staged.groups,
        &planned.plan,
        planned.boxes.map(|b| b.boxes_per_image),
    );
    let params = trace.buffer(staged.work.params);
    let sums_at = trace.buffer(staged.work.image_sums);
    let grads_at = call
        .grads
        .map(|g| g.as_ref().map(|_, levels| trace.buffer(levels[0])));
    let before = read_buffers(core, &trace.buffers)?;
    // The call itself, on this device: the ranges' `native` contents.
    core.execute(pool, call)?;
    let after = read_buffers(core, &trace.buffers)?;
    let range = |buffer: usize, size: u64| CapturedRange {
        buffer,
        offset: 0,
        size,
        native: after[buffer][..size as usize].to_vec(),
    };
    let image_sums = range(sums_at, result_bytes(planned.plan.batch));
    let gradients = grads_at
        .map(|at| Heads::from_fn(|h: Head| range(at[h], core.grad_bytes(h, levels, batch))));
    let pipelines = trace
        .pipelines
        .iter()
        .map(|&(kernel, spec)| kernel.variant(spec).map_err(FcosError::gpu))
        .collect::<Result<_, _>>()?;
    let buffers = trace
        .buffers
        .iter()
        .zip(before)
        .map(|(buf, contents)| CapturedBuffer {
            label: pool
                .label_of(buf)
                .unwrap_or_else(|| "caller's buffer".into()),
            size: buf.size(),
            uniform: buf.usage().contains(wgpu::BufferUsages::UNIFORM),
            contents,
        })
        .collect();
    Ok(CallCapture {
        adapter: core.ctx.adapter_label(),
        batch,
        pipelines,
        buffers,
        params,
        commands: trace.commands,
        image_sums,
        gradients,
    })
}

/// The buffers, pipelines and commands recorded so far.
#[derive(Default)]
struct Trace {
    buffers: Vec<wgpu::Buffer>,
    index: HashMap<wgpu::Buffer, usize>,
    pipelines: Vec<(Kernel, Spec)>,
    pipeline: Option<usize>,
    bindings: Vec<CapturedBinding>,
    commands: Vec<CapturedCommand>,
}

impl Trace {
    /// The number of `buffer`, given on its first appearance.
    fn buffer(&mut self, buffer: &wgpu::Buffer) -> usize {
        if let Some(&i) = self.index.get(buffer) {
            return i;
        }
        self.buffers.push(buffer.clone());
        self.index.insert(buffer.clone(), self.buffers.len() - 1);
        self.buffers.len() - 1
    }
}

impl Record for Trace {
    fn set_pipeline(&mut self, pipe: &Pipeline) {
        let key = (pipe.kernel, pipe.spec);
        let at = match self.pipelines.iter().position(|&p| p == key) {
            Some(at) => at,
            None => {
                self.pipelines.push(key);
                self.pipelines.len() - 1
            }
        };
        self.pipeline = Some(at);
    }

    fn set_group(&mut self, group: &Group) {
        self.bindings = group
            .bound
            .iter()
            .map(|b| CapturedBinding {
                binding: b.binding,
                buffer: self.buffer(&b.buffer),
                offset: b.offset,
                size: b.size,
            })
            .collect();
    }

    fn dispatch(&mut self, x: u32, y: u32, z: u32) {
        // `encode::dispatches` sets a pipeline before every first dispatch.
        let pipeline = self.pipeline.unwrap_or_default();
        self.commands.push(CapturedCommand::Dispatch {
            pipeline,
            bindings: self.bindings.clone(),
            workgroups: [x, y, z],
        });
    }
}

/// Every byte of each buffer (they all have `COPY_SRC`: the pool adds it).
fn read_buffers(core: &Core, buffers: &[wgpu::Buffer]) -> Result<Vec<Vec<u8>>, FcosError> {
    let device = &core.ctx.device;
    let total: u64 = buffers.iter().map(|b| b.size()).sum();
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("fcos capture readback"),
        size: total.max(4),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let index = crate::gpu::scope::scoped(device, || {
        let mut encoder = device.create_command_encoder(&Default::default());
        let mut at = 0;
        for b in buffers {
            encoder.copy_buffer_to_buffer(b, 0, &staging, at, b.size());
            at += b.size();
        }
        core.ctx.queue.submit([encoder.finish()])
    })?;
    let bytes = core
        .readback()
        .read(&staging, 0..total.max(4), Some(index))?;
    staging.destroy();
    let mut at = 0usize;
    Ok(buffers
        .iter()
        .map(|b| {
            let n = b.size() as usize;
            at += n;
            bytes[at - n..at].to_vec()
        })
        .collect())
}
