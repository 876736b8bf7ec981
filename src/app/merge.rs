//! `wgtune merge`: fold a peft adapter into the base weights (`W' = W + s·B·A` for LoRA,
//! `W' = W·blockdiag(R)ᵀ` for OFT) and write either a plain HF folder that transformers loads as
//! the base's own architecture, or one GGUF model file for llama.cpp / Ollama / LM Studio,
//! quantized as `llama-quantize` would ([`crate::io::gguf_model`]).

use super::cli::{MergeArgs, load};
use super::files::{DirSource, read_blob, write_atomic};
use crate::io::gguf::Gguf;
use crate::io::gguf_model::{Mix, ModelTensor, TensorData, fallback_notes, write_model_gguf};
use crate::io::peft::load_adapter;
use crate::model::linear::BaseLinear;
use crate::model::loader::permute_qk_rows;
use crate::model::loader::{LINEAR_ROLES, LoadedModel};
use crate::model::read_f32;
use crate::model::roles::Role;
use crate::quant::ggml::GgmlType;
use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use clap::ValueEnum;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// What `merge` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MergeFormat {
    /// HF folder: config.json, model.safetensors (f32), tokenizer files.
    Hf,
    /// One GGUF model file (metadata, tokenizer and chat template included).
    Gguf,
}

/// clap's parser for `--quant`.
pub fn parse_mix(s: &str) -> Result<Mix, String> {
    Mix::parse(s).ok_or_else(|| {
        let names: Vec<&str> = Mix::ALL.iter().map(|m| m.name()).collect();
        format!("unknown quantization `{s}` (one of: {})", names.join(", "))
    })
}

/// Write `tokenizer.json` and `tokenizer_config.json` (chat template + special tokens) into `out`.
pub fn write_tokenizer_files(
    tokenizer: Option<&tokenizers::Tokenizer>,
    template: Option<&crate::io::chat::ChatTemplate>,
    out: &std::path::Path,
) -> Result<()> {
    if let Some(tok) = tokenizer {
        let text = tok
            .to_string(true)
            .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
        write_atomic(&out.join("tokenizer.json"), text.as_bytes())?;
    }
    if let Some(t) = template {
        let mut cfg = json!({ "chat_template": t.source() });
        for (k, v) in t.special_tokens() {
            cfg[*k] = json!(v);
        }
        write_atomic(
            &out.join("tokenizer_config.json"),
            serde_json::to_string_pretty(&cfg)?.as_bytes(),
        )?;
    }
    Ok(())
}

/// `wgtune merge --model M --adapter A --out OUT [--format gguf --quant MIX]`.
pub fn cmd_merge(a: MergeArgs) -> Result<()> {
    match a.format {
        MergeFormat::Hf => {
            if let Some(q) = a.quant {
                bail!(
                    "--quant {} needs --format gguf (an HF folder is written in f32)",
                    q.name()
                );
            }
            let n = merge_into(&a.model, a.quantize.as_deref(), &a.adapter, &a.out)?;
            println!(
                "merged {} into {} ({n} tensors)",
                a.adapter.display(),
                a.out.display()
            );
        }
        MergeFormat::Gguf => {
            let mix = a.quant.unwrap_or(Mix::Same);
            let report = merge_to_gguf(&a.model, a.quantize.as_deref(), &a.adapter, &a.out, mix)?;
            print!("{report}");
        }
    }
    Ok(())
}

/// The base with the adapter folded in, and the (role, block) of every projection it changed.
fn merged_model(
    model: &Path,
    quantize: Option<&str>,
    adapter: &Path,
) -> Result<(LoadedModel, BTreeSet<(Role, usize)>)> {
    let mut lm = load(model, &Device::flex(), quantize)?;
    load_adapter(&DirSource::new(adapter), &mut lm.model)?;
    let mut changed = BTreeSet::new();
    for (l, block) in lm.model.layers.iter_mut().enumerate() {
        for ((_, lin), role) in block.linears_mut().into_iter().zip(LINEAR_ROLES) {
            if let Some(ad) = lin.adapter.take() {
                lin.base = BaseLinear::Dense(ad.merge(&lin.base.dense()));
                changed.insert((role, l));
            }
        }
    }
    Ok((lm, changed))
}

/// Merge the peft adapter folder `adapter` into the base `model` on the CPU and write an HF
/// folder (config.json, model.safetensors in f32, tokenizer files) to `out`; returns the number
/// of tensors written. `quantize` (`nf4`) quantizes the base on load first, so a QLoRA adapter
/// merges into the base it was trained on. Shared by `wgtune merge` and the app's export button.
pub fn merge_into(
    model: &Path,
    quantize: Option<&str>,
    adapter: &Path,
    out: &Path,
) -> Result<usize> {
    let (lm, _) = merged_model(model, quantize, adapter)?;
    let c = &lm.model.config;
    let mut tensors = BTreeMap::new();
    for (name, shape, t) in lm.model.named_weights() {
        tensors.insert(name, (shape, pollster::block_on(read_f32(t))?));
    }
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let bytes = crate::io::safetensors::serialize_f32(
        &tensors,
        Some([("format".to_string(), "pt".to_string())].into()),
    )?;
    write_atomic(&out.join("model.safetensors"), &bytes)?;
    write_atomic(
        &out.join("config.json"),
        serde_json::to_string_pretty(&c.arch.hf_config(c))?.as_bytes(),
    )?;
    write_tokenizer_files(lm.tokenizer.as_ref(), lm.chat_template.as_ref(), out)?;
    Ok(tensors.len())
}

/// One merged weight as llama.cpp stores it: Q/K rows in GGUF order for `llama` bases, the
/// converter's norm offset added (Gemma), ggml dims (row length first).
fn gguf_values(
    c: &crate::model::config::DecoderConfig,
    role: Role,
    hf: Vec<f32>,
    shape: &[usize],
) -> (Vec<u64>, Vec<f32>) {
    let mut v = hf;
    let heads = match role {
        Role::AttnQ => Some(c.num_attention_heads),
        Role::AttnK => Some(c.num_key_value_heads),
        _ => None,
    };
    if let Some(h) = heads.filter(|_| c.arch.gguf_permutes_qk()) {
        v = bytemuck::pod_collect_to_vec(&permute_qk_rows(
            bytemuck::cast_slice(&v),
            shape[0],
            h,
            true,
        ));
    }
    let shift = c.arch.gguf_norm_shift();
    if role.is_norm() && shift != 0.0 {
        v.iter_mut().for_each(|x| *x += shift);
    }
    let dims = if role.is_vector() {
        vec![v.len() as u64]
    } else {
        vec![shape[1] as u64, shape[0] as u64]
    };
    (dims, v)
}

/// Merge `adapter` into `model` and write one GGUF model file to `out` with the tensor types of
/// `mix`. A GGUF base keeps its metadata, tokenizer, chat template and every tensor the adapter
/// did not change byte for byte (re-encoded only where the mix changes its type); an HF base gets
/// the metadata llama.cpp's converter writes. Returns a report for the user.
pub fn merge_to_gguf(
    model: &Path,
    quantize: Option<&str>,
    adapter: &Path,
    out: &Path,
    mix: Mix,
) -> Result<String> {
    let (lm, changed) = merged_model(model, quantize, adapter)?;
    let c = lm.model.config.clone();
    let weights = lm.model.role_weights();
    let mut merged: BTreeMap<String, (Role, Vec<usize>, burn::tensor::Tensor<2>)> = weights
        .into_iter()
        .map(|(r, l, t)| (r.gguf_name(l), (r, t.dims().to_vec(), t)))
        .collect();
    let (metadata, tensors, same_ftype) = if model.is_file() {
        let bytes = read_blob(model)?;
        let bytes = (*bytes).as_ref();
        let g = Gguf::parse(bytes).with_context(|| model.display().to_string())?;
        let mut tensors = Vec::with_capacity(g.tensors.len());
        for info in &g.tensors {
            let source_type = info.ty()?;
            let role = Role::from_gguf(&info.name);
            let data = match (role, merged.remove(&info.name)) {
                (Some((r, Some(l))), Some((_, shape, t))) if changed.contains(&(r, l)) => {
                    let (_, v) = gguf_values(&c, r, pollster::block_on(read_f32(t))?, &shape);
                    TensorData::Values(v)
                }
                _ => TensorData::Encoded(g.tensor_bytes(bytes, info)?.to_vec()),
            };
            tensors.push(ModelTensor {
                name: info.name.clone(),
                dims: info.dims.clone(),
                source_type,
                data,
            });
        }
        let ftype = g.get_opt_u64("general.file_type")?.unwrap_or(0) as u32;
        (g.metadata_in_order(), tensors, ftype)
    } else {
        let (dtype, ftype) = hf_dtype(model)?;
        let mut tensors = Vec::with_capacity(merged.len());
        for (name, (role, shape, t)) in merged {
            let (dims, v) = gguf_values(&c, role, pollster::block_on(read_f32(t))?, &shape);
            let source_type = if dims.len() == 1 {
                GgmlType::F32
            } else {
                dtype
            };
            tensors.push(ModelTensor {
                name,
                dims,
                source_type,
                data: TensorData::Values(v),
            });
        }
        tensors.extend(super::gguf_meta::extra_tensors(&c));
        let meta = super::gguf_meta::hf_metadata(model, &c, mix.ftype().unwrap_or(ftype))?;
        (meta, tensors, ftype)
    };
    let written = write_model_gguf(&metadata, tensors, mix, same_ftype, c.num_hidden_layers)
        .with_context(|| format!("{}: cannot write the merged model", out.display()))?;
    write_atomic(out, &written.bytes)?;
    let mut types: BTreeMap<&str, usize> = BTreeMap::new();
    for t in &written.tensors {
        *types.entry(t.ty.name()).or_default() += 1;
    }
    let types: Vec<String> = types.iter().map(|(t, n)| format!("{n} {t}")).collect();
    let mut report = format!(
        "merged {} into {} ({}, {} tensors: {}, {:.1} MB; {} projections changed)\n",
        adapter.display(),
        out.display(),
        mix.name(),
        written.tensors.len(),
        types.join(", "),
        written.bytes.len() as f64 / 1e6,
        changed.len()
    );
    for note in fallback_notes(&written.tensors) {
        report += &format!("  fallback (as llama-quantize): {note}\n");
    }
    let o = out.display();
    report += &format!("\nOllama Modelfile:\n  FROM {o}\n\nllama.cpp:\n  llama-cli -m {o}\n");
    Ok(report)
}

/// The GGUF type an HF base's matrices have (`same`) and the matching `general.file_type`:
/// from config.json's `torch_dtype` / `dtype` (f32 when absent).
fn hf_dtype(model: &Path) -> Result<(GgmlType, u32)> {
    let cfg = model.join("config.json");
    let v: serde_json::Value = serde_json::from_slice((*read_blob(&cfg)?).as_ref())
        .with_context(|| format!("{}: invalid JSON", cfg.display()))?;
    let dtype = v
        .get("torch_dtype")
        .or_else(|| v.get("dtype"))
        .and_then(|d| d.as_str());
    Ok(match dtype {
        Some("float16") => (GgmlType::F16, 1),
        Some("bfloat16") => (GgmlType::BF16, 32),
        _ => (GgmlType::F32, 0),
    })
}
