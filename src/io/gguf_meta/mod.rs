//! The GGUF metadata llama.cpp's `convert_hf_to_gguf.py` writes for an HF model folder, built
//! without Python: `general.*`, the `{arch}.*` hyper-parameters and the `tokenizer.*` keys, with
//! the same keys, values, types and order as the converter (the llama.cpp tree vendored by
//! llama-cpp-python 0.3.36, `conversion/` and `gguf-py`), so that `merge --format gguf` of an HF
//! base writes the file the converter would have written.
//!
//! * `general.*`: `architecture`, `type = model`, the `sampling.*` keys taken from
//!   `generation_config.json` (gguf-py `Metadata.load`), `name` (the caller's, like `--model-name`),
//!   the optional name parts the caller passes (basename, finetune, …) and `size_label` from the
//!   parameter count (gguf-py `size_label`); then, after the hyper-parameters, `file_type` (the
//!   caller's) and `quantization_version = 2`.
//! * `{arch}.*`: `TextModel.set_gguf_parameters` plus each architecture's additions, written by the
//!   architecture files next to their GGUF readers (`crate::model::arch`).
//! * `tokenizer.*`: byte-level BPE `tokenizer.json` → `gpt2` (`TextModel.get_vocab_base`,
//!   `_set_vocab_gpt2`); a `tokenizer.model` → `llama` (`_create_vocab_sentencepiece`, parsed by
//!   [`spm`]); then gguf-py's `SpecialVocab` (merges, special ids, `add_*_token`, chat template,
//!   normalizer flags), ported line by line.
//!
//! `tokenizer.ggml.pre` of a BPE vocabulary: the converter encodes a fixed text with the
//! tokenizer and looks the sha256 of the ids up in its table. Here the same text is encoded by
//! the `tokenizers` library from `tokenizer.json` (what transformers' fast tokenizer runs) and
//! looked up in the same table ([`pre_table`]). Where the hash is unknown the converter stops;
//! here the pre-tokenizer of `tokenizer.json` is recognised instead: a plain GPT-2 `ByteLevel`
//! (regex on) is `gpt-2`, and a `Split` by one of the regexes transformers knows for a llama.cpp
//! pre name, followed by `ByteLevel` without regex, is that name (`qwen2`, `llama-bpe`, …).
//! [`HfMetaOptions::force_pre`] overrides both (like `tests/fixtures/run_convert.py`'s
//! `GGUF_FORCE_PRE`, it is used only when the hash is unknown).
//!
//! Not reproduced (the converter would write them): `general.*` keys from a README model card
//! (license, tags, base models, datasets, …) and the name heuristics on the folder name unless
//! the caller passes them; the `LlamaHfVocab` path (a Llama without `tokenizer.model` whose
//! `tokenizer.json` is a byte-fallback SentencePiece-style BPE: refused); the re-encoding of
//! non-normalized added tokens (`decode(encode(t))`, an identity for the tokens of the supported
//! families); `additional_chat_templates/`.

mod pre_table;
mod sha256;
pub mod spm;

use crate::io::gguf::MetaValue;
use crate::io::gguf_write::QUANT_VERSION;
use crate::io::{Blob, FileSource, LoadError};
use crate::model::config::DecoderConfig;
use serde_json::{Map, Value};
use thiserror::Error;

/// Largest vocabulary accepted (tokens are listed one by one in the metadata): 4 Mi entries, ten
/// times the largest supported family's.
pub const MAX_VOCAB: usize = 1 << 22;
/// Largest `tokenizer.json` accepted (Gemma 3's is 33 MB).
pub const MAX_TOKENIZER_JSON: usize = 256 << 20;
/// Largest `tokenizer.model` accepted (Gemma 3's is 4.7 MB).
pub const MAX_TOKENIZER_MODEL: usize = 64 << 20;
/// Largest small JSON file accepted (config, tokenizer_config, generation_config, chat templates).
pub const MAX_SMALL_FILE: usize = 64 << 20;

/// llama.cpp token types (`gguf.TokenType`, `SentencePieceTokenTypes`).
mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// Why the metadata cannot be built. Each message names the file at fault.
#[derive(Debug, Error)]
pub enum HfMetaError {
    /// A file is larger than wgtune accepts for its kind.
    #[error("{file}: {len} bytes is more than the {max} accepted")]
    TooLarge {
        /// The file name.
        file: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A JSON file does not parse.
    #[error("{file}: invalid JSON: {cause}")]
    Json {
        /// The file name.
        file: &'static str,
        /// What serde said.
        cause: serde_json::Error,
    },
    /// `tokenizer.model` is not a SentencePiece model.
    #[error(transparent)]
    SentencePiece(#[from] spm::SpmError),
    /// A file parses but holds something the converter would refuse.
    #[error("{file}: {msg}")]
    Invalid {
        /// The file name.
        file: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// No tokenizer file the converter could use for this model.
    #[error("no tokenizer: {0}")]
    NoTokenizer(String),
    /// A tokenizer kind the converter handles but wgtune does not reproduce.
    #[error("unsupported tokenizer: {0}")]
    Unsupported(String),
    /// The BPE pre-tokenizer is neither in llama.cpp's table nor recognisable.
    #[error(
        "tokenizer.json: BPE pre-tokenizer not recognised (chkhsh {hash}); llama.cpp's converter \
         refuses it too. Name it explicitly (force_pre) if you know which llama.cpp pre-tokenizer it is"
    )]
    UnknownPreTokenizer {
        /// The sha256 of the check text's ids.
        hash: String,
    },
    /// The `tokenizers` library refused `tokenizer.json`.
    #[error("tokenizer.json: {0}")]
    Tokenizer(String),
    /// A value does not fit the GGUF type the converter writes it as.
    #[error("metadata {key}: {value} does not fit in a u32")]
    TooBig {
        /// The GGUF key.
        key: String,
        /// The value.
        value: u64,
    },
}

/// The raw bytes of an HF folder's files that the converter reads for metadata; the caller reads
/// them (nothing here touches the file system). Absent files are `None`.
#[derive(Debug, Clone, Copy, Default)]
pub struct HfFiles<'a> {
    /// `config.json` (presence rules: the converter writes some keys only when the config has them).
    pub config_json: &'a [u8],
    /// `tokenizer.json`.
    pub tokenizer_json: Option<&'a [u8]>,
    /// `tokenizer_config.json`.
    pub tokenizer_config_json: Option<&'a [u8]>,
    /// `tokenizer.model` (SentencePiece).
    pub tokenizer_model: Option<&'a [u8]>,
    /// `added_tokens.json` (read with `tokenizer.model`).
    pub added_tokens_json: Option<&'a [u8]>,
    /// `chat_template.jinja` (used when tokenizer_config.json has no `chat_template`).
    pub chat_template_jinja: Option<&'a [u8]>,
    /// `chat_template.json` (used when neither of the above has a template).
    pub chat_template_json: Option<&'a [u8]>,
    /// `generation_config.json` (`general.sampling.*`).
    pub generation_config_json: Option<&'a [u8]>,
}

/// The files of [`HfFiles`], read through a [`FileSource`] and held.
pub struct HfFileBlobs {
    config_json: Blob,
    others: [Option<Blob>; 7],
}

/// File names of `HfFileBlobs::others`, in `HfFiles` field order.
const OPTIONAL_FILES: [&str; 7] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
];

impl HfFileBlobs {
    /// Read every file the converter looks at for metadata from an HF folder (`config.json` must
    /// exist; the others may not).
    pub fn read(src: &dyn FileSource) -> Result<Self, LoadError> {
        let config_json = crate::io::read_required(src, "config.json")?;
        let mut others: [Option<Blob>; 7] = Default::default();
        for (slot, name) in others.iter_mut().zip(OPTIONAL_FILES) {
            *slot = src.read(name)?;
        }
        Ok(Self {
            config_json,
            others,
        })
    }

    /// Borrow the bytes as [`HfFiles`].
    pub fn files(&self) -> HfFiles<'_> {
        let b = |i: usize| self.others[i].as_ref().map(|b| (**b).as_ref());
        HfFiles {
            config_json: (*self.config_json).as_ref(),
            tokenizer_json: b(0),
            tokenizer_config_json: b(1),
            tokenizer_model: b(2),
            added_tokens_json: b(3),
            chat_template_jinja: b(4),
            chat_template_json: b(5),
            generation_config_json: b(6),
        }
    }
}

/// What the converter takes from its command line, and the name parts gguf-py would derive.
#[derive(Debug, Clone, Default)]
pub struct HfMetaOptions {
    /// `general.name` (the converter's `--model-name`; without it gguf-py titles the folder
    /// name, see [`crate::io::gguf_adapter::title`]).
    pub name: String,
    /// `general.file_type` (llama.cpp `LlamaFileType`: 0 all F32, 1 mostly F16, 7 Q8_0, 32 BF16).
    pub file_type: u32,
    /// Parameters for `general.size_label` (gguf-py counts the elements of every tensor written);
    /// `None` uses [`gguf_param_count`] of the config.
    pub param_count: Option<u64>,
    /// `general.size_label` to write instead of the one derived from the parameter count.
    pub size_label: Option<String>,
    /// `general.basename`, when known.
    pub basename: Option<String>,
    /// `general.finetune`, when known.
    pub finetune: Option<String>,
    /// `general.version`, when known.
    pub version: Option<String>,
    /// `general.organization`, when known.
    pub organization: Option<String>,
    /// `tokenizer.ggml.pre` for a BPE vocabulary whose check hash llama.cpp does not know.
    pub force_pre: Option<String>,
}

/// An ordered GGUF metadata list with gguf-py `GGUFWriter` semantics: adding a key that is
/// already there replaces its value in place (the converter adds some keys twice).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetaList(Vec<(String, MetaValue)>);

impl MetaList {
    /// Set `key` to `value`: in place when present, else at the end.
    pub fn set(&mut self, key: impl Into<String>, value: MetaValue) {
        let key = key.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    /// Set a `u32` value, refusing values that do not fit (gguf-py would fail to pack them).
    pub fn set_u32(&mut self, key: impl Into<String>, value: usize) -> Result<(), HfMetaError> {
        let key = key.into();
        let v = u32::try_from(value).map_err(|_| HfMetaError::TooBig {
            key: key.clone(),
            value: value as u64,
        })?;
        self.set(key, MetaValue::U32(v));
        Ok(())
    }

    /// Remove `key` if present.
    pub fn remove(&mut self, key: &str) {
        self.0.retain(|(k, _)| k != key);
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The list, in order.
    pub fn into_vec(self) -> Vec<(String, MetaValue)> {
        self.0
    }
}

/// Parse a JSON file, bounded in size.
fn json(file: &'static str, bytes: &[u8], max: usize) -> Result<Value, HfMetaError> {
    if bytes.len() > max {
        return Err(HfMetaError::TooLarge {
            file,
            len: bytes.len(),
            max,
        });
    }
    serde_json::from_slice(bytes).map_err(|cause| HfMetaError::Json { file, cause })
}

/// Parse a JSON file that must be an object.
fn json_object(file: &'static str, bytes: &[u8]) -> Result<Map<String, Value>, HfMetaError> {
    match json(file, bytes, MAX_SMALL_FILE)? {
        Value::Object(m) => Ok(m),
        _ => Err(HfMetaError::Invalid {
            file,
            msg: "must hold a JSON object".into(),
        }),
    }
}

/// Parameters gguf-py counts for `general.size_label`: every weight the converter writes (a tied
/// head once) plus llama.cpp's `rope_freqs` for Llama-3 RoPE scaling.
pub fn gguf_param_count(c: &DecoderConfig) -> u64 {
    let rope_freqs = llama3_rope_freqs(c).map_or(0, |f| f.len());
    c.num_parameters() as u64 + rope_freqs as u64
}

/// gguf-py `model_weight_count_rounded_notation(n, min_digits=2)`: `135M`, `1.2B`, `36K`.
pub fn size_label(n: u64) -> String {
    let n = n as f64;
    let (x, suffix) = if n > 1e12 {
        (n * 1e-12, "T")
    } else if n > 1e9 {
        (n * 1e-9, "B")
    } else if n > 1e6 {
        (n * 1e-6, "M")
    } else {
        (n * 1e-3, "K")
    };
    // Python: len(str(round(x)).lstrip('0')), round half to even.
    let rounded = x.round_ties_even() as u64;
    let digits = if rounded == 0 {
        0
    } else {
        rounded.to_string().len()
    };
    let fix = 2usize.saturating_sub(digits);
    format!("{x:.fix$}{suffix}")
}

/// The `rope_freqs.weight` tensor llama.cpp's converter adds for Llama-3 RoPE scaling
/// (`LlamaModel.generate_extra_tensors`; llama.cpp has no metadata keys for it): one factor per
/// rotated pair, computed in f32 like the converter's torch code. `None` without scaling.
pub fn llama3_rope_freqs(c: &DecoderConfig) -> Option<Vec<f32>> {
    let s = c.rope_scaling.as_ref()?;
    let dim = c.head_dim;
    let base = c.rope_theta as f32;
    let low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
    let high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
    let two_pi = (2.0 * std::f64::consts::PI) as f32;
    Some(
        (0..dim)
            .step_by(2)
            .map(|i| {
                let freq = 1.0 / base.powf(i as f32 / dim as f32);
                let wavelen = two_pi / freq;
                if (wavelen as f64) < high_wavelen {
                    1.0
                } else if (wavelen as f64) > low_wavelen {
                    s.factor as f32
                } else {
                    let smooth = ((s.original_max_position_embeddings as f32) / wavelen
                        - s.low_freq_factor as f32)
                        / (s.high_freq_factor as f32 - s.low_freq_factor as f32);
                    1.0 / ((1.0 - smooth) / s.factor as f32 + smooth)
                }
            })
            .collect(),
    )
}

/// The complete GGUF metadata llama.cpp's converter writes for the HF model of `config` whose
/// files are `files` (see the module docs for what is and is not reproduced). `config` must be
/// the [`DecoderConfig`] parsed from `files.config_json`; its values are written, the raw JSON
/// decides which optional keys the converter would write.
pub fn hf_gguf_metadata(
    config: &DecoderConfig,
    files: &HfFiles,
    opts: &HfMetaOptions,
) -> Result<Vec<(String, MetaValue)>, HfMetaError> {
    let raw = Value::Object(json_object("config.json", files.config_json)?);
    let arch = config.arch.gguf_arch();
    let mut m = MetaList::default();
    let text = |s: &str| MetaValue::Str(s.to_string());
    m.set("general.architecture", text(arch));
    m.set("general.type", text("model"));
    if let Some(g) = files.generation_config_json {
        // gguf-py ignores a generation_config.json that does not parse.
        if let Ok(Value::Object(g)) = json("generation_config.json", g, MAX_SMALL_FILE) {
            sampling(&g, &mut m);
        }
    }
    m.set("general.name", text(&opts.name));
    for (key, v) in [
        ("general.version", &opts.version),
        ("general.organization", &opts.organization),
        ("general.finetune", &opts.finetune),
        ("general.basename", &opts.basename),
    ] {
        if let Some(v) = v {
            m.set(key, text(v));
        }
    }
    let params = opts.param_count.unwrap_or_else(|| gguf_param_count(config));
    let label = match &opts.size_label {
        Some(l) => Some(l.clone()),
        None => (params > 0).then(|| size_label(params)),
    };
    if let Some(label) = label {
        m.set("general.size_label", text(&label));
    }
    config
        .arch
        .write_gguf_hparams(config, &raw, opts.file_type, &mut m)?;
    m.set(
        "general.quantization_version",
        MetaValue::U32(QUANT_VERSION),
    );
    write_vocab(config, &raw, files, opts, &mut m)?;
    Ok(m.into_vec())
}

/// `general.sampling.*` from `generation_config.json` (gguf-py `Metadata.load`); values of the
/// wrong JSON type are skipped (gguf-py would fail to pack them).
fn sampling(g: &Map<String, Value>, m: &mut MetaList) {
    let get = |k: &str| g.get(k).filter(|v| !v.is_null());
    let float = |k: &str| {
        get(k)
            .and_then(Value::as_f64)
            .map(|x| MetaValue::F32(x as f32))
    };
    let int = |k: &str| {
        get(k)
            .and_then(Value::as_i64)
            .and_then(|x| i32::try_from(x).ok())
            .map(MetaValue::I32)
    };
    let entries = [
        (
            "sequence",
            get("sequence")
                .and_then(Value::as_str)
                .map(|s| MetaValue::Str(s.into())),
        ),
        ("top_k", int("top_k")),
        ("top_p", float("top_p")),
        ("min_p", float("min_p")),
        ("xtc_probability", float("xtc_probability")),
        ("xtc_threshold", float("xtc_threshold")),
        ("temp", float("temperature")),
        ("penalty_last_n", int("penalty_last_n")),
        (
            "penalty_repeat",
            if get("penalty_repeat").is_some() {
                float("penalty_repeat")
            } else {
                float("repetition_penalty")
            },
        ),
        ("mirostat", int("mirostat")),
        ("mirostat_tau", float("mirostat_tau")),
        ("mirostat_eta", float("mirostat_eta")),
    ];
    for (k, v) in entries {
        if let Some(v) = v {
            m.set(format!("general.sampling.{k}"), v);
        }
    }
}

/// `TextModel.does_token_look_special`.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// Which vocabulary writer the converter's `set_vocab` picks for this architecture and these files.
fn write_vocab(
    c: &DecoderConfig,
    raw: &Value,
    files: &HfFiles,
    opts: &HfMetaOptions,
    m: &mut MetaList,
) -> Result<(), HfMetaError> {
    use crate::model::arch::Arch;
    let tok_config = match files.tokenizer_config_json {
        Some(b) => Some(json_object("tokenizer_config.json", b)?),
        None => None,
    };
    let tok_json = match files.tokenizer_json {
        Some(b) => match json("tokenizer.json", b, MAX_TOKENIZER_JSON)? {
            Value::Object(o) => Some(o),
            _ => {
                return Err(HfMetaError::Invalid {
                    file: "tokenizer.json",
                    msg: "must hold a JSON object".into(),
                });
            }
        },
        None => None,
    };
    let llama = matches!(c.arch, Arch::Llama | Arch::Mistral);
    if llama
        && let Some(v) = tok_config
            .as_ref()
            .and_then(|t| t.get("add_prefix_space"))
            .and_then(Value::as_bool)
    {
        m.set("tokenizer.ggml.add_space_prefix", MetaValue::Bool(v));
    }
    let ctx = VocabCtx {
        c,
        raw,
        files,
        tok_config: tok_config.as_ref(),
        tok_json: tok_json.as_ref(),
    };
    if files.tokenizer_model.is_some() {
        ctx.sentencepiece(m)?;
        if c.arch == Arch::Gemma3 {
            m.set("tokenizer.ggml.add_space_prefix", MetaValue::Bool(false));
        }
    } else {
        if llama && let Some(t) = ctx.tok_json {
            // `LlamaHfVocab`: a byte-fallback BPE that is not Llama 3's is read as SentencePiece.
            let model = t.get("model");
            let flag = |k: &str, d: bool| {
                model
                    .and_then(|x| x.get(k))
                    .and_then(Value::as_bool)
                    .unwrap_or(d)
            };
            let bpe = model.and_then(|x| x.get("type")).and_then(Value::as_str) == Some("BPE");
            let llama3 = bpe && flag("ignore_merges", false) && !flag("byte_fallback", true);
            let decoder_seq = t
                .get("decoder")
                .and_then(|d| d.get("type"))
                .and_then(Value::as_str)
                == Some("Sequence");
            if !llama3 && bpe && flag("byte_fallback", false) && decoder_seq {
                return Err(HfMetaError::Unsupported(
                    "a Llama tokenizer.json with byte fallback and no tokenizer.model \
                     (llama.cpp's LlamaHfVocab path) is not reproduced"
                        .into(),
                ));
            }
        }
        ctx.gpt2(opts, m)?;
    }
    if llama && c.vocab_size == 49152 {
        // llama.cpp: "Apply to granite small models only" (and SmolLM, which has this size).
        m.set("tokenizer.ggml.add_bos_token", MetaValue::Bool(false));
    }
    if llama && c.vocab_size == 32016 {
        return Err(HfMetaError::Unsupported(
            "CodeLlama's infill tokens (vocab_size 32016) are not reproduced".into(),
        ));
    }
    Ok(())
}

/// Everything the vocabulary writers read.
struct VocabCtx<'a> {
    c: &'a DecoderConfig,
    raw: &'a Value,
    files: &'a HfFiles<'a>,
    tok_config: Option<&'a Map<String, Value>>,
    tok_json: Option<&'a Map<String, Value>>,
}

/// One entry of tokenizer.json's `added_tokens`.
struct Added<'a> {
    id: u64,
    content: &'a str,
    special: bool,
}

impl<'a> VocabCtx<'a> {
    /// The vocabulary size the converter uses: config.json's `vocab_size`, else `fallback`.
    fn vocab_size(&self, fallback: usize) -> Result<usize, HfMetaError> {
        let n = if self.raw.get("vocab_size").is_some_and(|v| !v.is_null()) {
            self.c.vocab_size
        } else {
            fallback
        };
        if n > MAX_VOCAB {
            return Err(HfMetaError::Invalid {
                file: "config.json",
                msg: format!("vocab_size {n} is more than the {MAX_VOCAB} accepted"),
            });
        }
        Ok(n)
    }

    /// tokenizer.json's `added_tokens`.
    fn added_tokens(&self) -> Vec<Added<'a>> {
        let list = self
            .tok_json
            .and_then(|t| t.get("added_tokens"))
            .and_then(Value::as_array);
        list.into_iter()
            .flatten()
            .filter_map(|a| {
                Some(Added {
                    id: a.get("id")?.as_u64()?,
                    content: a.get("content")?.as_str()?,
                    special: a.get("special").and_then(Value::as_bool).unwrap_or(false),
                })
            })
            .collect()
    }

    /// `_set_vocab_gpt2`: byte-level BPE from tokenizer.json.
    fn gpt2(&self, opts: &HfMetaOptions, m: &mut MetaList) -> Result<(), HfMetaError> {
        let tj = self.tok_json.ok_or_else(|| {
            HfMetaError::NoTokenizer("neither tokenizer.model nor tokenizer.json".into())
        })?;
        let bad = |msg: &str| HfMetaError::Invalid {
            file: "tokenizer.json",
            msg: msg.into(),
        };
        let model = tj.get("model").ok_or_else(|| bad("no `model`"))?;
        if model.get("type").and_then(Value::as_str) != Some("BPE") {
            return Err(HfMetaError::Unsupported(
                "tokenizer.json model is not BPE (only byte-level BPE and SentencePiece are reproduced)"
                    .into(),
            ));
        }
        let vocab = model
            .get("vocab")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("`model.vocab` must be an object"))?;
        let added = self.added_tokens();
        // transformers' `tokenizer.vocab`: the model's vocabulary plus the added tokens.
        let mut by_content: std::collections::HashMap<&str, u64> =
            std::collections::HashMap::with_capacity(vocab.len() + added.len());
        for (t, id) in vocab {
            let id = id
                .as_u64()
                .ok_or_else(|| bad("a `model.vocab` id is not an integer"))?;
            by_content.insert(t.as_str(), id);
        }
        for a in &added {
            by_content.insert(a.content, a.id);
        }
        let n = self.vocab_size(by_content.len())?;
        let mut reverse: Vec<Option<&str>> = vec![None; n];
        for (&t, &id) in &by_content {
            let slot = usize::try_from(id)
                .ok()
                .and_then(|i| reverse.get_mut(i))
                .ok_or_else(|| {
                    bad(&format!(
                        "token id {id} is not below the vocabulary size {n}"
                    ))
                })?;
            // Several strings with one id: Python's dict comprehension keeps the last; the
            // order here is unspecified, so keep the smallest string for determinism.
            if slot.is_none_or(|s| t < s) {
                *slot = Some(t);
            }
        }
        let added_by_content: std::collections::HashMap<&str, &Added> =
            added.iter().map(|a| (a.content, a)).collect();
        let added_by_id: std::collections::HashMap<u64, &Added> =
            added.iter().map(|a| (a.id, a)).collect();
        let mut tokens = Vec::with_capacity(n);
        let mut types = Vec::with_capacity(n);
        for (i, t) in reverse.iter().enumerate() {
            match t {
                None => {
                    tokens.push(MetaValue::Str(format!("[PAD{i}]")));
                    types.push(MetaValue::I32(token_type::UNUSED));
                }
                Some(t) if added_by_content.contains_key(t) => {
                    let special = added_by_id.get(&(i as u64)).is_some_and(|a| a.special);
                    if special || looks_special(t) {
                        tokens.push(MetaValue::Str(t.to_string()));
                        types.push(MetaValue::I32(token_type::CONTROL));
                    } else {
                        tokens.push(MetaValue::Str(t.replace('\u{2581}', " ")));
                        types.push(MetaValue::I32(token_type::USER_DEFINED));
                    }
                }
                Some(t) => {
                    tokens.push(MetaValue::Str(t.to_string()));
                    types.push(MetaValue::I32(token_type::NORMAL));
                }
            }
        }
        let pre = self.bpe_pre(opts)?;
        m.set("tokenizer.ggml.model", MetaValue::Str("gpt2".into()));
        m.set("tokenizer.ggml.pre", MetaValue::Str(pre));
        m.set("tokenizer.ggml.tokens", MetaValue::Array(tokens));
        m.set("tokenizer.ggml.token_type", MetaValue::Array(types));
        self.special_vocab(true, None, m)
    }

    /// `get_vocab_base_pre`: the table name of the check text's hash, else the recognised
    /// pre-tokenizer, else `force_pre`.
    fn bpe_pre(&self, opts: &HfMetaOptions) -> Result<String, HfMetaError> {
        let hash = chkhsh(self.files.tokenizer_json.unwrap_or_default())?;
        if let Some(name) = known_pre(&hash) {
            return Ok(name.to_string());
        }
        if let Some(p) = &opts.force_pre {
            return Ok(p.clone());
        }
        let pre = self.tok_json.and_then(|t| t.get("pre_tokenizer"));
        recognise_pre(pre).ok_or(HfMetaError::UnknownPreTokenizer { hash })
    }

    /// `_create_vocab_sentencepiece` + `_set_vocab_sentencepiece`.
    fn sentencepiece(&self, m: &mut MetaList) -> Result<(), HfMetaError> {
        let bytes = self.files.tokenizer_model.unwrap_or_default();
        if bytes.len() > MAX_TOKENIZER_MODEL {
            return Err(HfMetaError::TooLarge {
                file: "tokenizer.model",
                len: bytes.len(),
                max: MAX_TOKENIZER_MODEL,
            });
        }
        let pieces = spm::parse_pieces(bytes, MAX_VOCAB)?;
        let n = self.vocab_size(pieces.len())?;
        let mut tokens: Vec<String> = (0..n).map(|i| format!("[PAD{i}]")).collect();
        let mut scores = vec![-10000.0f32; n];
        let mut types = vec![token_type::UNUSED; n];
        for (i, p) in pieces.iter().enumerate().take(n) {
            tokens[i] = p.piece.clone();
            scores[i] = p.score;
            types[i] = match p.kind {
                spm::PieceType::Unknown => token_type::UNKNOWN,
                spm::PieceType::Control => token_type::CONTROL,
                spm::PieceType::Unused => token_type::UNUSED,
                spm::PieceType::Byte => token_type::BYTE,
                spm::PieceType::Normal | spm::PieceType::UserDefined => token_type::NORMAL,
            };
        }
        if let Some(b) = self.files.added_tokens_json {
            for (t, id) in json_object("added_tokens.json", b)? {
                if let Some(i) = id.as_u64().and_then(|i| usize::try_from(i).ok())
                    && i < n
                {
                    tokens[i] = t;
                    scores[i] = -1000.0;
                    types[i] = token_type::USER_DEFINED;
                }
            }
        }
        if let Some(decoder) = self
            .tok_config
            .and_then(|t| t.get("added_tokens_decoder"))
            .and_then(Value::as_object)
        {
            for (id, data) in decoder {
                let bad = || HfMetaError::Invalid {
                    file: "tokenizer_config.json",
                    msg: format!("added_tokens_decoder entry {id:?} is malformed"),
                };
                let i: usize = id.parse().map_err(|_| bad())?;
                let content = data
                    .get("content")
                    .and_then(Value::as_str)
                    .ok_or_else(bad)?;
                if i >= n {
                    continue;
                }
                let special = data.get("special").and_then(Value::as_bool) == Some(true);
                if special || looks_special(content) {
                    types[i] = token_type::CONTROL;
                    tokens[i] = content.to_string();
                } else {
                    types[i] = token_type::USER_DEFINED;
                    tokens[i] = content.replace('\u{2581}', " ");
                }
                scores[i] = -1000.0;
            }
        }
        m.set("tokenizer.ggml.model", MetaValue::Str("llama".into()));
        m.set("tokenizer.ggml.pre", MetaValue::Str("default".into()));
        m.set(
            "tokenizer.ggml.tokens",
            MetaValue::Array(tokens.into_iter().map(MetaValue::Str).collect()),
        );
        m.set(
            "tokenizer.ggml.scores",
            MetaValue::Array(scores.into_iter().map(MetaValue::F32).collect()),
        );
        m.set(
            "tokenizer.ggml.token_type",
            MetaValue::Array(types.into_iter().map(MetaValue::I32).collect()),
        );
        self.special_vocab(false, Some(n), m)
    }

    /// gguf-py `SpecialVocab(path, load_merges, n_vocab=…).add_to_gguf`.
    fn special_vocab(
        &self,
        load_merges: bool,
        n_vocab: Option<usize>,
        m: &mut MetaList,
    ) -> Result<(), HfMetaError> {
        let mut sv = SpecialVocab {
            types: ["bos", "eos", "unk", "sep", "pad", "cls", "mask"]
                .map(String::from)
                .to_vec(),
            ids: Vec::new(),
            add: Vec::new(),
            n_vocab,
        };
        let mut merges = Vec::new();
        let mut lowercase = None;
        let mut strip_accents = None;
        let mut tc = self.tok_config.cloned();
        let added = self.added_tokens();
        if let Some(tj) = self.tok_json {
            if load_merges {
                merges = read_merges(tj)?;
            }
            if let Some(norm) = tj.get("normalizer").filter(|n| truthy(n)) {
                parse_normalizer(norm, &mut lowercase, &mut strip_accents, 0);
            }
            sv.post_processor(tj, &mut tc);
        }
        let mut template = None;
        if let Some(tc) = tc.as_ref().filter(|t| !t.is_empty()) {
            let alt = match (
                self.files.chat_template_jinja,
                self.files.chat_template_json,
            ) {
                (Some(j), _) => Some(Value::String(String::from_utf8(j.to_vec()).map_err(
                    |_| HfMetaError::Invalid {
                        file: "chat_template.jinja",
                        msg: "not valid UTF-8".into(),
                    },
                )?)),
                (None, Some(j)) => json_object("chat_template.json", j)?
                    .get("chat_template")
                    .cloned(),
                (None, None) => None,
            };
            template = match tc.get("chat_template").or(alt.as_ref()) {
                Some(v @ (Value::String(_) | Value::Array(_))) => Some(v.clone()),
                _ => None,
            };
            let types = sv.types.clone();
            for typ in &types {
                if let Some(Value::Bool(b)) = tc.get(&format!("add_{typ}_token"))
                    && !sv.add.iter().any(|(t, _)| t == typ)
                {
                    sv.add.push((typ.clone(), *b));
                }
                let content = match tc.get(&format!("{typ}_token")) {
                    Some(Value::String(s)) => s.as_str(),
                    Some(Value::Object(o)) => match o.get("content") {
                        Some(Value::String(s)) => s.as_str(),
                        _ => continue,
                    },
                    _ => continue,
                };
                if let Some(a) = added.iter().find(|a| a.content == content) {
                    sv.set(typ, Some(a.id as i64))?;
                }
            }
        }
        // `_try_load_from_config_json`.
        let types = sv.types.clone();
        for typ in &types {
            let key = format!("{typ}_token_id");
            let v = match self.raw.get(&key) {
                Some(v) if !v.is_null() => Some(v),
                _ => self.raw.get("text_config").and_then(|t| t.get(&key)),
            };
            sv.set(typ, v.and_then(Value::as_i64))?;
        }
        // `add_to_gguf`.
        if !merges.is_empty() {
            m.set(
                "tokenizer.ggml.merges",
                MetaValue::Array(merges.into_iter().map(MetaValue::Str).collect()),
            );
        }
        for (typ, id) in &sv.ids {
            let key = match typ.as_str() {
                "bos" => "tokenizer.ggml.bos_token_id",
                "eos" => "tokenizer.ggml.eos_token_id",
                "unk" => "tokenizer.ggml.unknown_token_id",
                "sep" => "tokenizer.ggml.seperator_token_id",
                "pad" => "tokenizer.ggml.padding_token_id",
                "mask" => "tokenizer.ggml.mask_token_id",
                "eot" => "tokenizer.ggml.eot_token_id",
                "eom" => "tokenizer.ggml.eom_token_id",
                _ => continue, // gguf-py has no handler (cls)
            };
            m.set_u32(key, *id as usize)?;
        }
        for (typ, v) in &sv.add {
            if matches!(typ.as_str(), "bos" | "eos" | "sep") {
                m.set(
                    format!("tokenizer.ggml.add_{typ}_token"),
                    MetaValue::Bool(*v),
                );
            }
        }
        match template {
            Some(Value::String(s)) => m.set("tokenizer.chat_template", MetaValue::Str(s)),
            Some(Value::Array(list)) => named_templates(&list, m),
            _ => {}
        }
        if let Some(v) = lowercase {
            m.set("tokenizer.ggml.normalizer.lowercase", MetaValue::Bool(v));
        }
        if let Some(v) = strip_accents {
            m.set(
                "tokenizer.ggml.normalizer.strip_accents",
                MetaValue::Bool(v),
            );
        }
        Ok(())
    }
}

/// llama.cpp's `chkhsh` of a `tokenizer.json`: the sha256 (hex) of Python's `str()` of the ids
/// the tokenizer gives the converter's check text (special tokens added, as `encode` does).
pub fn chkhsh(tokenizer_json: &[u8]) -> Result<String, HfMetaError> {
    if tokenizer_json.len() > MAX_TOKENIZER_JSON {
        return Err(HfMetaError::TooLarge {
            file: "tokenizer.json",
            len: tokenizer_json.len(),
            max: MAX_TOKENIZER_JSON,
        });
    }
    let tok = tokenizers::Tokenizer::from_bytes(tokenizer_json)
        .map_err(|e| HfMetaError::Tokenizer(e.to_string()))?;
    let enc = tok
        .encode(pre_table::CHKTXT, true)
        .map_err(|e| HfMetaError::Tokenizer(e.to_string()))?;
    let ids: Vec<String> = enc.get_ids().iter().map(u32::to_string).collect();
    Ok(sha256::sha256_hex(
        format!("[{}]", ids.join(", ")).as_bytes(),
    ))
}

/// The `tokenizer.ggml.pre` llama.cpp's converter gives a [`chkhsh`], if its table has it.
pub fn known_pre(hash: &str) -> Option<&'static str> {
    pre_table::PRE_HASHES
        .iter()
        .find(|(h, _)| *h == hash)
        .map(|(_, name)| *name)
}

/// Python truthiness of a JSON value.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// gguf-py `add_chat_template` of a list of `{name, template}`.
fn named_templates(list: &[Value], m: &mut MetaList) {
    let mut default = None;
    let mut names: Vec<String> = Vec::new();
    for choice in list {
        let name: String = choice
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let Some(t) = choice.get("template").and_then(Value::as_str) else {
            continue;
        };
        if name.is_empty() {
            continue;
        }
        if name == "default" {
            default = Some(t.to_string());
        } else {
            m.set(
                format!("tokenizer.chat_template.{name}"),
                MetaValue::Str(t.into()),
            );
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    if !names.is_empty() {
        // gguf-py writes `list(set(names))`, whose order Python does not fix; sorted here.
        names.sort();
        m.set(
            "tokenizer.chat_templates",
            MetaValue::Array(names.into_iter().map(MetaValue::Str).collect()),
        );
    }
    if let Some(d) = default {
        m.set("tokenizer.chat_template", MetaValue::Str(d));
    }
}

/// gguf-py `SpecialVocab._parse_normalizer`.
fn parse_normalizer(
    n: &Value,
    lowercase: &mut Option<bool>,
    strip: &mut Option<bool>,
    depth: usize,
) {
    match n.get("type").and_then(Value::as_str) {
        Some("Lowercase") => *lowercase = Some(true),
        Some("StripAccents") => *strip = Some(true),
        Some("BertNormalizer") => {
            if let Some(v) = n.get("lowercase").and_then(Value::as_bool) {
                *lowercase = Some(v);
            }
            if let Some(v) = n.get("strip_accents").and_then(Value::as_bool) {
                *strip = Some(v);
            }
        }
        Some("Sequence") if depth < 8 => {
            for x in n
                .get("normalizers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                parse_normalizer(x, lowercase, strip, depth + 1);
            }
        }
        _ => {}
    }
}

/// tokenizer.json's merges as gguf-py writes them: `"a b"` strings; pairs (transformers ≥ 4.45)
/// joined by a space with spaces inside a part written as `Ġ` (U+0120).
fn read_merges(tj: &Map<String, Value>) -> Result<Vec<String>, HfMetaError> {
    let Some(Value::Array(list)) = tj.get("model").and_then(|m| m.get("merges")) else {
        return Ok(Vec::new());
    };
    let bad = || HfMetaError::Invalid {
        file: "tokenizer.json",
        msg: "unknown tokenizer merges format".into(),
    };
    match list.first() {
        None => Ok(Vec::new()),
        Some(Value::String(_)) => list
            .iter()
            .map(|s| s.as_str().map(str::to_string).ok_or_else(bad))
            .collect(),
        Some(Value::Array(_)) => list
            .iter()
            .map(|pair| {
                let parts = pair.as_array().ok_or_else(bad)?;
                let parts: Vec<String> = parts
                    .iter()
                    .map(|p| {
                        p.as_str()
                            .map(|s| s.replace(' ', "\u{120}"))
                            .ok_or_else(bad)
                    })
                    .collect::<Result<_, _>>()?;
                Ok(parts.join(" "))
            })
            .collect(),
        Some(_) => Err(bad()),
    }
}

/// Regexes transformers knows for llama.cpp pre-tokenizer names, with the name the converter's
/// table gives the family's reference model.
fn recognise_pre(pre: Option<&Value>) -> Option<String> {
    let pre = pre?;
    let ty = pre.get("type").and_then(Value::as_str)?;
    if ty == "ByteLevel" {
        let regex = pre
            .get("use_regex")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        return regex.then(|| "gpt-2".to_string());
    }
    if ty != "Sequence" {
        return None;
    }
    let list = pre.get("pretokenizers")?.as_array()?;
    let [split, bl] = list.as_slice() else {
        return None;
    };
    let byte_level_plain = bl.get("type").and_then(Value::as_str) == Some("ByteLevel")
        && bl.get("use_regex").and_then(Value::as_bool) == Some(false);
    let regex = split
        .get("pattern")
        .and_then(|p| p.get("Regex"))
        .and_then(Value::as_str)?;
    let isolated = split.get("type").and_then(Value::as_str) == Some("Split")
        && split.get("behavior").and_then(Value::as_str) == Some("Isolated")
        && split.get("invert").and_then(Value::as_bool) != Some(true);
    if !(byte_level_plain && isolated) {
        return None;
    }
    ["llama-bpe", "qwen2", "tekken", "gpt-4o", "qwen35"]
        .into_iter()
        .find(|name| crate::io::tokenizer::pre_tokenizer_split(name) == Some(regex))
        .map(str::to_string)
}

/// The state of gguf-py's `SpecialVocab` while it loads.
struct SpecialVocab {
    /// `special_token_types` (may grow by `eot` / `eom`).
    types: Vec<String>,
    /// `special_token_ids`, in insertion order.
    ids: Vec<(String, i64)>,
    /// `add_special_token`, in insertion order.
    add: Vec<(String, bool)>,
    /// `n_vocab` (ids at or above it are skipped).
    n_vocab: Option<usize>,
}

impl SpecialVocab {
    /// `_set_special_token`.
    fn set(&mut self, typ: &str, id: Option<i64>) -> Result<(), HfMetaError> {
        let Some(id) = id else { return Ok(()) };
        if id < 0 {
            return Err(HfMetaError::Invalid {
                file: "tokenizer_config.json",
                msg: format!("invalid value for special token type {typ}: {id}"),
            });
        }
        if self.n_vocab.is_none_or(|n| (id as u64) < n as u64)
            && !self.ids.iter().any(|(t, _)| t == typ)
        {
            self.ids.push((typ.to_string(), id));
        }
        Ok(())
    }

    fn set_add(&mut self, typ: &str, v: bool) {
        match self.add.iter_mut().find(|(t, _)| t == typ) {
            Some(slot) => slot.1 = v,
            None => self.add.push((typ.to_string(), v)),
        }
    }

    fn set_add_default(&mut self, typ: &str, v: bool) {
        if !self.add.iter().any(|(t, _)| t == typ) {
            self.add.push((typ.to_string(), v));
        }
    }

    /// The post-processor part of `_try_load_from_tokenizer_json` (it may edit the tokenizer
    /// config, as gguf-py does, which changes what the config part reads afterwards).
    fn post_processor(&mut self, tj: &Map<String, Value>, tc: &mut Option<Map<String, Value>>) {
        let get = |tc: &Option<Map<String, Value>>, k: &str| -> Option<String> {
            tc.as_ref()
                .and_then(|t| t.get(k))
                .filter(|v| truthy(v))
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
        };
        let has_tc = |tc: &Option<Map<String, Value>>| tc.as_ref().is_some_and(|t| !t.is_empty());
        let put = |tc: &mut Option<Map<String, Value>>, k: &str, v: &str| {
            if let Some(t) = tc.as_mut() {
                t.insert(k.to_string(), Value::String(v.to_string()));
            }
        };
        let mut bos = get(tc, "bos_token");
        let mut cls = get(tc, "cls_token");
        let mut eos = get(tc, "eos_token");
        let mut sep = get(tc, "sep_token");
        if bos.is_none() && cls.is_some() && has_tc(tc) {
            bos = cls.clone();
            put(tc, "bos_token", bos.as_deref().unwrap_or_default());
        }
        if eos.is_none() && sep.is_some() && has_tc(tc) {
            eos = sep.clone();
            put(tc, "eos_token", eos.as_deref().unwrap_or_default());
        }
        let Some(pp) = tj.get("post_processor").filter(|p| truthy(p)) else {
            return;
        };
        let single_list = [pp.clone()];
        let processors = match pp.get("processors").and_then(Value::as_array) {
            Some(list) => list.as_slice(),
            None => &single_list[..],
        };
        let special_id = |x: Option<&Value>| -> Option<String> {
            x.and_then(|e| e.get("SpecialToken"))
                .and_then(|s| s.get("id"))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        for p in processors {
            match p.get("type").and_then(Value::as_str) {
                Some("ByteLevel") => {
                    self.set_add_default("bos", false);
                    self.set_add_default("eos", false);
                }
                Some("RobertaProcessing") => {
                    self.set_add("bos", true);
                    self.set_add("eos", true);
                    self.set_add("sep", true);
                    if cls.is_none() && has_tc(tc) {
                        let c = p
                            .get("cls")
                            .and_then(|c| c.get(0))
                            .and_then(Value::as_str)
                            .map(str::to_string)
                            .or(bos.clone());
                        if let Some(c) = &c {
                            put(tc, "cls_token", c);
                        }
                        cls = c;
                    }
                    if sep.is_none() && has_tc(tc) {
                        let s = p
                            .get("sep")
                            .and_then(|c| c.get(0))
                            .and_then(Value::as_str)
                            .map(str::to_string)
                            .or(eos.clone());
                        if let Some(s) = &s {
                            put(tc, "sep_token", s);
                        }
                        sep = s;
                    }
                }
                Some("TemplateProcessing") => {
                    let empty = Vec::new();
                    let single = p.get("single").and_then(Value::as_array).unwrap_or(&empty);
                    let pair = p.get("pair").and_then(Value::as_array).unwrap_or(&empty);
                    let mut first = None;
                    let mut last = None;
                    if single.len() > 1 {
                        first = special_id(single.first());
                        if let Some(f) = &first {
                            if !has_tc(tc) {
                                bos = Some(f.clone());
                            } else if Some(f) != bos.as_ref() && Some(f) != cls.as_ref() {
                                if bos.is_none() {
                                    bos = Some(f.clone());
                                    put(tc, "bos_token", f);
                                }
                                if cls.is_none() {
                                    cls = Some(f.clone());
                                    put(tc, "cls_token", f);
                                }
                            }
                            let v = Some(f) == bos.as_ref() || Some(f) == cls.as_ref();
                            self.set_add("bos", v);
                        }
                        last = special_id(single.last());
                        if let Some(l) = &last {
                            if !has_tc(tc) {
                                eos = Some(l.clone());
                            } else if Some(l) != eos.as_ref() {
                                let e = eos.clone().unwrap_or_default();
                                if !self.types.iter().any(|t| t == "eot") {
                                    self.types.push("eot".into());
                                    put(tc, "eot_token", &e);
                                } else if !self.types.iter().any(|t| t == "eom") {
                                    self.types.push("eom".into());
                                    put(tc, "eom_token", &e);
                                }
                                eos = Some(l.clone());
                                put(tc, "eos_token", l);
                            }
                            let v = Some(l) == eos.as_ref();
                            self.set_add("eos", v);
                        }
                    }
                    if !pair.is_empty() {
                        let start =
                            usize::from(first.is_some() && special_id(pair.first()) == first);
                        let stop_trim = last.is_some() && special_id(pair.last()) == last;
                        let end = pair.len() - usize::from(stop_trim);
                        let inner = if start <= end {
                            &pair[start..end]
                        } else {
                            &[][..]
                        };
                        if !inner.is_empty() {
                            let seq = |e: &Value| {
                                e.get("Sequence")
                                    .and_then(|s| s.get("id"))
                                    .and_then(Value::as_str)
                                    .map(str::to_string)
                            };
                            let a = seq(&inner[0]);
                            let b = seq(&inner[inner.len() - 1]);
                            if a.as_deref() == Some("A")
                                && b.as_deref() == Some("B")
                                && inner.len() > 2
                            {
                                let middle = &inner[1..inner.len() - 1];
                                let mut add_sep = false;
                                let in_sep_eos =
                                    |x: &Option<String>| x.is_some() && (*x == sep || *x == eos);
                                let e0 = special_id(middle.first());
                                if in_sep_eos(&e0) && last.is_none() {
                                    add_sep = true;
                                }
                                if middle.len() == 2 {
                                    let e1 = special_id(middle.get(1));
                                    if in_sep_eos(&e1) {
                                        add_sep = true;
                                    }
                                }
                                self.set_add("sep", add_sep);
                                if add_sep && sep.is_none() && has_tc(tc) {
                                    put(tc, "sep_token", eos.as_deref().unwrap_or_default());
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// gguf-py's labels, including its rounding.
    #[test]
    fn size_labels_like_gguf_py() {
        assert_eq!(size_label(36_000), "36K");
        assert_eq!(size_label(79_392), "79K");
        assert_eq!(size_label(134_515_008), "135M");
        assert_eq!(size_label(1_235_814_400), "1.2B");
        assert_eq!(size_label(999), "1.0K");
        assert_eq!(size_label(7_241_732_096), "7.2B");
        assert_eq!(size_label(494_032_768), "494M");
    }

    /// In-place replacement keeps the first position, like gguf-py's dict.
    #[test]
    fn meta_list_replaces_in_place() {
        let mut m = MetaList::default();
        m.set("a", MetaValue::U32(1));
        m.set("b", MetaValue::U32(2));
        m.set("a", MetaValue::U32(3));
        assert_eq!(
            m.into_vec(),
            vec![
                ("a".to_string(), MetaValue::U32(3)),
                ("b".to_string(), MetaValue::U32(2))
            ]
        );
    }

    /// The regex recognition names the families wgtune's GGUF tokenizer knows.
    #[test]
    fn recognises_pre_tokenizers() {
        let gpt2: Value = serde_json::json!({"type": "ByteLevel", "use_regex": true});
        assert_eq!(recognise_pre(Some(&gpt2)).as_deref(), Some("gpt-2"));
        let split = |re: &str| {
            serde_json::json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]})
        };
        let q = crate::io::tokenizer::pre_tokenizer_split("qwen2").unwrap();
        assert_eq!(recognise_pre(Some(&split(q))).as_deref(), Some("qwen2"));
        let l = crate::io::tokenizer::pre_tokenizer_split("llama-bpe").unwrap();
        assert_eq!(recognise_pre(Some(&split(l))).as_deref(), Some("llama-bpe"));
        assert_eq!(recognise_pre(Some(&split("\\s+"))), None);
        assert_eq!(recognise_pre(None), None);
    }
}
