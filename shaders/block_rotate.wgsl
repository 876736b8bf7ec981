// Block-diagonal rotation of activations (OFT v2, peft's input-centric form) for every block of a
// layer in one launch. x is [M, nb·b] row-major; R is [rows, b, b] with rows = nb, or rows = 1
// when all blocks share one rotation (peft's block_share).
//
//   MODE 0  out[m, k·b + j] = Σ_i a[m, k·b + i] · R[k'][i][j]            y  = x_blk · R       (a = x)
//   MODE 1  out[m, k·b + i] = Σ_j a[m, k·b + j] · R[k'][i][j]            dx = dy_blk · Rᵀ     (a = dy)
//   MODE 2  out[s, k', i, j] = Σ_{(m, k) in split s} a[m, k·b + i] · g[m, k·b + j]
//                                                                        dR = Σ x_blkᵀ · dy_blk (a = x, g = dy)
//
// with k' = k, or 0 when shared. MODE 2 writes one partial dR per split s of the reduction over
// (m, k) (length M, or M·nb when shared); the host sums the splits.
//
// Tiling: each workgroup (256 invocations) owns an OR × OC output tile, each invocation an MT × MT
// micro-tile; the reduction runs in TK-deep slices staged in workgroup memory (2 × 4 KiB).
//   MODES 0, 1: OC = TC columns of one block (TC = 16, 32 or 64, the smallest ≥ min(b, 64)),
//               OR = 4096 / OC rows of x, TK = OC / 4, MT = 4; grid (⌈b / OC⌉, row tiles, nb),
//               row tiles stride by the grid's height so any M fits one launch.
//   MODE 2:     OR = OC = TC (an i × j tile of dR), TK = 1024 / TC, MT = TC / 16;
//               grid (i tiles · j tiles, splits, rows).
//
// Template values: MODE, OR, OC, TK, MT (1, 2 or 4). info = [M, b, nb, shared (0/1), split length],
// read through `uniform_info` (uniform_info.wgsl, appended).

@group(0) @binding(0) var<storage, read_write> a: array<f32>;
@group(0) @binding(1) var<storage, read_write> g: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read_write> info: array<u32>;

const MODE: u32 = {{ mode }}u;
const OR: u32 = {{ rows }}u;
const OC: u32 = {{ cols }}u;
const TK: u32 = {{ tk }}u;
const MT: u32 = {{ mt }}u;
const TX: u32 = OC / MT;      // invocations along a tile row
const WG: u32 = 256u;

var<workgroup> tile_a: array<f32, 1024>;  // [TK][OR]
var<workgroup> tile_b: array<f32, 1024>;  // [TK][OC]
var<private> acc: array<vec4<f32>, 4>;  // acc[i][j], i, j < MT ≤ 4

fn clear() {
    for (var i = 0u; i < 4u; i++) {
        acc[i] = vec4<f32>(0.0);
    }
}

// acc += tile_a[.., rows of this invocation]ᵀ · tile_b[.., columns of this invocation].
fn accumulate(tx: u32, ty: u32) {
    for (var kk = 0u; kk < TK; kk++) {
        let ra = kk * OR + ty * MT;
        let rb = kk * OC + tx * MT;
        if MT == 4u {
            let bv = vec4<f32>(tile_b[rb], tile_b[rb + 1u], tile_b[rb + 2u], tile_b[rb + 3u]);
            acc[0] = fma(vec4<f32>(tile_a[ra]), bv, acc[0]);
            acc[1] = fma(vec4<f32>(tile_a[ra + 1u]), bv, acc[1]);
            acc[2] = fma(vec4<f32>(tile_a[ra + 2u]), bv, acc[2]);
            acc[3] = fma(vec4<f32>(tile_a[ra + 3u]), bv, acc[3]);
        } else if MT == 2u {
            let bv = vec4<f32>(tile_b[rb], tile_b[rb + 1u], 0.0, 0.0);
            acc[0] = fma(vec4<f32>(tile_a[ra]), bv, acc[0]);
            acc[1] = fma(vec4<f32>(tile_a[ra + 1u]), bv, acc[1]);
        } else {
            acc[0].x = fma(tile_a[ra], tile_b[rb], acc[0].x);
        }
    }
}

// MODES 0 and 1: rows m0 .. m0 + OR, columns c0 .. c0 + OC of block k.
fn rotate(wg: vec3<u32>, nwg: vec3<u32>, t: u32, info_u: array<u32, 5>) {
    let m = info_u[0];
    let bs = info_u[1];
    let width = info_u[2] * bs;
    let k = wg.z;
    var kr = k;
    if info_u[3] == 1u {
        kr = 0u;
    }
    let c0 = wg.x * OC;
    let tx = t % TX;
    let ty = t / TX;
    for (var m0 = wg.y * OR; m0 < m; m0 += nwg.y * OR) {
        clear();
        for (var r0 = 0u; r0 < bs; r0 += TK) {
            for (var e = t; e < TK * OR; e += WG) {
                let row = e / TK;
                let kk = e % TK;
                var v = 0.0;
                if m0 + row < m && r0 + kk < bs {
                    v = a[(m0 + row) * width + k * bs + r0 + kk];
                }
                tile_a[kk * OR + row] = v;
            }
            for (var e = t; e < TK * OC; e += WG) {
                let kk = e / OC;
                let c = e % OC;
                var v = 0.0;
                if r0 + kk < bs && c0 + c < bs {
                    if MODE == 0u {
                        v = g[(kr * bs + r0 + kk) * bs + c0 + c];
                    } else {
                        v = g[(kr * bs + c0 + c) * bs + r0 + kk];
                    }
                }
                tile_b[kk * OC + c] = v;
            }
            workgroupBarrier();
            accumulate(tx, ty);
            workgroupBarrier();
        }
        for (var i = 0u; i < MT; i++) {
            let row = m0 + ty * MT + i;
            for (var j = 0u; j < MT; j++) {
                let col = c0 + tx * MT + j;
                if row < m && col < bs {
                    out[row * width + k * bs + col] = acc[i][j];
                }
            }
        }
    }
}

// MODE 2: the (i0.., j0..) tile of split wg.y's partial dR for rotation wg.z.
fn weight_grad(wg: vec3<u32>, nwg: vec3<u32>, t: u32, info_u: array<u32, 5>) {
    let m = info_u[0];
    let bs = info_u[1];
    let nb = info_u[2];
    let width = nb * bs;
    var per = 1u;          // blocks per rotation
    if info_u[3] == 1u {
        per = nb;
    }
    let kr = wg.z;
    let tiles_j = (bs + OC - 1u) / OC;
    let i0 = (wg.x / tiles_j) * OC;
    let j0 = (wg.x % tiles_j) * OC;
    let s0 = wg.y * info_u[4];
    let s1 = min(s0 + info_u[4], m * per);
    let tx = t % TX;
    let ty = t / TX;
    clear();
    for (var r0 = s0; r0 < s1; r0 += TK) {
        for (var e = t; e < TK * OC; e += WG) {
            let kk = e / OC;
            let c = e % OC;
            let r = r0 + kk;
            var xv = 0.0;
            var gv = 0.0;
            if r < s1 {
                // reduction entry r = (row r / per, block kr · per + r % per)
                let base = (r / per) * width + (kr * per + r % per) * bs;
                if i0 + c < bs {
                    xv = a[base + i0 + c];
                }
                if j0 + c < bs {
                    gv = g[base + j0 + c];
                }
            }
            tile_a[kk * OR + c] = xv;
            tile_b[kk * OC + c] = gv;
        }
        workgroupBarrier();
        accumulate(tx, ty);
        workgroupBarrier();
    }
    let off = (wg.y * nwg.z + kr) * bs * bs;
    for (var i = 0u; i < MT; i++) {
        let row = i0 + ty * MT + i;
        for (var j = 0u; j < MT; j++) {
            let col = j0 + tx * MT + j;
            if row < bs && col < bs {
                out[off + row * bs + col] = acc[i][j];
            }
        }
    }
}

@compute @workgroup_size(256, 1, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let info_u = uniform_info(t);
    if MODE == 2u {
        weight_grad(wg, nwg, t, info_u);
    } else {
        rotate(wg, nwg, t, info_u);
    }
}
