//! ggml block decoding against the `gguf` Python package (`tests/fixtures/gen_ggml.py`): random,
//! edge-case and real Gemma 3 blocks of every type, decoded bit-exactly on the CPU and re-laid
//! for the fused GPU kernel without changing a bit; and values of the real Gemma 3 file.

use crate::common::*;
use serde_json::Value;
use wgtune::kernels::qmatmul::PackedHost;
use wgtune::quant::ggml::{self, GgmlType};

/// Every type the fixture covers, by ggml name.
const TYPES: [&str; 11] = [
    "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "BF16",
];

fn ty_named(name: &str) -> GgmlType {
    GgmlType::ALL
        .into_iter()
        .find(|t| t.name() == name)
        .unwrap_or_else(|| panic!("{name} is not supported"))
}

/// Positions where two f32 slices differ in bits (so -0.0 ≠ 0.0 and subnormals count).
fn bit_mismatches(got: &[f32], want: &[f32]) -> Vec<usize> {
    assert_eq!(got.len(), want.len());
    (0..got.len())
        .filter(|&i| got[i].to_bits() != want[i].to_bits())
        .collect()
}

#[test]
fn every_type_decodes_bit_exactly_like_gguf_py() {
    let t = read_tensors(&fixture("ggml/blocks.safetensors"));
    for name in TYPES {
        let ty = ty_named(name);
        let bytes = &t.u8[&format!("{name}.bytes")].1;
        let want = &t.f32[&format!("{name}.values")].1;
        let n = t.i64[&format!("{name}.n")].1[0] as usize;
        assert_eq!(want.len(), n);
        let got = ggml::dequantize(ty, bytes, n).unwrap();
        let bad = bit_mismatches(&got, want);
        assert!(
            bad.is_empty(),
            "{name}: {} of {n} values differ, first at {} ({} vs {})",
            bad.len(),
            bad[0],
            got[bad[0]],
            want[bad[0]]
        );
        // The GPU layout holds the same values: one row per block (K-quants) or rows of 64.
        if ty.scheme().is_some() {
            let k = ty.block_size().max(64);
            if n.is_multiple_of(k) {
                let host = PackedHost::from_ggml(ty, bytes, n / k, k).unwrap();
                let bad = bit_mismatches(&host.dequantize(), want);
                assert!(bad.is_empty(), "{name} packed: {} values differ", bad.len());
            }
        }
    }
}

#[test]
fn truncated_and_partial_blocks_are_errors() {
    for ty in GgmlType::ALL {
        let bs = ty.block_size();
        let bytes = vec![0u8; ty.block_bytes() * 2];
        assert!(ggml::dequantize(ty, &bytes[..bytes.len() - 1], 2 * bs).is_err());
        if bs > 1 {
            let e = ggml::dequantize(ty, &bytes, bs + 1).unwrap_err();
            assert!(e.to_string().contains("multiple"), "{e}");
        }
    }
}

/// Values of the real Gemma 3 270M Q4_K_M file (F32, Q5_0, Q4_K, Q6_K, Q8_0 tensors) as the gguf
/// package decodes them.
#[test]
fn gemma3_real_file_values() {
    let Ok(file) = std::fs::read(asset("gemma-3-270m-q4_k_m.gguf")) else {
        panic!("assets/gemma-3-270m-q4_k_m.gguf missing: run scripts/fetch-assets.sh");
    };
    let d: Value =
        serde_json::from_slice(&std::fs::read(fixture("gemma3/dequant.json")).unwrap()).unwrap();
    for t in d["tensors"].as_array().unwrap() {
        let ty = ty_named(t["ggml_type"].as_str().unwrap());
        let row_len = t["row_len"].as_u64().unwrap() as usize;
        let row_bytes = ty.row_bytes(row_len).unwrap();
        let offset = t["data_offset"].as_u64().unwrap() as usize;
        for v in t["values"].as_array().unwrap() {
            let [row, col, bits] = [0, 1, 2].map(|i| v[i].as_u64().unwrap() as usize);
            let start = offset + row * row_bytes;
            let vals = ggml::dequantize(ty, &file[start..start + row_bytes], row_len).unwrap();
            assert_eq!(
                vals[col].to_bits(),
                bits as u32,
                "{} [{row}, {col}]",
                t["name"]
            );
        }
    }
}
