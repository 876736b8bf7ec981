//! `wgtune train --no-gui`: resolve the run (flags over `--config` file), load model and data,
//! attach or load the adapter, run the steps with a progress bar, append every step to
//! `OUT/metrics.jsonl`, write checkpoints atomically, and save the peft adapter at the end. The
//! loop itself ([`run_training`]) is shared with the desktop app, which drives it from a thread.

use super::cli::{load, pick_backend};
use super::files::{DirSource, read_blob, write_atomic};
use super::loftq::{attach_loftq, load_loftq};
use super::run_dir::{MetricsLog, RunLock};
use crate::adapters;
use crate::io::peft::{load_adapter, save_adapter};
use crate::train::data::{Example, decode_text};
use crate::train::run::RunConfig;
use crate::train::session::{Schedule, data_options, examples_from_text};
use crate::train::trainer::{StepMetrics, TrainError, Trainer};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// `wgtune train` arguments: the run settings plus where they come from.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// TOML run file (keys are the flag names with `_`); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Run headless (`wgtune train` always does; `wgtune gui --config FILE` opens the same run in
    /// the desktop app).
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
            let file = RunConfig::from_toml(&text).and_then(|c| c.validate().map(|_| c));
            file.map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
        }
        None => RunConfig::default(),
    };
    let run = file.overlay(&a.run).map_err(anyhow::Error::msg)?;
    Ok(run)
}

/// What the training loop reports to its front end (the CLI's progress bar and log lines, the
/// GUI's curves). The metrics file gets the same `Step` lines whatever the front end.
#[derive(Debug, Clone)]
pub enum TrainEvent {
    /// A line for the user (data warnings, base summary, resume notice).
    Log(String),
    /// Model, data and adapter are ready; the steps start now.
    Started {
        /// Steps done already (non-zero when resumed).
        first_step: u64,
        /// Steps the run is scheduled for.
        total: usize,
        /// Trainable adapter parameters.
        trainable: usize,
        /// Backend description (e.g. `cpu (burn flex backend)`).
        backend: String,
    },
    /// One line of `metrics.jsonl` (a step, or the eval before training): step, loss, lr,
    /// grad_norm, tokens_per_s, mem, eval_loss.
    Metrics(serde_json::Value),
    /// A checkpoint was written after this step.
    Checkpoint(u64),
    /// The adapter was written to the output folder after this step.
    AdapterSaved(u64),
}

/// Requests from the front end to a running training loop, checked between steps.
#[derive(Debug, Default)]
pub struct TrainControl {
    /// Finish after the current step: checkpoint and adapter are written as at the end.
    pub stop: AtomicBool,
    /// Hold between steps until cleared (or `stop`).
    pub pause: AtomicBool,
    /// Write the adapter (peft format) to the output folder after the current step.
    pub save_adapter: AtomicBool,
}

/// What a finished (or stopped) run leaves behind, for the summary.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Method name (`LoRA`, `OFTv2`).
    pub method: &'static str,
    /// Base model path.
    pub model: PathBuf,
    /// Backend description.
    pub backend: String,
    /// Steps completed in total.
    pub steps: u64,
    /// Steps done by this run.
    pub steps_this_run: u64,
    /// Wall time of this run.
    pub secs: f64,
    /// Last step's metrics.
    pub last: Option<StepMetrics>,
    /// Last eval loss.
    pub last_eval: Option<f64>,
    /// Output folder.
    pub out: PathBuf,
    /// True when the run used `init = loftq` (the adapter belongs to OUT/base-nf4).
    pub loftq: bool,
    /// True when the front end stopped the run before its last step.
    pub stopped: bool,
}

/// Rows of the data file, tokenized, truncated and (optionally) packed.
fn read_data(
    run: &RunConfig,
    path: &Path,
    lm: &crate::model::loader::LoadedModel,
    sink: &mut dyn FnMut(TrainEvent),
) -> Result<Vec<Example>> {
    let opts = data_options(run)?;
    let blob = read_blob(path)?;
    let file = path.display().to_string();
    let (text, skipped) = decode_text((*blob).as_ref(), &file, opts.on_bad_line)?;
    for (line, msg) in skipped {
        sink(TrainEvent::Log(format!(
            "warning: {file}:{line}: skipped: {msg}"
        )));
    }
    let (examples, log) = examples_from_text(run, &opts, &text, &file, lm)?;
    for line in log {
        sink(TrainEvent::Log(line));
    }
    Ok(examples)
}

/// `wgtune train`.
pub fn cmd_train(a: TrainArgs) -> Result<()> {
    let run = resolve(&a)?;
    if matches!(run.method.as_deref(), Some("lora-par" | "qlora-par")) {
        return super::par::cmd_train_par(run, &TrainControl::default());
    }
    let mut bar: Option<indicatif::ProgressBar> = None;
    let mut sink = |e: TrainEvent| match e {
        TrainEvent::Log(line) => eprintln!("{line}"),
        TrainEvent::Started {
            first_step, total, ..
        } => {
            let b = indicatif::ProgressBar::new(total as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_position(first_step);
            bar = Some(b);
        }
        TrainEvent::Metrics(v) => {
            if let (Some(b), Some(step), Some(loss)) =
                (&bar, v["step"].as_u64(), v["loss"].as_f64())
            {
                b.set_message(format!(
                    "loss {loss:.4} lr {:.2e} {:.0} tok/s",
                    v["lr"].as_f64().unwrap_or(0.0),
                    v["tokens_per_s"].as_f64().unwrap_or(0.0)
                ));
                b.set_position(step);
            }
        }
        TrainEvent::Checkpoint(_) | TrainEvent::AdapterSaved(_) => {}
    };
    let result = run_training(&run, &TrainControl::default(), &mut sink);
    let s = match result {
        Ok(s) => s,
        Err(e) => {
            if let Some(b) = &bar {
                b.abandon();
            }
            return Err(e);
        }
    };
    if let Some(b) = &bar {
        b.finish();
    }
    print_summary(&s);
    Ok(())
}

/// The end-of-run summary `wgtune train` prints.
fn print_summary(s: &TrainSummary) {
    println!("── wgtune train ─────────────────────────────────────────");
    println!("method        {} on {}", s.method, s.model.display());
    println!("backend       {}", s.backend);
    println!(
        "steps         {} (this run: {} in {:.1}s)",
        s.steps, s.steps_this_run, s.secs
    );
    if let Some(m) = &s.last {
        println!(
            "final loss    {:.4}  (grad norm {:.3}, lr {:.2e})",
            m.loss, m.grad_norm, m.lr
        );
    }
    if let Some(e) = s.last_eval {
        println!("eval loss     {e:.4}  (perplexity {:.3})", e.exp());
    }
    println!(
        "adapter       {}/adapter_model.safetensors (peft format)",
        s.out.display()
    );
    if s.loftq {
        println!(
            "base          {} (LoftQ NF4 base for this adapter)",
            s.out.join(LOFTQ_BASE).display()
        );
    }
    println!("metrics       {}", s.out.join("metrics.jsonl").display());
}

/// The training loop behind `wgtune train` and the desktop app: resolve model, data and adapter
/// from `run`, train (resuming from OUT/checkpoint when asked), append every step to
/// OUT/metrics.jsonl, write checkpoints and the peft adapter; report progress through `sink` and
/// obey `ctl` between steps. LoRA-PAR runs go through [`super::par::cmd_train_par`] instead.
pub fn run_training(
    run: &RunConfig,
    ctl: &TrainControl,
    sink: &mut dyn FnMut(TrainEvent),
) -> Result<TrainSummary> {
    let model_path = PathBuf::from(
        run.require(&run.model, "model")
            .map_err(anyhow::Error::msg)?,
    );
    let data_path = PathBuf::from(run.require(&run.data, "data").map_err(anyhow::Error::msg)?);
    let out = PathBuf::from(run.require(&run.out, "out").map_err(anyhow::Error::msg)?);
    run.validate().map_err(anyhow::Error::msg)?;
    let adapter_cfg = run.adapter().map_err(anyhow::Error::msg)?;
    let loftq_iters = run.loftq_iters().map_err(anyhow::Error::msg)?;
    let backend = pick_backend(run.backend_choice().map_err(anyhow::Error::msg)?)?;
    let quantize = run.base_quantization();
    let device = backend.device.clone().autodiff();
    // Nothing in `out` is touched until model, data, adapter and checkpoint have all validated.
    let _lock = RunLock::acquire(&out)?;
    let (mut lm, mut loftq) = match loftq_iters {
        Some(iters) => {
            let m = load_loftq(&model_path, &device, &adapter_cfg, iters)?;
            (m.lm, Some((m.pairs, m.base)))
        }
        None => (load(&model_path, &device, quantize.as_deref())?, None),
    };
    let base = lm.model.base_summary();
    sink(TrainEvent::Log(format!(
        "base: {} decoder linears packed for the fused kernel ({:.1} MiB), {} dense f32 ({:.1} MiB)",
        base.packed,
        base.packed_bytes as f64 / 1048576.0,
        base.dense,
        base.dense_bytes as f64 / 1048576.0
    )));
    let data = read_data(run, &data_path, &lm, sink)?;
    let seed = run.seed.unwrap_or(42);
    let pad = lm.model.config.eos_token_ids.first().copied().unwrap_or(0);
    let mut schedule = Schedule::new(run, data, pad, &data_path.display().to_string())?;
    for note in &schedule.notes {
        sink(TrainEvent::Log(note.clone()));
    }
    let (bs, accum, total) = (schedule.batch_size, schedule.accum, schedule.total);
    let cfg = match &run.init_adapter {
        Some(dir) => {
            let c = load_adapter(&DirSource::new(dir), &mut lm.model)?;
            if c.method != adapter_cfg.method || c.target_modules != adapter_cfg.target_modules {
                sink(TrainEvent::Log(format!(
                    "init adapter {dir}: using its own settings ({:?})",
                    c.method
                )));
            }
            c
        }
        None => {
            match loftq.as_mut() {
                Some((pairs, _)) => attach_loftq(&mut lm.model, &adapter_cfg, pairs)?,
                None => adapters::attach(&mut lm.model, &adapter_cfg, seed)?,
            }
            adapter_cfg
        }
    };
    cfg.check_trainable()?;
    let n_params: usize = adapters::named_parameters(&lm.model)
        .iter()
        .map(|(_, t)| t.dims().iter().product::<usize>())
        .sum();
    let mut trainer = Trainer::new(
        lm.model,
        cfg.clone(),
        run.train(total).map_err(anyhow::Error::msg)?,
    );
    let ckpt_path = out.join(CHECKPOINT);
    let resume_from = match run.resume.unwrap_or(false) && ckpt_path.exists() {
        true => {
            let bytes =
                std::fs::read(&ckpt_path).with_context(|| ckpt_path.display().to_string())?;
            trainer
                .restore(&bytes)
                .map_err(|e| anyhow::anyhow!("{}: {e}", ckpt_path.display()))?;
            Some(trainer.step_count())
        }
        false => None,
    };
    // Everything validated: from here on the run folder is written.
    if let Some((_, base)) = &loftq {
        base.write(&out.join(LOFTQ_BASE))?;
    }
    std::fs::create_dir_all(out.join("checkpoint"))
        .with_context(|| format!("{}: cannot create", out.join("checkpoint").display()))?;
    let mut metrics = MetricsLog::open(&out.join("metrics.jsonl"), resume_from)?;
    if let Some(step) = resume_from {
        sink(TrainEvent::Log(format!(
            "resumed from {} at step {step}",
            ckpt_path.display()
        )));
    }
    write_atomic(&out.join("run.toml"), run.to_toml().as_bytes())?;
    sink(TrainEvent::Log(format!(
        "training {} ({n_params} trainable parameters) on {} examples ({} eval), {total} steps of {bs}x{accum}",
        method_name(&cfg),
        schedule.train.len(),
        schedule.eval.len()
    )));
    let save_every = run.save_every.unwrap_or(0);
    let eval_every = run.eval_every.unwrap_or(0);
    let eval_batches = schedule.eval_batches();
    // A LoftQ adapter belongs to the LoftQ base, not to the original weights.
    let base_name = match loftq_iters {
        Some(_) => out.join(LOFTQ_BASE),
        None => model_path.clone(),
    };
    sink(TrainEvent::Started {
        first_step: trainer.step_count(),
        total,
        trainable: n_params,
        backend: backend.description.clone(),
    });
    let started = Instant::now();
    let first = trainer.step_count();
    let mut last: Option<StepMetrics> = None;
    let mut last_eval = None;
    if !eval_batches.is_empty() && trainer.step_count() == 0 {
        let el = pollster::block_on(trainer.eval_loss(&eval_batches))?;
        let line = serde_json::json!({"step": 0, "eval_loss": el});
        metrics.append(&line)?;
        sink(TrainEvent::Log(format!(
            "eval loss before training: {el:.4}"
        )));
        sink(TrainEvent::Metrics(line));
        last_eval = Some(el);
    }
    let mut stopped = false;
    while (trainer.step_count() as usize) < total {
        while ctl.pause.load(Ordering::Relaxed) && !ctl.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if ctl.stop.load(Ordering::Relaxed) {
            stopped = true;
            break;
        }
        let micro = schedule.micro_batches(trainer.step_count() as usize);
        let t0 = Instant::now();
        let m = match pollster::block_on(trainer.step(&micro)) {
            Ok(m) => m,
            Err(e @ TrainError::NonFinite { .. }) => {
                bail!("{e}; stopped. {}", last_good(&ckpt_path));
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
        if let Err(e) = metrics.append(&line) {
            // Keep what was trained (where the disk allows) before reporting the full disk.
            let kept = match save_checkpoint(&trainer, &ckpt_path) {
                Ok(()) => format!("the trained state is kept in {}", ckpt_path.display()),
                Err(e2) => format!("the checkpoint could not be written either ({e2:#})"),
            };
            bail!("{e:#}; {kept} (step {})", m.step);
        }
        sink(TrainEvent::Metrics(line));
        if due(save_every) {
            save_checkpoint(&trainer, &ckpt_path)?;
            sink(TrainEvent::Checkpoint(m.step));
        }
        if ctl.save_adapter.swap(false, Ordering::Relaxed) {
            write_adapter(&trainer, &out, &base_name)?;
            sink(TrainEvent::AdapterSaved(m.step));
        }
        last = Some(m);
    }
    save_checkpoint(&trainer, &ckpt_path)?;
    sink(TrainEvent::Checkpoint(trainer.step_count()));
    write_adapter(&trainer, &out, &base_name)?;
    sink(TrainEvent::AdapterSaved(trainer.step_count()));
    Ok(TrainSummary {
        method: method_name(&cfg),
        model: model_path,
        backend: backend.description,
        steps: trainer.step_count(),
        steps_this_run: trainer.step_count() - first,
        secs: started.elapsed().as_secs_f64(),
        last,
        last_eval,
        out,
        loftq: loftq_iters.is_some(),
        stopped,
    })
}

/// Write the trainer's adapter in peft format to `out` (adapter_config.json + weights).
/// Write the trainer's adapter (peft files) into `out`, atomically.
pub(crate) fn write_adapter(trainer: &Trainer, out: &Path, base_name: &Path) -> Result<()> {
    let (json, bytes) = pollster::block_on(save_adapter(
        &trainer.model,
        &trainer.adapter,
        &base_name.display().to_string(),
    ))
    .map_err(anyhow::Error::msg)?;
    write_atomic(&out.join("adapter_config.json"), json.as_bytes())?;
    write_atomic(&out.join("adapter_model.safetensors"), &bytes)?;
    Ok(())
}

fn method_name(cfg: &adapters::AdapterConfig) -> &'static str {
    match cfg.method {
        adapters::Method::Lora(_) => "LoRA",
        adapters::Method::Oft(_) => "OFTv2",
    }
}

/// Write the trainer's checkpoint atomically; a non-finite state is refused (the previous, good
/// checkpoint stays) and the message says which checkpoint is the last good one.
fn save_checkpoint(trainer: &Trainer, path: &Path) -> Result<()> {
    let bytes = match pollster::block_on(trainer.checkpoint()) {
        Ok(b) => b,
        Err(e @ TrainError::NonFiniteState { .. }) => bail!("{e}; {}", last_good(path)),
        Err(e) => return Err(e.into()),
    };
    write_atomic(path, &bytes)?;
    Ok(())
}

/// "The last good checkpoint is PATH (step N)." — or that there is none yet.
fn last_good(path: &Path) -> String {
    let step = std::fs::read(path).ok().and_then(|b| {
        safetensors::SafeTensors::read_metadata(&b)
            .ok()
            .and_then(|(_, m)| m.metadata().clone())
            .and_then(|m| m.get("step").cloned())
    });
    match step {
        Some(step) => format!(
            "The last good checkpoint is {} (step {step}).",
            path.display()
        ),
        None => "No checkpoint was written before (lower --lr, or set --save-every).".into(),
    }
}
