//! One benchmark shape ready to time ([`Workload`]): the batch on the host and in
//! device buffers, gradient buffers, and an engine whose `C` matches.

use std::ops::Deref;
use std::time::{Duration, Instant};

use super::spec::{BenchSpec, STRIDES};
use crate::input::Element;
use crate::synthetic::{self, SyntheticSpec};
use crate::{
    Batch, DeviceBatch, DeviceGradients, DeviceInputs, Dtype, FcosError, FcosLoss, Heads, Inputs,
    Levels, LossConfig, LossWeights, Losses, Timed,
};

/// An engine borrowed from the caller, or one made on its device for another `C`.
#[derive(Debug)]
enum EngineRef<'e> {
    Borrowed(&'e FcosLoss),
    Owned(Box<FcosLoss>),
}

impl Deref for EngineRef<'_> {
    type Target = FcosLoss;

    fn deref(&self) -> &FcosLoss {
        match self {
            EngineRef::Borrowed(e) => e,
            EngineRef::Owned(e) => e,
        }
    }
}

impl<'e> EngineRef<'e> {
    /// `engine` itself when its `num_classes` is `classes`; else a second engine
    /// on the same device and queue with the same config, settings and
    /// `num_classes = classes`.
    fn for_classes(engine: &'e FcosLoss, classes: u32) -> Result<Self, FcosError> {
        if engine.config().num_classes == classes {
            return Ok(EngineRef::Borrowed(engine));
        }
        let ctx = engine.context();
        let config = LossConfig {
            num_classes: classes,
            ..engine.config().clone()
        };
        let mut owned = FcosLoss::from_device(ctx.device.clone(), ctx.queue.clone(), config)?;
        owned.set_checks(engine.checks());
        owned.set_workgroup_size(engine.workgroup_size())?;
        owned.set_subgroups(engine.subgroups())?;
        Ok(EngineRef::Owned(Box::new(owned)))
    }
}

/// One benchmark shape, ready to time: the batch on the host, the same batch in
/// device buffers, gradient buffers, and an engine whose `C` matches.
///
/// The building block of [`run`](super::run) and of the criterion benches: each
/// method times one path once.
#[derive(Debug)]
pub struct Workload<'e> {
    engine: EngineRef<'e>,
    spec: BenchSpec,
    batch: Batch,
    inputs: DeviceBatch,
    /// The heads' bits where they are half precision (`batch` holds them widened).
    half: Option<HalfBatch>,
    grads: Option<Heads<wgpu::Buffer>>,
    weights: LossWeights,
}

impl<'e> Workload<'e> {
    /// Generates the batch of `spec` and uploads it into buffers on the engine's
    /// device. When the engine's `num_classes` differs from `spec.classes`, a second
    /// engine is made on the same device and queue with the engine's config but
    /// `spec.classes` (it uses the default dispatch size for the adapter).
    /// Gradient buffers are made too; if they exceed the device's buffer limits the
    /// backward pass is left out ([`forward_backward`](Self::forward_backward) gives `None`).
    pub fn new(engine: &'e FcosLoss, spec: &BenchSpec) -> Result<Self, FcosError> {
        spec.check()?;
        let engine = EngineRef::for_classes(engine, spec.classes)?;
        let levels = spec.levels()?;
        // Before drawing the batch: a shape that cannot fit fails here, not in a
        // host allocation of the synthetic inputs.
        engine.check_fits(&levels, spec.batch, false)?;
        let synth = SyntheticSpec {
            seed: spec.seed,
            ..SyntheticSpec::new(spec.batch, spec.classes as usize)
        };
        let mut batch = synthetic::generate(&levels, &STRIDES, &synth)?;
        let half = HalfBatch::round(&mut batch, spec.dtype);
        let device = &engine.context().device;
        let inputs = DeviceBatch::upload_as(device, &batch, spec.dtype)?;
        let grads = match inputs.gradient_buffers(device) {
            Ok(g) => Some(g),
            // A buffer over the device's limits leaves the backward pass out; any
            // other failure is the caller's to see.
            Err(FcosError::Limit(_)) => None,
            Err(e) => return Err(e),
        };
        Ok(Workload {
            engine,
            spec: spec.clone(),
            batch,
            inputs,
            half,
            grads,
            weights: LossWeights::default(),
        })
    }

    /// The engine the workload runs on (the caller's, or one made for its `C`).
    pub fn engine(&self) -> &FcosLoss {
        &self.engine
    }

    /// The shape.
    pub(super) fn spec(&self) -> &BenchSpec {
        &self.spec
    }

    /// Bytes the forward pass reads per call (every input once, the heads at
    /// their element type's size).
    pub fn input_bytes(&self) -> u64 {
        let b = &self.batch;
        crate::Input::ALL
            .iter()
            .map(|&i| i.bytes(&b.levels, b.batch, b.classes, self.spec.dtype))
            .sum()
    }

    /// The pyramid levels.
    pub(super) fn levels(&self) -> &Levels {
        &self.batch.levels
    }

    /// Class-logit elements `B·C·P`.
    pub(super) fn elements(&self) -> u64 {
        (self.batch.batch * self.batch.classes * self.batch.levels.positions()) as u64
    }

    /// The batch on the host.
    pub(super) fn host_batch(&self) -> &Batch {
        &self.batch
    }

    /// The weights of the backward pass.
    pub(super) fn weights(&self) -> &LossWeights {
        &self.weights
    }

    /// The device buffers as [`DeviceInputs`].
    pub(super) fn device_inputs(&self) -> DeviceInputs<'_> {
        self.inputs.inputs()
    }

    /// The loss from the device buffers, with its kernel and wall-clock times.
    pub fn forward_device(&self) -> Result<Timed<Losses>, FcosError> {
        self.engine
            .compute_device_timed(self.levels(), &self.device_inputs())
    }

    /// The loss from host slices (upload, kernels, readback), with its times.
    pub fn forward_host(&self) -> Result<Timed<Losses>, FcosError> {
        let levels = self.levels();
        match &self.half {
            Some(h) if h.dtype == Dtype::F16 => self
                .engine
                .compute_timed(levels, &h.inputs::<half::f16>(&self.batch)),
            Some(h) => self
                .engine
                .compute_timed(levels, &h.inputs::<half::bf16>(&self.batch)),
            None => self.engine.compute_timed(levels, &self.batch.inputs()),
        }
    }

    /// The roofline kernel on the device buffers, with its times.
    pub fn roofline(&self) -> Result<Timed<()>, FcosError> {
        self.engine
            .roofline_device(self.levels(), &self.device_inputs())
    }

    /// Forward + backward from the device buffers into the workload's gradient
    /// buffers; `None` when the device cannot hold or bind the backward pass
    /// ([`FcosError::Limit`]).
    pub fn forward_backward(&self) -> Result<Option<Timed<Losses>>, FcosError> {
        self.with_grads(|grads| {
            self.engine.forward_backward_device(
                self.levels(),
                &self.device_inputs(),
                grads,
                &self.weights,
            )
        })
    }

    /// The backward pass's roofline ([`FcosLoss::backward_roofline_device`]) into the
    /// workload's gradient buffers; `None` when the device cannot hold or bind the
    /// backward pass.
    pub fn backward_roofline(&self) -> Result<Option<Timed<()>>, FcosError> {
        self.with_grads(|grads| {
            self.engine
                .backward_roofline_device(self.levels(), &self.device_inputs(), grads)
        })
    }

    /// Runs `f` on the workload's gradient buffers; `None` when there are none or
    /// the device cannot hold or bind the backward pass ([`FcosError::Limit`]).
    pub(super) fn with_grads<T>(
        &self,
        f: impl FnOnce(&DeviceGradients) -> Result<T, FcosError>,
    ) -> Result<Option<T>, FcosError> {
        let Some(g) = &self.grads else {
            return Ok(None);
        };
        match f(&g.as_ref()) {
            Ok(t) => Ok(Some(t)),
            Err(FcosError::Limit(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The CPU `f64` reference on the host batch, with its wall-clock time.
    pub fn cpu_reference(&self) -> Result<(Losses, Duration), FcosError> {
        let start = Instant::now();
        let losses =
            crate::reference::losses(self.engine.config(), self.levels(), &self.batch.inputs())?;
        Ok((losses, start.elapsed()))
    }
}

/// A workload's heads in half precision: their bits, level by level.
#[derive(Debug)]
struct HalfBatch {
    dtype: Dtype,
    bits: Heads<Vec<Vec<u16>>>,
}

impl HalfBatch {
    /// Rounds `batch`'s heads to `dtype` (nearest even) in place, widened back,
    /// and keeps their bits; `None` for `f32`.
    fn round(batch: &mut Batch, dtype: Dtype) -> Option<Self> {
        let to_bits = |x: f32| match dtype {
            Dtype::F16 => half::f16::from_f32(x).to_bits(),
            _ => half::bf16::from_f32(x).to_bits(),
        };
        let widen = |b: u16| match dtype {
            Dtype::F16 => half::f16::from_bits(b).to_f32(),
            _ => half::bf16::from_bits(b).to_f32(),
        };
        if !dtype.is_half() {
            return None;
        }
        let mut bits: Heads<Vec<Vec<u16>>> = Heads::default();
        for (head, values) in [
            (crate::Head::ClsLogits, &mut batch.cls_logits),
            (crate::Head::CntLogits, &mut batch.cnt_logits),
            (crate::Head::RegPreds, &mut batch.reg_preds),
        ] {
            for level in values.iter_mut() {
                let b: Vec<u16> = level.iter().map(|&x| to_bits(x)).collect();
                level.iter_mut().zip(&b).for_each(|(x, &h)| *x = widen(h));
                bits[head].push(b);
            }
        }
        Some(HalfBatch { dtype, bits })
    }

    /// Host inputs of these heads (as `T`, the dtype's type) over `batch`'s targets.
    fn inputs<'a, T: Element>(&'a self, batch: &'a Batch) -> Inputs<'a, T> {
        let levels = |_, v: &'a Vec<Vec<u16>>| v.iter().map(|l| bytemuck::cast_slice(l)).collect();
        batch
            .inputs()
            .with_head_slices(self.bits.as_ref().map(levels))
    }
}
