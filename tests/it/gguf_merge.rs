//! Whole-model GGUF writing against llama.cpp's own `llama-quantize` (fixtures from
//! `tests/fixtures/gen_gguf_merge.py`): a synthetic F32 model (values from splitmix64, so no
//! weights are committed) written by wgtune has the sha256 of gguf-py's file, and every
//! quantization mix has the sha256 of llama.cpp's output for it — same metadata, tensor order,
//! types (Q4_K_M's per-tensor rules, shape fallbacks) and quantized bytes.

use crate::common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};
use wgtune::io::gguf::Gguf;
use wgtune::io::gguf_model::{Mix, ModelTensor, TensorData, write_model_gguf};
use wgtune::io::gguf_write::{OutTensor, write_gguf};
use wgtune::quant::ggml::GgmlType;

/// The generator's values: splitmix64 of `seed + (i+1)·golden`, top 24 bits as u in [0, 1),
/// `(u - 0.5) · 0.02·(1 + row % 5)` in f32.
fn splitmix_values(seed: u64, rows: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols)
        .map(|i| {
            let mut z = seed.wrapping_add((i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let u = (z >> 40) as f32 / 16_777_216.0;
            let scale = 0.02f32 * (1.0 + ((i / cols) % 5) as f32);
            (u - 0.5) * scale
        })
        .collect()
}

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One fixture case: its metadata, its F32 tensors in source order, and the expectations.
fn case(name: &str) -> (Gguf, Vec<ModelTensor>, Value) {
    let dir = fixture("gguf_merge");
    let meta = std::fs::read(dir.join(format!("{name}.meta.gguf"))).unwrap();
    let meta = Gguf::parse(&meta).unwrap();
    let want: Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.json"))).unwrap()).unwrap();
    let tensors = want["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let dims: Vec<u64> = t["dims"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            let rows = dims.get(1).copied().unwrap_or(1) as usize;
            let values = splitmix_values(t["seed"].as_u64().unwrap(), rows, dims[0] as usize);
            ModelTensor {
                name: t["name"].as_str().unwrap().to_string(),
                dims,
                source_type: GgmlType::F32,
                data: TensorData::Values(values),
            }
        })
        .collect();
    (meta, tensors, want)
}

/// The F32 source as gguf-py writes it: same metadata and tensors, byte for byte.
fn source_file(meta: &Gguf, tensors: &[ModelTensor]) -> Vec<u8> {
    let out: Vec<OutTensor> = tensors
        .iter()
        .map(|t| {
            let TensorData::Values(v) = &t.data else {
                unreachable!()
            };
            OutTensor {
                name: t.name.clone(),
                dims: t.dims.clone(),
                ty: GgmlType::F32,
                data: bytemuck::cast_slice(v).to_vec(),
            }
        })
        .collect();
    write_gguf(&meta.metadata_in_order(), &out).unwrap()
}

/// Every mix of one case against llama.cpp: per tensor first (a clear message), then the file.
fn check_case(name: &str, mixes: &[Mix]) {
    let (meta, tensors, want) = case(name);
    let src = source_file(&meta, &tensors);
    assert_eq!(
        sha(&src),
        want["source_sha256"],
        "{name}: F32 source vs gguf-py"
    );
    let arch = meta.get_str("general.architecture").unwrap();
    let n_layer = meta.get_u64(&format!("{arch}.block_count")).unwrap() as usize;
    for &mix in mixes {
        let expect = &want["mixes"][mix.name()];
        let got =
            write_model_gguf(&meta.metadata_in_order(), tensors.clone(), mix, 0, n_layer).unwrap();
        let parsed = Gguf::parse(&got.bytes).unwrap();
        let exp_tensors = expect["tensors"].as_array().unwrap();
        assert_eq!(
            parsed.tensors.len(),
            exp_tensors.len(),
            "{name} {}",
            mix.name()
        );
        for (t, e) in parsed.tensors.iter().zip(exp_tensors) {
            let what = format!("{name} {} {}", mix.name(), t.name);
            assert_eq!(t.name, e["name"], "{what}: tensor order");
            assert_eq!(t.ty().unwrap().name(), e["type"], "{what}: type");
            let bytes = parsed.tensor_bytes(&got.bytes, t).unwrap();
            assert_eq!(sha(bytes), e["sha256"], "{what}: bytes");
        }
        assert_eq!(
            parsed.get_u64("general.file_type").unwrap(),
            expect["file_type"].as_u64().unwrap()
        );
        assert_eq!(
            sha(&got.bytes),
            expect["file_sha256"],
            "{name} {}: whole file",
            mix.name()
        );
    }
}

const LEGACY: [Mix; 7] = [
    Mix::F16,
    Mix::Bf16,
    Mix::Q8_0,
    Mix::Q4_0,
    Mix::Q4_1,
    Mix::Q5_0,
    Mix::Q5_1,
];
const K_MIXES: [Mix; 5] = [Mix::Q4K, Mix::Q5K, Mix::Q6K, Mix::Q4KM, Mix::Q5KM];

/// 8 layers, GQA, untied head, an ffn width no K type takes: the legacy mixes (the head Q6_K).
#[test]
fn llama8_legacy_mixes_equal_llama_quantize() {
    check_case("llama8", &LEGACY);
}

/// The K mixes: Q4_K_M's Q6_K layers, pure Q4_K / Q5_K, and the Q5_0 / Q5_1 / Q8_0 fallbacks.
#[test]
fn llama8_k_mixes_equal_llama_quantize() {
    check_case("llama8", &K_MIXES);
}

/// Tied embeddings (token_embd takes the head's type), biases, rows only F16 takes.
#[test]
fn tied_small_rows_equal_llama_quantize() {
    check_case("qwen2_tied", &LEGACY);
    check_case("qwen2_tied", &K_MIXES);
}

/// The projections the fixture adapters adapt (all seven), by GGUF name.
const PROJECTIONS: [&str; 7] = [
    ".attn_q.weight",
    ".attn_k.weight",
    ".attn_v.weight",
    ".attn_output.weight",
    ".ffn_gate.weight",
    ".ffn_up.weight",
    ".ffn_down.weight",
];

/// Logits of a GGUF model (optionally with a peft adapter) on the fixture's batch, CPU backend.
fn gguf_logits(
    path: &std::path::Path,
    adapter: Option<&std::path::Path>,
    ids: &[Vec<u32>],
) -> Vec<f32> {
    use wgtune::app::files::DirSource;
    use wgtune::model::loader::{ModelSource, load_model};
    let bytes: wgtune::io::Blob = std::sync::Arc::new(std::fs::read(path).unwrap());
    let src = ModelSource::Gguf {
        bytes,
        name: path.display().to_string(),
    };
    let mut lm = load_model(src, &device("cpu"), None).unwrap_or_else(|e| panic!("{e}"));
    if let Some(a) = adapter {
        wgtune::io::peft::load_adapter(&DirSource::new(a), &mut lm.model).unwrap();
    }
    block(wgtune::model::read_f32(
        lm.model.forward(ids, None).unwrap(),
    ))
    .unwrap()
}

/// `merge --format gguf` from each architecture's GGUF base (llama.cpp's converter output) and
/// its LoRA / OFT adapter: the merged file loads back in wgtune with the adapter-on logits —
/// to float accuracy for `same` (F32 here), within the quantization error for f16 / q8_0 —
/// and keeps every tensor the adapter did not touch byte for byte.
#[test]
fn merged_gguf_round_trips_with_adapter_logits() {
    use wgtune::app::merge::merge_to_gguf;
    let tmp = tempfile::tempdir().unwrap();
    for case in ["mistral", "qwen2", "qwen3", "gemma3"] {
        let base = fixture(&format!("arch/{case}/model.gguf"));
        let ids = crate::peft_fixtures::batch_of(&format!("arch/{case}")).input_ids;
        let base_bytes = std::fs::read(&base).unwrap();
        let base_g = Gguf::parse(&base_bytes).unwrap();
        for method in ["lora", "oft"] {
            let adapter = fixture(&format!("arch/{case}/peft/{method}/adapter"));
            let want = gguf_logits(&base, Some(&adapter), &ids);
            for (mix, tol) in [(Mix::Same, 2e-5), (Mix::F16, 2e-2), (Mix::Q8_0, 0.2)] {
                let out = tmp
                    .path()
                    .join(format!("{case}-{method}-{}.gguf", mix.name()));
                merge_to_gguf(&base, None, &adapter, &out, mix).unwrap();
                let got = gguf_logits(&out, None, &ids);
                let diff = max_abs_diff(&got, &want);
                println!("{case} {method} {}: max |Δlogit| {diff:.2e}", mix.name());
                assert!(
                    diff <= tol,
                    "{case} {method} {}: logits differ by {diff}",
                    mix.name()
                );
                if mix == Mix::Same {
                    let bytes = std::fs::read(&out).unwrap();
                    let g = Gguf::parse(&bytes).unwrap();
                    for t in &base_g.tensors {
                        let m = g.tensor(&t.name).unwrap();
                        let same = g.tensor_bytes(&bytes, m).unwrap()
                            == base_g.tensor_bytes(&base_bytes, t).unwrap();
                        let projection = PROJECTIONS.iter().any(|p| t.name.ends_with(p));
                        assert!(same || projection, "{case} {method}: {} changed", t.name);
                        assert!(
                            !same || !projection,
                            "{case} {method}: {} unchanged",
                            t.name
                        );
                    }
                }
            }
        }
    }
}

/// From the HF folder of each architecture fixture (the folder llama.cpp's converter turned into
/// `model.gguf`), `merge --format gguf` writes the same tensors, byte for byte, and the same
/// metadata as from the GGUF base (but `general.name`), and the file loads with the adapter-on
/// logits.
#[test]
fn hf_base_merges_to_the_same_gguf_as_the_gguf_base() {
    use wgtune::app::merge::merge_to_gguf;
    let tmp = tempfile::tempdir().unwrap();
    for case in ["mistral", "qwen2", "qwen3", "gemma3"] {
        let adapter = fixture(&format!("arch/{case}/peft/lora/adapter"));
        let from_gguf = tmp.path().join(format!("{case}-gguf.gguf"));
        let from_hf = tmp.path().join(format!("{case}-hf.gguf"));
        merge_to_gguf(
            &fixture(&format!("arch/{case}/model.gguf")),
            None,
            &adapter,
            &from_gguf,
            Mix::Same,
        )
        .unwrap();
        merge_to_gguf(
            &fixture(&format!("arch/{case}")),
            None,
            &adapter,
            &from_hf,
            Mix::Same,
        )
        .unwrap();
        let (a, b) = (
            std::fs::read(&from_gguf).unwrap(),
            std::fs::read(&from_hf).unwrap(),
        );
        let (ga, gb) = (Gguf::parse(&a).unwrap(), Gguf::parse(&b).unwrap());
        let names = |g: &Gguf| g.tensors.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&ga), names(&gb), "{case}: tensor list");
        for (ta, tb) in ga.tensors.iter().zip(&gb.tensors) {
            assert_eq!(
                (ta.ty().unwrap(), &ta.dims),
                (tb.ty().unwrap(), &tb.dims),
                "{case} {}",
                ta.name
            );
            assert!(
                ga.tensor_bytes(&a, ta).unwrap() == gb.tensor_bytes(&b, tb).unwrap(),
                "{case}: {} differs between the HF and the GGUF base",
                ta.name
            );
        }
        // `general.name`: the fixture's converter run was given the lower-case case name; from a
        // folder wgtune titles its name as the converter does without --model-name.
        let meta = |g: &Gguf| {
            let mut m = g.metadata_in_order();
            m.retain(|(k, _)| k != "general.name");
            m
        };
        let (ma, mb) = (meta(&ga), meta(&gb));
        let keys = |m: &[(String, wgtune::io::gguf::MetaValue)]| {
            m.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>()
        };
        assert_eq!(keys(&ma), keys(&mb), "{case}: metadata keys");
        for ((k, va), (_, vb)) in ma.iter().zip(&mb) {
            assert!(va == vb, "{case}: metadata {k} differs");
        }
        let ids = crate::peft_fixtures::batch_of(&format!("arch/{case}")).input_ids;
        let want = gguf_logits(
            &fixture(&format!("arch/{case}/model.gguf")),
            Some(&adapter),
            &ids,
        );
        let diff = max_abs_diff(&gguf_logits(&from_hf, None, &ids), &want);
        assert!(diff <= 2e-5, "{case}: logits differ by {diff}");
    }
}

/// Bad requests through the binary: a full disk leaves nothing at the target path (an existing
/// file there stays as it was) and says so; `--quant` without `--format gguf`, an unknown mix and
/// an OFT adapter as a GGUF adapter are one-line errors.
#[test]
fn merge_gguf_bad_input_is_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let base = fixture("arch/qwen2/model.gguf");
    let (base, lora) = (
        base.to_str().unwrap(),
        fixture("arch/qwen2/peft/lora/adapter"),
    );
    let lora = lora.to_str().unwrap();
    let out = tmp.path().join("merged.gguf");
    std::fs::write(&out, b"previous").unwrap();
    let o = wgtune_with(
        &[
            "merge",
            "--model",
            base,
            "--adapter",
            lora,
            "--format",
            "gguf",
            "--out",
            out.to_str().unwrap(),
        ],
        Limit::FileSize(16 << 10),
    );
    assert_clean_failure(&o, "full disk", &["merged.gguf"]);
    assert_eq!(std::fs::read(&out).unwrap(), b"previous");
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "temp files left: {leftovers:?}");

    let o = wgtune_limited(
        &[
            "merge",
            "--model",
            base,
            "--adapter",
            lora,
            "--out",
            "x",
            "--quant",
            "q8_0",
        ],
        HOSTILE_AS_LIMIT,
    );
    assert_clean_failure(&o, "--quant with hf", &["--quant q8_0 needs --format gguf"]);
    let o = wgtune_limited(
        &[
            "merge",
            "--model",
            base,
            "--adapter",
            lora,
            "--out",
            "x",
            "--format",
            "gguf",
            "--quant",
            "q3_k",
        ],
        HOSTILE_AS_LIMIT,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("unknown quantization `q3_k`")
            && err.contains("q4_k_m"),
        "{err}"
    );
}
