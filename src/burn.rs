//! The FCOS loss as a burn (0.22) autodiff op on burn's wgpu backend (feature `burn`).
//!
//! [`BurnFcos::loss`] takes the heads as burn holds them, one `[B, ch, H_l, W_l]`
//! `f32` tensor per level of each head, and the flattened targets (`[B, P]`,
//! `[B, P]`, `[B, P, 4]`, docs/contract.md §1), and returns the objective
//! `w.cls·cls_loss + w.cnt·cnt_loss + w.reg·reg_loss` as a burn tensor of shape `[1]`
//! and the three losses as a tensor of shape `[3]`, both on the device. One recorded
//! call of the engine ([`record_ranges`](FcosLoss::record_ranges)) on burn's own
//! buffers computes the per-image sums and writes the gradients into tensors burn
//! allocated; `backward()` registers them for the heads, times the upstream gradient.
//!
//! [`BurnFcos::loss_from_boxes`] takes each image's ground-truth boxes instead of the
//! targets ([`BurnBoxes`]: `[B, M, 4]` corners and `[B, M]` classes): the targets are
//! assigned inside the loss pass (docs/contract.md §7,
//! [`record_ranges_from_boxes`](FcosLoss::record_ranges_from_boxes)), and no target
//! tensor is ever written.
//!
//! # How it works, and what it costs
//!
//! - The engine runs on burn's wgpu device and queue: [`BurnFcos::open`] opens a new
//!   wgpu device on the adapter the crate picks and registers it with burn (as many
//!   times as wanted: one device per replica of a data-parallel run);
//!   [`BurnFcos::init`] opens burn's default wgpu runtime (once per process) and
//!   [`BurnFcos::from_setup`] takes a [`WgpuSetup`] the application registered.
//! - Each tensor's buffer range comes from cubecl's server
//!   (`Client::get_resource::<WgpuServer<AutoCompiler>>`); the guards that pin those
//!   allocations are held until the engine's commands are submitted. burn's pending
//!   work is flushed (`Client::flush`) first, so the shared queue runs burn's
//!   producers, then the loss, then whatever burn queues next.
//! - No host round trip: the call is recorded and submitted, never waited for. The
//!   per-image sums (docs/contract.md §8) are copied into two small burn tensors, and
//!   burn's own tensor ops normalise them into the losses and the objective, in
//!   `f32` (the blocking calls divide in `f64`: the two agree to about `1e-7`
//!   relative). [`BurnLoss::read`] brings the [`Losses`] to the host when wanted.
//! - A non-contiguous tensor is copied to a contiguous one first, and an input whose
//!   range does not start at the device's `min_storage_buffer_offset_alignment` is
//!   copied to a fresh (aligned) allocation (the tensors the engine writes are
//!   allocated here, aligned).
//! - The gradient tensors are dedicated allocations
//!   (`Client::memory_dedicated_allocation`), one wgpu buffer each, outside burn's
//!   pools: the fused backward binds the inputs read-only and the gradients
//!   read-write, and wgpu rejects one buffer bound both ways in a dispatch. Should
//!   a gradient still share a buffer with an input, the engine returns
//!   [`FcosError::InvalidCall`] before recording anything (no wgpu validation panic).
//!   The cost: each call creates `3·L` buffers, which wgpu zero-fills before the
//!   fused pass writes them (one extra write of the gradients' bytes).
//! - The backward pass costs one element-wise multiply per head level (the fused
//!   gradients times the upstream gradient).
//! - With the engine's checks on, a [`BurnLoss`] keeps the inputs alive (to name a
//!   flagged value in [`BurnLoss::read`]): drop it once read, or turn the checks
//!   off ([`FcosLoss::set_checks`]) for a loss that holds nothing.
//! - Bad input values (NaN, ±Inf, a class out of range) are flagged on the device
//!   while the engine's checks are on ([`FcosLoss::set_checks`]); with no host wait
//!   they surface in [`BurnLoss::read`], as the [`FcosError::Value`] the blocking
//!   calls return, naming the tensor and the index.
//!
//! # Limits
//!
//! - burn must be built without its `fusion` feature, in the whole build (Cargo
//!   unifies features, and burn's default features turn fusion on): with fusion,
//!   `burn::backend::Cube` is a wrapper whose tensors have no buffer of their own,
//!   and this module does not compile; the compiler then says so ("fcos_loss::burn
//!   needs burn built without its `fusion` feature") and how to depend on burn.
//!   A tensor of another backend, or of a device with gradient checkpointing, is an
//!   [`FcosError::InvalidCall`].
//! - Autodiff devices without gradient checkpointing (`device.autodiff()`); 1 to
//!   [`MAX_BURN_LEVELS`] levels; `f32` heads, targets and boxes; classes as an
//!   `Int` tensor of any integer dtype (converted to `i32` where it is not).
//! - Where burn's own API panics (a kernel launch on a lost device, a dtype burn
//!   cannot allocate), this op does too; every check of its own is an [`FcosError`].

use ::burn::backend::autodiff::checkpoint::base::Checkpointer;
use ::burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use ::burn::backend::autodiff::grads::Gradients as BurnGradients;
use ::burn::backend::autodiff::ops::{Backward, NodeGuard, Ops, OpsKind};
use ::burn::backend::ops::{FloatTensorOps, IntTensorOps};
use ::burn::backend::wgpu::{AutoCompiler, WgpuResource, WgpuSetup};
use ::burn::backend::TensorMetadata;
use ::burn::backend::{Autodiff, Cube};
use ::burn::tensor::PrimitiveConversionError;
use ::burn::tensor::{DType, Device, FloatDType, Int, IntDType, Shape, Tensor, TensorData};
use cubecl::wgpu::WgpuServer;

use crate::gpu::params::ImageSums;
use crate::gpu::results::losses_of;
use crate::gpu::scope::scoped;
use crate::gpu::{
    adapter_label, BufferRange, ClassDtype, FcosLoss, GpuContext, PendingLosses, RangedGradients,
    RangedGroundTruth, RangedInputs, RangedPredictions,
};
use crate::{
    check_values, Dtype, FcosError, GroundTruth, GtClasses, Head, Heads, Inputs, Levels,
    LossConfig, LossWeights, Losses, Normalization, Predictions, Targets, CTR_FLOOR, GT_BOXES,
    GT_CLASSES,
};

/// The float primitive of burn's autodiff wgpu backend.
type AutodiffTensor = ::burn::backend::tensor::FloatTensor<Autodiff<Cube>>;

/// The tensor primitive behind a burn wgpu tensor (without fusion).
pub type CubeTensor = ::burn::backend::wgpu::CubeTensor;

/// The most pyramid levels [`BurnFcos::loss`] takes (the autodiff op has one input
/// per level of each head, a count burn fixes at compile time).
pub const MAX_BURN_LEVELS: usize = 8;

/// Words per image in the per-image results (`S_cls, S_cnt, S_reg, S_regw, Z` as
/// `f32`, then the positives `n` and the check flags as `u32`, then padding).
const RESULT_WORDS: usize = 8;
const _: () = assert!(std::mem::size_of::<ImageSums>() == RESULT_WORDS * 4);

/// Implemented for burn's unfused cubecl backend only: with burn's `fusion` feature
/// on (burn's default features turn it on), `burn::backend::Cube` is a fusion
/// wrapper whose tensors have no buffer of their own, and this module cannot build.
#[diagnostic::on_unimplemented(
    message = "fcos_loss::burn needs burn built without its `fusion` feature",
    label = "burn's `Cube` backend is the fusion wrapper here",
    note = "depend on burn with `default-features = false` and features such as [\"std\", \"wgpu\", \"autodiff\"], in every crate of the build (Cargo unifies features); see the README, \"In burn\""
)]
trait Unfused {}
impl Unfused for ::burn::backend::wgpu::CubeBackend {}

/// Compiles only where `B` is the unfused backend (see [`Unfused`]).
fn assert_unfused<B: Unfused>() {}

/// The check, ahead of every use of `Cube` in this file, so that a build with
/// burn's fusion reports it first (then the type errors it explains).
#[allow(dead_code)]
fn fusion_guard() {
    assert_unfused::<Cube>();
}

/// The flattened targets of docs/contract.md §1 as burn tensors (`f32`, on burn's
/// wgpu device, with or without autodiff; they get no gradient).
#[derive(Debug, Clone)]
pub struct BurnTargets {
    /// `[B, P]`: class index, `0` background.
    pub cls: Tensor<2>,
    /// `[B, P]`: centerness target, `−1` at a negative.
    pub cnt: Tensor<2>,
    /// `[B, P, 4]`: `ltrb` box targets.
    pub reg: Tensor<3>,
}

/// Each image's ground-truth boxes as burn tensors (docs/contract.md §7), on burn's
/// wgpu device (with or without autodiff; they get no gradient).
#[derive(Debug, Clone)]
pub struct BurnBoxes {
    /// `[B, M, 4]` `f32`: `x1, y1, x2, y2` in input-image pixels.
    pub boxes: Tensor<3>,
    /// `[B, M]`: `1..=C`; a row whose class is below 1 is padding and matches
    /// nothing.
    pub classes: Tensor<2, Int>,
}

/// Where a call's targets come from.
enum Truth {
    /// The dense targets (boxed: burn tensors are large values).
    Targets(Box<BurnTargets>),
    /// Assigned from ground-truth boxes inside the passes.
    Boxes(Box<BurnBoxes>),
}

/// After the heads, a call's inputs are the three targets, or the boxes and the
/// classes of `M` rows per image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TruthKind {
    Targets,
    Boxes { per_image: usize },
}

/// What [`BurnFcos::loss`] returns: tensors on the device, and the per-image sums
/// behind them for [`read`](Self::read).
#[derive(Debug, Clone)]
pub struct BurnLoss {
    /// `w.cls·cls_loss + w.cnt·cnt_loss + w.reg·reg_loss`, shape `[1]`: tracked by
    /// autodiff when a head is; `backward()` gives the heads the fused gradients.
    pub objective: Tensor<1>,
    /// `[cls_loss, cnt_loss, reg_loss]` under the config's normalisation, shape
    /// `[3]`, not tracked.
    pub losses: Tensor<1>,
    /// `[B, 8]` raw words of the per-image results (read as bytes).
    sums: CubeTensor,
    config: LossConfig,
    levels: Levels,
    batch: usize,
    truth: TruthKind,
    /// The inputs as the engine read them (`3·L` head levels, then the three
    /// targets or the boxes and classes), to name a bad value the device checks
    /// flagged; with the engine's checks off, only the boxes and classes of a call
    /// from boxes (whose values are checked either way).
    inputs: Vec<CubeTensor>,
}

impl BurnLoss {
    /// The losses on the host, as the blocking calls return them (per-image vectors,
    /// batch losses, positives, the raw sums), normalised in `f64`. Waits for the
    /// GPU (one read of `B · 32` bytes). A bad input value the device checks flagged
    /// is the [`FcosError::Value`] of the blocking calls (the inputs are then read
    /// back to name the first one).
    pub fn read(&self) -> Result<Losses, FcosError> {
        let images: Vec<ImageSums> = bytemuck::pod_collect_to_vec(&bytes(self.sums.clone())?);
        let (losses, flags) = losses_of(&images, &[], &self.config, false);
        if flags != 0 {
            return Err(self.locate(flags));
        }
        Ok(losses)
    }

    /// The error for values the device checks flagged: the host check of the inputs.
    fn locate(&self, flags: u32) -> FcosError {
        let values: Result<Vec<Vec<f32>>, FcosError> = self
            .inputs
            .iter()
            .map(|t| Ok(bytemuck::pod_collect_to_vec(&bytes(t.clone())?)))
            .collect();
        let values = match values {
            Ok(v) => v,
            Err(e) => {
                return FcosError::gpu(format!(
                    "the on-device checks flagged bad values (flags {flags:#x}), and reading the inputs back failed: {e}"
                ))
            }
        };
        let l = self.levels.len();
        let slices = |k: usize| {
            values[k * l..(k + 1) * l]
                .iter()
                .map(Vec::as_slice)
                .collect()
        };
        let classes = self.config.num_classes as usize;
        let not_kept = || {
            FcosError::gpu(format!(
                "the on-device checks flagged bad values (flags {flags:#x}), but the inputs were not kept to locate them ({} of the call's tensors held)",
                values.len()
            ))
        };
        let checked = match self.truth {
            TruthKind::Targets if values.len() != 3 * l + 3 => return not_kept(),
            TruthKind::Targets => {
                let inputs = Inputs {
                    batch: self.batch,
                    cls_logits: slices(0),
                    cnt_logits: slices(1),
                    reg_preds: slices(2),
                    cls_targets: &values[3 * l],
                    cnt_targets: &values[3 * l + 1],
                    reg_targets: &values[3 * l + 2],
                };
                check_values(&self.levels, &inputs, classes)
            }
            TruthKind::Boxes { per_image } => {
                // The heads, then the boxes and classes; with the checks off, the
                // boxes and classes only (their flags are raised either way).
                let heads = match values.len() {
                    n if n == 3 * l + 2 => true,
                    2 => false,
                    _ => return not_kept(),
                };
                let at = values.len() - 2;
                // The class words were read as f32 bit patterns.
                let ints: Vec<i32> = values[at + 1].iter().map(|w| w.to_bits() as i32).collect();
                let gt = GroundTruth {
                    batch: self.batch,
                    boxes_per_image: per_image,
                    boxes: &values[at],
                    classes: GtClasses::I32(&ints),
                };
                gt.check(self.batch, self.config.num_classes)
                    .and_then(|()| {
                        if !heads {
                            return Ok(());
                        }
                        let preds = Predictions {
                            batch: self.batch,
                            cls_logits: slices(0),
                            cnt_logits: slices(1),
                            reg_preds: slices(2),
                        };
                        let targets = Targets::background(self.batch, self.levels.positions());
                        check_values(&self.levels, &preds.with_targets(&targets), classes)
                    })
            }
        };
        match checked {
            Err(e) => e,
            Ok(()) => FcosError::gpu(format!(
                "the on-device checks flagged bad values (flags {flags:#x}) that the host check does not find"
            )),
        }
    }
}

/// A tensor's bytes (a float or an `i32` one), read back by burn.
fn bytes(t: CubeTensor) -> Result<Vec<u8>, FcosError> {
    let flat = Shape::new([t.shape().num_elements()]);
    let data = if t.dtype == DType::I32 {
        Tensor::<1, Int>::from_primitive::<Cube>(Cube::int_reshape(t, flat)).try_into_data()
    } else {
        Tensor::<1>::from_primitive::<Cube>(Cube::float_reshape(t, flat)).try_into_data()
    }
    .map_err(|e| server("reading a tensor back", e))?;
    Ok(data.as_bytes().to_vec())
}

/// The FCOS loss engine on burn's wgpu device, with the weights of its objective.
#[derive(Debug)]
pub struct BurnFcos {
    engine: FcosLoss,
    weights: LossWeights,
}

/// The fused backward step: the gradients computed in the forward call, per head
/// level in input order (`cls` levels, `cnt` levels, `reg` levels), scaled by the
/// upstream gradient.
#[derive(Debug)]
struct FusedBackward;

impl<const N: usize> Backward<Cube, N> for FusedBackward {
    type State = Vec<CubeTensor>;

    fn backward(
        self,
        ops: Ops<Self::State, N>,
        grads: &mut BurnGradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let upstream = grads.consume::<Cube>(&ops.node);
        let upstream = Cube::float_reshape(upstream, Shape::new([1, 1, 1, 1]));
        for (parent, grad) in ops.parents.into_iter().zip(ops.state) {
            if let Some(node) = parent {
                grads.register::<Cube>(node.id, Cube::float_mul(grad, upstream.clone()));
            }
        }
    }
}

fn conversion(what: &str, e: PrimitiveConversionError) -> FcosError {
    FcosError::InvalidCall(format!(
        "{what}: not a float tensor of burn's wgpu backend ({e:?}); the op takes tensors on a wgpu device (autodiff without gradient checkpointing, or none)"
    ))
}

fn server(what: &str, e: impl std::fmt::Debug) -> FcosError {
    FcosError::gpu(format!("burn's wgpu runtime, {what}: {e:?}"))
}

/// A float tensor's autodiff tensor (a fresh, untracked one off an autodiff
/// device), and whether it came from an autodiff device.
fn autodiff_parts<const D: usize>(
    what: &str,
    t: Tensor<D>,
) -> Result<(AutodiffTensor, bool), FcosError> {
    if t.is_autodiff() {
        let ad = t
            .try_into_primitive::<Autodiff<Cube>>()
            .map_err(|e| conversion(what, e))?;
        Ok((ad, true))
    } else {
        let p = t
            .try_into_primitive::<Cube>()
            .map_err(|e| conversion(what, e))?;
        Ok((AutodiffTensor::new(p), false))
    }
}

/// The primitive of a tensor that gets no gradient (the targets).
fn plain<const D: usize>(what: &str, t: Tensor<D>) -> Result<CubeTensor, FcosError> {
    if t.is_autodiff() {
        let ad = t
            .try_into_primitive::<Autodiff<Cube>>()
            .map_err(|e| conversion(what, e))?;
        Ok(ad.into_primitive())
    } else {
        t.try_into_primitive::<Cube>()
            .map_err(|e| conversion(what, e))
    }
}

/// Classes of a dtype whose values may lie beyond `i32` (`u32`, `u64`, `i64`)
/// clamped to `C + 1` (and, signed, to `-1` from below), so that the conversion to
/// `i32` cannot wrap a bad class into a valid one or into padding: a class above `C`
/// stays one (reported at its index, as `C + 1`).
fn clamp_classes(classes: Tensor<2, Int>, c: u32) -> Tensor<2, Int> {
    let top = i64::from(c) + 1;
    match classes.dtype() {
        DType::U32 | DType::U64 => classes.clamp_max(top),
        DType::I64 => classes.clamp(-1, top),
        _ => classes,
    }
}

/// The primitive of an integer tensor (the classes), as `i32`.
fn plain_int<const D: usize>(what: &str, t: Tensor<D, Int>) -> Result<CubeTensor, FcosError> {
    let t = if t.device().is_autodiff() {
        t.try_into_primitive::<Autodiff<Cube>>()
    } else {
        t.try_into_primitive::<Cube>()
    }
    .map_err(|e| conversion(what, e))?;
    Ok(match t.dtype {
        DType::I32 => t,
        _ => Cube::int_cast(t, IntDType::I32),
    })
}

/// Checks the dtype and the shape, and makes the tensor contiguous (a copy where
/// it is not).
fn contiguous(what: &str, t: CubeTensor, want: &[usize]) -> Result<CubeTensor, FcosError> {
    if t.dtype != DType::F32 {
        return Err(FcosError::shape(
            what,
            "dtype F32",
            format!("{:?}", t.dtype),
        ));
    }
    check_shape(what, &t, want)?;
    if t.is_contiguous() {
        return Ok(t);
    }
    // A reshape of a non-contiguous tensor to one dimension copies it into a fresh,
    // contiguous allocation.
    let shape = t.shape();
    let flat = Cube::float_reshape(t, Shape::new([shape.num_elements()]));
    made_contiguous(what, Cube::float_reshape(flat, shape))
}

/// [`contiguous`] for an `i32` tensor.
fn contiguous_int(what: &str, t: CubeTensor, want: &[usize]) -> Result<CubeTensor, FcosError> {
    check_shape(what, &t, want)?;
    if t.is_contiguous() {
        return Ok(t);
    }
    let shape = t.shape();
    let flat = Cube::int_reshape(t, Shape::new([shape.num_elements()]));
    made_contiguous(what, Cube::int_reshape(flat, shape))
}

fn check_shape(what: &str, t: &CubeTensor, want: &[usize]) -> Result<(), FcosError> {
    let shape = t.shape();
    if shape.as_slice() != want {
        return Err(FcosError::shape(
            what,
            format!("shape {want:?}"),
            format!("{:?}", shape.as_slice()),
        ));
    }
    Ok(())
}

fn made_contiguous(what: &str, t: CubeTensor) -> Result<CubeTensor, FcosError> {
    if !t.is_contiguous() {
        return Err(FcosError::InvalidCall(format!(
            "{what}: could not make the tensor contiguous"
        )));
    }
    Ok(t)
}

type Resource = cubecl_runtime::storage::ManagedResource<WgpuResource>;

/// A tensor and the guard that pins its allocation.
struct Pinned {
    tensor: CubeTensor,
    resource: Resource,
}

/// What the engine does with a pinned tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Read: at an offset the device cannot bind, a copy serves as well.
    Input,
    /// Written: the engine must write the tensor burn holds, never a copy.
    Output,
}

impl Pinned {
    /// Pins the tensor's allocation; an input at an offset the device cannot bind
    /// is copied first (and pinned in its place), an output there is an error.
    fn new(what: &str, t: CubeTensor, align: u64, role: Role) -> Result<Self, FcosError> {
        if !t.is_contiguous() {
            return Err(FcosError::InvalidCall(format!(
                "{what}: burn allocated it with a non-contiguous layout"
            )));
        }
        let get = |t: &CubeTensor| {
            t.client
                .get_resource::<WgpuServer<AutoCompiler>>(t.handle.clone())
                .map_err(|e| server(&format!("{what}: its buffer"), e))
        };
        let resource = get(&t)?;
        let offset = resource.resource().offset;
        if offset.is_multiple_of(align) {
            return Ok(Pinned {
                tensor: t,
                resource,
            });
        }
        if role == Role::Output {
            return Err(FcosError::InvalidCall(format!(
                "{what}: burn allocated it at offset {offset}, not a multiple of {align}"
            )));
        }
        drop(resource);
        let t = t.copy();
        let resource = get(&t)?;
        let offset = resource.resource().offset;
        if !offset.is_multiple_of(align) {
            return Err(FcosError::InvalidCall(format!(
                "{what}: burn placed a fresh copy at offset {offset}, not a multiple of {align}"
            )));
        }
        Ok(Pinned {
            tensor: t,
            resource,
        })
    }

    /// The tensor's bytes in its buffer.
    fn range(&self, what: &str) -> Result<BufferRange<'_>, FcosError> {
        let res = self.resource.resource();
        let bytes = (self.tensor.shape().num_elements() * 4) as u64;
        if res.size < bytes {
            return Err(FcosError::shape(
                what,
                format!("a buffer range of at least {bytes} bytes"),
                format!("{} bytes", res.size),
            ));
        }
        Ok(BufferRange::new(&res.buffer, res.offset, bytes))
    }
}

/// Pins each tensor (see [`Pinned::new`]), named by `names`.
fn pin_all(
    names: &[String],
    ts: Vec<CubeTensor>,
    align: u64,
    role: Role,
) -> Result<Vec<Pinned>, FcosError> {
    ts.into_iter()
        .zip(names)
        .map(|(t, name)| Pinned::new(name, t, align, role))
        .collect()
}

/// The buffer ranges of pinned tensors, named by `names`.
fn ranges<'a>(names: &[String], v: &'a [Pinned]) -> Result<Vec<BufferRange<'a>>, FcosError> {
    v.iter().zip(names).map(|(p, name)| p.range(name)).collect()
}

/// The names of a call's tensors, in the op's order: each head level (with
/// `prefix`), then what `truth` says follows them (none for gradients).
fn tensor_names(l: usize, truth: Option<TruthKind>, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = Head::ALL
        .iter()
        .flat_map(|h| (0..l).map(move |k| format!("{prefix}{h} level {k}")))
        .collect();
    let rest: &[&str] = match truth {
        Some(TruthKind::Targets) => &["cls_targets", "cnt_targets", "reg_targets"],
        Some(TruthKind::Boxes { .. }) => &[GT_BOXES, GT_CLASSES],
        None => &[],
    };
    names.extend(rest.iter().map(|s| s.to_string()));
    names
}

/// `3·l` ranges in input order, as one vector per head.
fn per_head(v: Vec<BufferRange<'_>>, l: usize) -> Heads<Vec<BufferRange<'_>>> {
    let mut it = v.into_iter();
    Heads::from_fn(|_| it.by_ref().take(l).collect())
}

/// What one call hands to burn: the objective and the losses, untracked, and the
/// per-image results.
struct Outputs {
    objective: CubeTensor,
    losses: CubeTensor,
    sums: CubeTensor,
}

impl BurnFcos {
    /// An engine on a device burn already shares: `engine` must run on the wgpu
    /// device and queue of the burn device the tensors live on (see
    /// [`from_setup`](Self::from_setup)). The objective's weights start as
    /// [`LossWeights::for_config`].
    pub fn new(engine: FcosLoss) -> Self {
        let weights = LossWeights::for_config(engine.config());
        BurnFcos { engine, weights }
    }

    /// Opens a new wgpu device on the adapter the crate picks ([`GpuContext::open`]'s
    /// choice: `WGPU_BACKEND` and `WGPU_ADAPTER_NAME` honoured), with every feature
    /// of the adapter (as burn asks for them) and its limits, registers it with burn
    /// as a runtime of its own, and builds the engine on it. Returns the burn device
    /// (without autodiff: call `.autodiff()` on it for training). Each call opens
    /// another device: one per replica of a data-parallel run.
    pub fn open(config: LossConfig) -> Result<(Device, Self), FcosError> {
        let (instance, adapters, detail) = pollster::block_on(GpuContext::ranked_adapters());
        let adapter = adapters
            .into_iter()
            .next()
            .ok_or(FcosError::NoAdapter { detail })?;
        let info = adapter.get_info();
        // cubecl picks its number types from the adapter's features, so the device
        // must have them all (but the mapping of device-local memory, which burn
        // does not request either, and the experimental ones).
        let features = adapter.features()
            - wgpu::Features::MAPPABLE_PRIMARY_BUFFERS
            - wgpu::Features::all_experimental_mask();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("fcos-loss (burn)"),
            required_features: features,
            required_limits: adapter.limits(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::MemoryUsage,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|source| FcosError::RequestDevice {
            adapter: adapter_label(&info),
            source,
        })?;
        let engine = FcosLoss::from_device(device.clone(), queue.clone(), config)?;
        let setup = WgpuSetup {
            instance,
            adapter,
            device,
            queue,
            backend: info.backend,
        };
        let device = Device::wgpu_options()
            .setup(setup)
            .init()
            .map_err(|e| FcosError::InvalidCall(format!("burn's wgpu runtime: {e}")))?;
        Ok((device, Self::new(engine)))
    }

    /// Opens burn's default wgpu runtime and builds the engine on the same device
    /// and queue. Returns the burn device (without autodiff). Fails when burn's
    /// default wgpu runtime is initialised already (a second call in one process,
    /// or a tensor made on `Device::default()` first): use [`open`](Self::open) or
    /// keep the first pair.
    pub fn init(config: LossConfig) -> Result<(Device, Self), FcosError> {
        let (device, setup) = Device::wgpu_options()
            .init_with_setup()
            .map_err(|e| FcosError::InvalidCall(format!("burn's wgpu runtime: {e}")))?;
        Ok((device, Self::from_setup(&setup, config)?))
    }

    /// The engine on the device and queue of a [`WgpuSetup`] registered with burn
    /// (`Device::wgpu_options().setup(setup).init()`, or returned by
    /// `init_with_setup`).
    pub fn from_setup(setup: &WgpuSetup, config: LossConfig) -> Result<Self, FcosError> {
        let engine = FcosLoss::from_device(setup.device.clone(), setup.queue.clone(), config)?;
        Ok(Self::new(engine))
    }

    /// The engine (its config, settings and device).
    pub fn engine(&self) -> &FcosLoss {
        &self.engine
    }

    /// The engine, to change its settings.
    pub fn engine_mut(&mut self) -> &mut FcosLoss {
        &mut self.engine
    }

    /// The weights of the objective.
    pub fn weights(&self) -> LossWeights {
        self.weights
    }

    /// Sets the weights of the objective (finite values).
    pub fn set_weights(&mut self, weights: LossWeights) -> Result<(), FcosError> {
        weights.check()?;
        self.weights = weights;
        Ok(())
    }

    /// Sets how the per-image sums become the losses (docs/contract.md §8); for a
    /// data-parallel step, `Global` with the replicas' mean positives and
    /// centerness-target sum. Checked as [`FcosLoss::set_config`] checks it.
    pub fn set_normalization(&mut self, normalization: Normalization) -> Result<(), FcosError> {
        let mut config = self.engine.config().clone();
        config.normalization = normalization;
        self.engine.set_config(config)
    }

    /// The loss of one batch. `heads` holds one tensor per level of each head
    /// (`cls_logits[l]` `[B, C, H_l, W_l]`, `cnt_logits[l]` `[B, 1, H_l, W_l]`,
    /// `reg_preds[l]` `[B, 4, H_l, W_l]`, `f32`); the levels' sizes come from the
    /// `cls_logits` shapes. Heads on an autodiff device make the objective tracked,
    /// and its backward pass gives them the fused gradients; otherwise only the
    /// forward pass runs. Nothing waits for the GPU.
    pub fn loss(
        &self,
        heads: Heads<Vec<Tensor<4>>>,
        targets: BurnTargets,
    ) -> Result<BurnLoss, FcosError> {
        self.loss_of(heads, Truth::Targets(Box::new(targets)))
    }

    /// The loss of one batch from each image's ground-truth boxes: as
    /// [`loss`](Self::loss), with every position's targets assigned on the GPU inside
    /// the loss pass (the config's [`Assignment`](crate::Assignment), docs/contract.md
    /// §7) instead of read from target tensors. `boxes.boxes` is `[B, M, 4]`
    /// (`x1, y1, x2, y2`, `f32`), `boxes.classes` `[B, M]` (`1..=C`; below 1 pads);
    /// `M` may be 0. Equal to [`loss`](Self::loss) on the targets assigned from the
    /// same boxes within `1e-6` (tested against PyTorch's, which
    /// [`FcosLoss::assign_targets`] reproduces bit for bit). A NaN or infinite
    /// coordinate, or a class that is not whole or is above `C`, is reported by
    /// [`BurnLoss::read`] as [`FcosError::Value`] naming `gt_boxes` or `gt_classes`
    /// and the index, whatever [`FcosLoss::set_checks`] says. Classes of another
    /// integer dtype are converted to `i32`; one beyond `i32` is reported as `C + 1`.
    pub fn loss_from_boxes(
        &self,
        heads: Heads<Vec<Tensor<4>>>,
        boxes: BurnBoxes,
    ) -> Result<BurnLoss, FcosError> {
        self.loss_of(heads, Truth::Boxes(Box::new(boxes)))
    }

    fn loss_of(&self, heads: Heads<Vec<Tensor<4>>>, truth: Truth) -> Result<BurnLoss, FcosError> {
        let l = heads.cls_logits.len();
        if l == 0 || l > MAX_BURN_LEVELS {
            return Err(FcosError::InvalidCall(format!(
                "the burn op takes 1 to {MAX_BURN_LEVELS} levels, got {l}"
            )));
        }
        for (h, v) in heads.iter() {
            if v.len() != l {
                return Err(FcosError::shape(
                    format!("{h} tensors"),
                    format!("one per level ({l})"),
                    v.len(),
                ));
            }
        }
        macro_rules! levels {
            ($($n:literal),*) => {
                match 3 * l {
                    $($n => self.loss_n::<$n>(heads, truth),)*
                    n => Err(FcosError::InvalidCall(format!("{n} head tensors"))),
                }
            };
        }
        levels!(3, 6, 9, 12, 15, 18, 21, 24)
    }

    fn loss_n<const N: usize>(
        &self,
        heads: Heads<Vec<Tensor<4>>>,
        truth: Truth,
    ) -> Result<BurnLoss, FcosError> {
        // Level shapes and sizes from the class head.
        let first = heads.cls_logits[0].dims();
        let (b, c) = (first[0], first[1]);
        let classes = self.engine.config().num_classes;
        if c != classes as usize {
            return Err(FcosError::shape(
                "cls_logits level 0",
                format!("{classes} classes (the config's)"),
                c,
            ));
        }
        let shapes: Vec<(u32, u32)> = heads
            .cls_logits
            .iter()
            .map(|t| {
                let d = t.dims();
                (d[2] as u32, d[3] as u32)
            })
            .collect();
        let levels = Levels::from_shapes(&shapes)?;
        let p = levels.positions();

        // Primitives and node guards, in the op's input order.
        let mut prims = Vec::with_capacity(N + 3);
        let mut guards: Vec<NodeGuard> = Vec::with_capacity(N);
        let mut any_autodiff = false;
        for h in Head::ALL {
            let ch = h.channels(c);
            for (k, t) in heads[h].iter().cloned().enumerate() {
                let what = format!("{h} level {k}");
                let (ad, is_ad) = autodiff_parts(&what, t)?;
                any_autodiff |= is_ad;
                let (prim, guard) = ad.into_parts();
                let (hl, wl) = levels.shapes()[k];
                prims.push(contiguous(&what, prim, &[b, ch, hl as usize, wl as usize])?);
                guards.push(guard);
            }
        }
        let truth = match truth {
            Truth::Targets(targets) => {
                prims.extend(target_prims(*targets, b, p)?);
                TruthKind::Targets
            }
            Truth::Boxes(boxes) => {
                let (per_image, [boxes, classes]) = box_prims(*boxes, b, classes)?;
                prims.push(boxes);
                prims.push(classes);
                TruthKind::Boxes { per_image }
            }
        };

        let Ok(guards) = <[NodeGuard; N]>::try_from(guards) else {
            return Err(FcosError::InvalidCall("level count".into()));
        };
        let prep =
            <FusedBackward as Backward<Cube, N>>::prepare::<NoCheckpointing>(FusedBackward, guards)
                .compute_bound()
                .stateful();
        let device = prims[0].device.clone();
        let client = prims[0].client.clone();
        let (output, out) = match prep {
            OpsKind::Tracked(prep) => {
                // Gradients in allocations of their own, apart from every input buffer.
                let grads: Vec<CubeTensor> =
                    client.memory_dedicated_allocation(&prims[..N], |heads| {
                        heads
                            .iter()
                            .map(|t| Cube::float_empty(t.shape(), &device, FloatDType::F32))
                            .collect()
                    });
                let out = self.run(&levels, b, &prims, truth, Some(&grads))?;
                (prep.finish(grads, out.objective.clone()), out)
            }
            OpsKind::UnTracked(prep) => {
                let out = self.run(&levels, b, &prims, truth, None)?;
                (prep.finish(out.objective.clone()), out)
            }
        };
        let objective = if any_autodiff {
            Tensor::<1>::from_primitive::<Autodiff<Cube>>(output)
        } else {
            Tensor::<1>::from_primitive::<Cube>(output.into_primitive())
        };
        // On the objective's kind of device (untracked on an autodiff one).
        let losses = if any_autodiff {
            Tensor::<1>::from_primitive::<Autodiff<Cube>>(AutodiffTensor::new(out.losses))
        } else {
            Tensor::<1>::from_primitive::<Cube>(out.losses)
        };
        Ok(BurnLoss {
            objective,
            losses,
            sums: out.sums,
            config: self.engine.config().clone(),
            levels,
            batch: b,
            truth,
            // Kept (alive) only where a flag can send `read` looking for a value: the
            // boxes and classes are checked whatever the engine's checks say.
            inputs: match (self.engine.checks(), truth) {
                (true, _) => prims,
                (false, TruthKind::Boxes { .. }) => prims.split_off(N),
                (false, TruthKind::Targets) => Vec::new(),
            },
        })
    }

    /// Records the engine's call on the tensors' buffers (the heads' `3·L` levels,
    /// then the three targets or the boxes and classes, as `truth` says, in
    /// `inputs`), with the gradients written into `grads` when given, and the
    /// per-image results copied into a burn tensor; submits it on the shared queue
    /// without waiting; normalises the results into the losses and the objective
    /// with burn's tensor ops.
    fn run(
        &self,
        levels: &Levels,
        batch: usize,
        inputs: &[CubeTensor],
        truth: TruthKind,
        grads: Option<&[CubeTensor]>,
    ) -> Result<Outputs, FcosError> {
        let ctx = self.engine.context();
        let align = ctx.limits.min_storage_buffer_offset_alignment as u64;
        let l = levels.len();
        let client = inputs[0].client.clone();
        let device = inputs[0].device.clone();
        let sums_shape = Shape::new([batch, RESULT_WORDS]);
        // The results, as floats (the sums) and as integers (the counts).
        let sums_f = Cube::float_empty(sums_shape.clone(), &device, FloatDType::F32);
        let sums_i = Cube::int_empty(sums_shape, &device, IntDType::I32);

        let input_names = tensor_names(l, Some(truth), "");
        let grad_names = tensor_names(l, None, "grad ");
        let out_names = ["per-image results (f32)", "per-image results (i32)"].map(String::from);
        let pinned = pin_all(&input_names, inputs.to_vec(), align, Role::Input)?;
        let grads = grads
            .map(|g| pin_all(&grad_names, g.to_vec(), align, Role::Output))
            .transpose()?;
        let outs = pin_all(
            &out_names,
            vec![sums_f.clone(), sums_i.clone()],
            align,
            Role::Output,
        )?;
        // Everything burn queued (the heads' producers, the allocations) goes to the
        // queue before the engine's commands.
        client.flush().map_err(|e| server("flush", e))?;

        let all = ranges(&input_names, &pinned)?;
        let grad_ranges: Option<RangedGradients> = grads
            .as_ref()
            .map(|g| ranges(&grad_names, g).map(|r| per_head(r, l)))
            .transpose()?;
        let out_ranges = ranges(&out_names, &outs)?;

        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("fcos-loss burn op"),
            });
        let pending = self.record(
            &mut encoder,
            levels,
            batch,
            &all,
            truth,
            grad_ranges.as_ref(),
        )?;
        match pending.results() {
            Some(r) => {
                for dst in &out_ranges {
                    encoder
                        .copy_buffer_to_buffer(r.buffer, r.offset, dst.buffer, dst.offset, r.size);
                }
            }
            // Levels without positions: nothing recorded, every sum zero.
            None => {
                for dst in &out_ranges {
                    encoder.clear_buffer(dst.buffer, dst.offset, Some(dst.size));
                }
            }
        }
        scoped(&ctx.device, || ctx.queue.submit(Some(encoder.finish())))?;
        // Submitted: later work on the queue (burn's, or a reuse of these
        // allocations) runs after it. The result slot is free again.
        drop(pending);
        drop(pinned);
        drop(grads);
        drop(outs);

        let (objective, losses) =
            normalise(sums_f.clone(), sums_i, self.engine.config(), &self.weights)?;
        Ok(Outputs {
            objective,
            losses,
            sums: sums_f,
        })
    }
}

impl BurnFcos {
    /// Records the engine's call over `ranges` (the heads' `3·L` levels, then what
    /// `truth` says follows them) into `encoder`.
    fn record<'a>(
        &'a self,
        encoder: &mut wgpu::CommandEncoder,
        levels: &'a Levels,
        batch: usize,
        ranges: &[BufferRange<'a>],
        truth: TruthKind,
        grads: Option<&RangedGradients<'a>>,
    ) -> Result<PendingLosses<'a>, FcosError> {
        let l = levels.len();
        let (heads, rest) = ranges.split_at(3 * l);
        let heads = per_head(heads.to_vec(), l);
        match truth {
            TruthKind::Targets => {
                let inputs = RangedInputs {
                    batch,
                    dtype: Dtype::F32,
                    cls_logits: heads.cls_logits,
                    cnt_logits: heads.cnt_logits,
                    reg_preds: heads.reg_preds,
                    cls_targets: rest[0],
                    cnt_targets: rest[1],
                    reg_targets: rest[2],
                };
                self.engine
                    .record_ranges(encoder, levels, &inputs, grads, &self.weights)
            }
            TruthKind::Boxes { per_image } => {
                let preds = RangedPredictions {
                    batch,
                    dtype: Dtype::F32,
                    cls_logits: heads.cls_logits,
                    cnt_logits: heads.cnt_logits,
                    reg_preds: heads.reg_preds,
                };
                let gt = RangedGroundTruth {
                    boxes_per_image: per_image,
                    boxes: rest[0],
                    classes: rest[1],
                    class_dtype: ClassDtype::I32,
                };
                self.engine.record_ranges_from_boxes(
                    encoder,
                    levels,
                    &preds,
                    &gt,
                    grads,
                    &self.weights,
                )
            }
        }
    }
}

/// The three dense targets' primitives, checked and contiguous.
fn target_prims(targets: BurnTargets, b: usize, p: usize) -> Result<[CubeTensor; 3], FcosError> {
    Ok([
        contiguous("cls_targets", plain("cls_targets", targets.cls)?, &[b, p])?,
        contiguous("cnt_targets", plain("cnt_targets", targets.cnt)?, &[b, p])?,
        contiguous(
            "reg_targets",
            plain("reg_targets", targets.reg)?,
            &[b, p, 4],
        )?,
    ])
}

/// The boxes' and classes' primitives (`f32`, `i32`), checked and contiguous, and
/// the rows per image. With no rows, one padding row per image stands in (the
/// engine binds at least one; a padding row matches nothing).
fn box_prims(boxes: BurnBoxes, b: usize, c: u32) -> Result<(usize, [CubeTensor; 2]), FcosError> {
    let m = boxes.boxes.dims()[1];
    let want = |what: &str, got: &[usize], want: &[usize]| {
        if got == want {
            Ok(())
        } else {
            Err(FcosError::shape(
                what,
                format!("shape {want:?}"),
                format!("{got:?}"),
            ))
        }
    };
    want("gt_boxes", &boxes.boxes.dims(), &[b, m, 4])?;
    want("gt_classes", &boxes.classes.dims(), &[b, m])?;
    let BurnBoxes { boxes, classes } = if m == 0 {
        let device = boxes.boxes.device();
        BurnBoxes {
            boxes: Tensor::full([b, 1, 4], -1.0, &device),
            classes: Tensor::zeros([b, 1], &device),
        }
    } else {
        boxes
    };
    let rows = m.max(1);
    Ok((
        rows,
        [
            contiguous("gt_boxes", plain("gt_boxes", boxes)?, &[b, rows, 4])?,
            contiguous_int(
                "gt_classes",
                plain_int("gt_classes", clamp_classes(classes, c))?,
                &[b, rows],
            )?,
        ],
    ))
}

/// The losses `[cls, cnt, reg]` and the objective `[1]` of per-image results
/// (`[B, 8]` words as floats and as integers) under the config's normalisation
/// (docs/contract.md §8), in burn's tensor ops, in `f32`.
fn normalise(
    sums_f: CubeTensor,
    sums_i: CubeTensor,
    config: &LossConfig,
    w: &LossWeights,
) -> Result<(CubeTensor, CubeTensor), FcosError> {
    let floor = CTR_FLOOR as f32;
    let s = Tensor::<2>::from_primitive::<Cube>(sums_f);
    let device = s.device();
    let n = Tensor::<2>::from_primitive::<Cube>(Cube::int_into_float(sums_i, FloatDType::F32))
        .narrow(1, 5, 1);
    // Columns S_cls, S_cnt, S_reg, S_regw, and Z.
    let terms = s.clone().narrow(1, 0, 4);
    let z = s.narrow(1, 4, 1);
    let four = |v: [f32; 4]| Tensor::<1>::from_data(TensorData::new(v.to_vec(), [4]), &device);
    let per: Tensor<1> = match config.normalization {
        Normalization::PerImage => {
            let n = n.clamp_min(1.0);
            let den = Tensor::cat(vec![n.clone(), n.clone(), n, z.clamp_min(floor)], 1);
            (terms / den).mean_dim(0).reshape([4])
        }
        Normalization::Batch => {
            let n = n.sum().clamp_min(1.0);
            let den = Tensor::cat(vec![n.clone(), n.clone(), n, z.sum().clamp_min(floor)], 0);
            terms.sum_dim(0).reshape([4]) / den
        }
        Normalization::Global(d) => {
            let (n, z) = (d.num_pos.max(1.0), d.ctr.max(floor));
            terms.sum_dim(0).reshape([4]) / four([n, n, n, z])
        }
    };
    let weighted = config.centerness_weighted_reg;
    let reg_col = if weighted { 3 } else { 2 };
    let losses = Tensor::cat(
        vec![
            per.clone().narrow(0, 0, 2),
            per.clone().narrow(0, reg_col, 1),
        ],
        0,
    );
    let weights = if weighted {
        [w.cls, w.cnt, 0.0, w.reg]
    } else {
        [w.cls, w.cnt, w.reg, 0.0]
    };
    let objective = (per * four(weights)).sum();
    let prim = |t: Tensor<1>| {
        t.try_into_primitive::<Cube>()
            .map_err(|e| conversion("the normalised losses", e))
    };
    Ok((prim(objective)?, prim(losses)?))
}
