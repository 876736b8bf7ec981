//! ggml's reference K-quant quantizers: `quantize_row_q{2,3,4,5,6}_K_ref` of `ggml-quants.c`,
//! which `llama_model_quantize` runs when it has no importance matrix (`quantize_q4_K` and its
//! siblings call the `_ref` function when `quant_weights` is NULL).
//!
//! The code follows the C function by function (`nearest_int`, `make_qkx2_quants`,
//! `make_qx_quants`, `make_q3_quants`) with the same f32 operations in the same order. Rust
//! never fuses a multiply and an add, which matches ggml's `ggml-base` build for x86-64 (no FMA
//! in the baseline ISA); a ggml compiled with FMA contraction (e.g. gcc's default
//! `-ffp-contract=fast` on aarch64) may round some sums differently. f16 scales round to nearest
//! even, as `GGML_FP32_TO_FP16` does. Inputs are expected finite.

use super::Quantize;
use super::kquants::{BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, QK_K, scale_min_k4};
use half::f16;

/// ggml `GROUP_MAX_EPS`: a group whose largest magnitude is below this quantizes to zero.
const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml `nearest_int`: adds 1.5·2²³ so the FPU rounds to an integer (ties to even) and reads it
/// from the low mantissa bits. Bit-for-bit the C expression for every input, including the
/// wrapped results beyond ±2²² (where ggml's assert is compiled out).
fn nearest_int(v: f32) -> i32 {
    let bits = (v + 12_582_912.0).to_bits() as i32;
    (bits & 0x007f_ffff) - 0x0040_0000
}

/// The fixed arguments of one `make_qkx2_quants` call site.
struct Qkx2 {
    /// Largest code.
    nmax: i32,
    /// First offset of the scale search (`rmin`).
    rmin: f32,
    /// Step of the scale search (`rdelta`).
    rdelta: f32,
    /// Last step of the scale search (`nstep`, at least 1).
    nstep: i32,
    /// Absolute instead of squared errors (`use_mad`).
    use_mad: bool,
}

/// `quantize_row_q2_K_ref`'s call: `make_qkx2_quants(16, 3, …, -0.5f, 0.1f, 15, true)`.
const Q2_K_SEARCH: Qkx2 = Qkx2 {
    nmax: 3,
    rmin: -0.5,
    rdelta: 0.1,
    nstep: 15,
    use_mad: true,
};

/// `quantize_row_q4_K_ref`'s call: `make_qkx2_quants(32, 15, …, -1.f, 0.1f, 20, false)`.
const Q4_K_SEARCH: Qkx2 = Qkx2 {
    nmax: 15,
    rmin: -1.0,
    rdelta: 0.1,
    nstep: 20,
    use_mad: false,
};

/// `quantize_row_q5_K_ref`'s call: `make_qkx2_quants(32, 31, …, -0.5f, 0.1f, 15, false)`.
const Q5_K_SEARCH: Qkx2 = Qkx2 {
    nmax: 31,
    rmin: -0.5,
    rdelta: 0.1,
    nstep: 15,
    use_mad: false,
};

/// Codes `clamp(nearest_int(iscale · (x − min)), 0, nmax)` into `l`.
fn round_codes(iscale: f32, min: f32, x: &[f32], nmax: i32, l: &mut [u8]) {
    for (c, &v) in l.iter_mut().zip(x) {
        *c = nearest_int(iscale * (v - min)).clamp(0, nmax) as u8;
    }
}

/// `Σ w · |scale · l + min − x|` (`use_mad`) or `Σ w · (scale · l + min − x)²`, in element order.
fn weighted_error(
    use_mad: bool,
    scale: f32,
    min: f32,
    x: &[f32],
    weights: &[f32],
    l: &[u8],
) -> f32 {
    let mut err = 0f32;
    for ((&v, &w), &c) in x.iter().zip(weights).zip(l) {
        let diff = scale * c as f32 + min - v;
        err += w * if use_mad { diff.abs() } else { diff * diff };
    }
    err
}

/// ggml `make_qkx2_quants`: codes `0..=nmax` into `l` for values `scale · l − the_min`,
/// searching `nstep + 1` candidate scales for the least weighted error, with a least-squares fit
/// of scale and min for each. Returns `(scale, the_min)`.
fn make_qkx2_quants(p: &Qkx2, x: &[f32], weights: &[f32], l: &mut [u8]) -> (f32, f32) {
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for (&v, &w) in x.iter().zip(weights).skip(1) {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
        sum_w += w;
        sum_x += w * v;
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let nmax = p.nmax as f32;
    let iscale = nmax / (max - min);
    let mut scale = 1.0 / iscale;
    round_codes(iscale, min, x, p.nmax, l);
    let mut best_error = weighted_error(p.use_mad, scale, min, x, weights, l);
    let mut aux = [0u8; 32];
    let laux = &mut aux[..x.len()];
    for is in 0..=p.nstep {
        let iscale = (p.rmin + p.rdelta * is as f32 + nmax) / (max - min);
        round_codes(iscale, min, x, p.nmax, laux);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for ((&c, &w), &v) in laux.iter().zip(weights).zip(x) {
            let c = c as f32;
            sum_l += w * c;
            sum_l2 += w * c * c;
            sum_xl += w * c * v;
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let cur_error = weighted_error(p.use_mad, this_scale, this_min, x, weights, laux);
            if cur_error < best_error {
                l.copy_from_slice(laux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Signed codes `clamp(nearest_int(iscale · x), -nmax, nmax − 1)` stored as `q + nmax` into `l`,
/// and the sums `(Σ w·x·q, Σ w·q²)` with `w = x²` (`make_qx_quants`'s `rmse_type` 1).
fn qx_codes_and_sums(iscale: f32, x: &[f32], nmax: i32, l: &mut [u8]) -> (f32, f32) {
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (c, &v) in l.iter_mut().zip(x) {
        let q = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        *c = (q + nmax) as u8;
        let w = v * v;
        sumlx += w * v * q as f32;
        suml2 += w * q as f32 * q as f32;
    }
    (sumlx, suml2)
}

/// ggml `make_qx_quants` with `rmse_type` 1 and no weights: symmetric codes `0..2·nmax` (offset
/// `nmax`) into `l`, trying 19 scales around `-nmax / max` and keeping the best x²-weighted
/// least-squares fit. Returns the scale (0 for an all-zero group).
fn make_qx_quants(nmax: i32, x: &[f32], l: &mut [u8]) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let (sumlx, suml2) = qx_codes_and_sums(-nmaxf / max, x, nmax, l);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    let mut aux = [0u8; 16];
    let laux = &mut aux[..x.len()];
    for is in (-9..=9).filter(|&is| is != 0) {
        let iscale = -(nmaxf + 0.1 * is as f32) / max;
        let (sumlx, suml2) = qx_codes_and_sums(iscale, x, nmax, laux);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            l.copy_from_slice(laux);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// ggml `make_q3_quants` with `do_rmse`: signed codes `-nmax..nmax` (stored `+ nmax` into `l`)
/// from `-nmax / max`, then up to 5 rounds of moving single codes while that improves the
/// x²-weighted least-squares fit. Returns the scale (0 for an all-zero group).
fn make_q3_quants(nmax: i32, x: &[f32], l: &mut [u8]) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let mut q = [0i32; 16];
    let q = &mut q[..x.len()];
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (c, &v) in q.iter_mut().zip(x) {
        *c = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        let w = v * v;
        sumlx += w * v * *c as f32;
        suml2 += w * *c as f32 * *c as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for (c, &v) in q.iter_mut().zip(x) {
            let w = v * v;
            let mut slx = sumlx - w * v * *c as f32;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * *c as f32 * *c as f32;
                let new_l = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != *c {
                    slx += w * v * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *c = new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for (o, &c) in l.iter_mut().zip(q.iter()) {
        *o = (c + nmax) as u8;
    }
    if suml2 > 0.0 { sumlx / suml2 } else { 0.0 }
}

/// Four 2-bit planes of 256 codes as Q2_K / Q3_K store them: per half of 128, byte `l` holds
/// values `l`, `l + 32`, `l + 64`, `l + 96` in bits 0-1, 2-3, 4-5, 6-7 (codes masked to 2 bits).
fn pack_2bit(codes: &[u8; QK_K]) -> [u8; 64] {
    std::array::from_fn(|i| {
        let (h, l) = (i / 32, i % 32);
        (0..4).fold(0u8, |b, k| {
            b | ((codes[128 * h + 32 * k + l] & 3) << (2 * k))
        })
    })
}

impl Quantize for BlockQ2K {
    /// `quantize_row_q2_K_ref`: per sub-block of 16 a `make_qkx2_quants` fit weighted by `|x|`
    /// with absolute errors, the scales and mins quantized to 4 bits against their maxima (`d`,
    /// `dmin` in f16), then every code re-derived from the rounded scales.
    fn quantize(x: &[f32]) -> Self {
        let mut codes = [0u8; QK_K];
        let (mut scales, mut mins) = ([0f32; 16], [0f32; 16]);
        let (mut max_scale, mut max_min) = (0f32, 0f32);
        for (j, (xs, l)) in x
            .chunks_exact(16)
            .zip(codes.chunks_exact_mut(16))
            .enumerate()
        {
            let weights: [f32; 16] = std::array::from_fn(|i| xs[i].abs());
            (scales[j], mins[j]) = make_qkx2_quants(&Q2_K_SEARCH, xs, &weights, l);
            if scales[j] > max_scale {
                max_scale = scales[j];
            }
            if mins[j] > max_min {
                max_min = mins[j];
            }
        }
        let mut packed = [0u8; 16];
        let mut d = f16::ZERO;
        if max_scale > 0.0 {
            let iscale = 15.0 / max_scale;
            for (p, &s) in packed.iter_mut().zip(&scales) {
                *p = nearest_int(iscale * s) as u8;
            }
            d = f16::from_f32(max_scale / 15.0);
        }
        let mut dmin = f16::ZERO;
        if max_min > 0.0 {
            let iscale = 15.0 / max_min;
            for (p, &m) in packed.iter_mut().zip(&mins) {
                *p |= (nearest_int(iscale * m) << 4) as u8;
            }
            dmin = f16::from_f32(max_min / 15.0);
        }
        for (j, (xs, l)) in x
            .chunks_exact(16)
            .zip(codes.chunks_exact_mut(16))
            .enumerate()
        {
            let dj = d.to_f32() * (packed[j] & 0xF) as f32;
            if dj == 0.0 {
                continue;
            }
            let dm = dmin.to_f32() * (packed[j] >> 4) as f32;
            for (c, &v) in l.iter_mut().zip(xs) {
                *c = nearest_int((v + dm) / dj).clamp(0, 3) as u8;
            }
        }
        Self {
            scales: packed,
            qs: pack_2bit(&codes),
            d,
            dmin,
        }
    }
    fn write(&self, out: &mut [u8]) {
        out[..16].copy_from_slice(&self.scales);
        out[16..80].copy_from_slice(&self.qs);
        out[80..82].copy_from_slice(&self.d.to_le_bytes());
        out[82..].copy_from_slice(&self.dmin.to_le_bytes());
    }
}

impl Quantize for BlockQ3K {
    /// `quantize_row_q3_K_ref`: per sub-block of 16 a `make_q3_quants` scale, the scales
    /// quantized to signed 6 bits against the largest magnitude (`d` in f16), then every code
    /// re-derived from the rounded scales; the third code bit goes to `hmask`.
    fn quantize(x: &[f32]) -> Self {
        let mut codes = [0u8; QK_K];
        let mut scales = [0f32; 16];
        let (mut max_scale, mut amax) = (0f32, 0f32);
        for (j, (xs, l)) in x
            .chunks_exact(16)
            .zip(codes.chunks_exact_mut(16))
            .enumerate()
        {
            scales[j] = make_q3_quants(4, xs, l);
            if scales[j].abs() > amax {
                amax = scales[j].abs();
                max_scale = scales[j];
            }
        }
        let mut block = Self {
            hmask: [0; 32],
            qs: [0; 64],
            scales: [0; 12],
            d: f16::ZERO,
        };
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            for (j, &s) in scales.iter().enumerate() {
                // int8_t l = nearest_int(…); MAX(-32, MIN(31, l)) + 32
                let l = ((nearest_int(iscale * s) as i8).clamp(-32, 31) + 32) as u8;
                if j < 8 {
                    block.scales[j] = l & 0xF;
                } else {
                    block.scales[j - 8] |= (l & 0xF) << 4;
                }
                block.scales[j % 4 + 8] |= (l >> 4) << (2 * (j / 4));
            }
            block.d = f16::from_f32(1.0 / iscale);
        }
        let six_bit = block.six_bit_scales();
        for (j, (xs, l)) in x
            .chunks_exact(16)
            .zip(codes.chunks_exact_mut(16))
            .enumerate()
        {
            let dj = block.d.to_f32() * (six_bit[j] as i32 - 32) as f32;
            if dj == 0.0 {
                continue;
            }
            for (c, &v) in l.iter_mut().zip(xs) {
                *c = (nearest_int(v / dj).clamp(-4, 3) + 4) as u8;
            }
        }
        for (j, &c) in codes.iter().enumerate() {
            block.hmask[j % 32] |= ((c >> 2) & 1) << (j / 32);
        }
        block.qs = pack_2bit(&codes);
        block
    }
    fn write(&self, out: &mut [u8]) {
        out[..32].copy_from_slice(&self.hmask);
        out[32..96].copy_from_slice(&self.qs);
        out[96..108].copy_from_slice(&self.scales);
        out[108..].copy_from_slice(&self.d.to_le_bytes());
    }
}

/// Q4_K / Q5_K super-block as `quantize_row_q{4,5}_K_ref` builds it: per sub-block of 32 a
/// `make_qkx2_quants` fit weighted by `sqrt(mean x²) + |x|`, the scales and mins quantized to 6
/// bits against their maxima (`d`, `dmin` in f16), then every code re-derived from the rounded
/// scales. Returns `(d, dmin, packed 6-bit scales and mins, codes)`.
fn quantize_k4(x: &[f32], p: &Qkx2) -> (f16, f16, [u8; 12], [u8; QK_K]) {
    let mut codes = [0u8; QK_K];
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for (j, (xs, l)) in x
        .chunks_exact(32)
        .zip(codes.chunks_exact_mut(32))
        .enumerate()
    {
        let mut sum_x2 = 0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        let weights: [f32; 32] = std::array::from_fn(|i| av_x + xs[i].abs());
        (scales[j], mins[j]) = make_qkx2_quants(p, xs, &weights, l);
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv = |m: f32| if m > 0.0 { 63.0 / m } else { 0.0 };
    let (inv_scale, inv_min) = (inv(max_scale), inv(max_min));
    let mut packed = [0u8; 12];
    for j in 0..8 {
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);
    for (j, (xs, l)) in x
        .chunks_exact(32)
        .zip(codes.chunks_exact_mut(32))
        .enumerate()
    {
        let (sc, m) = scale_min_k4(j, &packed);
        let dj = d.to_f32() * sc as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * m as f32;
        for (c, &v) in l.iter_mut().zip(xs) {
            *c = nearest_int((v + dm) / dj).clamp(0, p.nmax) as u8;
        }
    }
    (d, dmin, packed, codes)
}

/// The low nibbles of 256 codes in Q4_K / Q5_K order: byte `32 c + l` holds value `64 c + l` in
/// its low nibble and value `64 c + 32 + l` in its high nibble.
fn pack_k4_nibbles(codes: &[u8; QK_K]) -> [u8; 128] {
    std::array::from_fn(|i| {
        let (c, l) = (i / 32, i % 32);
        (codes[64 * c + l] & 0xF) | ((codes[64 * c + 32 + l] & 0xF) << 4)
    })
}

impl Quantize for BlockQ4K {
    fn quantize(x: &[f32]) -> Self {
        let (d, dmin, scales, codes) = quantize_k4(x, &Q4_K_SEARCH);
        Self {
            d,
            dmin,
            scales,
            qs: pack_k4_nibbles(&codes),
        }
    }
    fn write(&self, out: &mut [u8]) {
        out[..2].copy_from_slice(&self.d.to_le_bytes());
        out[2..4].copy_from_slice(&self.dmin.to_le_bytes());
        out[4..16].copy_from_slice(&self.scales);
        out[16..].copy_from_slice(&self.qs);
    }
}

impl Quantize for BlockQ5K {
    fn quantize(x: &[f32]) -> Self {
        let (d, dmin, scales, codes) = quantize_k4(x, &Q5_K_SEARCH);
        // Fifth bits: value 64 c + l sets bit 2c of byte l, value 64 c + 32 + l bit 2c + 1.
        let qh = std::array::from_fn(|l| {
            (0..8).fold(0u8, |h, k| h | (((codes[32 * k + l] >> 4) & 1) << k))
        });
        Self {
            d,
            dmin,
            scales,
            qh,
            qs: pack_k4_nibbles(&codes),
        }
    }
    fn write(&self, out: &mut [u8]) {
        out[..2].copy_from_slice(&self.d.to_le_bytes());
        out[2..4].copy_from_slice(&self.dmin.to_le_bytes());
        out[4..16].copy_from_slice(&self.scales);
        out[16..48].copy_from_slice(&self.qh);
        out[48..].copy_from_slice(&self.qs);
    }
}

impl Quantize for BlockQ6K {
    /// `quantize_row_q6_K_ref`: per sub-block of 16 a `make_qx_quants(16, 32, …, 1)` scale, the
    /// scales quantized to signed 8 bits against the largest magnitude (`d` in f16), then every
    /// code re-derived from the rounded scales. A block whose scales are all below
    /// `GROUP_MAX_EPS` is all zero bytes.
    fn quantize(x: &[f32]) -> Self {
        let mut codes = [0u8; QK_K];
        let mut scales = [0f32; 16];
        let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
        for (ib, (xs, l)) in x
            .chunks_exact(16)
            .zip(codes.chunks_exact_mut(16))
            .enumerate()
        {
            scales[ib] = make_qx_quants(32, xs, l);
            let abs_scale = scales[ib].abs();
            if abs_scale > max_abs_scale {
                max_abs_scale = abs_scale;
                max_scale = scales[ib];
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            return Self {
                ql: [0; 128],
                qh: [0; 64],
                scales: [0; 16],
                d: f16::ZERO,
            };
        }
        let iscale = -128.0 / max_scale;
        let d = f16::from_f32(1.0 / iscale);
        let sc: [i8; 16] =
            std::array::from_fn(|ib| nearest_int(iscale * scales[ib]).min(127) as i8);
        for (j, (xs, l)) in x
            .chunks_exact(16)
            .zip(codes.chunks_exact_mut(16))
            .enumerate()
        {
            let dj = d.to_f32() * sc[j] as f32;
            if dj == 0.0 {
                continue;
            }
            for (c, &v) in l.iter_mut().zip(xs) {
                *c = (nearest_int(v / dj).clamp(-32, 31) + 32) as u8;
            }
        }
        // Per half of 128: bytes l and l + 32 of ql hold values l, l + 32 (low nibbles) and
        // l + 64, l + 96 (high nibbles); qh byte l their top two bits, in that order.
        let mut ql = [0u8; 128];
        let mut qh = [0u8; 64];
        for (h, c) in codes.chunks_exact(128).enumerate() {
            for l in 0..32 {
                ql[64 * h + l] = (c[l] & 0xF) | ((c[l + 64] & 0xF) << 4);
                ql[64 * h + l + 32] = (c[l + 32] & 0xF) | ((c[l + 96] & 0xF) << 4);
                qh[32 * h + l] = (c[l] >> 4)
                    | ((c[l + 32] >> 4) << 2)
                    | ((c[l + 64] >> 4) << 4)
                    | ((c[l + 96] >> 4) << 6);
            }
        }
        Self {
            ql,
            qh,
            scales: sc,
            d,
        }
    }
    fn write(&self, out: &mut [u8]) {
        out[..128].copy_from_slice(&self.ql);
        out[128..192].copy_from_slice(&self.qh);
        for (o, &s) in out[192..208].iter_mut().zip(&self.scales) {
            *o = s as u8;
        }
        out[208..].copy_from_slice(&self.d.to_le_bytes());
    }
}
