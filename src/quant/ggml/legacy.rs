//! ggml's 32-value blocks with one f16 scale (and f16 min): Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, as in
//! `ggml-common.h` / `ggml-quants.c`. 4-bit codes are packed two per byte, value j in the low
//! nibble of byte j and value j + 16 in its high nibble; 5-bit types keep the fifth bits in a
//! 32-bit word `qh` (bit j for value j).

use super::{Block, CodeScheme, Unpacked, array_at, f16_at};
use half::f16;

/// The codes of 16 packed nibble bytes: value j from the low nibble of byte j, j + 16 from its
/// high nibble, plus bit j of `qh` (if any) as bit 4.
fn unpack_nibbles(qs: &[u8; 16], qh: u32, codes: &mut [u8]) {
    for (j, &q) in qs.iter().enumerate() {
        codes[j] = (q & 0x0F) | ((((qh >> j) << 4) & 0x10) as u8);
        codes[j + 16] = (q >> 4) | (((qh >> (j + 12)) & 0x10) as u8);
    }
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

// The repr(C) structs have exactly ggml's layout (no padding), so BYTES is their size.
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == BlockQ4_0::BYTES);
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == BlockQ4_1::BYTES);
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == BlockQ5_0::BYTES);
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == BlockQ5_1::BYTES);
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == BlockQ8_0::BYTES);
