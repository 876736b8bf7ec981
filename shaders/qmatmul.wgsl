// Fused dequantize × matmul against a block-quantized weight W [N, K] (row-major, HF `[out, in]`).
//
//   FORWARD     out[M, N] = a[M, K] · deq(W)ᵀ        (y  = x  · Wᵀ, a = x)
//   INPUT_GRAD  out[M, K] = a[M, N] · deq(W)         (dx = dy · W,  a = dy)
//
// W never exists densely: each workgroup dequantizes the 16 × 64 slice of W it needs into
// workgroup memory, in registers, right before using it.
//
// `packed` holds, as u32 words: the codes (flat row-major over W, element i at bits
// (i % CPW) · BITS of word i / CPW), then one f32 scale per block of BLOCK elements (bit-cast),
// then, for formats with an offset (Q4_1), one f32 min per block. A value is
//   deq(i) = decode(code(i)) · scale[i / BLOCK] + min[i / BLOCK]
// which is bitsandbytes' NF4 (`code[c] · absmax`) and ggml's Q4_0 (`(c - 8) · d`), Q4_1
// (`c · d + m`) and Q8_0 (`i8(c) · d`).
//
// Template values: FORMAT (0 NF4, 1 Q4_0, 2 Q4_1, 3 Q8_0), BITS (4 or 8), BLOCK (elements per
// scale), INPUT_GRAD (bool). info = [M, N, K, scales offset, mins offset] in u32 words.
// Requires K % 16 == 0 and BLOCK % 4 == 0 (checked on the host): every aligned group of 4
// values then lies in one block and one word. Blocks may straddle rows (bitsandbytes' flat
// blocks), and the last one may be partial.

@group(0) @binding(0) var<storage, read_write> a: array<f32>;
@group(0) @binding(1) var<storage, read_write> packed: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read_write> info: array<u32>;

const FORMAT: u32 = {{ format }}u;
const BITS: u32 = {{ bits }}u;
const BLOCK: u32 = {{ block }}u;
const INPUT_GRAD: bool = {{ input_grad }};

const CPW: u32 = 32u / BITS;          // codes per u32 word
const MASK: u32 = (1u << BITS) - 1u;
const TILE: u32 = 64u;                // output tile edge (rows of a, columns of out)
const TK: u32 = 16u;                  // reduction slice per iteration
const WG: u32 = 16u;                  // workgroup edge; each invocation owns 4 × 4 outputs

// bitsandbytes' NF4 code table (get_4bit_type("nf4")), exact fp32 values.
var<private> NF4: array<f32, 16> = array<f32, 16>(
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
);

// Workgroup tiles as vec4 (8 KiB in all): a[m0 + i, r0 + kk] is component i % 4 of
// tile_a[kk * 16 + i / 4]; b[r0 + kk, c0 + j] is component j % 4 of tile_b[kk * 16 + j / 4].
var<workgroup> tile_a: array<vec4<f32>, 256>;
var<workgroup> tile_b: array<vec4<f32>, 256>;

fn decode(c: u32) -> f32 {
    if FORMAT == 0u {
        return NF4[c];
    } else if FORMAT == 1u {
        return f32(i32(c) - 8);
    } else if FORMAT == 3u {
        return f32(bitcast<i32>(c << 24u) >> 24u);
    }
    return f32(c);
}

// The four dequantized values W[row, col .. col + 4] (col % 4 == 0: one block, one word).
fn deq4(row: u32, col: u32, k: u32) -> vec4<f32> {
    let i = row * k + col;
    let word = packed[i / CPW];
    let shift = (i % CPW) * BITS;
    let blk = i / BLOCK;
    let scale = bitcast<f32>(packed[info[3] + blk]);
    var lo = 0.0;
    if FORMAT == 2u {
        lo = bitcast<f32>(packed[info[4] + blk]);
    }
    return vec4<f32>(
        decode((word >> shift) & MASK),
        decode((word >> (shift + BITS)) & MASK),
        decode((word >> (shift + 2u * BITS)) & MASK),
        decode((word >> (shift + 3u * BITS)) & MASK),
    ) * scale + vec4<f32>(lo);
}

@compute @workgroup_size(16, 16, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let m = info[0];
    let n = info[1];
    let k = info[2];
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
