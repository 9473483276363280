//! Inputs and gradients as ranges of device buffers, one range per level of each
//! head: the form a framework's tensors take (burn keeps each tensor as a range of
//! a pooled buffer, and a detector's heads are one tensor per pyramid level).

use crate::assign::{GT_BOXES, GT_CLASSES};
use crate::error::FcosError;
use crate::gpu::device_inputs::ClassDtype;
use crate::input::{ByInput, Dtype, Head, Heads, Input, TensorLayout};
use crate::layout::Levels;

/// A byte range of a device buffer that holds one tensor, or one level of a head.
/// Made from a [`wgpu::BufferSlice`], a [`wgpu::BufferBinding`] or a whole
/// [`wgpu::Buffer`]. Its offset must be a multiple of the device's
/// `min_storage_buffer_offset_alignment`, and the buffer needs
/// `BufferUsages::STORAGE`.
#[derive(Debug, Clone, Copy)]
pub struct BufferRange<'a> {
    /// The buffer.
    pub buffer: &'a wgpu::Buffer,
    /// Byte offset of the range.
    pub offset: u64,
    /// Bytes of the range.
    pub size: u64,
}

impl<'a> BufferRange<'a> {
    /// `size` bytes of `buffer` from `offset`.
    pub fn new(buffer: &'a wgpu::Buffer, offset: u64, size: u64) -> Self {
        BufferRange {
            buffer,
            offset,
            size,
        }
    }
}

impl<'a> From<&'a wgpu::Buffer> for BufferRange<'a> {
    /// The whole buffer.
    fn from(buffer: &'a wgpu::Buffer) -> Self {
        BufferRange::new(buffer, 0, buffer.size())
    }
}

impl<'a> From<wgpu::BufferSlice<'a>> for BufferRange<'a> {
    fn from(s: wgpu::BufferSlice<'a>) -> Self {
        BufferRange::new(s.buffer(), s.offset(), s.size())
    }
}

impl<'a> From<wgpu::BufferBinding<'a>> for BufferRange<'a> {
    /// A binding without a size runs to the end of its buffer.
    fn from(b: wgpu::BufferBinding<'a>) -> Self {
        let size = b
            .size
            .map_or(b.buffer.size().saturating_sub(b.offset), |s| s.get());
        BufferRange::new(b.buffer, b.offset, size)
    }
}

/// Inputs on the device as ranges: each level of each head its own range, in the
/// level's NCHW layout (`cls_logits[l]` `[B, C, H_l, W_l]`, `cnt_logits[l]`
/// `[B, 1, H_l, W_l]`, `reg_preds[l]` `[B, 4, H_l, W_l]`), and each target tensor
/// one range in the layouts of docs/contract.md §1 (`cls_targets`, `cnt_targets`
/// `[B, P]`, `reg_targets` `[B, P, 4]`), targets `f32`, heads of `dtype`
/// (`f32`, `f16` or `bf16`: a half level's range holds its bytes rounded up to a
/// whole 4-byte word). Ranges may lie in one buffer or many, at any offset the
/// device's storage alignment allows, and may be larger than the tensor (the
/// tensor is their first bytes).
#[derive(Debug, Clone)]
pub struct RangedInputs<'a> {
    /// Images `B`.
    pub batch: usize,
    /// The element type of the three heads.
    pub dtype: Dtype,
    /// One range per level.
    pub cls_logits: Vec<BufferRange<'a>>,
    /// One range per level.
    pub cnt_logits: Vec<BufferRange<'a>>,
    /// One range per level.
    pub reg_preds: Vec<BufferRange<'a>>,
    /// `[B, P]`.
    pub cls_targets: BufferRange<'a>,
    /// `[B, P]`.
    pub cnt_targets: BufferRange<'a>,
    /// `[B, P, 4]`.
    pub reg_targets: BufferRange<'a>,
}

/// The ranges of `head` among the three heads' level ranges.
fn head_of<'s, 'a>(head: Head, heads: [&'s [BufferRange<'a>]; 3]) -> &'s [BufferRange<'a>] {
    let [cls, cnt, reg] = heads;
    match head {
        Head::ClsLogits => cls,
        Head::CntLogits => cnt,
        Head::RegPreds => reg,
    }
}

impl<'a> RangedInputs<'a> {
    /// The ranges of a head, level by level.
    pub fn head(&self, head: Head) -> &[BufferRange<'a>] {
        head_of(head, [&self.cls_logits, &self.cnt_logits, &self.reg_preds])
    }

    /// The three heads' ranges, without the targets.
    pub fn predictions(&self) -> RangedPredictions<'a> {
        RangedPredictions {
            batch: self.batch,
            dtype: self.dtype,
            cls_logits: self.cls_logits.clone(),
            cnt_logits: self.cnt_logits.clone(),
            reg_preds: self.reg_preds.clone(),
        }
    }
}

/// The three heads on the device as ranges, one per level, as in
/// [`RangedInputs`]: the predictions of a call from ground-truth boxes
/// ([`RangedGroundTruth`]), whose targets are assigned inside the passes.
#[derive(Debug, Clone)]
pub struct RangedPredictions<'a> {
    /// Images `B`.
    pub batch: usize,
    /// The element type of the three heads.
    pub dtype: Dtype,
    /// One range per level, `[B, C, H_l, W_l]`.
    pub cls_logits: Vec<BufferRange<'a>>,
    /// One range per level, `[B, 1, H_l, W_l]`.
    pub cnt_logits: Vec<BufferRange<'a>>,
    /// One range per level, `[B, 4, H_l, W_l]`.
    pub reg_preds: Vec<BufferRange<'a>>,
}

impl<'a> RangedPredictions<'a> {
    /// The ranges of a head, level by level.
    pub fn head(&self, head: Head) -> &[BufferRange<'a>] {
        head_of(head, [&self.cls_logits, &self.cnt_logits, &self.reg_preds])
    }
}

/// Ground-truth boxes on the device as ranges (docs/contract.md §7), `M` rows per
/// image: `boxes` `[B, M, 4]` `f32` (`x1, y1, x2, y2`) and `classes` `[B, M]` of
/// `class_dtype` (`1..=C`; below 1 pads), each range at an offset the device's
/// `min_storage_buffer_offset_alignment` allows, in a buffer with
/// `BufferUsages::STORAGE`. Even when `M = 0`, `boxes` holds at least 16 bytes
/// and `classes` at least 4 (the smallest bindings). A range may be longer than
/// its tensor: the call reads its first `B·M` rows (`B` from the predictions).
#[derive(Debug, Clone, Copy)]
pub struct RangedGroundTruth<'a> {
    /// Rows per image `M`.
    pub boxes_per_image: usize,
    /// `[B, M, 4]` `f32`.
    pub boxes: BufferRange<'a>,
    /// `[B, M]`.
    pub classes: BufferRange<'a>,
    /// The element type of `classes`.
    pub class_dtype: ClassDtype,
}

impl RangedGroundTruth<'_> {
    /// Bytes of the boxes and of the classes of `b` images (at least one row
    /// each).
    pub(crate) fn bytes(&self, b: usize) -> (u64, u64) {
        gt_bytes(b, self.boxes_per_image)
    }
}

/// Bytes a call binds of the boxes and of the classes of `b` images with `m` rows
/// each: at least one row each, even for `M = 0` (the shader's array of boxes
/// binds 16 bytes).
pub(crate) fn gt_bytes(b: usize, m: usize) -> (u64, u64) {
    let rows = (b * m) as u64;
    ((16 * rows).max(16), (4 * rows).max(4))
}

/// Per-level head ranges and, for a call from targets, the target ranges: what
/// the checks and origins of a ranged call read.
pub(crate) trait Ranges<'a> {
    /// Images `B`.
    fn batch(&self) -> usize;
    /// The heads' element type.
    fn dtype(&self) -> Dtype;
    /// The ranges of a head, level by level.
    fn head_ranges(&self, head: Head) -> &[BufferRange<'a>];
    /// The range of a target tensor, where the call reads one.
    fn target(&self, input: Input) -> Option<BufferRange<'a>>;

    /// The range of level `l` of a head, or of a target tensor (`l` ignored).
    fn range(&self, input: Input, l: usize) -> Option<BufferRange<'a>> {
        match input.head() {
            Some(h) => self.head_ranges(h).get(l).copied(),
            None => self.target(input),
        }
    }
}

impl<'a> Ranges<'a> for RangedInputs<'a> {
    fn batch(&self) -> usize {
        self.batch
    }
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn head_ranges(&self, head: Head) -> &[BufferRange<'a>] {
        self.head(head)
    }
    fn target(&self, input: Input) -> Option<BufferRange<'a>> {
        match input {
            Input::ClsTargets => Some(self.cls_targets),
            Input::CntTargets => Some(self.cnt_targets),
            Input::RegTargets => Some(self.reg_targets),
            _ => None,
        }
    }
}

impl<'a> Ranges<'a> for RangedPredictions<'a> {
    fn batch(&self) -> usize {
        self.batch
    }
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn head_ranges(&self, head: Head) -> &[BufferRange<'a>] {
        self.head(head)
    }
    fn target(&self, _: Input) -> Option<BufferRange<'a>> {
        None
    }
}

/// Gradient outputs on the device as ranges: per head, one range per level, laid
/// out like that level of the head. Each range needs a buffer of its own among the
/// inputs (wgpu cannot bind one buffer read-only and read-write in one dispatch),
/// and no two may overlap.
pub type RangedGradients<'a> = Heads<Vec<BufferRange<'a>>>;

/// One range checked against a tensor's needs.
struct Named<'a> {
    name: String,
    range: BufferRange<'a>,
    need: u64,
}

/// The checks of a ranged call, before anything is recorded: level counts,
/// alignment, sizes, usage, and gradients apart from the inputs and each other.
#[allow(clippy::too_many_arguments)]
pub(crate) fn check<'a>(
    levels: &Levels,
    classes: usize,
    align: u64,
    inputs: &impl Ranges<'a>,
    gt: Option<&RangedGroundTruth<'a>>,
    grads: Option<&RangedGradients<'a>>,
    grad_dtype: Dtype,
) -> Result<(), FcosError> {
    let b = inputs.batch();
    for h in Head::ALL {
        check_levels(&h.to_string(), inputs.head_ranges(h).len(), levels)?;
        if let Some(g) = grads {
            check_levels(&format!("grad {h}"), g[h].len(), levels)?;
        }
    }
    let mut named_inputs = named_inputs(levels, classes, inputs);
    if let Some(gt) = gt {
        let (boxes, classes) = gt.bytes(b);
        named_inputs.push(Named {
            name: format!("{GT_BOXES} range"),
            range: gt.boxes,
            need: boxes,
        });
        named_inputs.push(Named {
            name: format!("{GT_CLASSES} range"),
            range: gt.classes,
            need: classes,
        });
    }
    let named_grads =
        grads.map_or_else(Vec::new, |g| named_grads(levels, classes, b, g, grad_dtype));
    for n in named_inputs.iter().chain(&named_grads) {
        check_range(n, align)?;
    }
    for g in &named_grads {
        if let Some(i) = named_inputs
            .iter()
            .find(|i| i.range.buffer == g.range.buffer)
        {
            return Err(FcosError::InvalidCall(format!(
                "{} lies in the same buffer as {}: wgpu cannot bind one buffer read-only and read-write in one dispatch, so give the gradients buffers of their own",
                g.name, i.name
            )));
        }
    }
    for (k, a) in named_grads.iter().enumerate() {
        for c in &named_grads[k + 1..] {
            let overlap = a.range.buffer == c.range.buffer
                && a.range.offset < c.range.offset + c.need
                && c.range.offset < a.range.offset + a.need;
            if overlap && a.need > 0 && c.need > 0 {
                return Err(FcosError::InvalidCall(format!(
                    "{} and {} overlap in one buffer",
                    a.name, c.name
                )));
            }
        }
    }
    Ok(())
}

fn check_levels(name: &str, got: usize, levels: &Levels) -> Result<(), FcosError> {
    if got != levels.len() {
        return Err(FcosError::shape(
            format!("{name} ranges"),
            format!("one range per level ({})", levels.len()),
            format!("{got} ranges"),
        ));
    }
    Ok(())
}

fn check_range(n: &Named, align: u64) -> Result<(), FcosError> {
    let r = n.range;
    if !r.offset.is_multiple_of(align) {
        return Err(FcosError::InvalidCall(format!(
            "the {} offset {} is not a multiple of min_storage_buffer_offset_alignment = {align}",
            n.name, r.offset
        )));
    }
    if r.size < n.need {
        return Err(FcosError::shape(
            n.name.clone(),
            format!("at least {} bytes", n.need),
            format!("{} bytes", r.size),
        ));
    }
    if r.offset.saturating_add(r.size) > r.buffer.size() {
        return Err(FcosError::shape(
            n.name.clone(),
            format!(
                "within its buffer ({} bytes from offset {})",
                r.size, r.offset
            ),
            format!("a buffer of {} bytes", r.buffer.size()),
        ));
    }
    if !r.buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
        return Err(FcosError::InvalidCall(format!(
            "the {}'s buffer lacks BufferUsages::STORAGE (its usage is {:?})",
            n.name,
            r.buffer.usage()
        )));
    }
    Ok(())
}

/// Bytes of level `l` of `input` (or of a whole target), the heads of `heads`,
/// rounded up to a whole 4-byte word (the binding's unit).
fn tensor_bytes(
    levels: &Levels,
    classes: usize,
    b: usize,
    input: Input,
    l: usize,
    heads: Dtype,
) -> u64 {
    let ch = input.channels(classes);
    let elems = match input.layout() {
        TensorLayout::PerLevel => levels.level_len(l, b, ch),
        TensorLayout::Flattened => b * levels.positions() * ch,
    };
    ((input.dtype(heads).size() * elems) as u64).next_multiple_of(4)
}

fn named_inputs<'a>(levels: &Levels, classes: usize, inputs: &impl Ranges<'a>) -> Vec<Named<'a>> {
    let b = inputs.batch();
    let mut out = Vec::new();
    for input in Input::ALL {
        match input.layout() {
            TensorLayout::PerLevel => {
                for l in 0..levels.len() {
                    if let Some(range) = inputs.range(input, l) {
                        out.push(Named {
                            name: format!("{input} level {l} range"),
                            range,
                            need: tensor_bytes(levels, classes, b, input, l, inputs.dtype()),
                        });
                    }
                }
            }
            TensorLayout::Flattened => {
                if let Some(range) = inputs.range(input, 0) {
                    out.push(Named {
                        name: format!("{input} range"),
                        range,
                        need: tensor_bytes(levels, classes, b, input, 0, inputs.dtype()),
                    });
                }
            }
        }
    }
    out
}

fn named_grads<'a>(
    levels: &Levels,
    classes: usize,
    b: usize,
    grads: &RangedGradients<'a>,
    dtype: Dtype,
) -> Vec<Named<'a>> {
    Head::ALL
        .iter()
        .flat_map(|&h| {
            grads[h].iter().enumerate().map(move |(l, &range)| Named {
                name: format!("grad {h} level {l} range"),
                range,
                need: tensor_bytes(levels, classes, b, h.input(), l, dtype),
            })
        })
        .collect()
}

/// Where each tensor starts in its buffer, in `f32` elements (the offsets are
/// aligned, so whole elements).
pub(crate) fn origins<'a>(
    inputs: &impl Ranges<'a>,
    grads: Option<&RangedGradients>,
    levels: &Levels,
    b: u32,
    classes: u32,
) -> crate::gpu::plan::Origins {
    let dtype = inputs.dtype();
    let mut o = crate::gpu::plan::Origins::packed(levels, b, classes, dtype);
    let elem = dtype.size() as u64;
    o.inputs = ByInput::from_fn(|input| match input.head() {
        Some(h) => inputs
            .head_ranges(h)
            .iter()
            .map(|r| r.offset / elem)
            .collect(),
        None => vec![inputs.range(input, 0).map_or(0, |r| r.offset / 4)],
    });
    o.grads = match grads {
        Some(g) => Heads::from_fn(|h| g[h].iter().map(|r| r.offset / 4).collect()),
        // A forward call binds no gradients: let them lie as the heads do.
        None => Heads::from_fn(|h| o.inputs[h.input()].clone()),
    };
    o
}
