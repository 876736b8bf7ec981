//! The file-system-free part of a training run, shared by `wgtune train` / the desktop app
//! ([`crate::app::train::run_training`]) and the browser app: data text → examples (truncation,
//! packing, warnings), the eval split, the step count, the order batches are drawn in, and the
//! body of a step. A run file therefore gives the same losses in every front end.

use crate::adapters::{self, AdapterConfig};
use crate::model::loader::LoadedModel;
use crate::train::data::{
    BadLine, Batch, DataOptions, Example, Tokenize, epoch_order, load_examples_with, make_batch,
    pack, split_eval,
};
use crate::train::run::RunConfig;
use crate::train::trainer::{StepMetrics, Trainer};
use anyhow::{Result, bail};
use std::collections::HashMap;

/// The data options of `run` (`on_bad_line`, `max_seq_len`).
pub fn data_options(run: &RunConfig) -> Result<DataOptions> {
    let on_bad_line = match run.on_bad_line.as_deref().unwrap_or("stop") {
        "stop" => BadLine::Stop,
        "skip" => BadLine::Skip,
        other => bail!("unknown --on-bad-line `{other}` (stop, skip)"),
    };
    Ok(DataOptions {
        max_seq_len: run.max_seq_len.unwrap_or(512),
        on_bad_line,
        vocab_size: None,
    })
}

/// The rows of a data file's `text` (named `file` in messages), tokenized with `lm`'s tokenizer,
/// truncated and, when `run` asks, packed; plus the warnings to show the user.
pub fn examples_from_text(
    run: &RunConfig,
    opts: &DataOptions,
    text: &str,
    file: &str,
    lm: &LoadedModel,
) -> Result<(Vec<Example>, Vec<String>)> {
    let tok = lm.tokenizer.as_ref().map(|t| Tokenize {
        tokenizer: t,
        chat_template: lm.chat_template.as_ref(),
    });
    let opts = DataOptions {
        vocab_size: Some(lm.model.config.vocab_size),
        ..*opts
    };
    let (examples, report) = load_examples_with(text, file, tok.as_ref(), &opts)?;
    let mut log = Vec::new();
    for (line, msg) in &report.skipped {
        log.push(format!("warning: {file}:{line}: skipped: {msg}"));
    }
    if report.truncated > 0 || report.dropped_unscored > 0 {
        log.push(format!(
            "data: {} examples ({} truncated to {} tokens, {} dropped with nothing to score)",
            examples.len(),
            report.truncated,
            opts.max_seq_len,
            report.dropped_unscored
        ));
    }
    let examples = if run.packing.unwrap_or(false) {
        pack(&examples, opts.max_seq_len)
    } else {
        examples
    };
    Ok((examples, log))
}

/// Which examples each step trains on: the eval split, batch size × gradient accumulation, the
/// number of steps, and the per-epoch (seeded, reproducible) shuffles.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Training examples, in file order.
    pub train: Vec<Example>,
    /// Held-out examples, in file order.
    pub eval: Vec<Example>,
    /// Rows per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub accum: usize,
    /// Steps the run is scheduled for.
    pub total: usize,
    /// Padding token id.
    pub pad: u32,
    /// What the schedule changed from the run's settings, for the user (a batch larger than the
    /// data is cut to the data, as a data loader without `drop_last` does).
    pub notes: Vec<String>,
    seed: u64,
    shuffle: bool,
    orders: HashMap<usize, Vec<usize>>,
}

impl Schedule {
    /// Split `data` (from the file `file`) for `run`; `pad` pads short rows.
    pub fn new(run: &RunConfig, data: Vec<Example>, pad: u32, file: &str) -> Result<Schedule> {
        let seed = run.seed.unwrap_or(42);
        let (train, eval) = split_eval(data, run.eval_split.unwrap_or(0.0), seed);
        if train.is_empty() {
            bail!("{file}: no training examples left after the eval split");
        }
        let n = train.len();
        let (want_bs, want_accum) = (run.batch_size.unwrap_or(4), run.grad_accum.unwrap_or(1));
        // Rows per step never exceed the data: nothing is allocated in proportion to a setting
        // the data cannot fill.
        let batch_size = want_bs.clamp(1, n);
        let accum = want_accum.clamp(1, n.div_ceil(batch_size));
        let mut notes = Vec::new();
        if (batch_size, accum) != (want_bs, want_accum) {
            notes.push(format!(
                "{file}: {n} training examples: batch {want_bs} x {want_accum} cut to {batch_size} x {accum}"
            ));
        }
        let total = match run.steps {
            Some(s) => s,
            None => (run.epochs.unwrap_or(1).saturating_mul(n)).div_ceil(batch_size * accum),
        };
        Ok(Schedule {
            train,
            eval,
            batch_size,
            accum,
            total,
            pad,
            notes,
            seed,
            shuffle: !run.no_shuffle.unwrap_or(false),
            orders: HashMap::new(),
        })
    }

    /// The index in `train` of the `g`-th example drawn (epochs follow each other, each in its
    /// own order).
    fn index(&mut self, g: usize) -> usize {
        let n = self.train.len();
        let epoch = g / n;
        let (seed, shuffle) = (self.seed, self.shuffle);
        let order = self
            .orders
            .entry(epoch)
            .or_insert_with(|| epoch_order(n, epoch as u64, seed, shuffle));
        order[g % n]
    }

    /// The micro-batches of step `s` (0-based: the step after `s` completed steps).
    pub fn micro_batches(&mut self, s: usize) -> Vec<Batch> {
        let (bs, accum) = (self.batch_size, self.accum);
        let per_step = bs * accum;
        (0..accum)
            .map(|k| {
                let idx: Vec<usize> = (0..bs)
                    .map(|j| self.index(s * per_step + k * bs + j))
                    .collect();
                let rows: Vec<&Example> = idx.iter().map(|&i| &self.train[i]).collect();
                make_batch(&rows, self.pad)
            })
            .collect()
    }

    /// The eval set as batches of `batch_size`.
    pub fn eval_batches(&self) -> Vec<Batch> {
        self.eval
            .chunks(self.batch_size)
            .map(|c| make_batch(&c.iter().collect::<Vec<_>>(), self.pad))
            .collect()
    }
}

/// A run without files: model and data already in memory, a fresh adapter, no checkpoints. The
/// browser app drives one step at a time (yielding to the page in between).
pub struct Session {
    /// The trainer (model with its adapters, optimizer state).
    pub trainer: Trainer,
    /// The data order.
    pub schedule: Schedule,
    /// Trainable adapter parameters.
    pub trainable: usize,
    eval_batches: Vec<Batch>,
    eval_every: usize,
}

impl Session {
    /// Attach a fresh adapter as `run` describes to `lm` and prepare `data_text` (named
    /// `data_file`). Returns the session and the lines to show the user.
    pub fn new(
        run: &RunConfig,
        lm: LoadedModel,
        data_text: &str,
        data_file: &str,
    ) -> Result<(Session, Vec<String>)> {
        run.validate().map_err(anyhow::Error::msg)?;
        let adapter_cfg: AdapterConfig = run.adapter().map_err(anyhow::Error::msg)?;
        let opts = data_options(run)?;
        let (data, mut log) = examples_from_text(run, &opts, data_text, data_file, &lm)?;
        let pad = lm.model.config.eos_token_ids.first().copied().unwrap_or(0);
        let schedule = Schedule::new(run, data, pad, data_file)?;
        log.extend(schedule.notes.iter().cloned());
        let mut model = lm.model;
        adapters::attach(&mut model, &adapter_cfg, run.seed.unwrap_or(42))?;
        let trainable: usize = adapters::named_parameters(&model)
            .iter()
            .map(|(_, t)| t.dims().iter().product::<usize>())
            .sum();
        let train_cfg = run.train(schedule.total).map_err(anyhow::Error::msg)?;
        let trainer = Trainer::new(model, adapter_cfg, train_cfg);
        log.push(format!(
            "training {trainable} trainable parameters on {} examples ({} eval), {} steps of {}x{}",
            schedule.train.len(),
            schedule.eval.len(),
            schedule.total,
            schedule.batch_size,
            schedule.accum
        ));
        let eval_batches = schedule.eval_batches();
        Ok((
            Session {
                trainer,
                schedule,
                trainable,
                eval_batches,
                eval_every: run.eval_every.unwrap_or(0),
            },
            log,
        ))
    }

    /// True once every scheduled step is done.
    pub fn done(&self) -> bool {
        self.trainer.step_count() as usize >= self.schedule.total
    }

    /// The eval loss before training (`None` without an eval split).
    pub async fn eval_before(&mut self) -> Result<Option<f64>> {
        if self.eval_batches.is_empty() || self.trainer.step_count() > 0 {
            return Ok(None);
        }
        Ok(Some(self.trainer.eval_loss(&self.eval_batches).await?))
    }

    /// Train one step; the eval loss comes along when one is due (every `eval_every` steps and
    /// after the last).
    pub async fn step(&mut self) -> Result<(StepMetrics, Option<f64>)> {
        let s = self.trainer.step_count() as usize;
        let micro = self.schedule.micro_batches(s);
        let m = self.trainer.step(&micro).await?;
        let due = self.eval_every > 0 && (m.step as usize).is_multiple_of(self.eval_every);
        let eval =
            if !self.eval_batches.is_empty() && (due || m.step as usize == self.schedule.total) {
                Some(self.trainer.eval_loss(&self.eval_batches).await?)
            } else {
                None
            };
        Ok((m, eval))
    }

    /// The adapter as peft files: `adapter_config.json` text and `adapter_model.safetensors`.
    pub async fn adapter_files(&self, base_model: &str) -> Result<(String, Vec<u8>)> {
        crate::io::peft::save_adapter(&self.trainer.model, &self.trainer.adapter, base_model)
            .await
            .map_err(anyhow::Error::msg)
    }
}
