//! HF model folders: `config.json` (read by the architecture's file in `model::arch`),
//! `model.safetensors` or a sharded `model.safetensors.index.json`.

use super::{FileSource, LoadError, read_json, read_required, safetensors as st};
use crate::model::arch::parse_hf_config;
use crate::model::config::DecoderConfig;
use crate::model::weights::{Checkpoint, HostData, HostTensor};
use serde_json::Value;
use std::collections::BTreeMap;

/// Load `config.json` and every weight of an HF folder (single or sharded safetensors).
pub fn load_folder(src: &dyn FileSource) -> Result<(DecoderConfig, Checkpoint), LoadError> {
    let config_value: Value = read_json(src, "config.json")?;
    let config = parse_hf_config(&config_value, &src.display("config.json"))?;
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
