// Shared by every FCOS loss kernel: the parameter block and the numerics.
// Assembled in front of each kernel file by src/gpu/shaders.rs (WGSL has no #include).

// Threads per workgroup of the reduction kernels. The Rust side reads the same
// number from src/gpu/shaders.rs::WORKGROUP_SIZE (a test checks they agree).
const WG: u32 = 256u;

// Mirrors `Params` in src/gpu/params.rs (a test checks size and offsets).
struct Params {
    batch: u32,
    classes: u32,
    positions: u32,
    num_levels: u32,
    // Workgroups along x (position tiles of WG positions) and y (class chunks).
    tiles: u32,
    chunks: u32,
    classes_per_chunk: u32,
    // 0 = IoU, 1 = GIoU.
    reg_mode: u32,
    gamma: f32,
    alpha: f32,
    // 1 when gamma == 2: (1 - pt)^2 is a product, not pow.
    gamma_is_two: u32,
    // tiles * chunks: partial sums per image.
    partials_per_image: u32,
    // Per level: x = offset of the level in the flattened position axis, y = H*W.
    levels: array<vec4<u32>, 16>,
}

// log(1 + e) for e in [0, 1]: a short series where 1 + e would lose e's digits
// (GPU `log` is only absolutely accurate near 1), the plain log elsewhere.
fn log1p_small(e: f32) -> f32 {
    let series = e * (1.0 - e * (0.5 - e * (0.33333334 - e * (0.25 - e * 0.2))));
    return select(log(1.0 + e), series, e < 0.0625);
}

// Focal-loss factor (1 - pt)^gamma for q = 1 - pt in [0, 1].
fn focal_mod(q: f32) -> f32 {
    if (params.gamma_is_two != 0u) {
        return q * q;
    }
    // pow(0, gamma) goes through log(0): keep it out of the shader.
    return select(0.0, pow(max(q, 1e-30), params.gamma), q > 0.0);
}

// Sigmoid focal loss of logit z against a binary target, with
// log(sigmoid(z)) = -softplus(-z) and log(1 - sigmoid(z)) = -softplus(z):
// one exp and one log per logit, finite for every finite z.
fn focal(z: f32, positive: bool) -> f32 {
    let e = exp(-abs(z));
    let l1p = log1p_small(e);
    let inv = 1.0 / (1.0 + e);
    // sigmoid(|z|) and 1 - sigmoid(|z|), neither by cancellation.
    let hi = inv;
    let lo = e * inv;
    let nonneg = z >= 0.0;
    let sig = select(lo, hi, nonneg);
    let one_minus_sig = select(hi, lo, nonneg);
    // q = 1 - pt, nl = -log(pt), w = the alpha weight.
    let q = select(sig, one_minus_sig, positive);
    let nl = select(max(z, 0.0), max(-z, 0.0), positive) + l1p;
    let w = select(1.0 - params.alpha, params.alpha, positive);
    return w * focal_mod(q) * nl;
}

// binary_cross_entropy_with_logits(x, y) of one element.
fn bce(x: f32, y: f32) -> f32 {
    return max(x, 0.0) - x * y + log1p_small(exp(-abs(x)));
}

// IoU (mode 0) or GIoU (mode 1) loss of ltrb prediction p against ltrb target t.
// A zero union (PyTorch: NaN) counts as iou = 0.
fn box_loss(p: vec4<f32>, t: vec4<f32>) -> f32 {
    let mn = min(p, t);
    let inter = max(mn.x + mn.z, 0.0) * max(mn.y + mn.w, 0.0);
    let area_p = (p.x + p.z) * (p.y + p.w);
    let area_t = (t.x + t.z) * (t.y + t.w);
    let uni = area_p + area_t - inter;
    let nonzero = uni != 0.0;
    let iou = select(0.0, inter / select(1.0, uni, nonzero), nonzero);
    if (params.reg_mode == 0u) {
        return -log(max(iou, 1e-6));
    }
    let mx = max(p, t);
    let enclose = max(mx.x + mx.z, 0.0) * max(mx.y + mx.w, 0.0);
    return 1.0 - (iou - (enclose - uni) / max(enclose, 1e-10));
}
