//! LoRA (peft `LoraConfig`): `y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ` with `s = lora_alpha / r` (or
//! `lora_alpha / √r` with rsLoRA). The low-rank path runs on the activations; `W + s·B·A` is only
//! formed by `merge`.

use crate::model::linear::{Adapter, BaseLinear};
use burn::tensor::{Distribution, Tensor, TensorData};
use rand::{RngExt, rngs::StdRng};
use serde::{Deserialize, Serialize};

/// LoRA hyper-parameters, named as in peft's `adapter_config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank r.
    pub r: usize,
    /// Scale numerator.
    pub lora_alpha: f64,
    /// Dropout on the LoRA input while training.
    pub lora_dropout: f64,
    /// Scale by `alpha / √r` instead of `alpha / r`.
    pub use_rslora: bool,
}

impl LoraConfig {
    /// The factor `s` applied to the low-rank path.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    /// Check the values a user can get wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.r == 0 {
            return Err("LoRA r must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(format!(
                "lora_dropout {} must be in [0, 1)",
                self.lora_dropout
            ));
        }
        if !self.lora_alpha.is_finite() {
            return Err("lora_alpha must be finite".into());
        }
        Ok(())
    }
}

/// One LoRA pair on a linear layer.
#[derive(Debug, Clone)]
pub struct Lora {
    /// `A` `[r, in]`.
    pub a: Tensor<2>,
    /// `B` `[out, r]`.
    pub b: Tensor<2>,
    /// `s`.
    pub scale: f64,
    /// Dropout probability.
    pub dropout: f64,
    training: bool,
}

impl Lora {
    /// peft's default init: `A ~ U(-1/√in, 1/√in)` (kaiming-uniform with a = √5), `B = 0`.
    pub fn init(
        cfg: &LoraConfig,
        out_f: usize,
        in_f: usize,
        rng: &mut StdRng,
        device: &burn::tensor::Device,
    ) -> Self {
        let bound = 1.0 / (in_f as f32).sqrt();
        let a: Vec<f32> = (0..cfg.r * in_f)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        Self::from_tensors(
            cfg,
            Tensor::from_data(TensorData::new(a, [cfg.r, in_f]), device),
            Tensor::zeros([out_f, cfg.r], device),
        )
    }

    /// A LoRA pair from given `A` and `B`.
    pub fn from_tensors(cfg: &LoraConfig, a: Tensor<2>, b: Tensor<2>) -> Self {
        Self {
            a,
            b,
            scale: cfg.scale(),
            dropout: cfg.lora_dropout,
            training: false,
        }
    }
}

impl Adapter for Lora {
    fn forward(&self, x: Tensor<3>, base: &BaseLinear) -> Tensor<3> {
        let [bs, t, i] = x.dims();
        let out = base.forward(x.clone());
        let mut h = x.reshape([bs * t, i]);
        if self.training && self.dropout > 0.0 {
            let keep = Tensor::<2>::random(
                [bs * t, i],
                Distribution::Bernoulli(1.0 - self.dropout),
                &h.device(),
            );
            h = h * keep.div_scalar(1.0 - self.dropout);
        }
        let low = h
            .matmul(self.a.clone().transpose())
            .matmul(self.b.clone().transpose());
        out + low
            .mul_scalar(self.scale)
            .reshape([bs, t, self.b.dims()[0]])
    }

    fn parameters(&self) -> Vec<(&'static str, Tensor<2>)> {
        vec![
            ("lora_A.weight", self.a.clone()),
            ("lora_B.weight", self.b.clone()),
        ]
    }

    fn parameters_mut(&mut self) -> Vec<(&'static str, &mut Tensor<2>)> {
        vec![
            ("lora_A.weight", &mut self.a),
            ("lora_B.weight", &mut self.b),
        ]
    }

    fn set_training(&mut self, on: bool) {
        self.training = on;
    }

    fn merge(&self, base: &Tensor<2>) -> Tensor<2> {
        base.clone() + self.b.clone().matmul(self.a.clone()).mul_scalar(self.scale)
    }

    fn without_autodiff(&self) -> Box<dyn Adapter> {
        Box::new(Lora {
            a: self.a.clone().inner(),
            b: self.b.clone().inner(),
            training: false,
            ..self.clone()
        })
    }
}
