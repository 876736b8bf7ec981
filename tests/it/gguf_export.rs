//! `export --format gguf` against llama.cpp's own `convert_lora_to_gguf.py` output for the same
//! peft adapters (tests/fixtures/gen_gguf_adapter.py): tensor by tensor and in the metadata
//! llama.cpp reads, through the library and through the binary.

use crate::common::*;
use std::process::Command;
use wgtune::app::files::DirSource;
use wgtune::io::gguf::{Gguf, MetaValue};
use wgtune::io::gguf_adapter::{GgufExportError, OutType, lora_to_gguf};
use wgtune::model::arch::parse_hf_config;
use wgtune::model::config::DecoderConfig;

/// (reference file in gguf_adapter/, HF base folder, peft adapter folder, outtype), as in the
/// generator's CASES.
const CASES: [(&str, &str, &str, OutType); 8] = [
    ("llama_f32", "tiny_gqa", "peft/lora/adapter", OutType::F32),
    ("llama_f16", "tiny_gqa", "peft/lora/adapter", OutType::F16),
    ("llama_bf16", "tiny_gqa", "peft/lora/adapter", OutType::Bf16),
    (
        "llama_rslora_f32",
        "tiny_gqa",
        "peft/lora_rslora_qv/adapter",
        OutType::F32,
    ),
    (
        "mistral_f32",
        "arch/mistral",
        "arch/mistral/peft/lora/adapter",
        OutType::F32,
    ),
    (
        "qwen2_f32",
        "arch/qwen2",
        "arch/qwen2/peft/lora/adapter",
        OutType::F32,
    ),
    (
        "qwen3_f32",
        "arch/qwen3",
        "arch/qwen3/peft/lora/adapter",
        OutType::F32,
    ),
    (
        "gemma3_f32",
        "arch/gemma3",
        "arch/gemma3/peft/lora/adapter",
        OutType::F32,
    ),
];

/// The base model's config.json, parsed.
fn base_config(base: &str) -> DecoderConfig {
    let path = fixture(base).join("config.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    parse_hf_config(&v, &path.display().to_string(), None).unwrap()
}

/// Our export of a fixture adapter (`general.name` as the converter derives it from `adapter/`).
fn ours(base: &str, adapter: &str, out: OutType) -> Result<Vec<u8>, GgufExportError> {
    lora_to_gguf(
        &DirSource::new(fixture(adapter)),
        &base_config(base),
        "Adapter",
        out,
    )
}

/// The converter's file for `case`.
fn reference(case: &str) -> Vec<u8> {
    std::fs::read(fixture(&format!("gguf_adapter/{case}.gguf"))).unwrap()
}

/// A string or f32 metadata value of `g`.
fn meta<'a>(g: &'a Gguf, key: &str) -> &'a MetaValue {
    g.get(key)
        .unwrap_or_else(|| panic!("metadata key {key} missing"))
}

/// Every case: the same tensors (names in order, ne, ggml type, data bytes) and the same values
/// of the keys llama.cpp reads. Only rsLoRA differs, on purpose: the converter ignores
/// `use_rslora`, we write `alpha·√r` so llama.cpp's `alpha / r` gives peft's `alpha / √r`.
#[test]
fn matches_llama_cpp_converter() {
    for (case, base, adapter, out) in CASES {
        let (mine, theirs) = (ours(base, adapter, out).unwrap(), reference(case));
        let (a, b) = (Gguf::parse(&mine).unwrap(), Gguf::parse(&theirs).unwrap());
        for key in ["general.architecture", "general.type", "adapter.type"] {
            assert_eq!(meta(&a, key), meta(&b, key), "{case}: {key}");
        }
        let alpha = |g: &Gguf| match meta(g, "adapter.lora.alpha") {
            MetaValue::F32(x) => *x,
            other => panic!("{case}: adapter.lora.alpha is {other:?}, want F32"),
        };
        let scale = if case.contains("rslora") { 2.0 } else { 1.0 }; // √r, r = 4
        assert_eq!(alpha(&a), alpha(&b) * scale, "{case}: adapter.lora.alpha");
        let names = |g: &Gguf| g.tensors.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&a), names(&b), "{case}: tensor names and order");
        for (ta, tb) in a.tensors.iter().zip(&b.tensors) {
            assert_eq!(ta.dims, tb.dims, "{case}: {} ne", ta.name);
            assert_eq!(ta.ty().unwrap(), out.ggml(), "{case}: {} type", ta.name);
            assert_eq!(ta.ggml_type_id, tb.ggml_type_id, "{case}: {} type", ta.name);
            assert!(
                a.tensor_bytes(&mine, ta).unwrap() == b.tensor_bytes(&theirs, tb).unwrap(),
                "{case}: {} data differs",
                ta.name
            );
        }
        if scale == 1.0 {
            // Same keys, same order, same layout: the converter's file byte for byte.
            assert!(
                mine == theirs,
                "{case}: file bytes differ from the converter's"
            );
        }
    }
}

/// The Q/K permutation is really exercised: for the `llama` base the converter's attn_q lora_b
/// is not peft's lora_B in HF row order, and for qwen2 (not permuted) it is.
#[test]
fn reference_permutes_llama_q_lora_b_only() {
    let stored = |adapter: &str| {
        let t = read_tensors(&fixture(adapter).join("adapter_model.safetensors"));
        let (_, v) = &t.f32["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"];
        v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()
    };
    let q_b = |case: &str| {
        let bytes = reference(case);
        let g = Gguf::parse(&bytes).unwrap();
        let t = g.tensor("blk.0.attn_q.weight.lora_b").unwrap();
        g.tensor_bytes(&bytes, t).unwrap().to_vec()
    };
    assert_ne!(q_b("llama_f32"), stored("peft/lora/adapter"));
    assert_eq!(q_b("qwen2_f32"), stored("arch/qwen2/peft/lora/adapter"));
}

/// Run `wgtune args…` from the repository root (adapters name their base relative to it).
fn wgtune(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wgtune"))
        .args(args)
        .current_dir(root())
        .env("CUBECL_AUTOTUNE_LEVEL", "minimal")
        .output()
        .unwrap()
}

/// The binary writes the library's bytes (base from `base_model_name_or_path`), prints the Ollama
/// and llama-cli hints, and takes a GGUF base (Mistral's reads back as `llama`).
#[test]
fn cli_export_writes_the_library_file() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("lora.gguf");
    let o = wgtune(&[
        "export",
        "--adapter",
        "tests/fixtures/peft/lora/adapter",
        "--format",
        "gguf",
        "--out",
        out.to_str().unwrap(),
        "--outtype",
        "f16",
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let want = ours("tiny_gqa", "peft/lora/adapter", OutType::F16).unwrap();
    assert!(std::fs::read(&out).unwrap() == want);
    let out_s = out.display().to_string();
    assert!(stdout.contains(&format!("ADAPTER {out_s}")), "{stdout}");
    assert!(stdout.contains(&format!("--lora {out_s}")), "{stdout}");

    let o = wgtune(&[
        "export",
        "--adapter",
        "tests/fixtures/arch/mistral/peft/lora/adapter",
        "--base",
        "tests/fixtures/arch/mistral/model.gguf",
        "--format",
        "gguf",
        "--out",
        out.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&out).unwrap() == reference("mistral_f32"));
    assert!(
        stdout.contains("FROM tests/fixtures/arch/mistral/model.gguf"),
        "{stdout}"
    );
}

/// An OFT adapter is refused with one line naming its config, and nothing is written.
#[test]
fn cli_refuses_oft() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("oft.gguf");
    let o = wgtune(&[
        "export",
        "--adapter",
        "tests/fixtures/arch/gemma3/peft/oft/adapter",
        "--format",
        "gguf",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_clean_failure(
        &o,
        "export OFT",
        &[
            "adapter_config.json",
            "llama.cpp has no OFT adapter type: merge instead",
        ],
    );
    assert!(!out.exists());
}

/// Adapters that do not fit are refused with typed errors naming the file: another base's LoRA
/// (shapes), and OFT through the library.
#[test]
fn refuses_mismatched_base_and_oft() {
    let err = ours("tiny_gqa", "arch/qwen3/peft/lora/adapter", OutType::F32).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, GgufExportError::Load(_)) && msg.contains("adapter_model.safetensors"),
        "{msg}"
    );
    let err = ours("arch/qwen3", "arch/qwen3/peft/oft/adapter", OutType::F32).unwrap_err();
    assert!(matches!(err, GgufExportError::Oft { .. }), "{err}");
}
