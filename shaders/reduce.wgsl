// The workgroup reduction of the fused pass and its roofline: every thread's four
// sums ({cls, cnt, reg, centerness-weighted reg} in the fused pass) and check
// flags become one Partial, in a fixed order, so that a call gives the same bits
// every time. One vec4: on lavapipe a second subgroup sum (a vec2) cost the
// fused pass about 9 % more instructions on the VOC preset, so the positives and
// the centerness sums come from count.wgsl instead.
//
//   #ifdef SUBGROUPS  subgroupAdd/subgroupOr and one shared-memory slot per
//                     subgroup (devices with Features::SUBGROUP; any subgroup
//                     size); otherwise a shared-memory tree.
//   override CHECKS   the flags are reduced too (fused.wgsl sets it with its
//                     input checks); without, they stay 0 at no cost.

override CHECKS: bool = false;

// The invocation's place in its workgroup: the kernels take it as an entry-point
// argument, so that only this file knows which builtins a variant has.
#ifdef SUBGROUPS
struct Lanes {
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(num_subgroups) n_sg: u32,
}
#else
struct Lanes {
    @builtin(local_invocation_index) lid: u32,
}
#endif

var<workgroup> scratch: array<vec4<f32>, WG>;
var<workgroup> flag_scratch: array<u32, WG>;

// The workgroup's partial, valid in invocation 0 (the caller stores it). Call from
// uniform control flow: it holds workgroup barriers.
fn reduce_workgroup(acc: vec4<f32>, flags: u32, lanes: Lanes) -> Partial {
    var out: Partial;
#ifdef SUBGROUPS
    // One sum per subgroup, then the subgroup sums in subgroup order by one
    // invocation.
    let sg_sum = subgroupAdd(acc);
    var sg_flags = 0u;
    if (CHECKS) {
        sg_flags = subgroupOr(flags);
    }
    if (lanes.sg_lane == 0u) {
        scratch[lanes.sg_id] = sg_sum;
        flag_scratch[lanes.sg_id] = sg_flags;
    }
    workgroupBarrier();
    if (lanes.lid == 0u) {
        var total = scratch[0];
        for (var k = 1u; k < lanes.n_sg; k++) {
            total += scratch[k];
        }
        out.sums = total;
        if (CHECKS) {
            var any_flags = 0u;
            for (var k = 0u; k < lanes.n_sg; k++) {
                any_flags |= flag_scratch[k];
            }
            out.flags = any_flags;
        }
    }
#else
    let lid = lanes.lid;
    scratch[lid] = acc;
    if (CHECKS) {
        flag_scratch[lid] = flags;
    }
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            scratch[lid] += scratch[lid + s];
            if (CHECKS) {
                flag_scratch[lid] |= flag_scratch[lid + s];
            }
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        out.sums = scratch[0];
        if (CHECKS) {
            out.flags = flag_scratch[0];
        }
    }
#endif
    return out;
}

// reduce_workgroup with a second per-invocation value, `counts` (the fused pass
// from boxes: positives and centerness-target sum), summed in a fixed order into
// the partial's num_pos and ctr, under the same barrier: with subgroups one
// subgroup sum more, without them invocation 0 adds the WG values in order. Call
// from uniform control flow.
var<workgroup> count_scratch: array<vec2<f32>, WG>;

fn reduce_workgroup_counted(acc: vec4<f32>, counts: vec2<f32>, flags: u32, lanes: Lanes) -> Partial {
#ifdef SUBGROUPS
    let sg_counts = subgroupAdd(counts);
    if (lanes.sg_lane == 0u) {
        count_scratch[lanes.sg_id] = sg_counts;
    }
    let slots = lanes.n_sg;
#else
    count_scratch[lanes.lid] = counts;
    let slots = WG;
#endif
    // Its barrier orders the writes above before the reads below.
    var out = reduce_workgroup(acc, flags, lanes);
    if (lanes.lid == 0u) {
        var total = count_scratch[0];
        for (var k = 1u; k < slots; k++) {
            total += count_scratch[k];
        }
        out.num_pos = total.x;
        out.ctr = total.y;
    }
    return out;
}
