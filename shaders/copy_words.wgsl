// Copies 32-bit words from a read-only storage binding to a writable one, as raw
// bits (u32, never f32, so NaN and Inf patterns pass untouched). Used only after the
// on-device checks flagged an input, to bring it to the host and find the first bad
// element. Stands alone: it does not include common.wgsl.

@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;

@compute @workgroup_size(256)
fn copy_words(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>) {
    let i = id.x + id.y * n.x * 256u;
    if (i < arrayLength(&src) && i < arrayLength(&dst)) {
        dst[i] = src[i];
    }
}
