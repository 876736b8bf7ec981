//! Data files → token ids and labels (-100 = not scored). Formats, detected per record:
//! `{"input_ids": [...], "labels"?: [...]}`, `{"messages": [{"role", "content"}, ...]}` (chat
//! template, loss on assistant turns only), `{"prompt", "completion"}` (loss on the completion and
//! EOS), `{"text": ...}`, and alpaca `{"instruction", "input"?, "output"}` (chat template, loss on
//! the output and EOS). Files are jsonl or a JSON array. Errors name the file and line.
//! Also: truncation and bad-record policy ([`load_examples_with`]), packing, padded batches,
//! the train/eval split and the per-epoch visiting order.

use std::ops::Range;

use crate::io::chat::{ChatMessage, ChatTemplate};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde_json::Value;

/// Label of a position the loss ignores.
const IGNORE: i64 = -100;

/// One tokenized example.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Input token ids.
    pub input_ids: Vec<u32>,
    /// Per-position labels (`-100` = ignored), same length as `input_ids`.
    pub labels: Vec<i64>,
}

/// A data file problem, with the file and line (1-based) it was found on.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {msg}", if *line > 0 { format!(":{line}") } else { String::new() })]
pub struct DataError {
    /// Data file.
    pub file: String,
    /// 1-based line (or record number for JSON arrays); 0 for the file as a whole.
    pub line: usize,
    /// What is wrong.
    pub msg: String,
}

/// What a text record needs to become ids.
pub struct Tokenize<'a> {
    /// The model's tokenizer.
    pub tokenizer: &'a tokenizers::Tokenizer,
    /// Its chat template, for instruction-style records.
    pub chat_template: Option<&'a ChatTemplate>,
}

/// What [`load_examples_with`] does with a record it cannot use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BadLine {
    /// Fail with the record's error.
    #[default]
    Stop,
    /// Leave the record out and list it in [`LoadReport::skipped`].
    Skip,
}

/// How [`load_examples_with`] turns records into examples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataOptions {
    /// Examples are cut to their first `max_seq_len` tokens.
    pub max_seq_len: usize,
    /// Policy for malformed records.
    pub on_bad_line: BadLine,
    /// The model's vocabulary size: token ids and labels must lie below it (checked per record,
    /// so a bad id names its line and `on_bad_line` applies).
    pub vocab_size: Option<usize>,
}

impl Default for DataOptions {
    fn default() -> Self {
        DataOptions {
            max_seq_len: 1024,
            on_bad_line: BadLine::Stop,
            vocab_size: None,
        }
    }
}

/// Bytes of text kept per token of `max_seq_len` when a record's string is longer than it can
/// use: no token of a real vocabulary is longer, so the first `max_seq_len` tokens are those of
/// the whole string, while a 50 MB line costs a bounded amount of tokenizer memory.
pub const BYTES_PER_TOKEN_BOUND: usize = 64;

/// Smallest cut applied to a long string (below it, cutting saves nothing).
const MIN_STRING_CUT: usize = 1 << 16;

/// A data file's text and the lines [`decode_text`] skipped: `(line, why)`.
pub type DecodedText<'a> = (std::borrow::Cow<'a, str>, Vec<(usize, String)>);

/// Decode a data file's bytes as UTF-8. Lines that are not UTF-8 are an error naming the line, or,
/// with [`BadLine::Skip`], become empty lines (so later line numbers stay right) and are listed.
pub fn decode_text<'a>(
    bytes: &'a [u8],
    file: &str,
    on_bad_line: BadLine,
) -> Result<DecodedText<'a>, DataError> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        return Ok((text.into(), Vec::new()));
    }
    let mut text = String::with_capacity(bytes.len());
    let mut skipped = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if i > 0 {
            text.push('\n');
        }
        match std::str::from_utf8(line) {
            Ok(l) => text.push_str(l),
            Err(e) => {
                let msg = format!("not UTF-8 text (byte {} of the line)", e.valid_up_to() + 1);
                if on_bad_line == BadLine::Stop {
                    return Err(DataError {
                        file: file.into(),
                        line: i + 1,
                        msg,
                    });
                }
                skipped.push((i + 1, msg));
            }
        }
    }
    Ok((text.into(), skipped))
}

/// Bytes of a record string that `max_seq_len` tokens can use.
fn string_budget(max_seq_len: usize) -> usize {
    max_seq_len
        .saturating_mul(BYTES_PER_TOKEN_BOUND)
        .max(MIN_STRING_CUT)
}

/// Length in bytes of the longest string anywhere in `v`.
fn longest_string(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::Array(items) => items.iter().map(longest_string).max().unwrap_or(0),
        Value::Object(map) => map.values().map(longest_string).max().unwrap_or(0),
        _ => 0,
    }
}

/// Cut every string in `v` longer than `budget` bytes (at a char boundary).
fn cap_strings(v: &mut Value, budget: usize) {
    match v {
        Value::String(s) if s.len() > budget => {
            let mut cut = budget;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
        }
        Value::Array(items) => items.iter_mut().for_each(|x| cap_strings(x, budget)),
        Value::Object(map) => map.values_mut().for_each(|x| cap_strings(x, budget)),
        _ => {}
    }
}

/// What [`load_examples_with`] left out or shortened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Skipped records: `(line, why)`.
    pub skipped: Vec<(usize, String)>,
    /// Examples cut to `max_seq_len`.
    pub truncated: usize,
    /// Examples dropped because no label the loss counts was left.
    pub dropped_unscored: usize,
}

/// Rows of right-padded ids and labels, ready for the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Token ids, every row as long as the longest example.
    pub input_ids: Vec<Vec<u32>>,
    /// Labels, `-100` on padding.
    pub labels: Vec<Vec<i64>>,
    /// Labels the causal loss counts (not `-100`, at positions 1..).
    pub scored: usize,
    /// Real (unpadded) tokens.
    pub tokens: usize,
}

/// A record's 1-based line (or array position) and its JSON, or why it is not JSON.
type RawRecord = (usize, Result<Value, String>);

/// Splits a file into records; an unreadable JSON array fails as a whole.
fn read_records(text: &str, file: &str) -> Result<Vec<RawRecord>, DataError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim_start().starts_with('[') {
        let v: Value = serde_json::from_str(text).map_err(|e| DataError {
            file: file.into(),
            line: e.line(),
            msg: format!("invalid JSON: {e}"),
        })?;
        let Value::Array(arr) = v else {
            return Ok(Vec::new());
        };
        return Ok((1..).zip(arr.into_iter().map(Ok)).collect());
    }
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let rec = serde_json::from_str(l).map_err(|e| format!("invalid JSON line: {e}"));
            (i + 1, rec)
        })
        .collect())
}

/// Parse a whole data file (jsonl, or a JSON array of records).
pub fn parse_records(text: &str, file: &str) -> Result<Vec<(usize, Value)>, DataError> {
    read_records(text, file)?
        .into_iter()
        .map(|(line, rec)| {
            rec.map(|v| (line, v)).map_err(|msg| DataError {
                file: file.into(),
                line,
                msg,
            })
        })
        .collect()
}

fn id_list(v: &Value, key: &str) -> Result<Option<Vec<i64>>, String> {
    let Some(raw) = v.get(key) else {
        return Ok(None);
    };
    let arr = raw
        .as_array()
        .ok_or_else(|| format!("`{key}` must be an array of integers"))?;
    arr.iter()
        .map(|x| {
            x.as_i64()
                .ok_or_else(|| format!("`{key}` must be an array of integers, found {x}"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The end-of-sequence id appended to completions: the first of `<|im_end|>`, `<end_of_turn>`
/// (Gemma's end of a turn), `</s>`, `<|endoftext|>`, `<|eot_id|>`, `<|end_of_text|>` that is a
/// special token of the tokenizer.
// TODO: prefer the chat template's `eos_token` once `ChatTemplate` exposes it (io/chat.rs).
fn eos_id(tok: &Tokenize<'_>) -> Option<u32> {
    const CANDIDATES: [&str; 6] = [
        "<|im_end|>",
        "<end_of_turn>",
        "</s>",
        "<|endoftext|>",
        "<|eot_id|>",
        "<|end_of_text|>",
    ];
    let added = tok.tokenizer.get_added_vocabulary();
    CANDIDATES
        .iter()
        .filter(|t| added.is_special_token(t))
        .find_map(|t| tok.tokenizer.token_to_id(t))
}

/// Token ids of `s`; `special` adds the tokenizer's own bos/eos (post-processor).
fn encode(t: &Tokenize<'_>, s: &str, special: bool) -> Result<Vec<u32>, String> {
    t.tokenizer
        .encode(s, special)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| format!("tokenizer: {e}"))
}

/// `prompt` unscored followed by `answer` scored.
fn prompt_answer(prompt: Vec<u32>, answer: Vec<u32>) -> Example {
    let labels = prompt
        .iter()
        .map(|_| IGNORE)
        .chain(answer.iter().map(|&x| x as i64))
        .collect();
    let mut input_ids = prompt;
    input_ids.extend(answer);
    Example { input_ids, labels }
}

/// The ids and labels of an `input_ids` record.
fn ids_example(v: &Value) -> Result<Example, String> {
    let ids = id_list(v, "input_ids")?.unwrap_or_default();
    if ids.is_empty() {
        return Err("`input_ids` is empty".into());
    }
    if let Some(&bad) = ids.iter().find(|&&x| u32::try_from(x).is_err()) {
        return Err(format!("`input_ids` holds an invalid id {bad}"));
    }
    let labels = id_list(v, "labels")?.unwrap_or_else(|| ids.clone());
    if labels.len() != ids.len() {
        return Err(format!(
            "`labels` has {} entries but `input_ids` has {}",
            labels.len(),
            ids.len()
        ));
    }
    Ok(Example {
        input_ids: ids.iter().map(|&x| x as u32).collect(),
        labels,
    })
}

/// The messages of a `messages` (or conversational `prompt` / `completion`) value.
fn chat_messages(v: &Value, key: &str) -> Result<Vec<ChatMessage>, String> {
    let arr = v
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| format!("`{key}` must be a non-empty array of {{role, content}} objects"))?;
    arr.iter()
        .enumerate()
        .map(|(i, m)| {
            let field = |k: &str| {
                m.get(k)
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| format!("`{key}[{i}]` needs a string `{k}`"))
            };
            Ok(ChatMessage {
                role: field("role")?,
                content: field("content")?,
            })
        })
        .collect()
}

/// Renders a conversation and scores the tokens of its assistant turns from `first_scored` on.
fn chat_example(
    t: &Tokenize<'_>,
    msgs: &[ChatMessage],
    first_scored: usize,
) -> Result<Example, String> {
    let ct = t
        .chat_template
        .ok_or("chat records need a model with a chat template")?;
    let render =
        |m: &[ChatMessage], gen_prompt: bool| ct.render(m, gen_prompt).map_err(|e| e.to_string());
    let full = render(msgs, false)?;
    let mut spans: Vec<Range<usize>> = Vec::new();
    for (i, m) in msgs.iter().enumerate().skip(first_scored) {
        if m.role != "assistant" {
            continue;
        }
        if i == 0 {
            return Err("a conversation cannot open with an assistant turn".into());
        }
        let start = render(&msgs[..i], true)?;
        let end = render(&msgs[..=i], false)?;
        if !(end.starts_with(&start) && full.starts_with(&end)) {
            return Err("chat template is not prefix-stable, cannot locate assistant turns".into());
        }
        // The turn's text and end token, not the whitespace the template puts between turns.
        let turn = end[start.len()..].trim_end();
        spans.push(start.len()..start.len() + turn.len());
    }
    let enc = t
        .tokenizer
        .encode(full.as_str(), false)
        .map_err(|e| format!("tokenizer: {e}"))?;
    let labels = enc
        .get_ids()
        .iter()
        .zip(enc.get_offsets())
        .map(|(&id, &(from, _))| {
            if spans.iter().any(|s| s.contains(&from)) {
                id as i64
            } else {
                IGNORE
            }
        })
        .collect();
    Ok(Example {
        input_ids: enc.get_ids().to_vec(),
        labels,
    })
}

/// A `prompt` / `completion` record: plain strings, or message lists (TRL's conversational form).
fn prompt_completion_example(t: &Tokenize<'_>, v: &Value) -> Result<Example, String> {
    let (prompt, completion) = (&v["prompt"], &v["completion"]);
    if prompt.is_array() || completion.is_array() {
        let mut msgs = chat_messages(prompt, "prompt")?;
        let first_scored = msgs.len();
        msgs.extend(chat_messages(completion, "completion")?);
        return chat_example(t, &msgs, first_scored);
    }
    let prompt = prompt.as_str().ok_or("`prompt` must be a string")?;
    let completion = completion
        .as_str()
        .ok_or("prompt record needs a string `completion`")?;
    let mut answer = encode(t, completion, false)?;
    answer.extend(eos_id(t));
    Ok(prompt_answer(encode(t, prompt, true)?, answer))
}

/// An alpaca record: the user turn rendered with the chat template, loss on `output` and EOS.
fn alpaca_example(t: &Tokenize<'_>, v: &Value) -> Result<Example, String> {
    let instr = v["instruction"]
        .as_str()
        .ok_or("`instruction` must be a string")?;
    let input = v.get("input").and_then(Value::as_str).unwrap_or("");
    let user = if input.is_empty() {
        instr.to_string()
    } else {
        format!("{instr}\n{input}")
    };
    let output = v
        .get("output")
        .and_then(Value::as_str)
        .ok_or("alpaca record needs a string `output`")?;
    let msgs = [ChatMessage {
        role: "user".into(),
        content: user,
    }];
    let prompt = match t.chat_template {
        Some(ct) => ct.render(&msgs, true).map_err(|e| e.to_string())?,
        None => format!("{}\n", msgs[0].content),
    };
    let mut answer = encode(t, output, false)?;
    answer.extend(eos_id(t));
    // A chat template spells the BOS itself; a plain prompt gets the tokenizer's (as `tok(text)`
    // and `wgtune generate` without --chat do).
    let prompt = encode(t, &prompt, t.chat_template.is_none())?;
    Ok(prompt_answer(prompt, answer))
}

/// Turn one record into an [`Example`]: strings longer than `opts.max_seq_len` tokens can use are
/// cut first, and ids and labels are checked against `opts.vocab_size`.
pub fn to_example(
    v: &Value,
    tok: Option<&Tokenize<'_>>,
    opts: &DataOptions,
) -> Result<Example, String> {
    if !v.is_object() {
        return Err("record must be a JSON object".into());
    }
    let capped;
    let budget = string_budget(opts.max_seq_len);
    let v = if longest_string(v) > budget {
        let mut c = v.clone();
        cap_strings(&mut c, budget);
        capped = c;
        &capped
    } else {
        v
    };
    let need_tok = || tok.ok_or_else(|| "text records need a model with a tokenizer".to_string());
    let ex = if v.get("input_ids").is_some() {
        ids_example(v)?
    } else if let Some(m) = v.get("messages") {
        chat_example(need_tok()?, &chat_messages(m, "messages")?, 0)?
    } else if v.get("prompt").is_some() {
        prompt_completion_example(need_tok()?, v)?
    } else if let Some(text) = v.get("text") {
        let text = text.as_str().ok_or("`text` must be a string")?;
        let ids = encode(need_tok()?, text, true)?;
        let labels = ids.iter().map(|&x| x as i64).collect();
        Example {
            input_ids: ids,
            labels,
        }
    } else if v.get("instruction").is_some() {
        alpaca_example(need_tok()?, v)?
    } else {
        return Err(
            "record has none of `input_ids`, `messages`, `prompt`, `text`, `instruction`".into(),
        );
    };
    if ex.input_ids.is_empty() {
        return Err("record tokenizes to nothing".into());
    }
    if let Some(vocab) = opts.vocab_size {
        if let Some(&id) = ex.input_ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(format!(
                "token id {id} is outside the model's vocabulary (size {vocab})"
            ));
        }
        if let Some(&l) = ex
            .labels
            .iter()
            .find(|&&l| l != IGNORE && !(0..vocab as i64).contains(&l))
        {
            return Err(format!(
                "label {l} is neither -100 nor a token id of the model's vocabulary (size {vocab})"
            ));
        }
    }
    Ok(ex)
}

/// Labels the causal loss counts: not `-100`, at positions 1.. (position 0 is never predicted).
fn scored_labels(labels: &[i64]) -> usize {
    labels.iter().skip(1).filter(|&&l| l != IGNORE).count()
}

/// Parse and tokenize a data file; every problem names `file:line`. Nothing is truncated; examples
/// without a scored label are dropped (see [`load_examples_with`]).
pub fn load_examples(
    text: &str,
    file: &str,
    tok: Option<&Tokenize<'_>>,
) -> Result<Vec<Example>, DataError> {
    let opts = DataOptions {
        max_seq_len: usize::MAX,
        on_bad_line: BadLine::Stop,
        vocab_size: None,
    };
    load_examples_with(text, file, tok, &opts).map(|(examples, _)| examples)
}

/// Parse and tokenize a data file: cut examples to `max_seq_len`, drop those left without a
/// scored label, stop at or skip bad records; fails when no usable example remains.
pub fn load_examples_with(
    text: &str,
    file: &str,
    tok: Option<&Tokenize<'_>>,
    opts: &DataOptions,
) -> Result<(Vec<Example>, LoadReport), DataError> {
    let err = |line: usize, msg: String| DataError {
        file: file.into(),
        line,
        msg,
    };
    if opts.max_seq_len < 2 {
        return Err(err(0, "max_seq_len must be at least 2".into()));
    }
    let mut report = LoadReport::default();
    let mut examples = Vec::new();
    for (line, rec) in read_records(text, file)? {
        let mut ex = match rec.and_then(|v| to_example(&v, tok, opts)) {
            Ok(ex) => ex,
            Err(msg) if opts.on_bad_line == BadLine::Skip => {
                report.skipped.push((line, msg));
                continue;
            }
            Err(msg) => return Err(err(line, msg)),
        };
        if ex.input_ids.len() > opts.max_seq_len {
            ex.input_ids.truncate(opts.max_seq_len);
            ex.labels.truncate(opts.max_seq_len);
            report.truncated += 1;
        }
        if scored_labels(&ex.labels) == 0 {
            report.dropped_unscored += 1;
            continue;
        }
        examples.push(ex);
    }
    if examples.is_empty() {
        return Err(err(
            0,
            format!(
                "no usable examples ({} records skipped, {} without scored tokens)",
                report.skipped.len(),
                report.dropped_unscored
            ),
        ));
    }
    Ok((examples, report))
}

/// Greedily concatenates examples, in order, into rows of at most `max_seq_len` tokens; an example
/// is never split (one longer than `max_seq_len` gets a row of its own). Labels are kept as is.
pub fn pack(examples: &[Example], max_seq_len: usize) -> Vec<Example> {
    let mut rows: Vec<Example> = Vec::new();
    for ex in examples {
        match rows.last_mut() {
            Some(row) if row.input_ids.len() + ex.input_ids.len() <= max_seq_len => {
                row.input_ids.extend_from_slice(&ex.input_ids);
                row.labels.extend_from_slice(&ex.labels);
            }
            _ => rows.push(ex.clone()),
        }
    }
    rows
}

/// Right-pads examples to the longest with `pad_id` (label `-100`) into one [`Batch`].
pub fn make_batch(examples: &[&Example], pad_id: u32) -> Batch {
    let width = examples
        .iter()
        .map(|e| e.input_ids.len())
        .max()
        .unwrap_or(0);
    let mut batch = Batch {
        input_ids: Vec::with_capacity(examples.len()),
        labels: Vec::with_capacity(examples.len()),
        scored: 0,
        tokens: 0,
    };
    for e in examples {
        let mut ids = e.input_ids.clone();
        ids.resize(width, pad_id);
        let mut labels = e.labels.clone();
        labels.resize(width, IGNORE);
        batch.scored += scored_labels(&labels);
        batch.tokens += e.input_ids.len();
        batch.input_ids.push(ids);
        batch.labels.push(labels);
    }
    batch
}

/// How many of `n` examples [`split_eval`] holds out for `eval_fraction`: `ceil(fraction · n)`,
/// at least 1 when the fraction is positive and n > 1, never all.
pub fn eval_count(n: usize, eval_fraction: f64) -> usize {
    if eval_fraction.is_nan() || eval_fraction <= 0.0 || n < 2 {
        return 0;
    }
    ((eval_fraction * n as f64).ceil() as usize).clamp(1, n - 1)
}

/// Splits off [`eval_count`] examples chosen by a seeded shuffle; returns `(train, eval)`, each
/// in file order.
pub fn split_eval(
    examples: Vec<Example>,
    eval_fraction: f64,
    seed: u64,
) -> (Vec<Example>, Vec<Example>) {
    let n = examples.len();
    let k = eval_count(n, eval_fraction);
    if k == 0 {
        return (examples, Vec::new());
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    let mut is_eval = vec![false; n];
    for &i in &order[..k] {
        is_eval[i] = true;
    }
    let (eval, train): (Vec<_>, Vec<_>) = examples
        .into_iter()
        .zip(is_eval)
        .partition(|(_, is_eval)| *is_eval);
    (
        train.into_iter().map(|(e, _)| e).collect(),
        eval.into_iter().map(|(e, _)| e).collect(),
    )
}

/// The order examples are visited in during `epoch`: `0..n` unless `shuffle`, else a permutation
/// fixed by `(seed, epoch)` (reproducible, so a resumed run sees the same order).
pub fn epoch_order(n: usize, epoch: u64, seed: u64, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        key[8..16].copy_from_slice(&epoch.to_le_bytes());
        order.shuffle(&mut StdRng::from_seed(key));
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::models::bpe::Vocab;
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::whitespace::Whitespace;
    use tokenizers::{AddedToken, Tokenizer};

    const WORDS: [&str; 14] = [
        "[UNK]",
        "<|im_start|>",
        "<|im_end|>",
        "user",
        "assistant",
        "hi",
        "there",
        "hello",
        "how",
        "are",
        "you",
        "fine",
        "thanks",
        "</s>",
    ];
    const TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

    /// A word-level tokenizer over [`WORDS`] with the listed special tokens.
    fn tokenizer(special: &[&str]) -> Tokenizer {
        let vocab: Vocab = WORDS.iter().map(|w| w.to_string()).zip(0..).collect();
        let model = WordLevel::builder()
            .vocab(vocab)
            .unk_token("[UNK]".into())
            .build()
            .unwrap();
        let mut tok = Tokenizer::new(model);
        tok.with_pre_tokenizer(Some(Whitespace {}));
        let special: Vec<AddedToken> = special.iter().map(|t| AddedToken::from(*t, true)).collect();
        tok.add_special_tokens(special).unwrap();
        tok
    }

    fn chatml() -> Tokenizer {
        tokenizer(&["<|im_start|>", "<|im_end|>"])
    }

    fn template(src: &str) -> ChatTemplate {
        ChatTemplate::new(src.into(), String::new(), "<|im_end|>".into())
    }

    /// One record through `to_example`.
    fn one(rec: &str, tok: &Tokenizer, ct: Option<&ChatTemplate>) -> Result<Example, String> {
        let t = Tokenize {
            tokenizer: tok,
            chat_template: ct,
        };
        to_example(
            &serde_json::from_str(rec).unwrap(),
            Some(&t),
            &DataOptions::default(),
        )
    }

    const X: i64 = IGNORE;

    #[test]
    fn input_ids_with_and_without_labels() {
        let ex = load_examples(
            "{\"input_ids\":[1,2,3]}\n\n{\"input_ids\":[4,5],\"labels\":[-100,5]}\n",
            "d.jsonl",
            None,
        )
        .unwrap();
        assert_eq!(ex[0].labels, vec![1, 2, 3]);
        assert_eq!(ex[1].labels, vec![-100, 5]);
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = load_examples("{\"input_ids\":[1]}\n{oops\n", "d.jsonl", None).unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("d.jsonl", 2));
        let e = load_examples("{\"input_ids\":[1,-4]}\n", "d.jsonl", None).unwrap_err();
        assert!(e.to_string().contains("invalid id -4"), "{e}");
        let e = load_examples("{\"text\":\"hi\"}\n", "d.jsonl", None).unwrap_err();
        assert!(e.msg.contains("tokenizer"));
        let e = load_examples("{\"input_ids\":[1,2],\"labels\":[1]}", "d.jsonl", None).unwrap_err();
        assert!(e.msg.contains("labels"));
        let e = load_examples("[{\"input_ids\":[1,2]}, 7]", "d.json", None).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.msg.contains("JSON object"), "{e}");
    }

    #[test]
    fn prompt_completion_scores_completion_and_eos() {
        let tok = chatml();
        let ex = one(r#"{"prompt":"hi there","completion":"hello"}"#, &tok, None).unwrap();
        assert_eq!(ex.input_ids, vec![5, 6, 7, 2]);
        assert_eq!(ex.labels, vec![X, X, 7, 2]);
        // `<|im_end|>` is only a plain word here: EOS falls back to the special `</s>`.
        let tok = tokenizer(&["</s>"]);
        let ex = one(r#"{"prompt":"hi","completion":"hello"}"#, &tok, None).unwrap();
        assert_eq!(ex.input_ids, vec![5, 7, 13]);
        let e = one(r#"{"prompt":"hi"}"#, &tok, None).unwrap_err();
        assert!(e.contains("completion"), "{e}");
    }

    #[test]
    fn alpaca_scores_output_and_eos() {
        let (tok, ct) = (chatml(), template(TEMPLATE));
        let ex = one(r#"{"instruction":"hi","output":"hello"}"#, &tok, Some(&ct)).unwrap();
        // <|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n | hello <|im_end|>
        assert_eq!(ex.input_ids, vec![1, 3, 5, 2, 1, 4, 7, 2]);
        assert_eq!(ex.labels, vec![X, X, X, X, X, X, 7, 2]);
        let ex = one(
            r#"{"instruction":"hi","input":"there","output":"fine"}"#,
            &tok,
            Some(&ct),
        )
        .unwrap();
        assert_eq!(ex.input_ids, vec![1, 3, 5, 6, 2, 1, 4, 11, 2]);
    }

    #[test]
    fn chat_scores_assistant_turns_only() {
        let (tok, ct) = (chatml(), template(TEMPLATE));
        let rec = r#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"},{"role":"user","content":"how are you"},{"role":"assistant","content":"fine thanks"}]}"#;
        let ex = one(rec, &tok, Some(&ct)).unwrap();
        assert_eq!(
            ex.input_ids,
            vec![1, 3, 5, 2, 1, 4, 7, 2, 1, 3, 8, 9, 10, 2, 1, 4, 11, 12, 2]
        );
        assert_eq!(
            ex.labels,
            vec![X, X, X, X, X, X, 7, 2, X, X, X, X, X, X, X, X, 11, 12, 2]
        );
        // Conversational prompt/completion: only the completion's assistant turn is scored.
        let rec = r#"{"prompt":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"},{"role":"user","content":"how are you"}],"completion":[{"role":"assistant","content":"fine thanks"}]}"#;
        let ex2 = one(rec, &tok, Some(&ct)).unwrap();
        assert_eq!(ex2.input_ids, ex.input_ids);
        assert_eq!(scored_labels(&ex2.labels), 3);
    }

    #[test]
    fn chat_errors() {
        let tok = chatml();
        let rec = r#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}"#;
        let e = one(rec, &tok, None).unwrap_err();
        assert_eq!(e, "chat records need a model with a chat template");
        let counting =
            template("{% for m in messages %}{{ m.content }} {% endfor %}{{ messages|length }}");
        let e = one(rec, &tok, Some(&counting)).unwrap_err();
        assert_eq!(
            e,
            "chat template is not prefix-stable, cannot locate assistant turns"
        );
        let ct = template(TEMPLATE);
        let e = one(r#"{"messages":[{"role":"user"}]}"#, &tok, Some(&ct)).unwrap_err();
        assert!(e.contains("content"), "{e}");
        let e = one(r#"{"messages":[]}"#, &tok, Some(&ct)).unwrap_err();
        assert!(e.contains("non-empty"), "{e}");
    }

    #[test]
    fn truncation_and_unscored_drop() {
        let tok = chatml();
        let t = Tokenize {
            tokenizer: &tok,
            chat_template: None,
        };
        let data = concat!(
            "{\"prompt\":\"hi there\",\"completion\":\"hello you\"}\n",
            "{\"prompt\":\"hi there how are\",\"completion\":\"fine\"}\n",
            "{\"prompt\":\"hi\",\"completion\":\"fine\"}\n",
        );
        let opts = DataOptions {
            max_seq_len: 4,
            ..DataOptions::default()
        };
        let (ex, report) = load_examples_with(data, "d.jsonl", Some(&t), &opts).unwrap();
        assert_eq!(ex.len(), 2);
        assert_eq!(ex[0].input_ids, vec![5, 6, 7, 10]);
        assert_eq!(ex[0].labels, vec![X, X, 7, 10]);
        assert_eq!(ex[1].input_ids, vec![5, 11, 2]);
        let want = LoadReport {
            skipped: vec![],
            truncated: 2,
            dropped_unscored: 1,
        };
        assert_eq!(report, want);
        let e = load_examples_with(
            data,
            "d.jsonl",
            Some(&t),
            &DataOptions {
                max_seq_len: 1,
                ..opts
            },
        )
        .unwrap_err();
        assert!(e.msg.contains("max_seq_len"), "{e}");
    }

    #[test]
    fn bad_lines_stop_or_skip() {
        let data = "{\"input_ids\":[1,2]}\n\n{oops\n{\"input_ids\":[3,4]}\n{\"foo\":1}\n";
        let stop = DataOptions::default();
        let e = load_examples_with(data, "d.jsonl", None, &stop).unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("d.jsonl", 3));
        assert!(e.msg.contains("invalid JSON"), "{e}");
        let skip = DataOptions {
            on_bad_line: BadLine::Skip,
            ..stop
        };
        let (ex, report) = load_examples_with(data, "d.jsonl", None, &skip).unwrap();
        assert_eq!(ex.len(), 2);
        let lines: Vec<usize> = report.skipped.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, vec![3, 5]);
        assert!(report.skipped[1].1.contains("none of"));
    }

    #[test]
    fn ids_and_labels_are_checked_against_the_vocabulary_per_line() {
        let data = "{\"input_ids\":[1,2]}\n{\"input_ids\":[1,99]}\n{\"input_ids\":[1,2],\"labels\":[-100,7]}\n{\"input_ids\":[1,2],\"labels\":[-5,2]}\n";
        let stop = DataOptions {
            vocab_size: Some(10),
            ..DataOptions::default()
        };
        let e = load_examples_with(data, "d.jsonl", None, &stop).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.to_string().starts_with("d.jsonl:2: token id 99"), "{e}");
        let skip = DataOptions {
            on_bad_line: BadLine::Skip,
            ..stop
        };
        let (ex, report) = load_examples_with(data, "d.jsonl", None, &skip).unwrap();
        assert_eq!(ex.len(), 2);
        let lines: Vec<usize> = report.skipped.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, vec![2, 4]);
        assert!(report.skipped[1].1.contains("label -5"));
    }

    #[test]
    fn invalid_utf8_names_the_line_or_is_skipped() {
        let bytes = b"{\"input_ids\":[1,2]}\n{\"text\":\"\xff\xfe\"}\n{\"input_ids\":[3,4]}\n";
        let e = decode_text(bytes, "d.jsonl", BadLine::Stop).unwrap_err();
        assert_eq!(
            e.to_string(),
            "d.jsonl:2: not UTF-8 text (byte 10 of the line)"
        );
        let (text, skipped) = decode_text(bytes, "d.jsonl", BadLine::Skip).unwrap();
        assert_eq!(skipped.len(), 1);
        let (ex, _) = load_examples_with(&text, "d.jsonl", None, &DataOptions::default()).unwrap();
        assert_eq!(ex.len(), 2);
        assert!(matches!(
            decode_text(b"ok", "d", BadLine::Stop),
            Ok((std::borrow::Cow::Borrowed("ok"), _))
        ));
    }

    #[test]
    fn long_strings_are_cut_before_tokenizing() {
        let mut v = serde_json::json!({"text": "é".repeat(100_000), "n": [{"c": "ab"}]});
        assert_eq!(longest_string(&v), 200_000);
        cap_strings(&mut v, string_budget(4));
        assert_eq!(v["text"].as_str().unwrap().len(), MIN_STRING_CUT);
        assert_eq!(v["n"][0]["c"], "ab");
        assert_eq!(string_budget(10_000), 640_000);
    }

    #[test]
    fn empty_dataset_is_an_error() {
        for data in [
            "",
            "\n\n",
            "[]",
            "{\"input_ids\":[1]}\n{\"input_ids\":[1,2],\"labels\":[-100,-100]}",
        ] {
            let e = load_examples(data, "d.jsonl", None).unwrap_err();
            assert!(e.msg.contains("no usable examples"), "{data:?}: {e}");
            assert_eq!(e.line, 0);
        }
        let skip = DataOptions {
            on_bad_line: BadLine::Skip,
            ..DataOptions::default()
        };
        let e = load_examples_with("{oops\n", "d.jsonl", None, &skip).unwrap_err();
        assert!(
            e.msg.contains("no usable examples (1 records skipped"),
            "{e}"
        );
    }

    fn ex(ids: &[u32]) -> Example {
        Example {
            input_ids: ids.to_vec(),
            labels: ids.iter().map(|&x| x as i64).collect(),
        }
    }

    #[test]
    fn packing_is_greedy_and_never_splits() {
        let data = [
            ex(&[1, 2, 3]),
            ex(&[4, 5]),
            ex(&[6, 7, 8, 9]),
            ex(&[10]),
            ex(&[11, 12, 13, 14, 15, 16]),
        ];
        let rows = pack(&data, 5);
        let ids: Vec<Vec<u32>> = rows.iter().map(|r| r.input_ids.clone()).collect();
        assert_eq!(
            ids,
            vec![
                vec![1, 2, 3, 4, 5],
                vec![6, 7, 8, 9, 10],
                vec![11, 12, 13, 14, 15, 16]
            ]
        );
        assert_eq!(rows[0].labels, vec![1, 2, 3, 4, 5]);
        assert!(pack(&[], 5).is_empty());
    }

    #[test]
    fn batches_pad_right() {
        let a = Example {
            input_ids: vec![1, 2, 3],
            labels: vec![X, 2, 3],
        };
        let b = Example {
            input_ids: vec![4],
            labels: vec![4],
        };
        let batch = make_batch(&[&a, &b], 0);
        assert_eq!(batch.input_ids, vec![vec![1, 2, 3], vec![4, 0, 0]]);
        assert_eq!(batch.labels, vec![vec![X, 2, 3], vec![4, X, X]]);
        assert_eq!((batch.scored, batch.tokens), (2, 4));
        let empty = make_batch(&[], 0);
        assert_eq!(
            (empty.input_ids.len(), empty.scored, empty.tokens),
            (0, 0, 0)
        );
    }

    #[test]
    fn eval_split_is_seeded() {
        let data: Vec<Example> = (0..10).map(|i| ex(&[i, i])).collect();
        let (train, eval) = split_eval(data.clone(), 0.25, 7);
        assert_eq!((train.len(), eval.len()), (7, 3));
        assert_eq!(
            split_eval(data.clone(), 0.25, 7),
            (train.clone(), eval.clone())
        );
        let mut all: Vec<u32> = train.iter().chain(&eval).map(|e| e.input_ids[0]).collect();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert!(train.windows(2).all(|w| w[0].input_ids < w[1].input_ids));
        assert_ne!(split_eval(data.clone(), 0.25, 8).1, eval);
        assert_eq!(split_eval(data.clone(), 0.01, 7).1.len(), 1);
        assert_eq!(split_eval(data.clone(), 1.0, 7).1.len(), 9);
        assert_eq!(split_eval(data.clone(), 0.0, 7).1.len(), 0);
        assert_eq!(split_eval(data[..1].to_vec(), 0.5, 7).1.len(), 0);
    }

    #[test]
    fn epoch_order_is_reproducible() {
        assert_eq!(epoch_order(5, 3, 1, false), vec![0, 1, 2, 3, 4]);
        let e0 = epoch_order(50, 0, 1, true);
        let mut sorted = e0.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(epoch_order(50, 0, 1, true), e0);
        assert_ne!(epoch_order(50, 1, 1, true), e0);
        assert_ne!(epoch_order(50, 0, 2, true), e0);
        assert!(epoch_order(0, 0, 1, true).is_empty());
    }
}
