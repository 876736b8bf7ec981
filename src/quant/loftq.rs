//! LoftQ initialisation (peft 0.21.2 `peft.utils.loftq_utils.loftq_init`, `num_bits = 4`): the
//! NF4-quantized base `Q` and a rank-r LoRA pair chosen so that `Q + B·A ≈ W`.
//!
//! peft's loop, reproduced step by step (fp32 where torch computes in fp32):
//!
//! ```text
//! res = W
//! repeat T times:
//!     Q   = dequant(quant_nf4(res))        # bitsandbytes NF4, blocksize 64, no double quant
//!     res = W - Q
//!     U, S, Vh = svd(res)
//!     L = U[:, :r] · sqrt(S[:r]);  R = sqrt(S[:r]) · Vh[:r]
//!     res = W - L·R                        # (skipped after the last round)
//! return Q, A = R [r, in], B = L [out, r]
//! ```
//!
//! So from the second round on, what gets quantized is `W - B·A`, not `W`. peft writes `A` and `B`
//! as they are: `W ≈ Q + B·A` only when the LoRA scale `lora_alpha / r` is 1. The caller decides
//! what to do for other scales (wgtune divides `B` by the scale, see `app::train`).
//!
//! **SVD.** Our own, in f64, no dependency: the eigen-decomposition of the Gram matrix of the
//! smaller side (`resᵀ·res` or `res·resᵀ`, at most 576 x 576 for SmolLM2) by Householder
//! tridiagonalisation and implicit QL (EISPACK `tred2` / `tql2`, as in JAMA), then the other
//! side's singular vectors as `res·v / σ`. This costs `O(m·n²)` for the Gram matrix plus about
//! `6·n³` for the eigenvectors, a few times less than one-sided Jacobi's repeated sweeps, and
//! keeps the crate free of LAPACK and of a linear-algebra crate's compile time. Squaring the
//! matrix costs precision only for singular values below about `1e-8·σ₁`; LoftQ keeps the top
//! `r`, which f64 resolves far better than torch's own fp32 SVD. Only `B·A` is defined (singular
//! vector signs are arbitrary), and that is what the tests compare with peft.

use super::nf4::{Nf4Tensor, dequantize_nf4, quantize_nf4_shaped};

/// NF4 block size LoftQ uses (bitsandbytes' `Params4bit` default).
pub const LOFTQ_BLOCKSIZE: usize = 64;

/// The result of [`loftq_init`]: the quantized base and the LoRA pair.
#[derive(Debug, Clone, PartialEq)]
pub struct LoftqInit {
    /// The NF4 base `Q` (shape `[out, in]`, blocksize 64), from the last round.
    pub q: Nf4Tensor,
    /// `lora_A = sqrt(S_r)·Vh_r`, `[r, in]` row-major.
    pub lora_a: Vec<f32>,
    /// `lora_B = U_r·sqrt(S_r)`, `[out, r]` row-major.
    pub lora_b: Vec<f32>,
    /// The rank r.
    pub rank: usize,
}

/// A rank-r truncated SVD `x ≈ U·diag(s)·Vt`, singular values descending.
#[derive(Debug, Clone, PartialEq)]
pub struct TruncatedSvd {
    /// Left singular vectors as columns, `[m, r]` row-major.
    pub u: Vec<f64>,
    /// The r largest singular values, descending.
    pub s: Vec<f64>,
    /// Right singular vectors as rows, `[r, n]` row-major.
    pub vt: Vec<f64>,
}

/// LoftQ for one linear weight `[out_f, in_f]` (row-major, as in an HF checkpoint): `iters`
/// rounds of NF4 quantization and rank-`rank` SVD of the residual, exactly as peft's
/// `loftq_init(weight, num_bits=4, reduced_rank=rank, num_iter=iters)`.
pub fn loftq_init(
    weight: &[f32],
    out_f: usize,
    in_f: usize,
    rank: usize,
    iters: usize,
) -> Result<LoftqInit, String> {
    if out_f.checked_mul(in_f) != Some(weight.len()) {
        return Err(format!(
            "LoftQ: weight has {} values, not {out_f} x {in_f}",
            weight.len()
        ));
    }
    if iters == 0 {
        return Err("LoftQ: the number of iterations must be at least 1".into());
    }
    if rank == 0 || rank > out_f.min(in_f) {
        return Err(format!(
            "LoftQ: rank {rank} must be between 1 and min(out, in) = {}",
            out_f.min(in_f)
        ));
    }
    if weight.iter().any(|x| !x.is_finite()) {
        return Err("LoftQ: the weight holds a NaN or infinite value".into());
    }
    let shape = [out_f, in_f];
    let mut res = weight.to_vec();
    let mut round = 0;
    loop {
        let q = quantize_nf4_shaped(&res, &shape, LOFTQ_BLOCKSIZE).map_err(|e| e.to_string())?;
        let deq = dequantize_nf4(&q).map_err(|e| e.to_string())?;
        for ((r, &w), &d) in res.iter_mut().zip(weight).zip(&deq) {
            *r = w - d;
        }
        let svd = truncated_svd(&res, out_f, in_f, rank)?;
        // L = U_r sqrt(S_r) [out, r]; R = sqrt(S_r) Vh_r [r, in], rounded to fp32 as torch holds them.
        let roots: Vec<f64> = svd.s.iter().map(|s| s.sqrt()).collect();
        let lora_b: Vec<f32> = (0..out_f * rank)
            .map(|idx| (svd.u[idx] * roots[idx % rank]) as f32)
            .collect();
        let lora_a: Vec<f32> = (0..rank * in_f)
            .map(|idx| (svd.vt[idx] * roots[idx / in_f]) as f32)
            .collect();
        round += 1;
        if round == iters {
            return Ok(LoftqInit {
                q,
                lora_a,
                lora_b,
                rank,
            });
        }
        let lr = low_rank_product(&lora_b, &lora_a, out_f, rank, in_f);
        for ((r, &w), &p) in res.iter_mut().zip(weight).zip(&lr) {
            *r = w - p;
        }
    }
}

/// `B·A` (`[out, r]` times `[r, in]`) in f64, rounded to f32.
pub fn low_rank_product(b: &[f32], a: &[f32], out_f: usize, rank: usize, in_f: usize) -> Vec<f32> {
    let mut out = vec![0f64; out_f * in_f];
    for (i, row) in out.chunks_mut(in_f.max(1)).enumerate().take(out_f) {
        for k in 0..rank {
            let bik = b[i * rank + k] as f64;
            for (o, &akj) in row.iter_mut().zip(&a[k * in_f..(k + 1) * in_f]) {
                *o += bik * akj as f64;
            }
        }
    }
    out.into_iter().map(|x| x as f32).collect()
}

/// `‖W − (deq(Q) + scale·B·A)‖_F / ‖W‖_F` (with `scale = 0`: plain quantization error).
pub fn relative_error(weight: &[f32], init: &LoftqInit, scale: f64) -> Result<f64, String> {
    let [out_f, in_f] = match init.q.shape[..] {
        [o, i] => [o, i],
        _ => return Err("LoftQ: Q is not a matrix".into()),
    };
    let deq = dequantize_nf4(&init.q).map_err(|e| e.to_string())?;
    let ba = low_rank_product(&init.lora_b, &init.lora_a, out_f, init.rank, in_f);
    let (mut num, mut den) = (0f64, 0f64);
    for ((&w, &d), &p) in weight.iter().zip(&deq).zip(&ba) {
        let e = w as f64 - d as f64 - scale * p as f64;
        num += e * e;
        den += (w as f64) * (w as f64);
    }
    Ok(if den > 0.0 {
        (num / den).sqrt()
    } else {
        num.sqrt()
    })
}

/// The `r` largest singular triplets of the row-major `[m, n]` matrix `x` (see the module docs for
/// the method). A singular value below `1e-12·σ₁` is reported as 0 with zero singular vectors.
pub fn truncated_svd(x: &[f32], m: usize, n: usize, r: usize) -> Result<TruncatedSvd, String> {
    if m.checked_mul(n) != Some(x.len()) || r > m.min(n) {
        return Err(format!(
            "SVD: {} values for a {m} x {n} matrix, rank {r}",
            x.len()
        ));
    }
    // Work on the Gram matrix of the smaller side: k x k with k = min(m, n).
    let tall = n <= m;
    let k = m.min(n);
    let mut g = vec![0f64; k * k];
    if tall {
        // G = Xᵀ X (n x n), accumulated row by row (upper triangle).
        let mut row = vec![0f64; n];
        for i in 0..m {
            for (d, &s) in row.iter_mut().zip(&x[i * n..(i + 1) * n]) {
                *d = s as f64;
            }
            for j in 0..n {
                let xj = row[j];
                if xj == 0.0 {
                    continue;
                }
                for (gv, &xk) in g[j * n + j..(j + 1) * n].iter_mut().zip(&row[j..]) {
                    *gv += xj * xk;
                }
            }
        }
    } else {
        // G = X Xᵀ (m x m): dot products of rows.
        for i in 0..m {
            let ri = &x[i * n..(i + 1) * n];
            for j in i..m {
                let rj = &x[j * n..(j + 1) * n];
                g[i * m + j] = ri.iter().zip(rj).map(|(&a, &b)| a as f64 * b as f64).sum();
            }
        }
    }
    for i in 0..k {
        for j in 0..i {
            g[i * k + j] = g[j * k + i];
        }
    }
    let (vals, vecs) = symmetric_eigen(g, k)?;
    // Indices of the r largest eigenvalues, descending (ties: lower index first).
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&a, &b| vals[b].total_cmp(&vals[a]).then(a.cmp(&b)));
    let top = order.first().map_or(0.0, |&i| vals[i].max(0.0).sqrt());
    let mut s = Vec::with_capacity(r);
    let mut u = vec![0f64; m * r];
    let mut vt = vec![0f64; r * n];
    for (c, &idx) in order.iter().take(r).enumerate() {
        let mut sigma = vals[idx].max(0.0).sqrt();
        // Below this the Gram matrix cannot resolve the vectors; the value is round-off of a 0.
        if sigma <= top * 1e-12 {
            sigma = 0.0;
        }
        s.push(sigma);
        if sigma == 0.0 {
            continue;
        }
        let e = &vecs[idx * k..(idx + 1) * k];
        if tall {
            // e is v; u = X v / σ.
            vt[c * n..(c + 1) * n].copy_from_slice(e);
            for i in 0..m {
                let dot: f64 = x[i * n..(i + 1) * n]
                    .iter()
                    .zip(e)
                    .map(|(&a, &b)| a as f64 * b)
                    .sum();
                u[i * r + c] = dot / sigma;
            }
        } else {
            // e is u; v = Xᵀ u / σ.
            for (i, &ei) in e.iter().enumerate() {
                u[i * r + c] = ei;
                for (a, &xv) in vt[c * n..(c + 1) * n]
                    .iter_mut()
                    .zip(&x[i * n..(i + 1) * n])
                {
                    *a += ei * xv as f64;
                }
            }
            for a in &mut vt[c * n..(c + 1) * n] {
                *a /= sigma;
            }
        }
    }
    Ok(TruncatedSvd { u, s, vt })
}

/// Eigen-decomposition of a symmetric `n x n` matrix (row-major): eigenvalues and the
/// eigenvectors as ROWS of the returned `n x n` matrix. EISPACK `tred2` + `tql2` (JAMA's port).
fn symmetric_eigen(a: Vec<f64>, n: usize) -> Result<(Vec<f64>, Vec<f64>), String> {
    if n == 0 {
        return Ok((vec![], vec![]));
    }
    let mut v = a;
    let mut d = vec![0f64; n];
    let mut e = vec![0f64; n];
    tred2(&mut v, &mut d, &mut e, n);
    // tql2 rotates pairs of eigenvector columns; keep them as rows so each rotation is contiguous.
    let mut z = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            z[j * n + i] = v[i * n + j];
        }
    }
    tql2(&mut z, &mut d, &mut e, n)?;
    Ok((d, z))
}

/// Householder reduction of the symmetric `v` to tridiagonal form (diagonal `d`, sub-diagonal
/// `e`); `v` becomes the accumulated orthogonal transform (eigenvector columns).
#[allow(clippy::needless_range_loop)]
fn tred2(v: &mut [f64], d: &mut [f64], e: &mut [f64], n: usize) {
    let at = |i: usize, j: usize| i * n + j;
    for j in 0..n {
        d[j] = v[at(n - 1, j)];
    }
    for i in (1..n).rev() {
        let mut scale = 0.0;
        let mut h = 0.0;
        for k in 0..i {
            scale += d[k].abs();
        }
        if scale == 0.0 {
            e[i] = d[i - 1];
            for j in 0..i {
                d[j] = v[at(i - 1, j)];
                v[at(i, j)] = 0.0;
                v[at(j, i)] = 0.0;
            }
        } else {
            for k in 0..i {
                d[k] /= scale;
                h += d[k] * d[k];
            }
            let mut f = d[i - 1];
            let mut g = h.sqrt();
            if f > 0.0 {
                g = -g;
            }
            e[i] = scale * g;
            h -= f * g;
            d[i - 1] = f - g;
            for j in 0..i {
                e[j] = 0.0;
            }
            for j in 0..i {
                f = d[j];
                v[at(j, i)] = f;
                g = e[j] + v[at(j, j)] * f;
                for k in j + 1..i {
                    g += v[at(k, j)] * d[k];
                    e[k] += v[at(k, j)] * f;
                }
                e[j] = g;
            }
            f = 0.0;
            for j in 0..i {
                e[j] /= h;
                f += e[j] * d[j];
            }
            let hh = f / (h + h);
            for j in 0..i {
                e[j] -= hh * d[j];
            }
            for j in 0..i {
                f = d[j];
                g = e[j];
                for k in j..i {
                    v[at(k, j)] -= f * e[k] + g * d[k];
                }
                d[j] = v[at(i - 1, j)];
                v[at(i, j)] = 0.0;
            }
        }
        d[i] = h;
    }
    for i in 0..n - 1 {
        v[at(n - 1, i)] = v[at(i, i)];
        v[at(i, i)] = 1.0;
        let h = d[i + 1];
        if h != 0.0 {
            for k in 0..=i {
                d[k] = v[at(k, i + 1)] / h;
            }
            for j in 0..=i {
                let mut g = 0.0;
                for k in 0..=i {
                    g += v[at(k, i + 1)] * v[at(k, j)];
                }
                for k in 0..=i {
                    v[at(k, j)] -= g * d[k];
                }
            }
        }
        for k in 0..=i {
            v[at(k, i + 1)] = 0.0;
        }
    }
    for j in 0..n {
        d[j] = v[at(n - 1, j)];
        v[at(n - 1, j)] = 0.0;
    }
    v[at(n - 1, n - 1)] = 1.0;
    e[0] = 0.0;
}

/// Implicit QL on the tridiagonal (`d`, `e`); `z` holds the eigenvectors as rows and is rotated
/// along. Ends with the eigenvalues in `d` (unsorted).
#[allow(clippy::needless_range_loop)]
fn tql2(z: &mut [f64], d: &mut [f64], e: &mut [f64], n: usize) -> Result<(), String> {
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    let mut f = 0.0f64;
    let mut tst1 = 0.0f64;
    let eps = f64::EPSILON;
    for l in 0..n {
        tst1 = tst1.max(d[l].abs() + e[l].abs());
        let mut m = l;
        while m < n - 1 && e[m].abs() > eps * tst1 {
            m += 1;
        }
        if m > l {
            let mut iter = 0;
            loop {
                iter += 1;
                if iter > 100 {
                    return Err("SVD: the eigenvalue iteration did not converge".into());
                }
                let mut g = d[l];
                let mut p = (d[l + 1] - g) / (2.0 * e[l]);
                let mut r = p.hypot(1.0);
                if p < 0.0 {
                    r = -r;
                }
                d[l] = e[l] / (p + r);
                d[l + 1] = e[l] * (p + r);
                let dl1 = d[l + 1];
                let mut h = g - d[l];
                for di in d.iter_mut().skip(l + 2) {
                    *di -= h;
                }
                f += h;
                p = d[m];
                let mut c = 1.0f64;
                let mut c2 = c;
                let mut c3 = c;
                let el1 = e[l + 1];
                let mut s = 0.0f64;
                let mut s2 = 0.0f64;
                for i in (l..m).rev() {
                    c3 = c2;
                    c2 = c;
                    s2 = s;
                    g = c * e[i];
                    h = c * p;
                    r = p.hypot(e[i]);
                    e[i + 1] = s * r;
                    s = e[i] / r;
                    c = p / r;
                    p = c * d[i] - s * g;
                    d[i + 1] = h + s * (c * g + s * d[i]);
                    let (lo, hi) = z.split_at_mut((i + 1) * n);
                    let zi = &mut lo[i * n..];
                    let zi1 = &mut hi[..n];
                    for (a, b) in zi.iter_mut().zip(zi1.iter_mut()) {
                        let t = *b;
                        *b = s * *a + c * t;
                        *a = c * *a - s * t;
                    }
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                d[l] = c * p;
                if e[l].abs() <= eps * tst1 {
                    break;
                }
            }
        }
        d[l] += f;
        e[l] = 0.0;
    }
    if d.iter().any(|x| !x.is_finite()) {
        return Err("SVD: non-finite eigenvalue".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-normal values (sum of uniforms), scaled.
    fn matrix(m: usize, n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut uni = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64
        };
        (0..m * n)
            .map(|_| ((0..4).map(|_| uni()).sum::<f64>() - 2.0) as f32 * scale)
            .collect()
    }

    fn full_reconstruction(m: usize, n: usize) {
        let x = matrix(m, n, (m * 31 + n) as u64, 1.0);
        let k = m.min(n);
        let svd = truncated_svd(&x, m, n, k).unwrap();
        assert!(svd.s.windows(2).all(|w| w[0] >= w[1]), "not descending");
        let mut max_err = 0f64;
        for i in 0..m {
            for j in 0..n {
                let v: f64 = (0..k)
                    .map(|c| svd.u[i * k + c] * svd.s[c] * svd.vt[c * n + j])
                    .sum();
                max_err = max_err.max((v - x[i * n + j] as f64).abs());
            }
        }
        assert!(max_err < 1e-9, "{m}x{n}: reconstruction error {max_err}");
        // Orthonormal right singular vectors.
        for a in 0..k {
            for b in 0..k {
                let dot: f64 = (0..n).map(|j| svd.vt[a * n + j] * svd.vt[b * n + j]).sum();
                let want = if a == b { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-9, "Vt rows {a},{b}: {dot}");
            }
        }
    }

    #[test]
    fn svd_reconstructs_tall_wide_and_square() {
        full_reconstruction(23, 9);
        full_reconstruction(9, 23);
        full_reconstruction(16, 16);
        full_reconstruction(1, 5);
    }

    #[test]
    fn svd_of_rank_deficient_matrix() {
        // rank 2: outer products; singular values 3 and 1 exactly (orthonormal factors).
        let (m, n) = (6, 4);
        let u1 = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0].map(|x: f64| x / 6f64.sqrt());
        let u2 = [1.0, -1.0, 1.0, -1.0, 1.0, -1.0].map(|x: f64| x / 6f64.sqrt());
        let v1 = [0.5, 0.5, 0.5, 0.5];
        let v2 = [0.5, -0.5, -0.5, 0.5];
        let x: Vec<f32> = (0..m * n)
            .map(|idx| {
                let (i, j) = (idx / n, idx % n);
                (3.0 * u1[i] * v1[j] + u2[i] * v2[j]) as f32
            })
            .collect();
        let svd = truncated_svd(&x, m, n, 4).unwrap();
        assert!((svd.s[0] - 3.0).abs() < 1e-6 && (svd.s[1] - 1.0).abs() < 1e-6);
        assert!(svd.s[2] < 1e-6 && svd.s[3] < 1e-6, "{:?}", svd.s);
        assert!(svd.u.iter().chain(&svd.vt).all(|x| x.is_finite()));
        assert!(truncated_svd(&[0.0; 12], 3, 4, 2).unwrap().s == vec![0.0, 0.0]);
    }

    #[test]
    fn more_iterations_do_not_increase_the_error_and_beat_plain_nf4() {
        let (m, n, r) = (48, 128, 8);
        let w = matrix(m, n, 7, 0.02);
        let errs: Vec<f64> = [1, 2, 5]
            .iter()
            .map(|&it| {
                let init = loftq_init(&w, m, n, r, it).unwrap();
                assert_eq!((init.lora_a.len(), init.lora_b.len()), (r * n, m * r));
                relative_error(&w, &init, 1.0).unwrap()
            })
            .collect();
        let plain = {
            let init = loftq_init(&w, m, n, r, 1).unwrap();
            relative_error(&w, &init, 0.0).unwrap()
        };
        assert!(errs[0] < plain, "{errs:?} vs plain {plain}");
        assert!(
            errs[1] <= errs[0] * 1.0001 && errs[2] <= errs[1] * 1.0001,
            "{errs:?}"
        );
        assert!(errs[2] < errs[0], "{errs:?}");
    }

    #[test]
    fn bad_arguments_are_errors() {
        let w = vec![0.1f32; 64];
        assert!(loftq_init(&w, 8, 8, 0, 1).unwrap_err().contains("rank"));
        assert!(loftq_init(&w, 8, 8, 9, 1).unwrap_err().contains("rank"));
        assert!(
            loftq_init(&w, 8, 8, 2, 0)
                .unwrap_err()
                .contains("iterations")
        );
        assert!(loftq_init(&w, 8, 9, 2, 1).unwrap_err().contains("values"));
        let mut nan = w.clone();
        nan[3] = f32::NAN;
        assert!(loftq_init(&nan, 8, 8, 2, 1).unwrap_err().contains("NaN"));
    }
}
