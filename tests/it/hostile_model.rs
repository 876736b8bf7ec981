//! Hostile model files (issue 20): every crafted input must fail through the binary with one
//! `error:` line naming the file and the field or tensor, a non-zero exit and no panic, under an
//! address-space limit so that an allocation in proportion to an untrusted number fails the test.
//! Inputs are generated (crafted headers, sparse files), never committed.

use crate::common::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use wgtune::io::FileSource;

/// `wgtune inspect --model path` under [`HOSTILE_AS_LIMIT`].
fn inspect(path: &Path) -> std::process::Output {
    wgtune_limited(
        &["inspect", "--model", path.to_str().unwrap()],
        HOSTILE_AS_LIMIT,
    )
}

/// Assert `inspect path` fails cleanly with an error line containing every needle.
fn refused(path: &Path, what: &str, needles: &[&str]) -> String {
    let out = inspect(path);
    let line = assert_clean_failure(&out, what, needles);
    assert!(!line.contains('\0'), "{what}: NUL byte in `{line}`");
    line
}

/// A copy of the HF fixture folder `name` in a temp dir (config.json + model.safetensors).
fn hf_copy(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture(name).join(f), dir.join(f)).unwrap();
    }
    (tmp, dir)
}

/// Rewrite `dir/config.json` with `edit` applied.
fn edit_config(dir: &Path, edit: impl FnOnce(&mut Value)) {
    let path = dir.join("config.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, v.to_string()).unwrap();
}

/// A tiny GGUF model of GGUF architecture `arch` with `[hidden, heads, intermediate, layers]`
/// sizes and one block's worth of 4-byte F32 tensors per layer (at most two: enough to pass the
/// count check, not a loadable model); `extra` adds metadata.
fn gguf_sized(
    arch: &str,
    sizes: [u64; 4],
    extra: impl FnOnce(GgufWriter) -> GgufWriter,
) -> Vec<u8> {
    let key = |k: &str| format!("{arch}.{k}");
    let [hidden, heads, intermediate, layers] = sizes;
    let mut w = GgufWriter::default()
        .kv_str("general.architecture", arch)
        .kv_u64(&key("embedding_length"), hidden)
        .kv_u64(&key("attention.head_count"), heads)
        .kv_u64(&key("feed_forward_length"), intermediate)
        .kv_u64(&key("block_count"), layers)
        .kv_u32(&key("attention.sliding_window"), 4);
    w = extra(w);
    for l in 0..layers.min(2) {
        for t in [
            "attn_norm",
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_norm",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        ] {
            w = w.tensor(&format!("blk.{l}.{t}.weight"), &[1], 0, 4);
        }
    }
    w.bytes()
}

/// [`gguf_sized`] with hidden 8, 2 heads, intermediate 16 and `layers` blocks.
fn gguf_model(arch: &str, layers: u64, extra: impl FnOnce(GgufWriter) -> GgufWriter) -> Vec<u8> {
    gguf_sized(arch, [8, 2, 16, layers], extra)
}

/// The value bytes of a GGUF array of strings.
fn str_array(items: &[&str]) -> Vec<u8> {
    let mut v = 8u32.to_le_bytes().to_vec();
    v.extend((items.len() as u64).to_le_bytes());
    for s in items {
        gguf_str(&mut v, s);
    }
    v
}

/// Write `bytes` to `dir/name` and return the path.
fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Case 1: a sharded index naming a shard outside the folder is refused, naming the index and
/// the entry, even when the named file exists and is a valid checkpoint.
#[test]
fn sharded_index_cannot_leave_the_folder() {
    let (tmp, dir) = hf_copy("tiny_gqa");
    // A valid checkpoint outside the folder: following the index would load it.
    std::fs::rename(
        dir.join("model.safetensors"),
        tmp.path().join("outside.safetensors"),
    )
    .unwrap();
    let outside = tmp.path().join("outside.safetensors");
    for shard in [
        "../outside.safetensors",
        "sub/../../outside.safetensors",
        outside.to_str().unwrap(),
        "/etc/passwd",
        "../../../../../../etc/passwd",
        "..\\outside.safetensors",
        "C:\\Windows\\win.ini",
        "C:outside.safetensors",
        "./model.safetensors",
        "",
    ] {
        let index = json!({ "weight_map": { "model.embed_tokens.weight": shard } });
        write(
            &dir,
            "model.safetensors.index.json",
            index.to_string().as_bytes(),
        );
        refused(
            &dir,
            &format!("shard {shard:?}"),
            &[
                "model.safetensors.index.json",
                "model.embed_tokens.weight",
                &format!("{shard:?}"),
            ],
        );
    }
    // A plain shard name inside the folder still loads.
    std::fs::rename(&outside, dir.join("shard-1.safetensors")).unwrap();
    let index = json!({ "weight_map": { "model.embed_tokens.weight": "shard-1.safetensors" } });
    write(
        &dir,
        "model.safetensors.index.json",
        index.to_string().as_bytes(),
    );
    let out = inspect(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Case 1, defence in depth: the desktop file source itself refuses names that leave its folder.
#[test]
fn dir_source_stays_in_its_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(tmp.path().join("secret"), b"secret").unwrap();
    std::fs::write(dir.join("config.json"), b"{}").unwrap();
    let src = wgtune::app::files::DirSource::new(&dir);
    assert!(src.read("config.json").unwrap().is_some());
    assert!(src.read("nope.json").unwrap().is_none());
    let secret = tmp.path().join("secret");
    for name in [
        "../secret",
        "a/../../secret",
        secret.to_str().unwrap(),
        "..\\secret",
    ] {
        let err = src
            .read(name)
            .err()
            .unwrap_or_else(|| panic!("{name} read"));
        assert!(err.to_string().contains(&format!("{name:?}")), "{err}");
    }
}

/// Case 2: a layer count far beyond the tensors held is refused before any per-layer list (or
/// Gemma's layer pattern) is built: config.json and GGUF, plain and Gemma 3.
#[test]
fn huge_layer_counts_are_refused_before_allocating() {
    for fixture in ["tiny_gqa", "arch/gemma3"] {
        let (_t, dir) = hf_copy(fixture);
        edit_config(&dir, |v| {
            v["num_hidden_layers"] = json!(1u64 << 31);
            v.as_object_mut().unwrap().remove("layer_types");
        });
        refused(&dir, fixture, &["config.json", "num_hidden_layers"]);
    }
    let tmp = tempfile::tempdir().unwrap();
    for arch in ["llama", "gemma3"] {
        let p = write(tmp.path(), "layers.gguf", &gguf_model(arch, 1 << 31, |w| w));
        refused(
            &p,
            arch,
            &["layers.gguf", &format!("{arch}.block_count"), "2147483648"],
        );
    }
}

/// Cases 2 and 4: sizes whose tensors cannot be in the files, or whose products overflow, are
/// refused with the file named, never "attempt to multiply with overflow".
#[test]
fn huge_sizes_are_refused_without_overflow() {
    let cases: [(&str, Value); 6] = [
        ("hidden_size", json!(1u64 << 40)),
        ("hidden_size", json!(u64::MAX / 2)),
        ("intermediate_size", json!(1u64 << 62)),
        ("vocab_size", json!(1u64 << 50)),
        ("num_attention_heads", json!(1u64 << 40)),
        ("head_dim", json!(1u64 << 40)),
    ];
    for (key, value) in cases {
        let (_t, dir) = hf_copy("tiny_gqa");
        edit_config(&dir, |v| {
            v[key] = value.clone();
            if key == "num_attention_heads" {
                v["num_key_value_heads"] = value.clone();
                v["head_dim"] = json!(1u64 << 40);
            }
        });
        refused(&dir, &format!("{key} = {value}"), &["config.json"]);
    }
    let tmp = tempfile::tempdir().unwrap();
    let p = write(
        tmp.path(),
        "wide.gguf",
        &gguf_sized("llama", [1 << 62, 1 << 61, 1 << 62, 1], |w| w),
    );
    refused(&p, "huge GGUF sizes", &["wide.gguf"]);
    let p = write(
        tmp.path(),
        "wide2.gguf",
        &gguf_model("llama", 1, |w| {
            w.kv_u64("llama.attention.key_length", 1 << 62)
        }),
    );
    refused(&p, "huge GGUF head dim", &["wide2.gguf"]);
}

/// Case 2: every count and length in a GGUF header is checked against the bytes that remain,
/// and a tensor whose data lies past the end of the file is named.
#[test]
fn gguf_counts_are_checked_against_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let arch = || GgufWriter::default().kv_str("general.architecture", "llama");
    let mut long_string = arch().header();
    long_string.truncate(24);
    gguf_str(&mut long_string, "general.architecture");
    long_string.extend(8u32.to_le_bytes());
    long_string.extend((1u64 << 40).to_le_bytes());
    let mut huge_array = GgufWriter::default().kv_count(1).header();
    huge_array.truncate(24);
    gguf_str(&mut huge_array, "tokenizer.ggml.tokens");
    huge_array.extend(9u32.to_le_bytes());
    huge_array.extend(8u32.to_le_bytes());
    huge_array.extend(u64::MAX.to_le_bytes());
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        (
            "tensor count",
            arch().tensor_count(u64::MAX).bytes(),
            &["tensor count"],
        ),
        (
            "kv count",
            arch().kv_count(1 << 60).bytes(),
            &["metadata count"],
        ),
        ("string length", long_string, &["general.architecture"]),
        ("array length", huge_array, &["tokenizer.ggml.tokens"]),
        (
            "n_dims",
            arch().tensor_at("t", &[1; 9], 0, 0).bytes(),
            &["tensor t", "dimensions"],
        ),
        (
            "dims",
            arch().tensor_at("t", &[u64::MAX, 3], 0, 0).bytes(),
            &["tensor t"],
        ),
        (
            "86 GB tensor",
            arch()
                .tensor_at("blk.0.ffn_down.weight", &[4096, 5_250_000], 0, 0)
                .bytes(),
            &["blk.0.ffn_down.weight", "truncated"],
        ),
        (
            "offset past the end",
            arch()
                .tensor_at("blk.0.ffn_up.weight", &[32], 0, 1 << 50)
                .bytes(),
            &["blk.0.ffn_up.weight"],
        ),
    ];
    for (what, bytes, needles) in cases {
        let p = write(tmp.path(), "counts.gguf", &bytes);
        refused(&p, what, &[&["counts.gguf"], needles].concat());
    }
}

/// Case 2: a sparse 1 GiB GGUF whose one metadata array announces a billion one-byte elements:
/// the count fits the file, but 32 bytes of memory per element would not fit the limit.
#[test]
fn gguf_metadata_arrays_are_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = GgufWriter::default().kv_count(1).header();
    b.truncate(24);
    gguf_str(&mut b, "tokenizer.ggml.token_type");
    b.extend(9u32.to_le_bytes());
    b.extend(0u32.to_le_bytes()); // u8 elements
    b.extend((1u64 << 30).to_le_bytes());
    let p = write(tmp.path(), "sparse.gguf", &b);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len((1 << 30) + b.len() as u64)
        .unwrap();
    refused(
        &p,
        "sparse array",
        &["sparse.gguf", "tokenizer.ggml.token_type"],
    );
}

/// Case 2: safetensors headers that lie (header length, shape products, offsets) are refused
/// naming the file.
#[test]
fn safetensors_headers_that_lie_are_refused() {
    let header = |json: &str| {
        let mut b = (json.len() as u64).to_le_bytes().to_vec();
        b.extend(json.as_bytes());
        b
    };
    let mut huge_len = (1u64 << 62).to_le_bytes().to_vec();
    huge_len.extend(b"{}");
    let cases = [
        huge_len,
        header(r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,0]}}"#),
        header(r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,86000000000]}}"#),
        header(r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[18446744073709551615,8]}}"#),
    ];
    for (i, bytes) in cases.iter().enumerate() {
        let (_t, dir) = hf_copy("tiny_gqa");
        write(&dir, "model.safetensors", bytes);
        refused(
            &dir,
            &format!("safetensors case {i}"),
            &["model.safetensors"],
        );
    }
}

/// Case 5: NaN or negative float hyper-parameters in a GGUF are refused for every GGUF
/// architecture, naming the GGUF key; nothing non-finite is printed.
#[test]
fn gguf_bad_floats_name_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    for arch in ["llama", "qwen2", "qwen3", "gemma3"] {
        for (key, value) in [
            ("rope.freq_base", f32::NAN),
            ("rope.freq_base", f32::INFINITY),
            ("attention.layer_norm_rms_epsilon", -1e-5),
            ("attention.layer_norm_rms_epsilon", f32::NAN),
        ] {
            let key = format!("{arch}.{key}");
            let p = write(
                tmp.path(),
                "floats.gguf",
                &gguf_model(arch, 1, |w| w.kv_f32(&key, value)),
            );
            refused(&p, &format!("{key} = {value}"), &["floats.gguf", &key]);
        }
    }
    let (_t, dir) = hf_copy("tiny_gqa");
    edit_config(&dir, |v| v["rms_norm_eps"] = json!(-1.0));
    refused(&dir, "config eps", &["config.json", "rms_norm_eps"]);
}

/// Case 3: `inspect` works from headers alone: the same groups as the loaded checkpoint for
/// every fixture (GGUF, safetensors, NF4), and a 1.6 GiB sparse GGUF inspects under a limit
/// that holds its map once but not a copy of its data.
#[test]
fn inspect_reads_headers_only() {
    use wgtune::app::files::{DirSource, model_source};
    use wgtune::model::loader::{read_model, read_model_info, tensor_groups};
    let mut paths: Vec<PathBuf> = ["mistral", "qwen2", "qwen3", "gemma3"]
        .iter()
        .flat_map(|a| {
            [
                fixture(&format!("arch/{a}/model.gguf")),
                fixture(&format!("arch/{a}")),
            ]
        })
        .collect();
    paths.extend(["tiny_gqa", "bnb/nf4", "bnb/nf4_dq"].map(fixture));
    for p in paths {
        let (mut d1, mut d2): (Option<DirSource>, Option<DirSource>) = (None, None);
        let files = read_model(model_source(&p, &mut d1).unwrap()).unwrap();
        let info = read_model_info(model_source(&p, &mut d2).unwrap()).unwrap();
        assert_eq!(info.groups(), tensor_groups(&files), "{}", p.display());
        // `read_model` adds the family's end-of-turn token to the stop ids; inspect shows none.
        let config = wgtune::model::config::DecoderConfig {
            stop_token_ids: info.config.stop_token_ids.clone(),
            ..files.config.clone()
        };
        assert_eq!(info.config, config, "{}", p.display());
        assert_eq!(info.has_tokenizer, files.tokenizer.is_some());
        assert_eq!(info.has_chat_template, files.chat_template.is_some());
    }

    // hidden 64, one head, intermediate 2^23: three Q8_0 MLP matrices of 544 MiB each.
    let (h, i) = (64u64, 1u64 << 23);
    let q8 = |n: u64| n / 32 * 34;
    let mut w = GgufWriter::default()
        .kv_str("general.architecture", "llama")
        .kv_u64("llama.embedding_length", h)
        .kv_u32("llama.attention.head_count", 1)
        .kv_u64("llama.feed_forward_length", i)
        .kv_u32("llama.block_count", 1)
        .kv_str("tokenizer.ggml.model", "gpt2")
        .kv(
            "tokenizer.ggml.tokens",
            9,
            &str_array(&["a", "b", "ab", "c"]),
        )
        .kv("tokenizer.ggml.merges", 9, &str_array(&["a b"]))
        .tensor("token_embd.weight", &[h, 4], 0, h * 4 * 4)
        .tensor("output_norm.weight", &[h], 0, h * 4);
    for t in ["attn_norm", "ffn_norm"] {
        w = w.tensor(&format!("blk.0.{t}.weight"), &[h], 0, h * 4);
    }
    for t in ["attn_q", "attn_k", "attn_v", "attn_output"] {
        w = w.tensor(&format!("blk.0.{t}.weight"), &[h, h], 8, q8(h * h));
    }
    for (t, dims) in [
        ("ffn_gate", [h, i]),
        ("ffn_up", [h, i]),
        ("ffn_down", [i, h]),
    ] {
        w = w.tensor(&format!("blk.0.{t}.weight"), &dims, 8, q8(h * i));
    }
    let tmp = tempfile::tempdir().unwrap();
    let p = write(tmp.path(), "big.gguf", &w.header());
    let len = w.bytes_len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len)
        .unwrap();
    let out = wgtune_limited(
        &["inspect", "--model", p.to_str().unwrap()],
        len + (1 << 30),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "inspect of a {len}-byte sparse GGUF: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("7 x Q8_0"), "{stdout}");
}

/// Case 6: seeded random mutations of small valid model files, so a failure is reproducible.
mod fuzz {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use wgtune::io::{Blob, LoadError};
    use wgtune::model::loader::{ModelSource, load_model};

    /// Knuth's MMIX linear congruential generator: small, seeded, no crates.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 11
        }

        /// A number below `n` (`n > 0`).
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Which file of a model is mutated.
    #[derive(Clone, Copy, Debug)]
    enum Target {
        /// The mistral fixture's `model.gguf` (read as a `llama` GGUF).
        Gguf,
        /// The `model.safetensors` of the tiny_gqa folder.
        Safetensors,
        /// The `config.json` of the tiny_gqa folder.
        Config,
    }

    const TARGETS: [Target; 3] = [Target::Gguf, Target::Safetensors, Target::Config];

    impl Target {
        /// The valid file, and how many leading bytes are header (mutations favour them).
        fn original(self) -> (Vec<u8>, usize) {
            let read = |rel: &str| std::fs::read(fixture(rel)).unwrap();
            match self {
                Target::Gguf => {
                    let b = read("arch/mistral/model.gguf");
                    let header = wgtune::io::gguf::Gguf::parse(&b).unwrap().data_start;
                    (b, header)
                }
                Target::Safetensors => {
                    let b = read("tiny_gqa/model.safetensors");
                    let header = 8 + u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
                    (b, header)
                }
                Target::Config => {
                    let b = read("tiny_gqa/config.json");
                    let n = b.len();
                    (b, n)
                }
            }
        }

        /// The HF folder files with this target's file replaced by `bytes`.
        fn folder(self, bytes: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
            let read = |f: &str| std::fs::read(fixture("tiny_gqa").join(f)).unwrap();
            let mut files = vec![
                ("config.json", read("config.json")),
                ("model.safetensors", read("model.safetensors")),
            ];
            let i = match self {
                Target::Config => 0,
                _ => 1,
            };
            files[i].1 = bytes.to_vec();
            files
        }

        /// Load a mutated file through the library on the CPU backend.
        fn load(self, bytes: &[u8], device: &burn::tensor::Device) -> Result<(), LoadError> {
            match self {
                Target::Gguf => {
                    let src = ModelSource::Gguf {
                        bytes: Arc::new(bytes.to_vec()),
                        name: "fuzz.gguf".into(),
                    };
                    load_model(src, device, None).map(drop)
                }
                _ => {
                    let files = self
                        .folder(bytes)
                        .into_iter()
                        .map(|(n, b)| (n.to_string(), Arc::new(b) as Blob))
                        .collect();
                    load_model(ModelSource::HfFolder(&Mem(files)), device, None).map(drop)
                }
            }
        }

        /// Write a mutated file where the binary can read it; the path to pass as `--model`.
        fn write(self, bytes: &[u8], dir: &Path) -> PathBuf {
            match self {
                Target::Gguf => super::write(dir, "fuzz.gguf", bytes),
                _ => {
                    let folder = dir.join("fuzz");
                    std::fs::create_dir_all(&folder).unwrap();
                    for (name, b) in self.folder(bytes) {
                        std::fs::write(folder.join(name), b).unwrap();
                    }
                    folder
                }
            }
        }
    }

    /// Files held in memory, as the browser's picker gives them.
    struct Mem(HashMap<String, Blob>);

    impl FileSource for Mem {
        fn read(&self, name: &str) -> Result<Option<Blob>, LoadError> {
            Ok(self.0.get(name).cloned())
        }
        fn display(&self, name: &str) -> String {
            format!("fuzz/{name}")
        }
    }

    /// Values a length or count field is bumped to.
    const HUGE: [u64; 7] = [
        u64::MAX,
        1 << 63,
        1 << 62,
        1 << 40,
        1 << 31,
        u32::MAX as u64,
        0,
    ];

    /// JSON values a config field is replaced with.
    fn json_value(rng: &mut Lcg) -> Value {
        let huge = HUGE[rng.below(HUGE.len())];
        match rng.below(8) {
            0 => json!(huge),
            1 => json!(-1),
            2 => json!(1e308),
            3 => json!(0.5),
            4 => json!("x"),
            5 => Value::Null,
            6 => json!([huge]),
            _ => json!(rng.below(70)),
        }
    }

    /// One mutation of `input` (header = its first `header` bytes, which most mutations hit),
    /// with a description for the failure message.
    fn mutate(rng: &mut Lcg, input: &[u8], header: usize, json_file: bool) -> (Vec<u8>, String) {
        let mut b = input.to_vec();
        let pos = |rng: &mut Lcg, len: usize| {
            if rng.below(4) > 0 {
                rng.below(header.clamp(1, len))
            } else {
                rng.below(len)
            }
        };
        match rng.below(if json_file { 6 } else { 5 }) {
            0 => {
                let (i, x) = (pos(rng, b.len()), 1 + rng.below(255) as u8);
                b[i] ^= x;
                (b, format!("xor byte {i} with {x:#04x}"))
            }
            1 => {
                let cut = pos(rng, b.len());
                b.truncate(cut);
                (b, format!("truncate to {cut} bytes"))
            }
            2 | 3 => {
                let width = if rng.below(2) == 0 { 8 } else { 4 };
                let i = pos(rng, b.len()).min(b.len().saturating_sub(width));
                let v = HUGE[rng.below(HUGE.len())];
                let end = (i + width).min(b.len());
                b[i..end].copy_from_slice(&v.to_le_bytes()[..end - i]);
                (b, format!("write {v:#x} as {width} bytes at {i}"))
            }
            4 => {
                let (from, to) = (rng.below(b.len()), pos(rng, b.len()));
                let n = 1 + rng.below(64.min(b.len() - from));
                let chunk = b[from..from + n].to_vec();
                b.splice(to..to, chunk);
                (b, format!("insert bytes {from}..{} at {to}", from + n))
            }
            _ => {
                let mut v: Value = serde_json::from_slice(input).unwrap();
                let obj = v.as_object_mut().unwrap();
                let key = obj.keys().nth(rng.below(obj.len())).unwrap().clone();
                let new = json_value(rng);
                let what = format!("set `{key}` to {new}");
                obj.insert(key, new);
                (v.to_string().into_bytes(), what)
            }
        }
    }

    /// Base seed; case `i` of a target uses `SEED + i`.
    const SEED: u64 = 0x5eed_2026;

    /// The mutation of case `i` of `target`, reproducible from the seed alone.
    fn case(target: Target, original: &(Vec<u8>, usize), i: u64) -> (Vec<u8>, String) {
        let mut rng = Lcg(SEED + i);
        let rounds = 1 + rng.below(3);
        let mut bytes = original.0.clone();
        let mut what = Vec::new();
        for _ in 0..rounds {
            if bytes.is_empty() {
                break;
            }
            let json =
                matches!(target, Target::Config) && serde_json::from_slice::<Value>(&bytes).is_ok();
            let (b, w) = mutate(&mut rng, &bytes, original.1, json);
            bytes = b;
            what.push(w);
        }
        (
            bytes,
            format!("{target:?} seed {}: {}", SEED + i, what.join("; ")),
        )
    }

    /// Thousands of mutations loaded through the library on the CPU backend: errors are fine,
    /// a panic fails the test naming the seed and the mutation. Stops mutating after ~20 s.
    #[test]
    fn mutated_model_files_never_panic_the_loader() {
        let device = device("cpu");
        let budget = Duration::from_secs(20) / TARGETS.len() as u32;
        let (mut loaded, mut tried) = (0, 0);
        for target in TARGETS {
            let original = target.original();
            target.load(&original.0, &device).unwrap();
            let start = Instant::now();
            for i in 0..5000 {
                if start.elapsed() > budget {
                    break;
                }
                let (bytes, what) = case(target, &original, i);
                tried += 1;
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    target.load(&bytes, &device)
                }));
                match result {
                    Ok(Ok(())) => loaded += 1,
                    Ok(Err(e)) => assert!(!e.to_string().contains('\n'), "{what}: `{e}`"),
                    Err(_) => panic!("{what}: the loader panicked"),
                }
            }
        }
        eprintln!("fuzz: {tried} mutations, {loaded} of them still loaded");
    }

    /// A few hundred mutations through `wgtune inspect` under the address-space limit: each run
    /// succeeds or fails cleanly (no panic, no abort from an allocation beyond the limit).
    #[test]
    fn mutated_model_files_inspect_cleanly_under_a_memory_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let start = Instant::now();
        for target in TARGETS {
            let original = target.original();
            for i in 0..100 {
                if start.elapsed() > Duration::from_secs(20) {
                    break;
                }
                // Other seeds than the library test's.
                let (bytes, what) = case(target, &original, 1_000_000 + i);
                let path = target.write(&bytes, tmp.path());
                let out = inspect(&path);
                if !out.status.success() {
                    assert_clean_failure(&out, &what, &[]);
                }
            }
        }
    }
}
