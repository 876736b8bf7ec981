//! `gguf_meta::hf_gguf_metadata` against llama.cpp's own `convert_hf_to_gguf.py`: for every HF
//! fixture the converter turned into a GGUF (`arch/{mistral,qwen2,qwen3,gemma3}/model.gguf`, and
//! `gguf_meta/llama3/model_meta.gguf` from `tests/fixtures/gen_gguf_meta.py`), our metadata has the
//! converter's keys in the converter's order with the same types and values (floats bit for
//! bit). A GGUF written from our metadata and the converter's tensors reads back in wgtune as the
//! same `DecoderConfig` and the same tokenizer (ids of fixed strings, also against the folder's
//! own `tokenizer.json`). Hostile tokenizer files give typed errors.

use crate::common::fixture;
use std::path::Path;
use wgtune::io::Blob;
use wgtune::io::gguf::{Gguf, MetaValue};
use wgtune::io::gguf_meta::{
    HfFiles, HfMetaError, HfMetaOptions, chkhsh, gguf_param_count, hf_gguf_metadata, known_pre,
    llama3_rope_freqs,
};
use wgtune::io::gguf_write::{OutTensor, write_gguf};
use wgtune::model::arch::parse_hf_config;
use wgtune::model::config::DecoderConfig;
use wgtune::model::loader::{ModelFiles, ModelSource, read_model};

/// Keys whose values may legitimately differ from the converter's file, with the reason. Empty:
/// the tests ask for the `file_type` the converter wrote (0 = ALL_F32 for `arch/`, 1 = MOSTLY_F16
/// for `gguf_meta/llama3`), so `general.file_type` matches as well. (`general.file_type` is the caller's choice;
/// `file_type_is_the_callers` checks that it is the only key that changes with it.)
const ALLOWED_DIFFERENCES: &[(&str, &str)] = &[];

/// The key order of a GGUF's metadata (`Gguf` keeps values in a map): walks the KV section.
fn key_order(b: &[u8]) -> Vec<String> {
    let u32_at = |p: usize| u32::from_le_bytes(b[p..p + 4].try_into().unwrap());
    let u64_at = |p: usize| u64::from_le_bytes(b[p..p + 8].try_into().unwrap()) as usize;
    fn skip(b: &[u8], p: usize, ty: u32) -> usize {
        let u64_at = |p: usize| u64::from_le_bytes(b[p..p + 8].try_into().unwrap()) as usize;
        match ty {
            0 | 1 | 7 => p + 1,
            2 | 3 => p + 2,
            4..=6 => p + 4,
            10..=12 => p + 8,
            8 => p + 8 + u64_at(p),
            9 => {
                let et = u32::from_le_bytes(b[p..p + 4].try_into().unwrap());
                let n = u64_at(p + 4);
                (0..n).fold(p + 12, |q, _| skip(b, q, et))
            }
            _ => panic!("bad type {ty}"),
        }
    }
    let n = u64_at(16);
    let mut p = 24;
    let mut keys = Vec::new();
    for _ in 0..n {
        let len = u64_at(p);
        keys.push(String::from_utf8(b[p + 8..p + 8 + len].to_vec()).unwrap());
        p += 8 + len;
        let ty = u32_at(p);
        p = skip(b, p + 4, ty);
    }
    keys
}

/// Equal including the type, floats bit for bit.
fn same(a: &MetaValue, b: &MetaValue) -> bool {
    match (a, b) {
        (MetaValue::F32(x), MetaValue::F32(y)) => x.to_bits() == y.to_bits(),
        (MetaValue::F64(x), MetaValue::F64(y)) => x.to_bits() == y.to_bits(),
        (MetaValue::Array(x), MetaValue::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        _ => a == b,
    }
}

/// A short description of a value for failure messages.
fn show(v: &MetaValue) -> String {
    match v {
        MetaValue::Array(a) => format!(
            "{} array of {}: {:?}…",
            a.first().map_or("empty", |x| x.type_name()),
            a.len(),
            &a[..a.len().min(6)]
        ),
        MetaValue::Str(s) if s.len() > 80 => format!("Str({:?}…)", &s[..80]),
        v => format!("{v:?}"),
    }
}

/// The files of an HF folder, read from disk.
struct Folder {
    config: Vec<u8>,
    optional: Vec<(&'static str, Option<Vec<u8>>)>,
}

impl Folder {
    fn read(dir: &Path) -> Self {
        let get = |n: &str| std::fs::read(dir.join(n)).ok();
        Folder {
            config: get("config.json").unwrap(),
            optional: [
                "tokenizer.json",
                "tokenizer_config.json",
                "tokenizer.model",
                "added_tokens.json",
                "chat_template.jinja",
                "chat_template.json",
                "generation_config.json",
            ]
            .into_iter()
            .map(|n| (n, get(n)))
            .collect(),
        }
    }

    fn files(&self) -> HfFiles<'_> {
        let o = |i: usize| self.optional[i].1.as_deref();
        HfFiles {
            config_json: &self.config,
            tokenizer_json: o(0),
            tokenizer_config_json: o(1),
            tokenizer_model: o(2),
            added_tokens_json: o(3),
            chat_template_jinja: o(4),
            chat_template_json: o(5),
            generation_config_json: o(6),
        }
    }

    fn config(&self) -> DecoderConfig {
        let v: serde_json::Value = serde_json::from_slice(&self.config).unwrap();
        parse_hf_config(&v, "config.json", None).unwrap()
    }
}

fn options(name: &str, file_type: u32) -> HfMetaOptions {
    HfMetaOptions {
        name: name.into(),
        file_type,
        ..Default::default()
    }
}

/// Our metadata for `dir` equals the converter's `gguf` key by key, in order.
fn check_equal(dir: &Path, gguf: &Path, name: &str, file_type: u32) -> Vec<(String, MetaValue)> {
    let folder = Folder::read(dir);
    let ours = hf_gguf_metadata(&folder.config(), &folder.files(), &options(name, file_type))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let bytes = std::fs::read(gguf).unwrap();
    let theirs = Gguf::parse(&bytes).unwrap();
    let order = key_order(&bytes);
    let allowed = |k: &str| ALLOWED_DIFFERENCES.iter().any(|(a, _)| *a == k);
    let our_keys: Vec<&str> = ours.iter().map(|(k, _)| k.as_str()).collect();
    let their_keys: Vec<&str> = order.iter().map(String::as_str).collect();
    assert_eq!(our_keys, their_keys, "{name}: keys or their order differ");
    let mut bad = Vec::new();
    for (k, v) in &ours {
        let want = theirs.get(k).unwrap();
        if !same(v, want) && !allowed(k) {
            bad.push(format!("{k}: ours {} vs converter {}", show(v), show(want)));
        }
    }
    assert!(bad.is_empty(), "{name}: values differ:\n{}", bad.join("\n"));
    ours
}

/// A GGUF of `meta` with the tensors of `tensors_from` (a GGUF file's bytes).
fn with_tensors(meta: &[(String, MetaValue)], tensors_from: &[u8]) -> Vec<u8> {
    let g = Gguf::parse(tensors_from).unwrap();
    let tensors: Vec<OutTensor> = g
        .tensors
        .iter()
        .map(|t| OutTensor {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ty: t.ty().unwrap(),
            data: g.tensor_bytes(tensors_from, t).unwrap().to_vec(),
        })
        .collect();
    write_gguf(meta, &tensors).unwrap()
}

fn read_gguf_model(bytes: Vec<u8>, name: &str) -> ModelFiles {
    let blob: Blob = std::sync::Arc::new(bytes);
    read_model(ModelSource::Gguf {
        bytes: blob,
        name: name.into(),
    })
    .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Strings every tokenizer check encodes (ASCII from the training corpus, upper case and digits
/// that fall back to bytes, non-ASCII, special tokens in the text).
const TEXTS: &[&str] = &[
    "the cat sat on the mat",
    "Hello World 12345!",
    "  two  spaces\nand a newline\t tab",
    "naïve café – 日本 🦙",
    "<s>hi</s> <|im_start|>user\nhey<|im_end|> <start_of_turn>x<end_of_turn>",
    "",
];

/// `ours` (our metadata with the converter's tensors) reads back as the converter's file does:
/// same config, same tokenizer ids, same chat template; the ids also equal the HF folder's
/// `tokenizer.json` and, where the case has them, `tokenizer_cases.json`.
fn check_round_trip(dir: &Path, converted: &[u8], ours: &[(String, MetaValue)], name: &str) {
    let mine = read_gguf_model(with_tensors(ours, converted), name);
    let theirs = read_gguf_model(converted.to_vec(), name);
    assert_eq!(mine.config, theirs.config, "{name}: configs differ");
    let (a, b) = (mine.tokenizer.unwrap(), theirs.tokenizer.unwrap());
    let hf = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let mut texts: Vec<String> = TEXTS.iter().map(|s| s.to_string()).collect();
    let cases = dir.join("tokenizer_cases.json");
    let mut expected = Vec::new();
    if cases.exists() {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(cases).unwrap()).unwrap();
        for c in v["cases"].as_array().unwrap() {
            let ids: Vec<u32> = c["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            texts.push(c["text"].as_str().unwrap().to_string());
            expected.push((texts.len() - 1, ids));
        }
    }
    let ids = |t: &tokenizers::Tokenizer, s: &str| t.encode(s, true).unwrap().get_ids().to_vec();
    for t in &texts {
        let got = ids(&a, t);
        assert_eq!(got, ids(&b, t), "{name}: {t:?} vs the converter's GGUF");
        assert_eq!(got, ids(&hf, t), "{name}: {t:?} vs tokenizer.json");
    }
    for (i, want) in expected {
        assert_eq!(ids(&a, &texts[i]), want, "{name}: {:?}", texts[i]);
    }
    assert_eq!(
        mine.chat_template.map(|t| t.source().to_string()),
        theirs.chat_template.map(|t| t.source().to_string()),
        "{name}: chat templates differ"
    );
}

fn arch_case(case: &str) {
    let dir = fixture(&format!("arch/{case}"));
    let gguf = dir.join("model.gguf");
    let ours = check_equal(&dir, &gguf, case, 0);
    check_round_trip(&dir, &std::fs::read(&gguf).unwrap(), &ours, case);
}

#[test]
fn mistral_matches_the_converter() {
    arch_case("mistral");
}

#[test]
fn qwen2_matches_the_converter() {
    arch_case("qwen2");
}

#[test]
fn qwen3_matches_the_converter() {
    arch_case("qwen3");
}

#[test]
fn gemma3_matches_the_converter() {
    arch_case("gemma3");
}

/// A Llama-3-style model (tests/fixtures/gen_gguf_meta.py): byte-level BPE with Llama 3's split
/// regex (`llama-bpe`), ids past the tokenizer padded as `[PADn]`, a non-special added token
/// (USER_DEFINED), an eos list in config.json, sampling keys from generation_config.json, head_dim
/// ≠ hidden/heads, f16 (`file_type` 1), and Llama-3 RoPE scaling, which the converter writes as a
/// `rope_freqs` tensor (compared with `llama3_rope_freqs`).
#[test]
fn llama3_matches_the_converter() {
    let dir = fixture("gguf_meta/llama3");
    let gguf = dir.join("model.gguf");
    let ours = check_equal(&dir, &gguf, "llama3", 1);
    let bytes = std::fs::read(&gguf).unwrap();
    check_round_trip(&dir, &bytes, &ours, "llama3");
    let g = Gguf::parse(&bytes).unwrap();
    let t = g.tensor("rope_freqs.weight").unwrap();
    let want: Vec<f32> = g
        .tensor_bytes(&bytes, t)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let config = Folder::read(&dir).config();
    let got = llama3_rope_freqs(&config).unwrap();
    assert_eq!(got.len(), want.len());
    for (a, b) in got.iter().zip(&want) {
        // torch's f32 pow may differ from Rust's by an ulp.
        assert!(
            (a - b).abs() <= 4.0 * f32::EPSILON * b.abs(),
            "{got:?} vs {want:?}"
        );
    }
    // gguf-py's size label counts every tensor written, rope_freqs included.
    let count: u64 = g.tensors.iter().map(|t| t.n_elems()).sum();
    assert_eq!(gguf_param_count(&config), count);
}

/// `general.file_type` is the caller's: asking for another one changes that key and nothing else.
#[test]
fn file_type_is_the_callers() {
    let folder = Folder::read(&fixture("arch/qwen2"));
    let f32 = hf_gguf_metadata(&folder.config(), &folder.files(), &options("q", 0)).unwrap();
    let q8 = hf_gguf_metadata(&folder.config(), &folder.files(), &options("q", 7)).unwrap();
    assert_eq!(f32.len(), q8.len());
    for ((k, a), (_, b)) in f32.iter().zip(&q8) {
        if k == "general.file_type" {
            assert_eq!((a, b), (&MetaValue::U32(0), &MetaValue::U32(7)));
        } else {
            assert!(same(a, b), "{k}");
        }
    }
}

/// Hostile tokenizer files: typed errors, no panic, no allocation beyond the input's size.
#[test]
fn hostile_tokenizer_files_are_typed_errors() {
    let gemma = Folder::read(&fixture("arch/gemma3"));
    let qwen = Folder::read(&fixture("arch/qwen2"));
    let run = |folder: &Folder, files: HfFiles| {
        hf_gguf_metadata(&folder.config(), &files, &options("x", 0))
    };
    // Truncated or garbled SentencePiece models.
    let model = gemma.files().tokenizer_model.unwrap().to_vec();
    for cut in [1, 2, 7, model.len() / 2, model.len() - 1] {
        let short = model[..cut].to_vec();
        let err = run(
            &gemma,
            HfFiles {
                tokenizer_model: Some(&short),
                ..gemma.files()
            },
        )
        .unwrap_err();
        assert!(
            matches!(err, HfMetaError::SentencePiece(_)),
            "cut {cut}: {err}"
        );
    }
    let huge_len = [0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
    let err = run(
        &gemma,
        HfFiles {
            tokenizer_model: Some(&huge_len),
            ..gemma.files()
        },
    )
    .unwrap_err();
    assert!(matches!(err, HfMetaError::SentencePiece(_)), "{err}");
    // Malformed JSON.
    for bad in [&b"{"[..], b"[1, 2]", b"\xff\xfe", b"{\"model\": 3}"] {
        let err = run(
            &qwen,
            HfFiles {
                tokenizer_json: Some(bad),
                ..qwen.files()
            },
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                HfMetaError::Json { .. }
                    | HfMetaError::Invalid { .. }
                    | HfMetaError::Unsupported(_)
            ),
            "{err}"
        );
        if bad.starts_with(b"{\"model") {
            continue; // a valid tokenizer_config.json
        }
        let err = run(
            &qwen,
            HfFiles {
                tokenizer_config_json: Some(bad),
                ..qwen.files()
            },
        )
        .unwrap_err();
        assert!(
            matches!(err, HfMetaError::Json { .. } | HfMetaError::Invalid { .. }),
            "{err}"
        );
    }
    // Deep nesting stops at serde_json's recursion limit.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let err = run(
        &qwen,
        HfFiles {
            tokenizer_json: Some(deep.as_bytes()),
            ..qwen.files()
        },
    )
    .unwrap_err();
    assert!(matches!(err, HfMetaError::Json { .. }), "{err}");
    // An id far beyond the vocabulary, and an absurd vocab_size, allocate nothing.
    let far = br#"{"model": {"type": "BPE", "vocab": {"a": 18446744073709551615}, "merges": []}}"#;
    let err = run(
        &qwen,
        HfFiles {
            tokenizer_json: Some(far),
            ..qwen.files()
        },
    )
    .unwrap_err();
    assert!(matches!(err, HfMetaError::Invalid { .. }), "{err}");
    let mut config = qwen.config();
    config.vocab_size = 1 << 40;
    let err = hf_gguf_metadata(&config, &qwen.files(), &options("x", 0)).unwrap_err();
    assert!(matches!(err, HfMetaError::Invalid { .. }), "{err}");
    // No tokenizer at all.
    let err = run(
        &qwen,
        HfFiles {
            tokenizer_json: None,
            ..qwen.files()
        },
    )
    .unwrap_err();
    assert!(matches!(err, HfMetaError::NoTokenizer(_)), "{err}");
}

/// The comparison can fail: another name is a value difference…
#[test]
#[should_panic(expected = "values differ")]
fn a_wrong_value_is_caught() {
    let dir = fixture("arch/mistral");
    check_equal(&dir, &dir.join("model.gguf"), "not-mistral", 0);
}

/// …and another architecture's file has other keys.
#[test]
#[should_panic(expected = "keys or their order differ")]
fn other_keys_are_caught() {
    check_equal(
        &fixture("arch/qwen2"),
        &fixture("arch/qwen3/model.gguf"),
        "qwen2",
        0,
    );
}

/// The hash path on a real tokenizer: SmolLM2-135M's vocabulary (as transformers rebuilds it from
/// the SmolLM2 GGUF, `smollm2/reference_tokenizer.json`) hashes to llama.cpp's `smollm` entry,
/// the `tokenizer.ggml.pre` of that GGUF. The fixtures' trained tokenizers are in no table.
#[test]
fn chkhsh_names_smollm2() {
    let bytes = std::fs::read(fixture("smollm2/reference_tokenizer.json")).unwrap();
    let hash = chkhsh(&bytes).unwrap();
    assert_eq!(known_pre(&hash), Some("smollm"), "{hash}");
    let mistral = std::fs::read(fixture("arch/mistral/tokenizer.json")).unwrap();
    assert_eq!(known_pre(&chkhsh(&mistral).unwrap()), None);
}
