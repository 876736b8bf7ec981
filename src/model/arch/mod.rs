//! The edges where architectures differ: reading `config.json` and GGUF hyper-parameters into a
//! [`DecoderConfig`], the HF names of roles that differ from the Llama convention, load quirks of
//! GGUF files, and the `config.json` written by `merge`. One small file per architecture; the
//! shared readers below hold what they have in common. Adding an architecture means one more file
//! and one more [`Arch`] variant; nothing in adapters, training or the front ends changes.

mod gemma3;
mod llama;
mod mistral;
mod qwen2;
mod qwen3;

use super::config::{AttnKind, DecoderConfig, RopeScaling};
use super::roles::Role;
use crate::io::LoadError;
use crate::io::gguf::{Gguf, GgufError, MetaValue};
use crate::io::gguf_meta::{HfMetaError, MetaList};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A supported decoder architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Arch {
    /// `LlamaForCausalLM` (also SmolLM2, TinyLlama); GGUF `llama`.
    #[default]
    Llama,
    /// `MistralForCausalLM`: Llama plus an optional sliding window. llama.cpp converts it to a
    /// `llama` GGUF, which has no window (so it reads back as Llama).
    Mistral,
    /// `Qwen2ForCausalLM` (Qwen2, Qwen2.5): q/k/v biases; GGUF `qwen2`.
    Qwen2,
    /// `Qwen3ForCausalLM`: per-head q/k RMSNorm, explicit head_dim; GGUF `qwen3`.
    Qwen3,
    /// `Gemma3ForCausalLM` (text): (1+w) norms, sandwich norms, q/k norm, GELU-tanh, scaled
    /// embeddings, 5:1 sliding/global layers; GGUF `gemma3`.
    Gemma3,
}

/// The list shown when a model's architecture is refused.
pub const SUPPORTED: &str = "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, \
    Qwen3ForCausalLM, Gemma3ForCausalLM; GGUF llama, qwen2, qwen3, gemma3";

impl Arch {
    /// Short name (`qwen2`), as shown by `inspect`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma3 => "gemma3",
        }
    }

    /// The architecture an HF `architectures[0]` (or `model_type`) names.
    pub fn from_hf(class: &str) -> Option<Arch> {
        Some(match class {
            "LlamaForCausalLM" | "llama" => Arch::Llama,
            "MistralForCausalLM" | "mistral" => Arch::Mistral,
            "Qwen2ForCausalLM" | "qwen2" => Arch::Qwen2,
            "Qwen3ForCausalLM" | "qwen3" => Arch::Qwen3,
            "Gemma3ForCausalLM" | "gemma3_text" => Arch::Gemma3,
            _ => return None,
        })
    }

    /// The architecture a GGUF `general.architecture` names.
    pub fn from_gguf(name: &str) -> Option<Arch> {
        Some(match name {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            "gemma3" => Arch::Gemma3,
            _ => return None,
        })
    }

    /// The full HF name of role `r` (in layer `layer` for block roles).
    pub fn hf_name(self, r: Role, layer: Option<usize>) -> String {
        let suffix = match self {
            Arch::Gemma3 => gemma3::hf_name(r),
            _ => None,
        }
        .unwrap_or_else(|| r.hf_default());
        match layer {
            Some(l) if r.in_block() => format!("model.layers.{l}.{suffix}"),
            _ => suffix.to_string(),
        }
    }

    /// Parse an HF `config.json` (already known to name this architecture).
    fn read_hf(self, j: &Json) -> Result<DecoderConfig, LoadError> {
        match self {
            Arch::Llama => llama::read_hf(j),
            Arch::Mistral => mistral::read_hf(j),
            Arch::Qwen2 => qwen2::read_hf(j),
            Arch::Qwen3 => qwen3::read_hf(j),
            Arch::Gemma3 => gemma3::read_hf(j),
        }
    }

    /// Read the `{arch}.…` hyper-parameters of a GGUF (already known to be this architecture).
    fn read_gguf(self, g: &GgufMeta) -> Result<DecoderConfig, LoadError> {
        match self {
            Arch::Llama | Arch::Mistral => llama::read_gguf(g),
            Arch::Qwen2 => qwen2::read_gguf(g),
            Arch::Qwen3 => qwen3::read_gguf(g),
            Arch::Gemma3 => gemma3::read_gguf(g),
        }
    }

    /// The `config.json` transformers loads this model from (used by `merge`).
    pub fn hf_config(self, c: &DecoderConfig) -> Value {
        match self {
            Arch::Llama => llama::hf_config(c),
            Arch::Mistral => mistral::hf_config(c),
            Arch::Qwen2 => qwen2::hf_config(c),
            Arch::Qwen3 => qwen3::hf_config(c),
            Arch::Gemma3 => gemma3::hf_config(c),
        }
    }

    /// The `{arch}.*` hyper-parameters and `general.file_type` that llama.cpp's
    /// `convert_hf_to_gguf.py` writes for this HF model, in its order (the inverse of
    /// [`Self::read_gguf`]): `TextModel.set_gguf_parameters`, then the architecture's additions.
    /// Values come from `c`; `raw` (the model's `config.json`) decides which optional keys the
    /// converter writes, since it writes some only when the config names them.
    pub fn write_gguf_hparams(
        self,
        c: &DecoderConfig,
        raw: &Value,
        file_type: u32,
        m: &mut MetaList,
    ) -> Result<(), HfMetaError> {
        let mut w = GgufOut {
            m,
            arch: self.gguf_arch(),
            raw: HfRaw(raw),
        };
        write_gguf_common(c, &mut w, file_type)?;
        match self {
            Arch::Llama | Arch::Mistral => llama::write_gguf(c, &mut w),
            Arch::Qwen2 => qwen2::write_gguf(c, &mut w),
            Arch::Qwen3 => qwen3::write_gguf(c, &mut w),
            Arch::Gemma3 => gemma3::write_gguf(c, &mut w),
        }
    }

    /// llama.cpp's `general.architecture` for this model: Mistral HF models convert as `llama`.
    pub fn gguf_arch(self) -> &'static str {
        match self {
            Arch::Llama | Arch::Mistral => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma3 => "gemma3",
        }
    }

    /// llama.cpp's converter permutes Q/K rows (for its interleaved RoPE) only for `llama`.
    pub fn gguf_permutes_qk(self) -> bool {
        matches!(self, Arch::Llama | Arch::Mistral)
    }

    /// What llama.cpp's converter adds to every norm gain (Gemma stores `1 + w`).
    pub fn gguf_norm_shift(self) -> f32 {
        match self {
            Arch::Gemma3 => 1.0,
            _ => 0.0,
        }
    }

    /// A token that ends an assistant turn and also ends generation, when the family has one
    /// besides its EOS (`<end_of_turn>` for Gemma).
    pub fn end_of_turn_token(self) -> Option<&'static str> {
        match self {
            Arch::Gemma3 => Some("<end_of_turn>"),
            _ => None,
        }
    }
}

/// What the weight files hold: a config's sizes are checked against it before anything is built
/// per layer, so a hostile `num_hidden_layers` or `hidden_size` cannot make us allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// Tensors in the weight files.
    pub tensors: usize,
    /// Bytes of the weight files.
    pub bytes: u64,
}

/// Fewest tensors a decoder block has (two norms, q, k, v, o, gate, up, down).
const MIN_BLOCK_TENSORS: usize = 9;

/// Fewest bits a stored weight takes (Q2_K, the smallest type read, takes 2.625).
const MIN_BITS_PER_WEIGHT: u64 = 2;

impl Held {
    /// Refuse `layers` (read from `key`) when the files cannot hold that many blocks; checked
    /// before any per-layer list is built.
    fn check_layers(self, layers: usize, key: &str, file: &str) -> Result<(), LoadError> {
        match layers.checked_mul(MIN_BLOCK_TENSORS) {
            Some(n) if n <= self.tensors => Ok(()),
            _ => Err(LoadError::invalid(
                file,
                format!(
                    "`{key}` = {layers} layers need at least {MIN_BLOCK_TENSORS} tensors each, \
                     the weights hold {} tensors",
                    self.tensors
                ),
            )),
        }
    }

    /// Refuse a config whose weights cannot be in the files: more parameters than the weight
    /// bytes can store. (A missing tensor is named later, when the model is built.)
    fn check_sizes(self, c: &DecoderConfig, file: &str) -> Result<(), LoadError> {
        let params = c.checked_num_parameters().unwrap_or(usize::MAX) as u64;
        let max = self.bytes.saturating_mul(8) / MIN_BITS_PER_WEIGHT;
        if params > max {
            return Err(LoadError::invalid(
                file,
                format!(
                    "the config's sizes (hidden {}, intermediate {}, vocab {}) describe {params} \
                     parameters, more than {} bytes of weights can hold",
                    c.hidden_size, c.intermediate_size, c.vocab_size, self.bytes
                ),
            ));
        }
        Ok(())
    }
}

/// Parse and validate an HF `config.json`; `file` names it in errors. With `held` (what the
/// weight files hold) the sizes are checked against the weights before any per-layer list is built.
pub fn parse_hf_config(
    v: &Value,
    file: &str,
    held: Option<Held>,
) -> Result<DecoderConfig, LoadError> {
    let class = v
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str)
        .or_else(|| v.get("model_type").and_then(Value::as_str))
        .unwrap_or("<none>");
    let arch = Arch::from_hf(class).ok_or_else(|| LoadError::Architecture {
        file: file.into(),
        arch: class.into(),
    })?;
    let c = arch.read_hf(&Json { v, file, held })?;
    validate(&c, file, &|field| format!("`{field}`"))?;
    if let Some(held) = held {
        held.check_sizes(&c, file)?;
    }
    Ok(c)
}

/// Read and validate a GGUF's hyper-parameters; `file` (of `len` bytes) names it in errors. The
/// sizes are checked against the file's tensor table before any per-layer list is built.
pub fn parse_gguf_config(g: &Gguf, file: &str, len: usize) -> Result<DecoderConfig, LoadError> {
    let held = Held {
        tensors: g.tensors.len(),
        bytes: len as u64,
    };
    let meta = GgufMeta {
        g,
        file,
        held,
        arch: g
            .get_str("general.architecture")
            .map_err(|cause| gguf_err(file, cause))?,
    };
    let arch = Arch::from_gguf(meta.arch).ok_or_else(|| LoadError::Architecture {
        file: file.into(),
        arch: meta.arch.into(),
    })?;
    if let Some(kind) = meta.opt_str("rope.scaling.type")?
        && kind != "none"
    {
        return Err(LoadError::invalid(
            file,
            format!("rope scaling `{kind}` in GGUF is not supported"),
        ));
    }
    let c = arch.read_gguf(&meta)?;
    validate(&c, file, &|field| match gguf_key(field) {
        Some(k) => format!("`{}` (GGUF `{}`)", field, meta.key(k)),
        None => format!("`{field}`"),
    })?;
    held.check_sizes(&c, file)?;
    Ok(c)
}

/// The GGUF key (under the `{arch}.` prefix) a config field is read from, where there is one.
fn gguf_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "rms_norm_eps" => "attention.layer_norm_rms_epsilon",
        "rope_theta" => "rope.freq_base",
        "rope_local_base_freq" => "rope.freq_base_swa",
        "final_logit_softcapping" => "final_logit_softcapping",
        "num_attention_heads" => "attention.head_count",
        "num_key_value_heads" => "attention.head_count_kv",
        "head_dim" => "attention.key_length",
        _ => return None,
    })
}

/// Checks every architecture shares: heads divide, RoPE dims even, finite positive constants,
/// a parameter count that fits in memory arithmetic, layer types of the right length. `name`
/// says how to name a config field in messages (with its GGUF key for GGUF files).
fn validate(c: &DecoderConfig, file: &str, name: &dyn Fn(&str) -> String) -> Result<(), LoadError> {
    let bad = |msg: String| Err(LoadError::invalid(file, msg));
    let (heads, kv, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
    if kv == 0 || heads % kv != 0 {
        return bad(format!(
            "{} {heads} is not a multiple of {} {kv}",
            name("num_attention_heads"),
            name("num_key_value_heads")
        ));
    }
    if d == 0 || d % 2 != 0 {
        return bad(format!(
            "{} {d} must be even and positive for RoPE",
            name("head_dim")
        ));
    }
    if heads.checked_mul(d).is_none() {
        return bad(format!(
            "{} {heads} × {} {d} overflows",
            name("num_attention_heads"),
            name("head_dim")
        ));
    }
    for (field, x) in [
        ("rms_norm_eps", Some(c.rms_norm_eps)),
        ("rope_theta", Some(c.rope_theta)),
        ("rope_local_base_freq", c.rope_local_theta),
        ("query_pre_attn_scalar", c.query_pre_attn_scalar),
        ("final_logit_softcapping", c.final_logit_softcapping),
    ] {
        if let Some(x) = x
            && !(x.is_finite() && x > 0.0)
        {
            return bad(format!("{} = {x} must be a positive number", name(field)));
        }
    }
    if !c.layer_types.is_empty() && c.layer_types.len() != c.num_hidden_layers {
        return bad(format!(
            "`layer_types` lists {} layers, the model has {}",
            c.layer_types.len(),
            c.num_hidden_layers
        ));
    }
    if c.layer_types.contains(&AttnKind::Sliding) && c.sliding_window.is_none() {
        return bad("sliding-window layers without a `sliding_window` size".into());
    }
    if c.checked_num_parameters().is_none() {
        return bad("the sizes overflow the parameter count".into());
    }
    Ok(())
}

fn gguf_err(file: &str, cause: GgufError) -> LoadError {
    LoadError::Gguf {
        file: file.into(),
        cause,
    }
}

/// A `config.json` value with the file name for errors.
pub(crate) struct Json<'a> {
    v: &'a Value,
    file: &'a str,
    held: Option<Held>,
}

impl Json<'_> {
    fn bad(&self, msg: String) -> LoadError {
        LoadError::invalid(self.file, msg)
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.v.get(key).filter(|x| !x.is_null())
    }

    fn uint(&self, key: &str) -> Result<usize, LoadError> {
        match self.get(key).map(Value::as_u64) {
            Some(Some(n)) if n > 0 => {
                usize::try_from(n).map_err(|_| self.bad(format!("`{key}` = {n} is too large")))
            }
            Some(_) => Err(self.bad(format!("`{key}` must be a positive integer"))),
            None => Err(self.bad(format!("missing `{key}`"))),
        }
    }

    fn opt_uint(&self, key: &str) -> Result<Option<usize>, LoadError> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.uint(key).map(Some),
        }
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>, LoadError> {
        match self.get(key) {
            None => Ok(None),
            Some(x) => x
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.bad(format!("`{key}` must be a number"))),
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>, LoadError> {
        match self.get(key) {
            None => Ok(None),
            Some(x) => x
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.bad(format!("`{key}` must be true or false"))),
        }
    }

    /// Refuse `key` unless absent or equal to one of `allowed` (strings or booleans).
    fn require(&self, key: &str, allowed: &[&str]) -> Result<(), LoadError> {
        let Some(val) = self.get(key) else {
            return Ok(());
        };
        let s = val.as_str().map(str::to_string).unwrap_or(val.to_string());
        if allowed.contains(&s.as_str()) {
            Ok(())
        } else {
            Err(self.bad(format!(
                "`{key}` = {s} is not supported (supported: {})",
                allowed.join(", ")
            )))
        }
    }

    /// The rope parameters of one layer kind: the flat `rope_scaling` / `rope_parameters`, or
    /// transformers 5's per-kind `rope_parameters.{full_attention, sliding_attention}`.
    fn rope_params(&self, kind: &str) -> Option<&Value> {
        let p = self.get("rope_parameters");
        match p.and_then(|p| p.get(kind)) {
            Some(per_kind) => Some(per_kind),
            None => self.get("rope_scaling").or(p),
        }
    }

    /// RoPE base and scaling of layers of `kind` (`full_attention` | `sliding_attention`).
    fn rope(&self, kind: &str) -> Result<(Option<f64>, Option<RopeScaling>), LoadError> {
        let params = self.rope_params(kind);
        let theta = match params.and_then(|p| p.get("rope_theta")) {
            Some(t) => Some(
                t.as_f64()
                    .ok_or_else(|| self.bad("`rope_theta` must be a number".into()))?,
            ),
            None => None,
        };
        let scaling = match params {
            None => None,
            Some(s) => parse_rope_scaling(s).map_err(|m| self.bad(m))?,
        };
        Ok((theta, scaling))
    }

    /// `layer_types` (`full_attention` / `sliding_attention`) when the config lists them.
    fn layer_types(&self) -> Result<Option<Vec<AttnKind>>, LoadError> {
        let Some(list) = self.get("layer_types") else {
            return Ok(None);
        };
        let list = list
            .as_array()
            .ok_or_else(|| self.bad("`layer_types` must be a list".into()))?;
        list.iter()
            .map(|t| match t.as_str() {
                Some("full_attention") => Ok(AttnKind::Global),
                Some("sliding_attention") => Ok(AttnKind::Sliding),
                _ => Err(self.bad(format!(
                    "`layer_types` entry {t} is not supported (full_attention, sliding_attention)"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

/// Read `rope_scaling` / `rope_parameters`: none, `default`, or Llama-3; anything else is refused.
fn parse_rope_scaling(s: &Value) -> Result<Option<RopeScaling>, String> {
    let kind = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    match kind {
        "default" => Ok(None),
        "llama3" => {
            let f = |k: &str| {
                s.get(k)
                    .and_then(Value::as_f64)
                    .ok_or_else(|| format!("llama3 rope scaling needs numeric `{k}`"))
            };
            let scaling = RopeScaling {
                factor: f("factor")?,
                low_freq_factor: f("low_freq_factor")?,
                high_freq_factor: f("high_freq_factor")?,
                original_max_position_embeddings: f("original_max_position_embeddings")?,
            };
            if !(scaling.high_freq_factor > scaling.low_freq_factor && scaling.factor > 0.0) {
                return Err(
                    "llama3 rope scaling needs factor > 0 and high_freq_factor > low_freq_factor"
                        .into(),
                );
            }
            Ok(Some(scaling))
        }
        other => Err(format!(
            "rope scaling type `{other}` is not supported (supported: default, llama3)"
        )),
    }
}

/// The head size a file implies when it names none: `hidden / heads`, if that divides.
fn implied_head_dim(hidden: usize, heads: usize) -> Option<usize> {
    hidden.is_multiple_of(heads).then(|| hidden / heads)
}

/// The fields every supported `config.json` shares, read the Llama way (the arch files add theirs).
fn read_hf_common(j: &Json, arch: Arch) -> Result<DecoderConfig, LoadError> {
    let hidden = j.uint("hidden_size")?;
    let heads = j.uint("num_attention_heads")?;
    let kv_heads = j.opt_uint("num_key_value_heads")?.unwrap_or(heads);
    let head_dim = j
        .opt_uint("head_dim")?
        .or_else(|| implied_head_dim(hidden, heads))
        .ok_or_else(|| {
            j.bad(format!(
                "hidden_size {hidden} is not divisible by num_attention_heads {heads}"
            ))
        })?;
    let layers = j.uint("num_hidden_layers")?;
    if let Some(held) = j.held {
        held.check_layers(layers, "num_hidden_layers", j.file)?;
    }
    let mut c = DecoderConfig::llama(
        j.uint("vocab_size")?,
        hidden,
        j.uint("intermediate_size")?,
        layers,
        heads,
        kv_heads,
        head_dim,
    );
    c.arch = arch;
    let top_theta = j.opt_f64("rope_theta")?;
    let (theta, scaling) = j.rope("full_attention")?;
    c.rope_theta = top_theta.or(theta).unwrap_or(10000.0);
    c.rope_scaling = scaling;
    c.rms_norm_eps = j.opt_f64("rms_norm_eps")?.unwrap_or(1e-6);
    c.tie_word_embeddings = j.opt_bool("tie_word_embeddings")?.unwrap_or(false);
    c.max_position_embeddings = j.opt_uint("max_position_embeddings")?.unwrap_or(2048);
    let token = |key: &str| {
        j.get(key)
            .and_then(Value::as_u64)
            .and_then(|x| u32::try_from(x).ok())
    };
    c.bos_token_id = token("bos_token_id");
    c.pad_token_id = token("pad_token_id");
    c.eos_token_ids = match j.get("eos_token_id") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|x| x as u32)
            .collect(),
        Some(x) => x.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        None => vec![],
    };
    Ok(c)
}

/// The `config.json` fields every architecture writes; the arch files add theirs.
fn hf_config_common(c: &DecoderConfig, class: &str, model_type: &str) -> Value {
    json!({
        "architectures": [class],
        "model_type": model_type,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "tie_word_embeddings": c.tie_word_embeddings,
        "max_position_embeddings": c.max_position_embeddings,
        "torch_dtype": "float32",
        "bos_token_id": c.bos_token_id,
        "pad_token_id": c.pad_token_id,
        "eos_token_id": if c.eos_token_ids.len() == 1 {
            json!(c.eos_token_ids[0])
        } else {
            json!(c.eos_token_ids)
        },
    })
}

/// A number as transformers' config classes type it: an integer when it is whole (their `int`
/// fields reject `24.0`), else a float.
fn config_number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

/// `layer_types` as transformers writes it.
fn layer_types_json(c: &DecoderConfig) -> Value {
    (0..c.num_hidden_layers)
        .map(|l| match c.layer_kind(l) {
            AttnKind::Global => "full_attention",
            AttnKind::Sliding => "sliding_attention",
        })
        .collect()
}

/// A GGUF's metadata under its `{arch}.` prefix, with the file name for errors.
pub(crate) struct GgufMeta<'a> {
    g: &'a Gguf,
    file: &'a str,
    held: Held,
    arch: &'a str,
}

impl GgufMeta<'_> {
    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.arch)
    }

    fn uint(&self, k: &str) -> Result<usize, LoadError> {
        let key = self.key(k);
        let v = self.g.get_u64(&key).map_err(|c| gguf_err(self.file, c))?;
        match usize::try_from(v) {
            Ok(v) if v > 0 => Ok(v),
            _ => Err(LoadError::invalid(
                self.file,
                format!("metadata `{key}` = {v} must be a positive size"),
            )),
        }
    }

    fn opt_uint(&self, k: &str) -> Result<Option<usize>, LoadError> {
        match self.g.get(&self.key(k)) {
            None => Ok(None),
            Some(_) => self.uint(k).map(Some),
        }
    }

    fn opt_f64(&self, k: &str) -> Result<Option<f64>, LoadError> {
        self.g
            .get_opt_f64(&self.key(k))
            .map_err(|c| gguf_err(self.file, c))
    }

    fn opt_str(&self, k: &str) -> Result<Option<&str>, LoadError> {
        self.g
            .get_opt_str(&self.key(k))
            .map_err(|c| gguf_err(self.file, c))
    }

    fn opt_token(&self, key: &str) -> Result<Option<u32>, LoadError> {
        Ok(self
            .g
            .get_opt_u64(key)
            .map_err(|c| gguf_err(self.file, c))?
            .and_then(|x| u32::try_from(x).ok()))
    }

    fn has_tensor(&self, name: &str) -> bool {
        self.g.tensor(name).is_some()
    }
}

/// The hyper-parameters every GGUF architecture shares, with llama.cpp's defaults.
fn read_gguf_common(m: &GgufMeta, arch: Arch) -> Result<DecoderConfig, LoadError> {
    let hidden = m.uint("embedding_length")?;
    let heads = m.uint("attention.head_count")?;
    let kv = m.opt_uint("attention.head_count_kv")?.unwrap_or(heads);
    let head_dim = m
        .opt_uint("attention.key_length")?
        .or_else(|| implied_head_dim(hidden, heads))
        .ok_or_else(|| {
            LoadError::invalid(
                m.file,
                format!("embedding_length {hidden} is not divisible by head_count {heads}"),
            )
        })?;
    let vocab = match m.g.metadata.get("tokenizer.ggml.tokens") {
        Some(MetaValue::Array(a)) => a.len(),
        _ => m.opt_uint("vocab_size")?.unwrap_or(0),
    };
    let layers = m.uint("block_count")?;
    m.held.check_layers(layers, &m.key("block_count"), m.file)?;
    let mut c = DecoderConfig::llama(
        vocab,
        hidden,
        m.uint("feed_forward_length")?,
        layers,
        heads,
        kv,
        head_dim,
    );
    c.arch = arch;
    c.rms_norm_eps = m
        .opt_f64("attention.layer_norm_rms_epsilon")?
        .unwrap_or(1e-5);
    c.rope_theta = m.opt_f64("rope.freq_base")?.unwrap_or(10000.0);
    c.tie_word_embeddings = !m.has_tensor(Role::Output.gguf());
    c.max_position_embeddings = m.opt_uint("context_length")?.unwrap_or(2048);
    c.bos_token_id = m.opt_token("tokenizer.ggml.bos_token_id")?;
    c.eos_token_ids = m
        .opt_token("tokenizer.ggml.eos_token_id")?
        .into_iter()
        .collect();
    c.pad_token_id = m.opt_token("tokenizer.ggml.padding_token_id")?;
    if let Some(eot) = m.opt_token("tokenizer.ggml.eot_token_id")?
        && !c.is_stop(eot)
    {
        c.stop_token_ids.push(eot);
    }
    Ok(c)
}

/// A `config.json` as llama.cpp's converter looks keys up in it (`find_hparam`, `hparams.get`).
pub(crate) struct HfRaw<'a>(&'a Value);

impl HfRaw<'_> {
    /// `find_hparam(keys, optional=True)`: the value of the first key present (null included).
    fn find(&self, keys: &[&str]) -> Option<&Value> {
        keys.iter()
            .find_map(|k| self.0.get(*k))
            .filter(|v| !v.is_null())
    }

    /// `hparams.get(key) is not None`.
    fn has(&self, key: &str) -> bool {
        self.find(&[key]).is_some()
    }
}

/// Where an architecture writes its GGUF hyper-parameters.
pub(crate) struct GgufOut<'a> {
    m: &'a mut MetaList,
    arch: &'static str,
    raw: HfRaw<'a>,
}

impl GgufOut<'_> {
    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.arch)
    }

    /// gguf-py `add_uint32` of `{arch}.k`.
    fn u32(&mut self, k: &str, v: usize) -> Result<(), HfMetaError> {
        let key = self.key(k);
        self.m.set_u32(key, v)
    }

    /// gguf-py `add_float32` of `{arch}.k`.
    fn f32(&mut self, k: &str, v: f64) {
        let key = self.key(k);
        self.m.set(key, MetaValue::F32(v as f32));
    }
}

/// `TextModel.set_gguf_parameters` for the keys wgtune's architectures can have, ending with
/// `general.file_type`.
fn write_gguf_common(
    c: &DecoderConfig,
    w: &mut GgufOut,
    file_type: u32,
) -> Result<(), HfMetaError> {
    w.u32("block_count", c.num_hidden_layers)?;
    let ctx_keys = [
        "max_position_embeddings",
        "n_ctx",
        "n_positions",
        "max_length",
        "max_sequence_length",
        "model_max_length",
    ];
    if w.raw.find(&ctx_keys).is_some() {
        w.u32("context_length", c.max_position_embeddings)?;
    }
    if w.raw.find(&["hidden_size", "n_embd", "dim"]).is_some() {
        w.u32("embedding_length", c.hidden_size)?;
    }
    let ff_keys = [
        "prefix_dense_intermediate_size",
        "dense_intermediate_size",
        "intermediate_size",
        "n_inner",
        "hidden_dim",
    ];
    if w.raw.find(&ff_keys).is_some() {
        w.u32("feed_forward_length", c.intermediate_size)?;
    }
    if w.raw
        .find(&["num_attention_heads", "n_head", "n_heads"])
        .is_some()
    {
        w.u32("attention.head_count", c.num_attention_heads)?;
    }
    if w.raw.find(&["num_key_value_heads", "n_kv_heads"]).is_some() {
        w.u32("attention.head_count_kv", c.num_key_value_heads)?;
    }
    // `TextModel.__init__`'s `rope_parameters`, mirrored from the top-level keys when the config
    // has no per-layer-kind dict. (llama3 scaling becomes a `rope_freqs` tensor, not a key;
    // other scaling types are refused when the config is parsed.)
    let empty = serde_json::Map::new();
    let params = match w.raw.0.get("rope_parameters") {
        Some(p) => p.as_object(),
        None => w.raw.0.get("rope_scaling").and_then(Value::as_object),
    }
    .unwrap_or(&empty);
    let per_kind =
        params.contains_key("full_attention") || params.contains_key("sliding_attention");
    let top_theta = w.raw.find(&[
        "global_rope_theta",
        "rope_global_theta",
        "rope_theta_global",
        "rope_theta",
        "rotary_emb_base",
    ]);
    let local_theta = w.raw.find(&[
        "local_rope_theta",
        "rope_local_theta",
        "rope_theta_local",
        "swa_rope_theta",
        "rope_local_base_freq",
    ]);
    let present = |v: Option<&Value>| v.is_some_and(|v| !v.is_null());
    let full = params
        .get("full_attention")
        .and_then(Value::as_object)
        .unwrap_or(params);
    let has_theta = present(full.get("rope_theta")) || (!per_kind && top_theta.is_some());
    let has_local = present(
        params
            .get("sliding_attention")
            .and_then(|s| s.get("rope_theta")),
    ) || (!per_kind && local_theta.is_some());
    if has_theta {
        w.f32("rope.freq_base", c.rope_theta);
    }
    if has_local {
        w.f32(
            "rope.freq_base_swa",
            c.rope_local_theta.unwrap_or(c.rope_theta),
        );
    }
    if w.raw.find(&["rms_norm_eps", "norm_eps"]).is_some() {
        w.f32("attention.layer_norm_rms_epsilon", c.rms_norm_eps);
    }
    if let Some(eps) = w
        .raw
        .find(&["layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"])
        .and_then(Value::as_f64)
    {
        w.f32("attention.layer_norm_epsilon", eps);
    }
    if w.raw.has("head_dim") {
        w.u32("attention.key_length", c.head_dim)?;
        w.u32("attention.value_length", c.head_dim)?;
    }
    w.m.set("general.file_type", MetaValue::U32(file_type));
    Ok(())
}
