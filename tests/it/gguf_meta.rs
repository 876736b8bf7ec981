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
    HfFiles, HfMetaError, HfMetaOptions, gguf_param_count, hf_gguf_metadata, llama3_rope_freqs,
};
use wgtune::io::gguf_write::{OutTensor, write_gguf};
use wgtune::model::arch::parse_hf_config;
use wgtune::model::config::DecoderConfig;
use wgtune::model::loader::{ModelFiles, ModelSource, read_model};

/// Keys whose values may legitimately differ from the converter's file, with the reason. Empty:
/// every fixture is converted with `--outtype f32`, and the tests ask for `file_type` 0 (ALL_F32)
/// too, so `general.file_type` matches as well. (`general.file_type` is the caller's choice;
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
fn check_equal(dir: &Path, gguf: &Path, name: &str) -> Vec<(String, MetaValue)> {
    let folder = Folder::read(dir);
    let ours = hf_gguf_metadata(&folder.config(), &folder.files(), &options(name, 0))
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
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(cases).unwrap()).unwrap();
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
    let ours = check_equal(&dir, &gguf, case);
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
