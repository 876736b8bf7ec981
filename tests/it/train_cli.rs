//! `wgtune train` end to end on the tiny fixture model (CPU backend): exact resume, a kill -9 in
//! the middle of a run, NaN handling, and bad settings or data reported clearly.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn wgtune(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgtune"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sixteen random rows of token ids for the tiny model.
fn data(dir: &Path) -> PathBuf {
    let path = dir.join("data.jsonl");
    std::fs::write(&path, token_id_rows(12345, [10; 16])).unwrap();
    path
}

/// A LoRA run (with dropout, shuffling and gradient accumulation, so resume must restore them all).
fn train_args<'a>(model: &'a str, data: &'a str, out: &'a str, steps: &'a str) -> Vec<&'a str> {
    let mut v = base_args(model, data, out, steps);
    v.extend([
        "--method",
        "lora",
        "--r",
        "4",
        "--lora-alpha",
        "8",
        "--lora-dropout",
        "0.1",
        "--lr",
        "0.01",
    ]);
    v
}

fn base_args<'a>(model: &'a str, data: &'a str, out: &'a str, steps: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--no-gui",
        "--backend",
        "cpu",
        "--model",
        model,
        "--data",
        data,
        "--out",
        out,
        "--steps",
        steps,
        "--batch-size",
        "2",
        "--grad-accum",
        "2",
        "--seed",
        "7",
    ]
}

fn adapter_bytes(out: &Path) -> Vec<u8> {
    std::fs::read(out.join("adapter_model.safetensors")).unwrap()
}

#[test]
fn resume_is_exact_and_survives_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("tiny_gqa");
    let (m, d) = (model.to_str().unwrap(), data(tmp.path()));
    let d = d.to_str().unwrap();
    let full = tmp.path().join("full");
    ok(&wgtune(&train_args(m, d, full.to_str().unwrap(), "10")));

    // 5 steps, then resume to 10 (constant lr: the horizon does not change the schedule).
    let split = tmp.path().join("split");
    let s = split.to_str().unwrap();
    ok(&wgtune(&train_args(m, d, s, "5")));
    let mut args = train_args(m, d, s, "10");
    args.push("--resume");
    ok(&wgtune(&args));
    assert_eq!(
        adapter_bytes(&full),
        adapter_bytes(&split),
        "5 + resume 5 differs from 10 straight"
    );
    let lines = std::fs::read_to_string(split.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 10);

    // kill -9 while checkpointing every step, then resume: same adapter as the uninterrupted run.
    let long = tmp.path().join("long");
    ok(&wgtune(
        &[
            train_args(m, d, long.to_str().unwrap(), "60"),
            vec!["--save-every", "1"],
        ]
        .concat(),
    ));
    let killed = tmp.path().join("killed");
    let k = killed.to_str().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_wgtune"))
        .args([train_args(m, d, k, "60"), vec!["--save-every", "1"]].concat())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ckpt = killed.join("checkpoint/trainer.safetensors");
    let t0 = std::time::Instant::now();
    while !ckpt.exists() && t0.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(std::time::Duration::from_millis(40));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let mut args = [train_args(m, d, k, "60"), vec!["--save-every", "1"]].concat();
    args.push("--resume");
    ok(&wgtune(&args));
    assert_eq!(
        adapter_bytes(&long),
        adapter_bytes(&killed),
        "resume after kill -9 differs"
    );
}

#[test]
fn nan_loss_stops_and_keeps_last_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("tiny_gqa");
    let d = data(tmp.path());
    let out = tmp.path().join("nan");
    let mut args = base_args(
        model.to_str().unwrap(),
        d.to_str().unwrap(),
        out.to_str().unwrap(),
        "20",
    );
    args.extend(["--lr", "1e30", "--max-grad-norm", "0", "--save-every", "1"]);
    let o = wgtune(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("non-finite") && err.contains("last good checkpoint"),
        "{err}"
    );
    assert!(!err.contains("panicked"));
    assert!(out.join("checkpoint/trainer.safetensors").exists());
}

#[test]
fn bad_settings_and_data_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("tiny_gqa");
    let (m, d) = (model.to_str().unwrap(), data(tmp.path()));
    let d = d.to_str().unwrap();
    let out = tmp.path().join("o");
    let o = out.to_str().unwrap();
    let fails = |extra: &[&str], data: &str, needle: &str| {
        let mut args = base_args(m, data, o, "2");
        args.extend(extra);
        let r = wgtune(&args);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "expected failure for {extra:?}");
        assert!(!err.contains("panicked"), "{err}");
        let line = err
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or_else(|| panic!("{err}"));
        assert!(line.contains(needle), "`{line}` should mention `{needle}`");
    };
    fails(&["--target-modules", "q_proj,qkv_proj"], d, "qkv_proj");
    fails(
        &["--method", "oft", "--oft-block-size", "30"],
        d,
        "does not divide in_features 64",
    );
    let empty = tmp.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    fails(&[], empty.to_str().unwrap(), "empty.jsonl");
    let bad = tmp.path().join("bad.jsonl");
    let good = std::fs::read_to_string(d).unwrap();
    std::fs::write(
        &bad,
        format!(
            "{}{{oops\n{good}",
            good.lines().next().unwrap().to_owned() + "\n"
        ),
    )
    .unwrap();
    fails(&[], bad.to_str().unwrap(), "bad.jsonl:2");
    let mut args = train_args(m, bad.to_str().unwrap(), o, "2");
    args.extend(["--on-bad-line", "skip"]);
    let r = wgtune(&args);
    ok(&r);
    assert!(String::from_utf8_lossy(&r.stderr).contains("bad.jsonl:2: skipped"));
    let cfg = tmp.path().join("run.toml");
    std::fs::write(&cfg, "learning_rate = 3\n").unwrap();
    fails(&["--config", cfg.to_str().unwrap()], d, "learning_rate");
}
