//! The two LoRA-PAR stages over one [`Trainer`]: stage 1 SFT on System-1 examples, stage 2 GRPO
//! on System-2 prompts, each with its own element mask, learning rate, step count and a fresh
//! AdamW state. Elements outside a stage's mask get no gradient, no update and no decay, so they
//! are bit-identical before and after the stage. Front ends pass a callback per step (metrics,
//! progress); nothing here touches files.

use super::grpo::{GrpoConfig, Reward, RlItem, RlMetrics, grpo_step};
use super::{ParError, System};
use crate::adapters;
use crate::adapters::mask::float_masks;
use crate::io::chat::{ChatMessage, ChatTemplate};
use crate::train::data::{Example, epoch_order, make_batch};
use crate::train::optim::AdamW;
use crate::train::trainer::{StepMetrics, Trainer};
use burn::tensor::Tensor;
use serde_json::Value;
use std::ops::ControlFlow;

/// Which stage, for logs and metrics.
pub fn stage_name(system: System) -> &'static str {
    match system {
        System::S1 => "sft",
        System::S2 => "rl",
    }
}

/// Point `trainer` at a new stage: the element mask (`(key, shape, flags)` per adapter tensor,
/// in parameter order), the stage's learning rate and step count, and a fresh optimizer.
pub fn begin_stage(
    trainer: &mut Trainer,
    active: &[(String, [usize; 2], Vec<bool>)],
    lr: f64,
    steps: usize,
) -> Result<(), ParError> {
    let named = adapters::named_parameters(&trainer.model);
    if named.len() != active.len()
        || named
            .iter()
            .zip(active)
            .any(|((k, t), (mk, s, _))| k != mk || t.dims() != *s)
    {
        return Err(ParError::Config(
            "the element masks do not match the adapter tensors".into(),
        ));
    }
    trainer.masks = Some(float_masks(active, &trainer.model.device()));
    trainer.config.lr = lr;
    trainer.config.total_steps = steps;
    trainer.optimizer = AdamW::new(trainer.config.adamw);
    Ok(())
}

/// The adapter tensors as plain tensors (the reference policy of stage 2, or a before/after
/// snapshot).
pub fn snapshot(trainer: &Trainer) -> Vec<Tensor<2>> {
    adapters::named_parameters(&trainer.model)
        .into_iter()
        .map(|(_, t)| t.inner())
        .collect()
}

/// How a stage batches its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Examples per micro-batch (SFT) or prompts per step (RL).
    pub batch_size: usize,
    /// Micro-batches per step (SFT).
    pub grad_accum: usize,
    /// Seeded shuffling per epoch.
    pub shuffle: bool,
    /// Seed of the data order.
    pub seed: u64,
}

/// Stage 1: `steps` SFT steps on `examples` (after [`begin_stage`]), `on_step` after each; a
/// `Break` from `on_step` ends the stage early (the front end's stop button).
pub async fn sft_stage(
    trainer: &mut Trainer,
    examples: &[Example],
    steps: usize,
    b: Batching,
    pad: u32,
    mut on_step: impl FnMut(&StepMetrics, &Trainer) -> Result<ControlFlow<()>, ParError>,
) -> Result<(), ParError> {
    if examples.is_empty() && steps > 0 {
        return Err(ParError::Config("stage 1 has no System-1 examples".into()));
    }
    let (bs, accum) = (b.batch_size.max(1), b.grad_accum.max(1));
    let n = examples.len();
    let mut order = (usize::MAX, Vec::new());
    for s in 0..steps {
        let micro: Vec<_> = (0..accum)
            .map(|k| {
                let rows: Vec<&Example> = (0..bs)
                    .map(|j| {
                        let g = (s * accum + k) * bs + j;
                        if order.0 != g / n {
                            order = (g / n, epoch_order(n, (g / n) as u64, b.seed, b.shuffle));
                        }
                        &examples[order.1[g % n]]
                    })
                    .collect();
                make_batch(&rows, pad)
            })
            .collect();
        let m = trainer.step(&micro).await?;
        if on_step(&m, trainer)?.is_break() {
            break;
        }
    }
    Ok(())
}

/// Stage 2: `steps` GRPO steps on `items` (after [`begin_stage`]); the KL reference is the
/// policy at the start of the stage. A `Break` from `on_step` ends the stage early.
#[allow(clippy::too_many_arguments)]
pub async fn rl_stage(
    trainer: &mut Trainer,
    items: &[RlItem],
    steps: usize,
    cfg: &GrpoConfig,
    reward: &Reward,
    decode: &dyn Fn(&[u32]) -> String,
    b: Batching,
    mut on_step: impl FnMut(&RlMetrics, &Trainer) -> Result<ControlFlow<()>, ParError>,
) -> Result<(), ParError> {
    if items.is_empty() && steps > 0 {
        return Err(ParError::Config("stage 2 has no System-2 prompts".into()));
    }
    let reference = snapshot(trainer);
    let per = cfg.prompts_per_step.max(1);
    let n = items.len();
    let mut order = (usize::MAX, Vec::new());
    for s in 0..steps {
        let picked: Vec<&RlItem> = (0..per)
            .map(|j| {
                let g = s * per + j;
                if order.0 != g / n {
                    order = (g / n, epoch_order(n, (g / n) as u64, b.seed, b.shuffle));
                }
                &items[order.1[g % n]]
            })
            .collect();
        let m = grpo_step(trainer, &picked, cfg, reward, &reference, decode, b.seed).await?;
        if on_step(&m, trainer)?.is_break() {
            break;
        }
    }
    Ok(())
}

/// A System-2 record as an RL prompt: its task text as a user turn (chat template with the
/// generation prompt, or the plain text) and its reference answer; prompts are cut to their last
/// `max_prompt_len` tokens.
pub fn rl_item(
    v: &Value,
    tokenizer: &tokenizers::Tokenizer,
    chat_template: Option<&ChatTemplate>,
    max_prompt_len: usize,
) -> Result<RlItem, String> {
    let task = super::classify::prompt_text(v).ok_or(
        "a System-2 record needs a prompt (`prompt`, `question`, `instruction`, `messages` or `text`)",
    )?;
    let reference = super::classify::answer_text(v).ok_or(
        "a System-2 record needs a reference answer for the reward (`answer`, `output` or `completion`)",
    )?;
    let text = match chat_template {
        Some(ct) => ct
            .render(
                &[ChatMessage {
                    role: "user".into(),
                    content: task,
                }],
                true,
            )
            .map_err(|e| e.to_string())?,
        None => format!("{task}\n"),
    };
    let mut prompt = tokenizer
        .encode(text.as_str(), chat_template.is_none())
        .map_err(|e| format!("tokenizer: {e}"))?
        .get_ids()
        .to_vec();
    if prompt.is_empty() {
        return Err("the prompt tokenizes to nothing".into());
    }
    if prompt.len() > max_prompt_len {
        prompt.drain(..prompt.len() - max_prompt_len);
    }
    Ok(RlItem { prompt, reference })
}
