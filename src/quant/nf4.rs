//! NF4 (4-bit NormalFloat) blockwise quantisation, a CPU reference of bitsandbytes.
//!
//! Mirrors `bitsandbytes.functional.quantize_4bit(quant_type="nf4")` / `dequantize_4bit` as
//! bitsandbytes 0.50.2 computes them on CPU (`backends/default/ops.py`), bit for bit:
//!
//! * the input is flattened row-major and cut into blocks of `blocksize` values;
//! * a full block stores `absmax = max|x|` (0 for an all-zero block) and scales by the fp32
//!   reciprocal: `s = clamp(x * (1 / max(absmax, 1e-38)), -1, 1)`;
//! * the partial last block stores `am = max(max|x|, 1e-38)` (so an all-zero tail stores 1e-38)
//!   and scales by fp32 DIVISION: `s = clamp(x / am, -1, 1)`;
//! * the nibble is `bucketize(s, midpoints)` with `midpoints[i] = (code[i] + code[i+1]) / 2` in
//!   fp32, i.e. the number of midpoints strictly below `s`: an exact midpoint goes to the LOWER
//!   index, and NaN goes to 15 (torch's binary search puts NaN after everything);
//! * an odd element count is padded with one `s = 0` (nibble 7); byte `i` is
//!   `(nib[2i] << 4) | nib[2i+1]`;
//! * dequantisation is `code[nib] * absmax` in fp32.
//!
//! A NaN anywhere in a block makes that block's absmax NaN (torch's `max` propagates NaN).

use super::torch_sum::torch_mean_f32;
use thiserror::Error;

/// bitsandbytes' NF4 code table (`get_4bit_type("nf4")`), ascending, exact fp32 values.
pub const NF4_CODE: [f32; 16] = [
    f32::from_bits(0xbf80_0000), // -1.0
    f32::from_bits(0xbf32_39b1), // -0.6961928009986877
    f32::from_bits(0xbf06_6b30), // -0.5250730514526367
    f32::from_bits(0xbeca_32a0), // -0.39491748809814453
    f32::from_bits(0xbe91_a24d), // -0.28444138169288635
    f32::from_bits(0xbe3d_353f), // -0.18477343022823334
    f32::from_bits(0xbdba_7871), // -0.09105003625154495
    f32::from_bits(0x0000_0000), // 0.0
    f32::from_bits(0x3da2_faff), // 0.07958029955625534
    f32::from_bits(0x3e24_cae3), // 0.16093020141124725
    f32::from_bits(0x3e7c_04dd), // 0.24611230194568634
    f32::from_bits(0x3ead_033a), // 0.33791524171829224
    f32::from_bits(0x3ee1_a4b8), // 0.44070982933044434
    f32::from_bits(0x3f10_07ab), // 0.5626170039176941
    f32::from_bits(0x3f39_13b3), // 0.7229568362236023
    f32::from_bits(0x3f80_0000), // 1.0
];

/// The block sizes bitsandbytes' `quantize_4bit` accepts.
pub const NF4_BLOCKSIZES: [usize; 8] = [32, 64, 128, 256, 512, 1024, 2048, 4096];

/// Smallest absmax used as a divisor (bnb's `clamp(min=1e-38)`, an fp32 subnormal).
const ABSMAX_FLOOR: f32 = 1e-38;

/// Errors from NF4 quantisation and dequantisation.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Nf4Error {
    /// A block size bitsandbytes does not accept.
    #[error("NF4 blocksize {0} is not one of 32, 64, 128, ..., 4096")]
    BadBlocksize(usize),
    /// The shape's element count differs from the number of values given.
    #[error("shape {shape:?} holds {expected} values, got {got}")]
    ShapeMismatch {
        /// The shape supplied.
        shape: Vec<usize>,
        /// Its element count (saturating on overflow).
        expected: usize,
        /// Values supplied.
        got: usize,
    },
    /// The packed bytes do not hold exactly `ceil(n / 2)` bytes.
    #[error("NF4 data for {n} values must be {expected} bytes, got {got}")]
    PackedLength {
        /// Number of values.
        n: usize,
        /// Bytes required.
        expected: usize,
        /// Bytes supplied.
        got: usize,
    },
    /// A double-quant code table that does not have 256 entries.
    #[error("double-quant code table must have 256 entries, got {0}")]
    CodeLength(usize),
    /// The absmax vector does not hold exactly one value per block.
    #[error(
        "NF4 absmax for {n} values in blocks of {blocksize} must have {expected} entries, got {got}"
    )]
    AbsmaxLength {
        /// Number of values.
        n: usize,
        /// The block size.
        blocksize: usize,
        /// Entries required.
        expected: usize,
        /// Entries supplied.
        got: usize,
    },
}

/// An NF4-quantised tensor in bitsandbytes' layout (packed nibbles plus fp32 per-block absmax).
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4Tensor {
    /// Two nibbles per byte, high nibble first; `ceil(n / 2)` bytes.
    pub packed: Vec<u8>,
    /// One fp32 scale per block of `blocksize` values (the last block may be partial).
    pub absmax: Vec<f32>,
    /// Logical shape of the original tensor (row-major).
    pub shape: Vec<usize>,
    /// Values per quantisation block.
    pub blocksize: usize,
}

impl Nf4Tensor {
    /// Number of logical values (product of `shape`, saturating on overflow).
    pub fn numel(&self) -> usize {
        shape_numel(&self.shape)
    }
}

/// Number of values of `shape` (saturating on overflow).
pub fn shape_numel(shape: &[usize]) -> usize {
    shape.iter().fold(1usize, |a, &d| a.saturating_mul(d))
}

/// Refuse a blocksize bitsandbytes does not use.
pub fn check_blocksize(blocksize: usize) -> Result<(), Nf4Error> {
    if NF4_BLOCKSIZES.contains(&blocksize) {
        Ok(())
    } else {
        Err(Nf4Error::BadBlocksize(blocksize))
    }
}

/// Midpoints between adjacent NF4 codes, computed in fp32 exactly as bnb does.
fn midpoints() -> [f32; 15] {
    let mut m = [0.0f32; 15];
    for (i, v) in m.iter_mut().enumerate() {
        *v = (NF4_CODE[i] + NF4_CODE[i + 1]) / 2.0;
    }
    m
}

/// Nibble for a scaled value: `torch.bucketize(s, midpoints)` (right=False).
fn nibble(s: f32, mids: &[f32; 15]) -> u8 {
    if s.is_nan() {
        return 15;
    }
    // Number of midpoints strictly below s; at an exact midpoint the lower index wins.
    mids.iter().filter(|&&m| m < s).count() as u8
}

/// torch's `abs().max()` over a block: NaN-propagating maximum of |x| (0 for an empty slice).
fn block_absmax(block: &[f32]) -> f32 {
    let mut m = 0.0f32;
    for &x in block {
        let a = x.abs();
        if a.is_nan() {
            return f32::NAN;
        }
        if a > m {
            m = a;
        }
    }
    m
}

/// `clamp(min=1e-38)` that keeps NaN, as torch does.
fn floor_absmax(a: f32) -> f32 {
    if a < ABSMAX_FLOOR { ABSMAX_FLOOR } else { a }
}

/// Quantise a flat vector to NF4 (shape `[values.len()]`), bitsandbytes-exact.
pub fn quantize_nf4(values: &[f32], blocksize: usize) -> Result<Nf4Tensor, Nf4Error> {
    quantize_nf4_shaped(values, &[values.len()], blocksize)
}

/// Quantise a row-major tensor of the given shape to NF4, bitsandbytes-exact.
pub fn quantize_nf4_shaped(
    values: &[f32],
    shape: &[usize],
    blocksize: usize,
) -> Result<Nf4Tensor, Nf4Error> {
    check_blocksize(blocksize)?;
    let expected = shape_numel(shape);
    if expected != values.len() {
        return Err(Nf4Error::ShapeMismatch {
            shape: shape.to_vec(),
            expected,
            got: values.len(),
        });
    }
    let mids = midpoints();
    let n = values.len();
    let mut absmax = Vec::with_capacity(n.div_ceil(blocksize));
    let mut nibs: Vec<u8> = Vec::with_capacity(n + 1);
    for block in values.chunks(blocksize) {
        if block.len() == blocksize {
            let am = block_absmax(block);
            let inv = 1.0f32 / floor_absmax(am);
            nibs.extend(
                block
                    .iter()
                    .map(|&x| nibble((x * inv).clamp(-1.0, 1.0), &mids)),
            );
            absmax.push(am);
        } else {
            // bnb's partial-block path stores the clamped absmax and divides.
            let am = floor_absmax(block_absmax(block));
            nibs.extend(
                block
                    .iter()
                    .map(|&x| nibble((x / am).clamp(-1.0, 1.0), &mids)),
            );
            absmax.push(am);
        }
    }
    if nibs.len() % 2 == 1 {
        nibs.push(nibble(0.0, &mids));
    }
    let packed = nibs.chunks_exact(2).map(|p| (p[0] << 4) | p[1]).collect();
    Ok(Nf4Tensor {
        packed,
        absmax,
        shape: shape.to_vec(),
        blocksize,
    })
}

/// Dequantise an NF4 tensor to fp32 (`code[nib] * absmax`), bitsandbytes-exact.
pub fn dequantize_nf4(t: &Nf4Tensor) -> Result<Vec<f32>, Nf4Error> {
    check_blocksize(t.blocksize)?;
    let n = t.numel();
    let expected = n.div_ceil(2);
    if t.packed.len() != expected {
        return Err(Nf4Error::PackedLength {
            n,
            expected,
            got: t.packed.len(),
        });
    }
    let blocks = n.div_ceil(t.blocksize);
    if t.absmax.len() != blocks {
        return Err(Nf4Error::AbsmaxLength {
            n,
            blocksize: t.blocksize,
            expected: blocks,
            got: t.absmax.len(),
        });
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let byte = t.packed[i / 2];
        let nib = if i % 2 == 0 { byte >> 4 } else { byte & 0x0f };
        out.push(NF4_CODE[nib as usize] * t.absmax[i / t.blocksize]);
    }
    Ok(out)
}

/// Dequantise a double-quantised absmax vector: `code[q] * nested_absmax[i / blocksize] + offset`.
///
/// This is bnb's `dequantize_blockwise(qabsmax, state2) + offset` (fp32 multiply, then fp32 add);
/// `code` is the 256-entry dynamic map stored with the checkpoint (`nested_quant_map`), and
/// bnb's nested `blocksize` is 256.
pub fn dequantize_absmax_dq(
    qabsmax: &[u8],
    nested_absmax: &[f32],
    code: &[f32],
    offset: f32,
    blocksize: usize,
) -> Result<Vec<f32>, Nf4Error> {
    if blocksize == 0 {
        return Err(Nf4Error::BadBlocksize(blocksize));
    }
    let n = qabsmax.len();
    let blocks = n.div_ceil(blocksize);
    if nested_absmax.len() != blocks {
        return Err(Nf4Error::AbsmaxLength {
            n,
            blocksize,
            expected: blocks,
            got: nested_absmax.len(),
        });
    }
    if code.len() != 256 {
        return Err(Nf4Error::CodeLength(code.len()));
    }
    Ok(qabsmax
        .iter()
        .enumerate()
        .map(|(i, &q)| code[q as usize] * nested_absmax[i / blocksize] + offset)
        .collect())
}

/// Block size bitsandbytes uses for the nested (second-level) quantisation of absmax.
pub const NF4_NESTED_BLOCKSIZE: usize = 256;

/// bitsandbytes' signed dynamic 8-bit map (`create_dynamic_map(signed=True)`), fp32 bit patterns.
pub const DYNAMIC_CODE_BITS: [u32; 256] = [
    0xbf7e3333, 0xbf7a999a, 0xbf770000, 0xbf736666, 0xbf6fcccd, 0xbf6c3333, 0xbf68999a, 0xbf650000,
    0xbf616666, 0xbf5dcccd, 0xbf5a3333, 0xbf56999a, 0xbf530000, 0xbf4f6666, 0xbf4bcccd, 0xbf483333,
    0xbf44999a, 0xbf410000, 0xbf3d6666, 0xbf39cccd, 0xbf363334, 0xbf32999a, 0xbf2f0000, 0xbf2b6666,
    0xbf27cccd, 0xbf243334, 0xbf20999a, 0xbf1d0000, 0xbf196666, 0xbf15cccd, 0xbf123334, 0xbf0e999a,
    0xbf0b0000, 0xbf076666, 0xbf03cccc, 0xbf003333, 0xbef93332, 0xbef20000, 0xbeeacccc, 0xbee3999a,
    0xbedc6666, 0xbed53333, 0xbece0000, 0xbec6cccc, 0xbebf999a, 0xbeb86666, 0xbeb13333, 0xbeaa0000,
    0xbea2cccc, 0xbe9b999a, 0xbe946666, 0xbe8d3334, 0xbe860000, 0xbe7d9999, 0xbe6f3333, 0xbe60cccd,
    0xbe526666, 0xbe440000, 0xbe35999a, 0xbe273333, 0xbe18cccd, 0xbe0a6666, 0xbdf80000, 0xbddb3334,
    0xbdc9eb85, 0xbdc428f7, 0xbdbe6667, 0xbdb8a3d7, 0xbdb2e148, 0xbdad1eb8, 0xbda75c2a, 0xbda1999a,
    0xbd9bd70a, 0xbd96147b, 0xbd9051eb, 0xbd8a8f5d, 0xbd84cccd, 0xbd7e147b, 0xbd728f5d, 0xbd670a3d,
    0xbd5b851f, 0xbd500000, 0xbd447ae1, 0xbd38f5c3, 0xbd2d70a3, 0xbd21eb85, 0xbd166667, 0xbd0ae148,
    0xbcfeb852, 0xbce7ae15, 0xbcd0a3d7, 0xbcb9999a, 0xbca28f5d, 0xbc8b851f, 0xbc68f5c3, 0xbc3ae148,
    0xbc1f3b64, 0xbc160418, 0xbc0ccccd, 0xbc039581, 0xbbf4bc6a, 0xbbe24dd3, 0xbbcfdf3b, 0xbbbd70a4,
    0xbbab020d, 0xbb989374, 0xbb8624dd, 0xbb676c8a, 0xbb428f5c, 0xbb1db22d, 0xbaf1a9fc, 0xbaa7ef9d,
    0xba7765ff, 0xba59e83e, 0xba3c6a80, 0xba1eecc1, 0xba016f01, 0xb9c7e283, 0xb98ce705, 0xb923d70b,
    0xb8ba1f4b, 0xb88aefb3, 0xb8378034, 0xb7b24206, 0xb70205ff, 0xb65a1a94, 0xb513a3b7, 0x00000000,
    0x3513a3b7, 0x365a1a94, 0x370205ff, 0x37b24206, 0x38378034, 0x388aefb3, 0x38ba1f4b, 0x3923d70b,
    0x398ce705, 0x39c7e283, 0x3a016f01, 0x3a1eecc1, 0x3a3c6a80, 0x3a59e83e, 0x3a7765ff, 0x3aa7ef9d,
    0x3af1a9fc, 0x3b1db22d, 0x3b428f5c, 0x3b676c8a, 0x3b8624dd, 0x3b989374, 0x3bab020d, 0x3bbd70a4,
    0x3bcfdf3b, 0x3be24dd3, 0x3bf4bc6a, 0x3c039581, 0x3c0ccccd, 0x3c160418, 0x3c1f3b64, 0x3c3ae148,
    0x3c68f5c3, 0x3c8b851f, 0x3ca28f5d, 0x3cb9999a, 0x3cd0a3d7, 0x3ce7ae15, 0x3cfeb852, 0x3d0ae148,
    0x3d166667, 0x3d21eb85, 0x3d2d70a3, 0x3d38f5c3, 0x3d447ae1, 0x3d500000, 0x3d5b851f, 0x3d670a3d,
    0x3d728f5d, 0x3d7e147b, 0x3d84cccd, 0x3d8a8f5d, 0x3d9051eb, 0x3d96147b, 0x3d9bd70a, 0x3da1999a,
    0x3da75c2a, 0x3dad1eb8, 0x3db2e148, 0x3db8a3d7, 0x3dbe6667, 0x3dc428f7, 0x3dc9eb85, 0x3ddb3334,
    0x3df80000, 0x3e0a6666, 0x3e18cccd, 0x3e273333, 0x3e35999a, 0x3e440000, 0x3e526666, 0x3e60cccd,
    0x3e6f3333, 0x3e7d9999, 0x3e860000, 0x3e8d3334, 0x3e946666, 0x3e9b999a, 0x3ea2cccc, 0x3eaa0000,
    0x3eb13333, 0x3eb86666, 0x3ebf999a, 0x3ec6cccc, 0x3ece0000, 0x3ed53333, 0x3edc6666, 0x3ee3999a,
    0x3eeacccc, 0x3ef20000, 0x3ef93332, 0x3f003333, 0x3f03cccc, 0x3f076666, 0x3f0b0000, 0x3f0e999a,
    0x3f123334, 0x3f15cccd, 0x3f196666, 0x3f1d0000, 0x3f20999a, 0x3f243334, 0x3f27cccd, 0x3f2b6666,
    0x3f2f0000, 0x3f32999a, 0x3f363334, 0x3f39cccd, 0x3f3d6666, 0x3f410000, 0x3f44999a, 0x3f483333,
    0x3f4bcccd, 0x3f4f6666, 0x3f530000, 0x3f56999a, 0x3f5a3333, 0x3f5dcccd, 0x3f616666, 0x3f650000,
    0x3f68999a, 0x3f6c3333, 0x3f6fcccd, 0x3f736666, 0x3f770000, 0x3f7a999a, 0x3f7e3333, 0x3f800000,
];

/// Entries in bnb's CPU quantisation lookup table (`kLUTSize`).
const LUT_SIZE: usize = 65536;

/// An NF4 tensor with double-quantised statistics (bnb `compress_statistics=True`).
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4DoubleQuant {
    /// The NF4 tensor; its `absmax` holds the fp32 first-level scales before double quantisation.
    pub tensor: Nf4Tensor,
    /// 8-bit codes of `absmax - offset` (bnb `quant_state.absmax`), one per NF4 block.
    pub quantized_absmax: Vec<u8>,
    /// fp32 scale per nested block of `nested_blocksize` codes (bnb `state2.absmax`).
    pub nested_absmax: Vec<f32>,
    /// The 256-entry dynamic code table (bnb `state2.code`, saved as `nested_quant_map`).
    pub nested_code: Vec<f32>,
    /// Mean of the fp32 absmax vector, subtracted before nested quantisation (bnb `offset`).
    pub offset: f32,
    /// Nested block size (always [`NF4_NESTED_BLOCKSIZE`]).
    pub nested_blocksize: usize,
}

/// bitsandbytes' signed dynamic 8-bit code table as fp32 values.
pub fn dynamic_code() -> Vec<f32> {
    DYNAMIC_CODE_BITS
        .iter()
        .map(|&b| f32::from_bits(b))
        .collect()
}

/// bnb's CPU lookup table: LUT bin `i` (value `2i / 65535 - 1`) to nearest-code index by midpoints.
fn build_quantize_lut(code: &[f32; 256]) -> Vec<u8> {
    let mut mids = [0.0f32; 255];
    for (i, m) in mids.iter_mut().enumerate() {
        *m = 0.5 * (code[i] + code[i + 1]);
    }
    let mut lut = Vec::with_capacity(LUT_SIZE);
    let mut idx = 0usize;
    for i in 0..LUT_SIZE {
        let val = (2.0 * i as f32) / (LUT_SIZE - 1) as f32 - 1.0;
        while idx < 255 && mids[idx] < val {
            idx += 1;
        }
        lut.push(idx as u8);
    }
    lut
}

/// bnb's `norm_to_lut_index`: `(u16)(int)fma((clamp(v) + 1) * 0.5, 65535, 0.5)`; NaN gives 0.
fn lut_index(v: f32) -> usize {
    // std::clamp keeps NaN, as f32::clamp does.
    let v = v.clamp(-1.0, 1.0);
    let t = ((v + 1.0) * 0.5).mul_add((LUT_SIZE - 1) as f32, 0.5);
    // cvttss2si then the low 16 bits; t is NaN or in [0, 65535.5], so `as` is exact here.
    (t as i32 as u16) as usize
}

/// bnb 0.50.2's native CPU `quantize_blockwise` (fp32), bit for bit; returns (codes, absmax).
///
/// Per block: `absmax = max|x|` ignoring NaN (0 for an all-zero block, whose codes are all 0);
/// `v = x * (1 / absmax)`; code index = `lut[norm_to_lut_index(v)]` with bnb's 65536-bin table
/// (not exact nearest-code rounding: values within a bin of a midpoint can go either way).
pub fn quantize_blockwise_8bit(
    values: &[f32],
    code: &[f32],
    blocksize: usize,
) -> Result<(Vec<u8>, Vec<f32>), Nf4Error> {
    if blocksize == 0 {
        return Err(Nf4Error::BadBlocksize(blocksize));
    }
    let code: &[f32; 256] = code
        .try_into()
        .map_err(|_| Nf4Error::CodeLength(code.len()))?;
    let lut = build_quantize_lut(code);
    let mut out = Vec::with_capacity(values.len());
    let mut absmax = Vec::with_capacity(values.len().div_ceil(blocksize));
    for block in values.chunks(blocksize) {
        let mut am = 0.0f32;
        for &x in block {
            let a = x.abs();
            if a > am {
                am = a;
            }
        }
        absmax.push(am);
        if am == 0.0 {
            out.extend(std::iter::repeat_n(0u8, block.len()));
            continue;
        }
        let inv = 1.0f32 / am;
        out.extend(block.iter().map(|&x| lut[lut_index(x * inv)]));
    }
    Ok((out, absmax))
}

/// Quantise to NF4 with double-quantised absmax, as bnb `quantize_4bit(compress_statistics=True)`.
///
/// `offset = absmax.mean()` (torch's fp32 CPU sum, see [`torch_sum_f32`]), then
/// `quantize_blockwise(absmax - offset, dynamic_code, 256)` on bnb's native CPU kernel.
pub fn quantize_nf4_double(
    values: &[f32],
    shape: &[usize],
    blocksize: usize,
) -> Result<Nf4DoubleQuant, Nf4Error> {
    let tensor = quantize_nf4_shaped(values, shape, blocksize)?;
    let offset = torch_mean_f32(&tensor.absmax);
    let centred: Vec<f32> = tensor.absmax.iter().map(|&a| a - offset).collect();
    let nested_code = dynamic_code();
    let (quantized_absmax, nested_absmax) =
        quantize_blockwise_8bit(&centred, &nested_code, NF4_NESTED_BLOCKSIZE)?;
    Ok(Nf4DoubleQuant {
        tensor,
        quantized_absmax,
        nested_absmax,
        nested_code,
        offset,
        nested_blocksize: NF4_NESTED_BLOCKSIZE,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::{Dtype, SafeTensors};

    const CASES: [&str; 10] = [
        "normal",
        "zero_block",
        "partial",
        "odd",
        "zero_tail",
        "ties",
        "neg_absmax",
        "bs128",
        "partial_bs32",
        "wide",
    ];

    fn fixture_bytes() -> Vec<u8> {
        let p = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/nf4/cases.safetensors"
        );
        std::fs::read(p).expect("read NF4 fixture (run tests/fixtures/gen_nf4.py)")
    }

    fn f32s(st: &SafeTensors, name: &str) -> (Vec<f32>, Vec<usize>) {
        let t = st.tensor(name).expect(name);
        assert_eq!(t.dtype(), Dtype::F32, "{name}");
        let v = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        (v, t.shape().to_vec())
    }

    fn u8s(st: &SafeTensors, name: &str) -> Vec<u8> {
        let t = st.tensor(name).expect(name);
        assert_eq!(t.dtype(), Dtype::U8, "{name}");
        t.data().to_vec()
    }

    fn i64_scalar(st: &SafeTensors, name: &str) -> i64 {
        let t = st.tensor(name).expect(name);
        assert_eq!(t.dtype(), Dtype::I64, "{name}");
        let d = t.data();
        i64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn code_table_matches_bnb_literals() {
        let lit: [f64; 16] = [
            -1.0,
            -0.6961928009986877,
            -0.5250730514526367,
            -0.39491748809814453,
            -0.28444138169288635,
            -0.18477343022823334,
            -0.09105003625154495,
            0.0,
            0.07958029955625534,
            0.16093020141124725,
            0.24611230194568634,
            0.33791524171829224,
            0.44070982933044434,
            0.5626170039176941,
            0.7229568362236023,
            1.0,
        ];
        for (c, l) in NF4_CODE.iter().zip(lit) {
            assert_eq!(c.to_bits(), (l as f32).to_bits());
        }
    }

    #[test]
    fn matches_bitsandbytes_fixtures() {
        let bytes = fixture_bytes();
        let st = SafeTensors::deserialize(&bytes).expect("parse fixture");
        for case in CASES {
            let (input, shape) = f32s(&st, &format!("{case}.input"));
            let bs = i64_scalar(&st, &format!("{case}.blocksize")) as usize;
            let packed = u8s(&st, &format!("{case}.packed"));
            let (absmax, _) = f32s(&st, &format!("{case}.absmax"));
            let (deq, _) = f32s(&st, &format!("{case}.dequant"));

            let q = quantize_nf4_shaped(&input, &shape, bs).expect("quantize");
            assert_eq!(bits(&q.absmax), bits(&absmax), "{case}: absmax");
            assert_eq!(q.packed, packed, "{case}: packed");
            let d = dequantize_nf4(&q).expect("dequantize");
            assert_eq!(bits(&d), bits(&deq), "{case}: dequant");
        }
    }

    #[test]
    fn double_quant_dequant_matches_bitsandbytes() {
        let bytes = fixture_bytes();
        let st = SafeTensors::deserialize(&bytes).expect("parse fixture");
        for (pre, want) in [
            ("dqvec.", "dqvec.dequant"),
            ("normal.dq_", "normal.dq_absmax_dequant"),
            ("partial.dq_", "partial.dq_absmax_dequant"),
        ] {
            let q = u8s(&st, &format!("{pre}qabsmax"));
            let (nested, _) = f32s(&st, &format!("{pre}nested_absmax"));
            let (code, _) = f32s(&st, &format!("{pre}code"));
            let (offset, _) = f32s(&st, &format!("{pre}offset"));
            let (expect, _) = f32s(&st, want);
            let got = dequantize_absmax_dq(&q, &nested, &code, offset[0], 256).expect("dq");
            assert_eq!(bits(&got), bits(&expect), "{pre}");
        }
        assert_eq!(
            dequantize_absmax_dq(&[0], &[1.0], &[0.0; 3], 0.0, 256),
            Err(Nf4Error::CodeLength(3))
        );
    }

    #[test]
    fn ties_go_to_lower_index() {
        let mids = midpoints();
        for (i, &m) in mids.iter().enumerate() {
            assert_eq!(nibble(m, &mids) as usize, i);
            assert_eq!(nibble(m.next_up(), &mids) as usize, i + 1);
        }
        assert_eq!(nibble(0.0, &mids), 7);
        assert_eq!(nibble(-1.0, &mids), 0);
        assert_eq!(nibble(1.0, &mids), 15);
    }

    #[test]
    fn zero_blocks_and_padding() {
        let q = quantize_nf4(&[0.0; 64], 64).expect("quantize");
        assert!(q.packed.iter().all(|&b| b == 0x77));
        assert_eq!(q.absmax, vec![0.0]);
        let q = quantize_nf4(&[0.0; 3], 64).expect("quantize");
        assert_eq!(q.packed, vec![0x77, 0x77]);
        assert_eq!(q.absmax[0].to_bits(), 1e-38f32.to_bits());
        assert_eq!(dequantize_nf4(&q).expect("dequantize"), vec![0.0; 3]);
        let q = quantize_nf4(&[], 64).expect("quantize");
        assert!(q.packed.is_empty() && q.absmax.is_empty());
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert_eq!(quantize_nf4(&[1.0], 63), Err(Nf4Error::BadBlocksize(63)));
        assert_eq!(quantize_nf4(&[1.0], 0), Err(Nf4Error::BadBlocksize(0)));
        assert!(matches!(
            quantize_nf4_shaped(&[1.0; 5], &[2, 3], 64),
            Err(Nf4Error::ShapeMismatch { .. })
        ));
        let mut q = quantize_nf4(&[1.0; 70], 64).expect("quantize");
        q.absmax.pop();
        assert!(matches!(
            dequantize_nf4(&q),
            Err(Nf4Error::AbsmaxLength { .. })
        ));
        q.packed.pop();
        assert!(matches!(
            dequantize_nf4(&q),
            Err(Nf4Error::PackedLength { .. })
        ));
    }

    #[test]
    fn nan_and_inf_do_not_panic() {
        let mut v = vec![0.5f32; 64];
        v[3] = f32::NAN;
        let q = quantize_nf4(&v, 64).expect("quantize");
        assert!(q.absmax[0].is_nan());
        assert!(q.packed.iter().all(|&b| b == 0xff));
        v[3] = f32::INFINITY;
        let q = quantize_nf4(&v, 64).expect("quantize");
        assert_eq!(q.absmax[0], f32::INFINITY);
        assert!(dequantize_nf4(&q).is_ok());
    }
    #[test]
    fn double_quant_quantize_matches_bitsandbytes() {
        let bytes = fixture_bytes();
        let st = SafeTensors::deserialize(&bytes).expect("parse fixture");
        // Nested stage alone on the long (600-entry, partial nested block) absmax vector.
        let (am, _) = f32s(&st, "dqvec.absmax");
        let (code, _) = f32s(&st, "dqvec.code");
        assert_eq!(bits(&dynamic_code()), bits(&code), "dynamic code");
        let (off, _) = f32s(&st, "dqvec.offset");
        let offset = torch_mean_f32(&am);
        assert_eq!(offset.to_bits(), off[0].to_bits(), "dqvec offset");
        let centred: Vec<f32> = am.iter().map(|&a| a - offset).collect();
        let (q, nested) = quantize_blockwise_8bit(&centred, &code, 256).expect("blockwise");
        assert_eq!(q, u8s(&st, "dqvec.qabsmax"), "dqvec qabsmax");
        let (want_nested, _) = f32s(&st, "dqvec.nested_absmax");
        assert_eq!(bits(&nested), bits(&want_nested), "dqvec nested absmax");

        // Full quantize_4bit(compress_statistics=True).
        for case in ["normal", "partial"] {
            let (input, shape) = f32s(&st, &format!("{case}.input"));
            let bs = i64_scalar(&st, &format!("{case}.blocksize")) as usize;
            let d = quantize_nf4_double(&input, &shape, bs).expect("double quant");
            assert_eq!(
                d.tensor.packed,
                u8s(&st, &format!("{case}.packed")),
                "{case}"
            );
            let (absmax, _) = f32s(&st, &format!("{case}.absmax"));
            assert_eq!(bits(&d.tensor.absmax), bits(&absmax), "{case}: absmax");
            let q = u8s(&st, &format!("{case}.dq_qabsmax"));
            assert_eq!(d.quantized_absmax, q, "{case}: qabsmax");
            let (nested, _) = f32s(&st, &format!("{case}.dq_nested_absmax"));
            assert_eq!(
                bits(&d.nested_absmax),
                bits(&nested),
                "{case}: nested absmax"
            );
            let (off, _) = f32s(&st, &format!("{case}.dq_offset"));
            assert_eq!(d.offset.to_bits(), off[0].to_bits(), "{case}: offset");
            let (code, _) = f32s(&st, &format!("{case}.dq_code"));
            assert_eq!(bits(&d.nested_code), bits(&code), "{case}: code");
            assert_eq!(d.nested_blocksize, NF4_NESTED_BLOCKSIZE);
        }
    }

    #[test]
    fn blockwise_8bit_edge_cases() {
        let code = dynamic_code();
        let (q, am) = quantize_blockwise_8bit(&[0.0; 3], &code, 256).expect("zeros");
        assert_eq!((q, am), (vec![0; 3], vec![0.0]));
        let (q, am) = quantize_blockwise_8bit(&[f32::NAN, 1.0, -1.0], &code, 256).expect("nan");
        assert_eq!(am, vec![1.0]);
        assert_eq!(q, vec![0, 255, 0]);
        let (q, am) = quantize_blockwise_8bit(&[f32::INFINITY, 1.0], &code, 256).expect("inf");
        assert_eq!(am[0], f32::INFINITY);
        assert_eq!(q.len(), 2);
        assert_eq!(
            quantize_blockwise_8bit(&[1.0], &code[..3], 256),
            Err(Nf4Error::CodeLength(3))
        );
        assert_eq!(
            quantize_blockwise_8bit(&[1.0], &code, 0),
            Err(Nf4Error::BadBlocksize(0))
        );
        let d = quantize_nf4_double(&[], &[0], 64).expect("empty");
        assert!(d.quantized_absmax.is_empty() && d.nested_absmax.is_empty());
        assert!(quantize_nf4_double(&[1.0], &[1], 63).is_err());
    }
}
