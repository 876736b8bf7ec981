//! Adapter methods (each one file with its config, parameters and forward, as in peft) and the
//! shared code that finds target linears, attaches adapters and names tensors with peft's keys.

pub mod lora;
pub mod mask;
pub mod oft;

use crate::model::decoder::Decoder;
use crate::model::linear::Adapter;
use burn::tensor::Tensor;
use lora::{Lora, LoraConfig};
use oft::{Oft, OftConfig};
use rand::{SeedableRng, rngs::StdRng};

/// The seven projection names peft's `target_modules` may list for a Llama.
pub const TARGET_MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// An adapter method and its settings.
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    /// Low-rank adaptation.
    Lora(LoraConfig),
    /// Orthogonal finetuning (v2, input-centric).
    Oft(OftConfig),
}

/// Which method, its settings and which projections it adapts.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterConfig {
    /// Method and hyper-parameters.
    pub method: Method,
    /// Short module names (`q_proj`, ...), each one of [`TARGET_MODULES`].
    pub target_modules: Vec<String>,
}

/// Adapter configuration or attachment errors.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// A target module name that no decoder projection has.
    #[error(
        "unknown target module `{0}` (a decoder block has: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)"
    )]
    UnknownTarget(String),
    /// A setting that does not fit the model or is out of range.
    #[error("{0}")]
    Invalid(String),
}

impl AdapterConfig {
    /// Check the settings (and that every target exists).
    pub fn validate(&self) -> Result<(), AdapterError> {
        if self.target_modules.is_empty() {
            return Err(AdapterError::Invalid("no target modules".into()));
        }
        if let Some(t) = self
            .target_modules
            .iter()
            .find(|t| !TARGET_MODULES.contains(&t.as_str()))
        {
            return Err(AdapterError::UnknownTarget(t.clone()));
        }
        if let Method::Lora(l) = &self.method {
            l.validate().map_err(AdapterError::Invalid)?;
        }
        Ok(())
    }
}

impl AdapterConfig {
    /// Check that training can move this adapter: with fewer than two Cayley-Neumann terms peft's
    /// series is the identity, so an OFT rotation would get no gradient.
    pub fn check_trainable(&self) -> Result<(), AdapterError> {
        match &self.method {
            Method::Oft(o) if o.use_cayley_neumann && o.num_cayley_neumann_terms < 2 => {
                Err(AdapterError::Invalid(format!(
                    "num_cayley_neumann_terms {} leaves the rotation fixed at I (peft's series needs at least 2 terms to train)",
                    o.num_cayley_neumann_terms
                )))
            }
            _ => Ok(()),
        }
    }
}

/// peft's key prefix for a module path (`model.layers.0.self_attn.q_proj`).
pub fn peft_key(module_path: &str, suffix: &str) -> String {
    format!("base_model.model.{module_path}.{suffix}")
}

/// Attach freshly initialised adapters (peft's default init) to every target projection.
pub fn attach(model: &mut Decoder, cfg: &AdapterConfig, seed: u64) -> Result<(), AdapterError> {
    cfg.validate()?;
    let device = model.device();
    let mut rng = StdRng::seed_from_u64(seed);
    for_each_target(
        model,
        cfg,
        |path, out_f, in_f| -> Result<Box<dyn Adapter>, AdapterError> {
            Ok(match &cfg.method {
                Method::Lora(l) if l.r > in_f.min(out_f) => {
                    return Err(AdapterError::Invalid(format!(
                        "{path}: LoRA r {} exceeds the layer's sizes ({out_f} x {in_f}); a rank above min(in, out) adds nothing",
                        l.r
                    )));
                }
                Method::Lora(l) => Box::new(Lora::init(l, out_f, in_f, &mut rng, &device)),
                Method::Oft(o) => Box::new(
                    Oft::init(o, in_f, &device)
                        .map_err(|e| AdapterError::Invalid(format!("{path}: {e}")))?,
                ),
            })
        },
    )
}

/// Call `make(module_path, out, in)` for every target projection in layer order and attach the result.
pub fn for_each_target(
    model: &mut Decoder,
    cfg: &AdapterConfig,
    mut make: impl FnMut(&str, usize, usize) -> Result<Box<dyn Adapter>, AdapterError>,
) -> Result<(), AdapterError> {
    for (l, block) in model.layers.iter_mut().enumerate() {
        for (name, lin) in block.linears_mut() {
            let short = name.rsplit('.').next().unwrap_or(name);
            if cfg.target_modules.iter().any(|t| t == short) {
                let [out_f, in_f] = lin.base.dims();
                let path = format!("model.layers.{l}.{name}");
                lin.adapter = Some(make(&path, out_f, in_f)?);
            }
        }
    }
    Ok(())
}

/// Every adapter tensor with its peft key, in layer order.
pub fn named_parameters(model: &Decoder) -> Vec<(String, Tensor<2>)> {
    let mut out = Vec::new();
    for (l, block) in model.layers.iter().enumerate() {
        for (name, lin) in block.linears() {
            if let Some(a) = &lin.adapter {
                for (suffix, t) in a.parameters() {
                    out.push((peft_key(&format!("model.layers.{l}.{name}"), suffix), t));
                }
            }
        }
    }
    out
}

/// Mutable access to every adapter tensor with its peft key (the optimizer's view).
pub fn parameters_mut(model: &mut Decoder) -> Vec<(String, &mut Tensor<2>)> {
    let mut out = Vec::new();
    for (l, block) in model.layers.iter_mut().enumerate() {
        for (name, lin) in block.linears_mut() {
            if let Some(a) = lin.adapter.as_mut() {
                for (suffix, t) in a.parameters_mut() {
                    out.push((peft_key(&format!("model.layers.{l}.{name}"), suffix), t));
                }
            }
        }
    }
    out
}

/// Apply `f` to every attached adapter (training switch, COFT projection, ...).
pub fn for_each_adapter(model: &mut Decoder, mut f: impl FnMut(&mut dyn Adapter)) {
    for block in model.layers.iter_mut() {
        for (_, lin) in block.linears_mut() {
            if let Some(a) = lin.adapter.as_mut() {
                f(a.as_mut());
            }
        }
    }
}

/// Make every adapter tensor a fresh autodiff leaf (call on an autodiff device before a forward
/// whose gradients you want).
pub fn track_gradients(model: &mut Decoder) {
    for (_, t) in parameters_mut(model) {
        *t = Tensor::from_inner(t.clone().inner()).require_grad();
    }
}
