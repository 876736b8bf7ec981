//! HF model folders: `config.json` (read by the architecture's file in `model::arch`),
//! `model.safetensors` or a sharded `model.safetensors.index.json`.

use super::safetensors as st;
use super::{Blob, FileSource, LoadError, check_relative_name, read_json, read_required};
use crate::model::arch::{Held, parse_hf_config};
use crate::model::config::DecoderConfig;
use crate::model::weights::{Checkpoint, HostData, HostTensor, StoredType, TensorMeta};
use safetensors::SafeTensors;
use safetensors::tensor::TensorView;
use serde_json::Value;
use std::collections::BTreeMap;

/// The index of a sharded checkpoint.
const INDEX: &str = "model.safetensors.index.json";

/// Load `config.json` and every weight of an HF folder (single or sharded safetensors).
pub fn load_folder(src: &dyn FileSource) -> Result<(DecoderConfig, Checkpoint), LoadError> {
    let (config, shards) = read_config(src)?;
    let mut ckpt = Checkpoint {
        tensors: BTreeMap::new(),
        origin: src.display(""),
    };
    for_each_tensor(&shards, |file, tensors, name, view| {
        let host = match crate::quant::bnb::read_nf4(tensors, name)
            .map_err(|msg| LoadError::invalid(file, msg))?
        {
            Some(t) => HostTensor {
                shape: t.shape.clone(),
                data: HostData::Nf4(t),
            },
            None => st::to_host(view, name, file)?,
        };
        ckpt.tensors.insert(name.to_string(), host);
        Ok(())
    })?;
    Ok((config, ckpt))
}

/// `config.json` and the shape, type and size of every weight of an HF folder, from the
/// safetensors headers alone (no tensor is converted or copied).
pub fn folder_info(
    src: &dyn FileSource,
) -> Result<(DecoderConfig, BTreeMap<String, TensorMeta>), LoadError> {
    let (config, shards) = read_config(src)?;
    let mut metas = BTreeMap::new();
    for_each_tensor(&shards, |file, tensors, name, view| {
        let meta = match crate::quant::bnb::nf4_state(tensors, name)
            .map_err(|msg| LoadError::invalid(file, msg))?
        {
            Some((shape, blocksize)) => {
                let numel = crate::quant::nf4::shape_numel(&shape);
                TensorMeta {
                    bytes: numel.div_ceil(2) + numel.div_ceil(blocksize) * 4,
                    ty: StoredType::Nf4 { blocksize },
                    shape,
                }
            }
            None => st::host_meta(view, name, file)?,
        };
        metas.insert(name.to_string(), meta);
        Ok(())
    })?;
    Ok((config, metas))
}

/// One weight file of a folder: the name shown in errors and its bytes.
struct Shard {
    file: String,
    blob: Blob,
}

/// Read `config.json` and the weight files, parsing every safetensors header; the config's sizes
/// are checked against the tensors the headers hold before anything is built per layer.
fn read_config(src: &dyn FileSource) -> Result<(DecoderConfig, Vec<Shard>), LoadError> {
    let config_value: Value = read_json(src, "config.json")?;
    let shards = shard_names(src)?
        .iter()
        .map(|name| {
            Ok(Shard {
                file: src.display(name),
                blob: read_required(src, name)?,
            })
        })
        .collect::<Result<Vec<_>, LoadError>>()?;
    let mut held = Held {
        tensors: 0,
        bytes: 0,
    };
    for s in &shards {
        let bytes = (*s.blob).as_ref();
        held.tensors += st::parse(bytes, &s.file)?.len();
        held.bytes += bytes.len() as u64;
    }
    let config = parse_hf_config(&config_value, &src.display("config.json"), Some(held))?;
    Ok((config, shards))
}

/// Call `f(file, tensors, name, view)` for every weight of every shard (bitsandbytes' auxiliary
/// tensors excepted: they are read with the weight they belong to).
fn for_each_tensor(
    shards: &[Shard],
    mut f: impl FnMut(&str, &SafeTensors<'_>, &str, &TensorView<'_>) -> Result<(), LoadError>,
) -> Result<(), LoadError> {
    for s in shards {
        let tensors = st::parse((*s.blob).as_ref(), &s.file)?;
        for (name, view) in tensors.iter() {
            if !crate::quant::bnb::is_quant_aux(name) {
                f(&s.file, &tensors, name, &view)?;
            }
        }
    }
    Ok(())
}

/// The weight files: `model.safetensors`, or every shard the index names, each refused unless it
/// is a plain relative name inside the folder (an index is untrusted: `../../etc/passwd`).
fn shard_names(src: &dyn FileSource) -> Result<Vec<String>, LoadError> {
    let Some(blob) = src.read(INDEX)? else {
        return Ok(vec!["model.safetensors".to_string()]);
    };
    let file = src.display(INDEX);
    let index: Value =
        serde_json::from_slice((*blob).as_ref()).map_err(|cause| LoadError::Json {
            file: file.clone(),
            cause,
        })?;
    let map = index
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| LoadError::invalid(&file, "no `weight_map` object"))?;
    let mut names = Vec::new();
    for (tensor, shard) in map {
        let shard = shard.as_str().ok_or_else(|| {
            LoadError::invalid(
                &file,
                format!("`weight_map` entry `{tensor}` is not a string"),
            )
        })?;
        check_relative_name(shard).map_err(|why| {
            LoadError::invalid(
                &file,
                format!("`weight_map` entry `{tensor}`: shard {shard:?} {why}"),
            )
        })?;
        names.push(shard.to_string());
    }
    names.sort();
    names.dedup();
    Ok(names)
}
