//! `wgtune quantize --format nf4 [--double-quant]` writes exactly what transformers +
//! bitsandbytes 0.50.2 save for a `load_in_4bit` model (tests/fixtures/gen_bnb.py): every tensor
//! (packed NF4, absmax, quant maps, nested stats, the quant-state JSON blob, the f32 rest)
//! byte-identical, and the same `quantization_config`.

use crate::common::*;
use safetensors::SafeTensors;
use std::process::Command;

fn check(flag: Option<&str>, reference: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q");
    let model = fixture("tiny_gqa");
    let mut args = vec![
        "quantize",
        "--model",
        model.to_str().unwrap(),
        "--format",
        "nf4",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(flag);
    let o = Command::new(env!("CARGO_BIN_EXE_wgtune"))
        .args(&args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ours = std::fs::read(out.join("model.safetensors")).unwrap();
    let theirs = std::fs::read(fixture(reference).join("model.safetensors")).unwrap();
    let (a, b) = (
        SafeTensors::deserialize(&ours).unwrap(),
        SafeTensors::deserialize(&theirs).unwrap(),
    );
    let mut names_a = a.names();
    let mut names_b = b.names();
    names_a.sort();
    names_b.sort();
    assert_eq!(names_a, names_b);
    for name in names_a {
        let (x, y) = (a.tensor(name).unwrap(), b.tensor(name).unwrap());
        assert_eq!((x.dtype(), x.shape()), (y.dtype(), y.shape()), "{name}");
        assert!(x.data() == y.data(), "{reference}: {name} bytes differ");
    }
    let cfg = |p: std::path::PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p.join("config.json")).unwrap()).unwrap()
    };
    assert_eq!(
        cfg(out)["quantization_config"],
        cfg(fixture(reference))["quantization_config"]
    );
}

#[test]
fn nf4_checkpoint_identical_to_transformers() {
    check(None, "bnb/nf4");
}

#[test]
fn nf4_double_quant_checkpoint_identical_to_transformers() {
    check(Some("--double-quant"), "bnb/nf4_dq");
}

/// bnb 4-bit checkpoints saved by transformers load here and give the logits of the same NF4
/// weights dequantized correctly (`*_ref`: bnb 0.50.2's own CPU kernel mis-indexes absmax when
/// in_features is not a multiple of 64, see tests/fixtures/bnb/README.md).
#[test]
fn transformers_bnb_checkpoints_load() {
    let want = read_tensors(&fixture("bnb/expected.safetensors"));
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(fixture("tiny_gqa/data.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<Vec<u32>> = rows
        .iter()
        .map(|r| {
            r["input_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect();
    for (case, backend) in [("nf4", "cpu"), ("nf4_dq", "cpu"), ("nf4_dq", "wgpu")] {
        let lm = load_hf(&fixture(&format!("bnb/{case}")), &device(backend));
        let logits = block(wgtune::model::read_f32(
            lm.model.forward(&ids, None).unwrap(),
        ))
        .unwrap();
        let d = max_abs_diff(&logits, &want.f32[&format!("{case}/logits_ref")].1);
        assert!(d < 1e-4, "{case}/{backend}: logits differ by {d}");
    }
}

/// `--quantize nf4` on load gives the same model as the transformers-saved NF4 checkpoint, and
/// `train --method qlora` trains LoRA over it (a peft LORA adapter).
#[test]
fn quantize_on_load_and_qlora() {
    let tmp = tempfile::tempdir().unwrap();
    let dump = tmp.path().join("d.safetensors");
    let (model, data) = (fixture("tiny_gqa"), fixture("tiny_gqa/data.jsonl"));
    let (m, d) = (model.to_str().unwrap(), data.to_str().unwrap());
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_wgtune"))
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    run(&[
        "eval",
        "--backend",
        "cpu",
        "--model",
        m,
        "--quantize",
        "nf4",
        "--data",
        d,
        "--dump",
        dump.to_str().unwrap(),
    ]);
    let got = read_tensors(&dump);
    let want = read_tensors(&fixture("bnb/expected.safetensors"));
    let diff = max_abs_diff(&got.f32["logits"].1, &want.f32["nf4/logits_ref"].1);
    assert!(diff < 1e-4, "quantize-on-load logits differ by {diff}");
    let out = tmp.path().join("qlora");
    run(&[
        "train",
        "--no-gui",
        "--backend",
        "cpu",
        "--model",
        m,
        "--data",
        d,
        "--out",
        out.to_str().unwrap(),
        "--method",
        "qlora",
        "--r",
        "4",
        "--steps",
        "3",
        "--lr",
        "0.01",
        "--batch-size",
        "2",
    ]);
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
}
