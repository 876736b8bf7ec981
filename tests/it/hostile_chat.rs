//! A hostile chat template (an untrusted model file's `chat_template`) fails `wgtune generate
//! --chat` and data loading of `messages` records with one clean error line that names the limit
//! and the model file, under an address-space limit, instead of hanging or aborting on allocation.

use std::path::{Path, PathBuf};

use crate::common::{HOSTILE_AS_LIMIT, assert_clean_failure, fixture, wgtune_limited};

/// Nested loops: billions of steps, no growth.
const HANG: &str =
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x";

/// A string doubled 64 times (2^65 bytes if unbounded).
const DOUBLING: &str = "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}";

/// A copy of the qwen2 fixture (config, weights, tokenizer) whose tokenizer_config.json carries
/// `template` as its chat template; returns the temp dir, the model dir and the config's path.
fn hostile_model(template: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    let src = fixture("arch/qwen2");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let config = dir.join("tokenizer_config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    v["chat_template"] = template.into();
    std::fs::write(&config, v.to_string()).unwrap();
    (tmp, dir, config)
}

/// `wgtune generate --chat` on a model with `template`.
fn generate(dir: &Path) -> std::process::Output {
    wgtune_limited(
        &[
            "generate",
            "--backend",
            "cpu",
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            "hi",
            "--chat",
            "--max-new-tokens",
            "1",
        ],
        HOSTILE_AS_LIMIT,
    )
}

#[test]
fn hostile_template_fails_generate_cleanly() {
    for (what, template, limit) in [
        ("nested loops", HANG, "fuel limit exceeded"),
        ("doubling", DOUBLING, "value size limit exceeded"),
    ] {
        let (_tmp, dir, config) = hostile_model(template);
        let out = generate(&dir);
        assert_clean_failure(&out, what, &[limit, config.to_str().unwrap()]);
    }
}

#[test]
fn hostile_template_fails_data_loading_cleanly() {
    let (tmp, dir, config) = hostile_model(DOUBLING);
    let data = tmp.path().join("messages.jsonl");
    let record = serde_json::json!({"messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]});
    std::fs::write(&data, format!("{record}\n")).unwrap();
    let out_dir = tmp.path().join("out");
    let out = wgtune_limited(
        &[
            "train",
            "--no-gui",
            "--backend",
            "cpu",
            "--model",
            dir.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
            "--steps",
            "1",
        ],
        HOSTILE_AS_LIMIT,
    );
    assert_clean_failure(
        &out,
        "data loading",
        &[
            "value size limit exceeded",
            config.to_str().unwrap(),
            "messages.jsonl",
        ],
    );
}

/// As transformers' tokenizer loads it, a `chat_template.jinja` beside `tokenizer_config.json`
/// takes priority over the config's `chat_template` (here the hanging one, never run), and errors
/// name the .jinja file.
#[test]
fn chat_template_jinja_takes_priority() {
    let (_tmp, dir, _) = hostile_model(HANG);
    let jinja = dir.join("chat_template.jinja");
    std::fs::write(&jinja, DOUBLING).unwrap();
    assert_clean_failure(
        &generate(&dir),
        "doubling in chat_template.jinja",
        &["value size limit exceeded", jinja.to_str().unwrap()],
    );
    std::fs::write(&jinja, "{% for m in messages %}{{ m.content }}{% endfor %}").unwrap();
    let out = generate(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
