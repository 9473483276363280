// Sums the partials of one image (workgroup x = image) in a fixed order — a strided
// per-thread sum, then a shared-memory tree — and adds the image's positives and
// centerness-target sum from count.wgsl: its raw sums (docs/contract.md §8); the
// host normalises them.

// Mirrors `ImageSums` in src/gpu/params.rs.
struct ImageSums {
    cls: f32,
    cnt: f32,
    reg: f32,
    reg_w: f32,
    ctr: f32,
    num_pos: u32,
    // OR of the image's check flags (0 when checks are off or every value is usable).
    flags: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> partials: array<Partial>;
// Image b's count in slot 1 + b.
@group(0) @binding(2) var<storage, read> counts: array<Count>;
@group(0) @binding(3) var<storage, read_write> image_sums: array<ImageSums>;

var<workgroup> sums: array<vec4<f32>, WG>;
var<workgroup> flag_bits: array<u32, WG>;

@compute @workgroup_size(WG)
fn finalize(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wg.x;
    let n = params.partials_per_image;
    let base = b * n;
    var s = vec4<f32>(0.0);
    var f = 0u;
    for (var i = lid; i < n; i += WG) {
        s += partials[base + i].sums;
        f |= partials[base + i].flags;
    }
    sums[lid] = s;
    flag_bits[lid] = f;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        if (lid < k) {
            sums[lid] += sums[lid + k];
            flag_bits[lid] |= flag_bits[lid + k];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        let t = sums[0];
        let c = counts[1u + b];
        image_sums[b] = ImageSums(t.x, t.y, t.z, t.w, c.ctr, u32(c.num_pos), flag_bits[0], 0u);
    }
}
