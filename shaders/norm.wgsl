// The normalisation of a call (docs/contract.md §8), after count.wgsl: one
// workgroup sums every image's positives and centerness targets in a fixed order,
// writes those totals to counts slot 0, and writes each image's factors on the
// element derivatives, weight over denominator, to scales slot 1 + b:
//   per image (0): w / (B · max(n_b, 1)), the box factor w / (B · max(Z_b, 1e-6))
//                  when weighted by centerness;
//   batch (1):     w / max(Σ n, 1), box w / max(Σ Z, 1e-6) when weighted;
//   global (2):    w / max(N_g, 1), box w / max(Z_g, 1e-6) when weighted, with
//                  (N_g, Z_g) from the denominators binding (the caller's buffer
//                  or the host's values).
// Scales slot 0 holds the denominators used (N, Z), for the host's objective.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> counts: array<Count>;
// (N_g, Z_g), read in the global mode.
@group(0) @binding(2) var<storage, read> denominators: array<f32>;
// 1 + B slots shaped like Partial (the engine's partials buffer after the partial
// sums, where the fused pass reads them): the sums hold the values.
@group(0) @binding(3) var<storage, read_write> scales: array<Partial>;

// Smallest centerness-target denominator (CTR_FLOOR in src/losses.rs).
const CTR_FLOOR: f32 = 1e-6;

@compute @workgroup_size(WG)
fn normalize(@builtin(local_invocation_index) lid: u32) {
    let images = params.batch;
    var sums = vec2<f32>(0.0);
    for (var b = lid; b < images; b += WG) {
        sums += vec2<f32>(counts[1u + b].num_pos, counts[1u + b].ctr);
    }
    let total = workgroup_sum2(lid, sums);
    let totals = Count(total.x, total.y);
    var used = totals;
    if (params.norm_mode == 2u) {
        used = Count(denominators[0], denominators[1]);
    }
    if (lid == 0u) {
        counts[0] = totals;
        scales[0] = Partial(vec4<f32>(used.num_pos, used.ctr, 0.0, 0.0), 0u, 0.0, 0.0, 0u);
    }
    let weighted = params.ctr_weighted != 0u;
    for (var b = lid; b < images; b += WG) {
        var scale: f32;
        var box_scale: f32;
        if (params.norm_mode == 0u) {
            let c = counts[1u + b];
            scale = 1.0 / (f32(images) * max(c.num_pos, 1.0));
            box_scale = select(scale, 1.0 / (f32(images) * max(c.ctr, CTR_FLOOR)), weighted);
        } else {
            scale = 1.0 / max(used.num_pos, 1.0);
            box_scale = select(scale, 1.0 / max(used.ctr, CTR_FLOOR), weighted);
        }
        let factors = vec4<f32>(params.w_cls * scale, params.w_cnt * scale, params.w_reg * box_scale, 0.0);
        scales[1u + b] = Partial(factors, 0u, 0.0, 0.0, 0u);
    }
}
