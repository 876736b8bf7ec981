//! Shared helpers for the integration tests: fixture reading, backends, comparisons.

use burn::tensor::Device;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use wgtune::app::files::DirSource;
use wgtune::backend::{BackendChoice, select};
use wgtune::model::loader::{LoadedModel, ModelSource, load_model};

/// Repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A committed fixture file.
pub fn fixture(rel: &str) -> PathBuf {
    root().join("tests/fixtures").join(rel)
}

/// A demo asset; fails loudly (not a skip) when `scripts/fetch-assets.sh` has not been run.
pub fn asset(name: &str) -> PathBuf {
    let p = root().join("assets").join(name);
    assert!(
        p.exists(),
        "{} is missing: run `bash scripts/fetch-assets.sh` first",
        p.display()
    );
    p
}

/// Tensors of a safetensors file as f32 / i64 vectors with shapes.
pub struct Tensors {
    /// f32 tensors.
    pub f32: HashMap<String, (Vec<usize>, Vec<f32>)>,
    /// i64 tensors.
    pub i64: HashMap<String, (Vec<usize>, Vec<i64>)>,
    /// u8 tensors (raw bytes).
    pub u8: HashMap<String, (Vec<usize>, Vec<u8>)>,
}

/// Read every tensor of a safetensors file.
pub fn read_tensors(path: &Path) -> Tensors {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out = Tensors {
        f32: HashMap::new(),
        i64: HashMap::new(),
        u8: HashMap::new(),
    };
    for (name, view) in st.iter() {
        let shape = view.shape().to_vec();
        match view.dtype() {
            Dtype::F32 => {
                let v = view
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                out.f32.insert(name.to_string(), (shape, v));
            }
            Dtype::I64 => {
                let v = view
                    .data()
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                out.i64.insert(name.to_string(), (shape, v));
            }
            Dtype::U8 => {
                out.u8
                    .insert(name.to_string(), (shape, view.data().to_vec()));
            }
            other => panic!("unexpected dtype {other:?} for {name}"),
        }
    }
    out
}

/// Rows of a `[B, T]` i64 tensor.
pub fn rows(shape: &[usize], v: &[i64]) -> Vec<Vec<i64>> {
    v.chunks(shape[1]).map(<[i64]>::to_vec).collect()
}

/// The device for a backend name used by the tests (`cpu` or `wgpu`, the latter on lavapipe in CI).
pub fn device(backend: &str) -> Device {
    // Small shapes on a software GPU: keep autotune to a minimum.
    // SAFETY: set before any wgpu runtime starts in this process; same value from every thread.
    unsafe { std::env::set_var("CUBECL_AUTOTUNE_LEVEL", "minimal") };
    let choice: BackendChoice = backend.parse().unwrap();
    select(choice)
        .unwrap_or_else(|e| panic!("backend {backend}: {e}"))
        .device
}

/// Load an HF fixture folder onto `device`.
pub fn load_hf(dir: &Path, device: &Device) -> LoadedModel {
    let src = DirSource::new(dir);
    load_model(ModelSource::HfFolder(&src), device, None).unwrap_or_else(|e| panic!("{e}"))
}

/// jsonl of `{"input_ids": [...]}` records for the tiny fixture models: one row per length in
/// `lens`, ids in 3..253 from a seeded LCG (the same text for the same arguments).
pub fn token_id_rows(seed: u64, lens: impl IntoIterator<Item = usize>) -> String {
    let mut x = seed;
    let mut text = String::new();
    for len in lens {
        let ids: Vec<String> = (0..len)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 33) % 250 + 3).to_string()
            })
            .collect();
        text.push_str(&format!("{{\"input_ids\": [{}]}}\n", ids.join(",")));
    }
    text
}

/// Largest absolute difference; panics on length mismatch.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Block on a future (tests are the front end here).
pub fn block<F: std::future::Future>(f: F) -> F::Output {
    pollster::block_on(f)
}

/// Address space a hostile-input run of the binary may use: the CPU backend on the tiny models
/// needs well under this, an allocation in proportion to an untrusted number needs far more.
pub const HOSTILE_AS_LIMIT: u64 = 3 << 30;

/// A resource limit for one run of the binary.
#[derive(Debug, Clone, Copy)]
pub enum Limit {
    /// RLIMIT_AS: an allocation beyond it aborts that process, never the machine.
    AddressSpace(u64),
    /// RLIMIT_FSIZE: a write past it fails with EFBIG, as on a full disk (SIGXFSZ is ignored so
    /// the process sees the error).
    FileSize(u64),
}

/// Run `wgtune args…` under an address-space limit of `limit` bytes with the test environment.
pub fn wgtune_limited(args: &[&str], limit: u64) -> std::process::Output {
    wgtune_with(args, Limit::AddressSpace(limit))
}

/// Run `wgtune args…` under `limit` with the test environment.
pub fn wgtune_with(args: &[&str], limit: Limit) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_wgtune"));
    cmd.args(args)
        .env("CUBECL_AUTOTUNE_LEVEL", "minimal")
        .stdin(std::process::Stdio::null());
    // SAFETY: signal and setrlimit are async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let (resource, bytes) = match limit {
                Limit::AddressSpace(b) => (libc::RLIMIT_AS, b),
                Limit::FileSize(b) => {
                    libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                    (libc::RLIMIT_FSIZE, b)
                }
            };
            let lim = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(resource, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().expect("run wgtune")
}

/// Assert `out` is a clean failure: non-zero exit, no panic, no abort, and an `error:` line that
/// contains every needle. Returns that line.
pub fn assert_clean_failure(out: &std::process::Output, what: &str, needles: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code().is_some_and(|c| c != 0),
        "{what}: expected a non-zero exit, got {:?}; stderr: {err}",
        out.status
    );
    assert!(!err.contains("panicked"), "{what}: panic: {err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("{what}: no error line in: {err}"))
        .to_string();
    for n in needles {
        assert!(line.contains(n), "{what}: `{line}` should mention `{n}`");
    }
    line
}

/// A GGUF v3 file built field by field, for hostile-input tests: metadata, a tensor table and
/// zero-filled tensor data, with every count written as given (so tests can lie in them).
#[derive(Default)]
pub struct GgufWriter {
    n_kv: u64,
    kv: Vec<u8>,
    n_tensors: u64,
    infos: Vec<u8>,
    data_len: u64,
}

/// A GGUF string: u64 length, then the bytes.
pub fn gguf_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

impl GgufWriter {
    /// A metadata entry of GGUF type `ty` whose value is `value` (raw little-endian bytes).
    pub fn kv(mut self, key: &str, ty: u32, value: &[u8]) -> Self {
        gguf_str(&mut self.kv, key);
        self.kv.extend(ty.to_le_bytes());
        self.kv.extend(value);
        self.n_kv += 1;
        self
    }

    /// A string metadata entry.
    pub fn kv_str(self, key: &str, value: &str) -> Self {
        let mut v = Vec::new();
        gguf_str(&mut v, value);
        self.kv(key, 8, &v)
    }

    /// A u32 metadata entry.
    pub fn kv_u32(self, key: &str, value: u32) -> Self {
        self.kv(key, 4, &value.to_le_bytes())
    }

    /// A u64 metadata entry.
    pub fn kv_u64(self, key: &str, value: u64) -> Self {
        self.kv(key, 10, &value.to_le_bytes())
    }

    /// An f32 metadata entry.
    pub fn kv_f32(self, key: &str, value: f32) -> Self {
        self.kv(key, 6, &value.to_le_bytes())
    }

    /// A tensor-table entry whose data lies at `offset` (relative to the data section); no data
    /// is added.
    pub fn tensor_at(mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Self {
        gguf_str(&mut self.infos, name);
        self.infos.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            self.infos.extend(d.to_le_bytes());
        }
        self.infos.extend(ty.to_le_bytes());
        self.infos.extend(offset.to_le_bytes());
        self.n_tensors += 1;
        self
    }

    /// A tensor with `bytes` zero bytes of data, placed after the previous ones (32-aligned).
    pub fn tensor(self, name: &str, dims: &[u64], ty: u32, bytes: u64) -> Self {
        let offset = self.data_len;
        let mut w = self.tensor_at(name, dims, ty, offset);
        w.data_len = (offset + bytes).next_multiple_of(32);
        w
    }

    /// Override the tensor count written in the header.
    pub fn tensor_count(mut self, n: u64) -> Self {
        self.n_tensors = n;
        self
    }

    /// Override the metadata count written in the header.
    pub fn kv_count(mut self, n: u64) -> Self {
        self.n_kv = n;
        self
    }

    /// The header (magic, version, counts, metadata, tensor table), padded to the data section.
    pub fn header(&self) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(self.n_tensors.to_le_bytes());
        b.extend(self.n_kv.to_le_bytes());
        b.extend(&self.kv);
        b.extend(&self.infos);
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
        b
    }

    /// Length of the whole file.
    pub fn bytes_len(&self) -> u64 {
        self.header().len() as u64 + self.data_len
    }

    /// The whole file: header and zero-filled tensor data.
    pub fn bytes(&self) -> Vec<u8> {
        let mut b = self.header();
        b.resize(b.len() + self.data_len as usize, 0);
        b
    }
}
