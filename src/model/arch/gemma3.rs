//! Gemma 3 text (`Gemma3ForCausalLM`, `model_type: gemma3_text`; GGUF `gemma3`): (1+w) RMSNorm,
//! four norms per block (sandwich), per-head q/k norm, GELU-tanh gated MLP, embeddings × √hidden,
//! `query_pre_attn_scalar`, sliding-window layers with their own RoPE base (5 local : 1 global
//! unless `layer_types` says otherwise), tied head, optional final-logit softcapping.
//!
//! GGUF files carry neither the layer pattern nor `query_pre_attn_scalar`; they are read as
//! llama.cpp's `load_hparams` hard-codes them for `LLM_ARCH_GEMMA3`: pattern 6, attention scale
//! `1/√head_dim` (`1/√(hidden/heads)` for the 62-layer 27B). The local RoPE base is
//! `gemma3.rope.freq_base_swa` where newer converters write it, else llama.cpp's 10 000.
//! llama.cpp's converter stores every norm gain as `1 + w` (undone on load, see `gguf_norm_shift`).

use super::{GgufMeta, GgufOut, Json, read_gguf_common, read_hf_common};
use crate::io::LoadError;
use crate::io::gguf_meta::HfMetaError;
use crate::model::config::{Activation, AttnKind, DecoderConfig, NormStyle};
use crate::model::roles::Role;
use serde_json::{Value, json};

/// transformers' `Gemma3TextConfig` default `sliding_window_pattern`, and llama.cpp's.
const PATTERN: usize = 6;
/// transformers' default `rope_local_base_freq`, and llama.cpp's `rope_freq_base_train_swa`.
const LOCAL_ROPE_BASE: f64 = 10_000.0;

/// Gemma's HF names that differ from the Llama convention.
pub(super) fn hf_name(r: Role) -> Option<&'static str> {
    match r {
        Role::FfnNorm => Some("pre_feedforward_layernorm.weight"),
        _ => None,
    }
}

/// Switch on everything Gemma 3 blocks have.
fn gemma_parts(c: &mut DecoderConfig) {
    c.norm_style = NormStyle::OnePlusWeight;
    c.activation = Activation::GeluTanh;
    c.qk_norm = true;
    c.sandwich_norms = true;
    c.scale_embeddings = true;
    c.rope_local_theta = Some(LOCAL_ROPE_BASE);
}

/// Layer `l` is global every `pattern`-th layer, local otherwise.
fn pattern_layers(n: usize, pattern: usize) -> Vec<AttnKind> {
    (0..n)
        .map(|l| {
            if (l + 1) % pattern == 0 {
                AttnKind::Global
            } else {
                AttnKind::Sliding
            }
        })
        .collect()
}

/// `config.json` → config. `head_dim` is required: transformers' default (256) is rarely
/// hidden/heads, so guessing would silently build another model.
pub(super) fn read_hf(j: &Json) -> Result<DecoderConfig, LoadError> {
    for key in ["hidden_activation", "hidden_act"] {
        j.require(key, &["gelu_pytorch_tanh"])?;
    }
    j.require("attention_bias", &["false"])?;
    j.require("use_bidirectional_attention", &["false"])?;
    if j.get("attn_logit_softcapping").is_some() {
        return Err(j.bad("`attn_logit_softcapping` is not supported (Gemma 3 has none)".into()));
    }
    j.uint("head_dim")?;
    let mut c = read_hf_common(j, super::Arch::Gemma3)?;
    gemma_parts(&mut c);
    c.tie_word_embeddings = j.opt_bool("tie_word_embeddings")?.unwrap_or(true);
    c.max_position_embeddings = j.opt_uint("max_position_embeddings")?.unwrap_or(131_072);
    c.query_pre_attn_scalar = Some(j.opt_f64("query_pre_attn_scalar")?.unwrap_or(256.0));
    c.final_logit_softcapping = j.opt_f64("final_logit_softcapping")?;
    c.sliding_window = Some(j.opt_uint("sliding_window")?.unwrap_or(4096));
    let (local_theta, local_scaling) = j.rope("sliding_attention")?;
    if local_scaling.is_some() {
        return Err(j.bad("RoPE scaling on sliding layers is not supported".into()));
    }
    if let Some(t) = j.opt_f64("rope_local_base_freq")?.or(local_theta) {
        c.rope_local_theta = Some(t);
    }
    c.layer_types = match j.layer_types()? {
        Some(t) => t,
        None => {
            let pattern = match j.opt_uint("sliding_window_pattern")? {
                Some(p) => p,
                None => j.opt_uint("_sliding_window_pattern")?.unwrap_or(PATTERN),
            };
            pattern_layers(c.num_hidden_layers, pattern)
        }
    };
    Ok(c)
}

/// `gemma3.*` hyper-parameters plus llama.cpp's hard-coded Gemma 3 settings.
pub(super) fn read_gguf(m: &GgufMeta) -> Result<DecoderConfig, LoadError> {
    let mut c = read_gguf_common(m, super::Arch::Gemma3)?;
    gemma_parts(&mut c);
    c.rms_norm_eps = m
        .opt_f64("attention.layer_norm_rms_epsilon")?
        .unwrap_or(1e-6);
    c.sliding_window = Some(m.uint("attention.sliding_window")?);
    c.layer_types = pattern_layers(c.num_hidden_layers, PATTERN);
    if let Some(base) = m.opt_f64("rope.freq_base_swa")? {
        c.rope_local_theta = Some(base);
    }
    let scalar = if c.num_hidden_layers == 62 {
        c.hidden_size / c.num_attention_heads
    } else {
        c.head_dim
    };
    c.query_pre_attn_scalar = Some(scalar as f64);
    c.final_logit_softcapping = m.opt_f64("final_logit_softcapping")?;
    Ok(c)
}

/// llama.cpp's `Gemma3Model.set_gguf_parameters` after the common keys: it re-adds context
/// length, head count, epsilon, key/value length and RoPE base (in place when the common pass
/// wrote them, else appended), then the final softcap (when non-zero), the sliding window
/// (unless `sliding_window_pattern` is 1) and the KV head count. No pattern key and no
/// `query_pre_attn_scalar`: llama.cpp hard-codes both (see [`read_gguf`]).
pub(super) fn write_gguf(c: &DecoderConfig, w: &mut GgufOut) -> Result<(), HfMetaError> {
    w.u32("context_length", c.max_position_embeddings)?;
    w.u32("attention.head_count", c.num_attention_heads)?;
    w.f32("attention.layer_norm_rms_epsilon", c.rms_norm_eps);
    w.u32("attention.key_length", c.head_dim)?;
    w.u32("attention.value_length", c.head_dim)?;
    w.f32("rope.freq_base", c.rope_theta);
    if let Some(cap) = c.final_logit_softcapping.filter(|&x| x != 0.0) {
        w.f32("final_logit_softcapping", cap);
    }
    let pattern_one = w
        .raw
        .find(&["sliding_window_pattern"])
        .and_then(Value::as_u64)
        == Some(1);
    if !pattern_one && let Some(win) = c.sliding_window {
        w.u32("attention.sliding_window", win)?;
    }
    w.u32("attention.head_count_kv", c.num_key_value_heads)
}

/// `config.json` for `Gemma3ForCausalLM`.
pub(super) fn hf_config(c: &DecoderConfig) -> Value {
    let mut v = super::hf_config_common(c, "Gemma3ForCausalLM", "gemma3_text");
    v["hidden_activation"] = json!("gelu_pytorch_tanh");
    v["attention_bias"] = json!(false);
    v["query_pre_attn_scalar"] = json!(c.query_pre_attn_scalar.map(super::config_number));
    v["sliding_window"] = json!(c.sliding_window);
    v["layer_types"] = super::layer_types_json(c);
    // transformers 5 writes RoPE per layer kind.
    if let Some(o) = v.as_object_mut() {
        o.remove("rope_theta");
    }
    v["rope_parameters"] = json!({
        "full_attention": { "rope_theta": c.rope_theta, "rope_type": "default" },
        "sliding_attention": {
            "rope_theta": c.rope_local_theta.unwrap_or(LOCAL_ROPE_BASE),
            "rope_type": "default",
        },
    });
    v["final_logit_softcapping"] = json!(c.final_logit_softcapping);
    v["attn_logit_softcapping"] = Value::Null;
    v
}
