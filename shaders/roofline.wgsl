// The memory roofline of the fused pass (the bench harness's measuring kernel,
// built only with the crate's `bench` feature): the same positions, classes,
// workgroups, reads and, for the backward pass, writes as fused.wgsl, in the same
// layout and order, with the maths replaced by plain sums. Its values are
// meaningless; its time is what moving the fused pass's bytes takes.
//
// Variants (the rule is at the top of common.wgsl):
//   #ifdef BACKWARD   the backward pass's roofline: the positive counts are read and
//                     every gradient element is written once, from the value read
//                     at its place.
//   override READ_ALL the centerness and box inputs at every position, as the
//                     checked pass reads them (without: at the positives only).
//   #ifdef SUBGROUPS  (reduce.wgsl) how the workgroup is reduced.
// Its bindings are segment.wgsl's, the same as the fused pass's.

override READ_ALL: bool = false;

// The stand-in for the centerness and box terms: plain sums of what they read.
fn roofline_sums(x: f32, ct: f32, pred: vec4<f32>, tgt: vec4<f32>) -> vec2<f32> {
    return vec2<f32>(x + ct, dot(pred + tgt, vec4<f32>(1.0)));
}

@compute @workgroup_size(WG)
fn roofline(@builtin(workgroup_id) wg: vec3<u32>, lanes: Lanes) {
    let at = place(wg, lanes);
    let hw = params.level_size;
    var acc = vec4<f32>(0.0);
    if (at.pix < hw) {
#ifdef BACKWARD
        let coef = image_scale(at.b).x;
#endif
        let tcls = cls_targets[at.t];
        let c0 = at.chunk * params.classes_per_chunk;
        let c1 = min(c0 + params.classes_per_chunk, params.classes);
        var idx = params.cls_base + (at.bl * params.classes + c0) * hw + at.pix;
        var cls_sum = tcls;
#ifdef BACKWARD
        let gshift = grad_shift(params.cls_base, params.grad_cls_base);
#endif
        for (var c = c0; c < c1; c++) {
            let z = cls_at(idx);
            cls_sum += z;
#ifdef BACKWARD
            grad_cls[idx + gshift] = coef * z;
#endif
            idx += hw;
        }
        acc.x = cls_sum;

        if (at.chunk == 0u) {
            let here = read_position(at.t, at.bl, at.pix, READ_ALL);
            let boxes = here.boxes;
            if (READ_ALL || here.positive) {
                acc = vec4<f32>(acc.x, roofline_sums(boxes.x, here.ct, boxes.pred, boxes.tgt), acc.w);
            } else {
                acc.y = here.ct;
            }
            var g_cnt = 0.0;
            var g_reg = vec4<f32>(0.0);
            if (here.positive) {
                g_cnt = boxes.x;
                g_reg = boxes.pred;
                acc.w = 1.0;
            }
#ifdef BACKWARD
            store_box_grads(here.at, g_cnt, g_reg);
#endif
        }
    }
    store_partial(wg, reduce_workgroup(acc, 0u, lanes), lanes);
}
