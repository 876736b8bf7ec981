//! Qwen3 (`Qwen3ForCausalLM`): per-head RMSNorm of queries and keys before RoPE, explicit
//! `head_dim`, no biases. GGUF `qwen3`, no Q/K permutation.

use super::{GgufMeta, GgufOut, Json, qwen2, read_gguf_common, read_hf_common};
use crate::io::LoadError;
use crate::io::gguf_meta::HfMetaError;
use crate::model::config::DecoderConfig;
use serde_json::{Value, json};

/// `config.json` → config (`attention_bias: true` would put a bias on o too: refused).
pub(super) fn read_hf(j: &Json) -> Result<DecoderConfig, LoadError> {
    j.require("hidden_act", &["silu"])?;
    j.require("attention_bias", &["false"])?;
    let mut c = read_hf_common(j, super::Arch::Qwen3)?;
    qwen2::with_window(j, &mut c)?;
    c.qk_norm = true;
    Ok(c)
}

/// `qwen3.*` hyper-parameters.
pub(super) fn read_gguf(m: &GgufMeta) -> Result<DecoderConfig, LoadError> {
    let mut c = read_gguf_common(m, super::Arch::Qwen3)?;
    c.qk_norm = true;
    Ok(c)
}

/// llama.cpp's `Qwen3Model` writes what `Qwen2Model` writes (rerankers aside).
pub(super) fn write_gguf(c: &DecoderConfig, w: &mut GgufOut) -> Result<(), HfMetaError> {
    qwen2::write_gguf(c, w)
}

/// `config.json` for `Qwen3ForCausalLM`.
pub(super) fn hf_config(c: &DecoderConfig) -> Value {
    let mut v = qwen2::hf_config_qwen(c, "Qwen3ForCausalLM", "qwen3");
    v["attention_bias"] = json!(false);
    v
}
