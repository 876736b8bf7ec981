//! `wgtune export --format trl`: a run as a TRL + peft training script for a multi-GPU machine
//! (`accelerate launch train.py`). The script is one fixed body ([`SCRIPT_BODY`], wgtune's data
//! formatting, masks and reward in Python) under a generated settings block that holds every value
//! of the run as a Python literal, defaults resolved the way `wgtune train` resolves them. Pure
//! text generation: paths arrive already resolved, nothing here touches files.

use crate::adapters::Method;
use crate::par::ParSettings;
use crate::train::run::RunConfig;
use serde_json::{Value, json};

/// The part of `train.py` after the settings block (Python; also checked by the tests).
pub const SCRIPT_BODY: &str = include_str!("trl_train.py");

/// First line of the settings block; [`parse_settings`] reads from here to [`SETTINGS_END`].
pub const SETTINGS_BEGIN: &str = "# ---- wgtune run settings (begin) ----";
/// Last line of the settings block.
pub const SETTINGS_END: &str = "# ---- wgtune run settings (end) ----";

/// Name of the marker file every export writes; a folder holding it may be overwritten by the
/// next export.
pub const MARKER: &str = "wgtune-export.json";

/// Package versions the script was written and checked against (`requirements.txt`).
pub const REQUIREMENTS: [(&str, &str); 7] = [
    ("torch", "2.15.0"),
    ("transformers", "5.24.0"),
    ("peft", "0.21.2"),
    ("trl", "1.16.0"),
    ("accelerate", "1.15.0"),
    ("datasets", "5.2.0"),
    ("safetensors", "0.8.0"),
];

/// Where the script finds its inputs and writes its outputs (resolved by the front end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrlPaths {
    /// Base model: HF folder, hub id, or the folder of a GGUF file.
    pub model: String,
    /// The GGUF file inside `model`, when the base is a GGUF (transformers dequantizes it).
    pub gguf_file: Option<String>,
    /// Training data file.
    pub data: String,
    /// LoRA-PAR System-2 file.
    pub rl_data: Option<String>,
    /// peft folder to start from.
    pub init_adapter: Option<String>,
    /// LoRA-PAR: the wgtune run folder holding `par_split.jsonl` and the stage masks.
    pub par_dir: String,
    /// Where the script writes the adapter and its metrics.
    pub output_dir: String,
}

/// One setting of the block: Python name, value, comment.
type Setting = (&'static str, Value, &'static str);

/// A JSON value as a Python literal (strings, numbers, booleans, None, lists).
pub fn python_literal(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 1e15 => format!("{f:.1}"),
            _ => n.to_string(),
        },
        // A JSON string is a valid Python string literal except for `\/` (never produced) and
        // non-ASCII characters, which Python reads as they are.
        Value::String(_) => v.to_string(),
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(python_literal)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Object(_) => v.to_string(),
    }
}

/// Read a settings block back: `NAME = literal` lines between the markers, as JSON values.
/// Used by the tests and by anything that wants to check an export against its run.
pub fn parse_settings(script: &str) -> Result<serde_json::Map<String, Value>, String> {
    let start = script
        .find(SETTINGS_BEGIN)
        .ok_or("no settings block in the script")?;
    let end = script[start..]
        .find(SETTINGS_END)
        .ok_or("settings block not closed")?
        + start;
    let mut out = serde_json::Map::new();
    for line in script[start..end].lines().skip(1) {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, rest) = line
            .split_once(" = ")
            .ok_or_else(|| format!("not a setting: {line}"))?;
        // The comment is the first `#` outside a string literal.
        let (mut in_str, mut escaped, mut cut) = (false, false, rest.len());
        for (i, c) in rest.char_indices() {
            match (in_str, escaped, c) {
                (true, true, _) => escaped = false,
                (true, false, '\\') => escaped = true,
                (_, false, '"') => in_str = !in_str,
                (false, _, '#') => {
                    cut = i;
                    break;
                }
                _ => {}
            }
        }
        let literal = &rest[..cut];
        out.insert(name.to_string(), from_python(literal.trim())?);
    }
    Ok(out)
}

/// A Python literal written by [`python_literal`] back to JSON.
fn from_python(s: &str) -> Result<Value, String> {
    let mut json = String::with_capacity(s.len());
    let mut in_str = false;
    let mut escaped = false;
    let mut word = String::new();
    let flush = |word: &mut String, json: &mut String| {
        json.push_str(match word.as_str() {
            "True" => "true",
            "False" => "false",
            "None" => "null",
            w => w,
        });
        word.clear();
    };
    for c in s.chars() {
        if in_str {
            json.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_str = false,
                _ => {}
            }
        } else if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+' | '_') {
            word.push(c);
        } else {
            flush(&mut word, &mut json);
            if c == '"' {
                in_str = true;
            }
            json.push(c);
        }
    }
    flush(&mut word, &mut json);
    serde_json::from_str(&json).map_err(|e| format!("cannot read the literal {s}: {e}"))
}

/// The method's settings (defaults resolved), checked as `wgtune train` checks them.
fn settings(run: &RunConfig, p: &TrlPaths) -> Result<(Vec<Setting>, bool), String> {
    run.validate()?;
    let method = run.method.clone().unwrap_or_else(|| "lora".into());
    let adapter = run.adapter()?;
    let loftq = run.loftq_iters()?;
    let quantize = run.base_quantization();
    if let Some(q) = quantize.as_deref().filter(|q| *q != "nf4") {
        return Err(format!("unknown --quantize `{q}` (supported: nf4)"));
    }
    let train = run.train(0)?;
    if let Some(b) = run
        .on_bad_line
        .as_deref()
        .filter(|b| !["stop", "skip"].contains(b))
    {
        return Err(format!("unknown --on-bad-line `{b}` (stop, skip)"));
    }
    let is_par = matches!(method.as_str(), "lora-par" | "qlora-par");
    let mut s: Vec<Setting> = vec![
        (
            "METHOD",
            json!(method),
            "lora, qlora, oft, qoft, lora-par or qlora-par",
        ),
        (
            "MODEL",
            json!(p.model),
            "HF folder or hub id of the base model",
        ),
        (
            "MODEL_GGUF_FILE",
            json!(p.gguf_file),
            "GGUF file inside MODEL (transformers dequantizes it; needs `gguf`), or None",
        ),
        (
            "DATA",
            json!(p.data),
            "training data (jsonl or JSON array), formatted as wgtune formats it",
        ),
        (
            "OUTPUT_DIR",
            json!(p.output_dir),
            "where the peft adapter and metrics.jsonl go",
        ),
        (
            "QUANTIZE",
            json!(quantize),
            "\"nf4\": bitsandbytes 4-bit base (QLoRA / QOFT), or None",
        ),
        (
            "INIT",
            json!(if loftq.is_some() { "loftq" } else { "default" }),
            "adapter init: default (peft's) or loftq",
        ),
        (
            "LOFTQ_ITERS",
            json!(loftq.unwrap_or(1)),
            "LoftQ alternating rounds (init loftq)",
        ),
        (
            "INIT_ADAPTER",
            json!(p.init_adapter),
            "peft folder to continue from (its own settings win), or None",
        ),
        (
            "TARGET_MODULES",
            json!(adapter.target_modules),
            "projections that get an adapter",
        ),
    ];
    match &adapter.method {
        Method::Lora(l) => s.extend([
            ("R", json!(l.r), "LoRA rank"),
            (
                "LORA_ALPHA",
                json!(l.lora_alpha),
                "LoRA alpha (scale alpha / r, or alpha / sqrt(r) with rsLoRA)",
            ),
            (
                "LORA_DROPOUT",
                json!(l.lora_dropout),
                "dropout on the adapter input",
            ),
            ("USE_RSLORA", json!(l.use_rslora), "rsLoRA scaling"),
        ] as [Setting; 4]),
        Method::Oft(o) => s.extend([
            (
                "OFT_BLOCK_SIZE",
                json!(o.oft_block_size),
                "OFT block size b",
            ),
            (
                "USE_CAYLEY_NEUMANN",
                json!(o.use_cayley_neumann),
                "Cayley-Neumann series (False: exact Cayley)",
            ),
            (
                "NUM_CAYLEY_NEUMANN_TERMS",
                json!(o.num_cayley_neumann_terms),
                "terms of the series",
            ),
            ("COFT", json!(o.coft), "constrained OFT"),
            ("EPS", json!(o.eps), "COFT radius"),
            (
                "BLOCK_SHARE",
                json!(o.block_share),
                "one rotation shared by all blocks of a layer",
            ),
        ] as [Setting; 6]),
    }
    s.extend([
        (
            "STEPS",
            json!(run.steps),
            "optimizer steps, or None: EPOCHS passes over the data",
        ),
        (
            "EPOCHS",
            json!(run.epochs.unwrap_or(1)),
            "passes over the data when STEPS is None",
        ),
        ("LR", json!(train.lr), "peak learning rate"),
        (
            "LR_SCHEDULER",
            json!(run.lr_scheduler.as_deref().unwrap_or("constant")),
            "constant, linear or cosine (HF schedules with warm-up)",
        ),
        (
            "WARMUP_STEPS",
            json!(train.warmup_steps),
            "linear warm-up steps",
        ),
        (
            "MAX_GRAD_NORM",
            json!(train.max_grad_norm),
            "global gradient-norm clip (0: off)",
        ),
        (
            "WEIGHT_DECAY",
            json!(train.adamw.weight_decay),
            "AdamW decoupled weight decay",
        ),
        ("ADAM_BETA1", json!(train.adamw.beta1), "AdamW beta1"),
        ("ADAM_BETA2", json!(train.adamw.beta2), "AdamW beta2"),
        ("ADAM_EPSILON", json!(train.adamw.eps), "AdamW epsilon"),
        (
            "BATCH_SIZE",
            json!(run.batch_size.unwrap_or(4)),
            "examples per micro-batch",
        ),
        (
            "GRAD_ACCUM",
            json!(run.grad_accum.unwrap_or(1)),
            "micro-batches per optimizer step",
        ),
        (
            "MAX_SEQ_LEN",
            json!(run.max_seq_len.unwrap_or(512)),
            "examples are cut to this many tokens",
        ),
        (
            "PACKING",
            json!(run.packing.unwrap_or(false)),
            "greedy packing of examples into rows",
        ),
        (
            "SHUFFLE",
            json!(!run.no_shuffle.unwrap_or(false)),
            "seeded shuffling of the data order",
        ),
        (
            "EVAL_SPLIT",
            json!(run.eval_split.unwrap_or(0.0)),
            "fraction held out for eval loss",
        ),
        (
            "EVAL_EVERY",
            json!(run.eval_every.unwrap_or(0)),
            "eval every N steps (0: before and after training only)",
        ),
        (
            "SAVE_EVERY",
            json!(run.save_every.unwrap_or(0)),
            "checkpoint every N steps (0: only the final adapter)",
        ),
        (
            "SEED",
            json!(train.seed),
            "seed of init, shuffling, dropout",
        ),
        (
            "ON_BAD_LINE",
            json!(run.on_bad_line.as_deref().unwrap_or("stop")),
            "stop or skip a malformed data record",
        ),
    ] as [Setting; 20]);
    if is_par {
        let par = ParSettings::from_run(run)?;
        if run.init.as_deref().is_some_and(|i| i != "default") || run.init_adapter.is_some() {
            return Err("lora-par starts from its own init: drop --init / --init-adapter".into());
        }
        s.extend([
            (
                "RL_DATA",
                json!(p.rl_data),
                "System-2 file (every record of DATA is then System 1), or None",
            ),
            (
                "PAR_DIR",
                json!(p.par_dir),
                "wgtune run folder with par_split.jsonl and par_stage_masks.safetensors",
            ),
            (
                "PAR_THETA",
                json!(par.theta),
                "(informational: the masks in PAR_DIR were cut at this share)",
            ),
            (
                "PAR_ALPHA",
                json!(par.alpha),
                "shared fraction stage 1 updates (in the stage masks)",
            ),
            (
                "PAR_BETA",
                json!(par.beta),
                "shared fraction stage 2 updates (in the stage masks)",
            ),
            (
                "SFT_STEPS",
                json!(par.sft_steps),
                "stage-1 steps, or None: one epoch of System-1 data",
            ),
            (
                "RL_STEPS",
                json!(par.rl_steps),
                "stage-2 steps, or None: one pass over the System-2 prompts",
            ),
            ("SFT_LR", json!(par.sft_lr), "stage-1 learning rate"),
            ("RL_LR", json!(par.rl_lr), "stage-2 learning rate"),
            (
                "GRPO_GROUP",
                json!(par.grpo.group),
                "completions per prompt",
            ),
            (
                "GRPO_PROMPTS",
                json!(par.grpo.prompts_per_step),
                "prompts per optimizer step",
            ),
            (
                "GRPO_KL",
                json!(par.grpo.kl_beta),
                "KL coefficient to the stage-1 policy",
            ),
            (
                "GRPO_CLIP",
                json!(par.grpo.clip_eps),
                "clip range of the policy ratio",
            ),
            (
                "GRPO_TEMPERATURE",
                json!(par.grpo.temperature),
                "sampling temperature",
            ),
            (
                "GRPO_MAX_NEW_TOKENS",
                json!(par.grpo.max_new_tokens),
                "longest completion",
            ),
            (
                "GRPO_REWARD",
                json!(par.reward),
                "number, exact or regex:PATTERN",
            ),
            (
                "RL_EVAL",
                json!(par.rl_eval),
                "System-2 items held out for greedy accuracy",
            ),
        ] as [Setting; 17]);
    }
    Ok((s, is_par))
}

/// The files of an export of `run`: `train.py`, `requirements.txt`, `README.md` and the marker
/// [`MARKER`], as `(name, text)`. Settings errors are the messages `wgtune train` gives.
pub fn render(run: &RunConfig, paths: &TrlPaths) -> Result<Vec<(String, String)>, String> {
    let (settings, is_par) = settings(run, paths)?;
    let width = settings
        .iter()
        .map(|(n, v, _)| n.len() + 3 + python_literal(v).len())
        .filter(|w| *w <= 48)
        .max()
        .unwrap_or(0);
    let mut block = format!("{SETTINGS_BEGIN}\n");
    for (name, v, comment) in &settings {
        let line = format!("{name} = {}", python_literal(v));
        block.push_str(&format!("{line:width$}  # {comment}\n"));
    }
    block.push_str(&format!("IS_PAR = {}\n", python_literal(&json!(is_par))));
    block.push_str("# Not from the run: how this machine computes.\n");
    block.push_str("PRECISION = \"fp32\"  # fp32 as wgtune; bf16 is faster on recent GPUs (small numeric differences)\n");
    block.push_str(
        "GRADIENT_CHECKPOINTING = False  # True saves memory on long sequences (same result)\n",
    );
    block.push_str(SETTINGS_END);
    block.push('\n');
    let method = run.method.as_deref().unwrap_or("lora");
    let header = format!(
        "#!/usr/bin/env python3\n\"\"\"{method} run as a TRL + peft training script, written by `wgtune export --format trl` \
         (wgtune {}).\n\nRun: accelerate launch train.py   (or: python train.py on one device)\n\
         Differences from `wgtune train` are listed in README.md; edit the settings below, not the code.\n\"\"\"\n\n",
        env!("CARGO_PKG_VERSION")
    );
    let script = format!("{header}{block}{SCRIPT_BODY}");
    let mut req: Vec<String> = REQUIREMENTS
        .iter()
        .map(|(p, v)| format!("{p}=={v}"))
        .collect();
    if run.base_quantization().is_some() {
        req.push("bitsandbytes==0.50.2".into());
    }
    if paths.gguf_file.is_some() {
        req.push("gguf==0.18.0".into());
    }
    let readme = readme(method, is_par, paths, run.base_quantization().is_some());
    let marker = serde_json::to_string_pretty(&json!({
        "format": "trl",
        "wgtune": env!("CARGO_PKG_VERSION"),
        "files": ["train.py", "requirements.txt", "README.md"],
        "run": run,
    }))
    .map_err(|e| e.to_string())?;
    Ok(vec![
        ("train.py".into(), script),
        ("requirements.txt".into(), req.join("\n") + "\n"),
        ("README.md".into(), readme),
        (MARKER.into(), marker + "\n"),
    ])
}

fn readme(method: &str, is_par: bool, p: &TrlPaths, quantized: bool) -> String {
    let mut r = format!(
        "# `{method}` run for TRL + peft\n\nWritten by `wgtune export --format trl`. `train.py` holds the run's settings as \
         literals at the top (defaults resolved as `wgtune train` resolves them) and formats the data exactly as wgtune \
         does.\n\n```sh\npip install -r requirements.txt\naccelerate config          # once per machine\naccelerate launch train.py\n```\n\n\
         The adapter lands in `{}` as a standard peft folder; back on the laptop:\n\n```sh\nwgtune eval --model <base> --adapter {} --data <file>\n```\n\n\
         Paths in the settings block were absolute on the exporting machine: edit `MODEL`, `DATA` (and `RL_DATA`, \
         `PAR_DIR`) after copying. `MODEL` may also be a hub id.\n",
        p.output_dir, p.output_dir
    );
    if quantized {
        r.push_str(
            "\nThe NF4 base needs bitsandbytes with CUDA (a CPU run of a quantized base is not supported by this script).\n",
        );
    }
    if is_par {
        r.push_str(&format!(
            "\n## LoRA-PAR inputs\n\nThe System-1/2 split and the element masks come from wgtune, not from a re-implementation: \
             compute them once (importance pass only, no training) and copy the folder with the data:\n\n```sh\n\
             wgtune train --config run.toml --sft-steps 0 --rl-steps 0 --out {}\n```\n\n\
             `train.py` reads `par_split.jsonl` and `par_stage_masks.safetensors` from `PAR_DIR`, then runs stage 1 \
             (`SFTTrainer`) and stage 2 (`GRPOTrainer`) with the masks as gradient hooks.\n",
            p.par_dir
        ));
    }
    r.push_str(
        "\n## Known differences from `wgtune train`\n\n\
         - Random streams: the adapter init (unless `INIT_ADAPTER`), dropout masks, the data order, the eval-split choice \
           and GRPO samples come from torch / Python seeded with `SEED`, not from wgtune's generators. Counts \
           (eval examples, steps, rows per step) are the same.\n\
         - Epoch boundaries: wgtune draws examples as one stream over epochs; the HF data loader ends each epoch with a \
           short batch when the data does not divide.\n\
         - Multi-GPU: rows per optimizer step are kept (batch x accumulation is split over the processes), so the \
           schedule is the same; the loss is the token mean over the whole step in both.\n\
         - LoftQ: peft's `loftq_init` runs on CUDA; its NF4 rounding is bitsandbytes' GPU kernel (wgtune: the CPU \
           reference). The LoftQ base is saved as `base-loftq/` (dequantized Q, full precision) beside the adapter.\n\
         - GRPO: temperature 0 (greedy sampling) has no TRL equivalent; `regex:` rewards use Python `re` where wgtune \
           uses Oniguruma; prompts longer than `MAX_SEQ_LEN` are cut in tokens and passed to TRL as decoded text.\n\
         - LoRA-PAR: the held-out `RL_EVAL` items are a Python-seeded choice.\n",
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_round_trip() {
        for v in [
            json!(null),
            json!(true),
            json!(3),
            json!(2e-4),
            json!(16.0),
            json!("a \"b\" \\ c # d"),
            json!(["x # \"y\"", "z"]),
            json!(["q_proj", "v_proj"]),
        ] {
            assert_eq!(from_python(&python_literal(&v)).unwrap(), v, "{v}");
        }
        assert_eq!(python_literal(&json!(16.0)), "16.0");
        assert_eq!(python_literal(&json!(false)), "False");
        let script = format!(
            "x\n{SETTINGS_BEGIN}\nA = \"a # b\"  # say \"hi\"\nB = None  # \"nf4\" or None\n# note\n{SETTINGS_END}\n"
        );
        let s = parse_settings(&script).unwrap();
        assert_eq!(
            (s["A"].clone(), s["B"].clone()),
            (json!("a # b"), json!(null))
        );
    }
}
