//! Bad input through the real binary: each case must exit non-zero with one `error:` line naming
//! the file and the problem, and never panic.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Run `wgtune args…`; return (exit code, stderr).
fn wgtune(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wgtune"))
        .args(args)
        .env("CUBECL_AUTOTUNE_LEVEL", "minimal")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `wgtune eval --backend cpu --model MODEL --data DATA extra…`.
fn eval_args<'a>(model: &'a str, data: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["eval", "--backend", "cpu", "--model", model, "--data", data];
    v.extend_from_slice(extra);
    v
}

/// Assert a clean failure whose error line contains every `needle`.
fn assert_fails(args: &[&str], needles: &[&str]) {
    let (code, err) = wgtune(args);
    assert_ne!(code, 0, "expected failure for {args:?}");
    assert!(!err.contains("panicked"), "panic for {args:?}: {err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line: {err}"));
    for n in needles {
        assert!(line.contains(n), "`{line}` should mention `{n}`");
    }
}

/// A copy of the tiny fixture model in a temp dir, to damage.
fn tiny_copy() -> (tempfile::TempDir, PathBuf) {
    fixture_copy("tiny_gqa")
}

/// A copy of fixture model `name` (config.json + model.safetensors) in a temp dir.
fn fixture_copy(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture(name).join(f), dir.join(f)).unwrap();
    }
    (tmp, dir)
}

/// Edit a copied model's config.json as JSON.
fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, v.to_string()).unwrap();
}

/// Architectures: an unsupported one names itself and the supported list; a Gemma 3 config
/// without `head_dim` names the field; a Qwen3 q_norm of the wrong size names the tensor.
#[test]
fn architecture_errors() {
    let (_t, dir) = fixture_copy("tiny_gqa");
    edit_config(&dir, |v| {
        v["architectures"] = serde_json::json!(["Phi3ForCausalLM"])
    });
    assert_fails(
        &["inspect", "--model", s(&dir)],
        &["config.json", "Phi3ForCausalLM", "Gemma3ForCausalLM"],
    );
    let (_t, dir) = fixture_copy("arch/gemma3");
    edit_config(&dir, |v| {
        v.as_object_mut().unwrap().remove("head_dim");
    });
    assert_fails(
        &["inspect", "--model", s(&dir)],
        &["config.json", "head_dim"],
    );
    let (_t, dir) = fixture_copy("arch/qwen3");
    rewrite(&dir, |m| {
        let (shape, v) = m.get_mut("model.layers.1.self_attn.q_norm.weight").unwrap();
        shape[0] -= 2;
        v.truncate(shape[0]);
    });
    let data = fixture("tiny_gqa/data.jsonl");
    assert_fails(
        &eval_args(s(&dir), s(&data), &[]),
        &["model.layers.1.self_attn.q_norm.weight", "shape"],
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Rewrite the model's safetensors with `edit` applied to the tensor map.
fn rewrite(
    dir: &Path,
    edit: impl FnOnce(&mut std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)>),
) {
    let t = read_tensors(&dir.join("model.safetensors"));
    let mut map: std::collections::BTreeMap<_, _> = t.f32.into_iter().collect();
    edit(&mut map);
    let bytes = wgtune::io::safetensors::serialize_f32(&map, None).unwrap();
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
}

#[test]
fn truncated_safetensors() {
    let (_t, dir) = tiny_copy();
    let f = dir.join("model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    assert_fails(
        &["inspect", "--model", s(&dir)],
        &["model.safetensors", "safetensors"],
    );
}

#[test]
fn missing_tensor() {
    let (_t, dir) = tiny_copy();
    rewrite(&dir, |m| {
        m.remove("model.layers.1.mlp.up_proj.weight");
    });
    let data = fixture("tiny_gqa/data.jsonl");
    assert_fails(
        &eval_args(s(&dir), s(&data), &[]),
        &["missing tensor", "model.layers.1.mlp.up_proj.weight"],
    );
}

#[test]
fn wrong_shape() {
    let (_t, dir) = tiny_copy();
    rewrite(&dir, |m| {
        let e = m.get_mut("model.layers.0.self_attn.k_proj.weight").unwrap();
        e.0 = vec![e.0[1], e.0[0]];
    });
    let data = fixture("tiny_gqa/data.jsonl");
    assert_fails(
        &eval_args(s(&dir), s(&data), &[]),
        &["model.layers.0.self_attn.k_proj.weight", "shape"],
    );
}

#[test]
fn unknown_architecture_and_bad_config() {
    let (_t, dir) = tiny_copy();
    let cfg_path = dir.join("config.json");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(
        &cfg_path,
        cfg.replace("LlamaForCausalLM", "MambaForCausalLM"),
    )
    .unwrap();
    assert_fails(
        &["inspect", "--model", s(&dir)],
        &["config.json", "MambaForCausalLM"],
    );
    let mut v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    v["num_key_value_heads"] = 3.into();
    std::fs::write(&cfg_path, v.to_string()).unwrap();
    assert_fails(
        &["inspect", "--model", s(&dir)],
        &["config.json", "num_key_value_heads"],
    );
    std::fs::write(&cfg_path, "{ not json").unwrap();
    assert_fails(&["inspect", "--model", s(&dir)], &["config.json", "JSON"]);
}

/// A minimal GGUF v3: llama metadata and one tensor `[4, ne0]` of ggml type `ty` followed by
/// `data` bytes of tensor data.
fn tiny_gguf(ty: u32, ne0: u64, data: usize) -> Vec<u8> {
    let mut b = GgufWriter::default()
        .kv_str("general.architecture", "llama")
        .tensor_at("blk.0.ffn_down.weight", &[ne0, 4], ty, 0)
        .header();
    b.resize(b.len() + data, 0);
    b
}

#[test]
fn unknown_quant_type_and_truncated_gguf() {
    let tmp = tempfile::tempdir().unwrap();
    // An i-quant (IQ4_XS, id 23) is named as unsupported.
    let iq = tmp.path().join("iq4.gguf");
    std::fs::write(&iq, tiny_gguf(23, 256, 4096)).unwrap();
    assert_fails(
        &["inspect", "--model", s(&iq)],
        &["iq4.gguf", "IQ4_XS", "blk.0.ffn_down.weight"],
    );
    // Q6_K rows of 256 take 4 × 210 bytes: one byte short is a truncated block.
    let cut = tmp.path().join("q6k-cut.gguf");
    std::fs::write(&cut, tiny_gguf(14, 256, 4 * 210 - 1)).unwrap();
    assert_fails(
        &["inspect", "--model", s(&cut)],
        &["q6k-cut.gguf", "blk.0.ffn_down.weight"],
    );
    // Q4_K rows of 320 values do not fill 256-value super-blocks.
    let partial = tmp.path().join("q4k-320.gguf");
    std::fs::write(&partial, tiny_gguf(12, 320, 4096)).unwrap();
    assert_fails(
        &["inspect", "--model", s(&partial)],
        &["q4k-320.gguf", "blk.0.ffn_down.weight", "320", "256"],
    );
    let real = std::fs::read(asset("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    for cut in [10usize, 5000, real.len() - 1000] {
        let p = tmp.path().join(format!("cut{cut}.gguf"));
        std::fs::write(&p, &real[..cut]).unwrap();
        assert_fails(&["inspect", "--model", s(&p)], &[&format!("cut{cut}.gguf")]);
    }
    let not_gguf = tmp.path().join("model.bin");
    std::fs::write(&not_gguf, b"hello").unwrap();
    assert_fails(
        &["inspect", "--model", s(&not_gguf)],
        &["model.bin", "GGUF"],
    );
}

#[test]
fn invalid_jsonl_line() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("bad.jsonl");
    std::fs::write(
        &data,
        "{\"input_ids\": [1, 2, 3]}\n{\"input_ids\": [1, 2,\n",
    )
    .unwrap();
    let model = fixture("tiny_gqa");
    assert_fails(
        &eval_args(s(&model), s(&data), &[]),
        &["bad.jsonl:2", "JSON"],
    );
    std::fs::write(&data, "{\"input_ids\": [1, 2, 999]}\n").unwrap();
    assert_fails(&eval_args(s(&model), s(&data), &[]), &["999", "vocabulary"]);
    std::fs::write(
        &data,
        "{\"input_ids\": [1, 2, 3]}\n{\"input_ids\": [4, 5]}\n",
    )
    .unwrap();
    let dump = tmp.path().join("d.safetensors");
    assert_fails(
        &eval_args(s(&model), s(&data), &["--dump", s(&dump)]),
        &["equal lengths"],
    );
    assert_fails(
        &eval_args(s(&model), s(&tmp.path().join("nope.jsonl")), &[]),
        &["nope.jsonl"],
    );
}

#[test]
fn eval_dump_matches_fixture() {
    let tmp = tempfile::tempdir().unwrap();
    let dump = tmp.path().join("dump.safetensors");
    let model = fixture("tiny_gqa");
    let data = fixture("tiny_gqa/data.jsonl");
    let (code, err) = wgtune(&eval_args(s(&model), s(&data), &["--dump", s(&dump)]));
    assert_eq!(code, 0, "{err}");
    let got = read_tensors(&dump);
    let want = read_tensors(&model.join("expected.safetensors"));
    assert_eq!(got.f32["logits"].0, want.f32["logits"].0);
    assert!(max_abs_diff(&got.f32["logits"].1, &want.f32["logits"].1) < 1e-4);
    assert!((got.f32["loss"].1[0] - want.f32["loss"].1[0]).abs() < 1e-4);
}

#[test]
fn unsupported_peft_type_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let adapter = tmp.path().join("ia3");
    std::fs::create_dir(&adapter).unwrap();
    std::fs::write(
        adapter.join("adapter_config.json"),
        r#"{"peft_type": "IA3", "target_modules": ["k_proj"]}"#,
    )
    .unwrap();
    let model = fixture("tiny_gqa");
    let data = fixture("tiny_gqa/data.jsonl");
    assert_fails(
        &eval_args(s(&model), s(&data), &["--adapter", s(&adapter)]),
        &["adapter_config.json", "IA3", "not supported"],
    );
}

#[test]
fn eval_grads_dump_matches_peft() {
    let tmp = tempfile::tempdir().unwrap();
    let dump = tmp.path().join("grads.safetensors");
    let (model, data) = (fixture("tiny_gqa"), fixture("tiny_gqa/data.jsonl"));
    let case = fixture("peft/oft_exact");
    let adapter = case.join("adapter");
    let (code, err) = wgtune(&eval_args(
        s(&model),
        s(&data),
        &["--adapter", s(&adapter), "--grads", "--dump", s(&dump)],
    ));
    assert_eq!(code, 0, "{err}");
    let got = read_tensors(&dump);
    let want = read_tensors(&case.join("expected.safetensors"));
    let grads: Vec<&String> = want.f32.keys().filter(|k| k.starts_with("grad/")).collect();
    assert_eq!(
        grads.len(),
        got.f32.keys().filter(|k| k.starts_with("grad/")).count()
    );
    for k in grads
        .into_iter()
        .chain([&"logits".to_string(), &"loss".to_string()])
    {
        let d = max_abs_diff(&got.f32[k].1, &want.f32[k].1);
        assert!(d < 1e-4, "{k} differs by {d}");
    }
}
