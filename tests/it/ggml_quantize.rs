//! ggml quantization against the `gguf` Python package (`tests/fixtures/gen_ggml_quantize.py`):
//! seeded and edge-case f32 rows quantized to Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, F16 and BF16 give
//! gguf-py's bytes exactly, and dequantizing them gives gguf-py's values bit for bit.

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

/// Checks one case and type: our bytes against gguf-py's, then the round trip's f32 bits.
fn check(t: &Tensors, case: &str, ty: GgmlType) {
    let name = ty.name();
    let x = &t.f32[&format!("{case}.x")].1;
    let want_bytes = &t.u8[&format!("{case}.{name}.bytes")].1;
    let want_values = &t.f32[&format!("{case}.{name}.values")].1;
    let got = ggml::quantize(ty, x).unwrap();
    assert_eq!(got.len(), want_bytes.len(), "{case} {name}: byte count");
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want_bytes[i]) {
        let bb = ty.block_bytes();
        panic!(
            "{case} {name}: byte {i} (block {}, offset {}) is {:#04x}, gguf-py {:#04x}",
            i / bb,
            i % bb,
            got[i],
            want_bytes[i]
        );
    }
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
