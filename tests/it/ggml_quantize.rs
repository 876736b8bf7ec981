//! ggml quantization against the `gguf` Python package (`tests/fixtures/gen_ggml_quantize.py`):
//! seeded and edge-case f32 rows quantized to Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, F16 and BF16 give
//! gguf-py's bytes exactly, and dequantizing them gives gguf-py's values bit for bit. The
//! K-quants Q2_K … Q6_K against ggml's compiled `quantize_row_q{2,3,4,5,6}_K_ref`
//! (`tests/fixtures/gen_ggml_kquantize.py`): the same bytes on every case.

use crate::common::*;
use wgtune::quant::ggml::{self, GgmlType};

/// The block cases (every type) and the float-only case of the fixture.
const BLOCK_CASES: [&str; 7] = [
    "normal",
    "zeros",
    "all_zero",
    "outlier",
    "neg_max",
    "boundary",
    "magnitude",
];
const BLOCK_TYPES: [GgmlType; 7] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::F16,
    GgmlType::BF16,
];

/// `ggml::quantize(ty, x)`, which must equal `want` byte for byte (`reference` names its source).
fn quantize_as(ty: GgmlType, x: &[f32], want: &[u8], case: &str, reference: &str) -> Vec<u8> {
    let name = ty.name();
    let got = ggml::quantize(ty, x).unwrap();
    assert_eq!(got.len(), want.len(), "{case} {name}: byte count");
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        let bb = ty.block_bytes();
        panic!(
            "{case} {name}: byte {i} (block {}, offset {}) is {:#04x}, {reference} {:#04x}",
            i / bb,
            i % bb,
            got[i],
            want[i]
        );
    }
    got
}

/// Checks one case and type: our bytes against gguf-py's, then the round trip's f32 bits.
fn check(t: &Tensors, case: &str, ty: GgmlType) {
    let name = ty.name();
    let x = &t.f32[&format!("{case}.x")].1;
    let want_bytes = &t.u8[&format!("{case}.{name}.bytes")].1;
    let want_values = &t.f32[&format!("{case}.{name}.values")].1;
    let got = quantize_as(ty, x, want_bytes, case, "gguf-py");
    let back = ggml::dequantize(ty, &got, x.len()).unwrap();
    assert_eq!(back.len(), want_values.len());
    for (i, (g, w)) in back.iter().zip(want_values).enumerate() {
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "{case} {name}: value {i} dequantizes to {g}, gguf-py {w} (input {})",
            x[i]
        );
    }
}

#[test]
fn quantize_matches_gguf_py_bytes_and_round_trip() {
    let t = read_tensors(&fixture("ggml_quantize/quantize.safetensors"));
    for case in BLOCK_CASES {
        for ty in BLOCK_TYPES {
            check(&t, case, ty);
        }
    }
    for ty in [GgmlType::F16, GgmlType::BF16] {
        check(&t, "floats", ty);
    }
}

/// Codes are not all trivial: every block type's normal case uses most of its code range, so a
/// quantizer that collapsed codes could not match by accident.
#[test]
fn fixture_blocks_use_the_code_range() {
    let t = read_tensors(&fixture("ggml_quantize/quantize.safetensors"));
    for ty in &BLOCK_TYPES[..5] {
        let bytes = &t.u8[&format!("normal.{}.bytes", ty.name())].1;
        let mut seen = std::collections::BTreeSet::new();
        ggml::unpack_blocks(*ty, bytes, |u| {
            seen.extend(u.codes[..32].iter().copied());
        })
        .unwrap();
        let levels = 1usize << (ty.scheme().unwrap().lo_bits + ty.scheme().unwrap().hi_bits);
        assert!(
            seen.len() * 2 > levels.min(256),
            "{}: only {} distinct codes",
            ty.name(),
            seen.len()
        );
    }
}

/// The cases of `ggml_kquantize/kquantize.safetensors` (`gen_ggml_kquantize.py`).
const K_CASES: [&str; 13] = [
    "normal",
    "subscales",
    "heavy",
    "shifted",
    "all_zero",
    "constant",
    "outlier",
    "signs",
    "tiny",
    "huge",
    "grid",
    "real",
    "ties",
];
const K_TYPES: [GgmlType; 5] = [
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

#[test]
fn k_quantize_matches_ggml_ref_bytes() {
    let t = read_tensors(&fixture("ggml_kquantize/kquantize.safetensors"));
    assert_eq!(t.f32.len(), K_CASES.len(), "a fixture case is not tested");
    for case in K_CASES {
        let x = &t.f32[&format!("{case}.x")].1;
        for ty in K_TYPES {
            let want = &t.u8[&format!("{case}.{}.bytes", ty.name())].1;
            quantize_as(ty, x, want, case, "quantize_row_*_ref");
        }
    }
}

/// Blocks of the stress input (`gen_ggml_kquantize.py`), of which the fixture keeps digests.
const STRESS_BLOCKS: usize = 4096;

/// splitmix64's output for state `i · 0x9E3779B97F4A7C15`.
fn splitmix64(i: u64) -> u64 {
    let mut z = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Value `i` of the stress input, exactly as `stress_values` in `gen_ggml_kquantize.py` builds
/// it: a 24-bit integer times a power of two, so exact in f32; per sub-block of 32 positive,
/// negative or mixed signs.
fn stress_value(i: u64) -> f32 {
    let u = splitmix64(i + 1);
    let m = ((u >> 40) & 0xFF_FFFF) as i32;
    let k = ((u >> 1) & 7) as i32;
    let neg = match (i / 32) % 8 {
        0 | 1 => false,
        2 => true,
        _ => u & 1 == 1,
    };
    let e = ((i / 256) % 16) as i32 - 8 - 24 - k;
    (if neg { -m } else { m }) as f32 * f32::from_bits(((127 + e) as u32) << 23)
}

/// FNV-1a, 32 bits.
fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811C_9DC5, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// A million values against per-block digests of ggml's bytes: rare rounding differences (an
/// operation done in another order or another way) show up here if anywhere.
#[test]
fn k_quantize_matches_ggml_ref_on_a_million_values() {
    let t = read_tensors(&fixture("ggml_kquantize/kquantize.safetensors"));
    let x: Vec<f32> = (0..STRESS_BLOCKS as u64 * 256).map(stress_value).collect();
    for ty in K_TYPES {
        let want = &t.u8[&format!("stress.{}.fnv1a32", ty.name())].1;
        assert_eq!(want.len(), 4 * STRESS_BLOCKS);
        let got = ggml::quantize(ty, &x).unwrap();
        let bad: Vec<usize> = (got.chunks_exact(ty.block_bytes()))
            .zip(want.chunks_exact(4))
            .enumerate()
            .filter(|(_, (b, w))| fnv1a32(b).to_le_bytes() != **w)
            .map(|(i, _)| i)
            .collect();
        assert!(
            bad.is_empty(),
            "{}: {} of {STRESS_BLOCKS} blocks differ from ggml, first {:?}",
            ty.name(),
            bad.len(),
            &bad[..bad.len().min(8)]
        );
    }
}

/// Round trip on the fixture inputs: every value comes back within a fraction of its
/// super-block's largest magnitude (about twice the worst seen: 0.33, 0.18, 0.069, 0.039, 0.016
/// from Q2_K to Q6_K; ggml's fit trades the extremes for a lower weighted error), and the RMS
/// error shrinks with every added bit.
#[test]
fn k_quantize_round_trip_error_is_bounded() {
    let t = read_tensors(&fixture("ggml_kquantize/kquantize.safetensors"));
    let mut rms = Vec::new();
    for (ty, max_rel) in K_TYPES.into_iter().zip([0.65f32, 0.35, 0.15, 0.08, 0.035]) {
        let (mut sq, mut n) = (0f64, 0usize);
        for case in ["normal", "subscales", "heavy", "shifted", "signs", "real"] {
            let x = &t.f32[&format!("{case}.x")].1;
            let back = ggml::dequantize(ty, &ggml::quantize(ty, x).unwrap(), x.len()).unwrap();
            for (xb, bb) in x.chunks_exact(256).zip(back.chunks_exact(256)) {
                let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (v, w) in xb.iter().zip(bb) {
                    let err = (v - w).abs();
                    assert!(
                        err <= max_rel * amax,
                        "{case} {}: {v} -> {w}, block max {amax}",
                        ty.name()
                    );
                    sq += f64::from(err / amax).powi(2);
                    n += 1;
                }
            }
        }
        rms.push((sq / n as f64).sqrt());
    }
    assert!(rms.windows(2).all(|w| w[0] > w[1]), "{rms:?}");
}

#[test]
fn k_quantize_partial_rows_are_errors() {
    for ty in K_TYPES {
        for n in [1, 255, 300, 257] {
            assert_eq!(
                ggml::quantize(ty, &vec![1.0; n]),
                Err(ggml::GgmlError::PartialBlock {
                    ty: ty.name(),
                    n,
                    block_size: 256
                })
            );
        }
        assert_eq!(ggml::quantize(ty, &[]).unwrap(), Vec::<u8>::new());
    }
}
