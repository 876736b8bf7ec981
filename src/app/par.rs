//! `wgtune train --method lora-par | qlora-par`: the file side of LoRA-PAR. Reads the data
//! (one file with labels / votes / the heuristic, or `--data` = System 1 and `--rl-data` =
//! System 2), writes `OUT/par_split.jsonl`, computes importance and the partition
//! (`OUT/par_masks.safetensors`, `OUT/par_stage_masks.safetensors`, `OUT/par_report.json`), runs stage 1 (SFT) and stage 2 (GRPO)
//! with one line per step in `OUT/metrics.jsonl`, and saves the peft LoRA adapter.

use super::cli::{load, pick_backend};
use super::files::{model_source, read_blob, write_atomic};
use super::run_dir::{MetricsLog, RunLock};
use super::train::{TrainControl, write_adapter};
use crate::adapters;
use crate::adapters::mask::ElementMasks;
use crate::model::loader::{LoadedModel, load_model};
use crate::par::classify::{
    self, DEFAULT_TEMPLATES, LabelSource, Labelled, ModelVoter, data_label, heuristic, vote,
};
use crate::par::grpo::{Reward, RlItem, greedy_accuracy};
use crate::par::importance::{grad_stats, normal_init};
use crate::par::partition::{count_active, partition, report, stage_active};
use crate::par::stages::{Batching, begin_stage, rl_item, rl_stage, sft_stage};
use crate::par::{ParError, ParSettings, System};
use crate::train::data::{
    BadLine, DataOptions, Example, Tokenize, decode_text, epoch_order, parse_records, to_example,
};
use crate::train::run::RunConfig;
use crate::train::trainer::Trainer;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// One data record with where it came from and its label.
struct Item {
    file: String,
    line: usize,
    value: Value,
    label: Labelled,
}

fn records(path: &Path) -> Result<Vec<(usize, Value)>> {
    let blob = read_blob(path)?;
    let file = path.display().to_string();
    let (text, _) = decode_text((*blob).as_ref(), &file, BadLine::Stop)?;
    Ok(parse_records(&text, &file)?)
}

fn fixed(system: System, source: LabelSource) -> Labelled {
    Labelled {
        system,
        source,
        votes: Vec::new(),
        cues: Vec::new(),
    }
}

/// Label every record of the run's data (see [`crate::par::classify`]).
fn split_data(run: &RunConfig, s: &ParSettings, lm: &LoadedModel) -> Result<Vec<Item>> {
    let data = PathBuf::from(run.require(&run.data, "data").map_err(anyhow::Error::msg)?);
    let name = data.display().to_string();
    let recs = records(&data)?;
    if let Some(rl) = &run.rl_data {
        let mut out: Vec<Item> = recs
            .into_iter()
            .map(|(line, value)| Item {
                file: name.clone(),
                line,
                value,
                label: fixed(System::S1, LabelSource::File),
            })
            .collect();
        for (line, value) in records(Path::new(rl))? {
            out.push(Item {
                file: rl.clone(),
                line,
                value,
                label: fixed(System::S2, LabelSource::File),
            });
        }
        eprintln!("split: {name} is System 1, {rl} is System 2");
        return Ok(out);
    }
    let mut labels = Vec::with_capacity(recs.len());
    for (line, v) in &recs {
        labels.push(data_label(v).map_err(|msg| ParError::Data {
            file: name.clone(),
            line: *line,
            msg,
        })?);
    }
    let all_labelled = labels.iter().all(Option::is_some);
    let mode = match s.split.as_str() {
        "auto" if all_labelled => "label",
        "auto" => {
            eprintln!(
                "split: not every record has `system`; using the heuristic (par_split = vote for voting)"
            );
            "heuristic"
        }
        m => m,
    };
    let mut out = Vec::with_capacity(recs.len());
    match mode {
        "label" => {
            for ((line, value), l) in recs.into_iter().zip(labels) {
                let Some(system) = l else {
                    bail!(
                        "{name}:{line}: par_split label needs `\"system\": 1` or `2` on every record"
                    );
                };
                out.push(Item {
                    file: name.clone(),
                    line,
                    value,
                    label: fixed(system, LabelSource::Data),
                });
            }
        }
        "heuristic" => {
            for (line, value) in recs {
                let (system, cues) = heuristic(&value);
                out.push(Item {
                    file: name.clone(),
                    line,
                    value,
                    label: Labelled {
                        system,
                        source: LabelSource::Heuristic,
                        votes: Vec::new(),
                        cues,
                    },
                });
            }
        }
        _ => out = vote_all(run, s, lm, &name, recs)?,
    }
    Ok(out)
}

fn vote_all(
    run: &RunConfig,
    s: &ParSettings,
    lm: &LoadedModel,
    name: &str,
    recs: Vec<(usize, Value)>,
) -> Result<Vec<Item>> {
    let templates: Vec<String> = match &run.par_vote_template {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| p.clone())?;
            classify::parse_templates(&text).map_err(|e| anyhow::anyhow!("{p}: {e}"))?
        }
        None => DEFAULT_TEMPLATES.iter().map(|t| t.to_string()).collect(),
    };
    let names: Vec<String> = run
        .voter
        .as_deref()
        .unwrap_or("base")
        .split(',')
        .map(|x| x.trim().to_string())
        .filter(|x| !x.is_empty())
        .collect();
    let mut extra: Vec<(String, LoadedModel)> = Vec::new();
    let device = lm.model.device();
    for n in names.iter().filter(|n| n.as_str() != "base") {
        let mut dir = None;
        let src = model_source(Path::new(n), &mut dir)?;
        let m = load_model(src, &device, None).with_context(|| format!("voter {n}"))?;
        extra.push((n.clone(), m));
    }
    let mut voters = Vec::new();
    for n in &names {
        let m = if n == "base" {
            lm
        } else {
            &extra.iter().find(|(k, _)| k == n).context("voter")?.1
        };
        let tok = m
            .tokenizer
            .as_ref()
            .with_context(|| format!("voter {n} has no tokenizer"))?;
        voters.push(ModelVoter::new(&m.model, tok, m.chat_template.as_ref())?);
    }
    eprintln!(
        "voting: {} voters ({}) over {} records, {} templates",
        s.voters,
        names.join(", "),
        recs.len(),
        templates.len()
    );
    let bar = indicatif::ProgressBar::new(recs.len() as u64);
    let mut out = Vec::with_capacity(recs.len());
    for (line, value) in recs {
        let label = pollster::block_on(vote(&mut voters, s.voters, &templates, &value))?;
        out.push(Item {
            file: name.to_string(),
            line,
            value,
            label,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// `wgtune train` with `--method lora-par` or `qlora-par`.
/// `ctl` is obeyed between steps of both stages: pause holds, stop ends the run early (the
/// adapter as it stands is written, stage 2 is skipped when stopped in stage 1), save-adapter
/// writes the peft files now.
pub fn cmd_train_par(run: RunConfig, ctl: &TrainControl) -> Result<()> {
    let started = Instant::now();
    let s = ParSettings::from_run(&run).map_err(anyhow::Error::msg)?;
    let model_path = PathBuf::from(
        run.require(&run.model, "model")
            .map_err(anyhow::Error::msg)?,
    );
    run.require(&run.data, "data").map_err(anyhow::Error::msg)?;
    let out = PathBuf::from(run.require(&run.out, "out").map_err(anyhow::Error::msg)?);
    let cfg = run.adapter().map_err(anyhow::Error::msg)?;
    if run.init.as_deref().is_some_and(|i| i != "default") || run.init_adapter.is_some() {
        bail!("lora-par starts from its own init: drop --init / --init-adapter");
    }
    if run.resume.unwrap_or(false) {
        bail!("--resume is not supported for lora-par (each run recomputes the split and masks)");
    }
    let reward = Reward::parse(&s.reward).map_err(anyhow::Error::msg)?;
    let backend = pick_backend(run.backend_choice().map_err(anyhow::Error::msg)?)?;
    let device = backend.device.clone().autodiff();
    // Files in `out` are written only once the split and the examples have validated.
    let _lock = RunLock::acquire(&out)?;
    let mut lm = load(&model_path, &device, run.base_quantization().as_deref())?;
    let tokenizer = lm
        .tokenizer
        .clone()
        .context("lora-par needs a model with a tokenizer")?;
    let chat = lm.chat_template.clone();

    // 1. Split.
    let items = split_data(&run, &s, &lm)?;
    let mut split_text = String::new();
    for it in &items {
        split_text.push_str(&classify::split_line(&it.file, it.line, &it.label).to_string());
        split_text.push('\n');
    }
    let n2 = items
        .iter()
        .filter(|i| i.label.system == System::S2)
        .count();
    println!(
        "split         System 1: {}  System 2: {}  ({})",
        items.len() - n2,
        n2,
        out.join("par_split.jsonl").display()
    );

    // Examples: SFT rows for both systems (importance, stage 1), RL prompts for System 2.
    let max_seq_len = run.max_seq_len.unwrap_or(512).max(2);
    let skip = match run.on_bad_line.as_deref().unwrap_or("stop") {
        "stop" => false,
        "skip" => true,
        other => bail!("unknown --on-bad-line `{other}` (stop, skip)"),
    };
    let tok = Tokenize {
        tokenizer: &tokenizer,
        chat_template: chat.as_ref(),
    };
    let data_opts = DataOptions {
        max_seq_len,
        vocab_size: Some(lm.model.config.vocab_size),
        ..DataOptions::default()
    };
    let (mut sft1, mut sft2, mut rl) = (Vec::new(), Vec::new(), Vec::<(Example, RlItem)>::new());
    let mut dropped = 0;
    for it in &items {
        let bad = |msg: String| -> Result<()> {
            if skip {
                eprintln!("warning: {}:{}: skipped: {msg}", it.file, it.line);
                Ok(())
            } else {
                bail!("{}:{}: {msg}", it.file, it.line)
            }
        };
        let ex = match classify::sft_record(&it.value)
            .and_then(|v| to_example(&v, Some(&tok), &data_opts))
        {
            Ok(mut ex) => {
                ex.input_ids.truncate(max_seq_len);
                ex.labels.truncate(max_seq_len);
                ex
            }
            Err(msg) => {
                bad(msg)?;
                continue;
            }
        };
        if ex.labels.iter().skip(1).all(|&l| l == -100) {
            dropped += 1;
            continue;
        }
        match it.label.system {
            System::S1 => sft1.push(ex),
            System::S2 => match rl_item(&it.value, &tokenizer, chat.as_ref(), max_seq_len) {
                Ok(item) => rl.push((ex, item)),
                Err(msg) => bad(msg)?,
            },
        }
    }
    if dropped > 0 {
        eprintln!(
            "data: {dropped} examples dropped with nothing to score within max_seq_len {max_seq_len}"
        );
    }
    let seed = run.seed.unwrap_or(42);
    // Held-out System-2 items for the accuracy check (a seeded choice; not trained on).
    let order = epoch_order(rl.len(), 0, seed ^ 0x5eed, true);
    let n_eval = s.rl_eval.min(rl.len().saturating_sub(1));
    let mut held = vec![false; rl.len()];
    for &i in &order[..n_eval] {
        held[i] = true;
    }
    let mut eval_items = Vec::new();
    let mut rl_items = Vec::new();
    for ((ex, item), h) in rl.into_iter().zip(held) {
        if h {
            eval_items.push(item);
        } else {
            sft2.push(ex);
            rl_items.push(item);
        }
    }
    if sft1.is_empty() || rl_items.is_empty() {
        bail!(
            "lora-par needs examples of both systems (System 1: {}, System 2 for training: {})",
            sft1.len(),
            rl_items.len()
        );
    }

    // 2. Importance and partition.
    let pick = |v: &[Example], salt: u64| -> Vec<usize> {
        let mut o = epoch_order(v.len(), 0, seed ^ salt, true);
        o.truncate(s.samples);
        o
    };
    normal_init(&mut lm.model, &cfg, s.init_std, seed).map_err(anyhow::Error::msg)?;
    let t0 = Instant::now();
    let mut imps = Vec::new();
    for (v, salt) in [(&sft1, 1u64), (&sft2, 2u64)] {
        let rows: Vec<&Example> = pick(v, salt).into_iter().map(|i| &v[i]).collect();
        let stats = pollster::block_on(grad_stats(&mut lm.model, &rows))?;
        let imp = pollster::block_on(stats.importance(s.importance))?.l2_normalised();
        imps.push((imp, stats.samples()));
    }
    let (imp2, n_imp2) = imps.pop().context("importance")?;
    let (imp1, n_imp1) = imps.pop().context("importance")?;
    let masks = partition(&imp1, &imp2, s.theta);
    let active1 = stage_active(&masks, &imp1, System::S1, s.alpha);
    let active2 = stage_active(&masks, &imp2, System::S2, s.beta);
    let rep = report(
        &masks,
        s.theta,
        s.alpha,
        s.beta,
        count_active(&active1),
        count_active(&active2),
        json!({"kind": s.importance, "samples_s1": n_imp1, "samples_s2": n_imp2,
               "init_std": s.init_std, "seconds": t0.elapsed().as_secs_f64()}),
    );
    write_atomic(&out.join("par_split.jsonl"), split_text.as_bytes())?;
    write_atomic(
        &out.join("par_masks.safetensors"),
        &masks.to_safetensors().map_err(anyhow::Error::msg)?,
    )?;
    // Which elements each stage updates (bit 0: stage 1, bit 1: stage 2), for `wgtune export
    // --format trl`, whose script applies them as gradient hooks; equal to the codes above when
    // alpha = beta = 1.
    let stage_codes = ElementMasks {
        tensors: active1
            .iter()
            .zip(&active2)
            .map(|((k, shape, a1), (_, _, a2))| {
                let codes = a1.iter().zip(a2).map(|(&x, &y)| x as u8 | (y as u8) << 1);
                (k.clone(), *shape, codes.collect())
            })
            .collect(),
    };
    write_atomic(
        &out.join("par_stage_masks.safetensors"),
        &stage_codes
            .to_safetensors_with("bit 0: stage 1 updates the element, bit 1: stage 2 does")
            .map_err(anyhow::Error::msg)?,
    )?;
    write_atomic(
        &out.join("par_report.json"),
        serde_json::to_string_pretty(&rep)?.as_bytes(),
    )?;
    let frac = |k: &str| rep["overall"][k].as_f64().unwrap_or(0.0) * 100.0;
    println!(
        "partition     theta {}: S1-only {:.1}%  S2-only {:.1}%  shared {:.1}%  unused {:.1}%  (Jaccard {:.3}; {} + {} samples, {:.1}s)",
        s.theta,
        frac("s1_only_fraction"),
        frac("s2_only_fraction"),
        frac("shared_fraction"),
        frac("unused_fraction"),
        rep["jaccard_s1_s2"].as_f64().unwrap_or(0.0),
        n_imp1,
        n_imp2,
        t0.elapsed().as_secs_f64()
    );

    // 3. Training from peft's default init.
    adapters::attach(&mut lm.model, &cfg, seed)?;
    let bs = run.batch_size.unwrap_or(4).max(1);
    let accum = run.grad_accum.unwrap_or(1).max(1);
    let sft_steps = s
        .sft_steps
        .unwrap_or_else(|| sft1.len().div_ceil(bs * accum));
    let rl_steps = s
        .rl_steps
        .unwrap_or_else(|| rl_items.len().div_ceil(s.grpo.prompts_per_step));
    let pad = lm.model.config.eos_token_ids.first().copied().unwrap_or(0);
    let mut trainer = Trainer::new(
        lm.model,
        cfg.clone(),
        run.train(sft_steps).map_err(anyhow::Error::msg)?,
    );
    write_atomic(&out.join("run.toml"), run.to_toml().as_bytes())?;
    let mut metrics = MetricsLog::open(&out.join("metrics.jsonl"), None)?;
    let batching = Batching {
        batch_size: bs,
        grad_accum: accum,
        shuffle: !run.no_shuffle.unwrap_or(false),
        seed,
    };
    let decode = |ids: &[u32]| tokenizer.decode(ids, true).unwrap_or_default();
    let accuracy = |t: &Trainer, when: &str, metrics: &mut MetricsLog| -> Result<Option<f64>> {
        if eval_items.is_empty() {
            return Ok(None);
        }
        let t0 = Instant::now();
        let a = pollster::block_on(greedy_accuracy(
            &t.model,
            &eval_items,
            &reward,
            s.grpo.max_new_tokens,
            &decode,
        ))?;
        eprintln!(
            "held-out System-2 accuracy {when}: {:.3} ({} items, greedy, {:.0}s)",
            a,
            eval_items.len(),
            t0.elapsed().as_secs_f64()
        );
        metrics.append(&json!({"eval": when, "rl_accuracy": a, "items": eval_items.len()}))?;
        Ok(Some(a))
    };
    eprintln!(
        "stage 1 (SFT): {sft_steps} steps of {bs}x{accum} on {} System-1 examples, lr {:.1e}, {} of {} elements active",
        sft1.len(),
        s.sft_lr,
        count_active(&active1),
        masks.len()
    );
    // Between steps: hold while paused, write the adapter on request, end early on stop.
    let base_name = model_path.clone();
    let control = |t: &Trainer| -> Result<ControlFlow<()>, ParError> {
        while ctl.pause.load(Ordering::Relaxed) && !ctl.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if ctl.save_adapter.swap(false, Ordering::Relaxed) {
            write_adapter(t, &out, &base_name).map_err(|e| ParError::Config(format!("{e:#}")))?;
            eprintln!("adapter saved at step {}", t.step_count());
        }
        Ok(if ctl.stop.load(Ordering::Relaxed) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        })
    };
    begin_stage(&mut trainer, &active1, s.sft_lr, sft_steps)?;
    let bar = indicatif::ProgressBar::new(sft_steps as u64);
    let mut last_sft = None;
    let mut t_step = Instant::now();
    pollster::block_on(sft_stage(
        &mut trainer,
        &sft1,
        sft_steps,
        batching,
        pad,
        |m, t| {
            let tps = m.tokens as f64 / t_step.elapsed().as_secs_f64();
            t_step = Instant::now();
            let line = json!({"stage": "sft", "step": m.step, "loss": m.loss, "lr": m.lr,
                              "grad_norm": m.grad_norm, "tokens_per_s": tps});
            metrics
                .append(&line)
                .map_err(|e| ParError::Config(format!("{e:#}")))?;
            bar.set_message(format!("sft loss {:.4}", m.loss));
            bar.inc(1);
            last_sft = Some(m.loss);
            control(t)
        },
    ))?;
    bar.finish_and_clear();
    let stopped = |when: &str| {
        let s = ctl.stop.load(Ordering::Relaxed);
        if s {
            eprintln!("stopped {when}: writing the adapter as it stands");
        }
        s
    };
    let stopped_in_sft = stopped("in stage 1");
    let acc_before = if stopped_in_sft {
        None
    } else {
        accuracy(&trainer, "before stage 2", &mut metrics)?
    };
    let rl_steps_run = if stopped_in_sft { 0 } else { rl_steps };
    eprintln!(
        "stage 2 (GRPO): {rl_steps_run} steps of {} prompt(s) x {} completions on {} System-2 prompts, lr {:.1e}, {} of {} elements active",
        s.grpo.prompts_per_step,
        s.grpo.group,
        rl_items.len(),
        s.rl_lr,
        count_active(&active2),
        masks.len()
    );
    trainer.config.seed = seed.wrapping_add(1);
    begin_stage(&mut trainer, &active2, s.rl_lr, rl_steps)?;
    let bar = indicatif::ProgressBar::new(rl_steps_run as u64);
    let mut rewards = Vec::new();
    let mut t_step = Instant::now();
    pollster::block_on(rl_stage(
        &mut trainer,
        &rl_items,
        rl_steps_run,
        &s.grpo,
        &reward,
        &decode,
        batching,
        |m, t| {
            let mut line = serde_json::to_value(m).unwrap_or_default();
            line["stage"] = "rl".into();
            line["seconds"] = t_step.elapsed().as_secs_f64().into();
            t_step = Instant::now();
            metrics
                .append(&line)
                .map_err(|e| ParError::Config(format!("{e:#}")))?;
            bar.set_message(format!(
                "reward {:.2} len {:.0} kl {:.4}",
                m.reward_mean, m.completion_len, m.kl
            ));
            bar.inc(1);
            rewards.push(m.reward_mean);
            control(t)
        },
    ))?;
    bar.finish_and_clear();
    let acc_after = if stopped_in_sft || stopped("in stage 2") {
        None
    } else {
        accuracy(&trainer, "after stage 2", &mut metrics)?
    };
    write_adapter(&trainer, &out, &model_path)?;
    println!("── wgtune train (LoRA-PAR) ──────────────────────────────");
    println!("model         {}", model_path.display());
    println!("backend       {}", backend.description);
    if let Some(l) = last_sft {
        println!("stage 1       {sft_steps} SFT steps, final loss {l:.4}");
    }
    let mean = |v: &[f64]| v.iter().fold(0.0, |a, b| a + b) / v.len().max(1) as f64;
    let h = rewards.len() / 2;
    if h > 0 {
        println!(
            "stage 2       {} GRPO steps, mean reward first half {:.3}, second half {:.3}",
            rewards.len(),
            mean(&rewards[..h]),
            mean(&rewards[h..])
        );
    } else {
        println!(
            "stage 2       {} GRPO steps, mean reward {:.3}",
            rewards.len(),
            mean(&rewards)
        );
    }
    if let (Some(a), Some(b)) = (acc_before, acc_after) {
        println!(
            "accuracy      {a:.3} → {b:.3} on {} held-out System-2 items (greedy)",
            eval_items.len()
        );
    }
    println!(
        "adapter       {}/adapter_model.safetensors (peft LoRA); masks {}, report {}",
        out.display(),
        out.join("par_masks.safetensors").display(),
        out.join("par_report.json").display()
    );
    println!("time          {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}
