//! `wgtune train --init loftq`: LoftQ on the host before the model is built. Every target linear's
//! base becomes LoftQ's NF4 `Q` and its LoRA pair LoftQ's `A`, `B`; the other decoder-block linears
//! become plain NF4. The quantized base is written as a bitsandbytes 4-bit HF folder, because an
//! adapter initialised this way belongs to that base, not to the original weights.

use super::files::{DirSource, model_source};
use super::quantize::write_nf4_folder;
use crate::adapters::lora::{Lora, LoraConfig};
use crate::adapters::{AdapterConfig, AdapterError, Method, for_each_target};
use crate::model::linear::Adapter;
use crate::model::loader::{LoadedModel, ModelFiles, build_decoder, read_model};
use crate::model::weights::HostData;
use crate::quant::bnb::is_quantized_by_default;
use crate::quant::loftq::{LoftqInit, loftq_init, low_rank_product};
use crate::quant::nf4::{dequantize_nf4, quantize_nf4_shaped};
use anyhow::{Result, anyhow, bail};
use burn::tensor::{Device, Tensor, TensorData};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// A model whose target linears were LoftQ-initialised, with the LoRA pairs still to attach.
pub struct LoftqModel {
    /// The model on the device (its decoder linears NF4, targets holding `Q`).
    pub lm: LoadedModel,
    /// The LoRA pair per module path (`model.layers.0.self_attn.q_proj`): `(A [r, in], B [out, r])`,
    /// with `B` already divided by the LoRA scale.
    pub pairs: BTreeMap<String, (Vec<f32>, Vec<f32>)>,
    /// The quantized base, to write beside the adapter once the run has validated.
    pub base: LoftqBase,
}

/// LoftQ's quantized base on the host (NF4 checkpoint, config, tokenizer), not yet on disk.
pub struct LoftqBase {
    files: ModelFiles,
}

impl LoftqBase {
    /// Write the base as a bitsandbytes NF4 HF folder at `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_nf4_folder(&self.files, false, dir)?;
        eprintln!(
            "LoftQ base (NF4, bitsandbytes layout) written to {}: use it as --model with this adapter",
            dir.display()
        );
        Ok(())
    }
}

/// Read the model at `path`, run LoftQ (`iters` rounds) on every target linear of `cfg` and upload
/// the model to `device`; the quantized base comes back to be written with [`LoftqBase::write`].
///
/// peft writes `B·A` equal to the residual, which is exact only when the scale `lora_alpha / r`
/// (or `/ √r` with rsLoRA) is 1. Here `B` is divided by the scale, so `W ≈ Q + scale·B·A` holds
/// for any alpha; a note says so when the scale is not 1.
pub fn load_loftq(
    path: &Path,
    device: &Device,
    cfg: &AdapterConfig,
    iters: usize,
) -> Result<LoftqModel> {
    let Method::Lora(lora) = &cfg.method else {
        bail!("init loftq needs a LoRA method");
    };
    let mut dir: Option<DirSource> = None;
    let mut files = read_model(model_source(path, &mut dir)?)?;
    let origin = files.checkpoint.origin.clone();
    let started = Instant::now();
    let jobs = target_jobs(&files, cfg, &origin)?;
    let results = run_parallel(&jobs, lora.r, iters);
    let scale = lora.scale();
    let mut pairs = BTreeMap::new();
    let (mut err_loftq, mut err_nf4, mut norm) = (0f64, 0f64, 0f64);
    for ((name, shape, w), res) in jobs.iter().zip(results) {
        let init = res.map_err(|e| anyhow!("{origin}: {name}: {e}"))?;
        let (e_l, e_q, n) = squared_errors(w, &init)?;
        err_loftq += e_l;
        err_nf4 += e_q;
        norm += n;
        let b: Vec<f32> = init
            .lora_b
            .iter()
            .map(|&x| (x as f64 / scale) as f32)
            .collect();
        let module = name.strip_suffix(".weight").unwrap_or(name).to_string();
        pairs.insert(module, (init.lora_a, b));
        if let Some(t) = files.checkpoint.tensors.get_mut(name) {
            debug_assert_eq!(&t.shape, shape);
            t.data = HostData::Nf4(init.q);
        }
    }
    // The other decoder-block linears: plain NF4 (GGUF-quantized ones too, so that the base
    // trained on is exactly the base written).
    for (name, t) in files.checkpoint.tensors.iter_mut() {
        if is_quantized_by_default(name) && !matches!(t.data, HostData::Nf4(_)) {
            let v = t.to_f32().map_err(|e| anyhow!("{origin}: {name}: {e}"))?;
            t.data = HostData::Nf4(
                quantize_nf4_shaped(&v, &t.shape, 64).map_err(|e| anyhow!("{name}: {e}"))?,
            );
        }
    }
    eprintln!(
        "LoftQ ({iters} iteration{}, r {}) on {} linears in {:.1}s: ||W - (Q + s·B·A)|| / ||W|| = {:.5} (plain NF4: {:.5})",
        if iters == 1 { "" } else { "s" },
        lora.r,
        jobs.len(),
        started.elapsed().as_secs_f64(),
        (err_loftq / norm.max(f64::MIN_POSITIVE)).sqrt(),
        (err_nf4 / norm.max(f64::MIN_POSITIVE)).sqrt(),
    );
    if (scale - 1.0).abs() > 1e-12 {
        eprintln!(
            "note: LoRA scale {scale} is not 1: B is divided by it so that W ≈ Q + scale·B·A (peft's loftq_init writes B·A unscaled, exact only when lora_alpha == r)"
        );
    }
    let model = build_decoder(&files.config, &files.checkpoint, device)?;
    Ok(LoftqModel {
        lm: LoadedModel {
            model,
            tokenizer: files.tokenizer.clone(),
            chat_template: files.chat_template.clone(),
        },
        pairs,
        base: LoftqBase { files },
    })
}

type Job = (String, Vec<usize>, Vec<f32>);

/// The target linears in checkpoint order, with their full-precision values.
fn target_jobs(files: &ModelFiles, cfg: &AdapterConfig, origin: &str) -> Result<Vec<Job>> {
    let mut jobs = Vec::new();
    for (name, t) in &files.checkpoint.tensors {
        let Some(module) = name.strip_suffix(".weight") else {
            continue;
        };
        let short = module.rsplit('.').next().unwrap_or(module);
        if !is_quantized_by_default(name) || !cfg.target_modules.iter().any(|m| m == short) {
            continue;
        }
        if matches!(t.data, HostData::Nf4(_)) {
            bail!(
                "{origin}: {name} is already NF4; LoftQ needs the full-precision weights (use the original model)"
            );
        }
        if t.shape.len() != 2 {
            bail!(
                "{origin}: {name}: expected a matrix, got shape {:?}",
                t.shape
            );
        }
        let v = t.to_f32().map_err(|e| anyhow!("{origin}: {name}: {e}"))?;
        jobs.push((name.clone(), t.shape.clone(), v));
    }
    if jobs.is_empty() {
        bail!("{origin}: no target linear found for LoftQ");
    }
    Ok(jobs)
}

/// LoftQ for every job, on all cores.
fn run_parallel(jobs: &[Job], rank: usize, iters: usize) -> Vec<Result<LoftqInit, String>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(jobs.len())
        .max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut out: Vec<Option<Result<LoftqInit, String>>> = (0..jobs.len()).map(|_| None).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((_, shape, w)) = jobs.get(i) else {
                            break;
                        };
                        done.push((i, loftq_init(w, shape[0], shape[1], rank, iters)));
                    }
                    done
                })
            })
            .collect();
        for h in handles {
            match h.join() {
                Ok(done) => {
                    for (i, r) in done {
                        out[i] = Some(r);
                    }
                }
                Err(_) => {
                    // A worker panicked: its jobs stay `None` and are reported below.
                }
            }
        }
    });
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| Err("LoftQ worker failed".into())))
        .collect()
}

/// `(‖W − Q − B·A‖², ‖W − NF4(W)‖², ‖W‖²)` for the summary line (B·A unscaled, as LoftQ made it).
fn squared_errors(w: &[f32], init: &LoftqInit) -> Result<(f64, f64, f64)> {
    let (out_f, in_f) = (init.q.shape[0], init.q.shape[1]);
    let q = dequantize_nf4(&init.q)?;
    let ba = low_rank_product(&init.lora_b, &init.lora_a, out_f, init.rank, in_f);
    let plain = dequantize_nf4(&quantize_nf4_shaped(w, &init.q.shape, 64)?)?;
    let (mut e_l, mut e_q, mut n) = (0f64, 0f64, 0f64);
    for i in 0..w.len() {
        let x = w[i] as f64;
        e_l += (x - q[i] as f64 - ba[i] as f64).powi(2);
        e_q += (x - plain[i] as f64).powi(2);
        n += x * x;
    }
    Ok((e_l, e_q, n))
}

/// Attach the LoftQ pairs as LoRA adapters to every target projection of `model`.
pub fn attach_loftq(
    model: &mut crate::model::decoder::Decoder,
    cfg: &AdapterConfig,
    pairs: &mut BTreeMap<String, (Vec<f32>, Vec<f32>)>,
) -> Result<(), AdapterError> {
    cfg.validate()?;
    let Method::Lora(lora) = &cfg.method else {
        return Err(AdapterError::Invalid(
            "init loftq needs a LoRA method".into(),
        ));
    };
    let lora: &LoraConfig = lora;
    let device = model.device();
    for_each_target(
        model,
        cfg,
        |path, out_f, in_f| -> Result<Box<dyn Adapter>, AdapterError> {
            let (a, b) = pairs
                .remove(path)
                .ok_or_else(|| AdapterError::Invalid(format!("{path}: no LoftQ initialisation")))?;
            if a.len() != lora.r * in_f || b.len() != out_f * lora.r {
                return Err(AdapterError::Invalid(format!(
                    "{path}: LoftQ pair does not fit [{out_f}, {in_f}] at rank {}",
                    lora.r
                )));
            }
            Ok(Box::new(Lora::from_tensors(
                lora,
                Tensor::from_data(TensorData::new(a, [lora.r, in_f]), &device),
                Tensor::from_data(TensorData::new(b, [out_f, lora.r]), &device),
            )))
        },
    )
}
