// A fixed-order workgroup sum of one vec2<f32> per invocation (count.wgsl and
// norm.wgsl: positives and centerness targets), as a shared-memory tree, so that a
// call gives the same bits every time. Every invocation gets the total. Call from
// uniform control flow: it holds workgroup barriers.

var<workgroup> pair_scratch: array<vec2<f32>, WG>;

fn workgroup_sum2(lid: u32, v: vec2<f32>) -> vec2<f32> {
    pair_scratch[lid] = v;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        if (lid < k) {
            pair_scratch[lid] += pair_scratch[lid + k];
        }
        workgroupBarrier();
    }
    return pair_scratch[0];
}
