// Target assignment from ground-truth boxes (docs/contract.md §7), for one tile of
// WG consecutive positions of one level of one image: the workgroup stages the
// image's boxes in rounds of BOX_TILE, keeps only those that can hold a point of
// the tile (the cull below), and each invocation takes, among the kept boxes, the
// candidate of smallest area for its own point (equal areas: the lowest box
// index). Nothing is written to memory: the target stays in registers.
//
// The includer binds `gt_boxes: array<vec4<f32>>` ([B, M] rows x1 y1 x2 y2) and
// `gt_classes: array<u32>` ([B, M] words: f32 bits or i32, params.class_f32).
// Call assign_position from uniform control flow: it holds workgroup barriers.

// Boxes staged per round (fixed, so that workgroup memory does not grow with WG).
const BOX_TILE: u32 = 64u;

// Check flags of the boxes (Input-like names on the Rust side: GT_BOXES, GT_CLASSES).
const FLAG_GT_BOXES: u32 = 64u;
const FLAG_GT_CLASSES: u32 = 128u;

struct Staged {
    corners: vec4<f32>,
    cls: f32,
    m: u32,
}

var<workgroup> staged: array<Staged, BOX_TILE>;
var<workgroup> staged_count: atomic<u32>;
var<workgroup> staged_flags: atomic<u32>;

// The points of a tile, as the range of their coordinates.
struct TileBounds {
    lo: vec2<f32>,
    hi: vec2<f32>,
}

// Point (x, y) of the level: x·s + floor(s / 2) in f32.
fn level_point(x: u32, y: u32) -> vec2<f32> {
    let s = f32(params.stride);
    let half = f32(params.stride / 2u);
    return vec2<f32>(f32(x) * s + half, f32(y) * s + half);
}

fn tile_bounds(tile: u32) -> TileBounds {
    let w = params.level_width;
    let first = tile * WG;
    let last = min(first + WG, params.level_size) - 1u;
    let r0 = first / w;
    let r1 = last / w;
    let one_row = r0 == r1;
    let x0 = select(0u, first % w, one_row);
    let x1 = select(w - 1u, last % w, one_row);
    return TileBounds(level_point(x0, r0), level_point(x1, r1));
}

// The class of a row as a number (padding below 1), and its check flags.
struct GtClass {
    value: f32,
    flags: u32,
}

fn gt_class(word: u32) -> GtClass {
    var out: GtClass;
    if (params.class_f32 != 0u) {
        out.value = bitcast<f32>(word);
        let bad = not_finite(out.value) || out.value != floor(out.value) || out.value > f32(params.classes);
        out.flags = select(0u, FLAG_GT_CLASSES, bad);
    } else {
        let v = bitcast<i32>(word);
        out.value = f32(max(v, 0));
        out.flags = select(0u, FLAG_GT_CLASSES, v > i32(params.classes));
    }
    return out;
}

// Whether box g may hold a point of the tile as a candidate. Conservative: the
// per-point test decides; this only skips boxes that cannot pass it. Each bound is
// the point test's own f32 expression at the tile's extreme point (rounding is
// monotone), and the range band uses the box's larger side: a point inside has
// max(l, t, r, b) at most that side and at least about half of it.
fn may_hold(g: vec4<f32>, tb: TileBounds) -> bool {
    let inside = all(tb.hi - g.xy > vec2<f32>(0.0)) && all(g.zw - tb.lo > vec2<f32>(0.0));
    let c = (g.xy + g.zw) / 2.0;
    let near = all(tb.lo - c < vec2<f32>(params.near)) && all(c - tb.hi < vec2<f32>(params.near));
    let side = max(g.z - g.x, g.w - g.y);
    let band = side >= params.range_lo && side * 0.4999 <= params.range_hi;
    return inside && near && band;
}

// One position's assignment and the flags of the image's boxes (the same in every
// invocation of the workgroup).
struct Assigned {
    tgt: Target,
    flags: u32,
}

// Stages round `round` of image b's boxes: the ones that may hold a point of the
// tile, in any order (the box index breaks ties).
fn stage_round(b: u32, round: u32, lid: u32, tb: TileBounds) {
    let m_n = params.boxes_per_image;
    for (var k = lid; k < BOX_TILE; k += WG) {
        let m = round * BOX_TILE + k;
        if (m < m_n) {
            let row = b * m_n + m;
            let g = gt_boxes[row];
            let gc = gt_class(gt_classes[row]);
            var flags = gc.flags;
            flags |= select(0u, FLAG_GT_BOXES, any_not_finite(g));
            if (flags != 0u) {
                atomicOr(&staged_flags, flags);
            } else if (gc.value >= 1.0 && may_hold(g, tb)) {
                let slot = atomicAdd(&staged_count, 1u);
                staged[slot] = Staged(g, gc.value, m);
            }
        }
    }
}

// The target of in-level position `pix` of image b in tile `tile` (pix may lie
// past the level's end: its target is background and unused).
fn assign_position(tile: u32, b: u32, pix: u32, lid: u32) -> Assigned {
    let tb = tile_bounds(tile);
    let w = params.level_width;
    let p = level_point(pix % w, pix / w);
    var best = Target(0.0, -1.0, vec4<f32>(-1.0));
    var best_area = 0.0;
    var best_m = 0xffffffffu;
    if (lid == 0u) {
        atomicStore(&staged_flags, 0u);
    }
    workgroupBarrier();
    let rounds = (params.boxes_per_image + BOX_TILE - 1u) / BOX_TILE;
    for (var round = 0u; round < rounds; round++) {
        if (lid == 0u) {
            atomicStore(&staged_count, 0u);
        }
        workgroupBarrier();
        stage_round(b, round, lid, tb);
        workgroupBarrier();
        let n = atomicLoad(&staged_count);
        for (var i = 0u; i < n; i++) {
            let s = staged[i];
            let g = s.corners;
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
            let better = best_m == 0xffffffffu || area < best_area || (area == best_area && s.m < best_m);
            if (inside && in_range && near && better) {
                best_area = area;
                best_m = s.m;
                best = Target(s.cls, 0.0, vec4<f32>(l, t, r, bt));
            }
        }
        workgroupBarrier();
    }
    if (best_m != 0xffffffffu) {
        let v = best.reg;
        best.ct = sqrt(min(v.x, v.z) * min(v.y, v.w) / (max(v.x, v.z) * max(v.y, v.w) + 1e-10));
    }
    return Assigned(best, atomicLoad(&staged_flags));
}
