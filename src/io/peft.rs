//! peft adapter folders both ways: `adapter_config.json` + `adapter_model.safetensors`, keys
//! `base_model.model.<module path>.<lora_A|lora_B|oft_R>.weight`, as `PeftModel` saves and loads them.

use super::{FileSource, LoadError, read_required, safetensors as st};
use crate::adapters::lora::{Lora, LoraConfig};
use crate::adapters::oft::{Oft, OftConfig};
use crate::adapters::{
    AdapterConfig, Method, TARGET_MODULES, for_each_target, named_parameters, peft_key,
};
use crate::model::decoder::Decoder;
use crate::model::read_f32;
use crate::model::weights::Checkpoint;
use burn::tensor::{Tensor, TensorData};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The adapter settings file of a peft folder.
pub(crate) const CONFIG: &str = "adapter_config.json";
/// The adapter weights file of a peft folder.
pub(crate) const WEIGHTS: &str = "adapter_model.safetensors";

/// Parse a peft `adapter_config.json` value; unsupported types and options are refused by name.
pub fn parse_config(v: &Value, file: &str) -> Result<AdapterConfig, LoadError> {
    let bad = |msg: String| LoadError::invalid(file, msg);
    let peft_type = v
        .get("peft_type")
        .and_then(Value::as_str)
        .unwrap_or("<missing>");
    let targets = match v.get("target_modules") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect::<Vec<_>>(),
        Some(Value::String(s)) if TARGET_MODULES.contains(&s.as_str()) => vec![s.clone()],
        Some(Value::String(s)) => {
            return Err(bad(format!(
                "target_modules given as a regex ({s:?}) is not supported; list the module names"
            )));
        }
        _ => return Err(bad("missing `target_modules`".into())),
    };
    let num = |k: &str, default: f64| v.get(k).and_then(Value::as_f64).unwrap_or(default);
    let flag = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
    let empty = |k: &str| match v.get(k) {
        None | Some(Value::Null) => true,
        Some(Value::Object(o)) => o.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        _ => false,
    };
    for k in [
        "modules_to_save",
        "layers_to_transform",
        "rank_pattern",
        "alpha_pattern",
        "trainable_token_indices",
    ] {
        if !empty(k) {
            return Err(bad(format!("peft option `{k}` is not supported by wgtune")));
        }
    }
    if v.get("bias")
        .and_then(Value::as_str)
        .is_some_and(|b| b != "none")
    {
        return Err(bad("only bias = \"none\" is supported".into()));
    }
    let method = match peft_type {
        "LORA" => {
            for k in ["use_dora", "fan_in_fan_out", "lora_bias", "use_qalora"] {
                if flag(k) {
                    return Err(bad(format!("LoRA option `{k}` is not supported by wgtune")));
                }
            }
            let r = num("r", 8.0) as usize;
            Method::Lora(LoraConfig {
                r,
                lora_alpha: num("lora_alpha", 8.0),
                lora_dropout: num("lora_dropout", 0.0),
                use_rslora: flag("use_rslora"),
            })
        }
        "OFT" => Method::Oft(OftConfig {
            oft_block_size: num("oft_block_size", 0.0) as usize,
            r: num("r", 0.0) as usize,
            use_cayley_neumann: v
                .get("use_cayley_neumann")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            num_cayley_neumann_terms: num("num_cayley_neumann_terms", 5.0) as usize,
            coft: flag("coft"),
            eps: num("eps", 6e-5),
            block_share: flag("block_share"),
            module_dropout: num("module_dropout", 0.0),
            weight_centric: false,
        }),
        other => {
            return Err(bad(format!(
                "peft type `{other}` is not supported (wgtune loads LORA and OFT adapters)"
            )));
        }
    };
    let cfg = AdapterConfig {
        method,
        target_modules: targets,
    };
    cfg.validate().map_err(|e| bad(e.to_string()))?;
    Ok(cfg)
}

/// Load a peft adapter folder onto `model` (replacing any adapters), checking every key and shape.
pub fn load_adapter(src: &dyn FileSource, model: &mut Decoder) -> Result<AdapterConfig, LoadError> {
    let cfg_value: Value = super::read_json(src, CONFIG)?;
    let cfg = parse_config(&cfg_value, &src.display(CONFIG))?;
    let file = src.display(WEIGHTS);
    let blob = read_required(src, WEIGHTS)?;
    let tensors = st::parse((*blob).as_ref(), &file)?;
    let mut host = Checkpoint {
        tensors: BTreeMap::new(),
        origin: file.clone(),
    };
    for (name, view) in tensors.iter() {
        host.tensors
            .insert(name.to_string(), st::to_host(&view, name, &file)?);
    }
    let device = model.device();
    let mut used = 0usize;
    let mut take = |key: String, want: [usize; 2]| -> Result<Tensor<2>, LoadError> {
        let v = host.take_f32(&key, &want)?;
        used += 1;
        Ok(Tensor::from_data(TensorData::new(v, want), &device))
    };
    let mut err = None;
    for_each_target(model, &cfg, |path, out_f, in_f| {
        let made: Result<Box<dyn crate::model::linear::Adapter>, LoadError> = match &cfg.method {
            Method::Lora(l) => (|| {
                let a = take(peft_key(path, "lora_A.weight"), [l.r, in_f])?;
                let b = take(peft_key(path, "lora_B.weight"), [out_f, l.r])?;
                Ok(Box::new(Lora::from_tensors(l, a, b)) as Box<dyn crate::model::linear::Adapter>)
            })(),
            Method::Oft(o) => (|| {
                let b = o
                    .block_size_for(in_f)
                    .map_err(|e| LoadError::invalid(&file, format!("{path}: {e}")))?;
                let rows = if o.block_share { 1 } else { in_f / b };
                let w = take(peft_key(path, "oft_R.weight"), [rows, b * (b - 1) / 2])?;
                let oft = Oft::from_weight(o, in_f, w).map_err(|e| LoadError::invalid(&file, e))?;
                Ok(Box::new(oft) as Box<dyn crate::model::linear::Adapter>)
            })(),
        };
        made.map_err(|e| {
            err = Some(e);
            crate::adapters::AdapterError::Invalid(String::new())
        })
    })
    .map_err(|e| {
        err.take()
            .unwrap_or_else(|| LoadError::invalid(&file, e.to_string()))
    })?;
    if used != host.tensors.len() {
        let expected: Vec<String> = named_parameters(model)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let extra = host
            .tensors
            .keys()
            .find(|k| !expected.contains(k))
            .cloned()
            .unwrap_or_default();
        return Err(LoadError::invalid(
            &file,
            format!("tensor `{extra}` does not belong to any target module of this model"),
        ));
    }
    Ok(cfg)
}

/// `adapter_config.json` as peft 0.21.2 writes it: its full default field set (captured from
/// `save_pretrained` in `peft_defaults/*.json`) with this configuration's values filled in.
pub fn config_json(cfg: &AdapterConfig, base_model: &str) -> Value {
    let (defaults, fields): (&str, Vec<(&str, Value)>) = match &cfg.method {
        Method::Lora(l) => (
            include_str!("peft_defaults/lora.json"),
            vec![
                ("r", json!(l.r)),
                ("lora_alpha", json!(l.lora_alpha)),
                ("lora_dropout", json!(l.lora_dropout)),
                ("use_rslora", json!(l.use_rslora)),
            ],
        ),
        Method::Oft(o) => (
            include_str!("peft_defaults/oft.json"),
            vec![
                ("r", json!(o.r)),
                ("oft_block_size", json!(o.oft_block_size)),
                ("use_cayley_neumann", json!(o.use_cayley_neumann)),
                (
                    "num_cayley_neumann_terms",
                    json!(o.num_cayley_neumann_terms),
                ),
                ("coft", json!(o.coft)),
                ("eps", json!(o.eps)),
                ("block_share", json!(o.block_share)),
                ("module_dropout", json!(o.module_dropout)),
            ],
        ),
    };
    let mut v: Value =
        serde_json::from_str(defaults).expect("bundled peft defaults are valid JSON");
    let obj = v.as_object_mut().expect("peft defaults are an object");
    obj.insert("base_model_name_or_path".into(), json!(base_model));
    obj.insert("target_modules".into(), json!(cfg.target_modules));
    for (k, val) in fields {
        obj.insert(k.into(), val);
    }
    v
}

/// The two files of a peft adapter folder: (`adapter_config.json` text, safetensors bytes).
pub async fn save_adapter(
    model: &Decoder,
    cfg: &AdapterConfig,
    base_model: &str,
) -> Result<(String, Vec<u8>), String> {
    let mut tensors = BTreeMap::new();
    for (key, t) in named_parameters(model) {
        let shape = t.dims().to_vec();
        let values = read_f32(t).await.map_err(|e| e.to_string())?;
        tensors.insert(key, (shape, values));
    }
    let bytes = st::serialize_f32(&tensors, None).map_err(|e| e.to_string())?;
    let json =
        serde_json::to_string_pretty(&config_json(cfg, base_model)).map_err(|e| e.to_string())?;
    Ok((json, bytes))
}
