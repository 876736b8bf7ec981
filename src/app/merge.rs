//! `wgtune merge`: fold a peft adapter into the base weights (`W' = W + s·B·A` for LoRA,
//! `W' = W·blockdiag(R)ᵀ` for OFT) and write a plain HF folder that transformers loads as the
//! base's own architecture.

use super::cli::{MergeArgs, load};
use super::files::{DirSource, write_atomic};
use crate::io::peft::load_adapter;
use crate::model::linear::BaseLinear;
use crate::model::read_f32;
use anyhow::{Context, Result};
use burn::tensor::Device;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;

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

/// `wgtune merge --model M --adapter A --out DIR`.
pub fn cmd_merge(a: MergeArgs) -> Result<()> {
    let n = merge_into(&a.model, None, &a.adapter, &a.out)?;
    println!(
        "merged {} into {} ({n} tensors)",
        a.adapter.display(),
        a.out.display()
    );
    Ok(())
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
    let mut lm = load(model, &Device::flex(), quantize)?;
    load_adapter(&DirSource::new(adapter), &mut lm.model)?;
    for block in lm.model.layers.iter_mut() {
        for (_, lin) in block.linears_mut() {
            if let Some(ad) = lin.adapter.take() {
                lin.base = BaseLinear::Dense(ad.merge(&lin.base.dense()));
            }
        }
    }
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
