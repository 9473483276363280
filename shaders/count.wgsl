// Positives and centerness-target sum per image (cnt_targets > -1), first in
// every call: finalize.wgsl and the normalisation (norm.wgsl) read them.
// Workgroup x = image params.image0 + x; a strided per-thread sum, then the
// workgroup sum of sum2.wgsl. One dispatch per run of images whose targets fit one
// binding.

@group(0) @binding(0) var<uniform> params: Params;
// [images, P] of this dispatch, from element params.tgt_base.
@group(0) @binding(1) var<storage, read> cnt_targets: array<f32>;
// Slot 0: the call's totals (norm.wgsl); image b in slot 1 + b.
@group(0) @binding(2) var<storage, read_write> counts: array<Count>;

@compute @workgroup_size(WG)
fn count_positives(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = params.image0 + wg.x;
    let base = params.tgt_base + wg.x * params.positions;
    // (positives, centerness sum): whole numbers below 2^24 are exact in f32.
    var sums = vec2<f32>(0.0);
    for (var p = lid; p < params.positions; p += WG) {
        let ct = cnt_targets[base + p];
        sums += select(vec2<f32>(0.0), vec2<f32>(1.0, ct), ct > -1.0);
    }
    let total = workgroup_sum2(lid, sums);
    if (lid == 0u) {
        counts[1u + b] = Count(total.x, total.y);
    }
}
