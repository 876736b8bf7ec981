// Fused dequantize × matmul against a block-quantized weight W [N, K] (row-major, HF `[out, in]`).
//
//   FORWARD     out[M, N] = a[M, K] · deq(W)ᵀ        (y  = x  · Wᵀ, a = x)
//   INPUT_GRAD  out[M, K] = a[M, N] · deq(W)         (dx = dy · W,  a = dy)
//
// W never exists densely: each workgroup dequantizes the 16 × 64 slice of W it needs into
// workgroup memory, in registers (`deq4` of qdecode.wgsl, appended to this file), right before
// using it. Blocks may straddle rows (bitsandbytes' flat blocks), and the last one may be
// partial.
//
// Template values: INPUT_GRAD (bool), and those of qdecode.wgsl (the packed layout). The loop
// bounds come through `uniform_info` (uniform_info.wgsl, appended).
// info = [M, N, K, then the section offsets of qdecode.wgsl] in u32 words. Requires K % 16 == 0.

@group(0) @binding(0) var<storage, read_write> a: array<f32>;
@group(0) @binding(1) var<storage, read_write> packed: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read_write> info: array<u32>;

const INPUT_GRAD: bool = {{ input_grad }};

const TILE: u32 = 64u;                // output tile edge (rows of a, columns of out)
const TK: u32 = 16u;                  // reduction slice per iteration
const WG: u32 = 16u;                  // workgroup edge; each invocation owns 4 × 4 outputs

// Workgroup tiles as vec4 (8 KiB in all): a[m0 + i, r0 + kk] is component i % 4 of
// tile_a[kk * 16 + i / 4]; b[r0 + kk, c0 + j] is component j % 4 of tile_b[kk * 16 + j / 4].

var<workgroup> tile_a: array<vec4<f32>, 256>;
var<workgroup> tile_b: array<vec4<f32>, 256>;

@compute @workgroup_size(16, 16, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let info_u = uniform_info(t);
    let m = info_u[0];
    let n = info_u[1];
    let k = info_u[2];
    // Reduction length R and output width C: FORWARD reduces over K into N columns,
    // INPUT_GRAD reduces over N into K columns.
    var r_len = k;
    var c_len = n;
    if INPUT_GRAD {
        r_len = n;
        c_len = k;
    }
    let m0 = wg.y * TILE;
    let c0 = wg.x * TILE;

    var acc: array<vec4<f32>, 4>;
    for (var i = 0u; i < 4u; i++) {
        acc[i] = vec4<f32>(0.0);
    }

    for (var r0 = 0u; r0 < r_len; r0 += TK) {
        // a tile: 64 rows × 16 reduction entries, 4 per invocation (row t / 4, entries (t % 4) · 4 ..).
        let ar = t / 4u;
        let ak = (t % 4u) * 4u;
        for (var j = 0u; j < 4u; j++) {
            var v = 0.0;
            if m0 + ar < m && r0 + ak + j < r_len {
                v = a[(m0 + ar) * r_len + r0 + ak + j];
            }
            tile_a[(ak + j) * 16u + ar / 4u][ar % 4u] = v;
        }
        // b tile: 16 reduction entries × 64 columns, as 4 consecutive elements of one W row.
        if INPUT_GRAD {
            // b[r, c] = W[r, c]: row r0 + t / 16, columns c0 + (t % 16) · 4 .. (one vec4).
            let br = t / 16u;
            let bc = (t % 16u) * 4u;
            var w = vec4<f32>(0.0);
            if r0 + br < n && c0 + bc < k {
                w = deq4(r0 + br, c0 + bc, k);
            }
            tile_b[br * 16u + bc / 4u] = w;
        } else {
            // b[r, c] = W[c, r]: row c0 + t / 4, columns r0 + (t % 4) · 4 ..
            let bc = t / 4u;
            let br = (t % 4u) * 4u;
            var w = vec4<f32>(0.0);
            if c0 + bc < n {
                w = deq4(c0 + bc, r0 + br, k);
            }
            for (var j = 0u; j < 4u; j++) {
                tile_b[(br + j) * 16u + bc / 4u][bc % 4u] = w[j];
            }
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let av = tile_a[kk * 16u + lid.y];
            let bv = tile_b[kk * 16u + lid.x];
            acc[0] += av.x * bv;
            acc[1] += av.y * bv;
            acc[2] += av.z * bv;
            acc[3] += av.w * bv;
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < 4u; i++) {
        let row = m0 + lid.y * 4u + i;
        if row < m {
            for (var j = 0u; j < 4u; j++) {
                let col = c0 + lid.x * 4u + j;
                if col < c_len {
                    out[row * c_len + col] = acc[i][j];
                }
            }
        }
    }
}
