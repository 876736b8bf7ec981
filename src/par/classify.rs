//! System-1 / System-2 labels for LoRA-PAR, three ways:
//!
//! 1. **from the data**: `"system": 1` or `2` on a record (or the whole file, when the front end
//!    gives one file per system);
//! 2. **voting**: N voters (N odd) each read a role-play prompt ("answer as the target model
//!    would: A = direct, B = several reasoning steps") and vote by the next-token probabilities
//!    of the two options `A` and `B` (no free text is parsed); the majority wins, ties are
//!    impossible with odd N; the prompts are editable templates;
//! 3. **a heuristic** whose every cue is listed in the split file (see [`heuristic`]).
//!
//! Also the record helpers shared by the stages: the prompt text, the target / reference answer,
//! and the SFT record of a `passage` / `question` / `answer` item.

use super::{ParError, System};
use crate::io::chat::{ChatMessage, ChatTemplate};
use crate::model::decoder::Decoder;
use crate::model::read_f32;
use burn::tensor::activation::softmax;
use serde_json::{Value, json};

/// The built-in role-play prompts (one per voter, cycled). `{task}` is the prompt of the record,
/// `{answer}` its target answer (empty when it has none). Option `A` is System 1, `B` System 2.
pub const DEFAULT_TEMPLATES: [&str; 3] = [
    "You are role-playing as a small assistant language model that is being taught the task below.\n\nTask:\n{task}\n\nExpected answer:\n{answer}\n\nAs that model, would you produce this answer (A) directly, from memory or in one quick step, or (B) only after reasoning through several steps? Reply with the single letter A or B.",
    "Pretend you are a compact language model. The question you will be asked:\n{task}\nTarget answer: {answer}\nWhich describes how you would answer it?\nA: immediately and intuitively (fast thinking)\nB: step by step, with calculations or multi-step reasoning (slow thinking)\nAnswer A or B.",
    "Imagine you are the student model receiving this instruction:\n{task}\n(reference answer: {answer})\nIs this a System 1 task for you (A: quick, direct recall or writing) or a System 2 task (B: deliberate multi-step reasoning such as arithmetic or logic)? Answer with A or B only.",
];

/// How an example's label was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelSource {
    /// `"system"` on the record.
    Data,
    /// The file it came from (one file per system).
    File,
    /// Majority of voters.
    Vote,
    /// [`heuristic`].
    Heuristic,
}

/// One voter's judgement of one example.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Vote {
    /// Voter index (0-based).
    pub voter: usize,
    /// Next-token probability of option `A` (System 1).
    pub p_a: f64,
    /// Next-token probability of option `B` (System 2).
    pub p_b: f64,
    /// `B` wins only when strictly more probable.
    pub system: System,
}

/// A labelled example, as written to `par_split.jsonl`.
#[derive(Debug, Clone, PartialEq)]
pub struct Labelled {
    /// The decision.
    pub system: System,
    /// How it was made.
    pub source: LabelSource,
    /// The votes (voting only).
    pub votes: Vec<Vote>,
    /// The heuristic's cues that fired (heuristic only).
    pub cues: Vec<String>,
}

/// The `"system"` label of a record: `None` when absent; 1 / 2 (number or string) otherwise.
pub fn data_label(v: &Value) -> Result<Option<System>, String> {
    match v.get("system") {
        None | Some(Value::Null) => Ok(None),
        Some(x) => match x
            .as_u64()
            .or_else(|| x.as_str().and_then(|s| s.trim().parse().ok()))
        {
            Some(1) => Ok(Some(System::S1)),
            Some(2) => Ok(Some(System::S2)),
            _ => Err(format!("`system` must be 1 or 2, found {x}")),
        },
    }
}

fn text_of(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn messages(v: &Value) -> Option<&Vec<Value>> {
    v.get("messages").and_then(Value::as_array)
}

/// The task text a model is asked: `prompt`, the user turns of `messages`, `passage` + `question`,
/// alpaca `instruction` + `input`, or `text`.
pub fn prompt_text(v: &Value) -> Option<String> {
    if let Some(p) = text_of(v, "prompt") {
        return Some(p);
    }
    if let Some(Value::Array(turns)) = v.get("prompt") {
        return Some(join_contents(turns, |_| true));
    }
    if let Some(m) = messages(v) {
        return Some(join_contents(m, |r| r != "assistant"));
    }
    if let Some(q) = text_of(v, "question") {
        return Some(match text_of(v, "passage") {
            Some(p) => format!("{} {}", p.trim(), q.trim()),
            None => q.trim().to_string(),
        });
    }
    if let Some(i) = text_of(v, "instruction") {
        let input = text_of(v, "input").unwrap_or_default();
        return Some(if input.is_empty() {
            i
        } else {
            format!("{i}\n{input}")
        });
    }
    text_of(v, "text")
}

fn join_contents(turns: &[Value], keep: impl Fn(&str) -> bool) -> String {
    turns
        .iter()
        .filter(|t| keep(t.get("role").and_then(Value::as_str).unwrap_or("")))
        .filter_map(|t| t.get("content").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The target answer of a record: `answer`, `output`, `completion`, or the last assistant turn.
pub fn answer_text(v: &Value) -> Option<String> {
    for key in ["answer", "output", "completion"] {
        if let Some(a) = text_of(v, key) {
            return Some(a);
        }
    }
    if let Some(Value::Array(turns)) = v.get("completion") {
        return Some(join_contents(turns, |_| true));
    }
    messages(v)?
        .iter()
        .rev()
        .find(|t| t.get("role").and_then(Value::as_str) == Some("assistant"))
        .and_then(|t| t.get("content").and_then(Value::as_str))
        .map(str::to_string)
}

/// The record as a standard data record for SFT and importance: records in a format of
/// [`crate::train::data`] are kept; `question` (+ `passage`) / `answer` items become a
/// `messages` conversation (user: passage and question; assistant: the answer).
pub fn sft_record(v: &Value) -> Result<Value, String> {
    let known = ["input_ids", "messages", "prompt", "text", "instruction"];
    if known.iter().any(|k| v.get(k).is_some()) {
        return Ok(v.clone());
    }
    let prompt = prompt_text(v).ok_or(
        "record has none of `input_ids`, `messages`, `prompt`, `text`, `instruction`, `question`",
    )?;
    let answer = answer_text(v).ok_or("a `question` record needs an `answer`")?;
    Ok(json!({"messages": [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": answer},
    ]}))
}

const NUMBER_WORDS: [&str; 24] = [
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve", "thirteen", "fourteen", "fifteen", "twenty", "thirty", "forty", "fifty", "hundred",
    "thousand", "half", "twice", "double",
];
const QUANTITY_CUES: [&str; 12] = [
    "how many",
    "how much",
    "how far",
    "how long",
    "what is the total",
    "what is the sum",
    "calculate",
    "compute",
    "solve",
    "percent",
    "average",
    "probability",
];
const REASONING_CUES: [&str; 10] = [
    "=",
    " + ",
    " - ",
    " * ",
    " × ",
    " / ",
    "therefore",
    "step ",
    "thus",
    "so the answer",
];

/// Numbers in `s`: digit runs plus English number words.
pub fn count_numbers(s: &str) -> usize {
    let lower = s.to_lowercase();
    lower
        .split(|c: char| !c.is_alphanumeric() && c != '.')
        .filter(|w| {
            let w = w.trim_matches('.');
            (!w.is_empty() && w.chars().all(|c| c.is_ascii_digit() || c == '.'))
                && w.chars().any(|c| c.is_ascii_digit())
                || NUMBER_WORDS.contains(&w)
        })
        .count()
}

/// The transparent fallback. Cues (each listed in the split file when it fires):
/// `numeric_answer` (the answer is a number, with at most two more words such as a unit; weight 2), `quantity_question` (the prompt
/// asks "how many", "calculate", ..., weight 1), `prompt_numbers` (two or more numbers, digits
/// or words, in the prompt, weight 1), `worked_answer` (two or more of `=`, `+`, `-`, `*`, `/`,
/// "therefore", "step", "thus" in the answer, weight 1). System 2 when the weights reach 2.
pub fn heuristic(v: &Value) -> (System, Vec<String>) {
    let prompt = prompt_text(v).unwrap_or_default();
    let answer = answer_text(v).unwrap_or_default();
    let mut cues = Vec::new();
    let mut score = 0;
    let short = answer.split_whitespace().count() <= 3;
    if short && super::grpo::first_number(&answer).is_some_and(|(pos, _)| pos == 0) {
        cues.push("numeric_answer".to_string());
        score += 2;
    }
    let lp = prompt.to_lowercase();
    if QUANTITY_CUES.iter().any(|c| lp.contains(c)) {
        cues.push("quantity_question".to_string());
        score += 1;
    }
    if count_numbers(&prompt) >= 2 {
        cues.push("prompt_numbers".to_string());
        score += 1;
    }
    let la = answer.to_lowercase();
    if REASONING_CUES
        .iter()
        .map(|c| la.matches(c).count())
        .sum::<usize>()
        >= 2
    {
        cues.push("worked_answer".to_string());
        score += 1;
    }
    let system = if score >= 2 { System::S2 } else { System::S1 };
    (system, cues)
}

/// Fill a role-play template: `{task}` and `{answer}`.
pub fn render_template(template: &str, v: &Value) -> String {
    template
        .replace("{task}", prompt_text(v).unwrap_or_default().trim())
        .replace("{answer}", answer_text(v).unwrap_or_default().trim())
}

/// Parse an editable template file: templates separated by lines holding only `---`; each must
/// contain `{task}`.
pub fn parse_templates(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines().chain(std::iter::once("---")) {
        if line.trim() == "---" {
            let t = cur.trim().to_string();
            if !t.is_empty() {
                if !t.contains("{task}") {
                    return Err(format!(
                        "template {} has no `{{task}}` placeholder",
                        out.len() + 1
                    ));
                }
                out.push(t);
            }
            cur.clear();
        } else {
            cur.push_str(line);
            cur.push('\n');
        }
    }
    if out.is_empty() {
        return Err("no templates (separate several with a line `---`)".into());
    }
    Ok(out)
}

/// Something that reads the next-token probabilities of the options `A` and `B` after a prompt.
pub trait Voter {
    /// `[p(A), p(B)]` after `prompt`.
    fn option_probs(
        &mut self,
        prompt: &str,
    ) -> impl std::future::Future<Output = Result<[f64; 2], ParError>>;
}

/// Let `n` voters (odd) judge record `v`: voter `i` is `voters[i % len]` reading template
/// `templates[i % len]`. Each votes System 2 when `p(B) > p(A)`; the majority wins.
pub async fn vote<V: Voter>(
    voters: &mut [V],
    n: usize,
    templates: &[String],
    v: &Value,
) -> Result<Labelled, ParError> {
    if n.is_multiple_of(2) || voters.is_empty() || templates.is_empty() {
        return Err(ParError::Config(format!(
            "voting needs an odd number of voters (got {n}), at least one voter model and one template"
        )));
    }
    let mut votes = Vec::with_capacity(n);
    for i in 0..n {
        let prompt = render_template(&templates[i % templates.len()], v);
        let k = voters.len();
        let [p_a, p_b] = voters[i % k].option_probs(&prompt).await?;
        let system = if p_b > p_a { System::S2 } else { System::S1 };
        votes.push(Vote {
            voter: i,
            p_a,
            p_b,
            system,
        });
    }
    let s2 = votes.iter().filter(|x| x.system == System::S2).count();
    Ok(Labelled {
        system: if 2 * s2 > n { System::S2 } else { System::S1 },
        source: LabelSource::Vote,
        votes,
        cues: Vec::new(),
    })
}

/// A loaded model as voter: the prompt is rendered as a user turn with the chat template (when
/// the model has one) and the options are the first token ids of `A` and `B`.
pub struct ModelVoter<'a> {
    /// The voter network (any device; no gradients are taken).
    pub model: &'a Decoder,
    /// Its tokenizer.
    pub tokenizer: &'a tokenizers::Tokenizer,
    /// Its chat template.
    pub chat_template: Option<&'a ChatTemplate>,
    /// Token ids of `A` and `B`.
    pub options: [u32; 2],
}

impl<'a> ModelVoter<'a> {
    /// A voter over `model`; fails when `A` / `B` are not distinct tokens.
    pub fn new(
        model: &'a Decoder,
        tokenizer: &'a tokenizers::Tokenizer,
        chat_template: Option<&'a ChatTemplate>,
    ) -> Result<Self, ParError> {
        let id = |s: &str| -> Result<u32, ParError> {
            let enc = tokenizer
                .encode(s, false)
                .map_err(|e| ParError::Config(format!("voter tokenizer: {e}")))?;
            match enc.get_ids() {
                [one] => Ok(*one),
                ids => Err(ParError::Config(format!(
                    "voter tokenizer: option `{s}` is {} tokens, need exactly one",
                    ids.len()
                ))),
            }
        };
        let options = [id("A")?, id("B")?];
        if options[0] == options[1] {
            return Err(ParError::Config(
                "voter tokenizer maps A and B to one token".into(),
            ));
        }
        Ok(Self {
            model,
            tokenizer,
            chat_template,
            options,
        })
    }
}

impl Voter for ModelVoter<'_> {
    async fn option_probs(&mut self, prompt: &str) -> Result<[f64; 2], ParError> {
        let text = match self.chat_template {
            Some(ct) => ct
                .render(
                    &[ChatMessage {
                        role: "user".into(),
                        content: prompt.to_string(),
                    }],
                    true,
                )
                .map_err(|e| ParError::Config(format!("voter chat template: {e}")))?,
            None => format!("{prompt}\nAnswer: "),
        };
        let ids = self
            .tokenizer
            .encode(text.as_str(), self.chat_template.is_none())
            .map_err(|e| ParError::Config(format!("voter tokenizer: {e}")))?
            .get_ids()
            .to_vec();
        if ids.is_empty() {
            return Err(ParError::Config("voter prompt tokenizes to nothing".into()));
        }
        let logits = self.model.forward(std::slice::from_ref(&ids), None)?;
        let [_, t, v] = logits.dims();
        let last = logits.slice([0..1, t - 1..t, 0..v]).reshape([v]);
        let probs = read_f32(softmax(last.detach(), 0)).await?;
        Ok([
            probs[self.options[0] as usize] as f64,
            probs[self.options[1] as usize] as f64,
        ])
    }
}

/// One line of `par_split.jsonl`: where the record came from, its label, how, and the votes/cues.
pub fn split_line(file: &str, line: usize, l: &Labelled) -> Value {
    let mut out = json!({
        "file": file,
        "line": line,
        "system": l.system.number(),
        "source": l.source,
    });
    if !l.votes.is_empty() {
        out["votes"] = l
            .votes
            .iter()
            .map(|x| json!({"voter": x.voter, "p_a": x.p_a, "p_b": x.p_b, "system": x.system.number()}))
            .collect();
    }
    if l.source == LabelSource::Heuristic {
        out["cues"] = json!(l.cues);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Scripted(Vec<[f64; 2]>, usize);

    impl Voter for Scripted {
        async fn option_probs(&mut self, _prompt: &str) -> Result<[f64; 2], ParError> {
            self.1 += 1;
            Ok(self.0[self.1 - 1])
        }
    }

    #[test]
    fn labels_and_heuristic() {
        assert_eq!(data_label(&json!({"system": 2})), Ok(Some(System::S2)));
        assert_eq!(data_label(&json!({"system": "1"})), Ok(Some(System::S1)));
        assert_eq!(data_label(&json!({})), Ok(None));
        assert!(
            data_label(&json!({"system": 3}))
                .unwrap_err()
                .contains("1 or 2")
        );
        let asdiv = json!({"passage": "Seven red apples and two green apples are in the basket.",
            "question": "How many apples are in the basket?", "answer": "9 apples"});
        let (s, cues) = heuristic(&asdiv);
        assert_eq!(s, System::S2);
        assert_eq!(
            cues,
            ["numeric_answer", "quantity_question", "prompt_numbers"]
        );
        let alpaca = json!({"instruction": "Give three tips for staying healthy.", "input": "",
            "output": "1. Eat well.\n2. Sleep.\n3. Move."});
        assert_eq!(heuristic(&alpaca).0, System::S1);
        assert_eq!(
            prompt_text(&asdiv).unwrap(),
            "Seven red apples and two green apples are in the basket. How many apples are in the basket?"
        );
        let sft = sft_record(&asdiv).unwrap();
        assert_eq!(sft["messages"][1]["content"], "9 apples");
    }

    #[test]
    fn templates_parse() {
        let t = parse_templates("a {task}\n---\nb {task} {answer}\n").unwrap();
        assert_eq!(t, ["a {task}", "b {task} {answer}"]);
        assert!(parse_templates("no placeholder").is_err());
    }

    #[test]
    fn scripted_majority() {
        let templates: Vec<String> = DEFAULT_TEMPLATES.iter().map(|s| s.to_string()).collect();
        let mut v = [Scripted(vec![[0.6, 0.3], [0.2, 0.7], [0.1, 0.5]], 0)];
        let l = pollster::block_on(vote(&mut v, 3, &templates, &json!({"text": "x"}))).unwrap();
        assert_eq!(l.system, System::S2);
        assert_eq!(
            l.votes.iter().map(|x| x.system).collect::<Vec<_>>(),
            [System::S1, System::S2, System::S2]
        );
        let mut v = [Scripted(vec![], 0)];
        assert!(pollster::block_on(vote(&mut v, 2, &templates, &json!({}))).is_err());
    }
}
