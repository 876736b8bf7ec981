//! The decoder as transformers computes Llama, Mistral, Qwen2, Qwen3 and Gemma 3, readable top
//! to bottom: (scaled) embedding, blocks of (norm → attention [→ post-norm] → residual, norm →
//! gated MLP [→ post-norm] → residual), final norm, head [→ softcap]. Which optional parts run is
//! read from [`DecoderConfig`]; the losses live in [`super::loss`].

use super::ModelError;
use super::attention::{Attention, AttnContext, LayerCache, inv_freq};
use super::config::{Activation, AttnKind, DecoderConfig, NormStyle};
use super::linear::AdaptedLinear;
use super::loader::LINEAR_ROLES;
use super::roles::Role;
use super::vocab::VocabMatrix;
use burn::tensor::{Device, Int, Tensor, TensorData, activation};

pub use super::loss::causal_lm_loss;

/// An RMSNorm gain with its style and epsilon, over the last dimension.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    /// Gain `w` (`[dim]`), as stored in HF files.
    pub weight: Tensor<1>,
    /// `w·x̂` or `(1+w)·x̂`.
    pub style: NormStyle,
    /// Added to the mean square.
    pub eps: f64,
}

impl RmsNorm {
    /// `x̂ = x / sqrt(mean(x²) + eps)` over the last dimension, then the gain, in f32.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let inv = x
            .clone()
            .square()
            .mean_dim(D - 1)
            .add_scalar(self.eps)
            .sqrt()
            .recip();
        let gain = match self.style {
            NormStyle::Weight => self.weight.clone(),
            NormStyle::OnePlusWeight => self.weight.clone().add_scalar(1.0),
        };
        x * inv * gain.unsqueeze::<D>()
    }

    /// The same norm on the inner (non-autodiff) backend.
    fn without_autodiff(&self) -> RmsNorm {
        RmsNorm {
            weight: self.weight.clone().inner(),
            ..self.clone()
        }
    }
}

/// Gated MLP: `down(act(gate(x)) · up(x))` with SiLU (SwiGLU) or GELU-tanh (GeGLU).
#[derive(Debug)]
pub struct Mlp {
    /// Gate projection `[I, hidden]`.
    pub gate_proj: AdaptedLinear,
    /// Up projection `[I, hidden]`.
    pub up_proj: AdaptedLinear,
    /// Down projection `[hidden, I]`.
    pub down_proj: AdaptedLinear,
    /// Activation on the gate.
    pub activation: Activation,
}

impl Mlp {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = self.gate_proj.forward(x.clone());
        let gate = match self.activation {
            Activation::Silu => activation::silu(gate),
            Activation::GeluTanh => gelu_tanh(gate),
        };
        self.down_proj.forward(gate * self.up_proj.forward(x))
    }
}

/// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, torch's `gelu(approximate="tanh")`.
pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let inner = x
        .clone()
        .add(x.clone().powi_scalar(3).mul_scalar(0.044715))
        .mul_scalar(c);
    x.mul_scalar(0.5) * inner.tanh().add_scalar(1.0)
}

/// One decoder block. Norms are named by role: `attn_norm` is HF's `input_layernorm`, `ffn_norm`
/// the norm before the MLP (Llama's `post_attention_layernorm`, Gemma's `pre_feedforward_layernorm`).
#[derive(Debug)]
pub struct Block {
    /// Norm before attention.
    pub attn_norm: RmsNorm,
    /// Self-attention (with its q/k norms and window).
    pub self_attn: Attention,
    /// Norm on the attention output (sandwich norms only).
    pub attn_post_norm: Option<RmsNorm>,
    /// Norm before the MLP.
    pub ffn_norm: RmsNorm,
    /// Feed-forward.
    pub mlp: Mlp,
    /// Norm on the MLP output (sandwich norms only).
    pub ffn_post_norm: Option<RmsNorm>,
}

impl Block {
    fn forward(
        &self,
        x: Tensor<3>,
        ctx: &AttnContext,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        let post = |norm: &Option<RmsNorm>, y: Tensor<3>| match norm {
            Some(n) => n.forward(y),
            None => y,
        };
        let h = self
            .self_attn
            .forward(self.attn_norm.forward(x.clone()), ctx, cache);
        let x = x + post(&self.attn_post_norm, h);
        let h = self.mlp.forward(self.ffn_norm.forward(x.clone()));
        x + post(&self.ffn_post_norm, h)
    }

    /// Every norm of the block by role (for named weights and gradient tests).
    pub fn norms(&self) -> Vec<(Role, &RmsNorm)> {
        let a = &self.self_attn;
        [
            (Role::AttnNorm, Some(&self.attn_norm)),
            (Role::AttnQNorm, a.q_norm.as_ref()),
            (Role::AttnKNorm, a.k_norm.as_ref()),
            (Role::AttnPostNorm, self.attn_post_norm.as_ref()),
            (Role::FfnNorm, Some(&self.ffn_norm)),
            (Role::FfnPostNorm, self.ffn_post_norm.as_ref()),
        ]
        .into_iter()
        .filter_map(|(r, n)| n.map(|n| (r, n)))
        .collect()
    }

    /// Mutable access to the norms by role.
    pub fn norms_mut(&mut self) -> Vec<(Role, &mut RmsNorm)> {
        let Block {
            attn_norm,
            self_attn,
            attn_post_norm,
            ffn_norm,
            ffn_post_norm,
            ..
        } = self;
        [
            (Role::AttnNorm, Some(attn_norm)),
            (Role::AttnQNorm, self_attn.q_norm.as_mut()),
            (Role::AttnKNorm, self_attn.k_norm.as_mut()),
            (Role::AttnPostNorm, attn_post_norm.as_mut()),
            (Role::FfnNorm, Some(ffn_norm)),
            (Role::FfnPostNorm, ffn_post_norm.as_mut()),
        ]
        .into_iter()
        .filter_map(|(r, n)| n.map(|n| (r, n)))
        .collect()
    }

    /// The seven projections with their role and HF module path inside the block.
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

    fn without_autodiff(&self) -> Block {
        let lin = |l: &AdaptedLinear| l.without_autodiff();
        let norm = |n: &Option<RmsNorm>| n.as_ref().map(RmsNorm::without_autodiff);
        let a = &self.self_attn;
        Block {
            attn_norm: self.attn_norm.without_autodiff(),
            self_attn: Attention {
                q_proj: lin(&a.q_proj),
                k_proj: lin(&a.k_proj),
                v_proj: lin(&a.v_proj),
                o_proj: lin(&a.o_proj),
                q_norm: norm(&a.q_norm),
                k_norm: norm(&a.k_norm),
                ..*a
            },
            attn_post_norm: norm(&self.attn_post_norm),
            ffn_norm: self.ffn_norm.without_autodiff(),
            mlp: Mlp {
                gate_proj: lin(&self.mlp.gate_proj),
                up_proj: lin(&self.mlp.up_proj),
                down_proj: lin(&self.mlp.down_proj),
                activation: self.mlp.activation,
            },
            ffn_post_norm: norm(&self.ffn_post_norm),
        }
    }
}

/// The whole causal LM.
#[derive(Debug)]
pub struct Decoder {
    /// Hyper-parameters and feature switches.
    pub config: DecoderConfig,
    /// Token embedding `[V, hidden]` (also the head when tied), in row shards.
    pub embed_tokens: VocabMatrix,
    /// Decoder blocks.
    pub layers: Vec<Block>,
    /// Final norm.
    pub norm: RmsNorm,
    /// Untied output head `[V, hidden]`, in row shards.
    pub lm_head: Option<VocabMatrix>,
    /// RoPE inverse frequencies of global layers (host copy; tables are built per call).
    pub inv_freq: Vec<f32>,
    /// RoPE inverse frequencies of sliding layers, when they differ from the global ones.
    pub inv_freq_local: Option<Vec<f32>>,
}

/// KV cache for all layers, with the number of positions already processed.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    /// Positions (columns, left padding included) already in the cache.
    pub len: usize,
    /// Batch rows held (0 while empty).
    rows: usize,
    /// Left-padding columns of each row (empty when no row is padded).
    pads: Vec<usize>,
}

impl KvCache {
    /// Batch rows held (0 while the cache is empty).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Left-padding columns of each row (empty when no row is padded).
    pub fn pads(&self) -> &[usize] {
        &self.pads
    }

    /// Keep only the batch rows `rows` (indices into the current batch, in the order given) and
    /// drop the others, e.g. sequences that finished generating.
    pub fn retain_rows(&mut self, rows: &[usize]) -> Result<(), ModelError> {
        if let Some(&r) = rows.iter().find(|&&r| r >= self.rows) {
            return Err(ModelError::Input(format!(
                "row {r} is not in the cache ({} rows)",
                self.rows
            )));
        }
        if rows.len() == self.rows && rows.iter().enumerate().all(|(i, &r)| i == r) {
            return Ok(());
        }
        for layer in &mut self.layers {
            layer.select_rows(rows);
        }
        if !self.pads.is_empty() {
            self.pads = rows.iter().map(|&r| self.pads[r]).collect();
            if self.pads.iter().all(|&p| p == 0) {
                self.pads.clear();
            }
        }
        self.rows = rows.len();
        Ok(())
    }
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

impl Decoder {
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
    pub fn without_autodiff(&self) -> Decoder {
        Decoder {
            config: self.config.clone(),
            embed_tokens: self.embed_tokens.inner(),
            layers: self.layers.iter().map(Block::without_autodiff).collect(),
            norm: self.norm.without_autodiff(),
            lm_head: self.lm_head.as_ref().map(VocabMatrix::inner),
            inv_freq: self.inv_freq.clone(),
            inv_freq_local: self.inv_freq_local.clone(),
        }
    }

    /// Every weight tensor with its role and block (the head is omitted when tied), in HF
    /// layout; vectors (norms, biases) come as `[1, n]` tensors.
    pub fn role_weights(&self) -> Vec<(Role, Option<usize>, Tensor<2>)> {
        let mut out = vec![(Role::TokenEmbd, None, self.embed_tokens.to_dense())];
        for (l, b) in self.layers.iter().enumerate() {
            for (r, n) in b.norms() {
                out.push((r, Some(l), n.weight.clone().unsqueeze()));
            }
            for ((_, lin), r) in b.linears().into_iter().zip(LINEAR_ROLES) {
                out.push((r, Some(l), lin.base.dense()));
            }
            let a = &b.self_attn;
            for (r, lin) in [
                (Role::AttnQBias, &a.q_proj),
                (Role::AttnKBias, &a.k_proj),
                (Role::AttnVBias, &a.v_proj),
            ] {
                if let Some(bias) = &lin.bias {
                    out.push((r, Some(l), bias.clone().unsqueeze()));
                }
            }
        }
        out.push((Role::OutputNorm, None, self.norm.weight.clone().unsqueeze()));
        if let Some(h) = &self.lm_head {
            out.push((Role::Output, None, h.to_dense()));
        }
        out
    }

    /// Every weight tensor by HF name with its HF shape (`[n]` for vectors, which come as
    /// `[1, n]` tensors), as [`Decoder::role_weights`] lists them.
    pub fn named_weights(&self) -> Vec<(String, Vec<usize>, Tensor<2>)> {
        self.role_weights()
            .into_iter()
            .map(|(r, l, t)| {
                let [rows, cols] = t.dims();
                let shape = if r.is_vector() {
                    vec![cols]
                } else {
                    vec![rows, cols]
                };
                (self.config.arch.hf_name(r, l), shape, t)
            })
            .collect()
    }

    /// Token ids `[B, T]` (host) → final hidden states `[B, T, hidden]` (after the final norm);
    /// with `cache`, positions continue after it (each row after its own left padding, when
    /// the cache was filled by [`Decoder::next_token_logits_batch`]).
    pub fn hidden_states(
        &self,
        ids: &[Vec<u32>],
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor<3>, ModelError> {
        self.hidden_states_padded(ids, &[], cache)
    }

    /// [`Decoder::hidden_states`] where row `b` of `ids` starts with `pads[b]` padding columns
    /// (`pads` empty: none). Padding is only accepted on a first call (empty cache); the cache
    /// remembers it for the following calls.
    fn hidden_states_padded(
        &self,
        ids: &[Vec<u32>],
        pads: &[usize],
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
        let c = &self.config;
        if let Some(&id) = ids
            .iter()
            .flatten()
            .find(|&&id| id as usize >= c.vocab_size)
        {
            return Err(ModelError::TokenOutOfRange {
                id: id as i64,
                vocab: c.vocab_size,
            });
        }
        let past = cache.as_ref().map_or(0, |c| c.len);
        if let Some(kv) = cache.as_ref()
            && kv.len > 0
            && kv.rows != b
        {
            return Err(ModelError::Input(format!(
                "the KV cache holds {} rows, the batch has {b}",
                kv.rows
            )));
        }
        if !pads.is_empty() && (pads.len() != b || past > 0) {
            return Err(ModelError::Input(
                "left padding needs one entry per row and an empty cache".into(),
            ));
        }
        let pads: Vec<usize> = match cache.as_ref() {
            Some(kv) if past > 0 => kv.pads.clone(),
            _ => pads.to_vec(),
        };
        let flat: Vec<i64> = ids.iter().flatten().map(|&x| x as i64).collect();
        let idx = Tensor::<2, Int>::from_data(TensorData::new(flat, [b, t]), &device);
        let mut x = self.embed_tokens.embed(idx);
        if c.scale_embeddings {
            // transformers multiplies by √hidden cast to the weight dtype (f32 here).
            x = x.mul_scalar((c.hidden_size as f64).sqrt() as f32);
        }
        let global = AttnContext::new(&self.inv_freq, past, t, None, &pads, &device);
        let local = c
            .sliding_window
            .filter(|_| c.layer_types.contains(&AttnKind::Sliding))
            .map(|w| {
                let freqs = self.inv_freq_local.as_deref().unwrap_or(&self.inv_freq);
                AttnContext::new(freqs, past, t, Some(w), &pads, &device)
            });
        let mut caches: Option<&mut KvCache> = cache;
        if let Some(c) = caches.as_deref_mut() {
            c.layers.resize(self.layers.len(), LayerCache::default());
        }
        for (l, block) in self.layers.iter().enumerate() {
            let layer_cache = caches.as_deref_mut().map(|c| &mut c.layers[l]);
            let ctx = match (c.layer_kind(l), &local) {
                (AttnKind::Sliding, Some(local)) => local,
                _ => &global,
            };
            x = block.forward(x, ctx, layer_cache);
        }
        if let Some(c) = caches {
            c.len += t;
            c.rows = b;
            if past == 0 {
                c.pads = if pads.iter().all(|&p| p == 0) {
                    Vec::new()
                } else {
                    pads
                };
            }
        }
        Ok(self.norm.forward(x))
    }

    /// The output head `[V, hidden]` (the embedding when tied).
    pub fn head(&self) -> &VocabMatrix {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    /// Final hidden states `[N, hidden]` → logits `[N, V]`, softcapped when the model says so.
    pub fn logits_of(&self, hidden: Tensor<2>) -> Tensor<2> {
        softcap(
            self.head().matmul_t(hidden),
            self.config.final_logit_softcapping,
        )
    }

    /// Logits `[V]` of the last position of one sequence; with `cache`, positions continue after
    /// it. Generation needs only this row, so the head never runs on a `[T, V]` block.
    pub fn next_token_logits(
        &self,
        ids: &[u32],
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor<1>, ModelError> {
        let h = self.hidden_states(&[ids.to_vec()], cache)?;
        let [_, t, d] = h.dims();
        let last = h.slice([0..1, t - 1..t, 0..d]).reshape([1, d]);
        Ok(self.logits_of(last).reshape([self.config.vocab_size]))
    }

    /// Logits `[B, V]` of the last position of each row, for batched generation.
    ///
    /// On an empty `cache` the rows may have different (non-zero) lengths: they are left-padded
    /// to the longest with token 0, and each row keeps the RoPE positions and attention of its
    /// own unpadded run (the cache remembers the padding). On a filled cache the rows must have
    /// one equal length (one new token each, typically) and match the cache's row count; use
    /// [`KvCache::retain_rows`] to drop finished rows first.
    pub fn next_token_logits_batch(
        &self,
        ids: &[Vec<u32>],
        cache: &mut KvCache,
    ) -> Result<Tensor<2>, ModelError> {
        let h = if cache.len == 0 {
            let longest = ids.iter().map(Vec::len).max().unwrap_or(0);
            if ids.iter().any(Vec::is_empty) {
                return Err(ModelError::Input("an empty prompt in the batch".into()));
            }
            let pads: Vec<usize> = ids.iter().map(|r| longest - r.len()).collect();
            let padded: Vec<Vec<u32>> = ids
                .iter()
                .zip(&pads)
                .map(|(r, &p)| {
                    let mut row = vec![0u32; p];
                    row.extend_from_slice(r);
                    row
                })
                .collect();
            self.hidden_states_padded(&padded, &pads, Some(cache))?
        } else {
            self.hidden_states(ids, Some(cache))?
        };
        let [b, t, d] = h.dims();
        let last = h.slice([0..b, t - 1..t, 0..d]).reshape([b, d]);
        Ok(self.logits_of(last))
    }

    /// Token ids `[B, T]` (host) → logits `[B, T, V]`; with `cache`, positions continue after it.
    pub fn forward(
        &self,
        ids: &[Vec<u32>],
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor<3>, ModelError> {
        let x = self.hidden_states(ids, cache)?;
        let [b, t, h] = x.dims();
        Ok(self
            .logits_of(x.reshape([b * t, h]))
            .reshape([b, t, self.config.vocab_size]))
    }
}

/// `cap·tanh(logits/cap)` when `cap` is set (Gemma's `final_logit_softcapping`), else `logits`.
pub fn softcap(logits: Tensor<2>, cap: Option<f64>) -> Tensor<2> {
    match cap {
        Some(cap) => logits.div_scalar(cap).tanh().mul_scalar(cap),
        None => logits,
    }
}

/// RoPE inverse frequencies of a config's global layers and, when they differ, its sliding layers.
pub fn config_inv_freq(c: &DecoderConfig) -> (Vec<f32>, Option<Vec<f32>>) {
    let global = inv_freq(c.head_dim, c.rope_theta, c.rope_scaling.as_ref());
    let local = c
        .rope_local_theta
        .filter(|_| c.layer_types.contains(&AttnKind::Sliding))
        .map(|theta| inv_freq(c.head_dim, theta, None));
    (global, local)
}
