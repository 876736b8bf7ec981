//! Every architecture against the reference stack (tests/fixtures/gen_arch.py): tiny random
//! Mistral, Qwen2, Qwen3 and Gemma 3 models made by transformers give our logits, loss and base
//! gradients within 1e-4 on both backends; peft's LoRA and OFTv2 adapters on them give peft's
//! logits and adapter gradients; `merge` writes a folder of the same architecture with peft's
//! merged logits; and llama.cpp's own conversion of each model to GGUF reads back to the logits
//! transformers computes for what that GGUF carries.

use crate::common::*;
use crate::hf_fixtures::check_fixture;
use crate::peft_fixtures::check_grads;
use wgtune::app::files::DirSource;
use wgtune::io::Blob;
use wgtune::model::loader::{ModelSource, load_model};
use wgtune::model::read_f32;

const TOL: f32 = 1e-4;

fn dir(case: &str) -> String {
    format!("arch/{case}")
}

/// Base logits, loss and gradients vs transformers.
fn base(case: &str, backend: &str) {
    check_fixture(&dir(case), backend);
}

/// peft's adapter on the case: logits, loss, adapter gradients, then merged logits.
fn peft(case: &str, method: &str, backend: &str) {
    let d = dir(case);
    let (lm, _, want, b) = check_grads(&d, &d, &format!("{d}/peft/{method}"), backend);
    let mut model = lm.model;
    for block in model.layers.iter_mut() {
        for (_, lin) in block.linears_mut() {
            if let Some(ad) = lin.adapter.take() {
                lin.base = wgtune::model::linear::BaseLinear::Dense(ad.merge(&lin.base.dense()));
            }
        }
    }
    let got = block(read_f32(model.forward(&b.input_ids, None).unwrap())).unwrap();
    let diff = max_abs_diff(&got, &want.f32["merged_logits"].1);
    assert!(
        diff < TOL,
        "{case}/{method}/{backend}: merged logits differ by {diff}"
    );
}

/// llama.cpp's GGUF of the case vs transformers on the settings that GGUF carries.
fn gguf(case: &str, backend: &str) {
    let d = fixture(&dir(case));
    let want = read_tensors(&d.join("gguf_expected.safetensors"));
    let (shape, ids) = &want.i64["input_ids"];
    let ids: Vec<Vec<u32>> = rows(shape, ids)
        .into_iter()
        .map(|r| r.into_iter().map(|x| x as u32).collect())
        .collect();
    let path = d.join("model.gguf");
    let bytes: Blob = std::sync::Arc::new(std::fs::read(&path).unwrap());
    let src = ModelSource::Gguf {
        bytes,
        name: path.display().to_string(),
    };
    let lm = load_model(src, &device(backend), None).unwrap_or_else(|e| panic!("{e}"));
    let got = block(read_f32(lm.model.forward(&ids, None).unwrap())).unwrap();
    let diff = max_abs_diff(&got, &want.f32["logits"].1);
    assert!(diff < TOL, "{case}/gguf/{backend}: logits differ by {diff}");
}

/// `wgtune merge` of the case's LoRA writes config.json naming the same architecture, and the
/// folder loads back with peft's merged logits.
fn merge_folder(case: &str) {
    let d = fixture(&dir(case));
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    wgtune::app::merge::merge_into(&d, None, &d.join("peft/lora/adapter"), &out).unwrap();
    let read = |p: &std::path::Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p.join("config.json")).unwrap()).unwrap()
    };
    let (orig, merged) = (read(&d), read(&out));
    for key in ["architectures", "model_type"] {
        assert_eq!(orig[key], merged[key], "{case}: config.json `{key}`");
    }
    let config = |p: &std::path::Path| {
        let src = DirSource::new(p);
        wgtune::model::loader::read_model(ModelSource::HfFolder(&src))
            .unwrap()
            .config
    };
    assert_eq!(
        config(&d),
        config(&out),
        "{case}: merged config reads differently"
    );
    let cpu = device("cpu");
    let lm = load_hf(&out, &cpu);
    let want = read_tensors(&d.join("peft/lora/expected.safetensors"));
    let b = crate::peft_fixtures::batch_of(&dir(case));
    let got = block(read_f32(lm.model.forward(&b.input_ids, None).unwrap())).unwrap();
    let diff = max_abs_diff(&got, &want.f32["merged_logits"].1);
    assert!(diff < TOL, "{case}: merged folder logits differ by {diff}");
}

macro_rules! arch_tests {
    ($($case:ident),*) => {
        mod cpu {
            $(
                #[test]
                fn $case() {
                    let case = stringify!($case);
                    super::base(case, "cpu");
                    super::peft(case, "lora", "cpu");
                    super::peft(case, "oft", "cpu");
                    super::gguf(case, "cpu");
                    super::merge_folder(case);
                }
            )*
        }
        mod wgpu {
            $(
                #[test]
                fn $case() {
                    let case = stringify!($case);
                    super::base(case, "wgpu");
                    super::peft(case, "lora", "wgpu");
                    super::gguf(case, "wgpu");
                }
            )*
        }
    };
}

arch_tests!(mistral, qwen2, qwen3, gemma3);

/// The chunked loss used in training equals the plain loss on full logits (1e-5) and gives the
/// same adapter gradients, with several chunks and with Gemma's softcapping.
#[test]
fn chunked_loss_matches_full_logits() {
    use wgtune::adapters::{self, named_parameters};
    use wgtune::io::peft::load_adapter;
    use wgtune::model::decoder::causal_lm_loss;
    for case in ["gemma3", "qwen2"] {
        let d = dir(case);
        let b = crate::peft_fixtures::batch_of(&d);
        let device = device("cpu").autodiff();
        let mut lm = load_hf(&fixture(&d), &device);
        let adapter = DirSource::new(fixture(&format!("{d}/peft/lora/adapter")));
        load_adapter(&adapter, &mut lm.model).unwrap();
        adapters::track_gradients(&mut lm.model);
        let grads_of = |loss: burn::tensor::Tensor<1>, model: &wgtune::Decoder| {
            let g = loss.backward();
            named_parameters(model)
                .into_iter()
                .map(|(k, t)| (k, block(read_f32(t.grad(&g).unwrap())).unwrap()))
                .collect::<Vec<_>>()
        };
        let logits = lm.model.forward(&b.input_ids, None).unwrap();
        let (plain, n) = causal_lm_loss(logits, &b.labels).unwrap();
        let plain_value = block(read_f32(plain.clone().detach())).unwrap()[0];
        let plain_grads = grads_of(plain, &lm.model);
        for rows in [5, 256] {
            let (chunked, m) = lm
                .model
                .chunked_loss_by(&b.input_ids, &b.labels, rows)
                .unwrap();
            assert_eq!(n, m);
            let value = block(read_f32(chunked.clone().detach())).unwrap()[0];
            assert!(
                (value - plain_value).abs() < 1e-5,
                "{case}/{rows}: loss {value} vs {plain_value}"
            );
            for ((k, want), (_, got)) in plain_grads.iter().zip(grads_of(chunked, &lm.model)) {
                let diff = max_abs_diff(&got, want);
                assert!(
                    diff < 1e-5,
                    "{case}/{rows}: gradient of {k} differs by {diff}"
                );
            }
        }
    }
}

/// Through the binary: `inspect` names each architecture and its features, and `generate --chat`
/// renders the model's own template and streams byte-fallback tokens of a random model without
/// failing.
#[test]
fn inspect_and_chat_through_the_binary() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wgtune"))
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{args:?}: {err}");
        text
    };
    for (case, want) in [
        ("mistral", "sliding window 5 (2 of 2 layers)"),
        ("qwen2", "q/k/v bias"),
        ("qwen3", "q/k norm"),
        ("gemma3", "sandwich norms"),
    ] {
        let path = fixture(&dir(case));
        let out = run(&["inspect", "--model", path.to_str().unwrap()]);
        assert!(out.contains(&format!("architecture {case}")), "{out}");
        assert!(out.contains(want), "{case}: {out}");
    }
    let gemma = fixture(&dir("gemma3"));
    let args = [
        "generate",
        "--backend",
        "cpu",
        "--chat",
        "--max-new-tokens",
        "12",
    ];
    let out = run(&[
        &args[..],
        &["--prompt", "hello", "--model", gemma.to_str().unwrap()],
    ]
    .concat());
    assert!(out.starts_with("hello\n"), "{out}");
}
