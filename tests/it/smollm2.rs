//! The real demo model, SmolLM2-135M-Instruct Q4_1 GGUF, on the CPU backend against transformers'
//! own GGUF loading (dequantized, Q/K permutation undone) and its GGUF-built tokenizer.

use crate::common::*;
use serde_json::Value;
use std::sync::OnceLock;
use wgtune::app::files::{DirSource, model_source};
use wgtune::io::chat::ChatMessage;
use wgtune::model::decoder::causal_lm_loss;
use wgtune::model::generate::{SamplingConfig, generate};
use wgtune::model::loader::{LoadedModel, ModelFiles, load_model, read_model};
use wgtune::model::read_f32;

const GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn model() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| {
        let mut dir: Option<DirSource> = None;
        let src = model_source(&asset(GGUF), &mut dir).unwrap();
        load_model(src, &device("cpu"), None).unwrap()
    })
}

fn files() -> ModelFiles {
    let mut dir: Option<DirSource> = None;
    read_model(model_source(&asset(GGUF), &mut dir).unwrap()).unwrap()
}

fn json(rel: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixture(rel)).unwrap()).unwrap()
}

#[test]
fn logits_match_transformers_gguf_reference() {
    let expected = read_tensors(&fixture("smollm2/expected.safetensors"));
    let (shape, ids) = &expected.i64["input_ids"];
    let ids: Vec<u32> = ids.iter().map(|&x| x as u32).collect();
    let lm = model();
    let logits = lm.model.forward(std::slice::from_ref(&ids), None).unwrap();
    let labels = vec![ids.iter().map(|&x| x as i64).collect::<Vec<_>>()];
    let (loss, _) = causal_lm_loss(logits.clone(), &labels).unwrap();
    let v = lm.model.config.vocab_size;
    let t = shape[1];
    let all = block(read_f32(logits)).unwrap();
    let (head_shape, want_head) = &expected.f32["logits_head"];
    let cols = head_shape[1];
    let got_head: Vec<f32> = (0..t)
        .flat_map(|i| all[i * v..i * v + cols].to_vec())
        .collect();
    let d_head = max_abs_diff(&got_head, want_head);
    let d_last = max_abs_diff(&all[(t - 1) * v..], &expected.f32["logits_last"].1);
    assert!(
        d_head < 1e-3 && d_last < 1e-3,
        "logits differ: head {d_head}, last row {d_last}"
    );
    let got_loss = block(read_f32(loss)).unwrap()[0];
    let want_loss = expected.f32["loss"].1[0];
    assert!(
        (got_loss - want_loss).abs() < 1e-3,
        "loss {got_loss} vs {want_loss}"
    );
}

#[test]
fn greedy_continuation_matches_reference() {
    let g = json("smollm2/greedy.json");
    let ids: Vec<u32> = g["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let want: Vec<u32> = g["greedy_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let lm = model();
    let tok = lm.tokenizer.as_ref().unwrap();
    assert_eq!(
        tok.encode(g["prompt"].as_str().unwrap(), false)
            .unwrap()
            .get_ids(),
        ids.as_slice()
    );
    let cfg = SamplingConfig {
        max_new_tokens: want.len(),
        ..Default::default()
    };
    let out = block(generate(&lm.model, &ids, &cfg, |_| {})).unwrap();
    assert_eq!(
        out.tokens,
        want[..out.tokens.len()].to_vec(),
        "greedy ids differ"
    );
    assert!(out.tokens.len() == want.len() || out.stopped_on_eos);
}

#[test]
fn tokenizer_ids_identical_to_reference() {
    let cases = json("smollm2/tokenizer_cases.json");
    let tok = files().tokenizer.unwrap();
    let list = cases["cases"]
        .as_array()
        .or_else(|| cases.as_array())
        .expect("cases list");
    assert!(list.len() >= 300, "only {} cases", list.len());
    let mut bad = Vec::new();
    for c in list {
        let text = c["text"].as_str().unwrap();
        let want: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let got = tok.encode(text, false).unwrap().get_ids().to_vec();
        if got != want {
            bad.push(format!("{text:?}: got {got:?}, want {want:?}"));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} differ, e.g. {}",
        bad.len(),
        list.len(),
        bad[0]
    );
}

#[test]
fn chat_template_renders_like_transformers() {
    let fx = json("smollm2/chat_template.json");
    let tmpl = files().chat_template.expect("GGUF chat template");
    for case in fx["cases"].as_array().unwrap() {
        let msgs: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
        let got = tmpl
            .render(&msgs, case["add_generation_prompt"].as_bool().unwrap())
            .unwrap();
        assert_eq!(got, case["rendered"].as_str().unwrap());
    }
}

#[test]
fn dequantized_and_unpermuted_weights_match() {
    let f = files();
    let dq = read_tensors(&fixture("smollm2/dequant.safetensors"));
    for (name, (shape, want)) in &dq.f32 {
        let hf = name.starts_with("model.");
        let key = if hf {
            name.clone()
        } else {
            match name.as_str() {
                "token_embd.weight" => "model.embed_tokens.weight".into(),
                "blk.0.ffn_down.weight" => "model.layers.0.mlp.down_proj.weight".into(),
                // q is stored permuted in GGUF; its HF-layout rows are checked under the HF name
                _ => continue,
            }
        };
        let t = &f.checkpoint.tensors[&key];
        let all = t.to_f32().unwrap();
        let got = &all[..want.len()];
        let d = max_abs_diff(got, want);
        assert!(
            d == 0.0,
            "{name} ({}x{}) differs by {d}",
            shape[0],
            shape[1]
        );
    }
}
