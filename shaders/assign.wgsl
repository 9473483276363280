// Target assignment from ground-truth boxes (docs/contract.md §7). cull.wgsl
// lists, per tile of WG consecutive positions of a level of one image, the boxes
// that may hold one of its points (box_tiles.wgsl's may_hold); assign_position
// takes, among them, the candidate of smallest area for one position (equal
// areas: the lowest box index). The target stays in registers: nothing is
// written to memory.
//
// The includer binds `box_lists: array<vec4<f32>>` and `list_counts:
// array<u32>` (cull.wgsl's output) read-only.

// The target of in-level position `pix` (tile `tile` of the segment's level)
// of image b; background past the level's end.
fn assign_position(tile: u32, b: u32, pix: u32) -> Target {
    let xy = split_position(pix);
    let p = level_point(xy.x, xy.y);
    var best = Target(0.0, -1.0, vec4<f32>(-1.0));
    var best_area = 0.0;
    var best_m = 0xffffffffu;
    let list = tile_list(tile, b);
    let n = select(0u, list_counts[list], pix < params.level_size);
    let base = 2u * list * params.boxes_per_image;
    for (var i = 0u; i < n; i++) {
        let g = box_lists[base + 2u * i];
        let info = box_lists[base + 2u * i + 1u];
        let m = bitcast<u32>(info.y);
        let l = p.x - g.x;
        let t = p.y - g.y;
        let r = g.z - p.x;
        let bt = g.w - p.y;
        let inside = min(min(l, t), min(r, bt)) > 0.0;
        let far = max(max(l, t), max(r, bt));
        let in_range = select(params.range_lo < far, params.range_lo <= far, params.assign_rule == 1u) && far <= params.range_hi;
        let c = (g.xy + g.zw) / 2.0;
        let near = max(max(p.x - c.x, p.y - c.y), max(c.x - p.x, c.y - p.y)) < params.near;
        let area = select((l + r) * (t + bt), (g.z - g.x) * (g.w - g.y), params.assign_rule == 1u);
        let better = best_m == 0xffffffffu || area < best_area || (area == best_area && m < best_m);
        if (inside && in_range && near && better) {
            best_area = area;
            best_m = m;
            best = Target(info.x, 0.0, vec4<f32>(l, t, r, bt));
        }
    }
    if (best_m != 0xffffffffu) {
        let v = best.reg;
        best.ct = sqrt(min(v.x, v.z) * min(v.y, v.w) / (max(v.x, v.z) * max(v.y, v.w) + 1e-10));
    }
    return best;
}

// The check flags cull.wgsl set for image b's boxes.
fn gt_flags(b: u32) -> u32 {
    return list_counts[params.batch * tiles_per_image() + b];
}

// A position's contribution to its image's count: (1, centerness target) at a
// positive, zeros elsewhere.
fn count_of(a: Target) -> vec2<f32> {
    return select(vec2<f32>(0.0), vec2<f32>(1.0, a.ct), a.ct > -1.0);
}
