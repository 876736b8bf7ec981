//! Training-step benchmark: the real [`Trainer::step`] (forward + backward + AdamW) of each adapter
//! method on one model, timed per phase through the trainer's profiler hook, with the device's
//! allocator counters sampled at every phase boundary.

use crate::adapters;
use crate::model::config::DecoderConfig;
use crate::model::loader::{ModelFiles, build_decoder, quantize_base};
use crate::model::weights::{Checkpoint, HostData, HostTensor};
use crate::train::data::Batch;
use crate::train::optim::{AdamWConfig, Schedule};
use crate::train::run::RunConfig;
use crate::train::trainer::{Phase, TrainConfig, Trainer};
use anyhow::{Result, bail};
use burn::tensor::Device;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The methods `--methods` accepts.
pub const METHODS: [&str; 5] = ["lora", "oft", "oft-v1", "qlora", "qoft"];

/// Model shape of a random-init benchmark model (`--layers`, `--hidden`, ...).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Shape {
    /// Vocabulary.
    pub vocab: usize,
    /// Hidden size.
    pub hidden: usize,
    /// MLP size.
    pub intermediate: usize,
    /// Decoder blocks.
    pub layers: usize,
    /// Attention heads (key/value heads: the same).
    pub heads: usize,
}

/// One method's figures (the schema is `benches/schema.json`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepBench {
    /// `lora`, `oft`, `oft-v1`, `qlora`, `qoft`.
    pub method: String,
    /// Trained tokens per second (batch · seq / median step time).
    pub tokens_per_s: f64,
    /// Median wall time of a whole step, ms.
    pub step_ms: f64,
    /// Median forward (+ loss) time, ms.
    pub forward_ms: f64,
    /// Median backward time, ms.
    pub backward_ms: f64,
    /// Median clipping + AdamW time, ms.
    pub optimizer_ms: f64,
    /// Largest device allocation total seen at a phase boundary (bytes in use), or `None` where
    /// the backend does not report it (CPU).
    pub peak_mem_bytes: Option<u64>,
    /// Peak resident memory of the process while stepping (model included), bytes (Linux).
    pub peak_rss_bytes: Option<u64>,
    /// Trainable adapter parameters.
    pub trainable_params: usize,
    /// Decoder linears kept packed for the fused kernel / stored dense.
    pub packed_linears: usize,
    /// Dense decoder linears.
    pub dense_linears: usize,
    /// Bytes of the decoder linears' base weights on the device.
    pub base_linear_bytes: usize,
}

/// Random values, N(0, 0.02²)-like (sum of uniforms; the benchmark needs no statistical quality).
fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    let mut u = move || {
        s = s
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    (0..n).map(|_| (u() + u() + u()) * 0.04).collect()
}

/// A random-init Llama of `shape` on the host (norm weights 1), as if read from files.
pub fn random_model(shape: &Shape) -> Result<ModelFiles> {
    if shape.heads == 0 || !shape.hidden.is_multiple_of(shape.heads) {
        bail!(
            "--hidden {} must be a positive multiple of --heads {}",
            shape.hidden,
            shape.heads
        );
    }
    let mut config = DecoderConfig::llama(
        shape.vocab,
        shape.hidden,
        shape.intermediate,
        shape.layers,
        shape.heads,
        shape.heads,
        shape.hidden / shape.heads,
    );
    config.max_position_embeddings = 4096;
    random_model_of(config)
}

/// A random-init model of any configuration (vectors, i.e. norm gains and biases, set to 1), as
/// if read from files; `wgtune bench --config` uses it for other architectures' shapes.
pub fn random_model_of(config: DecoderConfig) -> Result<ModelFiles> {
    let mut tensors = BTreeMap::new();
    for (i, (name, dims)) in config.expected_tensors().into_iter().enumerate() {
        let n = dims.iter().product();
        let values = if dims.len() == 1 {
            vec![1.0; n]
        } else {
            random(n, i as u64 + 1)
        };
        tensors.insert(
            name,
            HostTensor {
                shape: dims,
                data: HostData::F32(values),
            },
        );
    }
    Ok(ModelFiles {
        config,
        checkpoint: Checkpoint {
            tensors,
            origin: "random-init benchmark model".into(),
        },
        tokenizer: None,
        chat_template: None,
        format: "random".into(),
    })
}

/// The run settings the benchmark uses for `method`: LoRA r 16, alpha 32 and OFT block 32 with
/// 5 Neumann terms, all seven projections; `q*` on an NF4 base.
fn run_config(method: &str) -> Result<RunConfig> {
    let (name, v1) = match method {
        "oft-v1" => ("oft", true),
        m if METHODS.contains(&m) => (m, false),
        m => bail!("unknown method `{m}` (one of {})", METHODS.join(", ")),
    };
    Ok(RunConfig {
        method: Some(name.to_string()),
        r: Some(16),
        lora_alpha: Some(32.0),
        oft_block_size: Some(32),
        cayley_neumann_terms: Some(5),
        oft_v1: Some(v1),
        ..Default::default()
    })
}

/// A deterministic `[batch, seq]` batch of token ids (labels = ids: every position scored).
fn batch(vocab: usize, batch: usize, seq: usize) -> Batch {
    let input_ids: Vec<Vec<u32>> = (0..batch)
        .map(|b| {
            (0..seq)
                .map(|t| ((b * 7919 + t * 104_729 + 13) % vocab) as u32)
                .collect()
        })
        .collect();
    let labels = input_ids
        .iter()
        .map(|r| r.iter().map(|&x| x as i64).collect())
        .collect();
    Batch {
        input_ids,
        labels,
        scored: batch * (seq - 1),
        tokens: batch * seq,
    }
}

/// A finished phase, when it finished, and the device bytes in use then.
type Mark = (Phase, Instant, Option<u64>);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Time `iters` steps (after one warm-up step) of `method` on a model built from `files`.
pub fn bench_method(
    files: &ModelFiles,
    method: &str,
    device: &Device,
    batch_size: usize,
    seq: usize,
    iters: usize,
) -> Result<StepBench> {
    let run = run_config(method)?;
    let mut host = ModelFiles {
        config: files.config.clone(),
        checkpoint: Checkpoint {
            tensors: files.checkpoint.tensors.clone(),
            origin: files.checkpoint.origin.clone(),
        },
        tokenizer: None,
        chat_template: None,
        format: files.format.clone(),
    };
    match run.base_quantization() {
        Some(q) => {
            quantize_base(&mut host, &q)?;
        }
        None => {
            // The dense-base methods get a dense base even from a quantized file.
            for t in host.checkpoint.tensors.values_mut() {
                if !matches!(t.data, HostData::F32(_)) {
                    t.data = HostData::F32(t.to_f32().map_err(anyhow::Error::msg)?);
                }
            }
        }
    }
    device.memory_cleanup();
    let autodiff = device.clone().autodiff();
    let mut model = build_decoder(&host.config, &host.checkpoint, &autodiff)?;
    drop(host);
    let base = model.base_summary();
    let adapter = run.adapter().map_err(anyhow::Error::msg)?;
    adapters::attach(&mut model, &adapter, 0)?;
    let trainable_params = adapters::named_parameters(&model)
        .iter()
        .map(|(_, t)| t.dims().iter().product::<usize>())
        .sum();
    let mut trainer = Trainer::new(
        model,
        adapter,
        TrainConfig {
            lr: 1e-4,
            schedule: Schedule::Constant,
            warmup_steps: 0,
            total_steps: iters + 1,
            max_grad_norm: 1.0,
            adamw: AdamWConfig::default(),
            seed: 0,
        },
    );
    let marks: Arc<Mutex<Vec<Mark>>> = Arc::default();
    let sink = marks.clone();
    let dev = device.clone();
    trainer.profiler = Some(Box::new(move |phase| {
        let mem = dev.memory_pool_usage().map(|u| u.bytes_in_use);
        if let Ok(mut m) = sink.lock() {
            m.push((phase, Instant::now(), mem));
        }
    }));
    let b = batch(files.config.vocab_size, batch_size, seq);
    let mut rows = Vec::new();
    let mut peak: Option<u64> = None;
    super::reset_peak_rss();
    for i in 0..=iters {
        let start_mem = device.memory_pool_usage().map(|u| u.bytes_in_use);
        let t0 = Instant::now();
        if let Ok(mut m) = marks.lock() {
            m.clear();
        }
        pollster::block_on(trainer.step(std::slice::from_ref(&b)))?;
        let total = t0.elapsed().as_secs_f64();
        let m = marks
            .lock()
            .map_err(|_| anyhow::anyhow!("profiler lock poisoned"))?
            .clone();
        let at = |p: Phase| m.iter().find(|(q, ..)| *q == p).map(|(_, t, _)| *t);
        let (Some(f), Some(bw), Some(o)) = (
            at(Phase::Forward),
            at(Phase::Backward),
            at(Phase::Optimizer),
        ) else {
            bail!("the trainer reported no phases");
        };
        for mem in m.iter().map(|(.., mem)| *mem).chain([start_mem]).flatten() {
            peak = Some(peak.unwrap_or(0).max(mem));
        }
        if i > 0 {
            rows.push([
                total,
                (f - t0).as_secs_f64(),
                (bw - f).as_secs_f64(),
                (o - bw).as_secs_f64(),
            ]);
        }
    }
    let col = |c: usize| median(rows.iter().map(|r| r[c]).collect()) * 1e3;
    let step_ms = col(0);
    Ok(StepBench {
        method: method.to_string(),
        tokens_per_s: (batch_size * seq) as f64 / (step_ms / 1e3),
        step_ms,
        forward_ms: col(1),
        backward_ms: col(2),
        optimizer_ms: col(3),
        peak_mem_bytes: peak,
        peak_rss_bytes: super::status_bytes("VmHWM"),
        trainable_params,
        packed_linears: base.packed,
        dense_linears: base.dense,
        base_linear_bytes: base.packed_bytes + base.dense_bytes,
    })
}
