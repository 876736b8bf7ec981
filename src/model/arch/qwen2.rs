//! Qwen2 / Qwen2.5 (`Qwen2ForCausalLM`): biases on q/k/v (never on o), tied or untied head,
//! optional sliding window on the layers from `max_window_layers` on. GGUF `qwen2`, no Q/K
//! permutation.

use super::{GgufMeta, GgufOut, Json, read_gguf_common, read_hf_common};
use crate::io::LoadError;
use crate::io::gguf_meta::HfMetaError;
use crate::model::config::{AttnKind, DecoderConfig};
use serde_json::{Value, json};

/// `config.json` → config.
pub(super) fn read_hf(j: &Json) -> Result<DecoderConfig, LoadError> {
    let mut c = read_hf_common(j, super::Arch::Qwen2)?;
    with_window(j, &mut c)?;
    j.require("hidden_act", &["silu"])?;
    c.qkv_bias = true;
    Ok(c)
}

/// Qwen's sliding window: `layer_types` when listed, else (as transformers' Qwen2/Qwen3 configs)
/// sliding from layer `max_window_layers` on when `use_sliding_window` is set.
pub(super) fn with_window(j: &Json, c: &mut DecoderConfig) -> Result<(), LoadError> {
    let use_window = j.opt_bool("use_sliding_window")?.unwrap_or(false);
    c.sliding_window = j.opt_uint("sliding_window")?.filter(|_| use_window);
    c.layer_types = match j.layer_types()? {
        Some(t) => t,
        None if c.sliding_window.is_some() => {
            let first = j.opt_uint("max_window_layers")?.unwrap_or(0);
            (0..c.num_hidden_layers)
                .map(|l| {
                    if l >= first {
                        AttnKind::Sliding
                    } else {
                        AttnKind::Global
                    }
                })
                .collect()
        }
        None => Vec::new(),
    };
    if c.sliding_window.is_none() {
        c.layer_types.clear();
    }
    Ok(())
}

/// `qwen2.*` hyper-parameters.
pub(super) fn read_gguf(m: &GgufMeta) -> Result<DecoderConfig, LoadError> {
    let mut c = read_gguf_common(m, super::Arch::Qwen2)?;
    c.qkv_bias = true;
    Ok(c)
}

/// llama.cpp's `Qwen2Model.set_gguf_parameters` adds nothing to the common keys for a causal LM
/// (its pooling type is for embedding models). The window is not written: llama.cpp's `qwen2`
/// has none.
pub(super) fn write_gguf(_c: &DecoderConfig, _w: &mut GgufOut) -> Result<(), HfMetaError> {
    Ok(())
}

/// The Qwen `config.json` fields both generations share.
pub(super) fn hf_config_qwen(c: &DecoderConfig, class: &str, model_type: &str) -> Value {
    let mut v = super::hf_config_common(c, class, model_type);
    v["hidden_act"] = json!("silu");
    v["use_sliding_window"] = json!(c.sliding_window.is_some());
    v["sliding_window"] = json!(c.sliding_window);
    if c.sliding_window.is_some() {
        v["layer_types"] = super::layer_types_json(c);
    }
    v
}

/// `config.json` for `Qwen2ForCausalLM` (whose config class has no `head_dim`: written only
/// when it is not hidden/heads, which Qwen2's attention reads through `getattr`).
pub(super) fn hf_config(c: &DecoderConfig) -> Value {
    let mut v = hf_config_qwen(c, "Qwen2ForCausalLM", "qwen2");
    if c.head_dim * c.num_attention_heads == c.hidden_size
        && let Some(o) = v.as_object_mut()
    {
        o.remove("head_dim");
    }
    v
}
