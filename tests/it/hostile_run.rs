//! Hostile-but-honest use of `wgtune train` (issue: hardening): out-of-range flags and run files,
//! settings that would allocate in proportion to an untrusted number, one run per output folder,
//! nothing in an existing run folder touched before the inputs validate, bad data lines, a full
//! disk while appending metrics, and a diverging run. Every run goes through the binary under an
//! address-space limit, so an allocation blow-up fails the test instead of the machine.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Output;

/// `wgtune train --no-gui --backend cpu` on the tiny model with `data`, into `out`, plus `extra`,
/// under the address-space limit.
fn train(data: &Path, out: &Path, extra: &[&str]) -> Output {
    let limit = Limit::AddressSpace(HOSTILE_AS_LIMIT);
    train_on(&fixture("tiny_gqa"), data, out, extra, limit)
}

/// `wgtune train --no-gui --backend cpu` on `model` with `data`, into `out`, plus `extra`, under
/// `limit`.
fn train_on(model: &Path, data: &Path, out: &Path, extra: &[&str], limit: Limit) -> Output {
    let mut args = vec![
        "train",
        "--no-gui",
        "--backend",
        "cpu",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    wgtune_with(&args, limit)
}

/// Sixteen rows of token ids for the tiny model, in `dir/data.jsonl`.
fn data(dir: &Path) -> PathBuf {
    let path = dir.join("data.jsonl");
    std::fs::write(&path, token_id_rows(99, [10; 16])).unwrap();
    path
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Case 1: a flag above i64::MAX is an error naming it (it used to drop every flag silently);
/// flags still win over the run file, `--out` included.
#[test]
fn flags_are_never_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let d = data(tmp.path());
    let file_out = tmp.path().join("from-file");
    let cfg = tmp.path().join("run.toml");
    std::fs::write(
        &cfg,
        format!("out = {:?}\nsteps = 50\n", file_out.to_str().unwrap()),
    )
    .unwrap();
    let flag_out = tmp.path().join("from-flags");
    let c = cfg.to_str().unwrap();
    let o = train(
        &d,
        &flag_out,
        &[
            "--config",
            c,
            "--steps",
            "2",
            "--save-every",
            "9223372036854775808",
        ],
    );
    assert_clean_failure(
        &o,
        "save-every > i64::MAX",
        &["save_every", "9223372036854775808"],
    );
    assert!(!file_out.exists() && !flag_out.join("metrics.jsonl").exists());
    ok(&train(
        &d,
        &flag_out,
        &["--config", c, "--steps", "2", "--save-every", "99999999"],
    ));
    assert!(!file_out.exists(), "the run file's `out` was used");
    // A bad value in the run file names the file.
    std::fs::write(&cfg, "eval_split = 2.0\n").unwrap();
    let o = train(&d, &flag_out, &["--config", c]);
    assert_clean_failure(&o, "bad run file", &["run.toml", "eval_split"]);
    let metrics = std::fs::read_to_string(flag_out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2, "--steps 2 over the file's 50");
}

/// Cases 4, 5 and 7: every out-of-range setting is one error line naming the setting, before
/// anything is allocated or written; sizes the data cannot fill are cut to the data.
#[test]
fn settings_are_checked_before_use() {
    let tmp = tempfile::tempdir().unwrap();
    let d = data(tmp.path());
    let out = tmp.path().join("o");
    let cases: &[(&[&str], &[&str])] = &[
        (&["--batch-size", "100000000"], &["batch_size", "100000000"]),
        (&["--grad-accum", "100000000"], &["grad_accum"]),
        (&["--r", "100000"], &["`r`", "100000"]),
        (&["--r", "1000"], &["r 1000", "exceeds"]),
        (
            &["--method", "oft", "--cayley-neumann-terms", "100000"],
            &["cayley_neumann_terms"],
        ),
        (
            &["--method", "oft", "--cayley-neumann-terms", "0"],
            &["cayley_neumann_terms", "0"],
        ),
        (
            &["--method", "oft", "--cayley-neumann-terms", "1"],
            &["cayley_neumann_terms", "1"],
        ),
        (&["--eval-split", "1.5"], &["eval_split", "1.5"]),
        (&["--eval-split", "nan"], &["eval_split", "NaN"]),
        (&["--batch-size", "0"], &["batch_size", "0"]),
        (&["--grad-accum", "0"], &["grad_accum", "0"]),
        (&["--max-grad-norm=-1"], &["max_grad_norm", "-1"]),
        (&["--weight-decay=-0.1"], &["weight_decay"]),
        (&["--weight-decay", "nan"], &["weight_decay", "NaN"]),
        (&["--lora-alpha", "0"], &["lora_alpha", "0"]),
        (&["--method", "oft", "--eps", "nan"], &["eps", "NaN"]),
        (&["--lr", "inf"], &["lr", "inf"]),
        (&["--max-seq-len", "1"], &["max_seq_len"]),
    ];
    for (extra, needles) in cases {
        let mut args = vec!["--steps", "1"];
        args.extend_from_slice(extra);
        let o = train(&d, &out, &args);
        assert_clean_failure(&o, &format!("{extra:?}"), needles);
        assert!(
            !out.join("metrics.jsonl").exists(),
            "{extra:?} wrote metrics"
        );
    }
    // Larger than the data: cut to the 16 rows, with a note, and the run goes on.
    let o = train(
        &d,
        &out,
        &[
            "--steps",
            "1",
            "--batch-size",
            "1000",
            "--grad-accum",
            "1000",
        ],
    );
    ok(&o);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("batch 1000 x 1000 cut to 16 x 1"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Case 6: one run per folder (the second is refused with the holder's pid), and a failing run
/// into an existing folder leaves its files as they were.
#[test]
fn one_run_per_folder_and_nothing_touched_before_validation() {
    let tmp = tempfile::tempdir().unwrap();
    let d = data(tmp.path());
    let out = tmp.path().join("run");
    ok(&train(&d, &out, &["--steps", "2"]));
    let before: Vec<(PathBuf, Vec<u8>)> =
        ["metrics.jsonl", "run.toml", "adapter_model.safetensors"]
            .iter()
            .map(|f| (out.join(f), std::fs::read(out.join(f)).unwrap()))
            .collect();
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"input_ids\": [1, 2, 300]}\n").unwrap();
    let o = train(&bad, &out, &["--steps", "2"]);
    assert_clean_failure(&o, "bad data into an existing run", &["bad.jsonl:1", "300"]);
    for (path, bytes) in &before {
        assert_eq!(
            &std::fs::read(path).unwrap(),
            bytes,
            "{} changed",
            path.display()
        );
    }
    // A run holding the folder: a second one is refused and names the holder.
    let model = fixture("tiny_gqa");
    let mut holder = std::process::Command::new(env!("CARGO_BIN_EXE_wgtune"))
        .args(["train", "--no-gui", "--backend", "cpu", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(&d)
        .arg("--out")
        .arg(&out)
        .args(["--steps", "100000000", "--batch-size", "16"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lock = out.join(".wgtune.lock");
    let pid = holder.id().to_string();
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&lock).unwrap_or_default() != pid {
        assert!(
            t0.elapsed().as_secs() < 120,
            "the first run never took the lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let o = train(&d, &out, &["--steps", "1"]);
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_clean_failure(
        &o,
        "second run",
        &["another wgtune run", &format!("pid {pid}")],
    );
    // kill -9 released the lock: the next run goes ahead.
    ok(&train(&d, &out, &["--steps", "1"]));
}

/// Case 8: data problems name file and line before the model is trained on, `--on-bad-line skip`
/// applies to them, and whole-file problems name the file without a `:0`.
#[test]
fn data_problems_name_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let good = token_id_rows(5, [10; 4]);
    let file = tmp.path().join("d.jsonl");
    let write = |bytes: &[u8]| std::fs::write(&file, bytes).unwrap();
    // Out-of-vocab id and bad label, each on its line; skip leaves the good rows.
    write(format!("{good}{{\"input_ids\": [1, 256]}}\n{{\"input_ids\": [1, 2], \"labels\": [-100, 999]}}\n").as_bytes());
    assert_clean_failure(
        &train(&file, &out, &["--steps", "1"]),
        "oov",
        &["d.jsonl:5", "256", "vocabulary"],
    );
    let o = train(&file, &out, &["--steps", "1", "--on-bad-line", "skip"]);
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("d.jsonl:5: skipped") && err.contains("d.jsonl:6: skipped"),
        "{err}"
    );
    // A line that is not UTF-8: named, or skipped.
    let mut bytes = good.clone().into_bytes();
    bytes.extend(b"{\"input_ids\": [1, 2]} \xff\n");
    write(&bytes);
    assert_clean_failure(
        &train(&file, &out, &["--steps", "1"]),
        "utf-8",
        &["d.jsonl:5", "UTF-8"],
    );
    ok(&train(
        &file,
        &out,
        &["--steps", "1", "--on-bad-line", "skip"],
    ));
    // A folder as --data, and an empty file.
    assert_clean_failure(&train(tmp.path(), &out, &[]), "folder", &["is a folder"]);
    write(b"");
    let line = assert_clean_failure(&train(&file, &out, &[]), "empty", &["d.jsonl: "]);
    assert!(!line.contains(":0"), "{line}");
}

/// Case 4: a 50 MB data line costs memory bounded by what `max_seq_len` can use, not 230 bytes
/// per input byte (the run is under the 3 GiB address-space limit).
#[test]
fn a_huge_data_line_is_cut_before_tokenizing() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("arch/qwen2");
    let file = tmp.path().join("big.jsonl");
    let words = "lorem ipsum dolor sit amet ".repeat(50 << 20 >> 5);
    std::fs::write(&file, format!("{{\"text\": \"{words}\"}}\n")).unwrap();
    let out = tmp.path().join("o");
    let o = train_on(
        &model,
        &file,
        &out,
        &["--steps", "1", "--max-seq-len", "32"],
        Limit::AddressSpace(HOSTILE_AS_LIMIT),
    );
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("truncated to 32 tokens"));
}

/// A full disk while appending metrics (simulated with RLIMIT_FSIZE): the error names the file,
/// the trained state is kept in the checkpoint, and metrics.jsonl ends in a whole line.
#[test]
fn full_disk_keeps_the_trained_state() {
    let tmp = tempfile::tempdir().unwrap();
    let d = data(tmp.path());
    let out = tmp.path().join("o");
    // Every file this run writes stays under 64 KiB except metrics.jsonl, which passes it after a
    // few hundred steps.
    let o = train_on(
        &fixture("tiny_gqa"),
        &d,
        &out,
        &[
            "--steps",
            "5000",
            "--batch-size",
            "1",
            "--r",
            "1",
            "--target-modules",
            "q_proj",
        ],
        Limit::FileSize(64 << 10),
    );
    let line = assert_clean_failure(
        &o,
        "full disk",
        &["metrics.jsonl", "cannot append", "kept in"],
    );
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert!(metrics.ends_with('\n'), "torn last line");
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    let step = last["step"].as_u64().unwrap() + 1;
    assert!(line.contains(&format!("(step {step})")), "{line}");
    let ckpt = read_tensors(&out.join("checkpoint/trainer.safetensors"));
    assert!(!ckpt.f32.is_empty());
}

/// A diverging run (`--lr 1e30`): the checkpoint named as the last good one exists and holds
/// only finite values, or the message says there is none.
#[test]
fn last_good_checkpoint_is_finite() {
    let tmp = tempfile::tempdir().unwrap();
    let d = data(tmp.path());
    let out = tmp.path().join("nan");
    let o = train(
        &d,
        &out,
        &[
            "--steps",
            "20",
            "--lr",
            "1e30",
            "--max-grad-norm",
            "0",
            "--save-every",
            "1",
        ],
    );
    let line = assert_clean_failure(&o, "lr 1e30", &["non-finite"]);
    let ckpt = out.join("checkpoint/trainer.safetensors");
    if line.contains("last good checkpoint") {
        assert!(line.contains(ckpt.to_str().unwrap()), "{line}");
        let t = read_tensors(&ckpt);
        assert!(t.f32.values().all(|(_, v)| v.iter().all(|x| x.is_finite())));
    } else {
        assert!(line.contains("No checkpoint was written"), "{line}");
    }
}

/// Seeded random mutations of data lines in every record format (byte flips, JSON-significant
/// bytes, splices, truncations, huge numbers), tokenized with a real tokenizer and chat template:
/// every line either becomes an example or is reported against its line, never a panic.
#[test]
fn mutated_data_lines_never_panic() {
    use wgtune::app::files::DirSource;
    use wgtune::model::loader::{ModelSource, read_model};
    use wgtune::train::data::{BadLine, DataOptions, Tokenize, load_examples_with};
    let dir = DirSource::new(fixture("arch/qwen2"));
    let files = read_model(ModelSource::HfFolder(&dir)).unwrap();
    let tok = Tokenize {
        tokenizer: files.tokenizer.as_ref().unwrap(),
        chat_template: files.chat_template.as_ref(),
    };
    let seeds = [
        r#"{"input_ids": [1, 2, 3, 4], "labels": [-100, 2, 3, 4]}"#,
        r#"{"text": "The quick brown fox jumps over the lazy dog."}"#,
        r#"{"prompt": "What is 2+2?", "completion": " 4"}"#,
        r#"{"instruction": "Add the numbers.", "input": "3 and 5", "output": "8"}"#,
        r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}"#,
        r#"{"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Yo"}]}"#,
    ];
    let inserts: [&[u8]; 10] = [
        b"\"",
        b"{",
        b"]",
        b"\\u0000",
        b"99999999999999999999",
        b"-1",
        b"null",
        b"\xff",
        b"\\",
        b"\n",
    ];
    let opts = DataOptions {
        max_seq_len: 64,
        on_bad_line: BadLine::Skip,
        vocab_size: Some(files.config.vocab_size),
    };
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut next = |n: usize| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((x >> 33) as usize) % n.max(1)
    };
    for case in 0..20_000 {
        let mut line = seeds[case % seeds.len()].as_bytes().to_vec();
        for _ in 0..1 + next(3) {
            let at = next(line.len() + 1);
            match next(4) {
                0 if !line.is_empty() => {
                    let i = at.min(line.len() - 1);
                    line[i] ^= 1 << next(8);
                }
                1 => line
                    .splice(at..at, inserts[next(inserts.len())].iter().copied())
                    .for_each(drop),
                2 => line.truncate(at),
                _ => {
                    let from = next(line.len() + 1);
                    let piece = line[from..].to_vec();
                    line.splice(at..at, piece).for_each(drop);
                }
            }
        }
        let text = String::from_utf8_lossy(&line).into_owned();
        let result = std::panic::catch_unwind(|| {
            load_examples_with(
                &format!("{}\n{text}\n", seeds[0]),
                "fuzz.jsonl",
                Some(&tok),
                &opts,
            )
        });
        let Ok(result) = result else {
            panic!("case {case}: panic on line {text:?}");
        };
        // The intact first line always survives, so the file as a whole never fails.
        let (examples, report) = result.unwrap_or_else(|e| panic!("case {case}: {e} for {text:?}"));
        let lines = text.lines().count() + 1;
        assert!(report.skipped.iter().all(|(l, _)| *l <= lines), "{text:?}");
        assert!(examples.iter().all(|e| e.input_ids.len() <= 64));
        assert!(examples.len() + report.skipped.len() + report.dropped_unscored <= lines + 1);
    }
}
