// Shared by every FCOS loss kernel: the parameter block and the numerics, forward
// and backward. src/gpu/shaders.rs assembles each kernel as this file, then its
// helpers (reduce.wgsl and segment.wgsl for the fused pass and its roofline,
// sum2.wgsl for count.wgsl and norm.wgsl, box_tiles.wgsl and assign.wgsl for the
// kernels from boxes), then the kernel's own file (WGSL has
// no #include), and resolves the #ifdef blocks for the variant.
//
// How variants differ, one rule for every file:
//   - `#ifdef NAME` only where the shader's interface differs between variants:
//     bindings one variant has and another lacks (BACKWARD: the positive counts
//     and gradient buffers; BOXES: the tiles' box lists in place of the target
//     tensors; TARGETS: the target pass's outputs; and every statement that
//     touches them; HALF: the heads as u32 words of two 2-byte elements), or
//     builtins and operations that need a device feature (SUBGROUPS,
//     reduce.wgsl only).
//   - `override` constants for scalars fixed when a pipeline is made: WG,
//     GAMMA_IS_TWO (below), CHECKS (reduce.wgsl, fused.wgsl), READ_ALL
//     (roofline.wgsl), HEADS_BF16 (segment.wgsl, half heads only). The compiler folds them, so a variant pays nothing for
//     the code it does not run.
//   - the `Params` uniform for values that change per call (shapes, offsets,
//     gamma, alpha, weights, the box loss).
// Every variant is assembled and validated by naga, with its override values, by
// the crate's CPU-only tests (src/gpu/shaders.rs); an unbalanced directive fails
// there with its file and line.

// Threads per workgroup of the reduction kernels, a power of two set when the
// pipeline is made (FcosLoss::set_workgroup_size). The default is the Rust side's
// src/gpu/shaders.rs::WORKGROUP_SIZE (a test checks they agree).
override WG: u32 = 256u;

// One dispatch ("segment") covers one pyramid level for a run of images.
// Mirrors `Params` in src/gpu/params.rs (a test checks size and offsets).
struct Params {
    // Whole batch: images B, classes C, positions per image P.
    batch: u32,
    classes: u32,
    positions: u32,
    // The level: offset in the flattened position axis and H*W.
    level_offset: u32,
    level_size: u32,
    // First image of the segment (workgroup z adds to it).
    image0: u32,
    // Workgroups along x (tiles of WG positions of this level) and y (class chunks).
    tiles: u32,
    chunks: u32,
    classes_per_chunk: u32,
    // Partial-sum slots per image (all levels) and this level's first slot.
    partials_per_image: u32,
    slot_base: u32,
    // 0 = IoU, 1 = GIoU.
    reg_mode: u32,
    // Element offsets of (this level, image0) from the start of each input binding
    // (bindings start at aligned offsets at or before them). Targets are shared by
    // cls_targets and cnt_targets; reg_targets counts vec4s.
    cls_base: u32,
    cnt_base: u32,
    reg_base: u32,
    tgt_base: u32,
    reg_tgt_base: u32,
    // The normalisation (docs/contract.md §8): 0 per image, 1 batch, 2 global.
    norm_mode: u32,
    gamma: f32,
    alpha: f32,
    // Backward: weights of the losses (upstream gradients).
    w_cls: f32,
    w_cnt: f32,
    w_reg: f32,
    // 1: the box loss weighted by each positive's centerness target.
    ctr_weighted: u32,
    // Targets from boxes (assign.wgsl; docs/contract.md §7): rows per image M,
    // the level's width and stride, its range (lo, hi], radius · stride (f32 max
    // without centre sampling), the rule (0 the notebook's, 1 mmdet's) and the
    // class words' type (1 f32, 0 i32).
    boxes_per_image: u32,
    level_width: u32,
    stride: u32,
    range_lo: f32,
    range_hi: f32,
    near: f32,
    assign_rule: u32,
    class_f32: u32,
    // The first of the 1 + B scale slots in the partials buffer (norm.wgsl): the
    // denominators used, then each image's gradient factors.
    scale_base: u32,
    // Element offsets of (this level, image0) from the start of each gradient
    // binding (f32; they differ from the heads' where the heads are halves).
    grad_cls_base: u32,
    grad_cnt_base: u32,
    grad_reg_base: u32,
    // Gradients in the heads' half dtype (pack_half.wgsl): one run of one head,
    // from f32 element pack_src_base to 2-byte element pack_dst_base, pack_count
    // elements.
    pack_src_base: u32,
    pack_dst_base: u32,
    pack_count: u32,
}

// One workgroup's partial: {cls, cnt, reg, centerness-weighted reg} sums and the
// OR of its check flags; in calls from boxes also the tile's positives and
// centerness-target sum (assign.wgsl's kernels; sum_counts.wgsl adds them up).
struct Partial {
    sums: vec4<f32>,
    flags: u32,
    num_pos: f32,
    ctr: f32,
    _pad: u32,
}

// One image's positives and centerness-target sum (count.wgsl, which runs in
// every call); the call's totals in slot 0 (norm.wgsl). Mirrors `Count` in
// src/gpu/params.rs.
struct Count {
    num_pos: f32,
    ctr: f32,
}

// One position's targets: read from the target tensors, or assigned from boxes
// (assign.wgsl). Background: class 0, centerness -1, box (-1, -1, -1, -1).
struct Target {
    cls: f32,
    ct: f32,
    reg: vec4<f32>,
}

// Check flags: which input holds a value the loss cannot use (Input::flag in src/input.rs).
const FLAG_CLS_LOGITS: u32 = 1u;
const FLAG_CNT_LOGITS: u32 = 2u;
const FLAG_REG_PREDS: u32 = 4u;
const FLAG_CLS_TARGETS: u32 = 8u;
const FLAG_CNT_TARGETS: u32 = 16u;
const FLAG_REG_TARGETS: u32 = 32u;

// The exponent field of an f32.
const EXPONENT_BITS: u32 = 0x7f800000u;

// NaN or ±Inf, told by the bit pattern (an integer test: WGSL may assume floats
// are finite, so no float operation can be trusted to tell).
fn not_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & EXPONENT_BITS) == EXPONENT_BITS;
}

// An f16 (the low 16 bits of `h`) widened to f32 exactly (docs/contract.md §9),
// by integer operations alone, so that every device agrees bit for bit and none
// flushes a subnormal: a normal half rebiases its exponent, a subnormal is
// m · 2^-24 (exact in f32), and NaN or ±Inf keeps its all-ones exponent, so that
// the checks flag it as they flag an f32 one.
fn widen_f16(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    let normal = sign | ((e + 112u) << 23u) | (m << 13u);
    let special = sign | EXPONENT_BITS | (m << 13u);
    // 2^-24 is 0x33800000.
    let sub = sign | bitcast<u32>(f32(m) * bitcast<f32>(0x33800000u));
    return bitcast<f32>(select(select(normal, special, e == 31u), sub, e == 0u));
}

// A bf16 (the low 16 bits of `h`) widened to f32: the upper half of its bits.
fn widen_bf16(h: u32) -> f32 {
    return bitcast<f32>(h << 16u);
}

fn any_not_finite(v: vec4<f32>) -> bool {
    return any((bitcast<vec4<u32>>(v) & vec4<u32>(EXPONENT_BITS)) == vec4<u32>(EXPONENT_BITS));
}

// log(1 + e) for e in [0, 1] as e·P(e), P a degree-8 Chebyshev fit of log1p(e)/e:
// relative error below 2e-7 over the whole interval (f32 rounding), no `log`
// (GPU `log` is only absolutely accurate near 1, and costs more than the FMAs).
// Horner steps as explicit fma: one instruction each where the adapter has FMA (a
// CPU adapter does not fuse `p * e + c` by itself). Four values at once.
fn log1p_small4(e: vec4<f32>) -> vec4<f32> {
    var p = vec4<f32>(0.005253458);
    p = fma(p, e, vec4<f32>(-0.029588507));
    p = fma(p, e, vec4<f32>(0.078361668));
    p = fma(p, e, vec4<f32>(-0.136747703));
    p = fma(p, e, vec4<f32>(0.191114306));
    p = fma(p, e, vec4<f32>(-0.248443693));
    p = fma(p, e, vec4<f32>(0.333192706));
    p = fma(p, e, vec4<f32>(-0.499995023));
    p = fma(p, e, vec4<f32>(1.0));
    return e * p;
}

fn log1p_small(e: f32) -> f32 {
    // One lane of the vector form (the other lanes are dead code to the compiler).
    return log1p_small4(vec4<f32>(e)).x;
}

// Set when the pipeline is made: true for gamma = 2 (the notebook's), so that the
// square below is decided at compile time. A branch on a uniform value costs as
// much as both sides on SIMD-over-lanes adapters such as lavapipe.
override GAMMA_IS_TWO: bool = true;

// q^gamma for q in [0, 1], per component.
fn focal_mod(q: vec4<f32>, gamma: f32) -> vec4<f32> {
    if (GAMMA_IS_TWO) {
        return q * q;
    }
    // pow(0, gamma) goes through log(0): keep it out of the shader.
    return select(vec4<f32>(0.0), pow(max(q, vec4<f32>(1e-30)), vec4<f32>(gamma)), q > vec4<f32>(0.0));
}

// What the focal loss and its gradient need of four logits, each taken as
// u = z for a negative class or u = -z for the target class: then 1 - pt =
// sigmoid(u) and -log(pt) = softplus(u) in both cases, so q = 1 - pt = sigmoid(u),
// r = pt = sigmoid(-u) and nl = -log(pt) = softplus(u), from one exp and one log
// per logit, finite for every finite u. Four at a time so that four independent
// exp/log chains are in flight: a CPU adapter such as lavapipe runs them in one
// basic block, where the latency of one chain would otherwise stall the core.
struct FocalTerms {
    q: vec4<f32>,
    r: vec4<f32>,
    nl: vec4<f32>,
}

fn focal_terms(u: vec4<f32>) -> FocalTerms {
    let e = exp(-abs(u));
    let inv = 1.0 / (1.0 + e);
    // sigmoid(|u|) = inv and 1 - sigmoid(|u|) = e * inv, neither by cancellation.
    let lo = e * inv;
    let nonneg = u >= vec4<f32>(0.0);
    var t: FocalTerms;
    t.q = select(lo, inv, nonneg);
    t.r = select(inv, lo, nonneg);
    t.nl = max(u, vec4<f32>(0.0)) + log1p_small4(e);
    return t;
}

// (1 - pt)^gamma (-log pt) per component: the focal loss without its weight
// (1 - alpha for a negative, alpha for the target class), which the caller applies
// once to its sum.
fn focal_core(t: FocalTerms, gamma: f32) -> vec4<f32> {
    return focal_mod(t.q, gamma) * t.nl;
}

// d focal_core / du = q^gamma q + gamma r q^gamma nl (docs/contract.md §4's closed forms,
// reusing the elements' `core`); d/dz is this times the weight, and times -1 for
// the target class (u = -z).
fn focal_grad_core(t: FocalTerms, core: vec4<f32>, gamma: f32) -> vec4<f32> {
    let qq = focal_mod(t.q, gamma) * t.q;
    let rc = t.r * core;
    if (GAMMA_IS_TWO) {
        // 2 rc as rc + rc: no constant in the chain, so that a SIMD-over-lanes
        // compiler keeps this vector maths in vectors instead of redoing it lane by
        // lane inside each store (LLVM scalarizes an extracted lane of a one-use
        // chain whose operands include constants).
        return qq + (rc + rc);
    }
    return qq + gamma * rc;
}

// sigmoid(x), stable for either sign.
fn sigmoid(x: f32) -> f32 {
    let e = exp(-abs(x));
    return select(e / (1.0 + e), 1.0 / (1.0 + e), x >= 0.0);
}

// binary_cross_entropy_with_logits(x, y) of one element.
fn bce(x: f32, y: f32) -> f32 {
    return max(x, 0.0) - x * y + log1p_small(exp(-abs(x)));
}

// The intersection, union, iou and enclosing area of ltrb prediction p and target t.
struct BoxTerms {
    iw: f32,
    ih: f32,
    inter: f32,
    uni: f32,
    iou: f32,
    ew: f32,
    eh: f32,
    enclose: f32,
}

fn box_terms(p: vec4<f32>, t: vec4<f32>) -> BoxTerms {
    var b: BoxTerms;
    let mn = min(p, t);
    b.iw = max(mn.x + mn.z, 0.0);
    b.ih = max(mn.y + mn.w, 0.0);
    b.inter = b.iw * b.ih;
    b.uni = (p.x + p.z) * (p.y + p.w) + (t.x + t.z) * (t.y + t.w) - b.inter;
    // A zero union (PyTorch: NaN) counts as iou = 0.
    let nonzero = b.uni != 0.0;
    b.iou = select(0.0, b.inter / select(1.0, b.uni, nonzero), nonzero);
    let mx = max(p, t);
    b.ew = max(mx.x + mx.z, 0.0);
    b.eh = max(mx.y + mx.w, 0.0);
    b.enclose = b.ew * b.eh;
    return b;
}

// A power of two that brings a box pair's values to at most 2^32 (1 below that):
// the areas in box_terms would pass f32's range for values above 2^64. IoU and
// GIoU are scale-free, so box_loss of the scaled pair is the loss, and box_grad
// of it times the factor is the gradient. Exact: a power of two, and 1 (bit for
// bit unchanged results) for every box under 2^32 pixels.
fn box_scale(p: vec4<f32>, t: vec4<f32>) -> f32 {
    let a = max(abs(p), abs(t));
    let m = max(max(a.x, a.y), max(a.z, a.w));
    if (m <= 4294967296.0) {
        return 1.0;
    }
    // m = 1.f · 2^e with e = exponent field - 127, 32 < e <= 127; the factor
    // 2^(31 - e) keeps m · factor below 2^32 and is a normal f32.
    let e = i32((bitcast<u32>(m) >> 23u) & 0xffu) - 127;
    return bitcast<f32>(u32(127 + 31 - e) << 23u);
}

// IoU (mode 0) or GIoU (mode 1) loss.
fn box_loss(b: BoxTerms) -> f32 {
    if (params.reg_mode == 0u) {
        return -log(max(b.iou, 1e-6));
    }
    return 1.0 - (b.iou - (b.enclose - b.uni) / max(b.enclose, 1e-10));
}

// d min(a, b) / da with PyTorch's rule: 1 below, 1/2 at a tie, 0 above (max mirrored).
fn dmin(a: vec4<f32>, b: vec4<f32>) -> vec4<f32> {
    return select(select(vec4<f32>(0.0), vec4<f32>(0.5), a == b), vec4<f32>(1.0), a < b);
}

fn dmax(a: vec4<f32>, b: vec4<f32>) -> vec4<f32> {
    return select(select(vec4<f32>(0.0), vec4<f32>(0.5), a == b), vec4<f32>(1.0), a > b);
}

// d box_loss / d p (ltrb). min/max send the gradient to the chosen argument, the
// clamps at 0 pass it where their input is >= 0, the iou clamp at 1e-6 passes none.
fn box_grad(p: vec4<f32>, t: vec4<f32>, b: BoxTerms) -> vec4<f32> {
    let mn = min(p, t);
    let mx = max(p, t);
    // d iw / d(l, r), d ih / d(t, b); zero where the clamp at 0 cut the raw sum.
    let pass_w = select(0.0, 1.0, mn.x + mn.z >= 0.0);
    let pass_h = select(0.0, 1.0, mn.y + mn.w >= 0.0);
    let dm = dmin(p, t);
    let d_inter = vec4<f32>(b.ih * pass_w * dm.x, b.iw * pass_h * dm.y, b.ih * pass_w * dm.z, b.iw * pass_h * dm.w);
    let d_area = vec4<f32>(p.y + p.w, p.x + p.z, p.y + p.w, p.x + p.z);
    let d_uni = d_area - d_inter;
    let nonzero = b.uni != 0.0;
    let u = select(1.0, b.uni, nonzero);
    let d_iou = select(vec4<f32>(0.0), (d_inter - b.iou * d_uni) / u, nonzero);
    if (params.reg_mode == 0u) {
        // -log(iou): -(d iou) / iou where iou >= 1e-6, nothing where the clamp holds.
        return select(vec4<f32>(0.0), -d_iou / max(b.iou, 1e-6), b.iou >= 1e-6);
    }
    let ew_pass = select(0.0, 1.0, mx.x + mx.z >= 0.0);
    let eh_pass = select(0.0, 1.0, mx.y + mx.w >= 0.0);
    let dx = dmax(p, t);
    let d_enc = vec4<f32>(b.eh * ew_pass * dx.x, b.ew * eh_pass * dx.y, b.eh * ew_pass * dx.z, b.ew * eh_pass * dx.w);
    let e = max(b.enclose, 1e-10);
    let d_e = select(vec4<f32>(0.0), d_enc, b.enclose >= 1e-10);
    // loss = 1 - iou + (enclose - union) / e
    return -d_iou + (d_enc - d_uni) / e - ((b.enclose - b.uni) / e) * (d_e / e);
}
