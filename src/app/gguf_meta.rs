//! What an HF base needs besides its weights to become a GGUF model file: the metadata
//! llama.cpp's `convert_hf_to_gguf.py` writes (architecture keys, tokenizer, chat template)
//! and the tensors it generates (Llama 3's `rope_freqs.weight`).

use super::files::read_blob;
use crate::io::gguf::MetaValue;
use crate::io::gguf_model::{ModelTensor, TensorData};
use crate::model::config::DecoderConfig;
use crate::quant::ggml::GgmlType;
use anyhow::Result;
use std::path::Path;

/// `rope_freqs.weight` for a Llama-3-scaled RoPE, as the converter's
/// `LlamaModel.generate_extra_tensors` computes it (in f32): 1 for short wavelengths, `factor`
/// for long ones, the smooth blend between.
pub fn extra_tensors(c: &DecoderConfig) -> Vec<ModelTensor> {
    let Some(s) = &c.rope_scaling else {
        return Vec::new();
    };
    let dim = c.head_dim;
    let base = c.rope_theta as f32;
    let old = s.original_max_position_embeddings as f32;
    let (factor, low, high) = (
        s.factor as f32,
        s.low_freq_factor as f32,
        s.high_freq_factor as f32,
    );
    let (low_wavelen, high_wavelen) = (old / low, old / high);
    let values: Vec<f32> = (0..dim)
        .step_by(2)
        .map(|i| {
            let freq = 1.0 / base.powf(i as f32 / dim as f32);
            let wavelen = 2.0 * std::f32::consts::PI / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (old / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect();
    vec![ModelTensor {
        name: "rope_freqs.weight".into(),
        dims: vec![values.len() as u64],
        source_type: GgmlType::F32,
        data: TensorData::Values(values),
    }]
}

/// The GGUF metadata of the HF folder `model` (config `c`), with `general.file_type` = `ftype`.
pub fn hf_metadata(model: &Path, c: &DecoderConfig, ftype: u32) -> Result<Vec<(String, MetaValue)>> {
    let _ = (read_blob, model, c, ftype);
    anyhow::bail!("merging into a GGUF file from an HF base is not available yet")
}
