//! Tiny random Llamas made by transformers (GQA + untied head; tied + Llama-3 RoPE + bf16 shards):
//! our logits, loss and gradients must match within 1e-4 on both backends.

use crate::common::*;
use burn::tensor::Tensor;
use wgtune::model::decoder::{Decoder, causal_lm_loss};
use wgtune::model::linear::BaseLinear;
use wgtune::model::read_f32;
use wgtune::model::roles::Role;

const TOL: f32 = 1e-4;

/// A tracked leaf: norms are vectors, the rest matrices.
pub enum Leaf {
    Vector(Tensor<1>),
    Matrix(Tensor<2>),
}

impl Leaf {
    fn grad(&self, grads: &burn::tensor::Gradients) -> Option<Vec<f32>> {
        match self {
            Leaf::Vector(t) => t.grad(grads).map(|g| block(read_f32(g)).unwrap()),
            Leaf::Matrix(t) => t.grad(grads).map(|g| block(read_f32(g)).unwrap()),
        }
    }
}

/// The single shard of a fixture-sized vocabulary matrix.
fn only_shard(m: &wgtune::model::vocab::VocabMatrix) -> Tensor<2> {
    let [one] = m.shards() else {
        panic!("a fixture vocabulary fits one shard")
    };
    one.clone()
}

/// Mark the base weights the fixture has gradients for as trainable; return them by HF name.
/// Names are matched through the model's own role table, so every architecture works.
pub fn track(model: &mut Decoder, names: &[&str]) -> Vec<(String, Leaf)> {
    let arch = model.config.arch;
    let mut out = Vec::new();
    for &name in names {
        let t = if name == arch.hf_name(Role::TokenEmbd, None) {
            model.embed_tokens = model.embed_tokens.clone().require_grad();
            Leaf::Matrix(only_shard(&model.embed_tokens))
        } else if name == arch.hf_name(Role::Output, None) {
            let h = model.lm_head.take().unwrap().require_grad();
            let leaf = Leaf::Matrix(only_shard(&h));
            model.lm_head = Some(h);
            leaf
        } else if name == arch.hf_name(Role::OutputNorm, None) {
            model.norm.weight = model.norm.weight.clone().require_grad();
            Leaf::Vector(model.norm.weight.clone())
        } else {
            let rest = name.strip_prefix("model.layers.").unwrap();
            let (l, tail) = rest.split_once('.').unwrap();
            let l: usize = l.parse().unwrap();
            let block = &mut model.layers[l];
            let is = |r: Role| arch.hf_name(r, Some(l)) == name;
            if let Some((_, n)) = block.norms_mut().into_iter().find(|(r, _)| is(*r)) {
                n.weight = n.weight.clone().require_grad();
                Leaf::Vector(n.weight.clone())
            } else if let Some(module) = tail.strip_suffix(".bias") {
                let (_, lin) = block
                    .linears_mut()
                    .into_iter()
                    .find(|(n, _)| *n == module)
                    .unwrap();
                let b = lin.bias.take().unwrap().require_grad();
                lin.bias = Some(b.clone());
                Leaf::Vector(b)
            } else {
                let module = tail.strip_suffix(".weight").unwrap();
                let (_, lin) = block
                    .linears_mut()
                    .into_iter()
                    .find(|(n, _)| *n == module)
                    .unwrap_or_else(|| panic!("no tensor {name} in the model"));
                let w = lin.base.dense().require_grad();
                lin.base = BaseLinear::Dense(w.clone());
                Leaf::Matrix(w)
            }
        };
        out.push((name.to_string(), t));
    }
    out
}

/// Compare a transformers fixture folder's logits, loss and base-weight gradients with ours.
pub fn check_fixture(name: &str, backend: &str) {
    let dir = fixture(name);
    let expected = read_tensors(&dir.join("expected.safetensors"));
    let (ids_shape, ids) = &expected.i64["input_ids"];
    let (_, labels) = &expected.i64["labels"];
    let ids: Vec<Vec<u32>> = rows(ids_shape, ids)
        .into_iter()
        .map(|r| r.into_iter().map(|x| x as u32).collect())
        .collect();
    let labels = rows(ids_shape, labels);
    let device = device(backend).autodiff();
    let mut lm = load_hf(&dir, &device);
    let grad_names: Vec<&str> = expected
        .f32
        .keys()
        .filter_map(|k| k.strip_prefix("grad/"))
        .collect();
    let tracked = track(&mut lm.model, &grad_names);

    let logits = lm.model.forward(&ids, None).unwrap();
    let (loss, _) = causal_lm_loss(logits.clone(), &labels).unwrap();
    let grads = loss.backward();
    let got_logits = block(read_f32(logits.detach())).unwrap();
    let (want_shape, want_logits) = &expected.f32["logits"];
    assert_eq!(&lm.model.config.vocab_size, want_shape.last().unwrap());
    let d = max_abs_diff(&got_logits, want_logits);
    assert!(d < TOL, "{name}/{backend}: logits differ by {d}");
    let got_loss = block(read_f32(loss.detach())).unwrap()[0];
    let want_loss = expected.f32["loss"].1[0];
    assert!(
        (got_loss - want_loss).abs() < TOL,
        "{name}/{backend}: loss {got_loss} vs {want_loss}"
    );
    assert!(!tracked.is_empty());
    for (name_w, t) in tracked {
        let got = t
            .grad(&grads)
            .unwrap_or_else(|| panic!("no gradient for {name_w}"));
        let (_, want) = &expected.f32[&format!("grad/{name_w}")];
        let d = max_abs_diff(&got, want);
        assert!(
            d < TOL,
            "{name}/{backend}: gradient of {name_w} differs by {d}"
        );
    }
}

#[test]
fn tiny_gqa_cpu() {
    check_fixture("tiny_gqa", "cpu");
}

#[test]
fn tiny_tied_llama3_cpu() {
    check_fixture("tiny_tied_llama3", "cpu");
}

#[test]
fn tiny_gqa_wgpu() {
    check_fixture("tiny_gqa", "wgpu");
}

#[test]
fn tiny_tied_llama3_wgpu() {
    check_fixture("tiny_tied_llama3", "wgpu");
}

/// Generation with the KV cache must produce the same greedy tokens as full re-computation.
#[test]
fn kv_cache_matches_full_forward() {
    use wgtune::model::generate::{SamplingConfig, generate};
    let device = device("cpu");
    let mut lm = load_hf(&fixture("tiny_gqa"), &device);
    lm.model.config.eos_token_ids.clear();
    let prompt = vec![5u32, 17, 99, 3];
    let cfg = SamplingConfig {
        max_new_tokens: 8,
        ..Default::default()
    };
    let cached = block(generate(&lm.model, &prompt, &cfg, |_| {}))
        .unwrap()
        .tokens;
    let mut seq = prompt.clone();
    for _ in 0..8 {
        let logits = lm.model.forward(&[seq.clone()], None).unwrap();
        let [_, t, v] = logits.dims();
        let row = block(read_f32(logits.slice([0..1, t - 1..t, 0..v]))).unwrap();
        let next = row
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0 as u32;
        seq.push(next);
    }
    assert_eq!(cached, seq[prompt.len()..].to_vec());
}
