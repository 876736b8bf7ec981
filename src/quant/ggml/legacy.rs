//! ggml's 32-value blocks with one f16 scale (and f16 min): Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, as in
//! `ggml-common.h` / `ggml-quants.c`. 4-bit codes are packed two per byte, value j in the low
//! nibble of byte j and value j + 16 in its high nibble; 5-bit types keep the fifth bits in a
//! 32-bit word `qh` (bit j for value j).
//!
//! [`Quantize`] is ggml's reference quantization of each block (`quantize_row_*_ref` in
//! `ggml-quants.c`, which gguf-py's numpy quantizers reproduce): the same f32 operations in the
//! same order, f16 scales rounded to nearest even, codes truncated and clamped as ggml does.

use super::{Block, CodeScheme, Quantize, Unpacked, array_at, f16_at};
use half::f16;

/// The codes of 16 packed nibble bytes: value j from the low nibble of byte j, j + 16 from its
/// high nibble, plus bit j of `qh` (if any) as bit 4.
fn unpack_nibbles(qs: &[u8; 16], qh: u32, codes: &mut [u8]) {
    for (j, &q) in qs.iter().enumerate() {
        codes[j] = (q & 0x0F) | ((((qh >> j) << 4) & 0x10) as u8);
        codes[j + 16] = (q >> 4) | (((qh >> (j + 12)) & 0x10) as u8);
    }
}

/// Packs 32 codes the way [`unpack_nibbles`] reads them: the low 4 bits into `qs`, bit 4 of
/// value j into bit j of the returned `qh`.
fn pack_nibbles(codes: &[u8; 32]) -> ([u8; 16], u32) {
    let qs = std::array::from_fn(|j| (codes[j] & 0x0F) | (codes[j + 16] << 4));
    let qh = (0..32).fold(0u32, |h, j| h | (u32::from(codes[j] >> 4) & 1) << j);
    (qs, qh)
}

/// C's `(int)v` (truncation toward zero) clamped to the codes `0..=top` (ggml's `MIN(top, ...)`,
/// gguf-py's `clip`).
fn trunc_code(v: f32, top: i32) -> u8 {
    (v as i32).clamp(0, top) as u8
}

/// `1/d`, or 0 for a zero scale (ggml's `d ? 1.0f/d : 0.0f`).
fn inverse(d: f32) -> f32 {
    if d != 0.0 { 1.0 / d } else { 0.0 }
}

/// Symmetric `bits`-bit codes (Q4_0, Q5_0): `d = max / -2^(bits-1)` where `max` is the first
/// value of largest magnitude (`x[0]` when all are zero, like gguf-py's `argmax`; ggml's loop
/// would take `+0.0` there), and code `min(top, (int)(x·(1/d) + 2^(bits-1) + 0.5))`.
fn quantize_symmetric(x: &[f32], bits: u32) -> (f16, [u8; 32]) {
    let half = (1u32 << (bits - 1)) as f32;
    let max = x
        .iter()
        .fold(x[0], |m, &v| if v.abs() > m.abs() { v } else { m });
    let d = max / -half;
    let id = inverse(d);
    let top = (1 << bits) - 1;
    let codes = std::array::from_fn(|j| trunc_code(x[j] * id + (half + 0.5), top));
    (f16::from_f32(d), codes)
}

/// Asymmetric `bits`-bit codes (Q4_1, Q5_1): `d = (max − min) / top`, `m = min` (of ties the
/// first, as ggml's strict comparisons keep it), and code `min(top, (int)((x − min)·(1/d) + 0.5))`.
fn quantize_with_min(x: &[f32], bits: u32) -> (f16, f16, [u8; 32]) {
    let (min, max) = x.iter().fold((f32::MAX, -f32::MAX), |(lo, hi), &v| {
        (if v < lo { v } else { lo }, if v > hi { v } else { hi })
    });
    let top = (1 << bits) - 1;
    let d = (max - min) / top as f32;
    let id = inverse(d);
    let codes = std::array::from_fn(|j| trunc_code((x[j] - min) * id + 0.5, top));
    (f16::from_f32(d), f16::from_f32(min), codes)
}

/// ggml `block_q4_0`: 32 values `(nibble - 8) · d`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ4_0 {
    /// Scale.
    pub d: f16,
    /// Packed 4-bit quants.
    pub qs: [u8; 16],
}

impl BlockQ4_0 {
    /// The block as ggml stores it (little endian), e.g. for writing test files.
    pub fn to_bytes(&self) -> [u8; 18] {
        let mut out = [0u8; 18];
        out[..2].copy_from_slice(&self.d.to_le_bytes());
        out[2..].copy_from_slice(&self.qs);
        out
    }
}

impl Block for BlockQ4_0 {
    const BYTES: usize = 18;
    const SCHEME: CodeScheme = CodeScheme::legacy(4, 0, 8, false);
    fn read(bytes: &[u8]) -> Self {
        Self {
            d: f16_at(bytes, 0),
            qs: array_at(bytes, 2),
        }
    }
    fn unpack(&self, u: &mut Unpacked) {
        unpack_nibbles(&self.qs, 0, &mut u.codes);
        u.d = self.d.to_f32();
        u.dmin = 0.0;
    }
}

impl Quantize for BlockQ4_0 {
    fn quantize(x: &[f32]) -> Self {
        let (d, codes) = quantize_symmetric(x, 4);
        Self {
            d,
            qs: pack_nibbles(&codes).0,
        }
    }
    fn write(&self, out: &mut [u8]) {
        out.copy_from_slice(&self.to_bytes());
    }
}

/// ggml `block_q4_1`: 32 values `nibble · d + m`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ4_1 {
    /// Scale.
    pub d: f16,
    /// Minimum (offset).
    pub m: f16,
    /// Packed 4-bit quants.
    pub qs: [u8; 16],
}

impl BlockQ4_1 {
    /// The block as ggml stores it (little endian), e.g. for writing test files.
    pub fn to_bytes(&self) -> [u8; 20] {
        let mut out = [0u8; 20];
        out[..2].copy_from_slice(&self.d.to_le_bytes());
        out[2..4].copy_from_slice(&self.m.to_le_bytes());
        out[4..].copy_from_slice(&self.qs);
        out
    }
}

impl Block for BlockQ4_1 {
    const BYTES: usize = 20;
    const SCHEME: CodeScheme = CodeScheme::legacy(4, 0, 0, true);
    fn read(bytes: &[u8]) -> Self {
        Self {
            d: f16_at(bytes, 0),
            m: f16_at(bytes, 2),
            qs: array_at(bytes, 4),
        }
    }
    fn unpack(&self, u: &mut Unpacked) {
        unpack_nibbles(&self.qs, 0, &mut u.codes);
        u.d = self.d.to_f32();
        u.dmin = self.m.to_f32();
    }
}

impl Quantize for BlockQ4_1 {
    fn quantize(x: &[f32]) -> Self {
        let (d, m, codes) = quantize_with_min(x, 4);
        Self {
            d,
            m,
            qs: pack_nibbles(&codes).0,
        }
    }
    fn write(&self, out: &mut [u8]) {
        out.copy_from_slice(&self.to_bytes());
    }
}

/// ggml `block_q5_0`: 32 values `(q5 - 16) · d`, the fifth bits in `qh`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ5_0 {
    /// Scale.
    pub d: f16,
    /// Fifth bit of every value (bit j of the little-endian word for value j).
    pub qh: [u8; 4],
    /// Packed low 4 bits.
    pub qs: [u8; 16],
}

impl BlockQ5_0 {
    /// The block as ggml stores it (little endian), e.g. for writing test files.
    pub fn to_bytes(&self) -> [u8; 22] {
        let mut out = [0u8; 22];
        out[..2].copy_from_slice(&self.d.to_le_bytes());
        out[2..6].copy_from_slice(&self.qh);
        out[6..].copy_from_slice(&self.qs);
        out
    }
}

impl Block for BlockQ5_0 {
    const BYTES: usize = 22;
    const SCHEME: CodeScheme = CodeScheme::legacy(4, 1, 16, false);
    fn read(bytes: &[u8]) -> Self {
        Self {
            d: f16_at(bytes, 0),
            qh: array_at(bytes, 2),
            qs: array_at(bytes, 6),
        }
    }
    fn unpack(&self, u: &mut Unpacked) {
        unpack_nibbles(&self.qs, u32::from_le_bytes(self.qh), &mut u.codes);
        u.d = self.d.to_f32();
        u.dmin = 0.0;
    }
}

impl Quantize for BlockQ5_0 {
    fn quantize(x: &[f32]) -> Self {
        let (d, codes) = quantize_symmetric(x, 5);
        let (qs, qh) = pack_nibbles(&codes);
        Self {
            d,
            qh: qh.to_le_bytes(),
            qs,
        }
    }
    fn write(&self, out: &mut [u8]) {
        out.copy_from_slice(&self.to_bytes());
    }
}

/// ggml `block_q5_1`: 32 values `q5 · d + m`, the fifth bits in `qh`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ5_1 {
    /// Scale.
    pub d: f16,
    /// Minimum (offset).
    pub m: f16,
    /// Fifth bit of every value.
    pub qh: [u8; 4],
    /// Packed low 4 bits.
    pub qs: [u8; 16],
}

impl BlockQ5_1 {
    /// The block as ggml stores it (little endian), e.g. for writing test files.
    pub fn to_bytes(&self) -> [u8; 24] {
        let mut out = [0u8; 24];
        out[..2].copy_from_slice(&self.d.to_le_bytes());
        out[2..4].copy_from_slice(&self.m.to_le_bytes());
        out[4..8].copy_from_slice(&self.qh);
        out[8..].copy_from_slice(&self.qs);
        out
    }
}

impl Block for BlockQ5_1 {
    const BYTES: usize = 24;
    const SCHEME: CodeScheme = CodeScheme::legacy(4, 1, 0, true);
    fn read(bytes: &[u8]) -> Self {
        Self {
            d: f16_at(bytes, 0),
            m: f16_at(bytes, 2),
            qh: array_at(bytes, 4),
            qs: array_at(bytes, 8),
        }
    }
    fn unpack(&self, u: &mut Unpacked) {
        unpack_nibbles(&self.qs, u32::from_le_bytes(self.qh), &mut u.codes);
        u.d = self.d.to_f32();
        u.dmin = self.m.to_f32();
    }
}

impl Quantize for BlockQ5_1 {
    fn quantize(x: &[f32]) -> Self {
        let (d, m, codes) = quantize_with_min(x, 5);
        let (qs, qh) = pack_nibbles(&codes);
        Self {
            d,
            m,
            qh: qh.to_le_bytes(),
            qs,
        }
    }
    fn write(&self, out: &mut [u8]) {
        out.copy_from_slice(&self.to_bytes());
    }
}

/// ggml `block_q8_0`: 32 values `q · d` (code = q + 128, unsigned).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ8_0 {
    /// Scale.
    pub d: f16,
    /// Signed 8-bit quants.
    pub qs: [i8; 32],
}

impl BlockQ8_0 {
    /// The block as ggml stores it (little endian), e.g. for writing test files.
    pub fn to_bytes(&self) -> [u8; 34] {
        let mut out = [0u8; 34];
        out[..2].copy_from_slice(&self.d.to_le_bytes());
        for (o, q) in out[2..].iter_mut().zip(self.qs) {
            *o = q.to_le_bytes()[0];
        }
        out
    }
}

impl Block for BlockQ8_0 {
    const BYTES: usize = 34;
    const SCHEME: CodeScheme = CodeScheme::legacy(8, 0, 128, false);
    fn read(bytes: &[u8]) -> Self {
        Self {
            d: f16_at(bytes, 0),
            qs: array_at::<32>(bytes, 2).map(|b| i8::from_le_bytes([b])),
        }
    }
    fn unpack(&self, u: &mut Unpacked) {
        for (c, &q) in u.codes.iter_mut().zip(&self.qs) {
            *c = (q as u8) ^ 0x80;
        }
        u.d = self.d.to_f32();
        u.dmin = 0.0;
    }
}

impl Quantize for BlockQ8_0 {
    /// `d = amax / 127` and `q = roundf(x·(1/d))` (halves away from zero), as in
    /// `quantize_row_q8_0_ref`.
    fn quantize(x: &[f32]) -> Self {
        let amax = x
            .iter()
            .fold(0.0f32, |a, &v| if a > v.abs() { a } else { v.abs() });
        let d = amax / 127.0;
        let id = inverse(d);
        Self {
            d: f16::from_f32(d),
            qs: std::array::from_fn(|j| (x[j] * id).round() as i8),
        }
    }
    fn write(&self, out: &mut [u8]) {
        out.copy_from_slice(&self.to_bytes());
    }
}

// The repr(C) structs have exactly ggml's layout (no padding), so BYTES is their size.
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == BlockQ4_0::BYTES);
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == BlockQ4_1::BYTES);
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == BlockQ5_0::BYTES);
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == BlockQ5_1::BYTES);
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == BlockQ8_0::BYTES);
