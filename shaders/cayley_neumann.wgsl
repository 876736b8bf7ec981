// OFT rotations from peft's skew vectors by the truncated Neumann series, one workgroup per block.
// v [nb, B(B-1)/2] holds each skew matrix's strict upper triangle row-major (triu_indices order):
// Q[p][q] = v[tri(p, q)], Q[q][p] = -v[tri(p, q)] for p < q.
//
//   MODE 0  out = R [nb, B, B],  R = I + Σ_{k=1..K} c_k Q^k
//   MODE 1  out = dL/dv [nb, B(B-1)/2] given g = dL/dR [nb, B, B]:
//           dQ = Σ_k c_k S_k with S_k = Σ_{j<k} Aʲ G A^{k-1-j}, A = Qᵀ, computed as
//           S_1 = G, S_{k+1} = A·S_k + G·A^k; then dv[tri(p, q)] = dQ[p][q] - dQ[q][p].
//
// c_k = 2 for k < K and c_K = LAST: peft's series for n terms is K = 0 (n ≤ 1), K = 1 with
// LAST = 2 (n = 2), else K = max(2, n - 2) + 1 with LAST = 1.
//
// Each invocation owns the matrix elements t, t + 256, ... in registers; a product X·Y reads X
// from one B × B workgroup matrix (B ≤ 64: at most 16 KiB) and the Q factor from a dense copy in
// workgroup memory when both fit (B ≤ 45), else straight from v.
// MODE 0 does not read g (the host binds a one-word placeholder there).
//
// Template values: MODE, B, K, LAST, WN.

@group(0) @binding(0) var<storage, read_write> v: array<f32>;
@group(0) @binding(1) var<storage, read_write> g: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

const MODE: u32 = {{ mode }}u;
const B: u32 = {{ b }}u;
const K: u32 = {{ k }}u;
const LAST: f32 = {{ last }};
const WN: u32 = {{ wn }}u;       // 2 B² when a dense copy of Q fits beside the work matrix, else B²
const DENSE_Q: bool = WN == 2u * BB;

const BB: u32 = B * B;
const NV: u32 = B * (B - 1u) / 2u;
const WG: u32 = 256u;
const PER: u32 = (BB + WG - 1u) / WG;  // elements per invocation

// The work matrix at [0, B²), then (DENSE_Q: 2 B² floats ≤ 16 KiB, B ≤ 45) Q at [B², 2 B²).
var<workgroup> buf: array<f32, WN>;

// Position of (p, q), p < q, in the strict upper triangle.
fn tri(p: u32, q: u32) -> u32 {
    return p * (2u * B - p - 1u) / 2u + q - p - 1u;
}

// Q[p][q] of the block whose vector starts at `base`.
fn qv(base: u32, p: u32, q: u32) -> f32 {
    if p < q {
        return v[base + tri(p, q)];
    }
    if p > q {
        return -v[base + tri(q, p)];
    }
    return 0.0;
}

// Q[p][q]: from the dense copy when it exists, else from v.
fn qm(base: u32, p: u32, q: u32) -> f32 {
    if DENSE_Q {
        return buf[BB + p * B + q];
    }
    return qv(base, p, q);
}

// Fills the dense copy of Q (when it exists) for the block whose vector starts at `base`.
fn load_q(base: u32, t: u32) {
    if DENSE_Q {
        for (var e = t; e < BB; e += WG) {
            buf[BB + e] = qv(base, e / B, e % B);
        }
        workgroupBarrier();
    }
}

fn coef(k: u32) -> f32 {
    if k == K {
        return LAST;
    }
    return 2.0;
}

fn forward(blk: u32, t: u32) {
    let base = blk * NV;
    load_q(base, t);
    var pw: array<f32, PER>;   // Q^k
    var r: array<f32, PER>;    // R
    for (var u = 0u; u < PER; u++) {
        let e = t + u * WG;
        pw[u] = 0.0;
        r[u] = 0.0;
        if e < BB {
            let p = e / B;
            let q = e % B;
            pw[u] = qv(base, p, q);
            if p == q {
                r[u] = 1.0;
            }
            if K >= 1u {
                r[u] += coef(1u) * pw[u];
            }
        }
    }
    for (var k = 2u; k <= K; k++) {
        for (var u = 0u; u < PER; u++) {
            let e = t + u * WG;
            if e < BB {
                buf[e] = pw[u];
            }
        }
        workgroupBarrier();
        for (var u = 0u; u < PER; u++) {
            let e = t + u * WG;
            if e < BB {
                let p = e / B;
                let q = e % B;
                var s = 0.0;
                for (var j = 0u; j < B; j++) {
                    s = fma(buf[p * B + j], qm(base, j, q), s);
                }
                pw[u] = s;
                r[u] += coef(k) * s;
            }
        }
        workgroupBarrier();
    }
    for (var u = 0u; u < PER; u++) {
        let e = t + u * WG;
        if e < BB {
            out[blk * BB + e] = r[u];
        }
    }
}

fn backward(blk: u32, t: u32) {
    let base = blk * NV;
    load_q(base, t);
    var s: array<f32, PER>;    // S_k
    var pw: array<f32, PER>;   // A^k
    var d: array<f32, PER>;    // dL/dQ
    for (var u = 0u; u < PER; u++) {
        let e = t + u * WG;
        s[u] = 0.0;
        pw[u] = 0.0;
        d[u] = 0.0;
        if e < BB {
            s[u] = g[blk * BB + e];
            pw[u] = qv(base, e % B, e / B);
        }
    }
    for (var k = 1u; k <= K; k++) {
        for (var u = 0u; u < PER; u++) {
            d[u] += coef(k) * s[u];
        }
        if k == K {
            break;
        }
        // S ← A·S + G·A^k, then A^k ← A^k·A.
        for (var u = 0u; u < PER; u++) {
            let e = t + u * WG;
            if e < BB {
                buf[e] = s[u];
            }
        }
        workgroupBarrier();
        for (var u = 0u; u < PER; u++) {
            let e = t + u * WG;
            if e < BB {
                let p = e / B;
                let q = e % B;
                var acc = 0.0;
                for (var j = 0u; j < B; j++) {
                    acc = fma(qm(base, j, p), buf[j * B + q], acc);
                }
                s[u] = acc;
            }
        }
        workgroupBarrier();
        for (var u = 0u; u < PER; u++) {
            let e = t + u * WG;
            if e < BB {
                buf[e] = pw[u];
            }
        }
        workgroupBarrier();
        for (var u = 0u; u < PER; u++) {
            let e = t + u * WG;
            if e < BB {
                let p = e / B;
                let q = e % B;
                var ga = 0.0;
                var aa = 0.0;
                for (var j = 0u; j < B; j++) {
                    ga = fma(g[blk * BB + p * B + j], buf[j * B + q], ga);
                    aa = fma(buf[p * B + j], qm(base, q, j), aa);
                }
                s[u] += ga;
                pw[u] = aa;
            }
        }
        workgroupBarrier();
    }
    for (var u = 0u; u < PER; u++) {
        let e = t + u * WG;
        if e < BB {
            buf[e] = d[u];
        }
    }
    workgroupBarrier();
    for (var u = 0u; u < PER; u++) {
        let e = t + u * WG;
        if e < BB {
            let p = e / B;
            let q = e % B;
            if p < q {
                out[base + tri(p, q)] = buf[e] - buf[q * B + p];
            }
        }
    }
}

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    if MODE == 0u {
        forward(wg.x, t);
    } else {
        backward(wg.x, t);
    }
}
