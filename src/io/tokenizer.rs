//! Tokenizer and chat template from a GGUF file's metadata, matching Hugging Face transformers.
//!
//! A GGUF carries no `tokenizer.json`: it stores the vocabulary, merges, token types and special
//! token ids under llama.cpp's `tokenizer.ggml.*` keys. [`tokenizer_from_gguf`] rebuilds the
//! `tokenizers::Tokenizer` that transformers builds from the same file
//! (`transformers/integrations/gguf/gguf_tokenizer_mapping.py` with `GPT2Tokenizer` /
//! `LlamaTokenizer` / `GemmaTokenizer` and `TokenizersBackend`), so token ids are identical.
//! [`ChatTemplate`] renders `tokenizer.chat_template` with minijinja the way
//! `apply_chat_template(tokenize=False)` renders it with Jinja2.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use thiserror::Error;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, DecoderWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer,
};

use crate::io::gguf::{Gguf, GgufError, MetaValue};

/// Errors from building a tokenizer or rendering a chat template.
#[derive(Debug, Error)]
pub enum TokenizerError {
    /// A metadata key is missing or mistyped.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// `tokenizer.ggml.model` names a tokenizer kind wgtune cannot rebuild.
    #[error(
        "GGUF tokenizer model {model:?} (architecture {arch:?}) is not supported; wgtune supports \"gpt2\" (byte-level BPE) and \"llama\" (SentencePiece BPE; not for architecture phi3)"
    )]
    UnsupportedModel {
        /// The `tokenizer.ggml.model` value.
        model: String,
        /// The `general.architecture` value ("" if absent).
        arch: String,
    },
    /// The vocabulary metadata is inconsistent (bad merge, id out of range, ...).
    #[error("invalid GGUF tokenizer metadata: {0}")]
    Invalid(String),
    /// The `tokenizers` library rejected the assembled tokenizer.
    #[error("building the tokenizer failed: {0}")]
    Build(String),
    /// The chat template failed to parse or render (includes `raise_exception` messages).
    #[error("chat template: {0}")]
    Template(String),
}

/// Wraps a `tokenizers` error.
fn build_err(e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Build(e.to_string())
}

/// llama.cpp `LLAMA_TOKEN_TYPE_CONTROL`: becomes a special added token.
const TOKEN_TYPE_CONTROL: i64 = 3;
/// llama.cpp `LLAMA_TOKEN_TYPE_USER_DEFINED`: becomes a plain (non-special) added token.
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Llama-3 style split regex (transformers `_LLAMA3_SPLIT`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Mistral Tekken split regex (transformers `_TEKKEN_SPLIT`).
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// GPT-4o split regex (transformers `_GPT4O_SPLIT`).
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2 split regex (transformers `qwen2.PRETOKENIZE_REGEX`).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen3.5 split regex (transformers `qwen3_5.PRETOKENIZE_REGEX`).
const QWEN35_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regex transformers uses for a `tokenizer.ggml.pre` value (`GGUF_PRE_TOKENIZER_SPLITS`).
pub(crate) fn pre_tokenizer_split(pre: &str) -> Option<&'static str> {
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3_SPLIT,
        "tekken" => TEKKEN_SPLIT,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2_SPLIT,
        "qwen35" => QWEN35_SPLIT,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O_SPLIT,
        _ => return None,
    })
}

/// Architectures whose SentencePiece vocabularies transformers hands to `GemmaTokenizer`
/// (`GGUF_SENTENCEPIECE_BUILDERS[...] = gemma_tokenizer`).
const GEMMA_ARCHS: &[&str] = &["gemma", "gemma2", "gemma3"];

/// Architectures whose SentencePiece vocabularies transformers rebuilds in yet another way
/// (`GGUF_SENTENCEPIECE_BUILDERS`: `phi3_tokenizer`); wgtune refuses them rather than produce
/// other ids.
const UNSUPPORTED_SENTENCEPIECE_ARCHS: &[&str] = &["phi3"];

/// The `tokenizer.ggml.*` metadata, read and checked once.
struct GgufVocab<'a> {
    /// `tokenizer.ggml.model`.
    model: &'a str,
    /// `tokenizer.ggml.pre`, selecting the split regex.
    pre: Option<&'a str>,
    /// Token strings, indexed by id.
    tokens: Vec<&'a str>,
    /// llama.cpp token types (may be shorter than `tokens`, like Python's `zip`).
    token_types: Vec<i64>,
    /// SentencePiece scores, used to derive merges when the file has none.
    scores: Option<Vec<f64>>,
    /// "a b" merge strings, if the file lists them.
    merges: Option<Vec<&'a str>>,
    /// Strings of the bos/eos/unk/pad tokens named by id in the file.
    bos: Option<&'a str>,
    eos: Option<&'a str>,
    unk: Option<&'a str>,
    pad: Option<&'a str>,
    /// `tokenizer.ggml.add_bos_token` / `add_eos_token`, if present.
    add_bos: Option<bool>,
    add_eos: Option<bool>,
}

impl<'a> GgufVocab<'a> {
    /// Reads the tokenizer metadata of `g`.
    fn read(g: &'a Gguf) -> Result<Self, TokenizerError> {
        let tokens = g.get_str_array("tokenizer.ggml.tokens")?;
        let numbers = |key: &str| -> Result<Option<Vec<f64>>, TokenizerError> {
            let Some(items) = g.get_opt_array(key)? else {
                return Ok(None);
            };
            let vals = items
                .iter()
                .map(MetaValue::as_f64)
                .collect::<Option<Vec<_>>>();
            vals.map(Some).ok_or_else(|| {
                TokenizerError::Invalid(format!("{key} must be an array of numbers"))
            })
        };
        let token_types = match g.get_opt_array("tokenizer.ggml.token_type")? {
            None => Vec::new(),
            Some(items) => items
                .iter()
                .map(MetaValue::as_i64)
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    TokenizerError::Invalid("tokenizer.ggml.token_type must hold integers".into())
                })?,
        };
        let token_by_id = |key: &str| -> Result<Option<&'a str>, TokenizerError> {
            let Some(id) = g.get_opt_u64(key)? else {
                return Ok(None);
            };
            let token = usize::try_from(id).ok().and_then(|i| tokens.get(i));
            token.copied().map(Some).ok_or_else(|| {
                TokenizerError::Invalid(format!(
                    "{key} is {id}, but the vocabulary has {} tokens",
                    tokens.len()
                ))
            })
        };
        Ok(GgufVocab {
            model: g.get_str("tokenizer.ggml.model")?,
            pre: g.get_opt_str("tokenizer.ggml.pre")?,
            token_types,
            scores: numbers("tokenizer.ggml.scores")?,
            merges: g.get_opt_str_array("tokenizer.ggml.merges")?,
            bos: token_by_id("tokenizer.ggml.bos_token_id")?,
            eos: token_by_id("tokenizer.ggml.eos_token_id")?,
            unk: token_by_id("tokenizer.ggml.unknown_token_id")?,
            pad: token_by_id("tokenizer.ggml.padding_token_id")?,
            add_bos: g.get_opt_bool("tokenizer.ggml.add_bos_token")?,
            add_eos: g.get_opt_bool("tokenizer.ggml.add_eos_token")?,
            tokens,
        })
    }

    /// `(token, type)` pairs, truncated to the shorter list as Python's `zip` does.
    fn typed_tokens(&self) -> impl Iterator<Item = (&'a str, i64)> + '_ {
        self.tokens
            .iter()
            .copied()
            .zip(self.token_types.iter().copied())
    }

    /// The merge pairs the file lists, if it lists any.
    fn file_merges(&self) -> Option<Result<Merges, TokenizerError>> {
        let merges = self.merges.as_ref()?;
        Some(
            merges
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let mut parts = m.split(' ');
                    match (parts.next(), parts.next(), parts.next()) {
                        (Some(a), Some(b), None) => Ok((a.to_string(), b.to_string())),
                        _ => Err(TokenizerError::Invalid(format!(
                            "merge #{i} {m:?} is not two tokens separated by one space"
                        ))),
                    }
                })
                .collect(),
        )
    }

    /// Merge pairs: the file's, or ones derived from the vocabulary and scores (`get_merges`).
    fn merge_pairs(&self) -> Result<Merges, TokenizerError> {
        if let Some(merges) = self.file_merges() {
            return merges;
        }
        let scores = self.scores.as_ref().ok_or_else(|| {
            TokenizerError::Invalid(
                "the file has neither tokenizer.ggml.merges nor tokenizer.ggml.scores".into(),
            )
        })?;
        Ok(generate_merges(&self.tokens, scores))
    }
}

/// Merges implied by a SentencePiece vocabulary (transformers `generate_merges` with scores):
/// every split of a token into two vocabulary tokens, best score first.
///
/// Near-linear in the vocabulary: each token is cut at each of its characters and both halves
/// looked up in a hash map, then the merges are sorted once (Gemma 3: 514 906 merges from 262 144
/// tokens of at most 31 characters).
fn generate_merges(tokens: &[&str], scores: &[f64]) -> Merges {
    // Python dicts: the last duplicate wins the value, the first keeps the position.
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut score: HashMap<&str, f64> = HashMap::new();
    let mut order = Vec::new();
    for (&t, &s) in tokens.iter().zip(scores) {
        if score.insert(t, s).is_none() {
            order.push(t);
        }
    }
    for (i, &t) in tokens.iter().enumerate() {
        index.insert(t, i);
    }
    /// A candidate merge: left, right, score, and the halves' lengths in code points.
    struct Candidate<'s> {
        left: &'s str,
        right: &'s str,
        score: f64,
        lens: (usize, usize),
    }
    let mut merges: Vec<Candidate> = Vec::new();
    for &merge in &order {
        let piece_score = score[merge];
        let chars = merge.chars().count();
        let mut local: Vec<(usize, usize, Candidate)> = merge
            .char_indices()
            .skip(1)
            .enumerate()
            .filter_map(|(n, (at, _))| {
                let (left, right) = merge.split_at(at);
                let (&il, &ir) = (index.get(left)?, index.get(right)?);
                let lens = (n + 1, chars - n - 1);
                let score = piece_score;
                Some((
                    il,
                    ir,
                    Candidate {
                        left,
                        right,
                        score,
                        lens,
                    },
                ))
            })
            .collect();
        local.sort_by_key(|&(il, ir, _)| (il, ir));
        merges.extend(local.into_iter().map(|(_, _, c)| c));
    }
    // Stable sort, descending on (score, len(left), len(right)) in code points.
    merges.sort_by(|a, b| {
        let by_score = b
            .score
            .partial_cmp(&a.score)
            .unwrap_or(std::cmp::Ordering::Equal);
        by_score.then_with(|| b.lens.cmp(&a.lens))
    });
    merges
        .into_iter()
        .map(|c| (c.left.to_string(), c.right.to_string()))
        .collect()
}

/// GPT-2's byte-to-character table (`bytes_to_unicode`): printable bytes map to themselves.
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let printable = matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
        let code = if printable {
            b as u32
        } else {
            next += 1;
            next - 1
        };
        *slot = char::from_u32(code).unwrap_or('\0');
    }
    table
}

/// A BPE model from a vocabulary map and merges, checking merges first
/// (`tokenizers` would panic on a merge whose result is longer than every token).
fn bpe_model(
    vocab: HashMap<String, u32>,
    merges: Merges,
    byte_fallback: bool,
    unk: Option<&str>,
) -> Result<BPE, TokenizerError> {
    for (a, b) in &merges {
        for t in [a.clone(), b.clone(), format!("{a}{b}")] {
            if !vocab.contains_key(&t) {
                return Err(TokenizerError::Invalid(format!(
                    "merge \"{a} {b}\" uses {t:?}, which is not in the vocabulary"
                )));
            }
        }
    }
    let unk = unk.filter(|u| vocab.contains_key(*u)).map(str::to_string);
    let vocab: Vocab = vocab.into_iter().collect();
    let builder = BPE::builder().vocab_and_merges(vocab, merges);
    let builder = match unk {
        Some(u) => builder.unk_token(u),
        None => builder,
    };
    // GPT2Tokenizer sets empty affixes explicitly; LlamaTokenizer leaves them unset (same effect).
    let builder = if byte_fallback {
        builder.fuse_unk(true).byte_fallback(true)
    } else {
        builder
            .continuing_subword_prefix(String::new())
            .end_of_word_suffix(String::new())
    };
    builder.build().map_err(build_err)
}

/// The `GPT2Tokenizer` transformers builds for `tokenizer.ggml.model == "gpt2"` (byte-level BPE).
fn byte_level_tokenizer(v: &GgufVocab) -> Result<(Tokenizer, HashSet<String>), TokenizerError> {
    let spelling = bytes_to_unicode();
    let alphabet: HashSet<char> = spelling.iter().copied().collect();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    let vocab: HashMap<String, u32> = (0u32..)
        .zip(&v.tokens)
        .map(|(i, &t)| {
            let key = if in_alphabet(t) {
                t.to_string()
            } else {
                t.bytes().map(|b| spelling[b as usize]).collect()
            };
            (key, i)
        })
        .collect();
    let vocab_keys: HashSet<String> = vocab.keys().cloned().collect();
    let mut tok = Tokenizer::new(bpe_model(vocab, v.merge_pairs()?, false, None)?);
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevel::default()));
    // GPT2Tokenizer's own unk/bos/eos default.
    add_specials_in_vocab(&mut tok, &vocab_keys, ["<|endoftext|>"])?;
    // Control tokens, skipping llama.cpp mislabels spelled outside the byte alphabet.
    let control: Vec<AddedToken> = v
        .typed_tokens()
        .filter(|&(t, ty)| ty == TOKEN_TYPE_CONTROL && in_alphabet(t))
        .map(|(t, _)| AddedToken::from(t, true).normalized(false))
        .collect();
    tok.add_special_tokens(control).map_err(build_err)?;
    Ok((tok, vocab_keys))
}

/// The `LlamaTokenizer` transformers builds for `tokenizer.ggml.model == "llama"` (SentencePiece BPE).
fn sentencepiece_tokenizer(v: &GgufVocab) -> Result<(Tokenizer, HashSet<String>), TokenizerError> {
    let vocab: HashMap<String, u32> = (0u32..)
        .zip(&v.tokens)
        .map(|(i, &t)| (t.to_string(), i))
        .collect();
    let vocab_keys: HashSet<String> = vocab.keys().cloned().collect();
    let mut tok = Tokenizer::new(bpe_model(vocab, v.merge_pairs()?, true, None)?);
    tok.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::First, false)));
    let replace = Replace::new("▁", " ").map_err(build_err)?;
    tok.with_decoder(Some(DecoderSequence::new(vec![
        DecoderWrapper::Replace(replace),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
        DecoderWrapper::Strip(Strip::new(' ', 1, 0)),
    ])));
    // LlamaTokenizer's own unk/bos/eos defaults.
    add_specials_in_vocab(&mut tok, &vocab_keys, ["<unk>", "<s>", "</s>"])?;
    let control: Vec<AddedToken> = v
        .typed_tokens()
        .filter(|&(_, ty)| ty == TOKEN_TYPE_CONTROL)
        .map(|(t, _)| AddedToken::from(t, true).normalized(false))
        .collect();
    tok.add_special_tokens(control).map_err(build_err)?;
    Ok((tok, vocab_keys))
}

/// Python's `str.isspace` (Unicode `White_Space` plus the separators U+001C..U+001F).
fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// The `GemmaTokenizer` transformers builds for a SentencePiece vocabulary of architecture gemma,
/// gemma2 or gemma3 (`gemma_tokenizer`): whitespace-only tokens with a space respelled as `▁`s,
/// merges (when the file has none) derived with each token's position, not its score, as the
/// rank; `Replace(" ", "▁")` normalizer, no prefix space, BPE with byte fallback.
fn gemma_tokenizer(v: &GgufVocab) -> Result<(Tokenizer, HashSet<String>), TokenizerError> {
    // `"\u2581" * len(t) if " " in t and not t.strip() else t`.
    let respelled: Vec<Cow<str>> = v
        .tokens
        .iter()
        .map(|&t| {
            if t.contains(' ') && t.chars().all(py_isspace) {
                Cow::Owned("▁".repeat(t.chars().count()))
            } else {
                Cow::Borrowed(t)
            }
        })
        .collect();
    let tokens: Vec<&str> = respelled.iter().map(|t| t.as_ref()).collect();
    let merges = match v.file_merges() {
        Some(merges) => merges?,
        None => {
            // `positions = {token: -index ...}`: earlier tokens merge first.
            let positions: Vec<f64> = (0..tokens.len()).map(|i| -(i as f64)).collect();
            generate_merges(&tokens, &positions)
        }
    };
    let vocab: HashMap<String, u32> = (0u32..)
        .zip(&tokens)
        .map(|(i, &t)| (t.to_string(), i))
        .collect();
    let vocab_keys: HashSet<String> = vocab.keys().cloned().collect();
    let mut tok = Tokenizer::new(bpe_model(vocab, merges, true, Some("<unk>"))?);
    tok.with_normalizer(Some(Replace::new(" ", "▁").map_err(build_err)?))
        .map_err(build_err)?;
    let split =
        Split::new(" ", SplitDelimiterBehavior::MergedWithPrevious, false).map_err(build_err)?;
    tok.with_pre_tokenizer(Some(split));
    let replace = Replace::new("▁", " ").map_err(build_err)?;
    tok.with_decoder(Some(DecoderSequence::new(vec![
        DecoderWrapper::Replace(replace),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ])));
    // GemmaTokenizer's own unk/bos/eos/pad/mask defaults.
    add_specials_in_vocab(
        &mut tok,
        &vocab_keys,
        ["<unk>", "<bos>", "<eos>", "<pad>", "<mask>"],
    )?;
    // Control tokens as the file spells them (a respelled one stays out of the vocabulary).
    let control: Vec<AddedToken> = v
        .typed_tokens()
        .filter(|&(_, ty)| ty == TOKEN_TYPE_CONTROL)
        .map(|(t, _)| AddedToken::from(t, true).normalized(false))
        .collect();
    tok.add_special_tokens(control).map_err(build_err)?;
    Ok((tok, vocab_keys))
}

/// Adds `names` as special tokens when they are vocabulary tokens and not yet added tokens.
///
/// transformers also adds them when absent from the vocabulary, under new ids past the model's
/// embedding table; wgtune leaves those out so it never produces ids the model cannot embed.
fn add_specials_in_vocab<'t>(
    tok: &mut Tokenizer,
    vocab_keys: &HashSet<String>,
    names: impl IntoIterator<Item = &'t str>,
) -> Result<(), TokenizerError> {
    let added: HashSet<String> = tok
        .get_added_tokens_decoder()
        .into_values()
        .map(|t| t.content)
        .collect();
    let new: Vec<AddedToken> = names
        .into_iter()
        .filter(|n| vocab_keys.contains(*n) && !added.contains(*n))
        .map(|n| AddedToken::from(n, true).normalized(false))
        .collect();
    tok.add_special_tokens(new).map_err(build_err)?;
    Ok(())
}

/// Builds the Hugging Face tokenizer that transformers builds from this GGUF's vocabulary.
///
/// Supports `tokenizer.ggml.model` "gpt2" (byte-level BPE, e.g. SmolLM2, Llama 3, Qwen2) and
/// "llama" (SentencePiece BPE with byte fallback, e.g. Llama 2, TinyLlama, and Gemma 1-3 through
/// transformers' `GemmaTokenizer`); others, and "llama" for phi3, are an error.
pub fn tokenizer_from_gguf(g: &Gguf) -> Result<Tokenizer, TokenizerError> {
    let v = GgufVocab::read(g)?;
    let arch = g.get_opt_str("general.architecture")?.unwrap_or("");
    let unsupported = || TokenizerError::UnsupportedModel {
        model: v.model.to_string(),
        arch: arch.to_string(),
    };
    let (mut tok, vocab_keys, default_add_bos) = match v.model {
        "gpt2" => {
            let (t, k) = byte_level_tokenizer(&v)?;
            (t, k, false)
        }
        "llama" if UNSUPPORTED_SENTENCEPIECE_ARCHS.contains(&arch) => return Err(unsupported()),
        "llama" if GEMMA_ARCHS.contains(&arch) => {
            let (t, k) = gemma_tokenizer(&v)?;
            (t, k, true)
        }
        "llama" => {
            let (t, k) = sentencepiece_tokenizer(&v)?;
            // transformers: llama.cpp adds BOS to a SentencePiece vocabulary that does not say otherwise.
            (t, k, true)
        }
        _ => return Err(unsupported()),
    };

    // User-defined tokens stay whole but are not special (only those already in the vocabulary).
    let known: HashSet<String> = tok.get_vocab(true).into_keys().collect();
    let user: Vec<AddedToken> = v
        .typed_tokens()
        .filter(|&(t, ty)| ty == TOKEN_TYPE_USER_DEFINED && known.contains(t))
        .map(|(t, _)| AddedToken::from(t, false).normalized(false))
        .collect();
    tok.add_tokens(user).map_err(build_err)?;

    // The split regex of this vocabulary's pre-tokenizer family, if transformers knows one.
    if let Some(regex) = v.pre.and_then(pre_tokenizer_split) {
        let split = Split::new(
            SplitPattern::Regex(regex.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(build_err)?;
        tok.with_pre_tokenizer(Some(PreSequence::new(vec![
            PreTokenizerWrapper::Split(split),
            PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
        ])));
    }

    // The file's named special tokens (TokenizersBackend adds any not yet added).
    let named = [v.bos, v.eos, v.unk, v.pad];
    add_specials_in_vocab(&mut tok, &vocab_keys, named.into_iter().flatten())?;

    let add_bos = v.add_bos.unwrap_or(default_add_bos) && v.bos.is_some();
    let add_eos = v.add_eos.unwrap_or(false) && v.eos.is_some();
    let processor = post_processor(&tok, v.bos.filter(|_| add_bos), v.eos.filter(|_| add_eos))?;
    tok.with_post_processor(Some(processor));
    Ok(tok)
}

/// `TokenizersBackend.update_post_processor`: optional bos before and eos after each sequence.
fn post_processor(
    tok: &Tokenizer,
    bos: Option<&str>,
    eos: Option<&str>,
) -> Result<TemplateProcessing, TokenizerError> {
    let mut special = Vec::new();
    for t in [bos, eos].into_iter().flatten() {
        let id = tok.token_to_id(t).ok_or_else(|| {
            TokenizerError::Invalid(format!("special token {t:?} is not in the vocabulary"))
        })?;
        special.push((t.to_string(), id));
    }
    let before = |ty: u8| bos.map_or(String::new(), |b| format!("{b}:{ty} "));
    let after = |ty: u8| eos.map_or(String::new(), |e| format!(" {e}:{ty}"));
    let single = format!("{}$A:0{}", before(0), after(0));
    let bos_b = bos.map_or(String::new(), |b| format!(" {b}:1"));
    let pair = format!("{single}{bos_b} $B:1{}", after(1));
    TemplateProcessing::builder()
        .try_single(single.as_str())
        .and_then(|b| b.try_pair(pair.as_str()))
        .map_err(build_err)?
        .special_tokens(special)
        .build()
        .map_err(build_err)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::io::chat::{ChatTemplate, tests::msg};
    use std::collections::BTreeMap;

    /// A `Gguf` holding only `meta` (tokenizers need no tensor data).
    fn gguf(meta: Vec<(&str, MetaValue)>) -> Gguf {
        Gguf {
            version: 3,
            key_order: meta.iter().map(|(k, _)| k.to_string()).collect(),
            metadata: meta
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect::<BTreeMap<_, _>>(),
            tensors: Vec::new(),
            data_start: 0,
            alignment: 32,
        }
    }

    fn strs<S: AsRef<str>>(items: &[S]) -> MetaValue {
        MetaValue::Array(
            items
                .iter()
                .map(|s| MetaValue::Str(s.as_ref().into()))
                .collect(),
        )
    }

    fn ints(items: &[i32]) -> MetaValue {
        MetaValue::Array(items.iter().map(|&i| MetaValue::I32(i)).collect())
    }

    fn s(v: &str) -> MetaValue {
        MetaValue::Str(v.into())
    }

    fn ids(tok: &Tokenizer, text: &str) -> Vec<u32> {
        tok.encode(text, true).unwrap().get_ids().to_vec()
    }

    /// Tiny byte-level vocabulary: two control tokens, the 256 byte characters, three merges,
    /// a user-defined `<think>` and a token spelled outside the byte alphabet.
    pub(crate) fn byte_level_gguf() -> Gguf {
        let mut tokens: Vec<String> = vec!["<|endoftext|>".into(), "<|im_start|>".into()];
        tokens.extend(bytes_to_unicode().iter().map(|c| c.to_string()));
        tokens.extend(["Ġt", "he", "Ġthe", "<think>", "日"].map(String::from));
        let mut types = vec![3, 3];
        types.extend([1; 256]);
        types.extend([1, 1, 1, 4, 1]);
        gguf(vec![
            ("general.architecture", s("llama")),
            ("tokenizer.ggml.model", s("gpt2")),
            ("tokenizer.ggml.tokens", strs(&tokens)),
            ("tokenizer.ggml.token_type", ints(&types)),
            ("tokenizer.ggml.merges", strs(&["Ġ t", "h e", "Ġt he"])),
            ("tokenizer.ggml.bos_token_id", MetaValue::U32(1)),
            ("tokenizer.ggml.eos_token_id", MetaValue::U32(0)),
            ("tokenizer.ggml.add_bos_token", MetaValue::Bool(true)),
        ])
    }

    /// Expected ids come from transformers 5.24.0: the same vocabulary written with
    /// gguf.GGUFWriter, loaded by `AutoTokenizer.from_pretrained(dir, gguf_file=...)`.
    #[test]
    fn byte_level_matches_transformers() {
        let tok = tokenizer_from_gguf(&byte_level_gguf()).unwrap();
        assert_eq!(ids(&tok, "the the"), [1, 118, 259, 260]);
        let text = "<|im_start|>the<think>日";
        let got = ids(&tok, text);
        assert_eq!(got, [1, 1, 118, 259, 261, 232, 153, 167]);
        assert_eq!(
            tok.decode(&got, false).unwrap(),
            format!("<|im_start|>{text}")
        );
        assert_eq!(tok.decode(&got, true).unwrap(), "the<think>日");
        assert_eq!(ids(&tok, "x<|endoftext|>"), [1, 122, 0]);
    }

    /// Tiny SentencePiece vocabulary without merges (derived from scores), byte fallback tokens.
    fn sentencepiece_gguf() -> Gguf {
        let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
        tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
        let pieces = [
            "▁", "t", "h", "e", "▁t", "he", "▁the", "▁▁", "c", "a", "▁c", "at", "▁cat",
        ];
        tokens.extend(pieces.map(String::from));
        tokens.push("<|user|>".into());
        let mut scores = vec![MetaValue::F32(0.0); 259];
        scores.extend((1..=13).map(|i| MetaValue::F32(-(i as f32))));
        scores.push(MetaValue::F32(0.0));
        let mut types = vec![2, 3, 3];
        types.extend([6; 256]);
        types.extend([1; 13]);
        types.push(3);
        gguf(vec![
            ("general.architecture", s("llama")),
            ("tokenizer.ggml.model", s("llama")),
            ("tokenizer.ggml.tokens", strs(&tokens)),
            ("tokenizer.ggml.scores", MetaValue::Array(scores)),
            ("tokenizer.ggml.token_type", ints(&types)),
            ("tokenizer.ggml.bos_token_id", MetaValue::U32(1)),
            ("tokenizer.ggml.eos_token_id", MetaValue::U32(2)),
            ("tokenizer.ggml.unknown_token_id", MetaValue::U32(0)),
        ])
    }

    /// Expected ids from transformers 5.24.0, produced as for `byte_level_matches_transformers`.
    #[test]
    fn sentencepiece_matches_transformers() {
        let tok = tokenizer_from_gguf(&sentencepiece_gguf()).unwrap();
        let got = ids(&tok, "the cat");
        assert_eq!(got, [1, 265, 271]);
        assert_eq!(tok.decode(&got, false).unwrap(), "<s> the cat");
        assert_eq!(tok.decode(&got, true).unwrap(), "the cat");
        let got = ids(&tok, "  the\tcat é");
        assert_eq!(got, [1, 259, 265, 12, 267, 270, 259, 198, 172]);
        assert_eq!(tok.decode(&got, true).unwrap(), " the\tcat é");
        assert_eq!(ids(&tok, "<|user|>cat"), [1, 272, 267, 270]);
    }

    /// Tiny Gemma 3 vocabulary: Gemma's control tokens, runs of 2 and 3 spaces stored as real
    /// spaces (user-defined), byte tokens, and scores that rank "ab" above "bc" although "bc"
    /// comes first in the file (transformers ranks Gemma merges by position).
    fn gemma_gguf() -> Gguf {
        let mut tokens: Vec<String> = [
            "<pad>",
            "<eos>",
            "<bos>",
            "<unk>",
            "<mask>",
            "<start_of_turn>",
            "<end_of_turn>",
            "\n",
            "  ",
            "   ",
        ]
        .map(String::from)
        .to_vec();
        let mut types = vec![3, 3, 3, 3, 3, 3, 3, 4, 4, 4];
        tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
        types.extend([6; 256]);
        let pieces = [
            "▁", "a", "b", "c", "bc", "ab", "▁a", "▁ab", "h", "i", "hi", "▁hi",
        ];
        tokens.extend(pieces.map(String::from));
        types.extend([1; 12]);
        let scores = tokens
            .iter()
            .map(|t| match t.as_str() {
                "ab" => -1.0,
                "bc" => -5.0,
                t if pieces.contains(&t) => -3.0,
                _ => 0.0,
            })
            .map(MetaValue::F32)
            .collect();
        gguf(vec![
            ("general.architecture", s("gemma3")),
            ("tokenizer.ggml.model", s("llama")),
            ("tokenizer.ggml.pre", s("default")),
            ("tokenizer.ggml.tokens", strs(&tokens)),
            ("tokenizer.ggml.scores", MetaValue::Array(scores)),
            ("tokenizer.ggml.token_type", ints(&types)),
            ("tokenizer.ggml.bos_token_id", MetaValue::U32(2)),
            ("tokenizer.ggml.eos_token_id", MetaValue::U32(1)),
            ("tokenizer.ggml.unknown_token_id", MetaValue::U32(3)),
            ("tokenizer.ggml.padding_token_id", MetaValue::U32(0)),
            ("tokenizer.ggml.add_bos_token", MetaValue::Bool(true)),
            ("tokenizer.ggml.add_eos_token", MetaValue::Bool(false)),
            ("tokenizer.ggml.add_space_prefix", MetaValue::Bool(false)),
        ])
    }

    /// Expected ids and decodings from transformers 5.24.0 (a `GemmaTokenizer`), produced as for
    /// `byte_level_matches_transformers`.
    #[test]
    fn gemma_matches_transformers() {
        let tok = tokenizer_from_gguf(&gemma_gguf()).unwrap();
        assert_eq!(tok.get_vocab_size(true), 278);
        let cases: &[(&str, &[u32], &str)] = &[
            ("abc", &[2, 267, 270], "abc"),
            (" hi  hi\n", &[2, 277, 8, 276, 7], " hi  hi\n"),
            (
                "  ab<start_of_turn>a   \t",
                &[2, 8, 271, 5, 267, 9, 19],
                "  aba   \t",
            ),
            ("abc<eos>", &[2, 267, 270, 1], "abc"),
            ("hi  ", &[2, 276, 8], "hi  "),
            ("é", &[2, 205, 179], "é"),
        ];
        for &(text, want, skipped) in cases {
            let got = ids(&tok, text);
            assert_eq!(got, want, "{text:?}");
            assert_eq!(tok.decode(&got, false).unwrap(), format!("<bos>{text}"));
            assert_eq!(tok.decode(&got, true).unwrap(), skipped);
        }
    }

    #[test]
    fn generate_merges_orders_like_transformers() {
        // Expected list printed by transformers 5.24.0 `generate_merges(vocab, scores)`.
        let tokens = ["a", "b", "c", "ab", "bc", "abc", "ca"];
        let scores = [0.0, 0.0, 0.0, -1.0, -1.0, -2.0, -1.0];
        let merges = generate_merges(&tokens, &scores);
        let pairs: Vec<(&str, &str)> = merges
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [("a", "b"), ("b", "c"), ("c", "a"), ("ab", "c"), ("a", "bc")]
        );
    }

    #[test]
    fn bad_metadata_is_an_error() {
        let unsupported = gguf(vec![
            ("tokenizer.ggml.model", s("bert")),
            ("tokenizer.ggml.tokens", strs(&["a"])),
        ]);
        let err = tokenizer_from_gguf(&unsupported).unwrap_err();
        assert!(err.to_string().contains("\"bert\""), "{err}");

        let mut phi3 = sentencepiece_gguf();
        phi3.metadata
            .insert("general.architecture".into(), s("phi3"));
        assert!(matches!(
            tokenizer_from_gguf(&phi3),
            Err(TokenizerError::UnsupportedModel { .. })
        ));

        // A merge whose result is missing (and longer than any token) must not panic.
        let bad_merge = gguf(vec![
            ("tokenizer.ggml.model", s("gpt2")),
            ("tokenizer.ggml.tokens", strs(&["ab", "cd"])),
            ("tokenizer.ggml.merges", strs(&["ab cd"])),
        ]);
        let err = tokenizer_from_gguf(&bad_merge).unwrap_err();
        assert!(err.to_string().contains("abcd"), "{err}");

        let mut bad_id = byte_level_gguf();
        bad_id
            .metadata
            .insert("tokenizer.ggml.bos_token_id".into(), MetaValue::U32(99_999));
        assert!(matches!(
            tokenizer_from_gguf(&bad_id),
            Err(TokenizerError::Invalid(_))
        ));

        let missing = gguf(vec![("tokenizer.ggml.model", s("gpt2"))]);
        let err = tokenizer_from_gguf(&missing).unwrap_err();
        assert!(err.to_string().contains("tokenizer.ggml.tokens"), "{err}");
    }

    /// Checks the real SmolLM2 file against transformers 5.24.0
    /// (`AutoTokenizer.from_pretrained("assets", gguf_file=...)`, `tok(text)["input_ids"]` and
    /// `tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)`).
    #[test]
    fn smollm2_real_file() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/assets/SmolLM2-135M-Instruct.Q4_1.gguf"
        );
        let Ok(bytes) = std::fs::read(path) else {
            eprintln!("skipping: {path} not found");
            return;
        };
        let g = Gguf::parse(&bytes).unwrap();
        let tok = tokenizer_from_gguf(&g).unwrap();
        assert_eq!(tok.get_vocab_size(true), 49152);
        let cases: &[(&str, &[u32])] = &[
            ("Hello world", &[19556, 905]),
            (" Hello world", &[38699, 905]),
            (
                "The quick brown fox jumps over the lazy dog.",
                &[504, 2365, 6354, 16438, 27003, 690, 260, 23790, 2767, 30],
            ),
            (
                "I'm can't won't they'll",
                &[57, 5248, 416, 982, 3763, 982, 502, 3060],
            ),
            (
                "1234567890 3.14",
                &[33, 34, 35, 36, 37, 38, 39, 40, 41, 32, 216, 35, 30, 33, 36],
            ),
            (
                "def foo(x):\n    return x ** 2\n",
                &[
                    1604, 29856, 24, 104, 727, 472, 1003, 1792, 1903, 216, 34, 198,
                ],
            ),
            (
                "   leading\t\ttabs  and\n\n\nnewlines ",
                &[
                    256, 2899, 197, 197, 100, 7366, 216, 284, 1116, 198, 2241, 5110, 216,
                ],
            ),
            (
                "caf\u{e9} na\u{ef}ve e\u{301}",
                &[83, 1939, 2756, 15486, 46494, 297, 151, 219],
            ),
            (
                "\u{65e5}\u{672c}\u{8a9e}\u{306e}\u{30c6}\u{30ad}\u{30b9}\u{30c8} \u{4e2d}\u{6587}",
                &[
                    23274, 115, 40993, 179, 120, 248, 26453, 11100, 224, 10391, 251, 10391, 134,
                    11100, 226, 216, 28589, 29184,
                ],
            ),
            (
                "emoji \u{1f600}\u{1f389}\u{1f44d}\u{1f3fd}",
                &[
                    391, 33777, 40303, 218, 10813, 232, 227, 10813, 235, 231, 10813, 233, 138,
                ],
            ),
            (
                "<|im_start|>user\nHi<|im_end|>\n",
                &[1, 4093, 198, 26843, 2, 198],
            ),
            (
                "a<|endoftext|>b <|im_start|",
                &[81, 0, 82, 2067, 108, 306, 79, 3738, 108],
            ),
            (
                "\u{41f}\u{440}\u{438}\u{432}\u{435}\u{442} \u{43c}\u{438}\u{440}!",
                &[155, 249, 46879, 16464, 32547, 41337, 7872, 9175, 17],
            ),
        ];
        for &(text, want) in cases {
            let got = ids(&tok, text);
            assert_eq!(got, want, "{text:?}");
            assert_eq!(tok.decode(&got, false).unwrap(), text);
        }

        let chat = ChatTemplate::from_gguf(&g).unwrap().unwrap();
        let messages = [
            msg("system", "You are a terse assistant."),
            msg("user", "What is 2+2?"),
        ];
        let rendered = chat.render(&messages, true).unwrap();
        assert_eq!(
            rendered,
            "<|im_start|>system\nYou are a terse assistant.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
        );
        // transformers' apply_chat_template(tokenize=True) ids for the same conversation.
        let want: &[u32] = &[
            1, 9690, 198, 2683, 359, 253, 1733, 313, 11173, 30, 2, 198, 1, 4093, 198, 1780, 314,
            216, 34, 27, 34, 47, 2, 198, 1, 520, 9531, 198,
        ];
        assert_eq!(tok.encode(rendered, false).unwrap().get_ids(), want);
        let default_system = chat.render(&messages[1..], false).unwrap();
        assert!(
            default_system
                .starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
        );
    }
}
