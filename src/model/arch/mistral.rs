//! Mistral (`MistralForCausalLM`): a Llama whose layers may all attend through a sliding window.
//! llama.cpp converts it to a `llama` GGUF without the window, so GGUFs read back as Llama.

use super::{Json, llama};
use crate::io::LoadError;
use crate::model::config::{AttnKind, DecoderConfig};
use serde_json::{Value, json};

/// `config.json` → config: Llama plus `sliding_window` (null = global attention everywhere).
pub(super) fn read_hf(j: &Json) -> Result<DecoderConfig, LoadError> {
    llama::require_plain(j)?;
    let mut c = super::read_hf_common(j, super::Arch::Mistral)?;
    c.sliding_window = j.opt_uint("sliding_window")?;
    if c.sliding_window.is_some() {
        c.layer_types = vec![AttnKind::Sliding; c.num_hidden_layers];
    }
    Ok(c)
}

/// `config.json` for `MistralForCausalLM`.
pub(super) fn hf_config(c: &DecoderConfig) -> Value {
    let mut v = super::hf_config_common(c, "MistralForCausalLM", "mistral");
    v["hidden_act"] = json!("silu");
    v["sliding_window"] = json!(c.sliding_window);
    v
}
