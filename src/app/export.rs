//! `wgtune export --format gguf`: a peft LoRA adapter as the GGUF adapter llama.cpp's
//! `convert_lora_to_gguf.py` writes, for `llama-cli --lora` and Ollama's `ADAPTER`.
//! `wgtune export --format trl`: a run file as a TRL + peft training script folder
//! ([`crate::io::trl_script`]), written atomically.

use super::files::{DirSource, folder_title, model_source, read_blob, write_atomic};
use crate::io::gguf_adapter::{OutType, lora_to_gguf};
use crate::io::trl_script::{self, MARKER, TrlPaths};
use crate::model::config::DecoderConfig;
use crate::model::loader::read_model_info;
use crate::train::run::RunConfig;
use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};

/// File formats `export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// llama.cpp GGUF LoRA adapter (`general.type = adapter`); needs `--adapter`.
    Gguf,
    /// TRL + peft training script folder (`train.py`, `README.md`, `requirements.txt`) for
    /// `accelerate launch`; needs `--run`.
    Trl,
}

/// `wgtune export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// peft adapter folder (LoRA; llama.cpp has no OFT adapters), for `--format gguf`.
    #[arg(long, required_if_eq("format", "gguf"), conflicts_with = "run")]
    pub adapter: Option<PathBuf>,
    /// TOML run file (as `wgtune train --config`), for `--format trl`.
    #[arg(long, required_if_eq("format", "trl"))]
    pub run: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Output file (gguf) or folder (trl).
    #[arg(long)]
    pub out: PathBuf,
    /// Base model (HF folder or .gguf); default: the adapter's `base_model_name_or_path` when
    /// that path exists. With `--format trl`: what the script loads instead of the run's model
    /// (an HF folder or a hub id, e.g. the original of a GGUF).
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// trl: replace the contents of a non-empty `--out` folder that is not a previous export.
    #[arg(long)]
    pub force: bool,
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
fn base_path(a: &ExportArgs, adapter: &Path) -> Result<PathBuf> {
    if let Some(b) = &a.base {
        return Ok(b.clone());
    }
    let cfg = adapter.join("adapter_config.json");
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

/// `wgtune export --adapter DIR --format gguf --out FILE [--base MODEL] [--outtype T]` or
/// `wgtune export --run run.toml --format trl --out DIR [--base MODEL] [--force]`.
pub fn cmd_export(a: ExportArgs) -> Result<()> {
    let adapter = match (a.format, &a.adapter, &a.run) {
        (ExportFormat::Trl, _, Some(run)) => return export_trl(&a, run),
        (ExportFormat::Gguf, Some(adapter), _) => adapter.clone(),
        (ExportFormat::Trl, ..) => bail!("--format trl needs --run RUN.toml"),
        (ExportFormat::Gguf, ..) => bail!("--format gguf needs --adapter DIR"),
    };
    let base = base_path(&a, &adapter)?;
    print!(
        "{}",
        export_adapter_gguf(&adapter, &base, &a.out, a.outtype)?
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
    let name = folder_title(adapter);
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

/// `path` absolute (against the current folder), as text for the script.
fn absolute(path: &str) -> String {
    let p = Path::new(path);
    if p.is_absolute() {
        return path.to_string();
    }
    std::env::current_dir()
        .map(|d| d.join(p).display().to_string())
        .unwrap_or_else(|_| path.to_string())
}

/// The script's inputs and outputs from the run (and `--base`).
fn trl_paths(run: &RunConfig, base: Option<&Path>) -> Result<TrlPaths> {
    let need = |v: &Option<String>, key: &str| run.require(v, key).map_err(anyhow::Error::msg);
    let model = need(&run.model, "model")?;
    let data = need(&run.data, "data")?;
    let out = need(&run.out, "out")?;
    let (model, gguf_file) = match base {
        // A hub id stays as given; a local path becomes absolute.
        Some(b) if b.exists() => (absolute(&b.display().to_string()), None),
        Some(b) => (b.display().to_string(), None),
        None if model.to_ascii_lowercase().ends_with(".gguf") => {
            let abs = PathBuf::from(absolute(&model));
            let dir = abs.parent().unwrap_or(Path::new(".")).display().to_string();
            let file = abs
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            (dir, Some(file))
        }
        None => (absolute(&model), None),
    };
    Ok(TrlPaths {
        model,
        gguf_file,
        data: absolute(&data),
        rl_data: run.rl_data.as_deref().map(absolute),
        init_adapter: run.init_adapter.as_deref().map(absolute),
        par_dir: absolute(&out),
        output_dir: absolute(&format!("{}-trl", out.trim_end_matches(['/', '\\']))),
    })
}

/// Whether `dir` may receive an export: absent, empty, or a previous export (holds the marker).
fn check_target(dir: &Path, force: bool) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) if dir.is_file() => bail!(
            "{}: is a file; --format trl writes a folder ({e})",
            dir.display()
        ),
        Err(e) => bail!("{}: {e}", dir.display()),
        Ok(mut entries) => {
            if entries.next().is_none() || dir.join(MARKER).is_file() || force {
                Ok(true)
            } else {
                bail!(
                    "{}: folder is not empty and holds no previous wgtune export ({MARKER}); choose another --out, or add --force to replace its contents",
                    dir.display()
                )
            }
        }
    }
}

/// `wgtune export --run RUN --format trl --out DIR`: validate the run as `wgtune train` does,
/// render the files, write them into a fresh sibling folder, then swap it in: `DIR` is either
/// untouched or the complete new export.
fn export_trl(a: &ExportArgs, run_file: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(run_file).with_context(|| format!("{}", run_file.display()))?;
    let run = RunConfig::from_toml(&text)
        .and_then(|c| c.validate().map(|_| c))
        .map_err(|e| anyhow::anyhow!("{}: {e}", run_file.display()))?;
    let paths = trl_paths(&run, a.base.as_deref())
        .map_err(|e| anyhow::anyhow!("{}: {e}", run_file.display()))?;
    let files = trl_script::render(&run, &paths)
        .map_err(|e| anyhow::anyhow!("{}: {e}", run_file.display()))?;
    let dir = &a.out;
    let replace = check_target(dir, a.force)?;
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "export".into());
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let staged = (|| -> Result<()> {
        std::fs::create_dir_all(&tmp)
            .with_context(|| format!("{}: cannot create", tmp.display()))?;
        for (file, body) in &files {
            write_atomic(&tmp.join(file), body.as_bytes())?;
        }
        Ok(())
    })();
    if let Err(e) = staged {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e.context(format!("{}: nothing was written", dir.display())));
    }
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    if replace {
        std::fs::rename(dir, &old).with_context(|| format!("{}: cannot replace", dir.display()))?;
    }
    if let Err(e) = std::fs::rename(&tmp, dir) {
        if replace {
            let _ = std::fs::rename(&old, dir);
        }
        let _ = std::fs::remove_dir_all(&tmp);
        bail!("{}: cannot write: {e}", dir.display());
    }
    if replace {
        let _ = std::fs::remove_dir_all(&old);
    }
    let method = run.method.as_deref().unwrap_or("lora");
    println!(
        "wrote {}: TRL + peft script for the `{method}` run ({})",
        dir.display(),
        files
            .iter()
            .map(|f| f.0.as_str())
            .filter(|f| *f != MARKER)
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "\nOn the training machine:\n  pip install -r {0}/requirements.txt\n  accelerate launch {0}/train.py",
        dir.display()
    );
    println!(
        "\nThe adapter lands in {} (peft); load it here with `wgtune eval --adapter`.",
        paths.output_dir
    );
    if matches!(method, "lora-par" | "qlora-par") {
        println!(
            "LoRA-PAR: the script reads the split and masks from {}; compute them first with\n  wgtune train --config {} --sft-steps 0 --rl-steps 0",
            paths.par_dir,
            run_file.display()
        );
    }
    Ok(())
}
