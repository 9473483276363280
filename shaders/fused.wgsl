// The fused pass over one segment (one pyramid level, a run of images). One
// workgroup covers WG consecutive positions of the level (x: tile) of one image (z)
// for one chunk of classes (y). Each thread reads its position's logits straight
// from the NCHW level through the level-flatten index map (docs/contract.md §1.1), sums the focal
// terms of its classes (every class as a negative in the class loop, four per step;
// the target class redone as a positive after it) and, in class chunk 0, the
// centerness BCE and box loss at a positive and the positive count. Subgroup sums or
// a shared-memory tree reduce the workgroup to one partial {cls, cnt, reg, num_pos},
// stored in a fixed slot per image.
//
// Variants (the rule is at the top of common.wgsl):
//   #ifdef BACKWARD   binds the positive counts and the gradients, and writes
//                     dL/d(input) for every input element, in the input layout.
//   override CHECKS   also reads every input element once and flags values the
//                     loss cannot use (NaN/Inf by their bit pattern, targets out of
//                     range), OR-reduced into the partial's flags (Input::flag).
//   #ifdef SUBGROUPS  (reduce.wgsl) how the workgroup is reduced.
//   #ifdef BOXES      the targets are assigned from the ground-truth boxes in
//                     registers (assign.wgsl) instead of read from the target
//                     tensors; the boxes' check flags join the partial's.
// Its bindings and its place in the segment are segment.wgsl's. The memory roofline of this pass, for the bench harness, is roofline.wgsl.

// What the class loop needs of its position: the target class and the scalars.
struct ClassScale {
    tcls: f32,
    gamma: f32,
    // Backward: dL/d(focal_core) of a negative of this image,
    // (1 - alpha) · w_cls / (B · max(num_pos, 1)).
    coef_neg: f32,
}

struct ClassStep {
    // Sum of focal_core over the step's live negatives.
    loss: f32,
    // Their gradients (BACKWARD only; the caller stores the live lanes, and the
    // target class's lane is stored again, right, after the class loop).
    grad: vec4<f32>,
}

// Classes c .. c+3 of one position, every one taken as a negative (u = z): the
// step's target class, if any, and lanes at or past `n` count nothing here (the
// target class is redone as a positive after the class loop). One compare and one
// select per logit instead of choosing u and the weight per logit.
fn cls_step(z: vec4<f32>, c: u32, n: u32, cs: ClassScale) -> ClassStep {
    // The notebook's one-hot, a float compare of the target with c + 1 .. c + 4, as
    // tcls - c against 1 .. 4 (exact for class numbers below 2^24; a target that
    // is not a whole number matches nothing either way).
    let positive = vec4<f32>(cs.tcls - f32(c)) == vec4<f32>(1.0, 2.0, 3.0, 4.0);
    let dead = vec4<u32>(0u, 1u, 2u, 3u) >= vec4<u32>(n);
    let ft = focal_terms(z);
    // (`==` rather than `!=`: an ordered compare is one instruction on x86.)
    let core = select(focal_core(ft, cs.gamma), vec4<f32>(0.0), positive | dead);
    var out: ClassStep;
    out.loss = (core.x + core.y) + (core.z + core.w);
    // Dead code in the forward pass, which never stores it.
    out.grad = cs.coef_neg * focal_grad_core(ft, core, cs.gamma);
    return out;
}

// The largest exponent field (bits 23..30) of z: all ones exactly when some
// component is NaN or ±Inf, the largest value the field can take.
fn exponent_max(z: vec4<f32>) -> u32 {
    let ex = bitcast<vec4<u32>>(z) & vec4<u32>(EXPONENT_BITS);
    return max(max(ex.x, ex.y), max(ex.z, ex.w));
}

@compute @workgroup_size(WG)
fn fused(@builtin(workgroup_id) wg: vec3<u32>, lanes: Lanes) {
    let at = place(wg, lanes);
    let hw = params.level_size;
#ifdef BOXES
    // The position's target, from its tile's list of boxes (background past the
    // level's end), and its count (class chunk 0 only), reduced with the sums.
    let assigned = assign_position(wg.x, at.b, at.pix);
    let counted = select(vec2<f32>(0.0), count_of(assigned), at.chunk == 0u);
#endif
    // {cls, cnt, reg, centerness-weighted reg} (the positives and the centerness
    // sum come from count.wgsl, or, from boxes, ride along as `counted`).
    var acc = vec4<f32>(0.0);
    var flags = 0u;
    if (at.pix < hw) {
        let n_cls = params.classes;
#ifdef BACKWARD
        let scale = image_scale(at.b);
#else
        // A var, not a constant: naga 30 cannot fold its components through the
        // override constants (ExpressionAlreadyInScope); the forward pass never reads
        // the gradient factors anyway.
        var scale = vec4<f32>(0.0);
#endif
        let coef = scale.x;
#ifdef BOXES
        let tcls = assigned.cls;
#else
        let tcls = cls_targets[at.t];
#endif
        // The centerness and box terms first: in the variant from boxes, the
        // assigned box target is then dead before the class loop (fewer live
        // registers there).
        if (at.chunk == 0u) {
            // With checks every element is read once, positive or not; without,
            // only the positives read the centerness logit and the boxes.
#ifdef BOXES
            let here = read_position(assigned, at.bl, at.pix, CHECKS);
#else
            let here = read_position(at.t, at.bl, at.pix, CHECKS);
#endif
            let ct = here.ct;
            let positive = here.positive;
            let x = here.boxes.x;
            let pred = here.boxes.pred;
            let tgt = here.boxes.tgt;
            if (CHECKS) {
                let bad_ct = not_finite(ct) || (ct != -1.0 && (ct < 0.0 || ct > 1.0));
                flags |= select(0u, FLAG_CNT_TARGETS, bad_ct);
                flags |= select(0u, FLAG_CNT_LOGITS, not_finite(x));
                flags |= select(0u, FLAG_REG_PREDS, any_not_finite(pred));
                let bad_rt = any_not_finite(tgt) || (positive && any(tgt < vec4<f32>(0.0)));
                flags |= select(0u, FLAG_REG_TARGETS, bad_rt);
            }
            // The gradients are dead code in the forward pass, which never stores them.
            var g_cnt = 0.0;
            var g_reg = vec4<f32>(0.0);
            if (positive) {
                acc.y = bce(x, ct);
                // Scaled by a power of two for boxes past 2^32 px (1 below).
                let s = box_scale(pred, tgt);
                let ps = pred * s;
                let ts = tgt * s;
                let bt = box_terms(ps, ts);
                acc.z = box_loss(bt);
                acc.w = ct * acc.z;
                g_cnt = scale.y * (sigmoid(x) - ct);
                // Weighted by centerness, each positive's box factor times its target.
                let f_reg = select(scale.z, scale.z * ct, params.ctr_weighted != 0u);
                g_reg = (f_reg * s) * box_grad(ps, ts, bt);
            }
#ifdef BACKWARD
            // Stored once, positive or not (zeros off the positives): one store per
            // element instead of one in each branch.
            store_box_grads(here.at, g_cnt, g_reg);
#endif
        }
        let c0 = at.chunk * params.classes_per_chunk;
        let c1 = min(c0 + params.classes_per_chunk, n_cls);
        // Element ((bl·C + c)·HW + pix) of the level, from the binding's start.
        var idx = params.cls_base + (at.bl * n_cls + c0) * hw + at.pix;
        var cls_sum = 0.0;
        if (CHECKS) {
            let bad_class = not_finite(tcls) || tcls != floor(tcls) || tcls < 0.0 || tcls > f32(n_cls);
            flags |= select(0u, FLAG_CLS_TARGETS, bad_class);
        }
        // The largest exponent field of the logits (CHECKS): all ones exactly when
        // some logit is NaN or ±Inf. One AND and one MAX per element.
        var exp_max = 0u;
        let alpha = params.alpha;
        let gamma = params.gamma;
        let cs = ClassScale(tcls, gamma, (1.0 - alpha) * coef);
        let idx0 = idx;
#ifdef BACKWARD
        // From a logit's element to its gradient's.
        let gshift = grad_shift(params.cls_base, params.grad_cls_base);
#endif
        var c = c0;
        // Four classes per step: SIMD-over-lanes adapters run the four exp/log chains
        // side by side. The last 1..3 classes take a masked step after the loop.
        for (; c + 4u <= c1; c += 4u) {
            let z = vec4<f32>(cls_at(idx), cls_at(idx + hw), cls_at(idx + 2u * hw), cls_at(idx + 3u * hw));
            if (CHECKS) {
                exp_max = max(exp_max, exponent_max(z));
            }
            let out = cls_step(z, c, 4u, cs);
            cls_sum += out.loss;
#ifdef BACKWARD
            let gi = idx + gshift;
            grad_cls[gi] = out.grad.x;
            grad_cls[gi + hw] = out.grad.y;
            grad_cls[gi + 2u * hw] = out.grad.z;
            grad_cls[gi + 3u * hw] = out.grad.w;
#endif
            idx += 4u * hw;
        }
        let n = c1 - c;
        if (n > 0u) {
            var z = vec4<f32>(cls_at(idx), 0.0, 0.0, 0.0);
            if (n > 1u) {
                z.y = cls_at(idx + hw);
            }
            if (n > 2u) {
                z.z = cls_at(idx + 2u * hw);
            }
            if (CHECKS) {
                exp_max = max(exp_max, exponent_max(z));
            }
            let out = cls_step(z, c, n, cs);
            cls_sum += out.loss;
#ifdef BACKWARD
            let gi = idx + gshift;
            grad_cls[gi] = out.grad.x;
            if (n > 1u) {
                grad_cls[gi + hw] = out.grad.y;
            }
            if (n > 2u) {
                grad_cls[gi + 2u * hw] = out.grad.z;
            }
#endif
        }
        // The target class, when it falls in this chunk: its logit again, as a
        // positive (u = -z, weight alpha). A target that is not a whole class number
        // in range matches no class, as with the notebook's float compare.
        var pos_core = 0.0;
        if (tcls >= f32(c0 + 1u) && tcls <= f32(c1) && tcls == floor(tcls)) {
            let ip = idx0 + (u32(tcls) - 1u - c0) * hw;
            // Only the x lane is used: a SIMD-over-lanes compiler drops the others.
            let ft = focal_terms(vec4<f32>(-cls_at(ip), 0.0, 0.0, 0.0));
            let core = focal_core(ft, gamma);
            pos_core = core.x;
#ifdef BACKWARD
            grad_cls[ip + gshift] = -alpha * coef * focal_grad_core(ft, core, gamma).x;
#endif
        }
        cls_sum = (1.0 - alpha) * cls_sum + alpha * pos_core;
        if (CHECKS) {
            flags |= select(0u, FLAG_CLS_LOGITS, exp_max == EXPONENT_BITS);
        }
        acc.x = cls_sum;
    }
#ifdef BOXES
    // The tile's count rides along (sum_counts.wgsl adds the tiles' counts up
    // after this pass where no count ran before it), and the boxes' flags.
    var partial = reduce_workgroup_counted(acc, counted, flags, lanes);
    partial.flags |= gt_flags(at.b);
#else
    let partial = reduce_workgroup(acc, flags, lanes);
#endif
    store_partial(wg, partial, lanes);
}
