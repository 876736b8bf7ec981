//! A peft LoRA adapter folder as a llama.cpp GGUF LoRA adapter, the file llama.cpp's
//! `convert_lora_to_gguf.py` writes for it: `general.type = adapter`, `adapter.type = lora`,
//! `adapter.lora.alpha`, the base's llama.cpp architecture, and per adapted projection
//! `blk.N.<gguf name>.lora_a` `[r, in]` and `.lora_b` `[out, r]`, lora_b of Q/K in llama.cpp's
//! permuted row order for `llama` bases. Tensors come in the converter's order (sorted peft keys),
//! so for the same inputs the bytes are the converter's. OFT has no llama.cpp adapter type.

use super::gguf::MetaValue;
use super::gguf_write::{GgufWriteError, OutTensor, QUANT_VERSION, write_gguf};
use super::peft::{CONFIG, WEIGHTS, parse_config};
use super::{FileSource, LoadError, read_json, read_required, safetensors as st};
use crate::adapters::{Method, peft_key};
use crate::model::config::DecoderConfig;
use crate::model::loader::{LINEAR_ROLES, permute_qk_rows};
use crate::model::roles::Role;
use crate::model::weights::Checkpoint;
use crate::quant::ggml::GgmlType;
use std::collections::BTreeMap;

/// Storage type of the adapter tensors: the converter's `--outtype` (f32 is its default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutType {
    /// 32-bit floats, the values as trained.
    #[default]
    F32,
    /// IEEE half, rounded to nearest even (numpy's `astype(float16)`).
    F16,
    /// bfloat16, rounded to nearest even (gguf-py's `quants.quantize(.., BF16)`).
    Bf16,
}

impl std::str::FromStr for OutType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(OutType::F32),
            "f16" => Ok(OutType::F16),
            "bf16" => Ok(OutType::Bf16),
            _ => Err(format!("unknown outtype `{s}` (f32, f16, bf16)")),
        }
    }
}

impl OutType {
    /// The ggml type written.
    pub fn ggml(self) -> GgmlType {
        match self {
            OutType::F32 => GgmlType::F32,
            OutType::F16 => GgmlType::F16,
            OutType::Bf16 => GgmlType::BF16,
        }
    }

    /// `values` encoded little endian in this type.
    fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            OutType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            OutType::F16 => values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
            OutType::Bf16 => values
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
        }
    }
}

/// Why an adapter cannot be exported; each message is one line naming the file.
#[derive(Debug, thiserror::Error)]
pub enum GgufExportError {
    /// An OFT adapter: llama.cpp only loads LoRA adapters.
    #[error(
        "{file}: llama.cpp has no OFT adapter type: merge instead (`wgtune merge`, then convert the merged model)"
    )]
    Oft {
        /// The adapter's `adapter_config.json`.
        file: String,
    },
    /// The adapter folder cannot be read or does not fit the base model.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The GGUF writer refused the tensors.
    #[error("{file}: {cause}")]
    Write {
        /// The adapter's weights file.
        file: String,
        /// What the writer said.
        cause: GgufWriteError,
    },
}

/// gguf-py's `Metadata.id_to_title`, which the converter applies to the adapter folder's name for
/// `general.name`: `-` becomes a space, and each all-lowercase word that is not a version (`v2`,
/// `v1.5`) and does not start with a digit is title-cased as Python's `str.title` does
/// (`my-lora_run` → `My Lora_Run`).
pub fn title(name: &str) -> String {
    let version = |w: &str| {
        w.strip_prefix('v').is_some_and(|v| {
            v.split('.')
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
        })
    };
    let title_case = |w: &str| {
        let mut after_letter = false;
        w.chars()
            .flat_map(|c| {
                let up = c.is_alphabetic() && !after_letter;
                after_letter = c.is_alphabetic();
                let cased: Vec<char> = if up {
                    c.to_uppercase().collect()
                } else {
                    c.to_lowercase().collect()
                };
                cased
            })
            .collect::<String>()
    };
    name.replace('-', " ")
        .split_whitespace()
        .map(|w| {
            let lower = w.chars().any(char::is_lowercase) && !w.chars().any(char::is_uppercase);
            let digit = w.starts_with(|c: char| c.is_ascii_digit());
            if lower && !digit && !version(w) {
                title_case(w)
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The GGUF LoRA adapter for the peft adapter folder `src` on a base of config `base`: `name`
/// becomes `general.name` (the converter writes [`title`] of the folder name). The alpha written
/// is `lora_alpha`, or `lora_alpha·√r` for rsLoRA so that llama.cpp's `alpha / r` is peft's
/// `lora_alpha / √r` (the converter ignores `use_rslora`).
pub fn lora_to_gguf(
    src: &dyn FileSource,
    base: &DecoderConfig,
    name: &str,
    out: OutType,
) -> Result<Vec<u8>, GgufExportError> {
    let cfg_file = src.display(CONFIG);
    let cfg_json: serde_json::Value = read_json(src, CONFIG)?;
    let oft = GgufExportError::Oft {
        file: cfg_file.clone(),
    };
    // Checked before parsing so that any OFT adapter gets this message, even one wgtune refuses.
    if cfg_json.get("peft_type").and_then(|t| t.as_str()) == Some("OFT") {
        return Err(oft);
    }
    let Method::Lora(lora) = parse_config(&cfg_json, &cfg_file)?.method else {
        return Err(oft);
    };
    let file = src.display(WEIGHTS);
    let blob = read_required(src, WEIGHTS)?;
    let mut host = Checkpoint {
        tensors: BTreeMap::new(),
        origin: file.clone(),
    };
    for (key, view) in st::parse((*blob).as_ref(), &file)?.iter() {
        host.tensors
            .insert(key.to_string(), st::to_host(&view, key, &file)?);
    }
    // HF module path (`model.layers.0.self_attn.q_proj`) -> role and layer, from the role tables.
    let known: BTreeMap<String, (Role, usize)> = (0..base.num_hidden_layers)
        .flat_map(|l| LINEAR_ROLES.map(|r| (base.arch.hf_name(r, Some(l)), (r, l))))
        .filter_map(|(hf, rl)| Some((hf.strip_suffix(".weight")?.to_string(), rl)))
        .collect();
    // Adapted modules in the converter's order: first appearance among the sorted peft keys.
    let mut modules: Vec<(&str, Role, usize)> = Vec::new();
    for key in host.tensors.keys() {
        let module = key
            .strip_prefix("base_model.model.")
            .and_then(|k| {
                k.strip_suffix(".lora_A.weight")
                    .or_else(|| k.strip_suffix(".lora_B.weight"))
            })
            .ok_or_else(|| {
                LoadError::invalid(
                    &file,
                    format!("tensor `{key}` is not a LoRA A/B weight (llama.cpp loads only those)"),
                )
            })?;
        let &(role, layer) = known.get(module).ok_or_else(|| {
            LoadError::invalid(
                &file,
                format!("tensor `{key}` does not belong to any projection of the base model"),
            )
        })?;
        if modules.last().is_none_or(|m| m.0 != module) {
            modules.push((module, role, layer));
        }
    }
    let mut tensors = Vec::new();
    for (module, role, layer) in modules {
        let shape = base.block_shape(role);
        let (out_f, in_f) = (shape[0], shape[1]);
        let a = host.take_f32(&peft_key(module, "lora_A.weight"), &[lora.r, in_f])?;
        let mut b = host.take_f32(&peft_key(module, "lora_B.weight"), &[out_f, lora.r])?;
        let heads = match role {
            Role::AttnQ => base.num_attention_heads,
            _ => base.num_key_value_heads,
        };
        if base.arch.gguf_permutes_qk() && matches!(role, Role::AttnQ | Role::AttnK) {
            if !out_f.is_multiple_of(2 * heads) {
                return Err(LoadError::invalid(
                    &file,
                    format!("`{module}`: {out_f} rows do not split into {heads} heads"),
                )
                .into());
            }
            let bytes = permute_qk_rows(bytemuck::cast_slice(&b), out_f, heads, true);
            b = bytemuck::pod_collect_to_vec(&bytes);
        }
        let gguf = role.gguf_name(Some(layer));
        for (suffix, dims, values) in [
            ("lora_a", [in_f, lora.r], a),
            ("lora_b", [lora.r, out_f], b),
        ] {
            tensors.push(OutTensor {
                name: format!("{gguf}.{suffix}"),
                dims: dims.map(|d| d as u64).to_vec(),
                ty: out.ggml(),
                data: out.encode(&values),
            });
        }
    }
    let alpha = if lora.use_rslora {
        lora.lora_alpha * (lora.r as f64).sqrt()
    } else {
        lora.lora_alpha
    };
    let text = |s: &str| MetaValue::Str(s.to_string());
    let metadata = [
        ("general.architecture", text(base.arch.gguf_arch())),
        ("general.type", text("adapter")),
        ("adapter.type", text("lora")),
        ("general.name", text(name)),
        ("adapter.lora.alpha", MetaValue::F32(alpha as f32)),
        (
            "general.quantization_version",
            MetaValue::U32(QUANT_VERSION),
        ),
    ]
    .map(|(k, v)| (k.to_string(), v));
    write_gguf(&metadata, &tensors).map_err(|cause| GgufExportError::Write { file, cause })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// gguf-py's `id_to_title` on typical folder names.
    #[test]
    fn title_like_gguf_py() {
        assert_eq!(title("adapter"), "Adapter");
        assert_eq!(title("my-lora_run"), "My Lora_Run");
        assert_eq!(title("abc1def v1.5 2nd"), "Abc1Def v1.5 2nd");
        assert_eq!(title("qwen-v2-7B"), "Qwen v2 7B");
        assert_eq!(title("SmolLM2-lora"), "SmolLM2 Lora");
    }

    /// Rounding to f16/bf16 is to nearest even, as numpy and gguf-py do.
    #[test]
    fn encodes_round_to_nearest_even() {
        let x = 1.0 + 3.0 / 2048.0; // halfway between the f16 values 0x3c01 and 0x3c02
        assert_eq!(
            OutType::F16.encode(&[x]),
            half::f16::from_bits(0x3c02).to_le_bytes()
        );
        assert_eq!(OutType::Bf16.encode(&[1.0]), [0x80, 0x3f]);
        assert_eq!(OutType::F32.encode(&[1.0]), 1.0f32.to_le_bytes());
    }
}
