//! The tokenizer of the real Gemma 3 270M GGUF (Q4_K_M) against the one transformers builds from
//! the same file (`AutoTokenizer.from_pretrained(assets, gguf_file=...)`, a `GemmaTokenizer`).
//! Fixture: tests/fixtures/gemma3_tokenizer/tokenizer_cases.json from gen_gemma_tokenizer.py.
//! Only the tokenizer metadata is read; the model's K-quant tensors are not touched.

use crate::common::*;
use serde_json::Value;
use std::sync::OnceLock;
use tokenizers::Tokenizer;
use wgtune::io::gguf::Gguf;
use wgtune::io::tokenizer::tokenizer_from_gguf;

const GGUF: &str = "gemma-3-270m-q4_k_m.gguf";

/// The tokenizer built from the GGUF, once for all tests here.
fn tokenizer() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let bytes = std::fs::read(asset(GGUF)).unwrap();
        let g = Gguf::parse(&bytes).unwrap();
        tokenizer_from_gguf(&g).unwrap()
    })
}

fn cases() -> &'static Value {
    static C: OnceLock<Value> = OnceLock::new();
    C.get_or_init(|| {
        let path = fixture("gemma3_tokenizer/tokenizer_cases.json");
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    })
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// FNV-1a 64 over `chunks`' bytes, as gen_gemma_tokenizer.py computes it.
fn fnv1a64<'a>(chunks: impl IntoIterator<Item = &'a str>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for chunk in chunks {
        for &b in chunk.as_bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

#[test]
fn ids_and_decoding_match_transformers() {
    let tok = tokenizer();
    let list = cases()["cases"].as_array().expect("cases list");
    assert!(list.len() >= 40, "only {} cases", list.len());
    let mut bad = Vec::new();
    for c in list {
        let text = c["text"].as_str().unwrap();
        let want = ids(&c["ids"]);
        let got = tok.encode(text, true).unwrap().get_ids().to_vec();
        if got != want {
            bad.push(format!("{text:?}: got {got:?}, want {want:?}"));
        }
        let decoded = tok.decode(&want, false).unwrap();
        let want_decoded = c["decoded"].as_str().unwrap();
        if decoded != want_decoded {
            bad.push(format!(
                "decode of {text:?}: got {decoded:?}, want {want_decoded:?}"
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "{} mismatches over {} cases:\n{}",
        bad.len(),
        list.len(),
        bad.join("\n")
    );
}

#[test]
fn special_tokens_match_transformers() {
    let tok = tokenizer();
    let fx = cases();
    assert_eq!(
        tok.get_vocab_size(true) as u64,
        fx["vocab_size"].as_u64().unwrap()
    );
    for (token, key) in [
        ("<bos>", "bos_token_id"),
        ("<eos>", "eos_token_id"),
        ("<unk>", "unk_token_id"),
        ("<pad>", "pad_token_id"),
        ("<start_of_turn>", "start_of_turn_id"),
        ("<end_of_turn>", "end_of_turn_id"),
    ] {
        let want = fx[key].as_u64().unwrap() as u32;
        assert_eq!(tok.token_to_id(token), Some(want), "{token}");
    }
    // A chat turn: BOS, then the turn markers whole (special), the text between them split.
    let enc = tok
        .encode("<start_of_turn>user\nHi<end_of_turn>\n", true)
        .unwrap();
    let got = enc.get_ids();
    assert_eq!(
        got[..2],
        [2, fx["start_of_turn_id"].as_u64().unwrap() as u32]
    );
    assert_eq!(
        tok.decode(got, true).unwrap(),
        "user\nHi\n",
        "skip_special_tokens drops <bos> and the turn markers"
    );
}

/// The whole assembled tokenizer, not only the sampled strings: the same pipeline components as
/// transformers' backend JSON, the same merges in the same order, the same added tokens.
#[test]
fn pipeline_merges_and_added_tokens_match_transformers() {
    let tok = tokenizer();
    let fx = cases();
    let ours: Value = serde_json::from_str(&tok.to_string(false).unwrap()).unwrap();
    for part in ["normalizer", "pre_tokenizer", "post_processor", "decoder"] {
        assert_eq!(ours[part], fx[part], "{part}");
    }
    let model = &ours["model"];
    assert_eq!(model["type"], "BPE");
    assert_eq!(model["byte_fallback"], true);
    assert_eq!(model["fuse_unk"], true);
    assert_eq!(model["unk_token"], "<unk>");

    let merges = model["merges"].as_array().unwrap();
    assert_eq!(merges.len() as u64, fx["num_merges"].as_u64().unwrap());
    let pair = |m: &Value| -> (String, String) {
        let m = m.as_array().unwrap();
        (
            m[0].as_str().unwrap().to_string(),
            m[1].as_str().unwrap().to_string(),
        )
    };
    let pairs: Vec<(String, String)> = merges.iter().map(pair).collect();
    let head: Vec<String> = pairs[..5].iter().map(|(a, b)| format!("{a} {b}")).collect();
    let want_head: Vec<&str> = fx["merges_head"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert_eq!(head, want_head);
    let digest = fnv1a64(
        pairs
            .iter()
            .flat_map(|(a, b)| [a.as_str(), "\0", b.as_str(), "\0"]),
    );
    assert_eq!(digest, fx["merges_fnv1a64"].as_str().unwrap(), "merges");

    let mut added: Vec<(u64, String, bool)> = ours["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["id"].as_u64().unwrap(),
                t["content"].as_str().unwrap().to_string(),
                t["special"].as_bool().unwrap(),
            )
        })
        .collect();
    added.sort_by_key(|t| t.0);
    assert_eq!(added.len() as u64, fx["num_added_tokens"].as_u64().unwrap());
    let special = added.iter().filter(|t| t.2).count() as u64;
    assert_eq!(special, fx["num_special_added_tokens"].as_u64().unwrap());
    let rows: Vec<String> = added
        .iter()
        .map(|(id, content, special)| format!("{id}\0{content}\0{}\0", u8::from(*special)))
        .collect();
    let digest = fnv1a64(rows.iter().map(String::as_str));
    assert_eq!(
        digest,
        fx["added_tokens_fnv1a64"].as_str().unwrap(),
        "added tokens"
    );
}
