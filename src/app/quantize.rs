//! `wgtune quantize --format nf4 [--double-quant]`: write an HF folder in bitsandbytes' 4-bit
//! layout (the decoder-block linears in NF4, everything else f32) that transformers loads with
//! `bitsandbytes`.

use super::files::{DirSource, model_source, write_atomic};
use super::merge::write_tokenizer_files;
use crate::model::loader::{ModelFiles, read_model};
use crate::model::weights::HostData;
use crate::quant::bnb::{
    is_quantized_by_default, nf4_linear_tensors, nf4_packed_tensors, quantization_config,
};
use anyhow::{Context, Result, bail};
use safetensors::Dtype;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `wgtune quantize` arguments.
#[derive(clap::Args, Debug)]
pub struct QuantizeArgs {
    /// Source model: HF folder or .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    /// Target format (nf4: bitsandbytes NF4, blocksize 64).
    #[arg(long, default_value = "nf4")]
    pub format: String,
    /// bitsandbytes double quantization of the absmax scales.
    #[arg(long)]
    pub double_quant: bool,
    /// Output HF folder.
    #[arg(long)]
    pub out: PathBuf,
}

/// Quantize a model's decoder linears to NF4 and write it in bitsandbytes' checkpoint layout.
pub fn cmd_quantize(a: QuantizeArgs) -> Result<()> {
    if a.format != "nf4" {
        bail!("unknown --format `{}` (supported: nf4)", a.format);
    }
    let mut dir: Option<DirSource> = None;
    let files = read_model(model_source(&a.model, &mut dir)?)?;
    let (quantized, kept) = write_nf4_folder(&files, a.double_quant, &a.out)?;
    println!(
        "quantized {quantized} linears to NF4{} (kept {kept} tensors in f32) into {}",
        if a.double_quant {
            " with double quantization"
        } else {
            ""
        },
        a.out.display()
    );
    Ok(())
}

/// Write `files` as a bitsandbytes 4-bit HF folder in `out` (model.safetensors, config.json with
/// `quantization_config`, tokenizer files): every decoder-block linear in NF4 (blocksize 64),
/// everything else f32. A linear that is already NF4 with blocksize 64 is written byte for byte
/// when `double_quant` is off (LoftQ's `Q`); others are quantized here. Returns
/// `(quantized linears, tensors kept in f32)`.
pub fn write_nf4_folder(
    files: &ModelFiles,
    double_quant: bool,
    out: &Path,
) -> Result<(usize, usize)> {
    let mut tensors = BTreeMap::new();
    let (mut quantized, mut kept) = (0, 0);
    for (name, t) in &files.checkpoint.tensors {
        if let (HostData::Nf4(q), true, false) =
            (&t.data, is_quantized_by_default(name), double_quant)
            && q.blocksize == 64
        {
            tensors.extend(nf4_packed_tensors(name, q));
            quantized += 1;
            continue;
        }
        let values = t.to_f32().map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        if is_quantized_by_default(name) {
            tensors.extend(nf4_linear_tensors(
                name,
                &values,
                &t.shape,
                64,
                double_quant,
            )?);
            quantized += 1;
        } else {
            tensors.insert(
                name.clone(),
                (
                    Dtype::F32,
                    t.shape.clone(),
                    bytemuck::cast_slice::<f32, u8>(&values).to_vec(),
                ),
            );
            kept += 1;
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let meta = Some([("format".to_string(), "pt".to_string())].into());
    write_atomic(
        &out.join("model.safetensors"),
        &crate::io::safetensors::serialize_raw(&tensors, meta)?,
    )?;
    let mut config = files.config.arch.hf_config(&files.config);
    config["quantization_config"] = quantization_config(double_quant);
    write_atomic(
        &out.join("config.json"),
        serde_json::to_string_pretty(&config)?.as_bytes(),
    )?;
    write_tokenizer_files(files.tokenizer.as_ref(), files.chat_template.as_ref(), out)?;
    Ok((quantized, kept))
}
