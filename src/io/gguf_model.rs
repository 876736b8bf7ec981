//! Whole-model GGUF files as llama.cpp's `llama-quantize` writes them: the tensor types of a
//! quantization mix (`Q4_K_M` and friends, chosen per tensor by llama.cpp's rules in
//! `llama-quant.cpp`), the shape fallbacks, the tensor order and the metadata updates, with the
//! tensors encoded by [`crate::quant::ggml::quantize`] (llama.cpp's reference quantizers). Given
//! the tensors of an F32 model, the bytes equal `llama-quantize model.f32.gguf out.gguf TYPE`
//! (tests compare file hashes). Knows nothing about adapters: `merge` hands it merged weights.

use super::gguf::MetaValue;
use super::gguf_write::{GgufWriteError, OutTensor, QUANT_VERSION, write_gguf};
use crate::quant::ggml::{GgmlError, GgmlType, dequantize, quantize};
use thiserror::Error;

/// A quantization mix: the `--quant` values of `wgtune merge --format gguf`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    /// Every tensor in its type in the base (a GGUF base's types; an HF base's dtypes).
    Same,
    /// `ALL_F32`.
    F32,
    /// `MOSTLY_F16`.
    F16,
    /// `MOSTLY_BF16`.
    Bf16,
    /// `MOSTLY_Q8_0`.
    Q8_0,
    /// `MOSTLY_Q4_0` (the output head Q6_K, as llama-quantize does).
    Q4_0,
    /// `MOSTLY_Q4_1` (head Q6_K).
    Q4_1,
    /// `MOSTLY_Q5_0` (head Q6_K).
    Q5_0,
    /// `MOSTLY_Q5_1` (head Q6_K).
    Q5_1,
    /// Every weight matrix Q4_K (`llama-quantize --pure … Q4_K_S`).
    Q4K,
    /// Every weight matrix Q5_K (`llama-quantize --pure … Q5_K_S`).
    Q5K,
    /// `MOSTLY_Q6_K`.
    Q6K,
    /// `MOSTLY_Q4_K_M`: Q4_K, with Q6_K for the head and for `attn_v` / `ffn_down` in the layers
    /// llama.cpp's `use_more_bits` picks.
    Q4KM,
    /// `MOSTLY_Q5_K_M`: Q5_K, Q6_K where Q4_K_M has it.
    Q5KM,
}

impl Mix {
    /// Every mix, in the order the CLI lists them.
    pub const ALL: [Mix; 14] = [
        Mix::Same,
        Mix::F32,
        Mix::F16,
        Mix::Bf16,
        Mix::Q8_0,
        Mix::Q4_0,
        Mix::Q4_1,
        Mix::Q5_0,
        Mix::Q5_1,
        Mix::Q4K,
        Mix::Q5K,
        Mix::Q6K,
        Mix::Q4KM,
        Mix::Q5KM,
    ];

    /// The CLI name (`q4_k_m`).
    pub fn name(self) -> &'static str {
        match self {
            Mix::Same => "same",
            Mix::F32 => "f32",
            Mix::F16 => "f16",
            Mix::Bf16 => "bf16",
            Mix::Q8_0 => "q8_0",
            Mix::Q4_0 => "q4_0",
            Mix::Q4_1 => "q4_1",
            Mix::Q5_0 => "q5_0",
            Mix::Q5_1 => "q5_1",
            Mix::Q4K => "q4_k",
            Mix::Q5K => "q5_k",
            Mix::Q6K => "q6_k",
            Mix::Q4KM => "q4_k_m",
            Mix::Q5KM => "q5_k_m",
        }
    }

    /// The mix of a CLI name (case-insensitive).
    pub fn parse(s: &str) -> Option<Mix> {
        Mix::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s))
    }

    /// llama.cpp's `llama_ftype` (the `general.file_type` written); `None` for [`Mix::Same`].
    pub fn ftype(self) -> Option<u32> {
        Some(match self {
            Mix::Same => return None,
            Mix::F32 => 0,
            Mix::F16 => 1,
            Mix::Q4_0 => 2,
            Mix::Q4_1 => 3,
            Mix::Q8_0 => 7,
            Mix::Q5_0 => 8,
            Mix::Q5_1 => 9,
            Mix::Q4K => 14,
            Mix::Q4KM => 15,
            Mix::Q5K => 16,
            Mix::Q5KM => 17,
            Mix::Q6K => 18,
            Mix::Bf16 => 32,
        })
    }

    /// llama.cpp's `llama_ftype_get_default_type`: the type of a weight no rule singles out.
    fn default_type(self) -> Option<GgmlType> {
        Some(match self {
            Mix::Same => return None,
            Mix::F32 => GgmlType::F32,
            Mix::F16 => GgmlType::F16,
            Mix::Bf16 => GgmlType::BF16,
            Mix::Q8_0 => GgmlType::Q8_0,
            Mix::Q4_0 => GgmlType::Q4_0,
            Mix::Q4_1 => GgmlType::Q4_1,
            Mix::Q5_0 => GgmlType::Q5_0,
            Mix::Q5_1 => GgmlType::Q5_1,
            Mix::Q4K | Mix::Q4KM => GgmlType::Q4_K,
            Mix::Q5K | Mix::Q5KM => GgmlType::Q5_K,
            Mix::Q6K => GgmlType::Q6_K,
        })
    }

    /// `--pure`: no per-tensor rules, every quantizable weight takes the default type.
    fn pure(self) -> bool {
        matches!(self, Mix::Q4K | Mix::Q5K)
    }
}

/// One tensor of the model to write.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelTensor {
    /// GGUF name (`blk.3.attn_v.weight`).
    pub name: String,
    /// ggml dimensions, row length first.
    pub dims: Vec<u64>,
    /// Its type in the base (what [`Mix::Same`] keeps; 1-D tensors always keep it).
    pub source_type: GgmlType,
    /// Its values.
    pub data: TensorData,
}

/// The values of a [`ModelTensor`].
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// Plain values (the merged weights).
    Values(Vec<f32>),
    /// Bytes already encoded as `source_type` (a base tensor wgtune does not change, such as
    /// `rope_freqs.weight`): copied as they are when the type stays.
    Encoded(Vec<u8>),
}

/// What happened to one tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenTensor {
    /// GGUF name.
    pub name: String,
    /// The type written.
    pub ty: GgmlType,
    /// Its row length (`ne[0]`).
    pub n_cols: u64,
    /// The type the mix asked for when the row length could not take it (llama.cpp's fallback).
    pub fallback_from: Option<GgmlType>,
}

/// A written model file.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelGguf {
    /// The file's bytes.
    pub bytes: Vec<u8>,
    /// Every tensor in file order with the type it got.
    pub tensors: Vec<WrittenTensor>,
}

/// Reasons a model GGUF cannot be written.
#[derive(Debug, Error)]
pub enum ModelGgufError {
    /// A tensor whose value count does not match its dimensions.
    #[error("tensor {name}: {got} values for dimensions {dims:?}")]
    Shape {
        /// The tensor.
        name: String,
        /// Values given.
        got: usize,
        /// Its dimensions.
        dims: Vec<u64>,
    },
    /// Encoding or decoding a tensor failed.
    #[error("tensor {name}: {source}")]
    Encode {
        /// The tensor.
        name: String,
        /// Why.
        source: GgmlError,
    },
    /// The container could not be written.
    #[error(transparent)]
    Write(#[from] GgufWriteError),
}

/// llama.cpp's `tensor_allows_quantization` for the tensors of the supported families:
/// matrices whose name ends in `weight`, except norms.
fn allows_quantization(t: &ModelTensor) -> bool {
    let n_dims = t.dims.iter().rposition(|&d| d > 1).map_or(1, |i| i + 1);
    n_dims >= 2 && t.name.ends_with("weight") && !t.name.contains("_norm.weight")
}

/// The block number of a `blk.N.` name (-1 for model-level tensors), as llama.cpp's sort key.
fn block_of(name: &str) -> i64 {
    name.strip_prefix("blk.")
        .and_then(|r| r.split_once('.'))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(-1)
}

/// Counters llama.cpp's type rules read, in the order tensors are written.
struct MixState {
    /// `attn_v` tensors in the file.
    n_attention_wv: usize,
    /// `attn_v` tensors seen so far.
    i_attention_wv: usize,
    /// Blocks of the model (`n_layer_all`).
    n_ffn_down: usize,
    /// `ffn_down` tensors seen so far.
    i_ffn_down: usize,
    /// No `output.weight`: the head is the embedding, so it gets the head's type.
    tied: bool,
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers and every third between.
fn use_more_bits(i: usize, n: usize) -> bool {
    let (i, n) = (i as i64, n as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// llama.cpp's `tensor_type_fallback`: a type whose block does not divide the row length is
/// replaced by a 32-block one, else F16.
fn shape_fallback(ty: GgmlType, n_cols: u64) -> GgmlType {
    if n_cols.is_multiple_of(ty.block_size() as u64) {
        return ty;
    }
    let next = match ty {
        GgmlType::Q2_K | GgmlType::Q3_K => GgmlType::Q4_0,
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        other => other,
    };
    if n_cols.is_multiple_of(next.block_size() as u64) {
        next
    } else {
        GgmlType::F16
    }
}

/// The type of one quantizable tensor under `mix` (llama.cpp's `llama_tensor_get_type` for the
/// mixes wgtune offers), before the shape fallback.
fn mix_type(mix: Mix, default: GgmlType, t: &ModelTensor, st: &mut MixState) -> GgmlType {
    let name = t.name.as_str();
    let is_output = name == "output.weight";
    let is_embd = name == "token_embd.weight";
    if mix.pure() {
        return default;
    }
    if is_output || (st.tied && is_embd) {
        let n_cols = t.dims[0];
        return if !n_cols.is_multiple_of(default.block_size() as u64) {
            GgmlType::Q8_0
        } else if default != GgmlType::Q8_0 {
            GgmlType::Q6_K
        } else {
            default
        };
    }
    if name.contains("attn_v.weight") {
        let more = use_more_bits(st.i_attention_wv, st.n_attention_wv);
        st.i_attention_wv += 1;
        if matches!(mix, Mix::Q4KM | Mix::Q5KM) && more {
            return GgmlType::Q6_K;
        }
    } else if name.contains("ffn_down") {
        let more = use_more_bits(st.i_ffn_down, st.n_ffn_down);
        st.i_ffn_down += 1;
        if matches!(mix, Mix::Q4KM | Mix::Q5KM) && more {
            return GgmlType::Q6_K;
        }
    }
    default
}

/// Encode one tensor as `ty`.
fn encode(t: &ModelTensor, ty: GgmlType) -> Result<Vec<u8>, ModelGgufError> {
    let n: u64 = t.dims.iter().product();
    let err = |source| ModelGgufError::Encode {
        name: t.name.clone(),
        source,
    };
    match &t.data {
        TensorData::Encoded(b) if ty == t.source_type => Ok(b.clone()),
        TensorData::Encoded(b) => {
            let v = dequantize(t.source_type, b, n as usize).map_err(err)?;
            quantize(ty, &v).map_err(err)
        }
        TensorData::Values(v) if v.len() as u64 != n => Err(ModelGgufError::Shape {
            name: t.name.clone(),
            got: v.len(),
            dims: t.dims.clone(),
        }),
        TensorData::Values(v) => quantize(ty, v).map_err(err),
    }
}

/// The model file: `metadata` as given (without any `general.alignment`), then
/// `general.quantization_version` and `general.file_type` moved to the end as llama-quantize
/// re-sets them (`file_type` = the mix's ftype, or `same_file_type` for [`Mix::Same`]); tensors
/// sorted by (block, name) as llama.cpp's loader orders them, each typed by the mix's rules
/// with llama.cpp's shape fallbacks, `n_layer` being the model's block count.
pub fn write_model_gguf(
    metadata: &[(String, MetaValue)],
    mut tensors: Vec<ModelTensor>,
    mix: Mix,
    same_file_type: u32,
    n_layer: usize,
) -> Result<ModelGguf, ModelGgufError> {
    tensors.sort_by(|a, b| (block_of(&a.name), &a.name).cmp(&(block_of(&b.name), &b.name)));
    let mut st = MixState {
        n_attention_wv: tensors
            .iter()
            .filter(|t| t.name.contains("attn_v.weight"))
            .count(),
        i_attention_wv: 0,
        n_ffn_down: n_layer,
        i_ffn_down: 0,
        tied: !tensors.iter().any(|t| t.name == "output.weight"),
    };
    let mut out = Vec::with_capacity(tensors.len());
    let mut written = Vec::with_capacity(tensors.len());
    for t in &tensors {
        let (ty, fallback_from) = match mix.default_type() {
            _ if !allows_quantization(t) => (t.source_type, None),
            None => (t.source_type, None),
            Some(default) if default.block_size() == 1 => (default, None),
            Some(default) => {
                let want = mix_type(mix, default, t, &mut st);
                let got = shape_fallback(want, t.dims[0]);
                (got, (got != want).then_some(want))
            }
        };
        out.push(OutTensor {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ty,
            data: encode(t, ty)?,
        });
        written.push(WrittenTensor {
            name: t.name.clone(),
            ty,
            n_cols: t.dims.first().copied().unwrap_or(1),
            fallback_from,
        });
    }
    const QV: &str = "general.quantization_version";
    const FT: &str = "general.file_type";
    let mut meta: Vec<(String, MetaValue)> = metadata
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), QV | FT | "general.alignment"))
        .cloned()
        .collect();
    meta.push((QV.into(), MetaValue::U32(QUANT_VERSION)));
    let ftype = mix.ftype().unwrap_or(same_file_type);
    meta.push((FT.into(), MetaValue::U32(ftype)));
    Ok(ModelGguf {
        bytes: write_gguf(&meta, &out)?,
        tensors: written,
    })
}

/// Tensors that fell back from one type to the same other type: the pair, their names and row
/// lengths.
type FallbackGroup<'a> = (
    (GgmlType, GgmlType),
    Vec<&'a str>,
    std::collections::BTreeSet<u64>,
);

/// One line per fallback llama.cpp would also take, grouped by (wanted, written) type, or
/// nothing: `12 tensors with rows of 32, 64 values (not a multiple of 256) got Q5_0 instead of
/// Q4_K: blk.0.attn_k.weight, …`.
pub fn fallback_notes(written: &[WrittenTensor]) -> Vec<String> {
    let mut groups: Vec<FallbackGroup<'_>> = Vec::new();
    for w in written {
        let Some(from) = w.fallback_from else {
            continue;
        };
        match groups.iter_mut().find(|g| g.0 == (from, w.ty)) {
            Some(g) => {
                g.1.push(&w.name);
                g.2.insert(w.n_cols);
            }
            None => groups.push(((from, w.ty), vec![&w.name], [w.n_cols].into())),
        }
    }
    groups
        .into_iter()
        .map(|((from, to), names, lens)| {
            let lens: Vec<String> = lens.iter().map(u64::to_string).collect();
            let shown: Vec<&str> = names.iter().take(3).copied().collect();
            let more = if names.len() > 3 { ", …" } else { "" };
            format!(
                "{} tensor(s) with rows of {} values (not a multiple of {}) got {} instead of {}: {}{more}",
                names.len(),
                lens.join(", "),
                from.block_size(),
                to.name(),
                from.name(),
                shown.join(", ")
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_more_bits_like_llama_cpp() {
        let picked: Vec<usize> = (0..8).filter(|&i| use_more_bits(i, 8)).collect();
        assert_eq!(picked, [0, 3, 6, 7]);
        let picked: Vec<usize> = (0..30).filter(|&i| use_more_bits(i, 30)).collect();
        assert_eq!(picked, [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]);
    }

    #[test]
    fn fallbacks() {
        assert_eq!(shape_fallback(GgmlType::Q4_K, 576), GgmlType::Q5_0);
        assert_eq!(shape_fallback(GgmlType::Q6_K, 576), GgmlType::Q8_0);
        assert_eq!(shape_fallback(GgmlType::Q5_K, 512), GgmlType::Q5_K);
        assert_eq!(shape_fallback(GgmlType::Q4_K, 80), GgmlType::F16);
        assert_eq!(shape_fallback(GgmlType::Q8_0, 80), GgmlType::F16);
    }

    #[test]
    fn mix_names_round_trip() {
        for m in Mix::ALL {
            assert_eq!(Mix::parse(m.name()), Some(m));
        }
        assert_eq!(Mix::parse("Q4_K_M"), Some(Mix::Q4KM));
        assert_eq!(Mix::parse("q3_k"), None);
    }
}
