//! `wgtune train --no-gui`: resolve the run (flags over `--config` file), load model and data,
//! attach or load the adapter, run the steps with a progress bar, append every step to
//! `OUT/metrics.jsonl`, write checkpoints atomically, and save the peft adapter at the end.

use super::cli::{load, pick_backend, read_examples};
use super::files::{DirSource, write_atomic};
use super::loftq::{attach_loftq, load_loftq};
use crate::adapters;
use crate::io::peft::{load_adapter, save_adapter};
use crate::train::data::{
    BadLine, DataOptions, Example, epoch_order, make_batch, pack, split_eval,
};
use crate::train::run::RunConfig;
use crate::train::trainer::{StepMetrics, TrainError, Trainer};
use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `wgtune train` arguments: the run settings plus where they come from.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// TOML run file (keys are the flag names with `_`); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Run headless (the desktop app is the default front end once it lands).
    #[arg(long)]
    pub no_gui: bool,
    #[command(flatten)]
    pub run: RunConfig,
}

const CHECKPOINT: &str = "checkpoint/trainer.safetensors";
/// Where `--init loftq` writes the quantized base (under `--out`).
pub const LOFTQ_BASE: &str = "base-nf4";

/// Resolve the run settings: the file (if any) with the flags on top.
pub fn resolve(a: &TrainArgs) -> Result<RunConfig> {
    let file = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("{}", p.display()))?;
            RunConfig::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
        }
        None => RunConfig::default(),
    };
    Ok(file.overlay(&a.run))
}

/// Rows of the data file, tokenized, truncated and (optionally) packed.
fn read_data(
    run: &RunConfig,
    path: &Path,
    lm: &crate::model::loader::LoadedModel,
) -> Result<Vec<Example>> {
    let on_bad_line = match run.on_bad_line.as_deref().unwrap_or("stop") {
        "stop" => BadLine::Stop,
        "skip" => BadLine::Skip,
        other => bail!("unknown --on-bad-line `{other}` (stop, skip)"),
    };
    let max_seq_len = run.max_seq_len.unwrap_or(512);
    let opts = DataOptions {
        max_seq_len,
        on_bad_line,
    };
    let (examples, report) = read_examples(path, lm, &opts)?;
    for (line, msg) in &report.skipped {
        eprintln!("warning: {}:{line}: skipped: {msg}", path.display());
    }
    if report.truncated > 0 || report.dropped_unscored > 0 {
        eprintln!(
            "data: {} examples ({} truncated to {max_seq_len} tokens, {} dropped with nothing to score)",
            examples.len(),
            report.truncated,
            report.dropped_unscored
        );
    }
    Ok(if run.packing.unwrap_or(false) {
        pack(&examples, max_seq_len)
    } else {
        examples
    })
}

/// `wgtune train`.
pub fn cmd_train(a: TrainArgs) -> Result<()> {
    let run = resolve(&a)?;
    if matches!(run.method.as_deref(), Some("lora-par" | "qlora-par")) {
        return super::par::cmd_train_par(run);
    }
    let model_path = PathBuf::from(
        run.require(&run.model, "model")
            .map_err(anyhow::Error::msg)?,
    );
    let data_path = PathBuf::from(run.require(&run.data, "data").map_err(anyhow::Error::msg)?);
    let out = PathBuf::from(run.require(&run.out, "out").map_err(anyhow::Error::msg)?);
    let adapter_cfg = run.adapter().map_err(anyhow::Error::msg)?;
    let loftq_iters = run.loftq_iters().map_err(anyhow::Error::msg)?;
    let backend = pick_backend(
        run.backend
            .as_deref()
            .unwrap_or("auto")
            .parse()
            .map_err(anyhow::Error::msg)?,
    )?;
    let quantize = run.base_quantization();
    let device = backend.device.clone().autodiff();
    let (mut lm, mut loftq_pairs) = match loftq_iters {
        Some(iters) => {
            let m = load_loftq(
                &model_path,
                &device,
                &adapter_cfg,
                iters,
                &out.join(LOFTQ_BASE),
            )?;
            (m.lm, Some(m.pairs))
        }
        None => (load(&model_path, &device, quantize.as_deref())?, None),
    };
    let base = lm.model.base_summary();
    eprintln!(
        "base: {} decoder linears packed for the fused kernel ({:.1} MiB), {} dense f32 ({:.1} MiB)",
        base.packed,
        base.packed_bytes as f64 / 1048576.0,
        base.dense,
        base.dense_bytes as f64 / 1048576.0
    );
    let data = read_data(&run, &data_path, &lm)?;
    let seed = run.seed.unwrap_or(42);
    let (train, eval) = split_eval(data, run.eval_split.unwrap_or(0.0), seed);
    if train.is_empty() {
        bail!(
            "{}: no training examples left after the eval split",
            data_path.display()
        );
    }
    let bs = run.batch_size.unwrap_or(4).max(1);
    let accum = run.grad_accum.unwrap_or(1).max(1);
    let per_step = bs * accum;
    let total = match run.steps {
        Some(s) => s,
        None => (run.epochs.unwrap_or(1) * train.len()).div_ceil(per_step),
    };
    let cfg = match &run.init_adapter {
        Some(dir) => {
            let c = load_adapter(&DirSource::new(dir), &mut lm.model)?;
            if c.method != adapter_cfg.method || c.target_modules != adapter_cfg.target_modules {
                eprintln!(
                    "init adapter {dir}: using its own settings ({:?})",
                    c.method
                );
            }
            c
        }
        None => {
            match loftq_pairs.as_mut() {
                Some(pairs) => attach_loftq(&mut lm.model, &adapter_cfg, pairs)?,
                None => adapters::attach(&mut lm.model, &adapter_cfg, seed)?,
            }
            adapter_cfg
        }
    };
    let n_params: usize = adapters::named_parameters(&lm.model)
        .iter()
        .map(|(_, t)| t.dims().iter().product::<usize>())
        .sum();
    let pad = lm.model.config.eos_token_ids.first().copied().unwrap_or(0);
    let mut trainer = Trainer::new(
        lm.model,
        cfg.clone(),
        run.train(total).map_err(anyhow::Error::msg)?,
    );
    std::fs::create_dir_all(out.join("checkpoint"))
        .with_context(|| format!("{}: cannot create", out.display()))?;
    let ckpt_path = out.join(CHECKPOINT);
    let metrics_path = out.join("metrics.jsonl");
    if run.resume.unwrap_or(false) && ckpt_path.exists() {
        let bytes = std::fs::read(&ckpt_path).with_context(|| ckpt_path.display().to_string())?;
        trainer
            .restore(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", ckpt_path.display()))?;
        keep_metrics_up_to(&metrics_path, trainer.step_count())?;
        eprintln!(
            "resumed from {} at step {}",
            ckpt_path.display(),
            trainer.step_count()
        );
    } else if metrics_path.exists() {
        std::fs::remove_file(&metrics_path)?;
    }
    std::fs::write(out.join("run.toml"), run.to_toml())?;
    eprintln!(
        "training {} ({n_params} trainable parameters) on {} examples ({} eval), {total} steps of {bs}x{accum}",
        method_name(&cfg),
        train.len(),
        eval.len()
    );
    let shuffle = !run.no_shuffle.unwrap_or(false);
    let mut orders: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut pick = |g: usize| -> &Example {
        let epoch = g / train.len();
        let order = orders
            .entry(epoch)
            .or_insert_with(|| epoch_order(train.len(), epoch as u64, seed, shuffle));
        &train[order[g % train.len()]]
    };
    let save_every = run.save_every.unwrap_or(0);
    let eval_every = run.eval_every.unwrap_or(0);
    let eval_batches: Vec<_> = eval
        .chunks(bs)
        .map(|c| make_batch(&c.iter().collect::<Vec<_>>(), pad))
        .collect();
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(trainer.step_count());
    let started = Instant::now();
    let first = trainer.step_count();
    let mut last: Option<StepMetrics> = None;
    let mut last_eval = None;
    let mut metrics_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)?;
    if !eval_batches.is_empty() && trainer.step_count() == 0 {
        let el = pollster::block_on(trainer.eval_loss(&eval_batches))?;
        writeln!(
            metrics_file,
            "{}",
            serde_json::json!({"step": 0, "eval_loss": el})
        )?;
        eprintln!("eval loss before training: {el:.4}");
        last_eval = Some(el);
    }
    while (trainer.step_count() as usize) < total {
        let s = trainer.step_count() as usize;
        let micro: Vec<_> = (0..accum)
            .map(|k| {
                let rows: Vec<&Example> =
                    (0..bs).map(|j| pick(s * per_step + k * bs + j)).collect();
                make_batch(&rows, pad)
            })
            .collect();
        let t0 = Instant::now();
        let m = match pollster::block_on(trainer.step(&micro)) {
            Ok(m) => m,
            Err(e @ TrainError::NonFinite { .. }) => {
                bar.abandon();
                bail!(
                    "{e}; stopped. The last good checkpoint is {} (step {}).",
                    ckpt_path.display(),
                    checkpoint_step(&ckpt_path)
                );
            }
            Err(e) => return Err(e.into()),
        };
        let tps = m.tokens as f64 / t0.elapsed().as_secs_f64();
        let mem = backend
            .device
            .memory_pool_usage()
            .map_or(0, |u| u.bytes_in_use);
        let mut line = serde_json::json!({"step": m.step, "loss": m.loss, "lr": m.lr, "grad_norm": m.grad_norm, "tokens_per_s": tps, "mem": mem});
        let due = |every: usize| every > 0 && (m.step as usize).is_multiple_of(every);
        if !eval_batches.is_empty() && (due(eval_every) || m.step as usize == total) {
            let el = pollster::block_on(trainer.eval_loss(&eval_batches))?;
            line["eval_loss"] = el.into();
            last_eval = Some(el);
        }
        writeln!(metrics_file, "{line}")?;
        bar.set_message(format!(
            "loss {:.4} lr {:.2e} {:.0} tok/s",
            m.loss, m.lr, tps
        ));
        bar.set_position(m.step);
        if due(save_every) {
            save_checkpoint(&trainer, &ckpt_path)?;
        }
        last = Some(m);
    }
    bar.finish();
    save_checkpoint(&trainer, &ckpt_path)?;
    // A LoftQ adapter belongs to the LoftQ base, not to the original weights.
    let base_name = match loftq_iters {
        Some(_) => out.join(LOFTQ_BASE),
        None => model_path.clone(),
    };
    let (json, bytes) = pollster::block_on(save_adapter(
        &trainer.model,
        &cfg,
        &base_name.display().to_string(),
    ))
    .map_err(anyhow::Error::msg)?;
    write_atomic(&out.join("adapter_config.json"), json.as_bytes())?;
    write_atomic(&out.join("adapter_model.safetensors"), &bytes)?;
    let secs = started.elapsed().as_secs_f64();
    println!("── wgtune train ─────────────────────────────────────────");
    println!(
        "method        {} on {}",
        method_name(&cfg),
        model_path.display()
    );
    println!("backend       {}", backend.description);
    println!(
        "steps         {} (this run: {} in {secs:.1}s)",
        trainer.step_count(),
        trainer.step_count() - first
    );
    if let Some(m) = &last {
        println!(
            "final loss    {:.4}  (grad norm {:.3}, lr {:.2e})",
            m.loss, m.grad_norm, m.lr
        );
    }
    if let Some(e) = last_eval {
        println!("eval loss     {e:.4}  (perplexity {:.3})", e.exp());
    }
    println!(
        "adapter       {}/adapter_model.safetensors (peft format)",
        out.display()
    );
    if loftq_iters.is_some() {
        println!(
            "base          {} (LoftQ NF4 base for this adapter)",
            out.join(LOFTQ_BASE).display()
        );
    }
    println!("metrics       {}", metrics_path.display());
    Ok(())
}

fn method_name(cfg: &adapters::AdapterConfig) -> &'static str {
    match cfg.method {
        adapters::Method::Lora(_) => "LoRA",
        adapters::Method::Oft(_) => "OFTv2",
    }
}

fn save_checkpoint(trainer: &Trainer, path: &Path) -> Result<()> {
    let bytes = pollster::block_on(trainer.checkpoint())?;
    write_atomic(path, &bytes)
        .with_context(|| format!("{}: cannot write checkpoint", path.display()))
}

fn checkpoint_step(path: &Path) -> String {
    std::fs::read(path)
        .ok()
        .and_then(|b| {
            safetensors::SafeTensors::read_metadata(&b)
                .ok()
                .and_then(|(_, m)| m.metadata().clone())
        })
        .and_then(|m| m.get("step").cloned())
        .unwrap_or_else(|| "none".into())
}

/// Drop metrics lines after `step` so a resumed run continues the file cleanly.
fn keep_metrics_up_to(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    write_atomic(path, kept.as_bytes())?;
    Ok(())
}
