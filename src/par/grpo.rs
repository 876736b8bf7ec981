//! GRPO for LoRA-PAR's stage 2: sample a group of completions per prompt with the KV cache,
//! reward each with a verifiable checker, normalise the rewards within the group, and minimise
//! the clipped policy-ratio objective with an optional KL penalty to the stage-1 policy, averaged
//! over all completion tokens of the step (token-level mean).
//!
//! Formulas (TRL's `GRPOTrainer`, one policy update per generation batch, `loss_type` token-level):
//! - advantage `A_i = (r_i − mean_g r) / (std_g r + 1e-4)`, `std` unbiased (torch `std()`);
//! - ratio `ρ_t = exp(logp_t − logp_old_t)`, per-token loss
//!   `−min(ρ_t·A, clip(ρ_t, 1−ε, 1+ε)·A) + β·(exp(ref_t − logp_t) − (ref_t − logp_t) − 1)`;
//! - loss = sum over completion tokens / number of completion tokens.

use super::ParError;
use crate::adapters;
use crate::model::decoder::Decoder;
use crate::model::generate::{SamplingConfig, generate_batch};
use crate::model::read_f32;
use crate::train::trainer::{TrainError, Trainer};
use burn::tensor::{Int, Tensor, TensorData, activation::log_softmax};
use serde::Serialize;

/// A verifiable reward: 1 when the completion is judged correct, else 0.
#[derive(Debug)]
pub enum Reward {
    /// The last number in the completion equals the reference's first number (default).
    Number,
    /// The trimmed completion equals the trimmed reference.
    Exact,
    /// The last match of the pattern in the completion equals the reference (numerically when
    /// both are numbers, else as trimmed text).
    Regex(tokenizers::utils::SysRegex, String),
}

impl Reward {
    /// `number`, `exact` or `regex:PATTERN`.
    pub fn parse(spec: &str) -> Result<Reward, String> {
        match spec {
            "number" => Ok(Reward::Number),
            "exact" => Ok(Reward::Exact),
            _ => match spec.strip_prefix("regex:") {
                Some(p) => tokenizers::utils::SysRegex::new(p)
                    .map(|r| Reward::Regex(r, p.to_string()))
                    .map_err(|e| format!("reward regex `{p}`: {e}")),
                None => Err(format!(
                    "unknown reward `{spec}` (number, exact, regex:PATTERN)"
                )),
            },
        }
    }

    /// 1.0 when `completion` is correct for `reference`, else 0.0.
    pub fn score(&self, completion: &str, reference: &str) -> f64 {
        let ok = match self {
            Reward::Number => match (last_number(completion), first_number(reference)) {
                (Some(a), Some((_, b))) => numbers_equal(a, b),
                _ => false,
            },
            Reward::Exact => completion.trim() == reference.trim(),
            Reward::Regex(re, _) => match re.find_iter(completion).last() {
                Some((s, e)) => {
                    let found = completion[s..e].trim();
                    match (parse_number(found), first_number(reference)) {
                        (Some(a), Some((_, b))) => numbers_equal(a, b),
                        _ => found == reference.trim(),
                    }
                }
                None => false,
            },
        };
        if ok { 1.0 } else { 0.0 }
    }
}

fn numbers_equal(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * b.abs().max(1.0)
}

/// A number token: optional sign, digits with `,` thousands separators, optional decimals, an
/// optional leading `$` and trailing `%`.
pub fn parse_number(tok: &str) -> Option<f64> {
    let t = tok
        .trim()
        .trim_start_matches('$')
        .trim_end_matches(['.', '%', ','])
        .replace(',', "");
    if t.is_empty() || !t.chars().any(|c| c.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

/// Number spans of `s` as (byte offset, value).
fn numbers(s: &str) -> Vec<(usize, f64)> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let start_digit = b[i].is_ascii_digit()
            || (b[i] == b'-'
                && i + 1 < b.len()
                && b[i + 1].is_ascii_digit()
                && (i == 0 || !b[i - 1].is_ascii_alphanumeric()));
        if !start_digit {
            i += 1;
            continue;
        }
        let start = i;
        i += 1;
        while i < b.len()
            && (b[i].is_ascii_digit()
                || ((b[i] == b'.' || b[i] == b',') && i + 1 < b.len() && b[i + 1].is_ascii_digit()))
        {
            i += 1;
        }
        if let Some(v) = parse_number(&s[start..i]) {
            out.push((start, v));
        }
    }
    out
}

/// The first number in `s` and its byte offset (`(0, 9.0)` for "9 apples").
pub fn first_number(s: &str) -> Option<(usize, f64)> {
    numbers(s.trim_start()).into_iter().next()
}

/// The last number in `s`.
pub fn last_number(s: &str) -> Option<f64> {
    numbers(s).last().map(|x| x.1)
}

/// Group-normalised advantages: rewards in consecutive groups of `group`,
/// `(r − mean) / (std + 1e-4)` with the unbiased std (0 for a group of one).
pub fn group_advantages(rewards: &[f64], group: usize) -> Vec<f64> {
    rewards
        .chunks(group.max(1))
        .flat_map(|g| {
            let n = g.len() as f64;
            let mean = g.iter().sum::<f64>() / n;
            let var = if g.len() > 1 {
                g.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0)
            } else {
                0.0
            };
            let std = var.sqrt();
            g.iter()
                .map(move |r| (r - mean) / (std + 1e-4))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The clipped GRPO objective over `[N, T]` per-token log-probabilities (`logp` carries the
/// gradient), with `mask` 1 on completion tokens. Returns the token-level mean loss and the
/// per-token sum of the KL estimate (0 without `ref_logp`).
#[allow(clippy::too_many_arguments)]
pub fn grpo_loss(
    logp: Tensor<2>,
    old_logp: Tensor<2>,
    ref_logp: Option<Tensor<2>>,
    mask: Tensor<2>,
    advantages: Tensor<2>,
    clip_eps: f64,
    beta: f64,
    total_tokens: f64,
) -> (Tensor<1>, Tensor<1>) {
    let ratio = (logp.clone() - old_logp).exp();
    let unclipped = ratio.clone() * advantages.clone();
    let clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * advantages;
    let mut per_token = unclipped.min_pair(clipped).neg();
    let kl_sum = match ref_logp {
        Some(r) => {
            let d = r - logp;
            let kl = d.clone().exp() - d - 1.0;
            if beta != 0.0 {
                per_token = per_token + kl.clone().mul_scalar(beta);
            }
            (kl * mask.clone()).sum()
        }
        None => Tensor::zeros([1], &mask.device()),
    };
    let loss = (per_token * mask).sum().div_scalar(total_tokens);
    (loss, kl_sum)
}

/// GRPO settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GrpoConfig {
    /// Completions per prompt G.
    pub group: usize,
    /// Prompts per optimizer step.
    pub prompts_per_step: usize,
    /// Clip range ε of the policy ratio.
    pub clip_eps: f64,
    /// KL coefficient β (0: no penalty; the KL is still measured and logged).
    pub kl_beta: f64,
    /// Sampling temperature.
    pub temperature: f32,
    /// Nucleus threshold.
    pub top_p: f32,
    /// Longest completion.
    pub max_new_tokens: usize,
}

/// One RL prompt: its token ids (chat-rendered) and the reference answer.
#[derive(Debug, Clone, PartialEq)]
pub struct RlItem {
    /// Prompt ids.
    pub prompt: Vec<u32>,
    /// Reference answer text.
    pub reference: String,
}

/// What one GRPO step measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RlMetrics {
    /// 1-based optimizer step of the RL stage.
    pub step: u64,
    /// GRPO loss.
    pub loss: f64,
    /// Mean reward over the step's completions.
    pub reward_mean: f64,
    /// Reward std (population) over the step's completions.
    pub reward_std: f64,
    /// Fraction of completions with reward 1.
    pub accuracy: f64,
    /// Mean completion length in tokens (EOS included when generated).
    pub completion_len: f64,
    /// Mean per-token KL estimate to the reference (stage-1) policy.
    pub kl: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// The step's first completion, as text (for a look at what the policy writes).
    pub sample: String,
}

/// Per-token log-probabilities `[G, L]` of `completions` after the shared `prompt`, and the mask.
fn completion_logprobs(
    model: &Decoder,
    prompt: &[u32],
    completions: &[Vec<u32>],
    pad: u32,
) -> Result<(Tensor<2>, Tensor<2>), ParError> {
    let g = completions.len();
    let l = completions.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let p = prompt.len();
    let rows: Vec<Vec<u32>> = completions
        .iter()
        .map(|c| {
            let mut r = prompt.to_vec();
            r.extend(c);
            r.resize(p + l, pad);
            r
        })
        .collect();
    let logits = model.forward(&rows, None)?;
    let v = logits.dims()[2];
    let device = logits.device();
    let lp = log_softmax(logits.slice([0..g, p - 1..p - 1 + l, 0..v]), 2);
    let mut ids = Vec::with_capacity(g * l);
    let mut mask = Vec::with_capacity(g * l);
    for c in completions {
        for j in 0..l {
            ids.push(c.get(j).copied().unwrap_or(0) as i64);
            mask.push(if j < c.len() { 1.0f32 } else { 0.0 });
        }
    }
    let idx = Tensor::<3, Int>::from_data(TensorData::new(ids, [g, l, 1]), &device);
    let picked = lp.gather(2, idx).reshape([g, l]);
    let mask = Tensor::<2>::from_data(TensorData::new(mask, [g, l]), &device);
    Ok((picked, mask))
}

/// Most sequences generated in one batch: GRPO's groups of several prompts share a batch up
/// to this many rows (always at least one whole group).
pub const GRPO_BATCH_ROWS: usize = 32;

/// Items of a held-out accuracy evaluation decoded in one batch.
pub const EVAL_BATCH_ROWS: usize = 16;

/// Sampler seed of completion `k` of a group sampled with `seed` (the rule GRPO has always used,
/// so runs stay reproducible: each completion gets its own generator whatever the batching).
pub fn completion_seed(seed: u64, k: usize) -> u64 {
    seed.wrapping_mul(7919).wrapping_add(k as u64)
}

/// Sample `cfg.group` completions of `item` (EOS appended when generation stopped on it), in one
/// batch; completion `k` samples with [`completion_seed`]`(seed, k)`.
pub async fn sample_group(
    model: &Decoder,
    item: &RlItem,
    cfg: &GrpoConfig,
    seed: u64,
) -> Result<Vec<(Vec<u32>, bool)>, ParError> {
    Ok(sample_groups(model, &[item], cfg, &[seed]).await?.remove(0))
}

/// [`sample_group`] for several items at once (item `i` with seed `seeds[i]`): their groups are
/// decoded together in batches of up to [`GRPO_BATCH_ROWS`] rows, prompts of different lengths
/// left-padded. Each completion gets the tokens [`sample_group`] alone would give it.
pub async fn sample_groups(
    model: &Decoder,
    items: &[&RlItem],
    cfg: &GrpoConfig,
    seeds: &[u64],
) -> Result<Vec<Vec<(Vec<u32>, bool)>>, ParError> {
    let s = SamplingConfig {
        temperature: cfg.temperature,
        top_p: cfg.top_p,
        max_new_tokens: cfg.max_new_tokens,
        seed: 0,
    };
    let per_batch = (GRPO_BATCH_ROWS / cfg.group.max(1)).max(1);
    let mut out = Vec::with_capacity(items.len());
    for (chunk, chunk_seeds) in items.chunks(per_batch).zip(seeds.chunks(per_batch)) {
        let mut prompts = Vec::with_capacity(chunk.len() * cfg.group);
        let mut row_seeds = Vec::with_capacity(chunk.len() * cfg.group);
        for (item, &seed) in chunk.iter().zip(chunk_seeds) {
            for k in 0..cfg.group {
                prompts.push(item.prompt.clone());
                row_seeds.push(completion_seed(seed, k));
            }
        }
        let gens = generate_batch(model, &prompts, &s, Some(&row_seeds), |_, _| {}).await?;
        let mut gens = gens.into_iter();
        for _ in chunk {
            out.push(
                gens.by_ref()
                    .take(cfg.group)
                    .map(|g| (g.tokens, g.stopped_on_eos))
                    .collect(),
            );
        }
    }
    Ok(out)
}

/// One GRPO optimizer step over `items` (one group each). `reference` holds the stage-1 adapter
/// tensors (plain), the policy the KL is measured against; `decode` turns completion ids into
/// text for the reward.
#[allow(clippy::too_many_arguments)]
pub async fn grpo_step(
    trainer: &mut Trainer,
    items: &[&RlItem],
    cfg: &GrpoConfig,
    reward: &Reward,
    reference: &[Tensor<2>],
    decode: &dyn Fn(&[u32]) -> String,
    seed: u64,
) -> Result<RlMetrics, ParError> {
    let step = trainer.optimizer.step + 1;
    let eos = trainer.model.config.eos_token_ids.first().copied();
    let pad = eos.unwrap_or(0);
    adapters::for_each_adapter(&mut trainer.model, |a| {
        a.prepare();
        a.set_training(false);
    });
    for (_, t) in adapters::parameters_mut(&mut trainer.model) {
        *t = Tensor::from_inner(t.clone().inner());
    }
    // Sample and reward.
    let mut groups = Vec::with_capacity(items.len());
    let mut rewards = Vec::new();
    let mut lens = Vec::new();
    let mut sample = None;
    // Sampling and the reference pass need no graph: run them off the autodiff backend.
    let policy = trainer.model.without_autodiff();
    let seeds: Vec<u64> = (0..items.len())
        .map(|i| {
            seed.wrapping_mul(1_000_003)
                .wrapping_add(step * 131 + i as u64)
        })
        .collect();
    let all_sampled = sample_groups(&policy, items, cfg, &seeds).await?;
    for (item, sampled) in items.iter().zip(all_sampled) {
        let mut comps = Vec::with_capacity(sampled.len());
        for (tokens, on_eos) in sampled {
            let text = decode(&tokens);
            rewards.push(reward.score(&text, &item.reference));
            sample.get_or_insert(text);
            let mut c = tokens;
            if on_eos && let Some(e) = eos {
                c.push(e);
            }
            if c.is_empty() {
                c.push(pad);
            }
            lens.push(c.len() as f64);
            comps.push(c);
        }
        groups.push(comps);
    }
    let adv = group_advantages(&rewards, cfg.group);
    let total_tokens: f64 = lens.iter().sum();
    // Reference log-probs (stage-1 policy), no gradient.
    let mut ref_model = policy;
    for ((_, slot), v) in adapters::parameters_mut(&mut ref_model)
        .into_iter()
        .zip(reference)
    {
        *slot = v.clone();
    }
    let mut refs = Vec::with_capacity(groups.len());
    for (item, comps) in items.iter().zip(&groups) {
        let (lp, _) = completion_logprobs(&ref_model, &item.prompt, comps, pad)?;
        refs.push(lp);
    }
    drop(ref_model);
    // Policy forward and backward, one group at a time (gradient accumulation).
    adapters::for_each_adapter(&mut trainer.model, |a| a.set_training(true));
    trainer.model.device().seed(
        trainer
            .config
            .seed
            .wrapping_mul(1_000_003)
            .wrapping_add(step),
    );
    adapters::track_gradients(&mut trainer.model);
    let params: Vec<Tensor<2>> = adapters::named_parameters(&trainer.model)
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    let mut grads: Vec<Option<Tensor<2>>> = vec![None; params.len()];
    let mut loss_total: Option<Tensor<1>> = None;
    let mut kl_total: Option<Tensor<1>> = None;
    let mut offset = 0;
    for ((item, comps), ref_lp) in items.iter().zip(&groups).zip(refs) {
        let (lp, mask) = completion_logprobs(&trainer.model, &item.prompt, comps, pad)?;
        let [g, l] = lp.dims();
        let a: Vec<f32> = adv[offset..offset + g]
            .iter()
            .flat_map(|&x| std::iter::repeat_n(x as f32, l))
            .collect();
        offset += g;
        let device = lp.device();
        let a = Tensor::<2>::from_data(TensorData::new(a, [g, l]), &device);
        let old = lp.clone().detach();
        let (loss, kl) = grpo_loss(
            lp,
            old,
            Some(ref_lp),
            mask,
            a,
            cfg.clip_eps,
            cfg.kl_beta,
            total_tokens,
        );
        let gr = loss.backward();
        let value = loss.detach().inner();
        loss_total = Some(match loss_total.take() {
            Some(t) => t + value,
            None => value,
        });
        let kl = kl.detach().inner();
        kl_total = Some(match kl_total.take() {
            Some(t) => t + kl,
            None => kl,
        });
        for (acc, p) in grads.iter_mut().zip(&params) {
            let gi = p
                .grad(&gr)
                .unwrap_or_else(|| p.clone().inner().zeros_like());
            *acc = Some(match acc.take() {
                Some(x) => x + gi,
                None => gi,
            });
        }
    }
    let grads: Vec<Tensor<2>> = grads.into_iter().flatten().collect();
    let loss = match loss_total {
        Some(t) => read_f32(t).await?[0] as f64,
        None => return Err(TrainError::EmptyStep.into()),
    };
    let kl = match kl_total {
        Some(t) => read_f32(t).await?[0] as f64 / total_tokens,
        None => 0.0,
    };
    if !loss.is_finite() {
        return Err(TrainError::NonFinite {
            what: "loss",
            value: loss,
            step,
        }
        .into());
    }
    let (lr, grad_norm) = trainer.apply_gradients(params, grads).await?;
    let n = rewards.len() as f64;
    let mean = rewards.iter().sum::<f64>() / n;
    let std = (rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
    Ok(RlMetrics {
        step,
        loss,
        reward_mean: mean,
        reward_std: std,
        accuracy: rewards.iter().filter(|&&r| r >= 1.0).count() as f64 / n,
        completion_len: total_tokens / n,
        kl,
        lr,
        grad_norm,
        sample: sample.unwrap_or_default(),
    })
}

/// Greedy accuracy of the model on `items` with `reward` (1 = correct), up to `max_new_tokens`.
/// Items are decoded in batches of [`EVAL_BATCH_ROWS`], grouped by prompt length so that little
/// of each batch is padding.
pub async fn greedy_accuracy(
    model: &Decoder,
    items: &[RlItem],
    reward: &Reward,
    max_new_tokens: usize,
    decode: &dyn Fn(&[u32]) -> String,
) -> Result<f64, ParError> {
    if items.is_empty() {
        return Ok(0.0);
    }
    let cfg = SamplingConfig {
        temperature: 0.0,
        top_p: 1.0,
        max_new_tokens,
        seed: 0,
    };
    let model = model.without_autodiff();
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| items[i].prompt.len());
    let mut correct = 0.0;
    for batch in order.chunks(EVAL_BATCH_ROWS) {
        let prompts: Vec<Vec<u32>> = batch.iter().map(|&i| items[i].prompt.clone()).collect();
        let gens = generate_batch(&model, &prompts, &cfg, None, |_, _| {}).await?;
        for (&i, g) in batch.iter().zip(gens) {
            correct += reward.score(&decode(&g.tokens), &items[i].reference);
        }
    }
    Ok(correct / items.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewards() {
        let r = Reward::Number;
        assert_eq!(r.score("So the answer is 9.", "9 apples"), 1.0);
        assert_eq!(r.score("2 + 7 = 9 apples", "9 apples"), 1.0);
        assert_eq!(r.score("There are 1,200 apples", "1200"), 1.0);
        assert_eq!(r.score("9 or 10", "9 apples"), 0.0);
        assert_eq!(r.score("no idea", "9"), 0.0);
        assert_eq!(r.score("x = -3.5", "-3.5"), 1.0);
        assert_eq!(first_number("9 apples"), Some((0, 9.0)));
        assert_eq!(first_number("apples: 9").map(|x| x.0), Some(8));
        assert_eq!(Reward::Exact.score(" yes ", "yes"), 1.0);
        let re = Reward::parse("regex:answer is [0-9]+").unwrap();
        assert_eq!(re.score("the answer is 12, I think", "12"), 0.0);
        let re = Reward::parse(r"regex:[0-9]+(?= apples)").unwrap();
        assert_eq!(re.score("3 pears and 12 apples", "12"), 1.0);
        assert!(Reward::parse("fuzzy").is_err());
        assert!(Reward::parse("regex:(").is_err());
    }

    #[test]
    fn advantages() {
        let a = group_advantages(&[1.0, 0.0, 0.0, 0.0, 1.0, 1.0], 3);
        let std = (1.0f64 / 3.0).sqrt();
        assert!((a[0] - (2.0 / 3.0) / (std + 1e-4)).abs() < 1e-12);
        assert!((a[3] + (2.0 / 3.0) / (std + 1e-4)).abs() < 1e-12);
        assert_eq!(group_advantages(&[1.0, 1.0], 2), vec![0.0, 0.0]);
    }
}
