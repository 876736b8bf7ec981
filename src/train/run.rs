//! A training run's settings: one struct for the CLI flags (`wgtune train --lr ...`), the TOML run
//! file (`--config run.toml`, keys = flag names with `_`) and the GUI. Every field is optional;
//! flags override the file, and the accessors hold the defaults (peft's / the papers').

use crate::adapters::lora::LoraConfig;
use crate::adapters::oft::OftConfig;
use crate::adapters::{AdapterConfig, Method, TARGET_MODULES};
use crate::train::optim::{AdamWConfig, Schedule};
use crate::train::trainer::TrainConfig;
use serde::{Deserialize, Serialize};

/// Largest LoRA rank accepted (an adapter's rank is also capped by each layer's own sizes).
pub const MAX_RANK: usize = 4096;
/// Largest OFT block size accepted.
pub const MAX_BLOCK: usize = 4096;
/// Most Cayley-Neumann terms accepted: each term is one more block matmul kept for the backward
/// pass; the series has converged in f32 long before this.
pub const MAX_NEUMANN_TERMS: usize = 64;
/// Most steps / epochs / intervals accepted (a bound, not a recommendation).
pub const MAX_STEPS: usize = 100_000_000;
/// Most rows per micro-batch, micro-batches per step, or items of a LoRA-PAR pass accepted; the
/// data also has to hold them (see `Schedule::new`).
pub const MAX_ROWS: usize = 1 << 20;
/// Longest sequence accepted.
pub const MAX_SEQ_LEN: usize = 1 << 20;

/// Every setting of `wgtune train`, as flags and as TOML keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// HF model folder or .gguf file.
    #[arg(long)]
    pub model: Option<String>,
    /// Training data (jsonl or JSON array: input_ids, text, prompt/completion, alpaca, messages).
    #[arg(long)]
    pub data: Option<String>,
    /// Output folder (adapter, checkpoint, metrics.jsonl).
    #[arg(long)]
    pub out: Option<String>,
    /// Adapter method: lora, oft, qlora (LoRA over an NF4 base) or qoft (OFT over an NF4 base);
    /// lora-par / qlora-par: LoRA-PAR (two-stage SFT → GRPO over partitioned LoRA elements).
    #[arg(long)]
    pub method: Option<String>,
    /// Quantize the base on load (nf4); implied by qlora / qoft.
    #[arg(long)]
    pub quantize: Option<String>,
    /// LoRA rank.
    #[arg(long)]
    pub r: Option<usize>,
    /// LoRA alpha (scale = alpha / r).
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    /// LoRA dropout on the adapter input.
    #[arg(long)]
    pub lora_dropout: Option<f64>,
    /// rsLoRA scaling (alpha / sqrt(r)).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub use_rslora: Option<bool>,
    /// Comma-separated projections: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj.
    #[arg(long)]
    pub target_modules: Option<String>,
    /// OFT block size b (in_features must be divisible by it).
    #[arg(long)]
    pub oft_block_size: Option<usize>,
    /// Terms of the Cayley-Neumann series (peft semantics).
    #[arg(long)]
    pub cayley_neumann_terms: Option<usize>,
    /// Exact Cayley transform instead of the Neumann series.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub exact_cayley: Option<bool>,
    /// Constrained OFT (project the skew parameters into an eps-ball).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub coft: Option<bool>,
    /// COFT radius.
    #[arg(long)]
    pub eps: Option<f64>,
    /// Share one rotation across all blocks of a layer.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub block_share: Option<bool>,
    /// Benchmark baseline: weight-centric OFT v1 (rebuilds W·Rᵀ every step; same result, slower).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub oft_v1: Option<bool>,
    /// Start from this peft adapter folder instead of a fresh init.
    #[arg(long)]
    pub init_adapter: Option<String>,
    /// Adapter init: default (peft's: A uniform, B = 0) or loftq (LoRA over an NF4 base: the base
    /// becomes LoftQ's Q and A, B the rank-r SVD of the quantization residual).
    #[arg(long)]
    pub init: Option<String>,
    /// LoftQ rounds of quantization + SVD (with --init loftq; default 1).
    #[arg(long)]
    pub loftq_iters: Option<usize>,
    /// Optimizer steps (overrides --epochs).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Passes over the data when --steps is not given.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// constant, linear or cosine.
    #[arg(long)]
    pub lr_scheduler: Option<String>,
    /// Linear warm-up steps.
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    /// Clip the global gradient norm (0 disables).
    #[arg(long)]
    pub max_grad_norm: Option<f64>,
    /// AdamW decoupled weight decay.
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Examples per micro-batch.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step.
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Truncate examples to this many tokens.
    #[arg(long)]
    pub max_seq_len: Option<usize>,
    /// Pack several examples into each row.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub packing: Option<bool>,
    /// Keep the data order (no seeded shuffling).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub no_shuffle: Option<bool>,
    /// Fraction of the data held out for eval loss.
    #[arg(long)]
    pub eval_split: Option<f64>,
    /// Evaluate every N steps (0: only at the end).
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Seed of init, shuffling, dropout.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Write a checkpoint every N steps (0: only at the end).
    #[arg(long)]
    pub save_every: Option<usize>,
    /// Continue from OUT/checkpoint if present.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub resume: Option<bool>,
    /// What to do with a malformed data line: stop or skip.
    #[arg(long)]
    pub on_bad_line: Option<String>,
    /// auto, wgpu or cpu.
    #[arg(long)]
    pub backend: Option<String>,
    /// LoRA-PAR: System-2 data (RL prompts with `answer`); with it, every record of --data is
    /// System 1 and every record here System 2.
    #[arg(long)]
    pub rl_data: Option<String>,
    /// LoRA-PAR split of --data: auto (labels when every record has `system`, else heuristic),
    /// label, vote or heuristic.
    #[arg(long)]
    pub par_split: Option<String>,
    /// LoRA-PAR voting: number of voters, odd (default 3; voter i uses model i mod M, template i mod T).
    #[arg(long)]
    pub par_voters: Option<usize>,
    /// LoRA-PAR voting: comma-separated voter models (HF folders or .gguf; `base` = the base model,
    /// the default).
    #[arg(long)]
    pub voter: Option<String>,
    /// LoRA-PAR voting: role-play template file (templates separated by `---` lines; {task}, {answer}).
    #[arg(long)]
    pub par_vote_template: Option<String>,
    /// LoRA-PAR importance: taylor (default) or grad-fisher.
    #[arg(long)]
    pub par_importance: Option<String>,
    /// LoRA-PAR: examples per system for the importance pass (default 100).
    #[arg(long)]
    pub par_samples: Option<usize>,
    /// LoRA-PAR: cumulative importance share each system keeps (default 0.9).
    #[arg(long)]
    pub par_theta: Option<f64>,
    /// LoRA-PAR: fraction of shared elements stage 1 updates (default 1).
    #[arg(long)]
    pub par_alpha: Option<f64>,
    /// LoRA-PAR: fraction of shared elements stage 2 updates (default 1).
    #[arg(long)]
    pub par_beta: Option<f64>,
    /// LoRA-PAR: std of the N(0, std²) init of A and B for the importance pass (default 0.01).
    #[arg(long)]
    pub par_init_std: Option<f64>,
    /// LoRA-PAR: SFT steps of stage 1 (default --steps, else one epoch of System-1 data).
    #[arg(long)]
    pub sft_steps: Option<usize>,
    /// LoRA-PAR: GRPO steps of stage 2 (default --steps, else one pass over the System-2 prompts).
    #[arg(long)]
    pub rl_steps: Option<usize>,
    /// LoRA-PAR: stage-1 learning rate (default --lr, else 2e-4).
    #[arg(long)]
    pub sft_lr: Option<f64>,
    /// LoRA-PAR: stage-2 learning rate (default 5e-6).
    #[arg(long)]
    pub rl_lr: Option<f64>,
    /// GRPO: completions per prompt (default 8).
    #[arg(long)]
    pub grpo_group: Option<usize>,
    /// GRPO: prompts per optimizer step (default 1).
    #[arg(long)]
    pub grpo_prompts: Option<usize>,
    /// GRPO: KL coefficient to the stage-1 policy (default 0: measured and logged, not penalised).
    #[arg(long)]
    pub grpo_kl: Option<f64>,
    /// GRPO: clip range of the policy ratio (default 0.2).
    #[arg(long)]
    pub grpo_clip: Option<f64>,
    /// GRPO: sampling temperature (default 1.0).
    #[arg(long)]
    pub grpo_temperature: Option<f32>,
    /// GRPO: longest completion in tokens (default 64).
    #[arg(long)]
    pub grpo_max_new_tokens: Option<usize>,
    /// GRPO reward: number (final number equals the reference's), exact, or regex:PATTERN.
    #[arg(long)]
    pub grpo_reward: Option<String>,
    /// LoRA-PAR: System-2 items held out for greedy accuracy before and after stage 2 (default 0).
    #[arg(long)]
    pub rl_eval: Option<usize>,
}

impl RunConfig {
    /// `self` with every field that `over` sets replaced (flags over the run file). Both sides are
    /// validated first; the merge goes through JSON, which holds every valid value of a field
    /// (TOML integers stop at `i64::MAX`; JSON has no NaN, which validation has refused).
    pub fn overlay(&self, over: &RunConfig) -> Result<RunConfig, String> {
        self.validate()?;
        over.validate()?;
        let table = |c: &RunConfig| match serde_json::to_value(c) {
            Ok(serde_json::Value::Object(m)) => Ok(m),
            other => Err(format!("cannot merge the run settings: {other:?}")),
        };
        let mut merged = table(self)?;
        merged.extend(table(over)?.into_iter().filter(|(_, v)| !v.is_null()));
        serde_json::from_value(serde_json::Value::Object(merged))
            .map_err(|e| format!("cannot merge the run settings: {e}"))
    }

    /// Check every numeric setting against its range before anything is allocated or written:
    /// counts that size buffers are bounded, fractions are fractions, rates are finite. The first
    /// problem names the setting (as its flag) and the allowed range.
    pub fn validate(&self) -> Result<(), String> {
        let flag = |key: &str| format!("`{key}` (--{})", key.replace('_', "-"));
        for (key, v, lo, hi) in [
            ("r", self.r, 1, MAX_RANK),
            ("oft_block_size", self.oft_block_size, 1, MAX_BLOCK),
            (
                "cayley_neumann_terms",
                self.cayley_neumann_terms,
                2,
                MAX_NEUMANN_TERMS,
            ),
            ("loftq_iters", self.loftq_iters, 1, 100),
            ("steps", self.steps, 0, MAX_STEPS),
            ("epochs", self.epochs, 1, MAX_STEPS),
            ("warmup_steps", self.warmup_steps, 0, MAX_STEPS),
            ("batch_size", self.batch_size, 1, MAX_ROWS),
            ("grad_accum", self.grad_accum, 1, MAX_ROWS),
            ("max_seq_len", self.max_seq_len, 2, MAX_SEQ_LEN),
            ("eval_every", self.eval_every, 0, MAX_STEPS),
            ("save_every", self.save_every, 0, MAX_STEPS),
            ("par_voters", self.par_voters, 1, 99),
            ("par_samples", self.par_samples, 1, MAX_ROWS),
            ("sft_steps", self.sft_steps, 0, MAX_STEPS),
            ("rl_steps", self.rl_steps, 0, MAX_STEPS),
            ("grpo_group", self.grpo_group, 2, 256),
            ("grpo_prompts", self.grpo_prompts, 1, MAX_ROWS),
            (
                "grpo_max_new_tokens",
                self.grpo_max_new_tokens,
                1,
                MAX_SEQ_LEN,
            ),
            ("rl_eval", self.rl_eval, 0, MAX_ROWS),
        ] {
            if let Some(v) = v
                && !(lo..=hi).contains(&v)
            {
                return Err(format!(
                    "{} {v} is out of range (allowed {lo}..={hi})",
                    flag(key)
                ));
            }
        }
        if let Some(v) = self.par_voters.filter(|v| v % 2 == 0) {
            return Err(format!(
                "{} {v} must be odd so a majority always exists",
                flag("par_voters")
            ));
        }
        let positive = |x: f64| x.is_finite() && x > 0.0;
        let non_negative = |x: f64| x.is_finite() && x >= 0.0;
        let fraction = |x: f64| (0.0..=1.0).contains(&x);
        let below_one = |x: f64| (0.0..1.0).contains(&x);
        type Check<'a> = (&'a str, Option<f64>, fn(f64) -> bool, &'a str);
        let checks: [Check; 15] = [
            ("lr", self.lr, positive, "a positive number"),
            ("sft_lr", self.sft_lr, positive, "a positive number"),
            ("rl_lr", self.rl_lr, positive, "a positive number"),
            ("lora_alpha", self.lora_alpha, positive, "a positive number"),
            ("eps", self.eps, positive, "a positive number"),
            (
                "par_init_std",
                self.par_init_std,
                positive,
                "a positive number",
            ),
            ("grpo_clip", self.grpo_clip, positive, "a positive number"),
            ("lora_dropout", self.lora_dropout, below_one, "in [0, 1)"),
            ("eval_split", self.eval_split, below_one, "in [0, 1)"),
            (
                "max_grad_norm",
                self.max_grad_norm,
                non_negative,
                "0 (off) or positive",
            ),
            (
                "weight_decay",
                self.weight_decay,
                non_negative,
                "0 or positive",
            ),
            ("grpo_kl", self.grpo_kl, non_negative, "0 or positive"),
            (
                "par_theta",
                self.par_theta,
                |x| x > 0.0 && x <= 1.0,
                "in (0, 1]",
            ),
            ("par_alpha", self.par_alpha, fraction, "in [0, 1]"),
            ("par_beta", self.par_beta, fraction, "in [0, 1]"),
        ];
        for (key, v, ok, range) in checks {
            if let Some(v) = v
                && !ok(v)
            {
                return Err(format!("{} {v} must be {range}", flag(key)));
            }
        }
        if let Some(t) = self.grpo_temperature
            && !non_negative(f64::from(t))
        {
            return Err(format!(
                "{} {t} must be 0 (greedy) or positive",
                flag("grpo_temperature")
            ));
        }
        Ok(())
    }

    /// Parse a TOML run file; unknown keys are errors naming them.
    pub fn from_toml(text: &str) -> Result<RunConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim().replace('\n', " "))
    }

    /// The TOML text of this run (what "Save run…" writes).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// A required path setting.
    pub fn require(&self, v: &Option<String>, key: &str) -> Result<String, String> {
        v.clone().ok_or_else(|| {
            format!(
                "`{key}` is required (flag --{} or run-file key {key})",
                key.replace('_', "-")
            )
        })
    }

    /// Adapter settings, with peft's defaults (LoRA r 8, alpha 16, all seven projections; OFT b 32,
    /// 5 Neumann terms).
    pub fn adapter(&self) -> Result<AdapterConfig, String> {
        let targets: Vec<String> = match &self.target_modules {
            Some(t) => t
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            None => TARGET_MODULES.iter().map(|s| s.to_string()).collect(),
        };
        let method = match self.method.as_deref().unwrap_or("lora") {
            "lora" | "qlora" | "lora-par" | "qlora-par" => Method::Lora(LoraConfig {
                r: self.r.unwrap_or(8),
                lora_alpha: self.lora_alpha.unwrap_or(16.0),
                lora_dropout: self.lora_dropout.unwrap_or(0.0),
                use_rslora: self.use_rslora.unwrap_or(false),
            }),
            "oft" | "qoft" => Method::Oft(OftConfig {
                oft_block_size: self.oft_block_size.unwrap_or(32),
                r: 0,
                use_cayley_neumann: !self.exact_cayley.unwrap_or(false),
                num_cayley_neumann_terms: self.cayley_neumann_terms.unwrap_or(5),
                coft: self.coft.unwrap_or(false),
                eps: self.eps.unwrap_or(6e-5),
                block_share: self.block_share.unwrap_or(false),
                module_dropout: 0.0,
                weight_centric: self.oft_v1.unwrap_or(false),
            }),
            other => {
                return Err(format!(
                    "unknown method `{other}` (lora, oft, qlora, qoft, lora-par, qlora-par)"
                ));
            }
        };
        let cfg = AdapterConfig {
            method,
            target_modules: targets,
        };
        cfg.validate().map_err(|e| e.to_string())?;
        Ok(cfg)
    }

    /// The `backend` setting (`auto` when unset).
    pub fn backend_choice(&self) -> Result<crate::backend::BackendChoice, String> {
        self.backend.as_deref().unwrap_or("auto").parse()
    }

    /// How to quantize the base on load: `--quantize`, or NF4 for the q-methods.
    pub fn base_quantization(&self) -> Option<String> {
        let q_method = matches!(self.method.as_deref(), Some("qlora" | "qoft" | "qlora-par"));
        self.quantize
            .clone()
            .or_else(|| q_method.then(|| "nf4".to_string()))
    }

    /// LoftQ rounds when `init` is `loftq` (`None` for peft's default init), checked against the
    /// other settings: LoftQ needs a LoRA method, a fresh adapter and an NF4 base.
    pub fn loftq_iters(&self) -> Result<Option<usize>, String> {
        match self.init.as_deref().unwrap_or("default") {
            "default" => match self.loftq_iters {
                Some(_) => {
                    Err("loftq_iters is set but init is not loftq (add --init loftq)".into())
                }
                None => Ok(None),
            },
            "loftq" => {
                let method = self.method.as_deref().unwrap_or("lora");
                if !matches!(method, "lora" | "qlora") {
                    return Err(format!(
                        "init loftq initialises LoRA over an NF4 base: use --method qlora (or lora), not `{method}`"
                    ));
                }
                if self.init_adapter.is_some() {
                    return Err("init loftq and init_adapter exclude each other".into());
                }
                if let Some(q) = self.quantize.as_deref().filter(|q| *q != "nf4") {
                    return Err(format!(
                        "init loftq quantizes the base to nf4, not `{q}` (drop --quantize)"
                    ));
                }
                match self.loftq_iters.unwrap_or(1) {
                    0 => Err("loftq_iters must be at least 1".into()),
                    n => Ok(Some(n)),
                }
            }
            other => Err(format!("unknown init `{other}` (default, loftq)")),
        }
    }

    /// Optimisation settings for `total_steps` steps.
    pub fn train(&self, total_steps: usize) -> Result<TrainConfig, String> {
        let schedule: Schedule = self.lr_scheduler.as_deref().unwrap_or("constant").parse()?;
        let lr = self.lr.unwrap_or(2e-4);
        if !(lr.is_finite() && lr > 0.0) {
            return Err(format!("lr {lr} must be positive"));
        }
        Ok(TrainConfig {
            lr,
            schedule,
            warmup_steps: self.warmup_steps.unwrap_or(0),
            total_steps,
            max_grad_norm: self.max_grad_norm.unwrap_or(1.0),
            adamw: AdamWConfig {
                weight_decay: self.weight_decay.unwrap_or(0.0),
                ..Default::default()
            },
            seed: self.seed.unwrap_or(42),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_unknown_keys_fail() {
        let file = RunConfig::from_toml("model = \"m\"\nlr = 0.001\nr = 4\n").unwrap();
        let flags = RunConfig {
            lr: Some(0.5),
            ..Default::default()
        };
        let run = file.overlay(&flags).unwrap();
        assert_eq!(
            (run.model.as_deref(), run.lr, run.r),
            (Some("m"), Some(0.5), Some(4))
        );
        assert!(
            RunConfig::from_toml("learning_rate = 1")
                .unwrap_err()
                .contains("learning_rate")
        );
        assert_eq!(RunConfig::from_toml(&run.to_toml()).unwrap(), run);
    }

    #[test]
    fn overlay_keeps_every_flag_or_fails() {
        let file = RunConfig::from_toml("out = \"a\"\nsteps = 5\n").unwrap();
        let flags = RunConfig {
            out: Some("b".into()),
            save_every: Some(MAX_STEPS),
            ..Default::default()
        };
        let run = file.overlay(&flags).unwrap();
        assert_eq!(
            (run.out.as_deref(), run.steps, run.save_every),
            (Some("b"), Some(5), Some(MAX_STEPS))
        );
        let huge = RunConfig {
            save_every: Some(usize::MAX),
            ..flags.clone()
        };
        assert!(file.overlay(&huge).unwrap_err().contains("save_every"));
        let nan = RunConfig {
            eval_split: Some(f64::NAN),
            ..flags
        };
        assert!(file.overlay(&nan).unwrap_err().contains("eval_split"));
    }

    #[test]
    fn bad_settings_are_explained() {
        let c = RunConfig {
            target_modules: Some("q_proj,qkv".into()),
            ..Default::default()
        };
        assert!(c.adapter().unwrap_err().contains("qkv"));
        let c = RunConfig {
            method: Some("dora".into()),
            ..Default::default()
        };
        assert!(c.adapter().unwrap_err().contains("dora"));
    }

    #[test]
    fn loftq_settings_are_checked() {
        let loftq = |f: fn(&mut RunConfig)| {
            let mut c = RunConfig {
                method: Some("qlora".into()),
                init: Some("loftq".into()),
                ..Default::default()
            };
            f(&mut c);
            c.loftq_iters()
        };
        assert_eq!(loftq(|_| ()), Ok(Some(1)));
        assert_eq!(loftq(|c| c.loftq_iters = Some(5)), Ok(Some(5)));
        assert_eq!(loftq(|c| c.method = Some("lora".into())), Ok(Some(1)));
        assert!(
            loftq(|c| c.loftq_iters = Some(0))
                .unwrap_err()
                .contains("at least 1")
        );
        assert!(
            loftq(|c| c.method = Some("qoft".into()))
                .unwrap_err()
                .contains("qoft")
        );
        assert!(
            loftq(|c| c.init_adapter = Some("x".into()))
                .unwrap_err()
                .contains("init_adapter")
        );
        assert!(
            loftq(|c| c.init = Some("pissa".into()))
                .unwrap_err()
                .contains("pissa")
        );
        assert!(loftq(|c| c.init = None).is_ok_and(|x| x.is_none()));
        let c = RunConfig {
            loftq_iters: Some(2),
            ..Default::default()
        };
        assert!(c.loftq_iters().unwrap_err().contains("--init loftq"));
        let c = RunConfig::from_toml("init = \"loftq\"\nloftq_iters = 3\nmethod = \"qlora\"\n")
            .unwrap();
        assert_eq!(c.loftq_iters(), Ok(Some(3)));
    }
}
