//! ggml tensor storage formats: type ids, block layouts and dequantisation.
//!
//! Mirrors `ggml.h` / `ggml-quants.c` for the formats wgtune reads: the float types (F32, F16,
//! BF16) here, the 32-value "legacy" blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) in [`legacy`] and the
//! 256-value K-quant super-blocks (Q2_K … Q6_K) in [`kquants`]. Blocks are decoded from
//! little-endian bytes one field at a time, so the input slice may have any alignment.
//!
//! Every block type first unpacks into [`Unpacked`] — one unsigned integer code per value plus
//! the scales that apply to it — and its values follow from the type's [`CodeScheme`] with the
//! float operations ggml (and the `gguf` Python package) perform, in the same order, so results
//! are bit-identical to theirs. [`quantize`] goes the other way for the float, legacy and K-quant
//! types ([`Quantize`]). The GPU layout (`kernels::qmatmul`) re-lays the same codes and
//! scales, so the fused kernel decodes the same values.

use half::f16;
use thiserror::Error;

mod kquantize;
pub mod kquants;
pub mod legacy;

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
    /// A float type asked for block codes.
    #[error("{ty} is a float type, not blocks of codes")]
    NotBlocks {
        /// The ggml type name.
        ty: &'static str,
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
#[allow(non_camel_case_types)]
pub enum GgmlType {
    /// 32-bit IEEE float (ggml id 0).
    F32,
    /// 16-bit IEEE float (ggml id 1).
    F16,
    /// bfloat16: the top half of an f32 (ggml id 30).
    BF16,
    /// 4-bit blocks of 32 with one f16 scale, symmetric (ggml id 2).
    Q4_0,
    /// 4-bit blocks of 32 with an f16 scale and an f16 minimum (ggml id 3).
    Q4_1,
    /// 5-bit blocks of 32 with one f16 scale, symmetric (ggml id 6).
    Q5_0,
    /// 5-bit blocks of 32 with an f16 scale and an f16 minimum (ggml id 7).
    Q5_1,
    /// 8-bit blocks of 32 with one f16 scale (ggml id 8).
    Q8_0,
    /// 2-bit super-blocks of 256: 16 sub-blocks with 4-bit scales and mins (ggml id 10).
    Q2_K,
    /// 3-bit super-blocks of 256: 16 sub-blocks with 6-bit signed scales (ggml id 11).
    Q3_K,
    /// 4-bit super-blocks of 256: 8 sub-blocks with 6-bit scales and mins (ggml id 12).
    Q4_K,
    /// 5-bit super-blocks of 256: 8 sub-blocks with 6-bit scales and mins (ggml id 13).
    Q5_K,
    /// 6-bit super-blocks of 256: 16 sub-blocks with 8-bit signed scales (ggml id 14).
    Q6_K,
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
    pub const ALL: [GgmlType; 13] = [
        Self::F32,
        Self::F16,
        Self::BF16,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q2_K,
        Self::Q3_K,
        Self::Q4_K,
        Self::Q5_K,
        Self::Q6_K,
    ];

    /// The supported type with this ggml id, or `None` for any other id.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        Self::ALL.into_iter().find(|t| t.id() == id)
    }

    /// The ggml type id, as stored in GGUF tensor infos.
    pub fn id(&self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q2_K => 10,
            Self::Q3_K => 11,
            Self::Q4_K => 12,
            Self::Q5_K => 13,
            Self::Q6_K => 14,
            Self::BF16 => 30,
        }
    }

    /// ggml's name for this type ("Q4_1", ...).
    pub fn name(&self) -> &'static str {
        ggml_type_name(self.id())
    }

    /// How values are built from codes, for block-quantized types (`None` for float types).
    pub fn scheme(&self) -> Option<CodeScheme> {
        use kquants::*;
        use legacy::*;
        match self {
            Self::F32 | Self::F16 | Self::BF16 => None,
            Self::Q4_0 => Some(BlockQ4_0::SCHEME),
            Self::Q4_1 => Some(BlockQ4_1::SCHEME),
            Self::Q5_0 => Some(BlockQ5_0::SCHEME),
            Self::Q5_1 => Some(BlockQ5_1::SCHEME),
            Self::Q8_0 => Some(BlockQ8_0::SCHEME),
            Self::Q2_K => Some(BlockQ2K::SCHEME),
            Self::Q3_K => Some(BlockQ3K::SCHEME),
            Self::Q4_K => Some(BlockQ4K::SCHEME),
            Self::Q5_K => Some(BlockQ5K::SCHEME),
            Self::Q6_K => Some(BlockQ6K::SCHEME),
        }
    }

    /// Values per block (1 for plain float types).
    pub fn block_size(&self) -> usize {
        self.scheme().map_or(1, |s| s.values)
    }

    /// Bytes per block.
    pub fn block_bytes(&self) -> usize {
        use kquants::*;
        use legacy::*;
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => BlockQ4_0::BYTES,
            Self::Q4_1 => BlockQ4_1::BYTES,
            Self::Q5_0 => BlockQ5_0::BYTES,
            Self::Q5_1 => BlockQ5_1::BYTES,
            Self::Q8_0 => BlockQ8_0::BYTES,
            Self::Q2_K => BlockQ2K::BYTES,
            Self::Q3_K => BlockQ3K::BYTES,
            Self::Q4_K => BlockQ4K::BYTES,
            Self::Q5_K => BlockQ5K::BYTES,
            Self::Q6_K => BlockQ6K::BYTES,
        }
    }

    /// Bits per weight as stored in the file (block bytes · 8 / block values).
    pub fn bits_per_weight(&self) -> f64 {
        self.block_bytes() as f64 * 8.0 / self.block_size() as f64
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

/// How a block-quantized type builds values from unsigned integer codes: per value a code of
/// `lo_bits + hi_bits` bits (`q = code − code_offset`); per super-block of `values` an f32 scale
/// `d` (and `dmin`); for K-quants per sub-block of `sub` values a scale code `s` and min code `m`
/// of `sub_bits` bits. A value is
///
/// - without sub-blocks (legacy types): `q · d`, plus `dmin` (ggml's `m`) when `has_min`;
/// - with sub-blocks (K-quants): `(d · (s − sub_offset)) · q`, minus `dmin · m` when `has_min`.
///
/// Those are ggml's operations in ggml's order (`ggml-quants.c`), hence bit-exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CodeScheme {
    /// Values per (super-)block: one `d` (and `dmin`) each.
    pub values: usize,
    /// Low code bits (2, 4 or 8): the dense bit plane every type has.
    pub lo_bits: u32,
    /// High code bits (0, 1 or 2): a second plane for 3-, 5- and 6-bit codes.
    pub hi_bits: u32,
    /// Subtracted from a code to give its signed value.
    pub code_offset: i32,
    /// Values per sub-block scale (16 or 32), or 0 for types without sub-blocks.
    pub sub: usize,
    /// Bits of a sub-block scale or min code (4 or 8).
    pub sub_bits: u32,
    /// Subtracted from a sub-block scale code.
    pub sub_offset: i32,
    /// Whether values carry an offset (`dmin`).
    pub has_min: bool,
}

impl CodeScheme {
    /// A legacy 32-value block: no sub-blocks.
    const fn legacy(lo_bits: u32, hi_bits: u32, code_offset: i32, has_min: bool) -> Self {
        Self {
            values: 32,
            lo_bits,
            hi_bits,
            code_offset,
            sub: 0,
            sub_bits: 0,
            sub_offset: 0,
            has_min,
        }
    }

    /// Sub-blocks per super-block.
    pub fn subs(&self) -> usize {
        self.values.checked_div(self.sub).unwrap_or(0)
    }

    /// Writes the values of one unpacked block into `out` (length `values`).
    pub fn dequantize_into(&self, u: &Unpacked, out: &mut [f32]) {
        let q = |i: usize| (u.codes[i] as i32 - self.code_offset) as f32;
        if self.sub == 0 {
            for (i, o) in out.iter_mut().enumerate() {
                let v = q(i) * u.d;
                *o = if self.has_min { v + u.dmin } else { v };
            }
            return;
        }
        for (j, chunk) in out.chunks_exact_mut(self.sub).enumerate() {
            let d1 = u.d * (u.scales[j] as i32 - self.sub_offset) as f32;
            let m1 = u.dmin * u.mins[j] as f32;
            for (l, o) in chunk.iter_mut().enumerate() {
                let v = d1 * q(j * self.sub + l);
                *o = if self.has_min { v - m1 } else { v };
            }
        }
    }
}

/// One block unpacked into integer codes and the scales that apply to them (see [`CodeScheme`]);
/// arrays are sized for the largest block, a type uses its first `values` / `subs()` entries.
#[derive(Debug, Clone, PartialEq)]
pub struct Unpacked {
    /// Per value, in element order: the unsigned code.
    pub codes: [u8; 256],
    /// Per sub-block: the scale code.
    pub scales: [u8; 16],
    /// Per sub-block: the min code.
    pub mins: [u8; 16],
    /// The super-block scale.
    pub d: f32,
    /// The super-block min (legacy `m`, K-quant `dmin`), 0 without.
    pub dmin: f32,
}

impl Default for Unpacked {
    fn default() -> Self {
        Self {
            codes: [0; 256],
            scales: [0; 16],
            mins: [0; 16],
            d: 0.0,
            dmin: 0.0,
        }
    }
}

/// A fixed-size ggml block: its file layout and its codes.
pub trait Block: Sized {
    /// Bytes of one block in the file.
    const BYTES: usize;
    /// How its values follow from its codes.
    const SCHEME: CodeScheme;
    /// Decodes one block from exactly `BYTES` little-endian bytes.
    fn read(bytes: &[u8]) -> Self;
    /// Its codes and scales.
    fn unpack(&self, out: &mut Unpacked);
    /// Writes the block's values into `out` (length `SCHEME.values`).
    fn dequantize_into(&self, out: &mut [f32]) {
        let mut u = Unpacked::default();
        self.unpack(&mut u);
        Self::SCHEME.dequantize_into(&u, out);
    }
}

/// A block type with ggml's reference quantizer.
pub trait Quantize: Block {
    /// Quantizes one block of `SCHEME.values` values (`x.len()` must be that) as ggml's
    /// `quantize_row_*_ref` does.
    fn quantize(x: &[f32]) -> Self;
    /// Writes the block in ggml's little-endian layout into `out` (`BYTES` long).
    fn write(&self, out: &mut [u8]);
}

/// Reads a little-endian f16 at `at` (caller guarantees the range is in bounds).
pub(crate) fn f16_at(bytes: &[u8], at: usize) -> f16 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]])
}

/// Copies `N` bytes starting at `at` (caller guarantees the range is in bounds).
pub(crate) fn array_at<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

/// Calls `f` with every block of type `B` in `bytes` (whole blocks, length already checked).
fn for_blocks<B: Block>(bytes: &[u8], mut f: impl FnMut(&B)) {
    for src in bytes.chunks_exact(B::BYTES) {
        f(&B::read(src));
    }
}

/// Unpacks every block of `ty` in `bytes` (`bytes.len()` a multiple of the block size) in order;
/// errors for float types, which have no codes.
pub fn unpack_blocks(
    ty: GgmlType,
    bytes: &[u8],
    mut f: impl FnMut(&Unpacked),
) -> Result<(), GgmlError> {
    use kquants::*;
    use legacy::*;
    let mut u = Unpacked::default();
    macro_rules! each {
        ($b:ty) => {
            for_blocks::<$b>(bytes, |b| {
                b.unpack(&mut u);
                f(&u)
            })
        };
    }
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
            return Err(GgmlError::NotBlocks { ty: ty.name() });
        }
        GgmlType::Q4_0 => each!(BlockQ4_0),
        GgmlType::Q4_1 => each!(BlockQ4_1),
        GgmlType::Q5_0 => each!(BlockQ5_0),
        GgmlType::Q5_1 => each!(BlockQ5_1),
        GgmlType::Q8_0 => each!(BlockQ8_0),
        GgmlType::Q2_K => each!(BlockQ2K),
        GgmlType::Q3_K => each!(BlockQ3K),
        GgmlType::Q4_K => each!(BlockQ4K),
        GgmlType::Q5_K => each!(BlockQ5K),
        GgmlType::Q6_K => each!(BlockQ6K),
    }
    Ok(())
}

/// Byte offsets of the f16 fields (scales, mins) inside one block of `ty` (none for float types).
fn f16_fields(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => &[],
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q6_K => &[208],
    }
}

/// `n_elems` values of block type `ty` with arbitrary codes and small finite f16 scales of both
/// signs (a deterministic LCG from `seed`): inputs for kernel tests and benchmarks, not the
/// quantization of anything.
pub fn synthetic_blocks(ty: GgmlType, n_elems: usize, seed: u64) -> Result<Vec<u8>, GgmlError> {
    if ty.scheme().is_none() {
        return Err(GgmlError::NotBlocks { ty: ty.name() });
    }
    let mut s = seed;
    let mut bytes: Vec<u8> = (0..ty.row_bytes(n_elems)?)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (s >> 56) as u8
        })
        .collect();
    for (b, block) in bytes.chunks_exact_mut(ty.block_bytes()).enumerate() {
        for (f, &at) in f16_fields(ty).iter().enumerate() {
            let v = [0.011f32, -0.027, 0.05, -1.5e-6][(b + f) % 4];
            block[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
        }
    }
    Ok(bytes)
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
        GgmlType::BF16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
            }
        }
        _ => {
            let scheme = ty.scheme().expect("block types have a scheme");
            let mut chunks = out.chunks_exact_mut(scheme.values);
            unpack_blocks(ty, bytes, |u| {
                if let Some(dst) = chunks.next() {
                    scheme.dequantize_into(u, dst);
                }
            })?;
        }
    }
    Ok(out)
}

/// bf16 bits of `v` as gguf-py (and ggml's `ggml_compute_fp32_to_bf16`) round it: NaNs become
/// quiet NaNs keeping their sign and top payload bits, everything else rounds to nearest even
/// (so large finite values may round to infinity).
pub fn f32_to_bf16_bits(v: f32) -> u16 {
    let mut n = v.to_bits();
    if n & 0x7fff_ffff > 0x7f80_0000 {
        n = (n & 0xffff_0000) | (64 << 16);
    }
    ((u64::from(n) + 0x7fff + u64::from((n >> 16) & 1)) >> 16) as u16
}

/// Writes `f(v)` for every value into consecutive `N`-byte slots of `out`.
fn put_each<const N: usize>(out: &mut [u8], values: &[f32], f: impl Fn(f32) -> [u8; N]) {
    for (dst, &v) in out.chunks_exact_mut(N).zip(values) {
        dst.copy_from_slice(&f(v));
    }
}

/// Encodes every block of `values` (a whole number of blocks) as block type `B`.
fn quantize_blocks<B: Quantize>(values: &[f32], out: &mut [u8]) {
    let chunks = values.chunks_exact(B::SCHEME.values);
    for (x, dst) in chunks.zip(out.chunks_exact_mut(B::BYTES)) {
        B::quantize(x).write(dst);
    }
}

/// Encodes `values` (rows back to back; the length a multiple of the block size) as type `ty`,
/// byte for byte as ggml's reference quantizers do: F32 as is, F16 rounded to nearest even, BF16
/// by [`f32_to_bf16_bits`], the legacy blocks as `quantize_row_q{4_0,4_1,5_0,5_1,8_0}_ref` (and
/// gguf-py's `gguf.quants.quantize`), the K-quants Q2_K … Q6_K as
/// `quantize_row_q{2,3,4,5,6}_K_ref` — what `llama_model_quantize` writes without an importance
/// matrix. A length that does not fill whole blocks is [`GgmlError::PartialBlock`].
///
/// Where the two legacy references disagree, on the sign of a zero scale, this follows gguf-py's
/// `argmax` for Q4_0 / Q5_0 (an all-zero block takes its first value's sign) and ggml for the
/// min and max of Q4_1 / Q5_1 (the first of equal zeros; numpy's reduction picks either).
/// Inputs are expected finite: NaN has no defined block encoding in either reference.
pub fn quantize(ty: GgmlType, values: &[f32]) -> Result<Vec<u8>, GgmlError> {
    use kquants::*;
    use legacy::*;
    let mut out = vec![0u8; ty.row_bytes(values.len())?];
    match ty {
        GgmlType::F32 => put_each(&mut out, values, f32::to_le_bytes),
        GgmlType::F16 => put_each(&mut out, values, |v| f16::from_f32(v).to_le_bytes()),
        GgmlType::BF16 => put_each(&mut out, values, |v| f32_to_bf16_bits(v).to_le_bytes()),
        GgmlType::Q4_0 => quantize_blocks::<BlockQ4_0>(values, &mut out),
        GgmlType::Q4_1 => quantize_blocks::<BlockQ4_1>(values, &mut out),
        GgmlType::Q5_0 => quantize_blocks::<BlockQ5_0>(values, &mut out),
        GgmlType::Q5_1 => quantize_blocks::<BlockQ5_1>(values, &mut out),
        GgmlType::Q8_0 => quantize_blocks::<BlockQ8_0>(values, &mut out),
        GgmlType::Q2_K => quantize_blocks::<BlockQ2K>(values, &mut out),
        GgmlType::Q3_K => quantize_blocks::<BlockQ3K>(values, &mut out),
        GgmlType::Q4_K => quantize_blocks::<BlockQ4K>(values, &mut out),
        GgmlType::Q5_K => quantize_blocks::<BlockQ5K>(values, &mut out),
        GgmlType::Q6_K => quantize_blocks::<BlockQ6K>(values, &mut out),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::legacy::*;
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
        assert_eq!(GgmlType::from_id(12), Some(GgmlType::Q4_K));
        assert_eq!(GgmlType::from_id(20), None);
        assert_eq!(GgmlType::Q6_K.bits_per_weight(), 6.5625);
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

    #[test]
    fn quantize_errors_name_the_type() {
        let err = quantize(GgmlType::Q5_1, &[1.0; 48]).unwrap_err();
        assert_eq!(
            err,
            GgmlError::PartialBlock {
                ty: "Q5_1",
                n: 48,
                block_size: 32
            }
        );
        assert!(err.to_string().contains("Q5_1"), "{err}");
        assert_eq!(quantize(GgmlType::Q8_0, &[]).unwrap(), Vec::<u8>::new());
        assert_eq!(quantize(GgmlType::F16, &[1.0]).unwrap(), vec![0x00, 0x3c]);
    }

    #[test]
    fn quantize_q4_0_exact_scale() {
        // max -8 gives d = 1: code = (int)(x + 8.5), 8.0 would be 16 and clamps to 15.
        let mut x: Vec<f32> = (0..32).map(|j| -8.0 + 0.5 * j as f32).collect();
        x[31] = 8.0;
        let b = quantize(GgmlType::Q4_0, &x).unwrap();
        assert_eq!(&b[..2], &f16::from_f32(1.0).to_le_bytes());
        let codes: Vec<u8> = (0..32)
            .map(|j| {
                if j < 16 {
                    b[2 + j] & 15
                } else {
                    b[2 + j - 16] >> 4
                }
            })
            .collect();
        let want: Vec<u8> = x.iter().map(|v| ((v + 8.5) as u8).min(15)).collect();
        assert_eq!(codes, want);
        assert_eq!(codes[1], 1); // -7.5 + 8.5 = 1.0 exactly
        assert_eq!(codes[31], 15);
    }

    #[test]
    fn quantize_zero_signs() {
        let mut x = [0.0f32; 32];
        // All +0: max = +0, d = +0 / -8 = -0 (gguf-py and ggml agree).
        assert_eq!(&quantize(GgmlType::Q4_0, &x).unwrap()[..2], &[0x00, 0x80]);
        // First value -0: gguf-py's argmax takes it, d = -0 / -8 = +0.
        x[0] = -0.0;
        assert_eq!(&quantize(GgmlType::Q5_0, &x).unwrap()[..2], &[0x00, 0x00]);
        // Q4_1 / Q5_1 keep the first of equal zeros as min (ggml's strict `<`).
        assert_eq!(&quantize(GgmlType::Q4_1, &x).unwrap()[2..4], &[0x00, 0x80]);
        x[0] = 0.0;
        x[5] = -0.0;
        x[9] = 1.0;
        assert_eq!(&quantize(GgmlType::Q5_1, &x).unwrap()[2..4], &[0x00, 0x00]);
    }

    #[test]
    fn bf16_rounding() {
        assert_eq!(f32_to_bf16_bits(1.0), 0x3f80);
        // Ties to even: 1 + 2^-8 is halfway between 0x3f80 and 0x3f81.
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(f32_to_bf16_bits(f32::MAX), 0x7f80);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x7f80_0001)), 0x7fc0);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0xffa0_0000)), 0xffe0);
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
