//! HF model folders: `config.json` (Llama family, `rope_theta` or `rope_parameters`, Llama-3
//! `rope_scaling`), `model.safetensors` or a sharded `model.safetensors.index.json`.

use super::{FileSource, LoadError, read_json, read_required, safetensors as st};
use crate::model::llama::{LlamaConfig, RopeScaling};
use crate::model::weights::{Checkpoint, HostData, HostTensor};
use serde_json::Value;
use std::collections::BTreeMap;

/// Parse an HF `config.json` value into a validated [`LlamaConfig`]; `file` names it in errors.
pub fn parse_config(v: &Value, file: &str) -> Result<LlamaConfig, LoadError> {
    let bad = |msg: String| LoadError::invalid(file, msg);
    let arch = v
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str)
        .or_else(|| v.get("model_type").and_then(Value::as_str))
        .unwrap_or("<none>");
    if !matches!(arch, "LlamaForCausalLM" | "llama") {
        return Err(LoadError::Architecture {
            file: file.into(),
            arch: arch.into(),
        });
    }
    let uint = |key: &str| -> Result<usize, LoadError> {
        match v.get(key).and_then(Value::as_u64) {
            Some(n) if n > 0 => Ok(n as usize),
            Some(_) => Err(bad(format!("`{key}` must be a positive integer"))),
            None => Err(bad(format!("missing or non-integer `{key}`"))),
        }
    };
    let opt_uint = |key: &str| -> Result<Option<usize>, LoadError> {
        match v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => uint(key).map(Some),
        }
    };
    for (key, want) in [
        ("hidden_act", "silu"),
        ("attention_bias", "false"),
        ("mlp_bias", "false"),
    ] {
        if let Some(val) = v.get(key) {
            let s = val.as_str().map(str::to_string).unwrap_or(val.to_string());
            if s != want {
                return Err(bad(format!("`{key}` = {s} is not supported (only {want})")));
            }
        }
    }
    let hidden = uint("hidden_size")?;
    let heads = uint("num_attention_heads")?;
    let kv_heads = opt_uint("num_key_value_heads")?.unwrap_or(heads);
    let head_dim = match opt_uint("head_dim")? {
        Some(d) => d,
        None if hidden % heads == 0 => hidden / heads,
        None => {
            return Err(bad(format!(
                "hidden_size {hidden} is not divisible by num_attention_heads {heads}"
            )));
        }
    };
    if heads % kv_heads != 0 {
        return Err(bad(format!(
            "num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
        )));
    }
    if head_dim % 2 != 0 {
        return Err(bad(format!("head_dim {head_dim} must be even for RoPE")));
    }
    let rope_params = v.get("rope_parameters").filter(|p| !p.is_null());
    let rope_theta = v
        .get("rope_theta")
        .and_then(Value::as_f64)
        .or_else(|| {
            rope_params
                .and_then(|p| p.get("rope_theta"))
                .and_then(Value::as_f64)
        })
        .unwrap_or(10000.0);
    if !(rope_theta.is_finite() && rope_theta > 0.0) {
        return Err(bad(format!("rope_theta {rope_theta} must be positive")));
    }
    let scaling = v
        .get("rope_scaling")
        .filter(|s| !s.is_null())
        .or(rope_params);
    let rope_scaling = match scaling {
        None => None,
        Some(s) => parse_rope_scaling(s).map_err(bad)?,
    };
    let eps = v
        .get("rms_norm_eps")
        .and_then(Value::as_f64)
        .unwrap_or(1e-6);
    if !(eps.is_finite() && eps > 0.0) {
        return Err(bad(format!("rms_norm_eps {eps} must be positive")));
    }
    let eos_token_ids = match v.get("eos_token_id") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|x| x as u32)
            .collect(),
        Some(x) => x.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        None => vec![],
    };
    Ok(LlamaConfig {
        vocab_size: uint("vocab_size")?,
        hidden_size: hidden,
        intermediate_size: uint("intermediate_size")?,
        num_hidden_layers: uint("num_hidden_layers")?,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim,
        rms_norm_eps: eps,
        rope_theta,
        rope_scaling,
        tie_word_embeddings: v
            .get("tie_word_embeddings")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        max_position_embeddings: opt_uint("max_position_embeddings")?.unwrap_or(2048),
        bos_token_id: v
            .get("bos_token_id")
            .and_then(Value::as_u64)
            .map(|x| x as u32),
        eos_token_ids,
    })
}

/// Read `rope_scaling` / `rope_parameters`: none, `default`, or Llama-3; anything else is refused.
fn parse_rope_scaling(s: &Value) -> Result<Option<RopeScaling>, String> {
    let kind = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    match kind {
        "default" => Ok(None),
        "llama3" => {
            let f = |k: &str| {
                s.get(k)
                    .and_then(Value::as_f64)
                    .ok_or_else(|| format!("llama3 rope scaling needs numeric `{k}`"))
            };
            let scaling = RopeScaling {
                factor: f("factor")?,
                low_freq_factor: f("low_freq_factor")?,
                high_freq_factor: f("high_freq_factor")?,
                original_max_position_embeddings: f("original_max_position_embeddings")?,
            };
            if scaling.high_freq_factor <= scaling.low_freq_factor || scaling.factor <= 0.0 {
                return Err(
                    "llama3 rope scaling needs factor > 0 and high_freq_factor > low_freq_factor"
                        .into(),
                );
            }
            Ok(Some(scaling))
        }
        other => Err(format!(
            "rope scaling type `{other}` is not supported (supported: default, llama3)"
        )),
    }
}

/// Load `config.json` and every weight of an HF folder (single or sharded safetensors).
pub fn load_folder(src: &dyn FileSource) -> Result<(LlamaConfig, Checkpoint), LoadError> {
    let config_value: Value = read_json(src, "config.json")?;
    let config = parse_config(&config_value, &src.display("config.json"))?;
    let shards: Vec<String> = match src.read("model.safetensors.index.json")? {
        Some(blob) => {
            let file = src.display("model.safetensors.index.json");
            let index: Value =
                serde_json::from_slice((*blob).as_ref()).map_err(|cause| LoadError::Json {
                    file: file.clone(),
                    cause,
                })?;
            let map = index
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| LoadError::invalid(&file, "no `weight_map` object"))?;
            let mut names: Vec<String> = map
                .values()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect();
            names.sort();
            names.dedup();
            names
        }
        None => vec!["model.safetensors".to_string()],
    };
    let mut ckpt = Checkpoint {
        tensors: BTreeMap::new(),
        origin: src.display(""),
    };
    for shard in &shards {
        let blob = read_required(src, shard)?;
        let file = src.display(shard);
        let tensors = st::parse((*blob).as_ref(), &file)?;
        for (name, view) in tensors.iter() {
            if crate::quant::bnb::is_quant_aux(name) {
                continue;
            }
            let host = match crate::quant::bnb::read_nf4(&tensors, name)
                .map_err(|msg| LoadError::invalid(&file, msg))?
            {
                Some(t) => HostTensor {
                    shape: t.shape.clone(),
                    data: HostData::Nf4(t),
                },
                None => st::to_host(&view, name, &file)?,
            };
            ckpt.tensors.insert(name.to_string(), host);
        }
    }
    Ok((config, ckpt))
}
