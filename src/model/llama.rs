//! The Llama decoder as HF `LlamaForCausalLM` computes it, readable top to bottom: embedding,
//! blocks of (RMSNorm → attention → residual, RMSNorm → SwiGLU MLP → residual), final norm, head,
//! and the causal-LM loss with -100 labels ignored.

use super::ModelError;
use super::attention::{Attention, AttnContext, LayerCache, inv_freq};
use super::linear::AdaptedLinear;
use burn::tensor::{Device, Int, Tensor, TensorData, activation, module::embedding};
use serde::{Deserialize, Serialize};

/// Llama-3 RoPE frequency scaling (`rope_type: "llama3"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    /// Overall scale of long wavelengths.
    pub factor: f64,
    /// Wavelengths above `original / low_freq_factor` are divided by `factor`.
    pub low_freq_factor: f64,
    /// Wavelengths below `original / high_freq_factor` are unchanged.
    pub high_freq_factor: f64,
    /// Context length the model was pre-trained with.
    pub original_max_position_embeddings: f64,
}

/// Model hyper-parameters, named as in HF `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Vocabulary size V.
    pub vocab_size: usize,
    /// Residual width.
    pub hidden_size: usize,
    /// MLP inner width.
    pub intermediate_size: usize,
    /// Number of decoder blocks.
    pub num_hidden_layers: usize,
    /// Query heads H.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA).
    pub num_key_value_heads: usize,
    /// Per-head dimension.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// Llama-3 RoPE scaling, if any.
    pub rope_scaling: Option<RopeScaling>,
    /// Whether `lm_head` is the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Longest sequence the positions are defined for.
    pub max_position_embeddings: usize,
    /// Beginning-of-sequence id, if the model has one.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence ids (generation stops on any).
    pub eos_token_ids: Vec<u32>,
}

impl LlamaConfig {
    /// Total parameter count (tied head counted once).
    pub fn num_parameters(&self) -> usize {
        let (h, i, d) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let attn = h * self.num_attention_heads * d * 2 + h * self.num_key_value_heads * d * 2;
        let block = attn + 3 * h * i + 2 * h;
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * h
        };
        self.vocab_size * h + self.num_hidden_layers * block + h + head
    }

    /// Every weight the model needs, with its HF name and shape.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i, d) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let (q, kv) = (self.num_attention_heads * d, self.num_key_value_heads * d);
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            vec![self.vocab_size, h],
        )];
        for l in 0..self.num_hidden_layers {
            let p = format!("model.layers.{l}");
            out.extend([
                (format!("{p}.input_layernorm.weight"), vec![h]),
                (format!("{p}.self_attn.q_proj.weight"), vec![q, h]),
                (format!("{p}.self_attn.k_proj.weight"), vec![kv, h]),
                (format!("{p}.self_attn.v_proj.weight"), vec![kv, h]),
                (format!("{p}.self_attn.o_proj.weight"), vec![h, q]),
                (format!("{p}.post_attention_layernorm.weight"), vec![h]),
                (format!("{p}.mlp.gate_proj.weight"), vec![i, h]),
                (format!("{p}.mlp.up_proj.weight"), vec![i, h]),
                (format!("{p}.mlp.down_proj.weight"), vec![h, i]),
            ]);
        }
        out.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), vec![self.vocab_size, h]));
        }
        out
    }
}

/// RMSNorm in f32: `w · x / sqrt(mean(x²) + eps)`.
pub fn rms_norm(x: Tensor<3>, weight: &Tensor<1>, eps: f64) -> Tensor<3> {
    let inv = x
        .clone()
        .square()
        .mean_dim(2)
        .add_scalar(eps)
        .sqrt()
        .recip();
    x * inv * weight.clone().unsqueeze::<3>()
}

/// SwiGLU MLP: `down(silu(gate(x)) · up(x))`.
#[derive(Debug)]
pub struct Mlp {
    /// Gate projection `[I, hidden]`.
    pub gate_proj: AdaptedLinear,
    /// Up projection `[I, hidden]`.
    pub up_proj: AdaptedLinear,
    /// Down projection `[hidden, I]`.
    pub down_proj: AdaptedLinear,
}

impl Mlp {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = activation::silu(self.gate_proj.forward(x.clone()));
        self.down_proj.forward(gate * self.up_proj.forward(x))
    }
}

/// One decoder block.
#[derive(Debug)]
pub struct Block {
    /// Norm before attention.
    pub input_layernorm: Tensor<1>,
    /// Self-attention.
    pub self_attn: Attention,
    /// Norm before the MLP.
    pub post_attention_layernorm: Tensor<1>,
    /// Feed-forward.
    pub mlp: Mlp,
}

/// The whole causal LM.
#[derive(Debug)]
pub struct Llama {
    /// Hyper-parameters.
    pub config: LlamaConfig,
    /// Token embedding `[V, hidden]` (also the head when tied).
    pub embed_tokens: Tensor<2>,
    /// Decoder blocks.
    pub layers: Vec<Block>,
    /// Final norm.
    pub norm: Tensor<1>,
    /// Untied output head `[V, hidden]`.
    pub lm_head: Option<Tensor<2>>,
    /// RoPE inverse frequencies (host copy; tables are built per call).
    pub inv_freq: Vec<f32>,
}

/// KV cache for all layers, with the number of positions already processed.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    /// Positions already in the cache.
    pub len: usize,
}

/// Where the decoder linears' base weights live: packed for the fused kernel or dense f32.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BaseSummary {
    /// Linears kept block-quantized on the device.
    pub packed: usize,
    /// Their bytes on the device.
    pub packed_bytes: usize,
    /// Linears stored dense f32.
    pub dense: usize,
    /// Their bytes.
    pub dense_bytes: usize,
}

impl Llama {
    /// Count packed vs dense decoder linears (shown at load so users see what stays quantized).
    pub fn base_summary(&self) -> BaseSummary {
        let mut s = BaseSummary::default();
        for b in &self.layers {
            for (_, lin) in b.linears() {
                match &lin.base {
                    super::linear::BaseLinear::Packed(w) => {
                        s.packed += 1;
                        s.packed_bytes += w.gpu_bytes();
                    }
                    super::linear::BaseLinear::Dense(w) => {
                        s.dense += 1;
                        s.dense_bytes += w.dims().iter().product::<usize>() * 4;
                    }
                }
            }
        }
        s
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.embed_tokens.device()
    }

    /// A copy of the model (adapters included, dropout off) on the inner, non-autodiff backend,
    /// for generation and evaluation. The tensors share device memory with `self`. Forward
    /// passes on an autodiff device that are never followed by a backward pass keep their graph
    /// alive in burn 0.22 (tracel-ai/burn#4970): about 100 MB per SmolLM2 generation, 17-21 GB
    /// over LoRA-PAR's held-out evaluation. Inference through this copy records nothing.
    pub fn without_autodiff(&self) -> Llama {
        let lin = |l: &AdaptedLinear| l.without_autodiff();
        Llama {
            config: self.config.clone(),
            embed_tokens: self.embed_tokens.clone().inner(),
            layers: self
                .layers
                .iter()
                .map(|b| Block {
                    input_layernorm: b.input_layernorm.clone().inner(),
                    self_attn: Attention {
                        q_proj: lin(&b.self_attn.q_proj),
                        k_proj: lin(&b.self_attn.k_proj),
                        v_proj: lin(&b.self_attn.v_proj),
                        o_proj: lin(&b.self_attn.o_proj),
                        n_heads: b.self_attn.n_heads,
                        n_kv_heads: b.self_attn.n_kv_heads,
                        head_dim: b.self_attn.head_dim,
                    },
                    post_attention_layernorm: b.post_attention_layernorm.clone().inner(),
                    mlp: Mlp {
                        gate_proj: lin(&b.mlp.gate_proj),
                        up_proj: lin(&b.mlp.up_proj),
                        down_proj: lin(&b.mlp.down_proj),
                    },
                })
                .collect(),
            norm: self.norm.clone().inner(),
            lm_head: self.lm_head.clone().map(|h| h.inner()),
            inv_freq: self.inv_freq.clone(),
        }
    }

    /// Every weight tensor by HF name (the head is omitted when tied).
    pub fn named_weights(&self) -> Vec<(String, Tensor<2>)> {
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            self.embed_tokens.clone(),
        )];
        for (l, b) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{l}");
            out.push((
                format!("{p}.input_layernorm.weight"),
                b.input_layernorm.clone().unsqueeze(),
            ));
            for (n, lin) in b.linears() {
                out.push((format!("{p}.{n}.weight"), lin.base.dense()));
            }
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                b.post_attention_layernorm.clone().unsqueeze(),
            ));
        }
        out.push((
            "model.norm.weight".to_string(),
            self.norm.clone().unsqueeze(),
        ));
        if let Some(h) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), h.clone()));
        }
        out
    }

    /// Token ids `[B, T]` (host) → logits `[B, T, V]`; with `cache`, positions continue after it.
    pub fn forward(
        &self,
        ids: &[Vec<u32>],
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor<3>, ModelError> {
        let device = self.device();
        let b = ids.len();
        let t = ids.first().map_or(0, Vec::len);
        if b == 0 || t == 0 || ids.iter().any(|r| r.len() != t) {
            return Err(ModelError::Input(
                "a batch needs rows of one equal, non-zero length".into(),
            ));
        }
        let vocab = self.config.vocab_size;
        if let Some(&id) = ids.iter().flatten().find(|&&id| id as usize >= vocab) {
            return Err(ModelError::TokenOutOfRange {
                id: id as i64,
                vocab,
            });
        }
        let past = cache.as_ref().map_or(0, |c| c.len);
        let flat: Vec<i64> = ids.iter().flatten().map(|&x| x as i64).collect();
        let idx = Tensor::<2, Int>::from_data(TensorData::new(flat, [b, t]), &device);
        let mut x = embedding(self.embed_tokens.clone(), idx);
        let ctx = AttnContext::new(&self.inv_freq, past, t, &device);
        let eps = self.config.rms_norm_eps;
        let mut caches: Option<&mut KvCache> = cache;
        if let Some(c) = caches.as_deref_mut() {
            c.layers.resize(self.layers.len(), LayerCache::default());
        }
        for (l, block) in self.layers.iter().enumerate() {
            let layer_cache = caches.as_deref_mut().map(|c| &mut c.layers[l]);
            let h = rms_norm(x.clone(), &block.input_layernorm, eps);
            x = x + block.self_attn.forward(h, &ctx, layer_cache);
            let h = rms_norm(x.clone(), &block.post_attention_layernorm, eps);
            x = x + block.mlp.forward(h);
        }
        if let Some(c) = caches {
            c.len += t;
        }
        let x = rms_norm(x, &self.norm, eps);
        let head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens).clone();
        let hidden = self.config.hidden_size;
        Ok(x.reshape([b * t, hidden])
            .matmul(head.transpose())
            .reshape([b, t, vocab]))
    }
}

impl Block {
    /// The seven projections with their HF module path inside the block.
    pub fn linears(&self) -> [(&'static str, &AdaptedLinear); 7] {
        [
            ("self_attn.q_proj", &self.self_attn.q_proj),
            ("self_attn.k_proj", &self.self_attn.k_proj),
            ("self_attn.v_proj", &self.self_attn.v_proj),
            ("self_attn.o_proj", &self.self_attn.o_proj),
            ("mlp.gate_proj", &self.mlp.gate_proj),
            ("mlp.up_proj", &self.mlp.up_proj),
            ("mlp.down_proj", &self.mlp.down_proj),
        ]
    }

    /// Mutable access to the projections, for attaching adapters.
    pub fn linears_mut(&mut self) -> [(&'static str, &mut AdaptedLinear); 7] {
        let Block {
            self_attn: a,
            mlp: m,
            ..
        } = self;
        [
            ("self_attn.q_proj", &mut a.q_proj),
            ("self_attn.k_proj", &mut a.k_proj),
            ("self_attn.v_proj", &mut a.v_proj),
            ("self_attn.o_proj", &mut a.o_proj),
            ("mlp.gate_proj", &mut m.gate_proj),
            ("mlp.up_proj", &mut m.up_proj),
            ("mlp.down_proj", &mut m.down_proj),
        ]
    }
}

/// HF's causal-LM loss: mean over positions `t` with `labels[t+1] != -100` of
/// `CE(logits[t], labels[t+1])`. Returns the loss tensor `[1]` and the number of counted tokens.
pub fn causal_lm_loss(
    logits: Tensor<3>,
    labels: &[Vec<i64>],
) -> Result<(Tensor<1>, usize), ModelError> {
    let [b, t, v] = logits.dims();
    if labels.len() != b || labels.iter().any(|r| r.len() != t) {
        return Err(ModelError::Input(
            "labels must have the shape of the input ids".into(),
        ));
    }
    if t < 2 {
        return Err(ModelError::NoLabels);
    }
    let targets: Vec<i64> = labels.iter().flat_map(|r| r[1..].iter().copied()).collect();
    if let Some(&bad) = targets
        .iter()
        .find(|&&y| y != -100 && !(0..v as i64).contains(&y))
    {
        return Err(ModelError::TokenOutOfRange { id: bad, vocab: v });
    }
    let count = targets.iter().filter(|&&y| y != -100).count();
    if count == 0 {
        return Err(ModelError::NoLabels);
    }
    let device = logits.device();
    let n = b * (t - 1);
    let weights: Vec<f32> = targets
        .iter()
        .map(|&y| if y == -100 { 0.0 } else { 1.0 })
        .collect();
    let safe: Vec<i64> = targets.iter().map(|&y| y.max(0)).collect();
    let shifted = logits.slice([0..b, 0..t - 1, 0..v]).reshape([n, v]);
    let logp = activation::log_softmax(shifted, 1);
    let idx = Tensor::<2, Int>::from_data(TensorData::new(safe, [n, 1]), &device);
    let picked = logp.gather(1, idx).reshape([n]);
    let w = Tensor::<1>::from_data(TensorData::new(weights, [n]), &device);
    let loss = (picked * w).sum().neg().div_scalar(count as f64);
    Ok((loss, count))
}

/// RoPE inverse frequencies of a config.
pub fn config_inv_freq(c: &LlamaConfig) -> Vec<f32> {
    inv_freq(c.head_dim, c.rope_theta, c.rope_scaling.as_ref())
}
