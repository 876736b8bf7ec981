//! Benchmark harness shared by `wgtune bench` and `cargo bench`: forward (prefill) tokens/s and
//! KV-cached generation tokens/s of a model on one backend. Timings live here, never in tests.

pub mod kernels;
pub mod loss_memory;
pub mod train_step;

use crate::app::cli::{BenchArgs, load, pick_backend};
use crate::backend::SelectedBackend;
use crate::model::generate::{SamplingConfig, generate, generate_batch};
use crate::model::read_f32;
use anyhow::{Result, bail};
use std::time::Instant;

/// A `/proc/self/status` field in bytes (`VmRSS`, `VmHWM`); `None` where there is no procfs.
pub fn status_bytes(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Bytes as MiB with one decimal, or `-` when not measured.
fn mib_or_dash(bytes: Option<u64>) -> String {
    bytes.map_or("-".into(), |b| format!("{:.1}", b as f64 / 1048576.0))
}

/// Reset the process's peak resident set (`VmHWM`) to the current one (Linux; a no-op elsewhere).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// One benchmark run's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelBench {
    /// Backend description.
    pub backend: String,
    /// Prompt length of the forward pass.
    pub seq: usize,
    /// Median forward seconds (one sequence, logits read back).
    pub forward_secs: f64,
    /// Forward tokens per second.
    pub forward_tokens_per_s: f64,
    /// Generated tokens.
    pub gen_tokens: usize,
    /// Generation tokens per second (KV cache, greedy).
    pub gen_tokens_per_s: f64,
    /// With `--gen-batch N > 1`: sequences generated per measurement.
    pub gen_batch: usize,
    /// Median tokens per second of the N sequences generated one at a time (`--gen-batch`).
    pub gen_unbatched_tokens_per_s: Option<f64>,
    /// Median tokens per second of the N sequences generated as one batch (`--gen-batch`).
    pub gen_batched_tokens_per_s: Option<f64>,
}

/// The machine's 1-minute load average (`/proc/loadavg`), where there is one.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `--gen-batch`: the N sequences one at a time (A) and as one batch (B), alternated A B A B
/// `iters` times; median tokens/s (new tokens over decode seconds) of each.
fn batch_generation_bench(
    model: &crate::model::decoder::Decoder,
    prompt: &[u32],
    cfg: &SamplingConfig,
    n: usize,
    iters: usize,
) -> Result<(f64, f64)> {
    let prompts = vec![prompt.to_vec(); n];
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for i in 0..iters {
        let load = load_average();
        let (mut tokens, mut secs) = (0, 0.0);
        for r in 0..n {
            let c = SamplingConfig {
                seed: cfg.seed.wrapping_add(r as u64),
                ..cfg.clone()
            };
            let g = pollster::block_on(generate(model, prompt, &c, |_| {}))?;
            tokens += g.tokens.len();
            secs += g.decode_secs;
        }
        a.push(tokens as f64 / secs);
        let load_b = load_average();
        let gens = pollster::block_on(generate_batch(model, &prompts, cfg, None, |_, _| {}))?;
        let tokens: usize = gens.iter().map(|g| g.tokens.len()).sum();
        b.push(tokens as f64 / gens[0].decode_secs);
        let show = |l: Option<f64>| l.map_or("-".into(), |l| format!("{l:.2}"));
        println!(
            "iter {}: one at a time {:.2} tokens/s (load {}) | batch of {n} {:.2} tokens/s (load {})",
            i + 1,
            a[i],
            show(load),
            b[i],
            show(load_b)
        );
    }
    Ok((median(&mut a), median(&mut b)))
}

/// `wgtune bench`: time the model's forward pass and generation.
pub fn cmd_bench(a: BenchArgs) -> Result<()> {
    if a.seq == Some(0) || a.iters == 0 {
        bail!("--seq and --iters must be positive");
    }
    let backend = pick_backend(a.backend)?;
    if a.kernels {
        return kernel_bench(&a, &backend);
    }
    if !a.methods.is_empty() {
        return step_bench(&a, &backend);
    }
    if a.loss_memory {
        return loss_memory_bench(&a, &backend);
    }
    let seq = a.seq.unwrap_or(128);
    let Some(model_path) = &a.model else {
        bail!("--model is required (or --kernels)");
    };
    let lm = load(model_path, &backend.device, a.quantize.as_deref())?;
    let vocab = lm.model.config.vocab_size as u32;
    let ids: Vec<u32> = (0..seq as u32).map(|i| (i * 7919 + 13) % vocab).collect();
    let forward = || -> Result<f64> {
        let t0 = Instant::now();
        let logits = lm.model.forward(std::slice::from_ref(&ids), None)?;
        let v = lm.model.config.vocab_size;
        let last = logits.slice([0..1, seq - 1..seq, 0..v]);
        pollster::block_on(read_f32(last))?;
        Ok(t0.elapsed().as_secs_f64())
    };
    forward()?; // warm-up: shader compilation and autotune
    let mut times: Vec<f64> = (0..a.iters).map(|_| forward()).collect::<Result<_>>()?;
    times.sort_by(f64::total_cmp);
    let forward_secs = times[times.len() / 2];
    let cfg = SamplingConfig {
        max_new_tokens: a.gen_tokens,
        temperature: a.gen_temperature,
        ..Default::default()
    };
    let mut model = lm.model;
    model.config.eos_token_ids.clear(); // time exactly gen_tokens steps
    model.config.stop_token_ids.clear();
    let prompt = &ids[..ids.len().min(16)];
    pollster::block_on(generate(
        &model,
        prompt,
        &SamplingConfig {
            max_new_tokens: 2,
            ..cfg.clone()
        },
        |_| {},
    ))?;
    let g = pollster::block_on(generate(&model, prompt, &cfg, |_| {}))?;
    let batched = if a.gen_batch > 1 {
        Some(batch_generation_bench(
            &model,
            prompt,
            &cfg,
            a.gen_batch,
            a.iters,
        )?)
    } else {
        None
    };
    let r = ModelBench {
        backend: backend.description,
        seq,
        forward_secs,
        forward_tokens_per_s: seq as f64 / forward_secs,
        gen_tokens: g.tokens.len(),
        gen_tokens_per_s: g.tokens_per_sec(),
        gen_batch: a.gen_batch,
        gen_unbatched_tokens_per_s: batched.map(|b| b.0),
        gen_batched_tokens_per_s: batched.map(|b| b.1),
    };
    println!(
        "forward: {} tokens in {:.3}s = {:.1} tokens/s | generation: {} tokens at {:.2} tokens/s | {}",
        r.seq, r.forward_secs, r.forward_tokens_per_s, r.gen_tokens, r.gen_tokens_per_s, r.backend
    );
    if let Some((one, batch)) = batched {
        println!(
            "generation of {} sequences x {} tokens (median of {}): one at a time {one:.2} tokens/s, one batch {batch:.2} tokens/s ({:.2}x)",
            a.gen_batch,
            a.gen_tokens,
            a.iters,
            batch / one
        );
    }
    if let Some(path) = &a.json {
        let json = serde_json::to_vec_pretty(&serde_json::json!({ "results": [r] }))?;
        crate::app::files::write_atomic(path, &json)?;
    }
    Ok(())
}

/// `wgtune bench --loss-memory`: full-logits vs chunked loss memory, printed and as JSON.
fn loss_memory_bench(a: &BenchArgs, backend: &SelectedBackend) -> Result<()> {
    let seq = a.seq.unwrap_or(512);
    let r = loss_memory::bench_loss_memory(&backend.device, a.vocab, a.hidden, a.batch, seq)?;
    println!(
        "{} | vocab {} hidden {} batch {} x {}",
        backend.description, a.vocab, a.hidden, a.batch, seq
    );
    println!("loss      rows   peak RSS MiB   device MiB   seconds   value");
    for m in &r {
        println!(
            "{:<8} {:>5}   {:>12}   {:>10}   {:>7.2}   {:.6}",
            m.loss,
            m.rows,
            mib_or_dash(m.peak_rss_bytes),
            mib_or_dash(m.device_bytes),
            m.secs,
            m.value
        );
    }
    if let Some(path) = &a.json {
        let json = serde_json::json!({ "backend": backend.description, "batch": a.batch, "seq": seq, "results": r });
        crate::app::files::write_atomic(path, &serde_json::to_vec_pretty(&json)?)?;
    }
    Ok(())
}

/// `wgtune bench --kernels`: fused quantized matmul vs f32 matmul, printed and as JSON.
fn kernel_bench(a: &BenchArgs, backend: &SelectedBackend) -> Result<()> {
    if !crate::kernels::has_wgsl_kernels(&backend.device) {
        bail!(
            "--kernels needs the wgpu backend (picked: {}); pass --backend wgpu",
            backend.description
        );
    }
    use crate::kernels::qmatmul::{QFormat, QKernel};
    let formats = QFormat::all();
    // SmolLM2's shapes, then Gemma 3 270M's (the only ones with rows of whole K-quant blocks).
    let shapes: Vec<(usize, usize)> = kernels::SMOLLM2_SHAPES
        .into_iter()
        .chain(kernels::GEMMA3_270M_SHAPES)
        .collect();
    // Training-sized products through the tiled kernel, then one decoding row (generation)
    // through every kernel that takes it.
    let mut r = kernels::bench_qmatmul(
        &backend.device,
        a.rows,
        &shapes,
        &formats,
        &[QKernel::Tiled],
        a.iters,
    )?;
    let mut decode = vec![QKernel::Tiled, QKernel::Gemv];
    if crate::kernels::subgroups() {
        decode.push(QKernel::GemvSubgroup);
    }
    r.extend(kernels::bench_qmatmul(
        &backend.device,
        1,
        &shapes,
        &formats,
        &decode,
        a.iters.max(5),
    )?);
    println!("{}", backend.description);
    println!(
        "format kernel           m     n     k   fused GFLOP/s   f32 GFLOP/s   ratio   weight bytes (packed / f32)"
    );
    for b in &r {
        println!(
            "{:<6} {:<12} {:>6} {:>5} {:>5}   {:>13.2}   {:>11.2}   {:>5.2}   {} / {} (1/{:.1})",
            b.format,
            b.kernel,
            b.m,
            b.n,
            b.k,
            b.fused_gflops,
            b.f32_gflops,
            b.ratio,
            b.packed_bytes,
            b.f32_bytes,
            b.f32_bytes as f64 / b.packed_bytes as f64
        );
    }
    let oft = kernels::bench_oft(
        &backend.device,
        a.rows,
        &kernels::SMOLLM2_OFT_WIDTHS,
        32,
        a.iters,
    )?;
    kernels::print_oft(&oft);
    if let Some(path) = &a.json {
        let json = serde_json::to_vec_pretty(&serde_json::json!({
            "backend": backend.description,
            "kernels": r,
            "oft": oft,
        }))?;
        crate::app::files::write_atomic(path, &json)?;
    }
    Ok(())
}

/// `wgtune bench --methods ...`: one training step per method, side by side, printed and as JSON.
fn step_bench(a: &BenchArgs, backend: &SelectedBackend) -> Result<()> {
    use train_step::{Shape, bench_method, random_model};
    let seq = a.seq.unwrap_or(256);
    if seq < 2 || a.batch == 0 {
        bail!("--seq must be at least 2 and --batch positive");
    }
    let (files, model_desc) = match &a.model {
        Some(path) => (
            crate::app::cli::read_model_files(path)?,
            serde_json::json!({ "path": path.display().to_string() }),
        ),
        None if let Some(path) = &a.config => {
            let text =
                std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let value: serde_json::Value = serde_json::from_slice(&text)
                .map_err(|e| anyhow::anyhow!("{}: invalid JSON: {e}", path.display()))?;
            let config =
                crate::model::arch::parse_hf_config(&value, &path.display().to_string(), None)?;
            let desc = serde_json::json!({ "config": path.display().to_string() });
            (train_step::random_model_of(config)?, desc)
        }
        None => {
            let shape = Shape {
                vocab: a.vocab,
                hidden: a.hidden,
                intermediate: a.intermediate,
                layers: a.layers,
                heads: a.heads,
            };
            (random_model(&shape)?, serde_json::to_value(shape)?)
        }
    };
    println!(
        "{} | {} | batch {} x seq {}, median of {} steps after 1 warm-up",
        backend.description, model_desc, a.batch, seq, a.iters
    );
    println!(
        "method   tokens/s   step ms   fwd ms   bwd ms   opt ms   peak MiB   peak RSS MiB   trainable   base linears (packed/dense, MiB)"
    );
    let mut results = Vec::new();
    for method in &a.methods {
        let r = bench_method(&files, method, &backend.device, a.batch, seq, a.iters)?;
        let mib = |b: u64| b as f64 / 1048576.0;
        println!(
            "{:<7} {:>9.1} {:>9.1} {:>8.1} {:>8.1} {:>8.1} {:>10} {:>14} {:>11}   {}/{} ({:.1})",
            r.method,
            r.tokens_per_s,
            r.step_ms,
            r.forward_ms,
            r.backward_ms,
            r.optimizer_ms,
            mib_or_dash(r.peak_mem_bytes),
            mib_or_dash(r.peak_rss_bytes),
            r.trainable_params,
            r.packed_linears,
            r.dense_linears,
            mib(r.base_linear_bytes as u64)
        );
        results.push(r);
    }
    if let Some(path) = &a.json {
        let json = serde_json::to_vec_pretty(&serde_json::json!({
            "tool": "wgtune",
            "version": env!("CARGO_PKG_VERSION"),
            "backend": backend.description,
            "model": model_desc,
            "batch": a.batch,
            "seq": seq,
            "iters": a.iters,
            "results": results,
        }))?;
        crate::app::files::write_atomic(path, &json)?;
    }
    Ok(())
}
