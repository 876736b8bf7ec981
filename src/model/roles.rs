//! Tensor roles and their names. A role is what a tensor does (`AttnQ`, `FfnNorm`, ...); the
//! HF and GGUF names of each role are spelled here and nowhere else. HF names follow the Llama
//! convention; an architecture that names a role differently overrides it in its `arch/` file
//! (Gemma 3 calls the pre-MLP norm `pre_feedforward_layernorm`).

/// What a weight does in the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Token embedding `[V, hidden]`.
    TokenEmbd,
    /// Final norm.
    OutputNorm,
    /// Untied output head `[V, hidden]`.
    Output,
    /// Norm before attention.
    AttnNorm,
    /// Query projection.
    AttnQ,
    /// Key projection.
    AttnK,
    /// Value projection.
    AttnV,
    /// Output projection.
    AttnO,
    /// Query bias (Qwen2).
    AttnQBias,
    /// Key bias (Qwen2).
    AttnKBias,
    /// Value bias (Qwen2).
    AttnVBias,
    /// Per-head query RMSNorm (Qwen3, Gemma 3).
    AttnQNorm,
    /// Per-head key RMSNorm (Qwen3, Gemma 3).
    AttnKNorm,
    /// Norm on the attention output before the residual add (Gemma 3).
    AttnPostNorm,
    /// Norm before the MLP.
    FfnNorm,
    /// MLP gate projection.
    FfnGate,
    /// MLP up projection.
    FfnUp,
    /// MLP down projection.
    FfnDown,
    /// Norm on the MLP output before the residual add (Gemma 3).
    FfnPostNorm,
}

impl Role {
    /// Whether the role is a per-block tensor (`model.layers.N.…` / `blk.N.…`).
    pub fn in_block(self) -> bool {
        !matches!(self, Role::TokenEmbd | Role::OutputNorm | Role::Output)
    }

    /// Whether the role is an RMSNorm gain.
    pub fn is_norm(self) -> bool {
        use Role::*;
        matches!(
            self,
            OutputNorm | AttnNorm | AttnQNorm | AttnKNorm | AttnPostNorm | FfnNorm | FfnPostNorm
        )
    }

    /// Whether the role is a vector (a norm gain or a bias) rather than a matrix.
    pub fn is_vector(self) -> bool {
        use Role::*;
        self.is_norm() || matches!(self, AttnQBias | AttnKBias | AttnVBias)
    }

    /// The HF name in the Llama convention: the whole name for model-level roles, the part after
    /// `model.layers.N.` for block roles. Sandwich norms carry Gemma's names (no other family has them).
    pub fn hf_default(self) -> &'static str {
        use Role::*;
        match self {
            TokenEmbd => "model.embed_tokens.weight",
            OutputNorm => "model.norm.weight",
            Output => "lm_head.weight",
            AttnNorm => "input_layernorm.weight",
            AttnQ => "self_attn.q_proj.weight",
            AttnK => "self_attn.k_proj.weight",
            AttnV => "self_attn.v_proj.weight",
            AttnO => "self_attn.o_proj.weight",
            AttnQBias => "self_attn.q_proj.bias",
            AttnKBias => "self_attn.k_proj.bias",
            AttnVBias => "self_attn.v_proj.bias",
            AttnQNorm => "self_attn.q_norm.weight",
            AttnKNorm => "self_attn.k_norm.weight",
            AttnPostNorm => "post_attention_layernorm.weight",
            FfnNorm => "post_attention_layernorm.weight",
            FfnGate => "mlp.gate_proj.weight",
            FfnUp => "mlp.up_proj.weight",
            FfnDown => "mlp.down_proj.weight",
            FfnPostNorm => "post_feedforward_layernorm.weight",
        }
    }

    /// llama.cpp's GGUF name (the same for every architecture, as in its `LLM_TENSOR_NAMES`):
    /// the whole name for model-level roles, the part after `blk.N.` for block roles.
    pub fn gguf(self) -> &'static str {
        use Role::*;
        match self {
            TokenEmbd => "token_embd.weight",
            OutputNorm => "output_norm.weight",
            Output => "output.weight",
            AttnNorm => "attn_norm.weight",
            AttnQ => "attn_q.weight",
            AttnK => "attn_k.weight",
            AttnV => "attn_v.weight",
            AttnO => "attn_output.weight",
            AttnQBias => "attn_q.bias",
            AttnKBias => "attn_k.bias",
            AttnVBias => "attn_v.bias",
            AttnQNorm => "attn_q_norm.weight",
            AttnKNorm => "attn_k_norm.weight",
            AttnPostNorm => "post_attention_norm.weight",
            FfnNorm => "ffn_norm.weight",
            FfnGate => "ffn_gate.weight",
            FfnUp => "ffn_up.weight",
            FfnDown => "ffn_down.weight",
            FfnPostNorm => "post_ffw_norm.weight",
        }
    }

    /// Every role, for reverse lookups.
    pub const ALL: [Role; 19] = {
        use Role::*;
        [
            TokenEmbd,
            OutputNorm,
            Output,
            AttnNorm,
            AttnQ,
            AttnK,
            AttnV,
            AttnO,
            AttnQBias,
            AttnKBias,
            AttnVBias,
            AttnQNorm,
            AttnKNorm,
            AttnPostNorm,
            FfnNorm,
            FfnGate,
            FfnUp,
            FfnDown,
            FfnPostNorm,
        ]
    };

    /// The GGUF name of a role, with its block prefix (`blk.3.attn_q.weight`).
    pub fn gguf_name(self, layer: Option<usize>) -> String {
        match layer {
            Some(l) if self.in_block() => format!("blk.{l}.{}", self.gguf()),
            _ => self.gguf().to_string(),
        }
    }

    /// The role and layer of a GGUF tensor name, if it is one the decoder uses.
    pub fn from_gguf(name: &str) -> Option<(Role, Option<usize>)> {
        if let Some(r) = Role::ALL
            .into_iter()
            .find(|r| !r.in_block() && r.gguf() == name)
        {
            return Some((r, None));
        }
        let (layer, tail) = name.strip_prefix("blk.")?.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let r = Role::ALL
            .into_iter()
            .find(|r| r.in_block() && r.gguf() == tail)?;
        Some((r, Some(layer)))
    }
}
