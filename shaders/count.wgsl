// Positives and centerness-target sum per image (cnt_targets > -1), before the
// normalisation pass needs them: workgroup x = image params.image0 + x; a strided
// per-thread sum, then a shared-memory tree (a fixed order). One dispatch per run
// of images whose targets fit one binding.

@group(0) @binding(0) var<uniform> params: Params;
// [images, P] of this dispatch, from element params.tgt_base.
@group(0) @binding(1) var<storage, read> cnt_targets: array<f32>;
// Slot 0: the call's totals (norm.wgsl); image b in slot 1 + b.
@group(0) @binding(2) var<storage, read_write> counts: array<Count>;

var<workgroup> num_scratch: array<u32, WG>;
var<workgroup> ctr_scratch: array<f32, WG>;

@compute @workgroup_size(WG)
fn count_positives(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = params.image0 + wg.x;
    let base = params.tgt_base + wg.x * params.positions;
    var n = 0u;
    var z = 0.0;
    for (var p = lid; p < params.positions; p += WG) {
        let ct = cnt_targets[base + p];
        let positive = ct > -1.0;
        n += select(0u, 1u, positive);
        z += select(0.0, ct, positive);
    }
    num_scratch[lid] = n;
    ctr_scratch[lid] = z;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        if (lid < k) {
            num_scratch[lid] += num_scratch[lid + k];
            ctr_scratch[lid] += ctr_scratch[lid + k];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        counts[1u + b] = Count(f32(num_scratch[0]), ctr_scratch[0]);
    }
}
