// Targets from boxes, first in every call from boxes: each workgroup assigns the
// targets of one tile of WG positions of a level of one image (assign.wgsl) and
// stores its positives and centerness-target sum, and the boxes' check flags, in
// the tile's class-chunk-0 partial slot; sum_counts.wgsl then sums an image's
// slots into its count. One dispatch per fused-pass segment (x: tiles, z:
// images), with the segment's params.
//
//   #ifdef TARGETS   the target pass: also writes the three target tensors
//                    (docs/contract.md §1 layouts), bound like the fused pass's.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> gt_boxes: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> gt_classes: array<u32>;
@group(0) @binding(3) var<storage, read_write> partials: array<Partial>;
#ifdef TARGETS
@group(0) @binding(4) var<storage, read_write> cls_targets: array<f32>;
@group(0) @binding(5) var<storage, read_write> cnt_targets: array<f32>;
@group(0) @binding(6) var<storage, read_write> reg_targets: array<vec4<f32>>;
#endif

@compute @workgroup_size(WG)
fn count_boxes(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let bl = wg.z;
    let b = params.image0 + bl;
    let pix = wg.x * WG + lid;
    let a = assign_position(wg.x, b, pix, lid);
    let live = pix < params.level_size;
    let positive = live && a.tgt.ct > -1.0;
    let sums = select(vec2<f32>(0.0), vec2<f32>(1.0, a.tgt.ct), positive);
#ifdef TARGETS
    if (live) {
        let t = params.tgt_base + bl * params.positions + pix;
        cls_targets[t] = a.tgt.cls;
        cnt_targets[t] = a.tgt.ct;
        reg_targets[params.reg_tgt_base + bl * params.positions + pix] = a.tgt.reg;
    }
#endif
    let total = workgroup_sum2(lid, sums);
    if (lid == 0u) {
        let slot = b * params.partials_per_image + params.slot_base + wg.x * params.chunks;
        partials[slot] = Partial(vec4<f32>(total, 0.0, 0.0), a.flags, 0u, 0u, 0u);
    }
}
