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

fn shape_numel(shape: &[usize]) -> usize {
    shape.iter().fold(1usize, |a, &d| a.saturating_mul(d))
}

fn check_blocksize(blocksize: usize) -> Result<(), Nf4Error> {
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
}
