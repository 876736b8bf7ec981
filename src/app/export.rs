//! `wgtune export --format gguf`: a peft LoRA adapter as the GGUF adapter llama.cpp's
//! `convert_lora_to_gguf.py` writes, for `llama-cli --lora` and Ollama's `ADAPTER`.

use super::files::{DirSource, model_source, read_blob, write_atomic};
use crate::io::gguf_adapter::{OutType, lora_to_gguf, title};
use crate::model::config::DecoderConfig;
use crate::model::loader::read_model_info;
use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};

/// File formats `export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// llama.cpp GGUF LoRA adapter (`general.type = adapter`).
    Gguf,
}

/// `wgtune export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// peft adapter folder (LoRA; llama.cpp has no OFT adapters).
    #[arg(long)]
    pub adapter: PathBuf,
    /// Output format.
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Output file.
    #[arg(long)]
    pub out: PathBuf,
    /// Base model (HF folder or .gguf); default: the adapter's `base_model_name_or_path` when
    /// that path exists.
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Tensor type: f32 (llama.cpp converter's default), f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub outtype: OutType,
}

/// The base model's configuration, from its headers only (config.json or the GGUF header, checked
/// against the weight files as every load is).
fn base_config(path: &Path) -> Result<DecoderConfig> {
    let mut dir = None;
    Ok(read_model_info(model_source(path, &mut dir)?)?.config)
}

/// The base given with `--base`, else the adapter's `base_model_name_or_path` if it exists here.
fn base_path(a: &ExportArgs) -> Result<PathBuf> {
    if let Some(b) = &a.base {
        return Ok(b.clone());
    }
    let cfg = a.adapter.join("adapter_config.json");
    let v: serde_json::Value = serde_json::from_slice((*read_blob(&cfg)?).as_ref())
        .with_context(|| format!("{}: invalid JSON", cfg.display()))?;
    match v.get("base_model_name_or_path").and_then(|b| b.as_str()) {
        Some(b) if Path::new(b).exists() => Ok(b.into()),
        Some(b) => bail!(
            "{}: base_model_name_or_path `{b}` is not a local path; give the base model with --base",
            cfg.display()
        ),
        None => bail!(
            "{}: no base_model_name_or_path; give the base model with --base",
            cfg.display()
        ),
    }
}

/// `wgtune export --adapter DIR --format gguf --out FILE [--base MODEL] [--outtype T]`.
pub fn cmd_export(a: ExportArgs) -> Result<()> {
    let ExportFormat::Gguf = a.format;
    let base = base_path(&a)?;
    print!(
        "{}",
        export_adapter_gguf(&a.adapter, &base, &a.out, a.outtype)?
    );
    Ok(())
}

/// Write the LoRA adapter folder `adapter` (trained on `base`) as a llama.cpp GGUF adapter to
/// `out` (atomically) and return what to tell the user: what was written and the Ollama /
/// llama.cpp lines that use it. Shared by `wgtune export` and the desktop app's export.
pub fn export_adapter_gguf(
    adapter: &Path,
    base: &Path,
    out: &Path,
    outtype: OutType,
) -> Result<String> {
    let config = base_config(base)?;
    let folder = std::fs::canonicalize(adapter).unwrap_or_else(|_| adapter.to_path_buf());
    let name = title(&folder.file_name().unwrap_or_default().to_string_lossy());
    let bytes = lora_to_gguf(&DirSource::new(adapter), &config, &name, outtype)?;
    write_atomic(out, &bytes)?;
    let o = out.display();
    let base_gguf = if base.is_file() {
        base.display().to_string()
    } else {
        format!(
            "<{} as GGUF, e.g. from llama.cpp's convert_hf_to_gguf.py>",
            base.display()
        )
    };
    Ok(format!(
        "wrote {o}: llama.cpp LoRA adapter for a `{}` base ({}, {} bytes)\n\
         \nOllama Modelfile:\n  FROM {base_gguf}\n  ADAPTER {o}\n\
         \nllama.cpp:\n  llama-cli -m {base_gguf} --lora {o}\n",
        config.arch.gguf_arch(),
        outtype.ggml().name(),
        bytes.len()
    ))
}
