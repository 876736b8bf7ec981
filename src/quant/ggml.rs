//! ggml tensor storage formats: type ids, block layouts and dequantisation.
//!
//! Mirrors `ggml.h` / `ggml-quants.c` for the formats wgtune reads (F32, F16, Q4_0, Q4_1,
//! Q8_0). Blocks are decoded from little-endian bytes one field at a time, so the input slice
//! may have any alignment. The float operations are the ones ggml (and the `gguf` Python
//! package) perform, so results are bit-identical to theirs.

use half::f16;
use thiserror::Error;

/// Errors from decoding ggml tensor data.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum GgmlError {
    /// A row or tensor length that does not fill whole blocks.
    #[error("{n} values is not a multiple of the {ty} block size {block_size}")]
    PartialBlock {
        /// The ggml type name.
        ty: &'static str,
        /// The offending element count.
        n: usize,
        /// Values per block of this type.
        block_size: usize,
    },
    /// The byte slice does not hold exactly the data for the requested number of values.
    #[error("{ty} data for {n_elems} values must be {expected} bytes, got {got}")]
    ByteLength {
        /// The ggml type name.
        ty: &'static str,
        /// Number of values requested.
        n_elems: usize,
        /// Bytes those values occupy.
        expected: usize,
        /// Bytes supplied.
        got: usize,
    },
    /// A size computation overflowed `usize`.
    #[error("{ty} size of {n} values overflows usize")]
    Overflow {
        /// The ggml type name.
        ty: &'static str,
        /// The element count that overflowed.
        n: usize,
    },
}

/// The ggml tensor types wgtune can decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 32-bit IEEE float (ggml id 0).
    F32,
    /// 16-bit IEEE float (ggml id 1).
    F16,
    /// 4-bit blocks of 32 with one f16 scale, symmetric (ggml id 2).
    Q4_0,
    /// 4-bit blocks of 32 with an f16 scale and an f16 minimum (ggml id 3).
    Q4_1,
    /// 8-bit blocks of 32 with one f16 scale (ggml id 8).
    Q8_0,
}

/// Every ggml type id with its ggml name (`ggml_type` in ggml.h); gaps are removed types.
const GGML_TYPE_NAMES: &[(u32, &str)] = &[
    (0, "F32"),
    (1, "F16"),
    (2, "Q4_0"),
    (3, "Q4_1"),
    (6, "Q5_0"),
    (7, "Q5_1"),
    (8, "Q8_0"),
    (9, "Q8_1"),
    (10, "Q2_K"),
    (11, "Q3_K"),
    (12, "Q4_K"),
    (13, "Q5_K"),
    (14, "Q6_K"),
    (15, "Q8_K"),
    (16, "IQ2_XXS"),
    (17, "IQ2_XS"),
    (18, "IQ3_XXS"),
    (19, "IQ1_S"),
    (20, "IQ4_NL"),
    (21, "IQ3_S"),
    (22, "IQ2_S"),
    (23, "IQ4_XS"),
    (24, "I8"),
    (25, "I16"),
    (26, "I32"),
    (27, "I64"),
    (28, "F64"),
    (29, "IQ1_M"),
    (30, "BF16"),
    (34, "TQ1_0"),
    (35, "TQ2_0"),
    (39, "MXFP4"),
    (40, "NVFP4"),
    (41, "Q1_0"),
];

/// ggml's name for any type id (so errors can name formats wgtune does not decode); "unknown" otherwise.
pub fn ggml_type_name(id: u32) -> &'static str {
    GGML_TYPE_NAMES
        .iter()
        .find(|(i, _)| *i == id)
        .map_or("unknown", |(_, name)| name)
}

impl GgmlType {
    /// Every supported type, for listing them in messages.
    pub const ALL: [GgmlType; 5] = [Self::F32, Self::F16, Self::Q4_0, Self::Q4_1, Self::Q8_0];

    /// The supported type with this ggml id, or `None` for any other id.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        match id {
            0 => Some(Self::F32),
            1 => Some(Self::F16),
            2 => Some(Self::Q4_0),
            3 => Some(Self::Q4_1),
            8 => Some(Self::Q8_0),
            _ => None,
        }
    }

    /// The ggml type id, as stored in GGUF tensor infos.
    pub fn id(&self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q8_0 => 8,
        }
    }

    /// ggml's name for this type ("Q4_1", ...).
    pub fn name(&self) -> &'static str {
        ggml_type_name(self.id())
    }

    /// Values per block (1 for plain float types).
    pub fn block_size(&self) -> usize {
        match self {
            Self::F32 | Self::F16 => 1,
            Self::Q4_0 => BlockQ4_0::VALUES,
            Self::Q4_1 => BlockQ4_1::VALUES,
            Self::Q8_0 => BlockQ8_0::VALUES,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(&self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 => 2,
            Self::Q4_0 => BlockQ4_0::BYTES,
            Self::Q4_1 => BlockQ4_1::BYTES,
            Self::Q8_0 => BlockQ8_0::BYTES,
        }
    }

    /// Bytes taken by `n_cols` values (one row); errors if they do not fill whole blocks.
    pub fn row_bytes(&self, n_cols: usize) -> Result<usize, GgmlError> {
        let block_size = self.block_size();
        if !n_cols.is_multiple_of(block_size) {
            return Err(GgmlError::PartialBlock {
                ty: self.name(),
                n: n_cols,
                block_size,
            });
        }
        (n_cols / block_size)
            .checked_mul(self.block_bytes())
            .ok_or(GgmlError::Overflow {
                ty: self.name(),
                n: n_cols,
            })
    }
}

/// A fixed-size ggml block that decodes to `VALUES` floats.
trait Block: Sized {
    /// Values in one block.
    const VALUES: usize;
    /// Bytes of one block in the file.
    const BYTES: usize;
    /// Decodes one block from exactly `BYTES` little-endian bytes.
    fn read(bytes: &[u8]) -> Self;
    /// Writes the block's values into `out` (length `VALUES`).
    fn dequantize_into(&self, out: &mut [f32]);
}

/// Reads a little-endian f16 at `at` (caller guarantees the range is in bounds).
fn f16_at(bytes: &[u8], at: usize) -> f16 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]])
}

/// Copies `N` bytes starting at `at` (caller guarantees the range is in bounds).
fn array_at<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

/// ggml `block_q4_0`: 32 values `(nibble - 8) * d`; byte j holds value j (low) and j + 16 (high).
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
    const VALUES: usize = 32;
    const BYTES: usize = 18;
    fn read(bytes: &[u8]) -> Self {
        Self {
            d: f16_at(bytes, 0),
            qs: array_at(bytes, 2),
        }
    }
    fn dequantize_into(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (j, &q) in self.qs.iter().enumerate() {
            out[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
            out[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// ggml `block_q4_1`: 32 values `nibble * d + m`; byte j holds value j (low) and j + 16 (high).
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
    const VALUES: usize = 32;
    const BYTES: usize = 20;
    fn read(bytes: &[u8]) -> Self {
        Self {
            d: f16_at(bytes, 0),
            m: f16_at(bytes, 2),
            qs: array_at(bytes, 4),
        }
    }
    fn dequantize_into(&self, out: &mut [f32]) {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        for (j, &q) in self.qs.iter().enumerate() {
            out[j] = d * (q & 0x0F) as f32 + m;
            out[j + 16] = d * (q >> 4) as f32 + m;
        }
    }
}

/// ggml `block_q8_0`: 32 values `q * d`.
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
    const VALUES: usize = 32;
    const BYTES: usize = 34;
    fn read(bytes: &[u8]) -> Self {
        Self {
            d: f16_at(bytes, 0),
            qs: array_at::<32>(bytes, 2).map(|b| i8::from_le_bytes([b])),
        }
    }
    fn dequantize_into(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (o, &q) in out.iter_mut().zip(&self.qs) {
            *o = q as f32 * d;
        }
    }
}

// The repr(C) structs have exactly ggml's layout (no padding), so BYTES is their size.
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == BlockQ4_0::BYTES);
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == BlockQ4_1::BYTES);
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == BlockQ8_0::BYTES);

/// Decodes whole blocks of type `B` (lengths already checked to match).
fn dequantize_blocks<B: Block>(bytes: &[u8], out: &mut [f32]) {
    for (src, dst) in bytes
        .chunks_exact(B::BYTES)
        .zip(out.chunks_exact_mut(B::VALUES))
    {
        B::read(src).dequantize_into(dst);
    }
}

/// Decodes `n_elems` values of type `ty` to f32; `bytes` must be exactly their storage.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n_elems: usize) -> Result<Vec<f32>, GgmlError> {
    let expected = ty.row_bytes(n_elems)?;
    if bytes.len() != expected {
        return Err(GgmlError::ByteLength {
            ty: ty.name(),
            n_elems,
            expected,
            got: bytes.len(),
        });
    }
    let mut out = vec![0f32; n_elems];
    match ty {
        GgmlType::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes(array_at(b, 0));
            }
        }
        GgmlType::F16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16_at(b, 0).to_f32();
            }
        }
        GgmlType::Q4_0 => dequantize_blocks::<BlockQ4_0>(bytes, &mut out),
        GgmlType::Q4_1 => dequantize_blocks::<BlockQ4_1>(bytes, &mut out),
        GgmlType::Q8_0 => dequantize_blocks::<BlockQ8_0>(bytes, &mut out),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_ids_and_names() {
        for ty in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(ty.id()), Some(ty));
        }
        assert_eq!(ggml_type_name(12), "Q4_K");
        assert_eq!(ggml_type_name(30), "BF16");
        assert_eq!(ggml_type_name(4), "unknown");
        assert_eq!(ggml_type_name(9999), "unknown");
        assert_eq!(GgmlType::from_id(12), None);
        assert_eq!(GgmlType::Q4_1.name(), "Q4_1");
    }

    #[test]
    fn row_bytes() {
        assert_eq!(GgmlType::Q4_0.row_bytes(64), Ok(36));
        assert_eq!(GgmlType::Q4_1.row_bytes(576), Ok(360));
        assert_eq!(GgmlType::Q8_0.row_bytes(32), Ok(34));
        assert_eq!(GgmlType::F16.row_bytes(3), Ok(6));
        assert_eq!(GgmlType::F32.row_bytes(3), Ok(12));
        assert!(matches!(
            GgmlType::Q8_0.row_bytes(33),
            Err(GgmlError::PartialBlock { n: 33, .. })
        ));
        assert!(matches!(
            GgmlType::F32.row_bytes(usize::MAX),
            Err(GgmlError::Overflow { .. })
        ));
    }

    /// Packs 32 nibbles the ggml way: byte j = nib[j] | nib[j + 16] << 4.
    fn pack_nibbles(nib: &[u8; 32]) -> [u8; 16] {
        std::array::from_fn(|j| nib[j] | (nib[j + 16] << 4))
    }

    #[test]
    fn q4_0_block() {
        let nib: [u8; 32] = std::array::from_fn(|i| (i % 16) as u8);
        let block = BlockQ4_0 {
            d: f16::from_f32(0.5),
            qs: pack_nibbles(&nib),
        };
        let bytes = block.to_bytes();
        assert_eq!(BlockQ4_0::read(&bytes), block);
        let out = dequantize(GgmlType::Q4_0, &bytes, 32).unwrap();
        let want: Vec<f32> = nib.iter().map(|&n| (n as f32 - 8.0) * 0.5).collect();
        assert_eq!(out, want);
    }

    #[test]
    fn q4_1_block() {
        let nib: [u8; 32] = std::array::from_fn(|i| (31 - i) as u8 % 16);
        let block = BlockQ4_1 {
            d: f16::from_f32(0.25),
            m: f16::from_f32(-1.0),
            qs: pack_nibbles(&nib),
        };
        let bytes = block.to_bytes();
        assert_eq!(BlockQ4_1::read(&bytes), block);
        let out = dequantize(GgmlType::Q4_1, &bytes, 32).unwrap();
        let want: Vec<f32> = nib.iter().map(|&n| n as f32 * 0.25 - 1.0).collect();
        assert_eq!(out, want);
    }

    #[test]
    fn q8_0_blocks_unaligned() {
        let blocks: Vec<BlockQ8_0> = (0..2)
            .map(|b| BlockQ8_0 {
                d: f16::from_f32(if b == 0 { 2.0 } else { -0.125 }),
                qs: std::array::from_fn(|i| (i as i32 * 8 - 128) as i8),
            })
            .collect();
        // One leading byte so the block data starts at an odd address.
        let mut buf = vec![0xAAu8];
        for b in &blocks {
            buf.extend_from_slice(&b.to_bytes());
        }
        let out = dequantize(GgmlType::Q8_0, &buf[1..], 64).unwrap();
        for (i, v) in out.iter().enumerate() {
            let q = ((i % 32) as i32 * 8 - 128) as f32;
            let d = if i < 32 { 2.0 } else { -0.125 };
            assert_eq!(*v, q * d);
        }
    }

    #[test]
    fn float_types() {
        let vals = [1.5f32, -0.0, 65504.0];
        let f32_bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(dequantize(GgmlType::F32, &f32_bytes, 3).unwrap(), vals);
        let f16_bytes: Vec<u8> = vals
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect();
        assert_eq!(dequantize(GgmlType::F16, &f16_bytes, 3).unwrap(), vals);
    }

    #[test]
    fn wrong_lengths_are_errors() {
        let bytes = [0u8; 40];
        assert!(matches!(
            dequantize(GgmlType::Q4_1, &bytes, 32),
            Err(GgmlError::ByteLength {
                expected: 20,
                got: 40,
                ..
            })
        ));
        assert!(matches!(
            dequantize(GgmlType::Q4_0, &bytes[..17], 32),
            Err(GgmlError::ByteLength { .. })
        ));
        assert!(matches!(
            dequantize(GgmlType::Q8_0, &bytes, 31),
            Err(GgmlError::PartialBlock { .. })
        ));
        assert!(matches!(
            dequantize(GgmlType::F32, &bytes[..7], 2),
            Err(GgmlError::ByteLength { .. })
        ));
        assert_eq!(
            dequantize(GgmlType::Q8_0, &[], 0).unwrap(),
            Vec::<f32>::new()
        );
    }

    /// Checks a few values of the real SmolLM2 file against the `gguf` Python package.
    ///
    /// Reference values were printed with gguf 0.19.0 (numpy 2.4.6):
    /// `t = GGUFReader(path).tensors[i]; v = gguf.quants.dequantize(t.data, t.tensor_type)`,
    /// then `v[row, col].item()` (float32 widened exactly to Python float). Offsets below are
    /// absolute file offsets (`t.data_offset`) so this test needs no GGUF parser.
    #[test]
    fn smollm2_real_file() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/assets/SmolLM2-135M-Instruct.Q4_1.gguf"
        );
        let Ok(file) = std::fs::read(path) else {
            eprintln!("skipping: {path} not found");
            return;
        };
        for &(ty, offset, n_cols, row, expect) in REAL_FILE_CASES {
            let row_bytes = ty.row_bytes(n_cols).unwrap();
            let start = offset + row * row_bytes;
            let vals = dequantize(ty, &file[start..start + row_bytes], n_cols).unwrap();
            for &(col, want) in expect {
                assert_eq!(
                    vals[col].to_bits(),
                    want,
                    "{ty:?} row {row} col {col}: {} != {}",
                    vals[col],
                    f32::from_bits(want)
                );
            }
        }
    }

    /// `(type, absolute data offset, row length, row, [(col, f32 bits)])` from the gguf package.
    type RealCase = (GgmlType, usize, usize, usize, &'static [(usize, u32)]);

    /// Reference values for `smollm2_real_file` (token_embd, blk.0.ffn_down, blk.0.attn_norm,
    /// blk.29.attn_v), as printed by the gguf Python package.
    const REAL_FILE_CASES: &[RealCase] = &[
        (
            GgmlType::Q8_0,
            1785664,
            576,
            0,
            &[
                (0, 0xbdda3400),
                (1, 0x3d071400),
                (31, 0xbe4d3700),
                (32, 0xbdbf7600),
                (575, 0x3cf3c000),
            ],
        ),
        (
            GgmlType::Q8_0,
            1785664,
            576,
            1,
            &[
                (0, 0xbcc30000),
                (1, 0xbc820000),
                (31, 0x3f80fc00),
                (32, 0xbcd3a000),
                (575, 0xbe038500),
            ],
        ),
        (
            GgmlType::Q8_0,
            1785664,
            576,
            19556,
            &[
                (0, 0xbd51d000),
                (1, 0x3d233000),
                (31, 0x3e961300),
                (32, 0x3c5ef800),
                (575, 0x3d613000),
            ],
        ),
        (
            GgmlType::Q8_0,
            1785664,
            576,
            49151,
            &[
                (0, 0x3c3c8000),
                (1, 0x3bbc8000),
                (31, 0x3f3b0700),
                (32, 0x3d3c4000),
                (575, 0xbd2ad000),
            ],
        ),
        (
            GgmlType::Q4_1,
            31868992,
            1536,
            0,
            &[
                (0, 0xbea96000),
                (15, 0x3ef68000),
                (16, 0xbf1a0000),
                (31, 0xbd760000),
                (1535, 0x3d834000),
            ],
        ),
        (
            GgmlType::Q4_1,
            31868992,
            1536,
            7,
            &[
                (0, 0x3e350000),
                (15, 0xbd2a0000),
                (16, 0x3c560000),
                (31, 0xbe1a4000),
                (1535, 0xbe04a800),
            ],
        ),
        (
            GgmlType::Q4_1,
            31868992,
            1536,
            575,
            &[
                (0, 0xbd24c000),
                (15, 0x3d816000),
                (16, 0xbdf13000),
                (31, 0x3db65000),
                (1535, 0xbe39b800),
            ],
        ),
        (
            GgmlType::F32,
            31866688,
            576,
            0,
            &[(0, 0x3c650000), (1, 0x3cc30000), (575, 0xbd1d0000)],
        ),
        (
            GgmlType::Q4_1,
            82775872,
            576,
            191,
            &[(0, 0x3cad8000), (100, 0x3df6c000), (575, 0x3d5a0000)],
        ),
    ];
}
