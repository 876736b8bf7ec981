//! Importance of every LoRA parameter element for one system, from per-sample gradients (batch
//! 1, prompt tokens masked with -100, HF's mean token loss per sample):
//!
//! - Taylor (default, the paper's): `I_j = | mean_k(g_kj·φ_j) − ½·mean_k((g_kj·φ_j)²) |`, the
//!   second-order estimate of the loss change when `φ_j` is removed, with the empirical Fisher
//!   diagonal standing in for the Hessian;
//! - gradient·Fisher (`grad-fisher`): `I_j = |mean_k g_kj| · F_jj` with `F_jj = mean_k g_kj²`.
//!
//! Both come from the running sums `Σ_k g_kj` and `Σ_k g_kj²` (kept on the device; one readback
//! at the end). The importance pass starts from A and B drawn from N(0, σ²) with σ = 0.01 by
//! default ([`normal_init`]): with peft's B = 0, every gradient of A would be zero.

use super::ParError;
use crate::adapters;
use crate::adapters::lora::{Lora, LoraConfig};
use crate::adapters::{AdapterConfig, AdapterError, Method};
use crate::model::ModelError;
use crate::model::decoder::Decoder;
use crate::model::linear::Adapter;
use crate::model::read_f32;
use crate::train::data::Example;
use burn::tensor::{Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr_free::normal;

/// Which importance formula.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImportanceKind {
    /// `|mean(g·φ) − ½·mean((g·φ)²)|` (the paper's; default).
    #[default]
    Taylor,
    /// `|mean g| · mean g²`.
    GradFisher,
}

impl std::str::FromStr for ImportanceKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "taylor" => Ok(Self::Taylor),
            "grad-fisher" => Ok(Self::GradFisher),
            _ => Err(format!("unknown importance `{s}` (taylor, grad-fisher)")),
        }
    }
}

/// Per-element importance of every adapter tensor (peft key, shape, values), in parameter order.
#[derive(Debug, Clone, PartialEq)]
pub struct Importance {
    /// `(peft key, [rows, cols], values)` per adapter tensor.
    pub tensors: Vec<(String, [usize; 2], Vec<f64>)>,
}

impl Importance {
    /// All values, flattened in parameter order.
    pub fn flat(&self) -> Vec<f64> {
        self.tensors
            .iter()
            .flat_map(|t| t.2.iter().copied())
            .collect()
    }

    /// Divided by the L2 norm of all values together (unchanged when the norm is 0).
    pub fn l2_normalised(mut self) -> Self {
        let norm = self
            .tensors
            .iter()
            .flat_map(|t| t.2.iter())
            .map(|x| x * x)
            .sum::<f64>()
            .sqrt();
        if norm > 0.0 {
            for t in &mut self.tensors {
                t.2.iter_mut().for_each(|x| *x /= norm);
            }
        }
        self
    }
}

mod rand_distr_free {
    //! A seeded standard normal without an extra dependency (Box-Muller on `rand`'s uniform).
    use rand::{RngExt, rngs::StdRng};

    /// `n` draws from N(0, std²).
    pub fn normal(rng: &mut StdRng, n: usize, std: f64) -> Vec<f32> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let u1: f64 = 1.0 - rng.random::<f64>();
            let u2: f64 = rng.random::<f64>();
            let r = (-2.0 * u1.ln()).sqrt();
            let a = 2.0 * std::f64::consts::PI * u2;
            out.push((std * r * a.cos()) as f32);
            out.push((std * r * a.sin()) as f32);
        }
        out.truncate(n);
        out
    }
}

/// Attach LoRA adapters to the targets with A and B both drawn from N(0, std²) (seeded), the
/// start of the importance pass. `cfg` must be a LoRA config.
pub fn normal_init(
    model: &mut Decoder,
    cfg: &AdapterConfig,
    std: f64,
    seed: u64,
) -> Result<(), AdapterError> {
    let Method::Lora(l) = &cfg.method else {
        return Err(AdapterError::Invalid(
            "LoRA-PAR needs a LoRA adapter".into(),
        ));
    };
    let l: LoraConfig = l.clone();
    let device = model.device();
    let mut rng = StdRng::seed_from_u64(seed);
    adapters::for_each_target(model, cfg, |_, out_f, in_f| {
        let a = normal(&mut rng, l.r * in_f, std);
        let b = normal(&mut rng, out_f * l.r, std);
        Ok(Box::new(Lora::from_tensors(
            &l,
            Tensor::from_data(TensorData::new(a, [l.r, in_f]), &device),
            Tensor::from_data(TensorData::new(b, [out_f, l.r]), &device),
        )) as Box<dyn Adapter>)
    })
}

/// Sums of per-sample gradients: `Σ g`, `Σ g²` per adapter tensor, and the sample count.
pub struct GradStats {
    keys: Vec<(String, [usize; 2])>,
    phi: Vec<Tensor<2>>,
    sum: Vec<Tensor<2>>,
    sum_sq: Vec<Tensor<2>>,
    n: usize,
}

/// Per-sample gradients of `examples` (batch 1 each) at the model's current adapter values
/// (the model must live on an autodiff device). Examples without a scored label are skipped.
pub async fn grad_stats(model: &mut Decoder, examples: &[&Example]) -> Result<GradStats, ParError> {
    adapters::for_each_adapter(model, |a| a.set_training(false));
    adapters::track_gradients(model);
    let named = adapters::named_parameters(model);
    let keys = named.iter().map(|(k, t)| (k.clone(), t.dims())).collect();
    let params: Vec<Tensor<2>> = named.into_iter().map(|(_, t)| t).collect();
    let phi: Vec<Tensor<2>> = params.iter().map(|p| p.clone().inner()).collect();
    let mut sum: Vec<Tensor<2>> = phi.iter().map(|p| p.zeros_like()).collect();
    let mut sum_sq = sum.clone();
    let mut n = 0;
    for ex in examples {
        let ids = std::slice::from_ref(&ex.input_ids);
        let loss = match model.chunked_loss(ids, std::slice::from_ref(&ex.labels)) {
            Ok((loss, _)) => loss,
            Err(ModelError::NoLabels) => continue,
            Err(e) => return Err(e.into()),
        };
        let grads = loss.backward();
        for (i, p) in params.iter().enumerate() {
            let g = p.grad(&grads).unwrap_or_else(|| phi[i].zeros_like());
            sum[i] = sum[i].clone() + g.clone();
            sum_sq[i] = sum_sq[i].clone() + g.square();
        }
        n += 1;
    }
    // Detach the adapter tensors again (no stale graph on later forwards).
    for (_, t) in adapters::parameters_mut(model) {
        *t = Tensor::from_inner(t.clone().inner());
    }
    if n == 0 {
        return Err(ParError::Config(
            "importance: no example with a scored token".into(),
        ));
    }
    Ok(GradStats {
        keys,
        phi,
        sum,
        sum_sq,
        n,
    })
}

impl GradStats {
    /// Number of samples summed.
    pub fn samples(&self) -> usize {
        self.n
    }

    /// The raw (not normalised) importance of `kind`, read back to the host.
    pub async fn importance(&self, kind: ImportanceKind) -> Result<Importance, ParError> {
        let n = self.n as f64;
        let mut tensors = Vec::with_capacity(self.keys.len());
        for (i, (key, shape)) in self.keys.iter().enumerate() {
            let mean = self.sum[i].clone().div_scalar(n);
            let fisher = self.sum_sq[i].clone().div_scalar(n);
            let score = match kind {
                ImportanceKind::Taylor => {
                    let phi = self.phi[i].clone();
                    (mean * phi.clone() - fisher * phi.square().mul_scalar(0.5)).abs()
                }
                ImportanceKind::GradFisher => mean.abs() * fisher,
            };
            let v = read_f32(score).await?;
            tensors.push((key.clone(), *shape, v.into_iter().map(f64::from).collect()));
        }
        Ok(Importance { tensors })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_draws_have_the_requested_std() {
        let mut rng = StdRng::seed_from_u64(1);
        let v = normal(&mut rng, 20001, 0.01);
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 3e-4, "{mean}");
        assert!((var.sqrt() - 0.01).abs() < 3e-4, "{}", var.sqrt());
    }

    #[test]
    fn normalisation() {
        let imp = Importance {
            tensors: vec![
                ("a".into(), [1, 2], vec![3.0, 0.0]),
                ("b".into(), [1, 1], vec![4.0]),
            ],
        }
        .l2_normalised();
        assert_eq!(imp.flat(), vec![0.6, 0.0, 0.8]);
    }
}
