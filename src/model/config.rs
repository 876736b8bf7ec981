//! [`DecoderConfig`]: the hyper-parameters and feature switches of every supported decoder
//! (Llama, Mistral, Qwen2/2.5, Qwen3, Gemma 3). The forward pass in [`super::decoder`] reads only
//! this struct; what each architecture sets lives in [`super::arch`].

use super::arch::Arch;
use super::roles::Role;
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

/// How an RMSNorm applies its gain to the normalised `x̂`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum NormStyle {
    /// `w · x̂` (Llama, Mistral, Qwen).
    #[default]
    Weight,
    /// `(1 + w) · x̂`, computed in f32 (Gemma).
    OnePlusWeight,
}

/// The gated MLP's activation: `down(act(gate(x)) · up(x))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Activation {
    /// SiLU (SwiGLU; Llama, Mistral, Qwen).
    #[default]
    Silu,
    /// GELU with the tanh approximation (GeGLU; Gemma's `gelu_pytorch_tanh`).
    GeluTanh,
}

/// What one layer's attention may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum AttnKind {
    /// Every earlier position (causal).
    #[default]
    Global,
    /// Only the last `sliding_window` positions (key `j` is visible to query `i` iff
    /// `0 <= i - j < window`), with the local RoPE base when the model has one.
    Sliding,
}

/// Model hyper-parameters, named as in HF `config.json`, plus the optional parts that tell the
/// architectures apart. Fields marked `serde(default)` read as Llama's when absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecoderConfig {
    /// Which architecture the files declared (names, quirks and the config writer).
    #[serde(default)]
    pub arch: Arch,
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
    /// RoPE base of global layers.
    pub rope_theta: f64,
    /// Llama-3 RoPE scaling of global layers, if any.
    pub rope_scaling: Option<RopeScaling>,
    /// Whether `lm_head` is the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Longest sequence the positions are defined for.
    pub max_position_embeddings: usize,
    /// Beginning-of-sequence id, if the model has one.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence ids as the config names them (generation stops on any).
    pub eos_token_ids: Vec<u32>,
    /// Further ids that end generation without being the config's EOS: the family's end-of-turn
    /// token (Gemma's `<end_of_turn>`) and a GGUF's `eot_token_id`. Not written back to files.
    #[serde(default)]
    pub stop_token_ids: Vec<u32>,
    /// Padding id, when the config names one (Qwen's embedding uses it as `padding_idx`).
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    /// Gain style of every RMSNorm.
    #[serde(default)]
    pub norm_style: NormStyle,
    /// MLP activation.
    #[serde(default)]
    pub activation: Activation,
    /// Bias on the q/k/v projections (Qwen2); never on o.
    #[serde(default)]
    pub qkv_bias: bool,
    /// Per-head RMSNorm of queries and keys before RoPE (Qwen3, Gemma 3).
    #[serde(default)]
    pub qk_norm: bool,
    /// Extra norms after attention and after the MLP, before each residual add (Gemma 3).
    #[serde(default)]
    pub sandwich_norms: bool,
    /// Attention kind of each layer (empty = all global).
    #[serde(default)]
    pub layer_types: Vec<AttnKind>,
    /// Window of sliding layers.
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// RoPE base of sliding layers (Gemma 3: 10 000, no scaling); `None` = the global one.
    #[serde(default)]
    pub rope_local_theta: Option<f64>,
    /// `query_pre_attn_scalar`: scores are scaled by its inverse square root (default head_dim).
    #[serde(default)]
    pub query_pre_attn_scalar: Option<f64>,
    /// Multiply embeddings by √hidden (Gemma).
    #[serde(default)]
    pub scale_embeddings: bool,
    /// `logits = cap · tanh(logits / cap)` when set (Gemma's `final_logit_softcapping`).
    #[serde(default)]
    pub final_logit_softcapping: Option<f64>,
}

impl DecoderConfig {
    /// A plain Llama with these sizes (every optional part off): the starting point of each
    /// architecture's reader and of the benchmark's random models.
    #[allow(clippy::too_many_arguments)]
    pub fn llama(
        vocab_size: usize,
        hidden_size: usize,
        intermediate_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        num_key_value_heads: usize,
        head_dim: usize,
    ) -> Self {
        Self {
            arch: Arch::Llama,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: None,
            tie_word_embeddings: false,
            max_position_embeddings: 2048,
            bos_token_id: None,
            eos_token_ids: Vec::new(),
            stop_token_ids: Vec::new(),
            pad_token_id: None,
            norm_style: NormStyle::Weight,
            activation: Activation::Silu,
            qkv_bias: false,
            qk_norm: false,
            sandwich_norms: false,
            layer_types: Vec::new(),
            sliding_window: None,
            rope_local_theta: None,
            query_pre_attn_scalar: None,
            scale_embeddings: false,
            final_logit_softcapping: None,
        }
    }

    /// Whether generating `id` ends the sequence.
    pub fn is_stop(&self, id: u32) -> bool {
        self.eos_token_ids.contains(&id) || self.stop_token_ids.contains(&id)
    }

    /// Attention kind of layer `l`.
    pub fn layer_kind(&self, l: usize) -> AttnKind {
        self.layer_types.get(l).copied().unwrap_or_default()
    }

    /// The window layer `l` attends through, if it is a sliding layer.
    pub fn window(&self, l: usize) -> Option<usize> {
        match self.layer_kind(l) {
            AttnKind::Global => None,
            AttnKind::Sliding => self.sliding_window,
        }
    }

    /// Factor on `q·kᵀ`: `query_pre_attn_scalar^-½`, by default `head_dim^-½`.
    pub fn attention_scale(&self) -> f64 {
        self.query_pre_attn_scalar
            .unwrap_or(self.head_dim as f64)
            .powf(-0.5)
    }

    /// The roles of one decoder block this configuration has, in file order.
    pub fn block_roles(&self) -> Vec<Role> {
        use Role::*;
        let mut roles = vec![AttnNorm, AttnQ, AttnK, AttnV, AttnO];
        if self.qkv_bias {
            roles.extend([AttnQBias, AttnKBias, AttnVBias]);
        }
        if self.qk_norm {
            roles.extend([AttnQNorm, AttnKNorm]);
        }
        if self.sandwich_norms {
            roles.push(AttnPostNorm);
        }
        roles.extend([FfnNorm, FfnGate, FfnUp, FfnDown]);
        if self.sandwich_norms {
            roles.push(FfnPostNorm);
        }
        roles
    }

    /// Shape of a block tensor of role `r` (HF layout, `[out, in]` for matrices). Head products
    /// saturate, so an unvalidated config gives a shape no file holds rather than a panic.
    pub fn block_shape(&self, r: Role) -> Vec<usize> {
        use Role::*;
        let (h, i, d) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let q = self.num_attention_heads.saturating_mul(d);
        let kv = self.num_key_value_heads.saturating_mul(d);
        match r {
            AttnNorm | AttnPostNorm | FfnNorm | FfnPostNorm | OutputNorm => vec![h],
            AttnQ => vec![q, h],
            AttnK | AttnV => vec![kv, h],
            AttnO => vec![h, q],
            AttnQBias => vec![q],
            AttnKBias | AttnVBias => vec![kv],
            AttnQNorm | AttnKNorm => vec![d],
            FfnGate | FfnUp => vec![i, h],
            FfnDown => vec![h, i],
            TokenEmbd | Output => vec![self.vocab_size, h],
        }
    }

    /// Total parameter count (tied head counted once); saturates where a config that was never
    /// validated overflows.
    pub fn num_parameters(&self) -> usize {
        self.checked_num_parameters().unwrap_or(usize::MAX)
    }

    /// Total parameter count, or `None` when it overflows (a hostile config); computed without
    /// allocating.
    pub fn checked_num_parameters(&self) -> Option<usize> {
        let numel = |r: Role| {
            self.block_shape(r)
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
        };
        let block = self
            .block_roles()
            .into_iter()
            .try_fold(0usize, |a, r| a.checked_add(numel(r)?))?;
        let embed = numel(Role::TokenEmbd)?;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        block
            .checked_mul(self.num_hidden_layers)?
            .checked_add(embed)?
            .checked_add(head)?
            .checked_add(self.hidden_size)
    }

    /// Every weight the model needs, with its HF name and shape.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = vec![(
            self.arch.hf_name(Role::TokenEmbd, None),
            self.block_shape(Role::TokenEmbd),
        )];
        let roles = self.block_roles();
        for l in 0..self.num_hidden_layers {
            out.extend(
                roles
                    .iter()
                    .map(|&r| (self.arch.hf_name(r, Some(l)), self.block_shape(r))),
            );
        }
        out.push((
            self.arch.hf_name(Role::OutputNorm, None),
            self.block_shape(Role::OutputNorm),
        ));
        if !self.tie_word_embeddings {
            out.push((
                self.arch.hf_name(Role::Output, None),
                self.block_shape(Role::Output),
            ));
        }
        out
    }

    /// Short list of the optional parts this model uses, for `inspect` and the model panels
    /// (e.g. `q/k norm, sliding window 512 (15 of 18 layers), GELU-tanh`).
    pub fn features(&self) -> Vec<String> {
        let mut f = Vec::new();
        if self.num_key_value_heads < self.num_attention_heads {
            f.push(format!(
                "GQA {}:{}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.qkv_bias {
            f.push("q/k/v bias".into());
        }
        if self.qk_norm {
            f.push("q/k norm".into());
        }
        if self.sandwich_norms {
            f.push("sandwich norms".into());
        }
        if self.norm_style == NormStyle::OnePlusWeight {
            f.push("(1+w) RMSNorm".into());
        }
        if self.activation == Activation::GeluTanh {
            f.push("GELU-tanh".into());
        }
        let sliding = (0..self.num_hidden_layers)
            .filter(|&l| self.window(l).is_some())
            .count();
        if let (Some(w), true) = (self.sliding_window, sliding > 0) {
            f.push(format!(
                "sliding window {w} ({sliding} of {} layers)",
                self.num_hidden_layers
            ));
        }
        if self.rope_scaling.is_some() {
            f.push("llama3 RoPE scaling".into());
        }
        if self.tie_word_embeddings {
            f.push("tied head".into());
        }
        if let Some(c) = self.final_logit_softcapping {
            f.push(format!("logit softcap {c}"));
        }
        f
    }
}
