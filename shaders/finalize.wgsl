// Sums the partials of one image (workgroup x = image) in a fixed order — a strided
// per-thread sum, then a shared-memory tree — into its raw sums (docs/contract.md
// §8); the host normalises them.

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
@group(0) @binding(2) var<storage, read_write> image_sums: array<ImageSums>;

var<workgroup> sums: array<vec3<f32>, WG>;
var<workgroup> weighted_sums: array<vec2<f32>, WG>;
var<workgroup> counts: array<u32, WG>;
var<workgroup> flag_bits: array<u32, WG>;

@compute @workgroup_size(WG)
fn finalize(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wg.x;
    let n = params.partials_per_image;
    let base = b * n;
    var s = vec3<f32>(0.0);
    var sw = vec2<f32>(0.0);
    var np = 0u;
    var f = 0u;
    for (var i = lid; i < n; i += WG) {
        let part = partials[base + i];
        s += part.sums.xyz;
        sw += part.weighted;
        // Counts are whole numbers <= WG, exact in f32.
        np += u32(part.sums.w);
        f |= part.flags;
    }
    sums[lid] = s;
    weighted_sums[lid] = sw;
    counts[lid] = np;
    flag_bits[lid] = f;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        if (lid < k) {
            sums[lid] += sums[lid + k];
            weighted_sums[lid] += weighted_sums[lid + k];
            counts[lid] += counts[lid + k];
            flag_bits[lid] |= flag_bits[lid + k];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        let t = sums[0];
        let tw = weighted_sums[0];
        image_sums[b] = ImageSums(t.x, t.y, t.z, tw.x, tw.y, counts[0], flag_bits[0], 0u);
    }
}
