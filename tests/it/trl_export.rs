//! `export --format trl`: the script's settings block carries each method's run values; bad input
//! is refused with nothing written; and what TRL made of the exported scripts on the CPU
//! (tests/fixtures/gen_trl.py) matches wgtune: same formatted examples, same 2-step losses, an
//! adapter with wgtune's keys and shapes, LoRA-PAR masks honoured. One test runs the exported
//! script live when a Python with torch + trl + peft is at hand, and says so when it skips.

use crate::common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use wgtune::adapters::named_parameters;
use wgtune::app::files::DirSource;
use wgtune::io::peft::load_adapter;
use wgtune::io::trl_script::{MARKER, parse_settings};
use wgtune::train::data::{DataOptions, Tokenize, load_examples_with};

fn wgtune(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wgtune"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

/// Export `run_text` (a run file's TOML) to `dir/export`; the settings block and the folder.
fn export(dir: &Path, run_text: &str) -> (serde_json::Map<String, Value>, PathBuf) {
    let run = dir.join("run.toml");
    std::fs::write(&run, run_text).unwrap();
    let out = dir.join("export");
    let o = wgtune(&[
        "export",
        "--run",
        run.to_str().unwrap(),
        "--format",
        "trl",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let script = std::fs::read_to_string(out.join("train.py")).unwrap();
    (parse_settings(&script).unwrap(), out)
}

fn demo(name: &str) -> String {
    std::fs::read_to_string(root().join("assets").join(name)).unwrap()
}

/// Every key of `run` (TOML) that has a script setting carries the same value.
fn check_values(settings: &serde_json::Map<String, Value>, run: &str) {
    let run: toml::Table = toml::from_str(run).unwrap();
    let names = [
        ("r", "R"),
        ("lora_alpha", "LORA_ALPHA"),
        ("lora_dropout", "LORA_DROPOUT"),
        ("use_rslora", "USE_RSLORA"),
        ("oft_block_size", "OFT_BLOCK_SIZE"),
        ("cayley_neumann_terms", "NUM_CAYLEY_NEUMANN_TERMS"),
        ("coft", "COFT"),
        ("eps", "EPS"),
        ("block_share", "BLOCK_SHARE"),
        ("loftq_iters", "LOFTQ_ITERS"),
        ("steps", "STEPS"),
        ("epochs", "EPOCHS"),
        ("lr", "LR"),
        ("lr_scheduler", "LR_SCHEDULER"),
        ("warmup_steps", "WARMUP_STEPS"),
        ("max_grad_norm", "MAX_GRAD_NORM"),
        ("weight_decay", "WEIGHT_DECAY"),
        ("batch_size", "BATCH_SIZE"),
        ("grad_accum", "GRAD_ACCUM"),
        ("max_seq_len", "MAX_SEQ_LEN"),
        ("packing", "PACKING"),
        ("eval_split", "EVAL_SPLIT"),
        ("eval_every", "EVAL_EVERY"),
        ("save_every", "SAVE_EVERY"),
        ("seed", "SEED"),
        ("par_theta", "PAR_THETA"),
        ("par_alpha", "PAR_ALPHA"),
        ("par_beta", "PAR_BETA"),
        ("sft_steps", "SFT_STEPS"),
        ("rl_steps", "RL_STEPS"),
        ("sft_lr", "SFT_LR"),
        ("rl_lr", "RL_LR"),
        ("grpo_group", "GRPO_GROUP"),
        ("grpo_prompts", "GRPO_PROMPTS"),
        ("grpo_kl", "GRPO_KL"),
        ("grpo_clip", "GRPO_CLIP"),
        ("grpo_temperature", "GRPO_TEMPERATURE"),
        ("grpo_max_new_tokens", "GRPO_MAX_NEW_TOKENS"),
        ("grpo_reward", "GRPO_REWARD"),
        ("rl_eval", "RL_EVAL"),
        ("method", "METHOD"),
    ];
    let mut checked = 0;
    for (key, name) in names {
        let Some(want) = run.get(key) else { continue };
        let got = settings
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing for run key {key}"));
        let same = match want {
            toml::Value::Integer(i) => got.as_f64() == Some(*i as f64),
            toml::Value::Float(f) => got
                .as_f64()
                .is_some_and(|g| (g - f).abs() <= 1e-7 * f.abs()),
            toml::Value::Boolean(b) => got.as_bool() == Some(*b),
            toml::Value::String(s) => got.as_str() == Some(s.as_str()),
            other => panic!("unexpected run value {other}"),
        };
        assert!(same, "{key} = {want} but {name} = {got}");
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} values checked");
    if let Some(t) = run.get("target_modules").and_then(|t| t.as_str()) {
        let want: Vec<&str> = t.split(',').map(str::trim).collect();
        let got: Vec<&str> = settings["TARGET_MODULES"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(got, want);
    }
    if let Some(n) = run.get("no_shuffle").and_then(|v| v.as_bool()) {
        assert_eq!(settings["SHUFFLE"], Value::Bool(!n));
    }
}

#[test]
fn every_method_exports_its_run_values() {
    let tmp = tempfile::tempdir().unwrap();
    let base = "model = \"m\"\ndata = \"d.jsonl\"\nout = \"runs/x\"\n";
    let cases: Vec<(&str, String)> = vec![
        ("lora", demo("demo-lora.toml")),
        ("qlora", demo("demo-gemma3.toml")),
        ("oft", demo("demo-oft.toml")),
        ("lora-par", demo("demo-lora-par.toml")),
        (
            "loftq",
            format!(
                "{base}method = \"qlora\"\ninit = \"loftq\"\nloftq_iters = 3\nr = 16\nlora_alpha = 32\nuse_rslora = true\nlora_dropout = 0.05\nweight_decay = 0.01\n"
            ),
        ),
        (
            "qoft",
            format!(
                "{base}method = \"qoft\"\noft_block_size = 16\ncayley_neumann_terms = 7\ncoft = true\neps = 0.0001\nblock_share = true\nlr_scheduler = \"linear\"\nepochs = 3\npacking = true\nno_shuffle = true\n"
            ),
        ),
        (
            "qlora-par",
            format!(
                "{base}method = \"qlora-par\"\nrl_data = \"s2.jsonl\"\npar_alpha = 0.5\npar_beta = 0.25\ngrpo_group = 4\ngrpo_prompts = 2\ngrpo_clip = 0.3\ngrpo_reward = \"regex:[0-9]+\"\nrl_eval = 3\n"
            ),
        ),
    ];
    for (what, text) in cases {
        let dir = tmp.path().join(what);
        std::fs::create_dir_all(&dir).unwrap();
        let (s, out) = export(&dir, &text);
        check_values(&s, &text);
        let req = std::fs::read_to_string(out.join("requirements.txt")).unwrap();
        assert!(
            req.contains("trl==1.16.0") && req.contains("peft==0.21.2"),
            "{req}"
        );
        let quantized = what.starts_with('q') || what == "loftq";
        assert_eq!(req.contains("bitsandbytes"), quantized, "{what}: {req}");
        assert_eq!(
            s["QUANTIZE"],
            if quantized {
                Value::from("nf4")
            } else {
                Value::Null
            },
            "{what}"
        );
        assert_eq!(s["IS_PAR"], Value::Bool(what.ends_with("par")), "{what}");
        assert!(out.join(MARKER).is_file() && out.join("README.md").is_file());
        // Defaults are resolved as `wgtune train` resolves them, and paths are absolute.
        assert!(
            Path::new(s["DATA"].as_str().unwrap()).is_absolute(),
            "{what}"
        );
        assert_eq!(s["ADAM_BETA2"], Value::from(0.999));
        match what {
            "loftq" => assert_eq!(s["INIT"], Value::from("loftq")),
            "lora" => {
                assert_eq!(s["MODEL_GGUF_FILE"], "SmolLM2-135M-Instruct.Q4_1.gguf");
                assert!(req.contains("gguf=="), "{req}");
            }
            "qoft" => assert_eq!(s["USE_CAYLEY_NEUMANN"], Value::Bool(true)),
            "qlora-par" => {
                assert_eq!(s["SFT_LR"], Value::from(2e-4));
                assert_eq!(s["RL_LR"], Value::from(5e-6));
                assert!(s["OUTPUT_DIR"].as_str().unwrap().ends_with("runs/x-trl"));
                assert!(s["PAR_DIR"].as_str().unwrap().ends_with("runs/x"));
            }
            _ => {}
        }
    }
}

#[test]
fn bad_input_is_refused_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let run = |text: &str| {
        let p = tmp.path().join("run.toml");
        std::fs::write(&p, text).unwrap();
        wgtune(&[
            "export",
            "--run",
            p.to_str().unwrap(),
            "--format",
            "trl",
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let ok = "model = \"m\"\ndata = \"d\"\nout = \"o\"\n";
    for (text, needles) in [
        ("learning_rate = 1\n", vec!["run.toml", "learning_rate"]),
        (
            &format!("{ok}lr = -1\n") as &str,
            vec!["run.toml", "`lr` (--lr) -1 must be a positive number"],
        ),
        (
            &format!("{ok}method = \"dora\"\n"),
            vec!["unknown method `dora`"],
        ),
        (&format!("{ok}target_modules = \"qkv\"\n"), vec!["qkv"]),
        (
            &format!("{ok}on_bad_line = \"ignore\"\n"),
            vec!["--on-bad-line"],
        ),
        (
            &format!("{ok}lr_scheduler = \"step\"\n"),
            vec!["lr scheduler"],
        ),
        (
            &format!("{ok}method = \"oft\"\ninit = \"loftq\"\n"),
            vec!["init loftq"],
        ),
        (
            &format!("{ok}method = \"lora-par\"\ngrpo_reward = \"fuzzy\"\n"),
            vec!["fuzzy"],
        ),
        ("data = \"d\"\nout = \"o\"\n", vec!["`model` is required"]),
    ] {
        let o = run(text);
        assert_clean_failure(&o, text, &needles);
        assert!(!out.exists(), "{text}: something was written");
    }
    // The run file itself missing.
    let o = wgtune(&[
        "export",
        "--run",
        "/nonexistent/run.toml",
        "--format",
        "trl",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_clean_failure(&o, "missing run", &["/nonexistent/run.toml"]);
    // Wrong flag combinations are clap errors naming the flag.
    let o = wgtune(&["export", "--format", "trl", "--out", "x"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--run"));
    let o = wgtune(&[
        "export", "--format", "gguf", "--run", "r.toml", "--out", "x",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--adapter"));
    let o = wgtune(&[
        "export",
        "--format",
        "trl",
        "--run",
        "r.toml",
        "--adapter",
        "a",
        "--out",
        "x",
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot be used with"));

    // A non-empty folder that is not an export is refused (and left alone) unless --force.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let o = run(ok);
    assert_clean_failure(&o, "non-empty", &["not empty", "--force"]);
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "mine"
    );
    // A previous export is replaced as a whole; so is anything with --force.
    std::fs::remove_dir_all(&out).unwrap();
    assert!(run(ok).status.success());
    let first = std::fs::read_to_string(out.join("train.py")).unwrap();
    assert!(run(&format!("{ok}r = 32\n")).status.success());
    let second = std::fs::read_to_string(out.join("train.py")).unwrap();
    assert_ne!(first, second);
    assert_eq!(parse_settings(&second).unwrap()["R"], Value::from(32));
    std::fs::write(out.join(MARKER), "").unwrap();
    std::fs::remove_file(out.join(MARKER)).unwrap();
    let p = tmp.path().join("run.toml");
    let o = wgtune(&[
        "export",
        "--run",
        p.to_str().unwrap(),
        "--format",
        "trl",
        "--out",
        out.to_str().unwrap(),
        "--force",
    ]);
    assert!(o.status.success());
    // No temp or backup folders left beside the target.
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Per-step losses of a wgtune run's metrics.jsonl (or a TRL run's, lines with `loss`).
fn losses(metrics: &Path) -> Vec<f64> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter_map(|v| v["loss"].as_f64())
        .collect()
}

/// `wgtune train` on the fixture's LoRA run; its 2 losses.
fn wgtune_lora_losses(dir: &Path) -> Vec<f64> {
    let out = dir.join("wg");
    let o = wgtune(&[
        "train",
        "--config",
        "tests/fixtures/trl/lora.toml",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    losses(&out.join("metrics.jsonl"))
}

/// Adapter keys and shapes after loading `adapter` onto the fixture model.
fn adapter_keys(adapter: &Path) -> Vec<(String, Vec<usize>)> {
    let dev = device("cpu");
    let mut lm = load_hf(&fixture("trl/model"), &dev);
    load_adapter(&DirSource::new(adapter), &mut lm.model).unwrap_or_else(|e| panic!("{e}"));
    named_parameters(&lm.model)
        .into_iter()
        .map(|(k, t)| (k, t.dims().to_vec()))
        .collect()
}

#[test]
fn trl_lora_run_matches_wgtune() {
    let want: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("trl/lora_trl.json")).unwrap())
            .unwrap();
    // 1. The script formats the data exactly as wgtune does (ids and labels, after truncation
    //    and the drop of unscored rows).
    let dev = device("cpu");
    let lm = load_hf(&fixture("trl/model"), &dev);
    let tok = Tokenize {
        tokenizer: lm.tokenizer.as_ref().unwrap(),
        chat_template: lm.chat_template.as_ref(),
    };
    assert!(lm.chat_template.is_some());
    let text = std::fs::read_to_string(fixture("trl/data.jsonl")).unwrap();
    let opts = DataOptions {
        max_seq_len: 48,
        vocab_size: Some(lm.model.config.vocab_size),
        ..DataOptions::default()
    };
    let (examples, report) = load_examples_with(&text, "data.jsonl", Some(&tok), &opts).unwrap();
    assert!(
        report.truncated > 0 && report.dropped_unscored > 0,
        "{report:?}"
    );
    let py = want["examples"].as_array().unwrap();
    assert_eq!(py.len(), examples.len());
    for (e, p) in examples.iter().zip(py) {
        let ids: Vec<u32> = serde_json::from_value(p["input_ids"].clone()).unwrap();
        let labels: Vec<i64> = serde_json::from_value(p["labels"].clone()).unwrap();
        assert_eq!((&e.input_ids, &e.labels), (&ids, &labels));
    }
    // 2. Same two steps (same start: the run's init_adapter; all rows in one batch).
    let tmp = tempfile::tempdir().unwrap();
    let ours = wgtune_lora_losses(tmp.path());
    let theirs: Vec<f64> = want["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["loss"].as_f64().unwrap())
        .collect();
    assert_eq!(ours.len(), 2);
    for (a, b) in ours.iter().zip(&theirs) {
        assert!((a - b).abs() < 1e-4, "wgtune {ours:?} vs TRL {theirs:?}");
    }
    // 3. TRL's adapter loads here with the keys and shapes of wgtune's own for the run.
    assert_eq!(
        adapter_keys(&fixture("trl/lora_adapter")),
        adapter_keys(&tmp.path().join("wg"))
    );
}

#[test]
fn trl_lora_par_adapter_loads_and_keeps_masked_elements() {
    let keys = adapter_keys(&fixture("trl/par_adapter"));
    assert_eq!(keys.len(), 28);
    let masks = read_tensors(&fixture("trl/par_stage_masks.safetensors"));
    let weights = read_tensors(&fixture("trl/par_adapter/adapter_model.safetensors"));
    let (mut frozen, mut trained) = (0, 0);
    for (k, shape) in &keys {
        let (mshape, codes) = &masks.u8[k];
        assert_eq!(mshape, shape, "{k}");
        if !k.contains("lora_B") {
            continue;
        }
        // B starts at 0 (peft's init): an element stage 1 may not update stays exactly 0 (stage
        // 2's GRPO step had zero advantages: every reward in its group was equal).
        let (_, w) = &weights.f32[k];
        for (c, x) in codes.iter().zip(w) {
            if *c & 1 == 0 {
                assert_eq!(*x, 0.0, "{k}");
                frozen += 1;
            } else if *x != 0.0 {
                trained += 1;
            }
        }
    }
    assert!(
        frozen > 0 && trained > 0,
        "{frozen} frozen, {trained} trained"
    );
}

/// A Python with torch, transformers, peft and trl: `WGTUNE_TRL_PYTHON`, else the reference
/// venv; `None` (with the reason) when there is none.
fn trl_python() -> Result<PathBuf, String> {
    let py = std::env::var_os("WGTUNE_TRL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/refenv/bin/python"));
    if !py.exists() {
        return Err(format!(
            "{} not found (set WGTUNE_TRL_PYTHON)",
            py.display()
        ));
    }
    let o = Command::new(&py)
        .args([
            "-c",
            "import torch, transformers, peft, trl, accelerate, datasets",
        ])
        .output()
        .map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(format!(
            "{}: {}",
            py.display(),
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ));
    }
    Ok(py)
}

#[test]
fn exported_script_runs_two_steps_on_the_cpu() {
    let py = match trl_python() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIPPED exported_script_runs_two_steps_on_the_cpu: no torch + trl ({why})");
            return;
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let export = tmp.path().join("export");
    let o = wgtune(&[
        "export",
        "--run",
        "tests/fixtures/trl/lora.toml",
        "--format",
        "trl",
        "--out",
        export.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = tmp.path().join("trl-out");
    let o = Command::new(&py)
        .arg(export.join("train.py"))
        .current_dir(root())
        .env("WGTUNE_TRL_OUT", &out)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let theirs = losses(&out.join("metrics.jsonl"));
    let ours = wgtune_lora_losses(tmp.path());
    eprintln!("losses: TRL {theirs:?}, wgtune {ours:?}");
    assert_eq!(theirs.len(), 2);
    for (a, b) in ours.iter().zip(&theirs) {
        assert!((a - b).abs() < 1e-4, "wgtune {ours:?} vs TRL {theirs:?}");
    }
    assert_eq!(adapter_keys(&out), adapter_keys(&tmp.path().join("wg")));
}
