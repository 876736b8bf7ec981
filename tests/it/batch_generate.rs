//! Batched generation against one-at-a-time decoding: per-row logits at every step within 1e-4
//! (prompts of different lengths, left-padded; rows leaving the batch), and identical tokens for
//! greedy and seeded sampling with rows stopping early, on the tiny Llama (GQA) and Gemma 3
//! (sliding window, softcapping) fixtures on cpu and wgpu, and on the real SmolLM2 GGUF on cpu.

use crate::common::*;
use wgtune::app::files::{DirSource, model_source};
use wgtune::model::decoder::{Decoder, KvCache};
use wgtune::model::generate::{SamplingConfig, generate, generate_batch, row_seeds};
use wgtune::model::loader::{LoadedModel, load_model};
use wgtune::model::read_f32;

/// Prompts of different lengths (ids in 3..253, valid for every fixture vocabulary).
fn prompts(lens: &[usize]) -> Vec<Vec<u32>> {
    token_id_rows(11, lens.iter().copied())
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["input_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

/// Logits `[V]` before each of `forced` (and after the last one), one sequence at a time.
fn unbatched_logits(m: &Decoder, prompt: &[u32], forced: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = KvCache::default();
    let mut out = vec![
        block(read_f32(
            m.next_token_logits(prompt, Some(&mut cache)).unwrap(),
        ))
        .unwrap(),
    ];
    for &t in forced {
        let l = m.next_token_logits(&[t], Some(&mut cache)).unwrap();
        out.push(block(read_f32(l)).unwrap());
    }
    out
}

/// The same logits from one batch: row `r` is fed `forced[r]` and leaves the batch after it.
fn batched_logits(m: &Decoder, prompts: &[Vec<u32>], forced: &[Vec<u32>]) -> Vec<Vec<Vec<f32>>> {
    let v = m.config.vocab_size;
    let mut cache = KvCache::default();
    let mut out: Vec<Vec<Vec<f32>>> = vec![Vec::new(); prompts.len()];
    let mut active: Vec<usize> = (0..prompts.len()).collect();
    let mut logits = block(read_f32(
        m.next_token_logits_batch(prompts, &mut cache).unwrap(),
    ))
    .unwrap();
    assert_eq!(logits.len(), prompts.len() * v);
    for step in 0.. {
        for (k, &r) in active.iter().enumerate() {
            out[r].push(logits[k * v..(k + 1) * v].to_vec());
        }
        let keep: Vec<usize> = (0..active.len())
            .filter(|&k| step < forced[active[k]].len())
            .collect();
        if keep.is_empty() {
            break;
        }
        if keep.len() < active.len() {
            cache.retain_rows(&keep).unwrap();
            active = keep.iter().map(|&k| active[k]).collect();
        }
        let next: Vec<Vec<u32>> = active.iter().map(|&r| vec![forced[r][step]]).collect();
        let l = m.next_token_logits_batch(&next, &mut cache).unwrap();
        logits = block(read_f32(l)).unwrap();
        assert_eq!(logits.len(), active.len() * v);
    }
    out
}

fn argmax(x: &[f32]) -> usize {
    (0..x.len()).fold(0, |b, i| if x[i] > x[b] { i } else { b })
}

/// Largest minus second-largest.
fn top2_gap(x: &[f32]) -> f32 {
    let mut s = x.to_vec();
    s.sort_by(|a, b| b.total_cmp(a));
    s[0] - s[1]
}

/// Per-row logits of batched decoding equal one-at-a-time decoding within `tol` at every step;
/// the argmax agrees wherever the top-2 gap exceeds 1e-3.
fn check_logits(m: &Decoder, lens: &[usize], steps: &[usize], tol: f32) {
    let ps = prompts(lens);
    // Feed each row its own greedy continuation (so the steps follow a real decode).
    let forced: Vec<Vec<u32>> = ps
        .iter()
        .zip(steps)
        .map(|(p, &n)| {
            let cfg = SamplingConfig {
                max_new_tokens: n,
                ..Default::default()
            };
            let mut m2 = Vec::new();
            let g = block(generate(m, p, &cfg, |t| m2.push(t))).unwrap();
            assert_eq!(g.tokens, m2);
            g.tokens
        })
        .collect();
    let batched = batched_logits(m, &ps, &forced);
    for (r, p) in ps.iter().enumerate() {
        let want = unbatched_logits(m, p, &forced[r]);
        assert_eq!(batched[r].len(), want.len(), "row {r}: steps");
        for (s, (got, want)) in batched[r].iter().zip(&want).enumerate() {
            let d = max_abs_diff(got, want);
            assert!(
                d <= tol,
                "row {r} (prompt {}), step {s}: logits differ by {d}",
                p.len()
            );
            if top2_gap(want) > 1e-3 {
                assert_eq!(argmax(got), argmax(want), "row {r}, step {s}: argmax");
            }
        }
    }
}

/// Batched generation gives every row the tokens of an unbatched run with that row's seed, for
/// greedy and seeded sampling, with one token made a stop token so that some rows stop early
/// (on it) while others run to `max_new`.
fn check_tokens(mut lm: LoadedModel, lens: &[usize], max_new: usize) {
    let ps = prompts(lens);
    let m = &mut lm.model;
    m.config.eos_token_ids.clear();
    m.config.stop_token_ids.clear();
    for (temperature, top_p) in [(0.0, 1.0), (0.9, 0.95)] {
        let cfg = SamplingConfig {
            temperature,
            top_p,
            max_new_tokens: max_new,
            seed: 1234,
        };
        let seeds = row_seeds(cfg.seed, ps.len());
        let one = |m: &Decoder, r: usize| {
            let c = SamplingConfig {
                seed: seeds[r],
                ..cfg.clone()
            };
            block(generate(m, &ps[r], &c, |_| {})).unwrap()
        };
        // Make the 3rd token of row 1's free run a stop token.
        let free = one(m, 1);
        assert_eq!(free.tokens.len(), max_new);
        m.config.stop_token_ids = vec![free.tokens[2]];
        let want: Vec<_> = (0..ps.len()).map(|r| one(m, r)).collect();
        let mut streamed = vec![Vec::new(); ps.len()];
        let got = block(generate_batch(m, &ps, &cfg, None, |r, t| {
            streamed[r].push(t)
        }))
        .unwrap();
        assert_eq!(got.len(), ps.len());
        for (r, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.tokens,
                w.tokens,
                "t={temperature}: row {r} (prompt {})",
                ps[r].len()
            );
            assert_eq!(
                g.stopped_on_eos, w.stopped_on_eos,
                "t={temperature}: row {r}"
            );
            assert_eq!(streamed[r], g.tokens, "row {r}: on_token stream");
        }
        // Explicit per-row seeds give the same as the default rule.
        let again = block(generate_batch(m, &ps, &cfg, Some(&seeds), |_, _| {})).unwrap();
        for (a, g) in again.iter().zip(&got) {
            assert_eq!(a.tokens, g.tokens);
        }
        assert!(got[1].stopped_on_eos && got[1].tokens.len() < max_new);
        assert!(
            got.iter().any(|g| g.tokens.len() == max_new),
            "t={temperature}: no row ran to max_new_tokens: {:?}",
            got.iter().map(|g| g.tokens.len()).collect::<Vec<_>>()
        );
        m.config.stop_token_ids.clear();
    }
}

const LENS: &[usize] = &[3, 9, 1, 6];
const STEPS: &[usize] = &[8, 3, 10, 0];

fn tiny(backend: &str) -> LoadedModel {
    load_hf(&fixture("tiny_gqa"), &device(backend))
}

fn gemma(backend: &str) -> LoadedModel {
    load_hf(&fixture("arch/gemma3"), &device(backend))
}

#[test]
fn batch_errors_are_clean() {
    let lm = tiny("cpu");
    let m = &lm.model;
    let mut cache = KvCache::default();
    assert!(
        m.next_token_logits_batch(&[vec![5], vec![]], &mut cache)
            .is_err()
    );
    m.next_token_logits_batch(&[vec![5, 6], vec![7]], &mut cache)
        .unwrap();
    assert_eq!((cache.rows(), cache.pads()), (2, &[0, 1][..]));
    // A filled cache of 2 rows takes 2 rows of one equal length.
    assert!(m.next_token_logits_batch(&[vec![5]], &mut cache).is_err());
    assert!(
        m.next_token_logits_batch(&[vec![5], vec![6, 7]], &mut cache)
            .is_err()
    );
    assert!(cache.retain_rows(&[2]).is_err());
    cache.retain_rows(&[0]).unwrap();
    assert_eq!((cache.rows(), cache.pads()), (1, &[][..]));
    let cfg = SamplingConfig::default();
    assert!(
        block(generate_batch(
            m,
            &[vec![5]],
            &cfg,
            Some(&[1, 2]),
            |_, _| {}
        ))
        .is_err()
    );
    assert!(
        block(generate_batch(m, &[], &cfg, None, |_, _| {}))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn cpu_tiny_gqa_logits_match_unbatched() {
    check_logits(&tiny("cpu").model, LENS, STEPS, 1e-4);
}

#[test]
fn cpu_tiny_gqa_tokens_match_unbatched() {
    check_tokens(tiny("cpu"), LENS, 10);
}

#[test]
fn cpu_gemma3_sliding_window_logits_match_unbatched() {
    // Window 5: prompts and continuations run well past it.
    check_logits(&gemma("cpu").model, &[2, 11, 7, 4], &[9, 2, 6, 12], 1e-4);
}

#[test]
fn cpu_gemma3_tokens_match_unbatched() {
    check_tokens(gemma("cpu"), &[2, 11, 7, 4], 10);
}

#[test]
fn wgpu_tiny_gqa_logits_match_unbatched() {
    check_logits(&tiny("wgpu").model, LENS, STEPS, 1e-4);
}

#[test]
fn wgpu_tiny_gqa_tokens_match_unbatched() {
    check_tokens(tiny("wgpu"), LENS, 10);
}

#[test]
fn wgpu_gemma3_sliding_window_logits_match_unbatched() {
    check_logits(&gemma("wgpu").model, &[2, 11, 7, 4], &[9, 2, 6, 12], 1e-4);
}

#[test]
fn wgpu_gemma3_tokens_match_unbatched() {
    check_tokens(gemma("wgpu"), &[2, 11, 7, 4], 10);
}

fn smollm2() -> LoadedModel {
    let mut dir: Option<DirSource> = None;
    let src = model_source(&asset("SmolLM2-135M-Instruct.Q4_1.gguf"), &mut dir).unwrap();
    load_model(src, &device("cpu"), None).unwrap()
}

#[test]
fn cpu_smollm2_batched_matches_unbatched() {
    let lm = smollm2();
    check_logits(&lm.model, &[5, 17, 1], &[6, 2, 4], 1e-4);
    check_tokens(lm, &[5, 17, 1], 8);
}
