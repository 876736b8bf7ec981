//! AdamW exactly as `torch.optim.AdamW` (decoupled weight decay applied first), with optional
//! per-element masks (LoRA-PAR: masked elements get no update and no decay, bit-identical), global
//! gradient-norm clipping, and the HF learning-rate schedules.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// AdamW hyper-parameters (torch defaults except weight decay, which callers set explicitly).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Moments of one parameter tensor.
#[derive(Debug, Clone)]
pub struct Moments {
    /// First moment m.
    pub m: Tensor<2>,
    /// Second moment v.
    pub v: Tensor<2>,
}

/// Optimizer state: one [`Moments`] per parameter (same order as the parameter list) and the step.
#[derive(Debug, Clone)]
pub struct AdamW {
    /// Settings.
    pub config: AdamWConfig,
    /// Per-parameter moments, created on the first step.
    pub moments: Vec<Moments>,
    /// Completed optimizer steps t.
    pub step: u64,
}

impl AdamW {
    /// A fresh optimizer.
    pub fn new(config: AdamWConfig) -> Self {
        Self {
            config,
            moments: Vec::new(),
            step: 0,
        }
    }

    /// One update: `params[i] ← AdamW(params[i], grads[i])` at learning rate `lr`. All tensors are
    /// plain (non-autodiff) tensors. `masks[i]`, when given, is 1 where the element may change.
    pub fn update(
        &mut self,
        params: &mut [Tensor<2>],
        grads: &[Tensor<2>],
        masks: Option<&[Tensor<2>]>,
        lr: f64,
    ) {
        let c = self.config;
        if self.moments.is_empty() {
            self.moments = params
                .iter()
                .map(|p| Moments {
                    m: p.zeros_like(),
                    v: p.zeros_like(),
                })
                .collect();
        }
        self.step += 1;
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        for (i, (p, g)) in params.iter_mut().zip(grads).enumerate() {
            let mom = &mut self.moments[i];
            let old = p.clone();
            let decayed = old.clone().mul_scalar(1.0 - lr * c.weight_decay);
            let m = mom.m.clone().mul_scalar(c.beta1) + g.clone().mul_scalar(1.0 - c.beta1);
            let v =
                mom.v.clone().mul_scalar(c.beta2) + g.clone().square().mul_scalar(1.0 - c.beta2);
            let denom = v.clone().sqrt().div_scalar(bias2_sqrt).add_scalar(c.eps);
            let new = decayed - (m.clone() / denom).mul_scalar(lr / bias1);
            match masks.map(|ms| ms[i].clone().bool()) {
                Some(active) => {
                    *p = old.mask_where(active.clone(), new);
                    mom.m = mom.m.clone().mask_where(active.clone(), m);
                    mom.v = mom.v.clone().mask_where(active, v);
                }
                None => {
                    *p = new;
                    mom.m = m;
                    mom.v = v;
                }
            }
        }
    }
}

/// Learning-rate schedule (HF `get_*_schedule_with_warmup`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Constant after warm-up.
    #[default]
    Constant,
    /// Linear decay to 0 at the last step.
    Linear,
    /// Half-cosine decay to 0 at the last step.
    Cosine,
}

impl std::str::FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "constant" => Ok(Self::Constant),
            "linear" => Ok(Self::Linear),
            "cosine" => Ok(Self::Cosine),
            _ => Err(format!(
                "unknown lr scheduler `{s}` (constant, linear, cosine)"
            )),
        }
    }
}

/// Learning rate of optimizer step `step` (0-based) out of `total`, as HF's LambdaLR computes it.
pub fn learning_rate(
    base: f64,
    schedule: Schedule,
    step: usize,
    warmup: usize,
    total: usize,
) -> f64 {
    if step < warmup {
        return base * step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    base * match schedule {
        Schedule::Constant => 1.0,
        Schedule::Linear => (1.0 - progress).max(0.0),
        Schedule::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
    }
}

/// Global L2 norm of all gradients (a device scalar; read it back to report it).
pub fn global_norm(grads: &[Tensor<2>]) -> Tensor<1> {
    grads
        .iter()
        .map(|g| g.clone().square().sum())
        .reduce(|a, b| a + b)
        .map(|s| s.sqrt())
        .unwrap_or_else(|| Tensor::zeros([1], &burn::tensor::Device::flex()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_match_hf() {
        assert_eq!(learning_rate(1.0, Schedule::Linear, 0, 2, 10), 0.0);
        assert_eq!(learning_rate(1.0, Schedule::Linear, 1, 2, 10), 0.5);
        assert_eq!(learning_rate(1.0, Schedule::Linear, 2, 2, 10), 1.0);
        assert_eq!(learning_rate(1.0, Schedule::Linear, 6, 2, 10), 0.5);
        assert!((learning_rate(1.0, Schedule::Cosine, 6, 2, 10) - 0.5).abs() < 1e-12);
        assert_eq!(learning_rate(1.0, Schedule::Constant, 9, 2, 10), 1.0);
    }
}
