// Sums the partials of one image (workgroup x = image) in a fixed order — a strided
// per-thread sum, then a shared-memory tree — and divides by max(1, num_pos).

struct ImageLoss {
    cls: f32,
    cnt: f32,
    reg: f32,
    num_pos: u32,
    // OR of the image's check flags (0 when checks are off or every value is usable).
    flags: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> partials: array<Partial>;
@group(0) @binding(2) var<storage, read_write> image_losses: array<ImageLoss>;

var<workgroup> sums: array<vec3<f32>, WG>;
var<workgroup> counts: array<u32, WG>;
var<workgroup> flag_bits: array<u32, WG>;

@compute @workgroup_size(WG)
fn finalize(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wg.x;
    let n = params.partials_per_image;
    let base = b * n;
    var s = vec3<f32>(0.0);
    var np = 0u;
    var f = 0u;
    for (var i = lid; i < n; i += WG) {
        let v = partials[base + i].sums;
        s += v.xyz;
        // Counts are whole numbers <= WG, exact in f32.
        np += u32(v.w);
        f |= partials[base + i].flags;
    }
    sums[lid] = s;
    counts[lid] = np;
    flag_bits[lid] = f;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        if (lid < k) {
            sums[lid] += sums[lid + k];
            counts[lid] += counts[lid + k];
            flag_bits[lid] |= flag_bits[lid + k];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        let total = sums[0];
        let d = f32(max(counts[0], 1u));
        image_losses[b] = ImageLoss(total.x / d, total.y / d, total.z / d, counts[0], flag_bits[0], 0u, 0u, 0u);
    }
}
