//! What an HF base needs besides its weights to become a GGUF model file: the metadata
//! llama.cpp's `convert_hf_to_gguf.py` writes (architecture keys, tokenizer, chat template;
//! [`crate::io::gguf_meta`]) and the tensors it generates (Llama 3's `rope_freqs.weight`).

use super::files::{DirSource, folder_title};
use crate::io::gguf::MetaValue;
use crate::io::gguf_meta::{HfFileBlobs, HfMetaOptions, hf_gguf_metadata, llama3_rope_freqs};
use crate::io::gguf_model::{ModelTensor, TensorData};
use crate::model::config::DecoderConfig;
use crate::quant::ggml::GgmlType;
use anyhow::{Context, Result};
use std::path::Path;

/// `rope_freqs.weight` for a Llama-3-scaled RoPE (the converter's extra tensor), else nothing.
pub fn extra_tensors(c: &DecoderConfig) -> Vec<ModelTensor> {
    llama3_rope_freqs(c)
        .map(|values| ModelTensor {
            name: "rope_freqs.weight".into(),
            dims: vec![values.len() as u64],
            source_type: GgmlType::F32,
            data: TensorData::Values(values),
        })
        .into_iter()
        .collect()
}

/// The GGUF metadata of the HF folder `model` (config `c`) with `general.file_type` = `ftype`,
/// named as the converter names it (the folder name, title-cased).
pub fn hf_metadata(
    model: &Path,
    c: &DecoderConfig,
    ftype: u32,
) -> Result<Vec<(String, MetaValue)>> {
    let blobs = HfFileBlobs::read(&DirSource::new(model))?;
    let opts = HfMetaOptions {
        name: folder_title(model),
        file_type: ftype,
        ..Default::default()
    };
    hf_gguf_metadata(c, &blobs.files(), &opts)
        .with_context(|| format!("{}: cannot describe it as GGUF", model.display()))
}
