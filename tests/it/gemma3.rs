//! The real Gemma 3 270M Q4_K_M GGUF (Q4_K, Q5_0, Q6_K and Q8_0 blocks) against transformers'
//! own GGUF load of the same file in f32 (`tests/fixtures/gen_gemma3.py`): logits, loss, a
//! 600-token sequence past the 512-token sliding window, and greedy decoding; on the CPU backend
//! and, with the K-quant base packed for the fused kernels, on wgpu.

use crate::common::*;
use burn::tensor::{Int, Tensor, TensorData};
use serde_json::Value;
use std::sync::OnceLock;
use wgtune::app::files::{DirSource, model_source};
use wgtune::model::generate::{SamplingConfig, generate};
use wgtune::model::loader::{LoadedModel, load_model};
use wgtune::model::read_f32;

const GGUF: &str = "gemma-3-270m-q4_k_m.gguf";

fn load(backend: &str) -> LoadedModel {
    let mut dir: Option<DirSource> = None;
    let src = model_source(&asset(GGUF), &mut dir).unwrap();
    load_model(src, &device(backend), None).unwrap()
}

fn cpu_model() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| load("cpu"))
}

fn expected() -> Tensors {
    read_tensors(&fixture("gemma3/expected.safetensors"))
}

/// Logits of the positions `at` of `ids` (one sequence) and its loss.
fn logits_at(lm: &LoadedModel, ids: &[u32], at: &[usize]) -> (Vec<f32>, f32) {
    let m = &lm.model;
    let h = m.hidden_states(&[ids.to_vec()], None).unwrap();
    let [_, t, d] = h.dims();
    let rows = at.iter().map(|&p| p as i64).collect::<Vec<_>>();
    let idx = Tensor::<1, Int>::from_data(TensorData::new(rows, [at.len()]), &m.device());
    let logits = m.logits_of(h.reshape([t, d]).select(0, idx));
    let labels = vec![ids.iter().map(|&x| x as i64).collect::<Vec<_>>()];
    let (loss, _) = m.chunked_loss(&[ids.to_vec()], &labels).unwrap();
    (
        block(read_f32(logits)).unwrap(),
        block(read_f32(loss)).unwrap()[0],
    )
}

/// Checks one fixture sequence (`a` or `b`): the first 64 logits of the fixture's positions,
/// 2048 columns of the last position, and the loss, within 1e-3.
fn check_sequence(lm: &LoadedModel, e: &Tensors, key: &str, positions: &[usize]) {
    let ids: Vec<u32> = e.i64[&format!("{key}.input_ids")]
        .1
        .iter()
        .map(|&x| x as u32)
        .collect();
    let last = ids.len() - 1;
    let mut at = positions.to_vec();
    at.push(last);
    let (logits, loss) = logits_at(lm, &ids, &at);
    let v = lm.model.config.vocab_size;
    let head: Vec<f32> = (0..positions.len())
        .flat_map(|i| logits[i * v..i * v + 64].to_vec())
        .collect();
    let d_head = max_abs_diff(&head, &e.f32[&format!("{key}.logits_head")].1);
    let last_row = &logits[positions.len() * v..];
    let cols = &e.i64[&format!("{key}.cols")].1;
    let got_cols: Vec<f32> = cols.iter().map(|&c| last_row[c as usize]).collect();
    let d_last = max_abs_diff(&got_cols, &e.f32[&format!("{key}.logits_last_cols")].1);
    let want_loss = e.f32[&format!("{key}.loss")].1[0];
    assert!(
        d_head < 1e-3 && d_last < 1e-3 && (loss - want_loss).abs() < 1e-3,
        "{key}: logits off by {d_head} (head) / {d_last} (last row), loss {loss} vs {want_loss}"
    );
}

#[test]
fn logits_and_loss_match_transformers_on_cpu() {
    let e = expected();
    let t = e.i64["a.input_ids"].0[1];
    check_sequence(cpu_model(), &e, "a", &(0..t).collect::<Vec<_>>());
    // 600 tokens: positions from 512 on no longer see the start on the sliding layers.
    let b_pos: Vec<usize> = e.i64["b.positions"].1.iter().map(|&p| p as usize).collect();
    check_sequence(cpu_model(), &e, "b", &b_pos);
}

#[test]
fn logits_match_transformers_on_wgpu_with_a_packed_k_quant_base() {
    let lm = load("wgpu");
    let s = lm.model.base_summary();
    assert!(
        s.packed == 18 * 7 && s.dense == 0,
        "every decoder linear stays packed: {s:?}"
    );
    let e = expected();
    let t = e.i64["a.input_ids"].0[1];
    check_sequence(&lm, &e, "a", &(0..t).collect::<Vec<_>>());
}

#[test]
fn greedy_continuation_matches_transformers() {
    let g: Value =
        serde_json::from_slice(&std::fs::read(fixture("gemma3/greedy.json")).unwrap()).unwrap();
    let ids_of = |k: &str| -> Vec<u32> {
        g[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let (prompt, want) = (ids_of("ids"), ids_of("greedy_ids"));
    let lm = cpu_model();
    let tok = lm.tokenizer.as_ref().unwrap();
    let enc = tok.encode(g["prompt"].as_str().unwrap(), true).unwrap();
    assert_eq!(enc.get_ids(), prompt.as_slice());
    let cfg = SamplingConfig {
        max_new_tokens: want.len(),
        ..Default::default()
    };
    let out = block(generate(&lm.model, &prompt, &cfg, |_| {})).unwrap();
    assert_eq!(out.tokens, want, "greedy ids differ");
    assert_eq!(
        tok.decode(&out.tokens, false).unwrap(),
        g["text"].as_str().unwrap()
    );
}
