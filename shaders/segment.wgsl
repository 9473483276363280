// The bindings of one segment of the fused pass (one pyramid level, a run of
// images), shared by fused.wgsl and its memory roofline (roofline.wgsl), which
// must read and write exactly the same buffers; and where a workgroup's partial
// goes. Workgroup x is a tile of WG positions of the level, y a chunk of classes,
// z an image of the segment.
//
//   #ifdef BACKWARD   the three gradients (binding 8 unused: the per-image
//                     gradient factors are read from the partials binding).
//   #ifdef BOXES      the tiles' lists of boxes (cull.wgsl) in place of the
//                     three target tensors (binding 6 unused); the targets come
//                     from assign.wgsl.
//   #ifdef HALF       the three heads hold 2-byte elements (f16, or bf16 with
//                     the override HEADS_BF16), read as u32 words and widened
//                     exactly (docs/contract.md §9); the sums and gradients stay
//                     f32. Every read of a head goes through cls_at, cnt_at and
//                     reg_at.

@group(0) @binding(0) var<uniform> params: Params;
// Each binding starts at or before (this level, image0); params.*_base say where.
#ifdef HALF
// Element i of a binding is the low half of word i / 2 when i is even, the high
// half when it is odd (little-endian, as the host lays 2-byte elements out).
override HEADS_BF16: bool = false;
@group(0) @binding(1) var<storage, read> cls_logits: array<u32>;
@group(0) @binding(2) var<storage, read> cnt_logits: array<u32>;
@group(0) @binding(3) var<storage, read> reg_preds: array<u32>;

fn half_at(word: u32, i: u32) -> f32 {
    let h = (word >> ((i & 1u) << 4u)) & 0xffffu;
    if (HEADS_BF16) {
        return widen_bf16(h);
    }
    return widen_f16(h);
}

fn cls_at(i: u32) -> f32 {
    return half_at(cls_logits[i >> 1u], i);
}

fn cnt_at(i: u32) -> f32 {
    return half_at(cnt_logits[i >> 1u], i);
}

fn reg_at(i: u32) -> f32 {
    return half_at(reg_preds[i >> 1u], i);
}
#else
@group(0) @binding(1) var<storage, read> cls_logits: array<f32>;
@group(0) @binding(2) var<storage, read> cnt_logits: array<f32>;
@group(0) @binding(3) var<storage, read> reg_preds: array<f32>;

fn cls_at(i: u32) -> f32 {
    return cls_logits[i];
}

fn cnt_at(i: u32) -> f32 {
    return cnt_logits[i];
}

fn reg_at(i: u32) -> f32 {
    return reg_preds[i];
}
#endif
#ifdef BOXES
// Each tile's boxes and their number, then each image's check flags (cull.wgsl).
@group(0) @binding(4) var<storage, read> box_lists: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> list_counts: array<u32>;
#else
@group(0) @binding(4) var<storage, read> cls_targets: array<f32>;
@group(0) @binding(5) var<storage, read> cnt_targets: array<f32>;
@group(0) @binding(6) var<storage, read> reg_targets: array<vec4<f32>>;
#endif
// [B][partials_per_image] partial sums (w is the positive count) and check flags.
@group(0) @binding(7) var<storage, read_write> partials: array<Partial>;
#ifdef BACKWARD
// Gradients (f32), in the layouts of the matching inputs; element i of a head's
// binding has its gradient at i + grad_shift(...) of the gradient's binding.
@group(0) @binding(9) var<storage, read_write> grad_cls: array<f32>;
@group(0) @binding(10) var<storage, read_write> grad_cnt: array<f32>;
@group(0) @binding(11) var<storage, read_write> grad_reg: array<f32>;

// From a head's element index to its gradient's (u32 arithmetic wraps).
fn grad_shift(head_base: u32, grad_base: u32) -> u32 {
    return grad_base - head_base;
}
#endif

// An invocation's place in the segment: its class chunk (workgroup y), its image
// of the segment (z) and of the batch, its in-level position (tile x · WG + lane;
// past the level's end in the last tile), and the element of its targets.
struct Place {
    chunk: u32,
    bl: u32,
    b: u32,
    pix: u32,
    t: u32,
}

fn place(wg: vec3<u32>, lanes: Lanes) -> Place {
    let bl = wg.z;
    let pix = wg.x * WG + lanes.lid;
    return Place(wg.y, bl, params.image0 + bl, pix, params.tgt_base + bl * params.positions + pix);
}

#ifdef BACKWARD
// Image b's factors on the element derivatives (cls, cnt, box weight over
// denominator), from norm.wgsl before this pass, in the scale slots after the
// partial sums.
fn image_scale(b: u32) -> vec4<f32> {
    return partials[params.scale_base + 1u + b].sums;
}
#endif

// Stores the workgroup's partial (valid in invocation 0) in its fixed slot:
// [image][partials_per_image], this level's slots from slot_base, tile-major.
fn store_partial(wg: vec3<u32>, partial: Partial, lanes: Lanes) {
    if (lanes.lid == 0u) {
        let b = params.image0 + wg.z;
        partials[b * params.partials_per_image + params.slot_base + wg.x * params.chunks + wg.y] = partial;
    }
}

// Where one position's centerness and box elements sit: image `bl` of the segment,
// in-level position `pix`. `r` is the first of reg_preds' four channels, which
// are H·W apart.
struct PositionRefs {
    ci: u32,
    r: u32,
    rt: u32,
}

fn position_refs(bl: u32, pix: u32) -> PositionRefs {
    let hw = params.level_size;
    return PositionRefs(
        params.cnt_base + bl * hw + pix,
        params.reg_base + 4u * bl * hw + pix,
        params.reg_tgt_base + bl * params.positions + pix,
    );
}

// One position's centerness logit, box prediction and box target.
struct PositionBoxes {
    x: f32,
    pred: vec4<f32>,
    tgt: vec4<f32>,
}

fn read_boxes(at: PositionRefs, tgt: vec4<f32>) -> PositionBoxes {
    let hw = params.level_size;
    let r = at.r;
    let pred = vec4<f32>(reg_at(r), reg_at(r + hw), reg_at(r + 2u * hw), reg_at(r + 3u * hw));
    return PositionBoxes(cnt_at(at.ci), pred, tgt);
}

// What class chunk 0 reads of a position besides its class logits.
struct Position {
    // Centerness target; the position is positive where it is above -1.
    ct: f32,
    positive: bool,
    at: PositionRefs,
    // Read where `read_all` is set or the position is positive; zeros elsewhere.
    boxes: PositionBoxes,
}

#ifdef BOXES
// Position `pix` of image `bl` of the segment, with its assigned target `a`.
// Call with an override constant for `read_all`, so that the compiler folds it.
fn read_position(a: Target, bl: u32, pix: u32, read_all: bool) -> Position {
    var p: Position;
    p.ct = a.ct;
    p.positive = p.ct > -1.0;
    p.at = position_refs(bl, pix);
    if (read_all || p.positive) {
        p.boxes = read_boxes(p.at, a.reg);
    }
    return p;
}
#else
// Position `pix` of image `bl` of the segment, whose targets are element `t`.
// Call with an override constant for `read_all`, so that the compiler folds it.
fn read_position(t: u32, bl: u32, pix: u32, read_all: bool) -> Position {
    var p: Position;
    p.ct = cnt_targets[t];
    p.positive = p.ct > -1.0;
    p.at = position_refs(bl, pix);
    if (read_all || p.positive) {
        p.boxes = read_boxes(p.at, reg_targets[p.at.rt]);
    }
    return p;
}
#endif

#ifdef BACKWARD
// Stores one position's centerness and box gradients.
fn store_box_grads(at: PositionRefs, g_cnt: f32, g_reg: vec4<f32>) {
    let hw = params.level_size;
    grad_cnt[at.ci + grad_shift(params.cnt_base, params.grad_cnt_base)] = g_cnt;
    let r = at.r + grad_shift(params.reg_base, params.grad_reg_base);
    grad_reg[r] = g_reg.x;
    grad_reg[r + hw] = g_reg.y;
    grad_reg[r + 2u * hw] = g_reg.z;
    grad_reg[r + 3u * hw] = g_reg.w;
}
#endif
