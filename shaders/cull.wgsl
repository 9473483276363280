// Targets from boxes, first in every call from boxes: for each tile of WG
// consecutive positions of a level of one image, the list of the image's boxes
// that may hold one of the tile's points (the cull of assign.wgsl), so that the
// passes after it test each position against those boxes only. One invocation
// per (tile, box) pair of the level, WG pairs per workgroup (x), image z: no
// workgroup barrier, no workgroup memory, and few workgroups when M is small. Each kept box is
// appended to its tile's list through an atomic counter (the counters are
// cleared before this pass), so a list's order varies from call to call; the
// box index, stored with it, breaks ties, so the targets do not. Bad boxes and
// classes set the image's check flags. One dispatch per fused-pass segment (x:
// pair groups, z: images), with the segment's params.

@group(0) @binding(0) var<uniform> params: Params;
// [B, M] rows: x1 y1 x2 y2, and the class words.
@group(0) @binding(1) var<storage, read> gt_boxes: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> gt_classes: array<u32>;
// [B · tiles per image][M] entries of two vec4: the corners, then (class,
// bitcast box index, 0, 0).
@group(0) @binding(3) var<storage, read_write> box_lists: array<vec4<f32>>;
// [B · tiles per image] list lengths, then [B] check flags.
@group(0) @binding(4) var<storage, read_write> list_counts: array<atomic<u32>>;

@compute @workgroup_size(WG)
fn cull_boxes(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = params.image0 + wg.z;
    let m_n = params.boxes_per_image;
    let pair = wg.x * WG + lid;
    let tile = pair / max(m_n, 1u);
    let m = pair - tile * m_n;
    if (tile < params.tiles) {
        let tb = tile_bounds(tile);
        let list = tile_list(tile, b);
        let row = b * m_n + m;
        let g = gt_boxes[row];
        let gc = gt_class(gt_classes[row]);
        let flags = gc.flags | select(0u, FLAG_GT_BOXES, any_not_finite(g));
        if (flags != 0u) {
            atomicOr(&list_counts[params.batch * tiles_per_image() + b], flags);
        } else if (gc.value >= 1.0 && may_hold(g, tb)) {
            let slot = atomicAdd(&list_counts[list], 1u);
            let e = 2u * (list * m_n + slot);
            box_lists[e] = g;
            box_lists[e + 1u] = vec4<f32>(gc.value, bitcast<f32>(m), 0.0, 0.0);
        }
    }
}
