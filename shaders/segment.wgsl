// The bindings of one segment of the fused pass (one pyramid level, a run of
// images), shared by fused.wgsl and its memory roofline (roofline.wgsl), which
// must read and write exactly the same buffers; and where a workgroup's partial
// goes. Workgroup x is a tile of WG positions of the level, y a chunk of classes,
// z an image of the segment.
//
//   #ifdef BACKWARD   the positive counts and the three gradients.

@group(0) @binding(0) var<uniform> params: Params;
// Each binding starts at or before (this level, image0); params.*_base say where.
@group(0) @binding(1) var<storage, read> cls_logits: array<f32>;
@group(0) @binding(2) var<storage, read> cnt_logits: array<f32>;
@group(0) @binding(3) var<storage, read> reg_preds: array<f32>;
@group(0) @binding(4) var<storage, read> cls_targets: array<f32>;
@group(0) @binding(5) var<storage, read> cnt_targets: array<f32>;
@group(0) @binding(6) var<storage, read> reg_targets: array<vec4<f32>>;
// [B][partials_per_image] partial sums (w is the positive count) and check flags.
@group(0) @binding(7) var<storage, read_write> partials: array<Partial>;
#ifdef BACKWARD
// Positives per image, counted by count.wgsl before this pass.
@group(0) @binding(8) var<storage, read> num_pos: array<u32>;
// Gradients, bound exactly like the matching inputs.
@group(0) @binding(9) var<storage, read_write> grad_cls: array<f32>;
@group(0) @binding(10) var<storage, read_write> grad_cnt: array<f32>;
@group(0) @binding(11) var<storage, read_write> grad_reg: array<f32>;
#endif

// Stores the workgroup's partial (valid in invocation 0) in its fixed slot:
// [image][partials_per_image], this level's slots from slot_base, tile-major.
fn store_partial(wg: vec3<u32>, partial: Partial, lanes: Lanes) {
    if (lanes.lid == 0u) {
        let b = params.image0 + wg.z;
        partials[b * params.partials_per_image + params.slot_base + wg.x * params.chunks + wg.y] = partial;
    }
}
