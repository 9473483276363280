// Positives per image (cnt_targets > -1), before the backward pass needs them:
// workgroup x = image params.image0 + x; a strided per-thread count, then a
// shared-memory tree. One dispatch per run of images whose targets fit one binding.

@group(0) @binding(0) var<uniform> params: Params;
// [images, P] of this dispatch, from element params.tgt_base.
@group(0) @binding(1) var<storage, read> cnt_targets: array<f32>;
@group(0) @binding(2) var<storage, read_write> num_pos: array<u32>;

var<workgroup> counts: array<u32, WG>;

@compute @workgroup_size(WG)
fn count_positives(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = params.image0 + wg.x;
    let base = params.tgt_base + wg.x * params.positions;
    var n = 0u;
    for (var p = lid; p < params.positions; p += WG) {
        n += select(0u, 1u, cnt_targets[base + p] > -1.0);
    }
    counts[lid] = n;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        if (lid < k) {
            counts[lid] += counts[lid + k];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        num_pos[b] = counts[0];
    }
}
