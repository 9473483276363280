// Targets from boxes, after cull.wgsl, where a call needs its counts before the
// fused pass (the backward pass, denominators from a device buffer) and in the
// target pass: each workgroup assigns the targets of one tile of WG positions of
// a level of one image (assign.wgsl) and stores its positives and
// centerness-target sum, and the boxes' check flags, in the tile's class-chunk-0
// partial slot; sum_counts.wgsl then sums an image's slots into its count. One
// dispatch per fused-pass segment (x: tiles, z: images), with the segment's
// params.
//
//   #ifdef TARGETS   the target pass: also writes the three target tensors
//                    (docs/contract.md §1 layouts), bound like the fused pass's.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> box_lists: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> list_counts: array<u32>;
@group(0) @binding(3) var<storage, read_write> partials: array<Partial>;
#ifdef TARGETS
@group(0) @binding(4) var<storage, read_write> cls_targets: array<f32>;
@group(0) @binding(5) var<storage, read_write> cnt_targets: array<f32>;
@group(0) @binding(6) var<storage, read_write> reg_targets: array<vec4<f32>>;
#endif

@compute @workgroup_size(WG)
fn count_boxes(@builtin(workgroup_id) wg: vec3<u32>, lanes: Lanes) {
    let lid = lanes.lid;
    let bl = wg.z;
    let b = params.image0 + bl;
    let pix = wg.x * WG + lid;
    let a = assign_position(wg.x, b, pix);
#ifdef TARGETS
    if (pix < params.level_size) {
        let t = params.tgt_base + bl * params.positions + pix;
        cls_targets[t] = a.cls;
        cnt_targets[t] = a.ct;
        reg_targets[params.reg_tgt_base + bl * params.positions + pix] = a.reg;
    }
#endif
    // reduce.wgsl's workgroup sum (subgroups where the device has them).
    let total = reduce_workgroup(vec4<f32>(count_of(a), 0.0, 0.0), 0u, lanes).sums;
    if (lid == 0u) {
        let slot = b * params.partials_per_image + params.slot_base + wg.x * params.chunks;
        partials[slot] = Partial(vec4<f32>(0.0), gt_flags(b), total.x, total.y, 0u);
    }
}
