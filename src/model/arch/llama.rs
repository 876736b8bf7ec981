//! Llama (`LlamaForCausalLM`; SmolLM2, TinyLlama, Llama 3.x): the plain decoder every other
//! architecture starts from. GGUF `llama`, whose Q/K rows llama.cpp's converter permutes.

use super::{GgufMeta, GgufOut, Json, hf_config_common, read_gguf_common, read_hf_common};
use crate::io::LoadError;
use crate::io::gguf_meta::HfMetaError;
use crate::model::config::DecoderConfig;
use serde_json::{Value, json};

/// `config.json` → config; Llama options wgtune does not implement are refused by name.
pub(super) fn read_hf(j: &Json) -> Result<DecoderConfig, LoadError> {
    require_plain(j)?;
    read_hf_common(j, super::Arch::Llama)
}

/// The options a plain Llama-style block must leave at their defaults.
pub(super) fn require_plain(j: &Json) -> Result<(), LoadError> {
    j.require("hidden_act", &["silu"])?;
    j.require("attention_bias", &["false"])?;
    j.require("mlp_bias", &["false"])
}

/// `llama.*` hyper-parameters (also what a converted Mistral carries).
pub(super) fn read_gguf(m: &GgufMeta) -> Result<DecoderConfig, LoadError> {
    read_gguf_common(m, super::Arch::Llama)
}

/// What llama.cpp's `LlamaModel.set_gguf_parameters` adds to the common keys (also for Mistral):
/// `vocab_size` and `rope.dimension_count`. Llama-3 RoPE scaling is no key but a `rope_freqs`
/// tensor (`crate::io::gguf_meta::llama3_rope_freqs`).
pub(super) fn write_gguf(c: &DecoderConfig, w: &mut GgufOut) -> Result<(), HfMetaError> {
    w.u32("vocab_size", c.vocab_size)?;
    w.u32("rope.dimension_count", c.head_dim)
}

/// `config.json` for `LlamaForCausalLM`.
pub(super) fn hf_config(c: &DecoderConfig) -> Value {
    let mut v = hf_config_common(c, "LlamaForCausalLM", "llama");
    v["hidden_act"] = json!("silu");
    v["attention_bias"] = json!(false);
    v["mlp_bias"] = json!(false);
    if let Some(s) = &c.rope_scaling {
        v["rope_scaling"] = json!({
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position_embeddings,
        });
    }
    v
}
