//! Autoregressive generation with a KV cache: greedy, temperature and top-p sampling, stop on EOS,
//! for one prompt ([`generate`]) or a batch of prompts of different lengths ([`generate_batch`],
//! left-padded, each row stopping on its own). Async because every step reads the last logits
//! back from the device (no blocking readbacks, so it runs in a browser tab too).

use super::ModelError;
use super::decoder::{Decoder, KvCache};
use super::read_f32;
use rand::{RngExt, SeedableRng, rngs::StdRng};

/// How to pick each next token.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    /// 0 means greedy (argmax); otherwise logits are divided by it before sampling.
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p`.
    pub top_p: f32,
    /// Stop after this many new tokens.
    pub max_new_tokens: usize,
    /// Seed of the sampler (generation is reproducible).
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            max_new_tokens: 64,
            seed: 0,
        }
    }
}

/// The result of one generation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// New token ids (the stop token excluded).
    pub tokens: Vec<u32>,
    /// Whether generation ended on an end-of-sequence token.
    pub stopped_on_eos: bool,
    /// Seconds spent on the prompt (prefill).
    pub prefill_secs: f64,
    /// Seconds spent producing the new tokens.
    pub decode_secs: f64,
}

impl Generation {
    /// Decode speed in new tokens per second.
    pub fn tokens_per_sec(&self) -> f64 {
        if self.decode_secs > 0.0 {
            self.tokens.len() as f64 / self.decode_secs
        } else {
            0.0
        }
    }
}

/// Pick the next token from one row of logits.
pub fn sample(logits: &[f32], cfg: &SamplingConfig, rng: &mut StdRng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |best, (i, &v)| {
                if v > best.1 { (i, v) } else { best }
            })
            .0 as u32
    };
    if cfg.temperature <= 0.0 {
        return argmax();
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &v)| (i, (((v - max) / cfg.temperature) as f64).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= total);
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut kept = 0.0;
    let mut cut = probs.len();
    for (n, p) in probs.iter().enumerate() {
        kept += p.1;
        if kept >= cfg.top_p as f64 {
            cut = n + 1;
            break;
        }
    }
    probs.truncate(cut.max(1));
    let mass: f64 = probs.iter().map(|p| p.1).sum();
    let mut u = rng.random::<f64>() * mass;
    for &(i, p) in &probs {
        if u < p {
            return i as u32;
        }
        u -= p;
    }
    probs[probs.len() - 1].0 as u32
}

/// A monotonic clock that also works on wasm (where it reports zero durations).
fn now() -> Option<std::time::Instant> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        Some(std::time::Instant::now())
    }
    #[cfg(target_arch = "wasm32")]
    {
        None
    }
}

fn secs_since(t: Option<std::time::Instant>) -> f64 {
    t.map_or(0.0, |t| t.elapsed().as_secs_f64())
}

/// Continue `prompt` by up to `cfg.max_new_tokens` tokens, calling `on_token` for each new one.
/// A batch of one row of [`generate_batch`], seeded with `cfg.seed`.
pub async fn generate(
    model: &Decoder,
    prompt: &[u32],
    cfg: &SamplingConfig,
    mut on_token: impl FnMut(u32),
) -> Result<Generation, ModelError> {
    let mut out = generate_batch(model, &[prompt.to_vec()], cfg, None, |_, t| on_token(t)).await?;
    Ok(out.remove(0))
}

/// The seed of each row of a batch when none are given: row `r` samples with `seed + r`
/// (wrapping), so row 0 of a batch samples exactly like [`generate`] with the same config.
pub fn row_seeds(seed: u64, rows: usize) -> Vec<u64> {
    (0..rows as u64).map(|r| seed.wrapping_add(r)).collect()
}

/// Continue every prompt of `prompts` (any non-zero lengths) by up to `cfg.max_new_tokens`
/// tokens in one batch, calling `on_token(row, token)` for each new token.
///
/// Row `r` samples with its own generator seeded with `seeds[r]` (default: [`row_seeds`] of
/// `cfg.seed`), and gets the tokens [`generate`] gives for that prompt with that seed, up to
/// float rounding of the batched matmuls (per-row logits agree within 1e-4). Prompts are
/// left-padded with per-row RoPE positions and attention masks. Each row stops on its own
/// (a stop token or `max_new_tokens`); finished rows leave the batch and its KV cache, so the
/// remaining rows run no slower than a smaller batch. `prefill_secs` and `decode_secs` of every
/// returned [`Generation`] are those of the whole batch.
pub async fn generate_batch(
    model: &Decoder,
    prompts: &[Vec<u32>],
    cfg: &SamplingConfig,
    seeds: Option<&[u64]>,
    mut on_token: impl FnMut(usize, u32),
) -> Result<Vec<Generation>, ModelError> {
    let n = prompts.len();
    if n == 0 {
        return Ok(Vec::new());
    }
    let seeds = match seeds {
        Some(s) if s.len() != n => {
            return Err(ModelError::Input(format!(
                "{} seeds for {n} prompts",
                s.len()
            )));
        }
        Some(s) => s.to_vec(),
        None => row_seeds(cfg.seed, n),
    };
    let mut rngs: Vec<StdRng> = seeds.iter().map(|&s| StdRng::seed_from_u64(s)).collect();
    let v = model.config.vocab_size;
    let mut cache = KvCache::default();
    let start = now();
    let mut logits = read_f32(model.next_token_logits_batch(prompts, &mut cache)?).await?;
    let prefill_secs = secs_since(start);
    let start = now();
    let mut tokens: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut stopped_on_eos = vec![false; n];
    // Original row of each row of the cache.
    let mut active: Vec<usize> = (0..n).collect();
    loop {
        let mut keep = Vec::with_capacity(active.len());
        let mut next_ids = Vec::with_capacity(active.len());
        for (k, &r) in active.iter().enumerate() {
            if tokens[r].len() >= cfg.max_new_tokens {
                continue;
            }
            let next = sample(&logits[k * v..(k + 1) * v], cfg, &mut rngs[r]);
            if model.config.is_stop(next) {
                stopped_on_eos[r] = true;
                continue;
            }
            tokens[r].push(next);
            on_token(r, next);
            if tokens[r].len() < cfg.max_new_tokens {
                keep.push(k);
                next_ids.push(vec![next]);
            }
        }
        if keep.is_empty() {
            break;
        }
        if keep.len() < active.len() {
            cache.retain_rows(&keep)?;
            active = keep.iter().map(|&k| active[k]).collect();
        }
        logits = read_f32(model.next_token_logits_batch(&next_ids, &mut cache)?).await?;
    }
    let decode_secs = secs_since(start);
    Ok(tokens
        .into_iter()
        .zip(stopped_on_eos)
        .map(|(tokens, stopped_on_eos)| Generation {
            tokens,
            stopped_on_eos,
            prefill_secs,
            decode_secs,
        })
        .collect())
}
