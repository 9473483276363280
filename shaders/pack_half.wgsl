// Gradients in the heads' half dtype (docs/contract.md §9): one run of a head's
// f32 gradients (what the fused pass wrote, for one segment) rounded to nearest
// even and written as 2-byte elements into the caller's buffer. One invocation
// owns one u32 word of the output, so a word shared with the run's neighbour (a
// run that starts or ends at an odd element) is read, its other half kept, and
// written back whole: no two invocations, and no two dispatches at once, write
// one word. The rounding is integer arithmetic on the bits, the same on every
// device (a value past the format's range becomes ±Inf, as in PyTorch's cast).
//
// Params: pack_src_base (f32 elements from the start of `src`), pack_dst_base
// (2-byte elements from the start of `dst`), pack_count (elements), and
// HEADS_BF16 (override) for the format.

override HEADS_BF16: bool = false;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;

// f32 → f16 bits, round to nearest even (finite input).
fn f16_bits(x: f32) -> u32 {
    let u = bitcast<u32>(x);
    let sign = (u >> 16u) & 0x8000u;
    let a = u & 0x7fffffffu;
    if (a >= 0x47800000u) {
        // 2^16 and above: past the largest finite f16 after rounding.
        return sign | 0x7c00u;
    }
    if (a >= 0x38800000u) {
        // Normal: rebias the exponent, round the 13 dropped bits (a carry moves
        // into the exponent, and to Inf past 65504).
        let r = a - 0x38000000u + 0xfffu + ((a >> 13u) & 1u);
        return sign | (r >> 13u);
    }
    // Subnormal or zero: the value in units of 2^-24, rounded to nearest even.
    let e = a >> 23u;
    if (e < 102u) {
        // Below 2^-25: rounds to zero.
        return sign;
    }
    let m = (a & 0x7fffffu) | 0x800000u;
    let s = 126u - e;
    let q = m >> s;
    let rem = m & ((1u << s) - 1u);
    let half_ulp = 1u << (s - 1u);
    let up = rem > half_ulp || (rem == half_ulp && (q & 1u) == 1u);
    return sign | (q + select(0u, 1u, up));
}

// f32 → bf16 bits, round to nearest even (finite input).
fn bf16_bits(x: f32) -> u32 {
    let u = bitcast<u32>(x);
    return (u + 0x7fffu + ((u >> 16u) & 1u)) >> 16u;
}

fn half_bits(x: f32) -> u32 {
    if (HEADS_BF16) {
        return bf16_bits(x);
    }
    return f16_bits(x);
}

@compute @workgroup_size(WG)
fn pack_half(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>) {
    let first = params.pack_dst_base >> 1u;
    let word = first + id.x + id.y * n.x * WG;
    let end = params.pack_dst_base + params.pack_count;
    if (2u * word >= end) {
        return;
    }
    var out = dst[word];
    for (var k = 0u; k < 2u; k++) {
        let e = 2u * word + k;
        if (e >= params.pack_dst_base && e < end) {
            let h = half_bits(src[params.pack_src_base + e - params.pack_dst_base]);
            let shift = 16u * k;
            out = (out & ~(0xffffu << shift)) | (h << shift);
        }
    }
    dst[word] = out;
}
