// What the passes from ground-truth boxes (docs/contract.md §7) share: the
// boxes' check flags, where a tile's list of boxes is, a tile's points, the class
// words, and the cull (may_hold) that cull.wgsl applies per tile.

// Check flags of the boxes (GT_BOXES, GT_CLASSES on the Rust side).
const FLAG_GT_BOXES: u32 = 64u;
const FLAG_GT_CLASSES: u32 = 128u;

// Tiles of one image over all levels: the class-chunk-0 partial slots.
fn tiles_per_image() -> u32 {
    return params.partials_per_image / params.chunks;
}

// The list of tile `tile` of this segment's level in image b.
fn tile_list(tile: u32, b: u32) -> u32 {
    return b * tiles_per_image() + params.slot_base / params.chunks + tile;
}

// Point (x, y) of the level: x·s + floor(s / 2) in f32.
fn level_point(x: u32, y: u32) -> vec2<f32> {
    let s = f32(params.stride);
    let half = f32(params.stride / 2u);
    return vec2<f32>(f32(x) * s + half, f32(y) * s + half);
}

// (x, y) of in-level position `pix`: pix = y·W + x. An f32 quotient corrected by
// one step (exact for levels below 2^24 positions): an integer division is a
// scalar loop on SIMD-over-lanes adapters such as lavapipe.
fn split_position(pix: u32) -> vec2<u32> {
    let w = params.level_width;
    var y = u32(f32(pix) / f32(w));
    let over = y * w > pix;
    y = select(y, y - 1u, over);
    let x = pix - y * w;
    let under = x >= w;
    return vec2<u32>(select(x, x - w, under), select(y, y + 1u, under));
}

// The points of a tile, as the range of their coordinates.
struct TileBounds {
    lo: vec2<f32>,
    hi: vec2<f32>,
}

fn tile_bounds(tile: u32) -> TileBounds {
    let w = params.level_width;
    let first = split_position(tile * WG);
    let last = split_position(min(tile * WG + WG, params.level_size) - 1u);
    let one_row = first.y == last.y;
    let x0 = select(0u, first.x, one_row);
    let x1 = select(w - 1u, last.x, one_row);
    return TileBounds(level_point(x0, first.y), level_point(x1, last.y));
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
