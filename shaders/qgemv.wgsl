// Fused dequantize × matrix-vector product for decoding, where x has few rows (M ≤ 8):
//
//   out[M, N] = a[M, K] · deq(W)ᵀ
//
// The tiled kernel (qmatmul.wgsl) spends its 64-row tiles on padding here. Instead one
// workgroup of 64 invocations owns 4 output columns: invocation t accumulates the K-slices
// 4t, 4t + 256, ... of every row of a against the 4 rows of W, dequantized in registers
// (`deq4` of qdecode.wgsl, appended), so W is read once, in order, without workgroup tiles.
// The 64 partial dot products are then summed by one of two entry points, appended as well:
// qgemv_subgroup.wgsl (subgroupAdd, on devices with the `subgroups` feature) or
// qgemv_workgroup.wgsl (a tree in workgroup memory, everywhere).
//
// info = [M, N, K, then the section offsets of qdecode.wgsl] in u32 words. Requires K % 16 == 0.

@group(0) @binding(0) var<storage, read_write> a: array<f32>;
@group(0) @binding(1) var<storage, read_write> packed: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read_write> info: array<u32>;

const WG: u32 = 64u;      // invocations per workgroup
const COLS: u32 = 4u;     // output columns per workgroup
const MAXM: u32 = 8u;     // rows of a at most

// Invocation t's share of out[i, c0 .. c0 + 4] for every row i (zero for i ≥ M).
fn partial_dots(t: u32, c0: u32) -> array<vec4<f32>, 8> {
    let m = info[0];
    let n = info[1];
    let k = info[2];
    var acc: array<vec4<f32>, 8>;
    for (var i = 0u; i < MAXM; i++) {
        acc[i] = vec4<f32>(0.0);
    }
    for (var kk = t * 4u; kk < k; kk += WG * 4u) {
        var w: array<vec4<f32>, 4>;
        for (var j = 0u; j < COLS; j++) {
            w[j] = vec4<f32>(0.0);
            if c0 + j < n {
                w[j] = deq4(c0 + j, kk, k);
            }
        }
        for (var i = 0u; i < MAXM; i++) {
            if i < m {
                let at = i * k + kk;
                let x = vec4<f32>(a[at], a[at + 1u], a[at + 2u], a[at + 3u]);
                acc[i] += vec4<f32>(dot(x, w[0]), dot(x, w[1]), dot(x, w[2]), dot(x, w[3]));
            }
        }
    }
    return acc;
}

// out[i, c0 .. c0 + 4] = v (the columns that exist).
fn write_row(i: u32, c0: u32, v: vec4<f32>) {
    let n = info[1];
    for (var j = 0u; j < COLS; j++) {
        if c0 + j < n {
            out[i * n + c0 + j] = v[j];
        }
    }
}
