//! LoftQ against peft 0.21.2's own `loftq_init` (tests/fixtures/gen_loftq.py, run on the CPU):
//! the NF4 bytes of Q identical and B·A within 1e-4 of the weight scale, for 1 and 5 iterations;
//! and `wgtune train --method qlora --init loftq --steps 0` on the tiny fixture model.

use crate::common::*;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};
use wgtune::quant::loftq::{loftq_init, low_rank_product, relative_error};

struct Fixture {
    f32s: HashMap<String, (Vec<usize>, Vec<f32>)>,
    u8s: HashMap<String, Vec<u8>>,
}

fn read(path: &Path) -> Fixture {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut fx = Fixture {
        f32s: HashMap::new(),
        u8s: HashMap::new(),
    };
    for (name, view) in st.iter() {
        match view.dtype() {
            Dtype::F32 => {
                let v = bytemuck::pod_collect_to_vec::<u8, f32>(view.data());
                fx.f32s.insert(name.to_string(), (view.shape().to_vec(), v));
            }
            Dtype::U8 => {
                fx.u8s.insert(name.to_string(), view.data().to_vec());
            }
            other => panic!("{name}: unexpected dtype {other:?}"),
        }
    }
    fx
}

#[test]
fn loftq_matches_peft() {
    let fx = read(&fixture("loftq/cases.safetensors"));
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("loftq/cases.json")).unwrap())
            .unwrap();
    let cases = meta.as_object().unwrap();
    assert_eq!(cases.len(), 5);
    let mut seen_iters = std::collections::BTreeSet::new();
    for (case, m) in cases {
        let (wname, rank, iters) = (
            m["weight"].as_str().unwrap(),
            m["rank"].as_u64().unwrap() as usize,
            m["iters"].as_u64().unwrap() as usize,
        );
        seen_iters.insert(iters);
        let (shape, w) = &fx.f32s[&format!("{wname}.weight")];
        let (out_f, in_f) = (shape[0], shape[1]);
        let init = loftq_init(w, out_f, in_f, rank, iters).unwrap();

        // Q: the same NF4 bytes and scales as bitsandbytes under peft's loop.
        assert!(
            init.q.packed == fx.u8s[&format!("{case}.q_packed")],
            "{case}: NF4 bytes of Q differ from peft's"
        );
        // From the second round on, bnb quantizes W - B·A, whose last bits depend on the SVD's
        // rounding (torch fp32 LAPACK vs our f64): the scales then agree to a few ulps.
        let peft_absmax = &fx.f32s[&format!("{case}.q_absmax")].1;
        if iters == 1 {
            assert_eq!(&init.q.absmax, peft_absmax, "{case}: absmax");
        } else {
            for (o, p) in init.q.absmax.iter().zip(peft_absmax) {
                assert!(
                    (o - p).abs() <= 4.0 * f32::EPSILON * p,
                    "{case}: absmax {o} vs {p}"
                );
            }
        }

        // B·A (signs of singular vectors are arbitrary, the product is not).
        let (a_shape, a) = &fx.f32s[&format!("{case}.lora_A")];
        let (b_shape, b) = &fx.f32s[&format!("{case}.lora_B")];
        assert_eq!(
            (a_shape.as_slice(), b_shape.as_slice()),
            (&[rank, in_f][..], &[out_f, rank][..])
        );
        let ours = low_rank_product(&init.lora_b, &init.lora_a, out_f, rank, in_f);
        let peft = low_rank_product(b, a, out_f, rank, in_f);
        let w_scale = w.iter().fold(0f32, |m, x| m.max(x.abs()));
        let diff = max_abs_diff(&ours, &peft);
        assert!(
            diff <= 1e-4 * w_scale,
            "{case}: B·A differs from peft's by {diff:e} (max |W| {w_scale})"
        );
        // Row norms of A (= sqrt of the singular values) agree too: the factors are peft's up to sign.
        for k in 0..rank {
            let norm = |v: &[f32]| {
                v[k * in_f..(k + 1) * in_f]
                    .iter()
                    .map(|x| x * x)
                    .sum::<f32>()
            };
            let (o, p) = (norm(&init.lora_a), norm(a));
            assert!(
                (o - p).abs() <= 1e-4 * p.max(1e-6),
                "{case}: |A[{k}]|² {o} vs {p}"
            );
        }
        let err = relative_error(w, &init, 1.0).unwrap();
        eprintln!("{case}: max |B·A - peft| = {diff:.2e} (max |W| {w_scale:.3}), rel err {err:.5}");
        let want = m["rel_err_loftq"].as_f64().unwrap();
        assert!(
            (err - want).abs() < 1e-5,
            "{case}: rel err {err} vs peft {want}"
        );
        assert!(err < m["rel_err_nf4"].as_f64().unwrap());
    }
    assert_eq!(seen_iters, [1, 5].into());
}

fn wgtune(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgtune"))
        .args(args)
        .output()
        .unwrap()
}

fn adapter_tensors(path: &Path) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    read(path).f32s
}

#[test]
fn train_init_loftq_steps_0_writes_adapter_and_base() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("tiny_gqa");
    let data = fixture("tiny_gqa/data.jsonl");
    let out = tmp.path().join("run");
    let (r, alpha, iters) = (4usize, 8.0f64, 2usize);
    let run = |method: &str, rank: &str, extra: &[&str]| {
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
            "--method",
            method,
            "--init",
            "loftq",
            "--r",
            rank,
            "--lora-alpha",
            "8",
            "--target-modules",
            "q_proj,v_proj,down_proj",
        ];
        args.extend_from_slice(extra);
        wgtune(&args)
    };
    let o = run("qlora", "4", &["--loftq-iters", "2", "--steps", "0"]);
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    // The adapter holds the library's LoftQ pair, B divided by the scale alpha / r = 2.
    let scale = alpha / r as f64;
    let saved = adapter_tensors(&out.join("adapter_model.safetensors"));
    let base = read(&model.join("model.safetensors")).f32s;
    let base_nf4_dir = out.join("base-nf4");
    let nf4 = {
        let bytes = std::fs::read(base_nf4_dir.join("model.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        st.iter()
            .filter(|(_, v)| v.dtype() == Dtype::U8)
            .map(|(n, v)| (n.to_string(), v.data().to_vec()))
            .collect::<HashMap<_, _>>()
    };
    let mut n_targets = 0;
    for l in 0..2 {
        for module in ["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"] {
            let path = format!("model.layers.{l}.{module}");
            let (shape, w) = &base[&format!("{path}.weight")];
            let init = loftq_init(w, shape[0], shape[1], r, iters).unwrap();
            let key = |s: &str| format!("base_model.model.{path}.{s}.weight");
            let (_, a) = &saved[&key("lora_A")];
            let (_, b) = &saved[&key("lora_B")];
            let ours = low_rank_product(b, a, shape[0], r, shape[1]);
            let lib = low_rank_product(&init.lora_b, &init.lora_a, shape[0], r, shape[1]);
            let want: Vec<f32> = lib.iter().map(|x| (*x as f64 / scale) as f32).collect();
            let diff = max_abs_diff(&ours, &want);
            assert!(diff < 1e-6, "{path}: saved B·A differs by {diff:e}");
            // The written base holds LoftQ's Q for this linear.
            assert!(
                nf4[&format!("{path}.weight")] == init.q.packed,
                "{path}: base-nf4 bytes are not LoftQ's Q"
            );
            n_targets += 1;
        }
        // A non-target linear is plain NF4 of the original weight.
        let path = format!("model.layers.{l}.self_attn.k_proj.weight");
        let (shape, w) = &base[&path];
        let plain = wgtune::quant::nf4::quantize_nf4_shaped(w, shape, 64).unwrap();
        assert!(nf4[&path] == plain.packed, "{path}: not plain NF4");
    }
    assert_eq!(n_targets, 6);
    assert_eq!(saved.len(), 12, "only the target pairs are saved");

    // The quantized base folder loads as a model, and the adapter on it evaluates.
    let o = wgtune(&[
        "eval",
        "--backend",
        "cpu",
        "--model",
        base_nf4_dir.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--adapter",
        out.to_str().unwrap(),
    ]);
    assert!(
        o.status.success(),
        "eval on base-nf4 failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Bad combinations are one clear line each.
    for (method, rank, extra, needle) in [
        ("qlora", "4", &["--loftq-iters", "0"][..], "loftq_iters"),
        ("qoft", "4", &[][..], "LoRA"),
        ("qlora", "100", &[][..], "rank"),
        ("qlora", "4", &["--init-adapter", "x"][..], "init_adapter"),
    ] {
        let o = run(method, rank, &[extra, &["--steps", "0"]].concat());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains(needle),
            "{extra:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}
