//! How one call is cut into dispatches: class chunks, and segments of one pyramid
//! level for a run of images, each with its own buffer bindings, so that no binding
//! exceeds `max_storage_buffer_binding_size` and no dispatch exceeds
//! `max_compute_workgroups_per_dimension`. Pure arithmetic, tested without a GPU.

use crate::error::FcosError;
use crate::gpu::params::{ImageSums, Params, PARTIAL_BYTES};
use crate::input::{ByInput, Dtype, Head, Heads, Input, TensorLayout};
use crate::layout::Levels;

/// The device limits a plan respects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PlanLimits {
    /// Largest storage binding, bytes (at most `4 · u32::MAX`: the shaders index
    /// bindings with `u32` element offsets).
    pub max_binding: u64,
    /// Alignment of storage binding offsets, bytes.
    pub offset_alignment: u64,
    /// Largest workgroup count per dispatch dimension.
    pub max_workgroups: u32,
}

impl PlanLimits {
    /// The limits of a device.
    pub fn of(limits: &wgpu::Limits) -> Self {
        PlanLimits {
            max_binding: limits
                .max_storage_buffer_binding_size
                .min(4 * u32::MAX as u64),
            offset_alignment: limits.min_storage_buffer_offset_alignment.max(4) as u64,
            max_workgroups: limits.max_compute_workgroups_per_dimension,
        }
    }
}

/// A byte range of a buffer bound to one binding, and the element offset of the
/// segment's first element from the range's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BindRange {
    /// Byte offset of the binding (aligned).
    pub offset: u64,
    /// Byte size of the binding.
    pub size: u64,
    /// Offset of the segment's first element from `offset`, in elements of `elem` bytes.
    pub base: u32,
}

/// Where each input's elements start in the buffer bound for it, in elements of
/// its type (`heads` for the network outputs, `f32` for targets and gradients):
/// level `l` of a head at `heads[l]` of its entry, a target tensor at its entry's
/// only element; the gradients likewise. Packed buffers (one per tensor, levels
/// one after another) start level `l` of a head at `B·ch·off_l`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origins {
    /// Per input: one origin per level (heads) or one (targets).
    pub inputs: ByInput<Vec<u64>>,
    /// Per head: one origin per level of its gradient.
    pub grads: Heads<Vec<u64>>,
    /// The element type of the three heads.
    pub heads: Dtype,
    /// Gradients in the heads' half dtype: where each level of each head's
    /// output starts (2-byte elements); `grads` are then the packed `f32` ones the
    /// fused pass writes first.
    pub half_grads: Option<Heads<Vec<u64>>>,
}

impl Origins {
    /// Gradients written in the heads' half dtype at `out` (2-byte elements),
    /// through packed `f32` gradients.
    pub fn with_half_grads(
        mut self,
        levels: &Levels,
        b: u32,
        c: u32,
        out: Heads<Vec<u64>>,
    ) -> Self {
        self.grads = Self::packed(levels, b, c, self.heads).grads;
        self.half_grads = Some(out);
        self
    }

    /// Every tensor packed from byte 0 of its own buffer (docs/contract.md §1.2),
    /// the heads of `heads` elements.
    pub fn packed(levels: &Levels, b: u32, c: u32, heads: Dtype) -> Self {
        let head = |ch: usize| -> Vec<u64> {
            (0..levels.len())
                .map(|l| levels.packed_offset(l, b as usize, ch) as u64)
                .collect()
        };
        let c = c.max(1) as usize;
        Origins {
            inputs: ByInput::from_fn(|input| match input.layout() {
                TensorLayout::PerLevel => head(input.channels(c)),
                TensorLayout::Flattened => vec![0],
            }),
            grads: Heads::from_fn(|h| head(h.channels(c))),
            heads,
            half_grads: None,
        }
    }
}

/// One dispatch of the fused pass: level `level`, images `image0 .. image0 + images`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Segment {
    /// The pyramid level.
    pub level: usize,
    /// First image.
    pub image0: u32,
    /// Images (workgroups along z).
    pub images: u32,
    /// Position tiles (workgroups along x).
    pub tiles: u32,
    /// First partial slot of this level within an image's slots.
    pub slot_base: u32,
    /// The binding of each input.
    pub ranges: ByInput<BindRange>,
    /// The binding of each head's gradient (`f32`).
    pub grad_ranges: Heads<BindRange>,
}

/// One dispatch of the half gradients' pack (`pack_half.wgsl`): one head's
/// gradients of one segment, from its `f32` binding to its 2-byte one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PackRun {
    /// The segment (its level picks the buffers).
    pub segment: usize,
    pub head: Head,
    /// The `f32` gradients' binding (`base` in `f32` elements).
    pub src: BindRange,
    /// The output's binding (`base` in 2-byte elements).
    pub dst: BindRange,
    /// Elements.
    pub count: u32,
    /// Workgroups along x and y (one invocation per output word).
    pub groups: (u32, u32),
}

/// One dispatch of the positive count (backward pass): images `image0 ..
/// image0 + images`, their `cnt_targets` bound as one range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CountGroup {
    /// First image.
    pub image0: u32,
    /// Images (workgroups along x).
    pub images: u32,
    /// The binding of their `cnt_targets` (`base` in floats).
    pub range: BindRange,
}

/// The dispatches of one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Images `B`.
    pub batch: u32,
    /// Classes `C`.
    pub classes: u32,
    /// Class chunks (workgroups along y).
    pub chunks: u32,
    /// Classes per chunk.
    pub classes_per_chunk: u32,
    /// Partial slots per image.
    pub partials_per_image: u32,
    /// Partial slots, all images, that every plan of at most this many images at
    /// these levels, classes and target holds: the pooled buffer's size, so that a
    /// smaller batch (which takes more class chunks) never regrows it. Within one
    /// storage binding, and at least `batch · partials_per_image`.
    pub partials_capacity: u64,
    /// The fused-pass dispatches, level by level.
    pub segments: Vec<Segment>,
    /// The positive count's dispatches (whole images each, within one binding).
    pub count_groups: Vec<CountGroup>,
    /// The first of the `1 + B` slots after the partial sums that hold the
    /// normalisation's denominators and per-image gradient factors (norm.wgsl), at
    /// an offset the device's storage alignment allows: the fused pass reads them
    /// through its partials binding, so that it binds one buffer fewer.
    pub scale_base: u64,
    /// Threads per workgroup (`WG`) the plan was made for.
    pub workgroup_size: u32,
    /// The element type of the three heads (the fused pass's variant).
    pub heads: Dtype,
    /// Gradients in the heads' half dtype: the pack dispatches, after the fused
    /// pass (empty otherwise).
    pub packs: Vec<PackRun>,
}

fn range(first_elem: u64, elems: u64, elem_bytes: u64, align: u64) -> BindRange {
    range_from(first_elem * elem_bytes, elems, elem_bytes, align)
}

/// The binding of `elems` elements of `elem_bytes` from byte `start` (`base`
/// counts whole elements when `start - offset` is a multiple of `elem_bytes`, as
/// it is for every origin the engine accepts). The size is whole 4-byte words: 2-byte
/// elements are read as halves of `u32` words, and an odd count ends inside one.
fn range_from(start: u64, elems: u64, elem_bytes: u64, align: u64) -> BindRange {
    let offset = start / align * align;
    let end = start + elems * elem_bytes;
    BindRange {
        offset,
        size: (end - offset).max(elem_bytes).next_multiple_of(4),
        base: ((start - offset) / elem_bytes) as u32,
    }
}

/// The sizes every part of a plan needs.
struct Frame<'a> {
    levels: &'a Levels,
    origins: &'a Origins,
    /// Images `B`, classes `C` (at least 1), positions per image `P`.
    b: u64,
    c: u64,
    p: u64,
    limits: PlanLimits,
    /// Largest workgroup count per dimension.
    max_dim: u64,
    /// Room in one binding once an offset is aligned down.
    room: u64,
}

impl Frame<'_> {
    /// Class chunks `(chunks, classes per chunk)`: enough workgroups for about
    /// `target` (at most one chunk per class), within the dispatch and the partials'
    /// binding (`B · tiles · chunks` slots of [`PARTIAL_BYTES`]).
    fn class_chunks(&self, all_tiles: u64, wg: u32, target: u32) -> Result<(u64, u64), FcosError> {
        let max_slots = self.limits.max_binding / PARTIAL_BYTES;
        let image_slots = self.b.max(1) * all_tiles;
        if image_slots > max_slots {
            return Err(FcosError::Limit(format!(
                "the partial sums of B = {} images × {all_tiles} workgroups of {wg} positions ({} bytes) exceed max_storage_buffer_binding_size = {}",
                self.b,
                PARTIAL_BYTES * image_slots,
                self.limits.max_binding
            )));
        }
        let most = self.c.min(self.max_dim).min(max_slots / image_slots).max(1);
        let want = (target as u64).div_ceil(image_slots).clamp(1, most);
        let classes_per_chunk = self.c.div_ceil(want);
        Ok((self.c.div_ceil(classes_per_chunk), classes_per_chunk))
    }

    /// Images per segment of level `l`: every input's binding (plus alignment
    /// slack) within the limit; an error naming the input when one image is too many.
    fn images_per_segment(&self, l: usize) -> Result<u64, FcosError> {
        let hw = self.levels.level_size(l) as u64;
        let mut g = self.b.min(self.max_dim);
        for input in Input::ALL {
            let ch = input.channels(self.c as usize) as u64;
            // 4 bytes an element: the f32 heads and gradients (half heads take less).
            let fit = match input.layout() {
                TensorLayout::PerLevel => self.room / (4 * ch * hw),
                // Targets: image stride P, a run of hw positions in each image.
                TensorLayout::Flattened => (self.room / (4 * ch))
                    .checked_sub(hw)
                    .map_or(0, |r| r / self.p.max(1) + 1),
            };
            if fit == 0 {
                return Err(FcosError::Limit(format!(
                    "one image of level {l} ({hw} positions × {ch} channels = {} bytes of {input}) does not fit max_storage_buffer_binding_size = {} (less {} bytes of offset alignment)",
                    4 * ch * hw,
                    self.limits.max_binding,
                    self.limits.offset_alignment
                )));
            }
            g = g.min(fit);
        }
        Ok(g)
    }

    /// The bindings of images `image0 .. image0 + n` of level `l`.
    fn ranges(&self, l: usize, image0: u64, n: u64) -> ByInput<BindRange> {
        ByInput::from_fn(|input| {
            let origin = self.origins.inputs[input][match input.layout() {
                TensorLayout::PerLevel => l,
                TensorLayout::Flattened => 0,
            }];
            let elem = input.dtype(self.origins.heads).size() as u64;
            self.range_of(input, l, origin, elem, image0, n)
        })
    }

    /// The binding of images `image0 .. image0 + n` of level `l` of `input`, whose
    /// data starts at element `origin`, elements of `elem` bytes.
    fn range_of(
        &self,
        input: Input,
        l: usize,
        origin: u64,
        elem: u64,
        image0: u64,
        n: u64,
    ) -> BindRange {
        let hw = self.levels.level_size(l) as u64;
        let off = self.levels.offsets()[l] as u64;
        let align = self.limits.offset_alignment;
        let ch = input.channels(self.c as usize) as u64;
        match input.layout() {
            // Heads: the level's origin, then whole images.
            TensorLayout::PerLevel => range(origin + image0 * ch * hw, n * ch * hw, elem, align),
            // Targets: one element of ch floats per position, from the origin (in floats).
            TensorLayout::Flattened => range_from(
                4 * origin + 4 * ch * (image0 * self.p + off),
                (n - 1) * self.p + hw,
                4 * ch,
                align,
            ),
        }
    }

    /// The gradients' (`f32`) bindings of images `image0 .. image0 + n` of level `l`.
    fn grad_ranges(&self, l: usize, image0: u64, n: u64) -> Heads<BindRange> {
        Heads::from_fn(|h| self.range_of(h.input(), l, self.origins.grads[h][l], 4, image0, n))
    }

    /// The segments of level `l` (`tiles` workgroups along x), whose partial slots
    /// start at `slot`.
    fn level_segments(&self, l: usize, tiles: u64, slot: u64) -> Result<Vec<Segment>, FcosError> {
        if tiles > self.max_dim {
            return Err(FcosError::Limit(format!(
                "level {l} ({} positions) needs {tiles} workgroups along x; max_compute_workgroups_per_dimension = {}",
                self.levels.level_size(l),
                self.max_dim
            )));
        }
        let g = self.images_per_segment(l)?;
        let mut out = Vec::new();
        let mut image0 = 0u64;
        while image0 < self.b {
            let n = g.min(self.b - image0);
            let ranges = self.ranges(l, image0, n);
            out.push(Segment {
                level: l,
                image0: image0 as u32,
                images: n as u32,
                tiles: tiles as u32,
                slot_base: slot as u32,
                grad_ranges: self.grad_ranges(l, image0, n),
                ranges,
            });
            image0 += n;
        }
        Ok(out)
    }

    /// The half gradients' pack dispatches: per segment, per head, from its `f32`
    /// gradients to the output at `out` (2-byte elements; within the binding
    /// limit wherever the `f32` binding is, being half its size).
    fn packs(&self, segments: &[Segment], out: &Heads<Vec<u64>>, wg: u32) -> Vec<PackRun> {
        let mut runs = Vec::new();
        for (i, s) in segments.iter().enumerate() {
            let (image0, n) = (s.image0 as u64, s.images as u64);
            for h in Head::ALL {
                let ch = h.channels(self.c as usize) as u64;
                let hw = self.levels.level_size(s.level) as u64;
                let count = n * ch * hw;
                let dst = self.range_of(h.input(), s.level, out[h][s.level], 2, image0, n);
                let base = dst.base as u64;
                let words = (base + count).div_ceil(2) - base / 2;
                let groups = words.div_ceil(wg as u64).max(1);
                let x = groups.min(self.max_dim);
                runs.push(PackRun {
                    segment: i,
                    head: h,
                    src: s.grad_ranges[h],
                    dst,
                    count: count as u32,
                    groups: (x as u32, groups.div_ceil(x) as u32),
                });
            }
        }
        runs
    }

    /// The positive count's dispatches: whole images of `cnt_targets`, as many per
    /// dispatch as one binding holds.
    fn count_groups(&self) -> Result<Vec<CountGroup>, FcosError> {
        let p = self.p;
        let per_count = (self.room / 4 / p.max(1)).min(self.max_dim);
        if per_count == 0 {
            return Err(FcosError::Limit(format!(
                "the positive count reads one image's cnt_targets ({p} positions, {} bytes) through one binding; max_storage_buffer_binding_size = {} (less {} bytes of offset alignment)",
                4 * p,
                self.limits.max_binding,
                self.limits.offset_alignment
            )));
        }
        let mut out = Vec::new();
        let mut image0 = 0u64;
        while image0 < self.b {
            let n = per_count.min(self.b - image0);
            out.push(CountGroup {
                image0: image0 as u32,
                images: n as u32,
                range: range(
                    self.origins.inputs[Input::CntTargets][0] + image0 * p,
                    n * p,
                    4,
                    self.limits.offset_alignment,
                ),
            });
            image0 += n;
        }
        Ok(out)
    }

    /// The finalize pass: one workgroup per image, the per-image results bound whole.
    fn check_finalize(&self) -> Result<(), FcosError> {
        let b = self.b;
        let loss_bytes = std::mem::size_of::<ImageSums>() as u64 * b;
        if loss_bytes > self.limits.max_binding {
            return Err(FcosError::Limit(format!(
                "the per-image losses of B = {b} images ({loss_bytes} bytes) exceed max_storage_buffer_binding_size = {}",
                self.limits.max_binding
            )));
        }
        if b > self.max_dim {
            return Err(FcosError::Limit(format!(
                "B = {b} images exceed max_compute_workgroups_per_dimension = {} (the finalize pass runs one workgroup per image)",
                self.max_dim
            )));
        }
        Ok(())
    }
}

impl Plan {
    /// Plans a call of `B` images and `C` classes over `levels`, aiming at about
    /// `target_workgroups` workgroups of `wg` threads.
    #[cfg(test)]
    pub fn new(
        levels: &Levels,
        batch: u32,
        classes: u32,
        wg: u32,
        target_workgroups: u32,
        limits: PlanLimits,
    ) -> Result<Self, FcosError> {
        let origins = Origins::packed(levels, batch, classes, Dtype::F32);
        Self::with_origins(
            levels,
            batch,
            classes,
            wg,
            target_workgroups,
            limits,
            &origins,
        )
    }

    /// [`new`](Self::new) for inputs and gradients that start at `origins`.
    pub fn with_origins(
        levels: &Levels,
        batch: u32,
        classes: u32,
        wg: u32,
        target_workgroups: u32,
        limits: PlanLimits,
        origins: &Origins,
    ) -> Result<Self, FcosError> {
        let frame = Frame {
            levels,
            origins,
            b: batch as u64,
            c: classes.max(1) as u64,
            p: levels.positions() as u64,
            limits,
            max_dim: limits.max_workgroups.max(1) as u64,
            room: limits.max_binding.saturating_sub(limits.offset_alignment),
        };
        let tiles: Vec<u64> = (0..levels.len())
            .map(|l| (levels.level_size(l) as u64).div_ceil(wg as u64))
            .collect();
        let all_tiles: u64 = tiles.iter().sum::<u64>().max(1);
        let (chunks, classes_per_chunk) = frame.class_chunks(all_tiles, wg, target_workgroups)?;
        let mut segments = Vec::new();
        let mut slot = 0u64;
        for (l, &t) in tiles.iter().enumerate().filter(|(_, &t)| t > 0) {
            segments.extend(frame.level_segments(l, t, slot)?);
            slot += t * chunks;
        }
        let count_groups = frame.count_groups()?;
        frame.check_finalize()?;
        let packs = match &origins.half_grads {
            Some(out) => frame.packs(&segments, out, wg),
            None => Vec::new(),
        };
        let b = frame.b;
        // Room for the 1 + B scale slots (aligned) within the partials' binding.
        let align_slots = (limits.offset_alignment / PARTIAL_BYTES).max(1);
        let max_slots = limits.max_binding / PARTIAL_BYTES;
        let room = max_slots.saturating_sub(1 + b + align_slots);
        let partials_capacity = (target_workgroups as u64 + b * all_tiles)
            .min(room)
            .max(b * slot);
        let scale_base = partials_capacity.next_multiple_of(align_slots);
        if scale_base + 1 + b > max_slots {
            return Err(FcosError::Limit(format!(
                "the partial sums and gradient factors of B = {b} images ({} bytes) exceed max_storage_buffer_binding_size = {}",
                PARTIAL_BYTES * (scale_base + 1 + b),
                limits.max_binding
            )));
        }
        Ok(Plan {
            batch,
            classes,
            chunks: chunks as u32,
            classes_per_chunk: classes_per_chunk as u32,
            partials_per_image: slot as u32,
            // Any plan of B' <= B images has B'·tiles·chunks' <= target + B'·tiles
            // slots (chunks' <= ceil(target / (B'·tiles))), and it fits the binding
            // with the scale slots after it.
            partials_capacity,
            scale_base,
            segments,
            count_groups,
            workgroup_size: wg,
            heads: origins.heads,
            packs,
        })
    }

    /// The params of segment `s`, on top of the call's global params.
    pub fn params(&self, global: &Params, levels: &Levels, s: &Segment) -> Params {
        Params {
            level_offset: levels.offsets()[s.level],
            level_size: levels.level_size(s.level) as u32,
            image0: s.image0,
            tiles: s.tiles,
            chunks: self.chunks,
            classes_per_chunk: self.classes_per_chunk,
            partials_per_image: self.partials_per_image,
            slot_base: s.slot_base,
            cls_base: s.ranges[Input::ClsLogits].base,
            cnt_base: s.ranges[Input::CntLogits].base,
            reg_base: s.ranges[Input::RegPreds].base,
            grad_cls_base: s.grad_ranges.cls_logits.base,
            grad_cnt_base: s.grad_ranges.cnt_logits.base,
            grad_reg_base: s.grad_ranges.reg_preds.base,
            // cls_targets and cnt_targets share one element offset.
            tgt_base: s.ranges[Input::ClsTargets].base,
            reg_tgt_base: s.ranges[Input::RegTargets].base,
            ..*global
        }
    }

    /// The params of count group `g`, on top of the call's global params.
    pub fn count_params(&self, global: &Params, g: &CountGroup) -> Params {
        Params {
            image0: g.image0,
            tgt_base: g.range.base,
            ..self.global_params(global)
        }
    }

    /// The call's global params (the finalize pass reads these).
    pub fn global_params(&self, global: &Params) -> Params {
        Params {
            chunks: self.chunks,
            classes_per_chunk: self.classes_per_chunk,
            partials_per_image: self.partials_per_image,
            ..*global
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAVAPIPE: PlanLimits = PlanLimits {
        max_binding: 128 << 20,
        offset_alignment: 256,
        max_workgroups: 65535,
    };

    /// Lavapipe's limits with 1 MiB storage bindings.
    const MIB_BINDING: PlanLimits = PlanLimits {
        max_binding: 1 << 20,
        ..LAVAPIPE
    };

    #[test]
    fn every_class_and_slot_is_covered_once() {
        let levels = Levels::from_image(800, 1024, &[8, 16, 32, 64, 128]).unwrap();
        for c in [1, 7, 80, 100] {
            for t in [1, 256, 4096, 100_000] {
                let plan = Plan::new(&levels, 3, c, 256, t, LAVAPIPE).unwrap();
                assert!(plan.chunks * plan.classes_per_chunk >= c);
                assert!((plan.chunks - 1) * plan.classes_per_chunk < c);
                let slots: u32 = plan
                    .segments
                    .iter()
                    .filter(|s| s.image0 == 0)
                    .map(|s| s.tiles * plan.chunks)
                    .sum();
                assert_eq!(slots, plan.partials_per_image);
                assert!(
                    3 * plan.partials_per_image as u64 <= plan.partials_capacity,
                    "c {c} t {t}"
                );
                // A smaller batch fits the same buffer.
                for b in [1, 2] {
                    let small = Plan::new(&levels, b, c, 256, t, LAVAPIPE).unwrap();
                    assert!(
                        b as u64 * small.partials_per_image as u64 <= plan.partials_capacity,
                        "c {c} t {t} b {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn large_batches_split_into_segments_within_the_binding_limit() {
        // COCO B = 32, C = 80, 800×1333: 228 MB of class logits.
        let levels = Levels::from_image(800, 1333, &[8, 16, 32, 64, 128]).unwrap();
        let plan = Plan::new(&levels, 32, 80, 256, 256, LAVAPIPE).unwrap();
        for l in 0..levels.len() {
            let images: u32 = plan
                .segments
                .iter()
                .filter(|s| s.level == l)
                .map(|s| s.images)
                .sum();
            assert_eq!(images, 32, "level {l}");
        }
        assert!(plan.segments.len() > levels.len(), "level 0 must split");
        for s in &plan.segments {
            for (_, r) in s.ranges.iter() {
                assert!(r.size <= LAVAPIPE.max_binding);
                assert_eq!(r.offset % 256, 0);
            }
        }
    }

    #[test]
    fn ranges_point_at_the_segment_start() {
        let levels = Levels::from_shapes(&[(5, 7), (3, 3)]).unwrap();
        let plan = Plan::new(&levels, 4, 3, 256, 1, LAVAPIPE).unwrap();
        let s = &plan.segments[1];
        assert_eq!(s.level, 1);
        // cls level 1 starts at B·C·off = 4·3·35 = 420 floats = 1680 bytes.
        let r = s.ranges[Input::ClsLogits];
        assert_eq!(r.offset + 4 * r.base as u64, 1680);
        // reg targets: vec4 index image0·P + off = 35.
        let r = s.ranges[Input::RegTargets];
        assert_eq!(r.offset + 16 * r.base as u64, 16 * 35);
    }

    #[test]
    fn the_tensor_that_does_not_fit_is_the_one_named() {
        // C = 1: one image's cls_logits (360 000 bytes) fits 1 MiB; reg_preds
        // (4 channels, 1 440 000 bytes) does not.
        let levels = Levels::from_shapes(&[(300, 300)]).unwrap();
        let small = MIB_BINDING;
        let e = Plan::new(&levels, 1, 1, 256, 256, small)
            .unwrap_err()
            .to_string();
        assert!(e.contains("1440000 bytes of reg_preds"), "{e}");
    }

    #[test]
    fn class_chunks_stay_within_the_dispatch_and_the_partials_binding() {
        let levels = Levels::from_shapes(&[(1, 1)]).unwrap();
        let plan = Plan::new(&levels, 1, 70_000, 256, 1 << 20, LAVAPIPE).unwrap();
        assert!(plan.chunks <= LAVAPIPE.max_workgroups);
        // 200 images × 256 classes, one position: at most 1 MiB of partials.
        let small = MIB_BINDING;
        for t in [1, 4096, 1 << 20] {
            let plan = Plan::new(&levels, 200, 256, 256, t, small).unwrap();
            let used = PARTIAL_BYTES * 200 * plan.partials_per_image as u64;
            assert!(used <= small.max_binding, "t {t}: {used}");
            assert!(PARTIAL_BYTES * plan.partials_capacity <= small.max_binding);
        }
        // One workgroup per image already over the binding: an error, not a bad plan.
        let tiny = PlanLimits {
            max_binding: 1024,
            ..LAVAPIPE
        };
        let e = Plan::new(&levels, 100, 1, 256, 1, tiny).unwrap_err();
        assert!(e.to_string().contains("partial sums"), "{e}");
    }

    #[test]
    fn the_positive_count_splits_into_whole_images_per_binding() {
        // P = 17 064 positions: 68 256 bytes of cnt_targets per image.
        let levels = Levels::from_image(800, 1024, &[8, 16, 32, 64, 128]).unwrap();
        let limits = MIB_BINDING;
        let plan = Plan::new(&levels, 40, 1, 256, 256, limits).unwrap();
        let p = levels.positions() as u64;
        let mut next = 0;
        for g in &plan.count_groups {
            assert_eq!(g.image0, next);
            assert!(g.range.size <= limits.max_binding);
            assert_eq!(
                g.range.offset + 4 * g.range.base as u64,
                4 * p * g.image0 as u64
            );
            assert!(g.range.size >= 4 * (g.range.base as u64 + p * g.images as u64));
            next += g.images;
        }
        assert_eq!(next, 40);
        assert!(plan.count_groups.len() > 1);
    }

    #[test]
    fn bindings_stay_within_u32_element_offsets() {
        let huge = wgpu::Limits {
            max_storage_buffer_binding_size: 1 << 40,
            ..wgpu::Limits::default()
        };
        assert_eq!(PlanLimits::of(&huge).max_binding, 4 * u32::MAX as u64);
    }

    #[test]
    fn a_level_too_large_for_one_binding_is_an_error() {
        let levels = Levels::from_shapes(&[(1000, 1000)]).unwrap();
        let small = MIB_BINDING;
        let e = Plan::new(&levels, 1, 80, 256, 256, small).unwrap_err();
        assert!(
            e.to_string().contains("max_storage_buffer_binding_size"),
            "{e}"
        );
    }
}
