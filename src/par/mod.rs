//! LoRA-PAR (dual-system LoRA partitioning): split the data into System 1 (fast, direct answers)
//! and System 2 (multi-step reasoning), score every LoRA element's importance per system from
//! per-sample gradients, partition the elements, then train in two stages: SFT on System-1 data
//! over the System-1 elements, GRPO on System-2 data over the System-2 elements.
//!
//! - [`classify`]: labels from the data, role-play voting by models, or a transparent heuristic;
//! - [`importance`]: per-sample gradients → Taylor or gradient·Fisher scores;
//! - [`partition`]: the top-θ sets per system, element codes, the report;
//! - [`grpo`]: rewards, group-normalised advantages and the clipped GRPO loss;
//! - [`stages`]: the SFT and RL stage loops over a masked [`Trainer`](crate::train::trainer::Trainer).
//!
//! Like the rest of the core, nothing here touches the file system or blocks: the front end reads
//! and writes files and drives the async functions.

pub mod classify;
pub mod grpo;
pub mod importance;
pub mod partition;
pub mod stages;

use crate::model::ModelError;
use crate::train::trainer::TrainError;

/// Which of the two systems an example belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum System {
    /// Fast, direct answers (SFT stage).
    S1,
    /// Multi-step reasoning (RL stage).
    S2,
}

impl System {
    /// 1 or 2, as written in data files.
    pub fn number(self) -> u8 {
        match self {
            System::S1 => 1,
            System::S2 => 2,
        }
    }
}

/// LoRA-PAR failures.
#[derive(Debug, thiserror::Error)]
pub enum ParError {
    /// A data record that does not fit (file and line named).
    #[error("{file}:{line}: {msg}")]
    Data {
        /// Data file.
        file: String,
        /// 1-based line or record number.
        line: usize,
        /// What is wrong.
        msg: String,
    },
    /// A setting out of range or inconsistent.
    #[error("{0}")]
    Config(String),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A training step failed.
    #[error(transparent)]
    Train(#[from] TrainError),
}

/// The LoRA-PAR settings of a run, with their defaults (the paper's where it gives them).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ParSettings {
    /// `auto`, `label`, `vote` or `heuristic`.
    pub split: String,
    /// Voters (odd).
    pub voters: usize,
    /// Importance formula.
    pub importance: importance::ImportanceKind,
    /// Examples per system for the importance pass.
    pub samples: usize,
    /// Cumulative importance share kept per system.
    pub theta: f64,
    /// Shared fraction updated in stage 1.
    pub alpha: f64,
    /// Shared fraction updated in stage 2.
    pub beta: f64,
    /// Std of the importance-pass init of A and B.
    pub init_std: f64,
    /// Stage-1 steps (`None`: one epoch).
    pub sft_steps: Option<usize>,
    /// Stage-2 steps (`None`: one pass over the prompts).
    pub rl_steps: Option<usize>,
    /// Stage-1 learning rate.
    pub sft_lr: f64,
    /// Stage-2 learning rate.
    pub rl_lr: f64,
    /// GRPO settings.
    pub grpo: grpo::GrpoConfig,
    /// Reward spec (`number`, `exact`, `regex:...`).
    pub reward: String,
    /// Held-out System-2 items for the accuracy check.
    pub rl_eval: usize,
}

impl ParSettings {
    /// Resolve and check the LoRA-PAR keys of a run.
    pub fn from_run(run: &crate::train::run::RunConfig) -> Result<Self, String> {
        let split = run.par_split.clone().unwrap_or_else(|| "auto".into());
        if !["auto", "label", "vote", "heuristic"].contains(&split.as_str()) {
            return Err(format!(
                "unknown par_split `{split}` (auto, label, vote, heuristic)"
            ));
        }
        run.validate()?;
        let reward = run.grpo_reward.clone().unwrap_or_else(|| "number".into());
        grpo::Reward::parse(&reward)?;
        Ok(ParSettings {
            split,
            voters: run.par_voters.unwrap_or(3),
            importance: run.par_importance.as_deref().unwrap_or("taylor").parse()?,
            samples: run.par_samples.unwrap_or(100),
            theta: run.par_theta.unwrap_or(0.9),
            alpha: run.par_alpha.unwrap_or(1.0),
            beta: run.par_beta.unwrap_or(1.0),
            init_std: run.par_init_std.unwrap_or(0.01),
            sft_steps: run.sft_steps.or(run.steps),
            rl_steps: run.rl_steps.or(run.steps),
            sft_lr: run.sft_lr.or(run.lr).unwrap_or(2e-4),
            rl_lr: run.rl_lr.unwrap_or(5e-6),
            grpo: grpo::GrpoConfig {
                group: run.grpo_group.unwrap_or(8),
                prompts_per_step: run.grpo_prompts.unwrap_or(1),
                clip_eps: run.grpo_clip.unwrap_or(0.2),
                kl_beta: run.grpo_kl.unwrap_or(0.0),
                temperature: run.grpo_temperature.unwrap_or(1.0),
                top_p: 1.0,
                max_new_tokens: run.grpo_max_new_tokens.unwrap_or(64),
            },
            reward,
            rl_eval: run.rl_eval.unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::run::RunConfig;

    #[test]
    fn settings_defaults_and_errors() {
        let run = RunConfig {
            method: Some("qlora-par".into()),
            steps: Some(7),
            ..Default::default()
        };
        let s = ParSettings::from_run(&run).unwrap();
        assert_eq!((s.sft_steps, s.rl_steps), (Some(7), Some(7)));
        assert_eq!(
            (s.sft_lr, s.rl_lr, s.theta, s.samples),
            (2e-4, 5e-6, 0.9, 100)
        );
        assert_eq!((s.grpo.group, s.voters, s.init_std), (8, 3, 0.01));
        assert_eq!(run.base_quantization().as_deref(), Some("nf4"));
        assert!(run.adapter().is_ok());
        let bad = |f: fn(&mut RunConfig)| {
            let mut r = RunConfig::default();
            f(&mut r);
            ParSettings::from_run(&r).unwrap_err()
        };
        assert!(bad(|r| r.par_voters = Some(4)).contains("odd"));
        assert!(bad(|r| r.par_theta = Some(0.0)).contains("par_theta"));
        assert!(bad(|r| r.par_alpha = Some(1.5)).contains("par_alpha"));
        assert!(bad(|r| r.grpo_group = Some(1)).contains("grpo_group"));
        assert!(bad(|r| r.grpo_reward = Some("fuzzy".into())).contains("fuzzy"));
        assert!(bad(|r| r.par_split = Some("coin".into())).contains("coin"));
        assert!(bad(|r| r.par_importance = Some("snip".into())).contains("snip"));
    }
}
