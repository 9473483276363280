// The fused forward pass. One workgroup covers WG consecutive flattened positions
// (x: tile) of one image (z) for one chunk of classes (y). Each thread reads its
// position's logits straight from the NCHW levels through the level-flatten index
// map (SPEC §1), sums the focal terms of its classes, and, in class chunk 0, the
// centerness BCE and box loss at positives and the positive count. A shared-memory
// tree reduces the workgroup to one partial {cls, cnt, reg, num_pos}.

@group(0) @binding(0) var<uniform> params: Params;
// Each head: its levels packed one after another, level l at element B*ch*offset_l.
@group(0) @binding(1) var<storage, read> cls_logits: array<f32>;
@group(0) @binding(2) var<storage, read> cnt_logits: array<f32>;
@group(0) @binding(3) var<storage, read> reg_preds: array<f32>;
@group(0) @binding(4) var<storage, read> cls_targets: array<f32>;
@group(0) @binding(5) var<storage, read> cnt_targets: array<f32>;
@group(0) @binding(6) var<storage, read> reg_targets: array<vec4<f32>>;
// [B][tiles][chunks] partial sums; w is the positive count of the workgroup.
@group(0) @binding(7) var<storage, read_write> partials: array<vec4<f32>>;

var<workgroup> scratch: array<vec4<f32>, WG>;

@compute @workgroup_size(WG)
fn fused(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let tile = wg.x;
    let chunk = wg.y;
    let b = wg.z;
    let p = tile * WG + lid;
    var acc = vec4<f32>(0.0);
    if (p < params.positions) {
        // The level holding p: the last one starting at or before p (empty levels
        // share their successor's offset, so the last match is never empty).
        var level = 0u;
        for (var k = 1u; k < params.num_levels; k++) {
            if (params.levels[k].x <= p) {
                level = k;
            }
        }
        let off = params.levels[level].x;
        let hw = params.levels[level].y;
        let pix = p - off;
        let bp = b * params.positions + p;
        let n_cls = params.classes;

        let tcls = cls_targets[bp];
        let c0 = chunk * params.classes_per_chunk;
        let c1 = min(c0 + params.classes_per_chunk, n_cls);
        // Element ((b*C + c)*HW + pix) of level `level`, which starts at B*C*off.
        var idx = n_cls * params.batch * off + (b * n_cls + c0) * hw + pix;
        var cls_sum = 0.0;
        for (var c = c0; c < c1; c++) {
            cls_sum += focal(cls_logits[idx], tcls == f32(c + 1u));
            idx += hw;
        }
        acc.x = cls_sum;

        if (chunk == 0u) {
            let ct = cnt_targets[bp];
            if (ct > -1.0) {
                acc.y = bce(cnt_logits[params.batch * off + b * hw + pix], ct);
                let r = 4u * params.batch * off + 4u * b * hw + pix;
                let pred = vec4<f32>(reg_preds[r], reg_preds[r + hw], reg_preds[r + 2u * hw], reg_preds[r + 3u * hw]);
                acc.z = box_loss(pred, reg_targets[bp]);
                acc.w = 1.0;
            }
        }
    }
    scratch[lid] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            scratch[lid] += scratch[lid + s];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        partials[(b * params.tiles + tile) * params.chunks + chunk] = scratch[0];
    }
}
