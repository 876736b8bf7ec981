//! LoRA-PAR against tests/fixtures/gen_par.py (torch + peft 0.21.2 on the tiny model): per-sample
//! gradient importance (Taylor and grad-Fisher) within 1e-4 relative and identical partitions at
//! theta 0.9; the GRPO advantages, loss, KL and d loss / d logp of a fixed batch within 1e-5 of
//! TRL's formulas in torch; masked stages leave inactive elements bit-identical (weight decay on);
//! scripted voters give the exact majority and split lines.

use crate::common::*;
use burn::tensor::{Tensor, TensorData};
use serde_json::json;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use wgtune::adapters::mask::{ElementMasks, S1_ONLY, SHARED};
use wgtune::adapters::named_parameters;
use wgtune::app::files::DirSource;
use wgtune::io::peft::load_adapter;
use wgtune::model::read_f32;
use wgtune::par::classify::{DEFAULT_TEMPLATES, Voter, split_line, vote};
use wgtune::par::grpo::{GrpoConfig, Reward, RlItem, group_advantages, grpo_loss};
use wgtune::par::importance::{Importance, ImportanceKind, grad_stats};
use wgtune::par::partition::{partition, stage_active};
use wgtune::par::stages::{Batching, begin_stage, rl_stage, sft_stage, snapshot};
use wgtune::par::{ParError, System};
use wgtune::train::data::{Example, load_examples};
use wgtune::train::optim::{AdamWConfig, Schedule};
use wgtune::train::trainer::{TrainConfig, Trainer};

fn examples(name: &str) -> Vec<Example> {
    let p = fixture(&format!("par/{name}.jsonl"));
    load_examples(&std::fs::read_to_string(&p).unwrap(), name, None).unwrap()
}

fn expected() -> Tensors {
    read_tensors(&fixture("par/expected.safetensors"))
}

/// The tiny model with the fixture's N(0, 0.01²) LoRA init, on the CPU autodiff device.
fn tiny_with_init() -> wgtune::model::loader::LoadedModel {
    let dev = device("cpu").autodiff();
    let mut lm = load_hf(&fixture("tiny_gqa"), &dev);
    load_adapter(&DirSource::new(fixture("par/init_adapter")), &mut lm.model).unwrap();
    lm
}

/// Largest |a − b| / max|b| per tensor, over all tensors.
fn rel_err(imp: &Importance, want: &Tensors, prefix: &str) -> f64 {
    let mut worst = 0.0f64;
    for (key, _, v) in &imp.tensors {
        let w = &want.f32[&format!("{prefix}/{key}")].1;
        assert_eq!(w.len(), v.len(), "{key}");
        let scale = w.iter().fold(0.0f32, |m, x| m.max(x.abs())) as f64;
        for (a, b) in v.iter().zip(w) {
            worst = worst.max((a - *b as f64).abs() / scale);
        }
    }
    worst
}

#[test]
fn importance_and_partition_match_torch() {
    let want = expected();
    let mut lm = tiny_with_init();
    let (s1, s2) = (examples("s1"), examples("s2"));
    let s1r: Vec<&Example> = s1.iter().collect();
    let s2r: Vec<&Example> = s2.iter().collect();
    let st1 = block(grad_stats(&mut lm.model, &s1r)).unwrap();
    let st2 = block(grad_stats(&mut lm.model, &s2r)).unwrap();
    assert_eq!((st1.samples(), st2.samples()), (6, 6));
    for (kind, name) in [
        (ImportanceKind::Taylor, "taylor"),
        (ImportanceKind::GradFisher, "fisher"),
    ] {
        let i1 = block(st1.importance(kind)).unwrap().l2_normalised();
        let i2 = block(st2.importance(kind)).unwrap().l2_normalised();
        let e1 = rel_err(&i1, &want, &format!("{name}/s1"));
        let e2 = rel_err(&i2, &want, &format!("{name}/s2"));
        eprintln!("{name}: max relative error s1 {e1:.2e}, s2 {e2:.2e}");
        assert!(e1 < 1e-4 && e2 < 1e-4, "{name}: {e1} {e2}");
        let masks = partition(&i1, &i2, 0.9);
        let mut differ = 0;
        for (key, _, codes) in &masks.tensors {
            let w = &want.i64[&format!("codes_{name}/{key}")].1;
            differ += codes
                .iter()
                .zip(w)
                .filter(|(a, b)| **a as i64 != **b)
                .count();
        }
        assert_eq!(differ, 0, "{name}: {differ} elements in a different set");
        // The report's active counts are the mask counts.
        let a1 = stage_active(&masks, &i1, System::S1, 1.0);
        let n1: usize = a1.iter().map(|t| t.2.iter().filter(|&&x| x).count()).sum();
        assert_eq!(n1, masks.count(S1_ONLY) + masks.count(SHARED));
        let back = ElementMasks::from_safetensors(&masks.to_safetensors().unwrap()).unwrap();
        assert_eq!(back.count(SHARED), masks.count(SHARED));
    }
}

#[test]
fn grpo_loss_matches_trl_formula() {
    let want = expected();
    let dev = device("cpu").autodiff();
    let t2 = |k: &str| {
        let (shape, v) = &want.f32[&format!("grpo/{k}")];
        Tensor::<2>::from_data(TensorData::new(v.clone(), [shape[0], shape[1]]), &dev)
    };
    let rewards: Vec<f64> = want.f32["grpo/rewards"]
        .1
        .iter()
        .map(|&x| x as f64)
        .collect();
    let adv = group_advantages(&rewards, 4);
    for (a, b) in adv.iter().zip(&want.f32["grpo/advantages"].1) {
        assert!((a - *b as f64).abs() < 1e-5, "advantage {a} vs {b}");
    }
    let [n, t] = [12, 6];
    let a: Vec<f32> = adv
        .iter()
        .flat_map(|&x| std::iter::repeat_n(x as f32, t))
        .collect();
    let a = Tensor::<2>::from_data(TensorData::new(a, [n, t]), &dev);
    let logp = t2("logp").require_grad();
    let mask = t2("mask");
    let tokens = want.f32["grpo/mask"].1.iter().sum::<f32>() as f64;
    let (loss, kl) = grpo_loss(
        logp.clone(),
        t2("old_logp"),
        Some(t2("ref_logp")),
        mask,
        a,
        0.2,
        0.04,
        tokens,
    );
    let grads = loss.backward();
    let l = block(read_f32(loss.detach())).unwrap()[0];
    let k = block(read_f32(kl.detach())).unwrap()[0] as f64 / tokens;
    assert!(
        (l - want.f32["grpo/loss"].1[0]).abs() < 1e-5,
        "loss {l} vs {}",
        want.f32["grpo/loss"].1[0]
    );
    assert!(
        (k - want.f32["grpo/kl_mean"].1[0] as f64).abs() < 1e-5,
        "kl {k}"
    );
    let g = block(read_f32(logp.grad(&grads).unwrap())).unwrap();
    let d = max_abs_diff(&g, &want.f32["grpo/grad_logp"].1);
    assert!(d < 1e-5, "d loss / d logp differs by {d}");
}

fn values(t: &Trainer) -> Vec<Vec<f32>> {
    snapshot(t)
        .into_iter()
        .map(|x| block(read_f32(x)).unwrap())
        .collect()
}

/// Inactive elements keep their exact bits; active ones move.
fn check_frozen(
    before: &[Vec<f32>],
    after: &[Vec<f32>],
    active: &[(String, [usize; 2], Vec<bool>)],
) {
    let (mut moved, mut n_active) = (0, 0);
    for ((b, a), (key, _, act)) in before.iter().zip(after).zip(active) {
        for ((x, y), on) in b.iter().zip(a).zip(act) {
            if *on {
                n_active += 1;
                moved += (x.to_bits() != y.to_bits()) as usize;
            } else {
                assert_eq!(
                    x.to_bits(),
                    y.to_bits(),
                    "{key}: an inactive element changed"
                );
            }
        }
    }
    assert!(
        moved * 10 > n_active * 9,
        "only {moved} of {n_active} active elements moved"
    );
}

#[test]
fn masked_stages_leave_inactive_elements_bit_identical() {
    let lm = tiny_with_init();
    let want = expected();
    let named = named_parameters(&lm.model);
    let masks = ElementMasks {
        tensors: named
            .iter()
            .map(|(k, t)| {
                let codes = want.i64[&format!("codes_taylor/{k}")]
                    .1
                    .iter()
                    .map(|&c| c as u8)
                    .collect();
                (k.clone(), t.dims(), codes)
            })
            .collect(),
    };
    let flat = |name: &str| Importance {
        tensors: named
            .iter()
            .map(|(k, t)| {
                let v = want.f32[&format!("taylor/{name}/{k}")]
                    .1
                    .iter()
                    .map(|&x| x as f64)
                    .collect();
                (k.clone(), t.dims(), v)
            })
            .collect(),
    };
    let a1 = stage_active(&masks, &flat("s1"), System::S1, 0.5);
    let a2 = stage_active(&masks, &flat("s2"), System::S2, 0.5);
    let cfg = wgtune::adapters::AdapterConfig {
        method: wgtune::adapters::Method::Lora(wgtune::adapters::lora::LoraConfig {
            r: 4,
            lora_alpha: 8.0,
            lora_dropout: 0.0,
            use_rslora: false,
        }),
        target_modules: wgtune::adapters::TARGET_MODULES
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    let tc = TrainConfig {
        lr: 1e-2,
        schedule: Schedule::Constant,
        warmup_steps: 0,
        total_steps: 3,
        max_grad_norm: 1.0,
        adamw: AdamWConfig {
            weight_decay: 0.1,
            ..Default::default()
        },
        seed: 1,
    };
    let mut trainer = Trainer::new(lm.model, cfg, tc);
    let b = Batching {
        batch_size: 2,
        grad_accum: 1,
        shuffle: true,
        seed: 3,
    };
    // Stage 1: SFT.
    let before = values(&trainer);
    begin_stage(&mut trainer, &a1, 1e-2, 3).unwrap();
    let mut steps = 0;
    // Asked for 4 steps, the callback stops it after 3 (the GUI's stop button).
    block(sft_stage(&mut trainer, &examples("s1"), 4, b, 0, |_, _| {
        steps += 1;
        Ok(if steps == 3 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        })
    }))
    .unwrap();
    assert_eq!(steps, 3);
    let mid = values(&trainer);
    check_frozen(&before, &mid, &a1);
    // Stage 2: GRPO (rewards from a stand-in decoder: the first token's parity).
    begin_stage(&mut trainer, &a2, 1e-2, 2).unwrap();
    let items = vec![
        RlItem {
            prompt: vec![5, 17, 99, 42],
            reference: "1".into(),
        },
        RlItem {
            prompt: vec![7, 8, 9],
            reference: "1".into(),
        },
    ];
    let cfg = GrpoConfig {
        group: 4,
        prompts_per_step: 2,
        clip_eps: 0.2,
        kl_beta: 0.04,
        temperature: 1.0,
        top_p: 1.0,
        max_new_tokens: 5,
    };
    let decode = |ids: &[u32]| (ids.first().copied().unwrap_or(0) % 2).to_string();
    let mut log = Vec::new();
    block(rl_stage(
        &mut trainer,
        &items,
        2,
        &cfg,
        &Reward::Number,
        &decode,
        b,
        |m, _| {
            log.push(m.clone());
            Ok(ControlFlow::Continue(()))
        },
    ))
    .unwrap();
    assert_eq!(log.len(), 2);
    assert!(
        log.iter()
            .all(|m| m.completion_len >= 1.0 && m.completion_len <= 6.0)
    );
    assert_eq!(log[0].kl, 0.0, "the first step's policy is the reference");
    let after = values(&trainer);
    // Elements active in stage 2 may move; everything else keeps its bits.
    let (mut moved, mut n_active) = (0, 0);
    for ((m, a), (key, _, act)) in mid.iter().zip(&after).zip(&a2) {
        for ((x, y), on) in m.iter().zip(a).zip(act) {
            if *on {
                n_active += 1;
                moved += (x.to_bits() != y.to_bits()) as usize;
            } else {
                assert_eq!(
                    x.to_bits(),
                    y.to_bits(),
                    "{key}: inactive element changed in RL"
                );
            }
        }
    }
    assert!(log.iter().any(|m| m.reward_std > 0.0 && m.grad_norm > 0.0));
    assert!(
        moved * 10 > n_active * 9,
        "rl: only {moved} of {n_active} moved"
    );
}

struct Scripted(Vec<[f64; 2]>);

impl Voter for Scripted {
    async fn option_probs(&mut self, prompt: &str) -> Result<[f64; 2], ParError> {
        assert!(prompt.contains("apples") || prompt.contains("poem"));
        Ok(self.0.remove(0))
    }
}

#[test]
fn scripted_voters_give_the_exact_split() {
    let templates: Vec<String> = DEFAULT_TEMPLATES.iter().map(|s| s.to_string()).collect();
    let recs = [
        json!({"passage": "Seven red apples and two green apples.", "question": "How many apples?", "answer": "9 apples"}),
        json!({"instruction": "Write a poem.", "output": "Roses are red."}),
    ];
    // Voter 0 reads templates 0 and 2 (i mod 1 voter), one model; three votes per record.
    let mut voters = [Scripted(vec![
        [0.2, 0.7],
        [0.6, 0.3],
        [0.1, 0.5],
        [0.5, 0.4],
        [0.3, 0.3],
        [0.2, 0.25],
    ])];
    let mut lines = Vec::new();
    for (i, r) in recs.iter().enumerate() {
        let l = block(vote(&mut voters, 3, &templates, r)).unwrap();
        lines.push(split_line("d.jsonl", i + 1, &l).to_string());
    }
    assert_eq!(
        lines,
        [
            r#"{"file":"d.jsonl","line":1,"source":"vote","system":2,"votes":[{"p_a":0.2,"p_b":0.7,"system":2,"voter":0},{"p_a":0.6,"p_b":0.3,"system":1,"voter":1},{"p_a":0.1,"p_b":0.5,"system":2,"voter":2}]}"#,
            r#"{"file":"d.jsonl","line":2,"source":"vote","system":1,"votes":[{"p_a":0.5,"p_b":0.4,"system":1,"voter":0},{"p_a":0.3,"p_b":0.3,"system":1,"voter":1},{"p_a":0.2,"p_b":0.25,"system":2,"voter":2}]}"#,
        ]
    );
}

fn wgtune(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_wgtune"))
        .args(args)
        .output()
        .unwrap()
}

/// The first `n` records of a demo asset, as jsonl.
fn head_records(name: &str, n: usize) -> String {
    let text = std::fs::read_to_string(asset(name)).unwrap();
    let recs: Vec<serde_json::Value> = if text.trim_start().starts_with('[') {
        serde_json::from_str(&text).unwrap()
    } else {
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    recs.iter().take(n).map(|r| format!("{r}\n")).collect()
}

/// System 1 and System 2 files in `dir`: the first 6 alpaca demo and ASDiv records.
fn two_system_files(dir: &Path) -> (PathBuf, PathBuf) {
    let s1 = dir.join("s1.jsonl");
    let s2 = dir.join("s2.jsonl");
    std::fs::write(&s1, head_records("alpaca_en_demo.json", 6)).unwrap();
    std::fs::write(&s2, head_records("asdiv_test.jsonl", 6)).unwrap();
    (s1, s2)
}

/// `wgtune train --method lora-par` end to end on SmolLM2 with tiny counts (CPU backend):
/// the split, masks, report, metrics and a peft adapter that loads back.
#[test]
fn cli_lora_par_smollm2_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let (s1, s2) = two_system_files(tmp.path());
    let out = tmp.path().join("out");
    let gguf = asset("SmolLM2-135M-Instruct.Q4_1.gguf");
    let o = wgtune(&[
        "train",
        "--no-gui",
        "--backend",
        "cpu",
        "--method",
        "lora-par",
        "--model",
        gguf.to_str().unwrap(),
        "--data",
        s1.to_str().unwrap(),
        "--rl-data",
        s2.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--par-samples",
        "2",
        "--sft-steps",
        "1",
        "--rl-steps",
        "1",
        "--grpo-group",
        "2",
        "--grpo-max-new-tokens",
        "4",
        "--max-seq-len",
        "64",
        "--batch-size",
        "1",
        "--rl-eval",
        "1",
        "--par-theta",
        "0.5",
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("System 1: 6  System 2: 6"), "{stdout}");
    let split = std::fs::read_to_string(out.join("par_split.jsonl")).unwrap();
    assert_eq!(split.lines().count(), 12);
    let masks =
        ElementMasks::from_safetensors(&std::fs::read(out.join("par_masks.safetensors")).unwrap())
            .unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("par_report.json")).unwrap()).unwrap();
    assert_eq!(report["overall"]["elements"], masks.len());
    assert_eq!(report["overall"]["shared"], masks.count(SHARED));
    assert_eq!(
        report["stage1_active"],
        masks.count(S1_ONLY) + masks.count(SHARED),
        "alpha 1: stage 1 updates S1-only and every shared element"
    );
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.iter().filter(|l| l["stage"] == "sft").count(), 1);
    let rl: Vec<_> = lines.iter().filter(|l| l["stage"] == "rl").collect();
    assert_eq!(rl.len(), 1);
    for k in [
        "reward_mean",
        "reward_std",
        "accuracy",
        "completion_len",
        "kl",
        "loss",
    ] {
        assert!(rl[0][k].is_number(), "{k} missing: {}", rl[0]);
    }
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["rl_accuracy"].is_number())
            .count(),
        2
    );
    // A standard peft LoRA adapter: loads back through the peft loader.
    let mut lm = load_hf_or_gguf(&gguf);
    let cfg = load_adapter(&DirSource::new(&out), &mut lm.model).unwrap();
    assert!(matches!(cfg.method, wgtune::adapters::Method::Lora(_)));
    assert_eq!(named_parameters(&lm.model).len(), 30 * 7 * 2);
}

fn load_hf_or_gguf(path: &std::path::Path) -> wgtune::model::loader::LoadedModel {
    let mut dir = None;
    let src = wgtune::app::files::model_source(path, &mut dir).unwrap();
    wgtune::model::loader::load_model(src, &device("cpu"), None).unwrap()
}

/// Bad LoRA-PAR input: one error line naming the file and line, non-zero exit.
#[test]
fn cli_lora_par_bad_label_names_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d.jsonl");
    std::fs::write(
        &data,
        "{\"text\": \"a\", \"system\": 1}\n{\"text\": \"b\", \"system\": 3}\n",
    )
    .unwrap();
    let gguf = asset("SmolLM2-135M-Instruct.Q4_1.gguf");
    let o = wgtune(&[
        "train",
        "--no-gui",
        "--backend",
        "cpu",
        "--method",
        "lora-par",
        "--model",
        gguf.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        tmp.path().join("o").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("d.jsonl:2: `system` must be 1 or 2"), "{err}");
    let o = wgtune(&[
        "train",
        "--no-gui",
        "--method",
        "lora-par",
        "--par-voters",
        "2",
        "--model",
        gguf.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        tmp.path().join("o").to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("must be odd"));
}

/// The desktop app's stop button during LoRA-PAR: the run ends after the current step, skips
/// stage 2 and the accuracy evals, and still writes the peft adapter.
#[test]
fn lora_par_stop_ends_early_and_writes_the_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let (s1, s2) = two_system_files(tmp.path());
    let out = tmp.path().join("out");
    let toml = format!(
        "model = {:?}\ndata = {:?}\nrl_data = {:?}\nout = {:?}\nmethod = \"lora-par\"\nbackend = \"cpu\"\n\
         par_samples = 1\nsft_steps = 3\nrl_steps = 2\ngrpo_group = 2\ngrpo_max_new_tokens = 4\n\
         max_seq_len = 64\nbatch_size = 1\nrl_eval = 1\n",
        asset("SmolLM2-135M-Instruct.Q4_1.gguf"),
        s1,
        s2,
        out
    );
    let run = wgtune::RunConfig::from_toml(&toml).unwrap();
    let ctl = wgtune::app::train::TrainControl::default();
    ctl.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    wgtune::app::par::cmd_train_par(run, &ctl).unwrap();
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{metrics}");
    assert_eq!(lines[0]["stage"], "sft");
    let cfg = load_adapter(
        &DirSource::new(&out),
        &mut wgtune::app::cli::load(
            &asset("SmolLM2-135M-Instruct.Q4_1.gguf"),
            &burn::tensor::Device::flex(),
            None,
        )
        .unwrap()
        .model,
    );
    assert!(cfg.is_ok(), "{cfg:?}");
}
