//! Autoregressive generation with a KV cache: greedy, temperature and top-p sampling, stop on EOS.
//! Async because every step reads the last logits back from the device (no blocking readbacks,
//! so it runs in a browser tab too).

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
pub async fn generate(
    model: &Decoder,
    prompt: &[u32],
    cfg: &SamplingConfig,
    mut on_token: impl FnMut(u32),
) -> Result<Generation, ModelError> {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut cache = KvCache::default();
    let start = now();
    let mut row = read_f32(model.next_token_logits(prompt, Some(&mut cache))?).await?;
    let prefill_secs = secs_since(start);
    let start = now();
    let mut tokens = Vec::new();
    let mut stopped_on_eos = false;
    while tokens.len() < cfg.max_new_tokens {
        let next = sample(&row, cfg, &mut rng);
        if model.config.is_stop(next) {
            stopped_on_eos = true;
            break;
        }
        tokens.push(next);
        on_token(next);
        if tokens.len() == cfg.max_new_tokens {
            break;
        }
        row = read_f32(model.next_token_logits(&[next], Some(&mut cache))?).await?;
    }
    Ok(Generation {
        tokens,
        stopped_on_eos,
        prefill_secs,
        decode_secs: secs_since(start),
    })
}
