// After count_boxes.wgsl, or after the fused pass from boxes: each image's
// positives and centerness-target sum, the sum of its tiles' counts (num_pos and
// ctr of the class-chunk-0 partial slots, every `chunks`-th) in a fixed order,
// into its count slot; what count.wgsl gives a call from targets.
// Workgroup x = image.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> partials: array<Partial>;
// Image b in slot 1 + b.
@group(0) @binding(2) var<storage, read_write> counts: array<Count>;

@compute @workgroup_size(WG)
fn sum_counts(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wg.x;
    let n = params.partials_per_image;
    let step = params.chunks;
    var sums = vec2<f32>(0.0);
    for (var i = lid * step; i < n; i += WG * step) {
        let slot = partials[b * n + i];
        sums += vec2<f32>(slot.num_pos, slot.ctr);
    }
    let total = workgroup_sum2(lid, sums);
    if (lid == 0u) {
        counts[1u + b] = Count(total.x, total.y);
    }
}
