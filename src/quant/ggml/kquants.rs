//! ggml's K-quants: super-blocks of 256 values with an f16 scale `d` (and `dmin`) split into 16
//! or 32 sub-blocks with their own small integer scales (and mins), as in `ggml-common.h` /
//! `ggml-quants.c` (`dequantize_row_q{2..6}_K`). Each `unpack` walks the packed bytes in the same
//! loops ggml's dequantizer does, so value i of the super-block gets code i and sub-block
//! i / `sub` (ggml's scale index advances with the values).

use super::{Block, CodeScheme, Unpacked, array_at, f16_at};
use half::f16;

/// Values per super-block (`QK_K`).
pub const QK_K: usize = 256;

/// The K-quant scheme with `sub` values per sub-block.
const fn k_scheme(
    lo_bits: u32,
    hi_bits: u32,
    code_offset: i32,
    sub: usize,
    sub_bits: u32,
    sub_offset: i32,
    has_min: bool,
) -> CodeScheme {
    CodeScheme {
        values: QK_K,
        lo_bits,
        hi_bits,
        code_offset,
        sub,
        sub_bits,
        sub_offset,
        has_min,
    }
}

/// ggml `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` (0..8) from the 12 packed
/// bytes of Q4_K / Q5_K.
pub(super) fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Fills the 8 sub-block scales and mins of Q4_K / Q5_K.
fn unpack_scales_k4(scales: &[u8; 12], u: &mut Unpacked) {
    for j in 0..8 {
        (u.scales[j], u.mins[j]) = scale_min_k4(j, scales);
    }
}

/// ggml `block_q2_K`: `(d · (s & 15)) · q − dmin · (s >> 4)` with 2-bit q, 16 sub-blocks of 16.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ2K {
    /// Per sub-block: scale (low nibble) and min (high nibble).
    pub scales: [u8; 16],
    /// 2-bit quants, four per byte.
    pub qs: [u8; 64],
    /// Super-block scale.
    pub d: f16,
    /// Super-block scale of the mins.
    pub dmin: f16,
}

impl Block for BlockQ2K {
    const BYTES: usize = 84;
    const SCHEME: CodeScheme = k_scheme(2, 0, 0, 16, 4, 0, true);
    fn read(bytes: &[u8]) -> Self {
        Self {
            scales: array_at(bytes, 0),
            qs: array_at(bytes, 16),
            d: f16_at(bytes, 80),
            dmin: f16_at(bytes, 82),
        }
    }
    fn unpack(&self, u: &mut Unpacked) {
        let mut y = 0;
        for half in 0..2 {
            let q = &self.qs[32 * half..32 * half + 32];
            for shift in [0, 2, 4, 6] {
                for &b in q {
                    u.codes[y] = (b >> shift) & 3;
                    y += 1;
                }
            }
        }
        for (j, &s) in self.scales.iter().enumerate() {
            u.scales[j] = s & 0xF;
            u.mins[j] = s >> 4;
        }
        u.d = self.d.to_f32();
        u.dmin = self.dmin.to_f32();
    }
}

/// ggml `block_q3_K`: `(d · (s − 32)) · (q − 4)` with 3-bit q (low 2 bits in `qs`, the third in
/// `hmask`), 16 sub-blocks of 16 with 6-bit scales packed in 12 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ3K {
    /// High bit of every value: bit `k` of byte `l` belongs to value `32 k + l`.
    pub hmask: [u8; 32],
    /// Low 2 bits, four per byte.
    pub qs: [u8; 64],
    /// 16 six-bit scales, packed.
    pub scales: [u8; 12],
    /// Super-block scale.
    pub d: f16,
}

impl BlockQ3K {
    /// The 16 six-bit scales (ggml's `kmask1` / `kmask2` shuffle of the 12 bytes).
    pub(super) fn six_bit_scales(&self) -> [u8; 16] {
        const KMASK1: u32 = 0x0303_0303;
        const KMASK2: u32 = 0x0f0f_0f0f;
        let word = |k: usize| u32::from_le_bytes(array_at(&self.scales, 4 * k));
        let (a0, a1, tmp) = (word(0), word(1), word(2));
        let aux = [
            (a0 & KMASK2) | ((tmp & KMASK1) << 4),
            (a1 & KMASK2) | (((tmp >> 2) & KMASK1) << 4),
            ((a0 >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4),
            ((a1 >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4),
        ];
        let mut out = [0u8; 16];
        for (k, a) in aux.iter().enumerate() {
            out[4 * k..4 * k + 4].copy_from_slice(&a.to_le_bytes());
        }
        out
    }
}

impl Block for BlockQ3K {
    const BYTES: usize = 110;
    const SCHEME: CodeScheme = k_scheme(2, 1, 4, 16, 8, 32, false);
    fn read(bytes: &[u8]) -> Self {
        Self {
            hmask: array_at(bytes, 0),
            qs: array_at(bytes, 32),
            scales: array_at(bytes, 96),
            d: f16_at(bytes, 108),
        }
    }
    fn unpack(&self, u: &mut Unpacked) {
        let mut y = 0;
        let mut m = 1u8;
        for half in 0..2 {
            let q = &self.qs[32 * half..32 * half + 32];
            for shift in [0, 2, 4, 6] {
                for (l, &b) in q.iter().enumerate() {
                    let high = if self.hmask[l] & m != 0 { 4 } else { 0 };
                    u.codes[y] = ((b >> shift) & 3) | high;
                    y += 1;
                }
                m = m.wrapping_shl(1);
            }
        }
        u.scales[..16].copy_from_slice(&self.six_bit_scales());
        u.d = self.d.to_f32();
        u.dmin = 0.0;
    }
}

/// ggml `block_q4_K`: `(d · s) · q − dmin · m` with 4-bit q, 8 sub-blocks of 32.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ4K {
    /// Super-block scale.
    pub d: f16,
    /// Super-block scale of the mins.
    pub dmin: f16,
    /// 8 six-bit scales and 8 six-bit mins, packed.
    pub scales: [u8; 12],
    /// 4-bit quants: each 32 bytes hold 64 values, low nibbles first.
    pub qs: [u8; 128],
}

impl Block for BlockQ4K {
    const BYTES: usize = 144;
    const SCHEME: CodeScheme = k_scheme(4, 0, 0, 32, 8, 0, true);
    fn read(bytes: &[u8]) -> Self {
        Self {
            d: f16_at(bytes, 0),
            dmin: f16_at(bytes, 2),
            scales: array_at(bytes, 4),
            qs: array_at(bytes, 16),
        }
    }
    fn unpack(&self, u: &mut Unpacked) {
        for (c, q) in self.qs.chunks_exact(32).enumerate() {
            for (l, &b) in q.iter().enumerate() {
                u.codes[64 * c + l] = b & 0xF;
                u.codes[64 * c + 32 + l] = b >> 4;
            }
        }
        unpack_scales_k4(&self.scales, u);
        u.d = self.d.to_f32();
        u.dmin = self.dmin.to_f32();
    }
}

/// ggml `block_q5_K`: as Q4_K with a fifth bit per value in `qh`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ5K {
    /// Super-block scale.
    pub d: f16,
    /// Super-block scale of the mins.
    pub dmin: f16,
    /// 8 six-bit scales and 8 six-bit mins, packed.
    pub scales: [u8; 12],
    /// Fifth bits: bit `k` of byte `l` belongs to value `32 k + l`.
    pub qh: [u8; 32],
    /// Low 4 bits as in Q4_K.
    pub qs: [u8; 128],
}

impl Block for BlockQ5K {
    const BYTES: usize = 176;
    const SCHEME: CodeScheme = k_scheme(4, 1, 0, 32, 8, 0, true);
    fn read(bytes: &[u8]) -> Self {
        Self {
            d: f16_at(bytes, 0),
            dmin: f16_at(bytes, 2),
            scales: array_at(bytes, 4),
            qh: array_at(bytes, 16),
            qs: array_at(bytes, 48),
        }
    }
    fn unpack(&self, u: &mut Unpacked) {
        for (c, q) in self.qs.chunks_exact(32).enumerate() {
            let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
            for (l, &b) in q.iter().enumerate() {
                let h = self.qh[l];
                u.codes[64 * c + l] = (b & 0xF) + if h & u1 != 0 { 16 } else { 0 };
                u.codes[64 * c + 32 + l] = (b >> 4) + if h & u2 != 0 { 16 } else { 0 };
            }
        }
        unpack_scales_k4(&self.scales, u);
        u.d = self.d.to_f32();
        u.dmin = self.dmin.to_f32();
    }
}

/// ggml `block_q6_K`: `(d · s) · (q − 32)` with 6-bit q (low 4 bits in `ql`, high 2 in `qh`),
/// 16 sub-blocks of 16 with signed 8-bit scales (code = s + 128).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ6K {
    /// Low 4 bits.
    pub ql: [u8; 128],
    /// High 2 bits.
    pub qh: [u8; 64],
    /// Signed sub-block scales.
    pub scales: [i8; 16],
    /// Super-block scale.
    pub d: f16,
}

impl Block for BlockQ6K {
    const BYTES: usize = 210;
    const SCHEME: CodeScheme = k_scheme(4, 2, 32, 16, 8, 128, false);
    fn read(bytes: &[u8]) -> Self {
        Self {
            ql: array_at(bytes, 0),
            qh: array_at(bytes, 128),
            scales: array_at::<16>(bytes, 192).map(|b| b as i8),
            d: f16_at(bytes, 208),
        }
    }
    fn unpack(&self, u: &mut Unpacked) {
        for half in 0..2 {
            let ql = &self.ql[64 * half..64 * half + 64];
            let qh = &self.qh[32 * half..32 * half + 32];
            let y = &mut u.codes[128 * half..128 * half + 128];
            for l in 0..32 {
                y[l] = (ql[l] & 0xF) | ((qh[l] & 3) << 4);
                y[l + 32] = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
                y[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                y[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
            }
        }
        for (c, &s) in u.scales.iter_mut().zip(&self.scales) {
            *c = (s as u8) ^ 0x80;
        }
        u.d = self.d.to_f32();
        u.dmin = 0.0;
    }
}

// The repr(C) structs have exactly ggml's layout (no padding), so BYTES is their size.
const _: () = assert!(std::mem::size_of::<BlockQ2K>() == BlockQ2K::BYTES);
const _: () = assert!(std::mem::size_of::<BlockQ3K>() == BlockQ3K::BYTES);
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == BlockQ4K::BYTES);
const _: () = assert!(std::mem::size_of::<BlockQ5K>() == BlockQ5K::BYTES);
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == BlockQ6K::BYTES);
