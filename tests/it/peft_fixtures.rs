//! LoRA and OFTv2 against the real peft 0.21.2 (tests/fixtures/gen_peft.py): peft-saved adapters load
//! here and give peft's logits, loss and every adapter gradient (1e-4); five AdamW steps from the
//! same init give torch's per-step losses and final adapter tensors (1e-4); merging equals
//! the adapter-on model; and what we save loads back identically.

use crate::common::*;
use wgtune::adapters::{self, named_parameters};
use wgtune::app::files::DirSource;
use wgtune::io::peft::{load_adapter, save_adapter};
use wgtune::model::decoder::causal_lm_loss;
use wgtune::model::read_f32;
use wgtune::train::data::Batch;
use wgtune::train::optim::{AdamWConfig, Schedule};
use wgtune::train::trainer::{TrainConfig, Trainer};

const TOL: f32 = 1e-4;

fn batch() -> Batch {
    batch_of("tiny_gqa")
}

/// The input ids and labels of the base fixture `base` (its `expected.safetensors`).
pub fn batch_of(base: &str) -> Batch {
    let exp = read_tensors(&fixture(&format!("{base}/expected.safetensors")));
    let (shape, ids) = &exp.i64["input_ids"];
    let labels = rows(shape, &exp.i64["labels"].1);
    let input_ids: Vec<Vec<u32>> = rows(shape, ids)
        .into_iter()
        .map(|r| r.into_iter().map(|x| x as u32).collect())
        .collect();
    let scored = labels
        .iter()
        .map(|r| r[1..].iter().filter(|&&x| x != -100).count())
        .sum();
    let tokens = input_ids.iter().map(Vec::len).sum();
    Batch {
        input_ids,
        labels,
        scored,
        tokens,
    }
}

/// Load `base` with the peft adapter of fixture folder `case` (`peft/lora`) on `backend` and
/// check logits, loss and every adapter gradient against peft's, on the batch of fixture `data`.
pub fn check_grads(
    base: &str,
    data: &str,
    case: &str,
    backend: &str,
) -> (
    wgtune::model::loader::LoadedModel,
    wgtune::adapters::AdapterConfig,
    Tensors,
    Batch,
) {
    let dir = fixture(case);
    let want = read_tensors(&dir.join("expected.safetensors"));
    let device = device(backend).autodiff();
    let mut lm = load_hf(&fixture(base), &device);
    let cfg = load_adapter(&DirSource::new(dir.join("adapter")), &mut lm.model).unwrap();
    adapters::track_gradients(&mut lm.model);
    let b = batch_of(data);
    let logits = lm.model.forward(&b.input_ids, None).unwrap();
    let (loss, _) = causal_lm_loss(logits.clone(), &b.labels).unwrap();
    let grads = loss.backward();
    let d = max_abs_diff(
        &block(read_f32(logits.detach())).unwrap(),
        &want.f32["logits"].1,
    );
    assert!(d < TOL, "{case}/{backend}: logits differ by {d}");
    let l = block(read_f32(loss.detach())).unwrap()[0];
    assert!(
        (l - want.f32["loss"].1[0]).abs() < TOL,
        "{case}/{backend}: loss {l}"
    );
    let named = named_parameters(&lm.model);
    assert_eq!(
        named.len(),
        want.f32.keys().filter(|k| k.starts_with("grad/")).count()
    );
    for (key, t) in &named {
        let g = block(read_f32(t.grad(&grads).unwrap())).unwrap();
        let d = max_abs_diff(&g, &want.f32[&format!("grad/{key}")].1);
        assert!(d < TOL, "{case}/{backend}: grad {key} differs by {d}");
    }
    (lm, cfg, want, b)
}

fn check_case(case: &str, backend: &str) {
    let (lm, cfg, want, b) = check_grads("tiny_gqa", "tiny_gqa", &format!("peft/{case}"), backend);
    let device = lm.model.embed_tokens.device();

    // Merged weights give the adapter-on logits.
    let mut merged = load_hf(&fixture("tiny_gqa"), &device);
    for (mb, ab) in merged.model.layers.iter_mut().zip(&lm.model.layers) {
        for ((_, m), (_, a)) in mb.linears_mut().into_iter().zip(ab.linears()) {
            if let Some(ad) = &a.adapter {
                m.base =
                    wgtune::model::linear::BaseLinear::Dense(ad.merge(&a.base.dense()).inner());
            }
        }
    }
    let ml = block(read_f32(merged.model.forward(&b.input_ids, None).unwrap())).unwrap();
    let d = max_abs_diff(&ml, &want.f32["merged_logits"].1);
    assert!(d < TOL, "{case}/{backend}: merged logits differ by {d}");

    // Five AdamW steps on the fixed batch.
    let config = TrainConfig {
        lr: 1e-2,
        schedule: Schedule::Constant,
        warmup_steps: 0,
        total_steps: 5,
        max_grad_norm: 0.0,
        adamw: AdamWConfig {
            weight_decay: 0.01,
            ..Default::default()
        },
        seed: 0,
    };
    let mut trainer = Trainer::new(lm.model, cfg.clone(), config);
    let want_losses = &want.f32["train_losses"].1;
    for (i, wl) in want_losses.iter().enumerate() {
        let m = block(trainer.step(std::slice::from_ref(&b))).unwrap();
        assert!(
            (m.loss as f32 - wl).abs() < TOL,
            "{case}/{backend}: step {i} loss {} vs {wl}",
            m.loss
        );
    }
    for (key, t) in named_parameters(&trainer.model) {
        let got = block(read_f32(t)).unwrap();
        let d = max_abs_diff(&got, &want.f32[&format!("final/{key}")].1);
        assert!(d < TOL, "{case}/{backend}: trained {key} differs by {d}");
    }

    // What we save is what we load.
    let (json, bytes) = block(save_adapter(&trainer.model, &cfg, "tiny_gqa")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("adapter_config.json"), json).unwrap();
    std::fs::write(tmp.path().join("adapter_model.safetensors"), bytes).unwrap();
    let mut again = load_hf(&fixture("tiny_gqa"), &device);
    assert_eq!(
        load_adapter(&DirSource::new(tmp.path()), &mut again.model).unwrap(),
        cfg
    );
    for ((k1, t1), (k2, t2)) in named_parameters(&trainer.model)
        .into_iter()
        .zip(named_parameters(&again.model))
    {
        assert_eq!(k1, k2);
        assert_eq!(block(read_f32(t1)).unwrap(), block(read_f32(t2)).unwrap());
    }
}

/// QLoRA / QOFT: peft's adapters on the transformers+bitsandbytes NF4 model (gen_qpeft.py). On
/// wgpu the base stays packed and runs through the fused kernel; on cpu it is dequantized.
#[test]
fn qlora_and_qoft_on_the_bnb_nf4_base() {
    for backend in ["cpu", "wgpu"] {
        for case in ["qlora", "qoft"] {
            let (lm, ..) = check_grads("bnb/nf4", "tiny_gqa", &format!("peft/{case}"), backend);
            let packed = lm.model.layers[0]
                .linears()
                .into_iter()
                .filter(|(_, l)| matches!(l.base, wgtune::model::linear::BaseLinear::Packed(_)))
                .count();
            // down_proj (in 112) too: its NF4 blocks straddle rows.
            assert_eq!(
                packed,
                if backend == "wgpu" { 7 } else { 0 },
                "{case}/{backend}"
            );
        }
    }
}

/// Export (`wgtune merge`, the app's "Export merged model"): peft's QLoRA / QOFT adapter merged
/// into the bnb NF4 base and written as a dense HF folder gives peft+bnb's adapter logits.
#[test]
fn merged_export_of_qlora_and_qoft_matches_peft() {
    for case in ["qlora", "qoft"] {
        let dir = fixture(&format!("peft/{case}"));
        let want = read_tensors(&dir.join("expected.safetensors"));
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("merged");
        let n =
            wgtune::app::merge::merge_into(&fixture("bnb/nf4"), None, &dir.join("adapter"), &out)
                .unwrap();
        assert!(n > 0);
        let merged = load_hf(&out, &device("cpu"));
        let logits = merged.model.forward(&batch().input_ids, None).unwrap();
        let d = max_abs_diff(&block(read_f32(logits)).unwrap(), &want.f32["logits"].1);
        assert!(d < TOL, "{case}: merged logits differ by {d}");
    }
}

/// The inference copy used for generation and eval (off the autodiff backend, where burn 0.22
/// keeps never-backpropagated graphs alive) holds no autodiff tensor and gives the same logits
/// (within float rounding).
#[test]
fn inference_copy_leaves_autodiff_with_identical_logits() {
    for case in ["lora", "oft_neumann"] {
        let dir = fixture(&format!("peft/{case}"));
        let device = device("cpu").autodiff();
        let mut lm = load_hf(&fixture("tiny_gqa"), &device);
        load_adapter(&DirSource::new(dir.join("adapter")), &mut lm.model).unwrap();
        adapters::track_gradients(&mut lm.model);
        // Dropout on in the original (peft fixtures have lora_dropout > 0), off in the copy.
        let copy = lm.model.without_autodiff();
        adapters::for_each_adapter(&mut lm.model, |a| a.set_training(false));
        assert!(!copy.device().is_autodiff());
        assert!(
            named_parameters(&copy)
                .iter()
                .all(|(_, t)| !t.is_autodiff())
        );
        let b = batch();
        let want = block(read_f32(lm.model.forward(&b.input_ids, None).unwrap())).unwrap();
        let got = block(read_f32(copy.forward(&b.input_ids, None).unwrap())).unwrap();
        let d = max_abs_diff(&got, &want);
        // Not bit-identical: the autodiff backend's op implementations round differently.
        assert!(d < 1e-5, "{case}: inference copy differs by {d}");
    }
}

#[test]
fn lora_cpu() {
    check_case("lora", "cpu");
}

#[test]
fn lora_rslora_qv_cpu() {
    check_case("lora_rslora_qv", "cpu");
}

#[test]
fn oft_neumann_cpu() {
    check_case("oft_neumann", "cpu");
}

#[test]
fn oft_exact_cpu() {
    check_case("oft_exact", "cpu");
}

#[test]
fn oft_neumann3_cpu() {
    check_case("oft_neumann3", "cpu");
}

#[test]
fn oft_coft_cpu() {
    check_case("oft_coft", "cpu");
}

#[test]
fn oft_block_share_cpu() {
    check_case("oft_block_share", "cpu");
}

#[test]
fn lora_wgpu() {
    check_case("lora", "wgpu");
}

#[test]
fn oft_neumann_wgpu() {
    check_case("oft_neumann", "wgpu");
}

/// The weight-centric OFT v1 baseline computes the same function (and gradients) as OFTv2.
#[test]
fn oft_v1_baseline_matches_v2() {
    let want = read_tensors(&fixture("peft/oft_neumann/expected.safetensors"));
    let device = device("cpu").autodiff();
    let mut lm = load_hf(&fixture("tiny_gqa"), &device);
    load_adapter(
        &DirSource::new(fixture("peft/oft_neumann/adapter")),
        &mut lm.model,
    )
    .unwrap();
    for block in lm.model.layers.iter_mut() {
        for (_, lin) in block.linears_mut() {
            let w = lin.adapter.take().unwrap().parameters()[0].1.clone();
            let cfg = wgtune::adapters::oft::OftConfig {
                oft_block_size: 16,
                weight_centric: true,
                ..Default::default()
            };
            let in_f = lin.base.dims()[1];
            lin.adapter = Some(Box::new(
                wgtune::adapters::oft::Oft::from_weight(&cfg, in_f, w).unwrap(),
            ));
        }
    }
    adapters::track_gradients(&mut lm.model);
    let b = batch();
    let logits = lm.model.forward(&b.input_ids, None).unwrap();
    let (loss, _) = causal_lm_loss(logits.clone(), &b.labels).unwrap();
    let grads = loss.backward();
    assert!(
        max_abs_diff(
            &block(read_f32(logits.detach())).unwrap(),
            &want.f32["logits"].1
        ) < TOL
    );
    for (key, t) in named_parameters(&lm.model) {
        let g = block(read_f32(t.grad(&grads).unwrap())).unwrap();
        assert!(
            max_abs_diff(&g, &want.f32[&format!("grad/{key}")].1) < TOL,
            "{key}"
        );
    }
}

/// block_share on wgpu: the fused rotation with one R for every block (and the fused Cayley).
#[test]
fn oft_block_share_wgpu() {
    check_case("oft_block_share", "wgpu");
}

#[test]
fn oft_exact_wgpu() {
    check_case("oft_exact", "wgpu");
}
