//! Data files → token ids and labels (-100 = not scored). Formats, detected per record:
//! `{"input_ids": [...], "labels"?: [...]}`, `{"text": ...}`, and alpaca
//! `{"instruction", "input"?, "output"}` (rendered with the chat template, loss on the output
//! only). Files are jsonl or a JSON array. Errors name the file and line.

use crate::io::chat::{ChatMessage, ChatTemplate};
use serde_json::Value;

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
#[error("{file}:{line}: {msg}")]
pub struct DataError {
    /// Data file.
    pub file: String,
    /// 1-based line (or record number for JSON arrays).
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

/// Parse a whole data file (jsonl, or a JSON array of records).
pub fn parse_records(text: &str, file: &str) -> Result<Vec<(usize, Value)>, DataError> {
    let err = |line: usize, msg: String| DataError {
        file: file.into(),
        line,
        msg,
    };
    if text.trim_start().starts_with('[') {
        let v: Value =
            serde_json::from_str(text).map_err(|e| err(e.line(), format!("invalid JSON: {e}")))?;
        let arr = v.as_array().cloned().unwrap_or_default();
        return Ok(arr
            .into_iter()
            .enumerate()
            .map(|(i, r)| (i + 1, r))
            .collect());
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map(|v| (i + 1, v))
                .map_err(|e| err(i + 1, format!("invalid JSON line: {e}")))
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

/// Turn one record into an [`Example`].
pub fn to_example(v: &Value, tok: Option<&Tokenize<'_>>) -> Result<Example, String> {
    if let Some(ids) = id_list(v, "input_ids")? {
        if ids.is_empty() {
            return Err("`input_ids` is empty".into());
        }
        if let Some(&bad) = ids.iter().find(|&&x| x < 0 || x > u32::MAX as i64) {
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
        return Ok(Example {
            input_ids: ids.iter().map(|&x| x as u32).collect(),
            labels,
        });
    }
    let need_tok = || tok.ok_or_else(|| "text records need a model with a tokenizer".to_string());
    let encode = |t: &Tokenize<'_>, s: &str, special: bool| -> Result<Vec<u32>, String> {
        t.tokenizer
            .encode(s, special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| format!("tokenizer: {e}"))
    };
    if let Some(text) = v.get("text") {
        let text = text.as_str().ok_or("`text` must be a string")?;
        let ids = encode(need_tok()?, text, true)?;
        if ids.is_empty() {
            return Err("`text` tokenizes to nothing".into());
        }
        let labels = ids.iter().map(|&x| x as i64).collect();
        return Ok(Example {
            input_ids: ids,
            labels,
        });
    }
    if let Some(instr) = v.get("instruction") {
        let t = need_tok()?;
        let field = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let instr = instr.as_str().ok_or("`instruction` must be a string")?;
        let input = field("input");
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
            Some(ct) => ct
                .render(&msgs, true)
                .map_err(|e| format!("chat template: {e}"))?,
            None => format!("{}\n", msgs[0].content),
        };
        let prompt_ids = encode(t, &prompt, false)?;
        let answer_ids = encode(t, output, false)?;
        let labels = prompt_ids
            .iter()
            .map(|_| -100)
            .chain(answer_ids.iter().map(|&x| x as i64))
            .collect();
        let mut ids = prompt_ids;
        ids.extend(answer_ids);
        return Ok(Example {
            input_ids: ids,
            labels,
        });
    }
    Err("record has none of `input_ids`, `text`, `instruction`".into())
}

/// Parse and tokenize a data file; every problem names `file:line`.
pub fn load_examples(
    text: &str,
    file: &str,
    tok: Option<&Tokenize<'_>>,
) -> Result<Vec<Example>, DataError> {
    let records = parse_records(text, file)?;
    if records.is_empty() {
        return Err(DataError {
            file: file.into(),
            line: 0,
            msg: "no records".into(),
        });
    }
    records
        .iter()
        .map(|(line, v)| {
            to_example(v, tok).map_err(|msg| DataError {
                file: file.into(),
                line: *line,
                msg,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
