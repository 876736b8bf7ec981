//! The training step shared by every front end: forward and backward over the micro-batches of one
//! optimizer step (gradient accumulation, token-weighted), NaN guard, global-norm clipping,
//! scheduled AdamW on the adapter tensors, and checkpoints that resume bit-exactly. Async and free
//! of file access so the same code runs in a browser; the front end decides what to write where.

use super::data::Batch;
use super::optim::{AdamW, AdamWConfig, Moments, Schedule, global_norm, learning_rate};
use crate::adapters::{self, AdapterConfig};
use crate::model::decoder::Decoder;
use crate::model::{ModelError, read_f32};
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Optimisation settings of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// Schedule after warm-up.
    pub schedule: Schedule,
    /// Linear warm-up steps.
    pub warmup_steps: usize,
    /// Total optimizer steps (the schedule's horizon).
    pub total_steps: usize,
    /// Clip the global gradient norm to this (0 disables).
    pub max_grad_norm: f64,
    /// AdamW settings.
    pub adamw: AdamWConfig,
    /// Seed of dropout (per step) and of data order.
    pub seed: u64,
}

/// What one optimizer step measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// 1-based optimizer step.
    pub step: u64,
    /// Token-weighted mean loss over the step's micro-batches.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Input tokens processed (unpadded).
    pub tokens: usize,
}

/// Training failures.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The model refused the batch.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Loss or gradient norm is NaN/inf: the step is not applied.
    #[error("non-finite {what} ({value}) at step {step}: the update was not applied")]
    NonFinite {
        /// `loss` or `gradient norm`.
        what: &'static str,
        /// The value seen.
        value: f64,
        /// Step that failed.
        step: u64,
    },
    /// The adapter or optimizer state holds NaN/inf: it is not worth a checkpoint.
    #[error("{tensor} holds non-finite values after step {step}: no checkpoint written")]
    NonFiniteState {
        /// First tensor found non-finite.
        tensor: String,
        /// Step the state belongs to.
        step: u64,
    },
    /// A checkpoint does not fit this run.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// Nothing to learn from.
    #[error("a step needs at least one scored token")]
    EmptyStep,
}

/// A model with adapters plus the optimizer state: everything a step and a checkpoint need.
pub struct Trainer {
    /// The network (on an autodiff device) with adapters attached.
    pub model: Decoder,
    /// The adapters' configuration (for saving in peft format).
    pub adapter: AdapterConfig,
    /// Run settings.
    pub config: TrainConfig,
    /// AdamW state.
    pub optimizer: AdamW,
    /// Optional per-tensor update masks (1 = trainable element), in parameter order.
    pub masks: Option<Vec<Tensor<2>>>,
    /// Optional profiler: when set, each step waits for the device at the end of the forward,
    /// backward and optimizer phases (async readbacks of a few values) and reports each phase, so
    /// a front end can time them. Off in training (the waits cost throughput).
    pub profiler: Option<PhaseHook>,
}

/// A phase of a training step, reported to [`Trainer::profiler`] once the device finished it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Forward pass and loss.
    Forward,
    /// Backward pass (adapter gradients ready).
    Backward,
    /// Clipping and the AdamW update.
    Optimizer,
}

/// Called with each finished [`Phase`] (the front end reads its clock and memory counters).
pub type PhaseHook = Box<dyn FnMut(Phase) + Send>;

fn scalar_mismatch(what: &str) -> TrainError {
    TrainError::Checkpoint(format!("{what} does not match this run"))
}

impl Trainer {
    /// A trainer over `model`, whose adapters must already be attached.
    pub fn new(model: Decoder, adapter: AdapterConfig, config: TrainConfig) -> Self {
        let optimizer = AdamW::new(config.adamw);
        Self {
            model,
            adapter,
            config,
            optimizer,
            masks: None,
            profiler: None,
        }
    }

    /// Wait for the device (an async readback of `t`'s first value), then report `phase`.
    async fn mark(&mut self, phase: Phase, t: Tensor<2>) -> Result<(), TrainError> {
        if let Some(hook) = self.profiler.as_mut() {
            read_f32(t.slice([0..1, 0..1])).await?;
            hook(phase);
        }
        Ok(())
    }

    /// Completed optimizer steps.
    pub fn step_count(&self) -> u64 {
        self.optimizer.step
    }

    /// One optimizer step over `micro` (gradient accumulation over its batches).
    pub async fn step(&mut self, micro: &[Batch]) -> Result<StepMetrics, TrainError> {
        let step = self.optimizer.step + 1;
        let scored: usize = micro.iter().map(|b| b.scored).sum();
        if scored == 0 {
            return Err(TrainError::EmptyStep);
        }
        adapters::for_each_adapter(&mut self.model, |a| {
            a.prepare();
            a.set_training(true);
        });
        self.model
            .device()
            .seed(self.config.seed.wrapping_mul(1_000_003).wrapping_add(step));
        adapters::track_gradients(&mut self.model);
        let params: Vec<Tensor<2>> = adapters::named_parameters(&self.model)
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        let mut grads: Vec<Option<Tensor<2>>> = vec![None; params.len()];
        let mut loss_total: Option<Tensor<1>> = None;
        for batch in micro {
            let (loss, count) = self.model.chunked_loss(&batch.input_ids, &batch.labels)?;
            let weighted = loss.mul_scalar(count as f64 / scored as f64);
            self.mark(
                Phase::Forward,
                weighted.clone().detach().inner().unsqueeze(),
            )
            .await?;
            let g = weighted.backward();
            let value = weighted.detach().inner();
            loss_total = Some(match loss_total.take() {
                Some(total) => total + value,
                None => value,
            });
            for (acc, p) in grads.iter_mut().zip(&params) {
                let gi = p.grad(&g).unwrap_or_else(|| p.clone().inner().zeros_like());
                *acc = Some(match acc.take() {
                    Some(a) => a + gi,
                    None => gi,
                });
            }
        }
        let grads: Vec<Tensor<2>> = grads.into_iter().flatten().collect();
        if let Some(first) = grads.first() {
            self.mark(Phase::Backward, first.clone()).await?;
        }
        // One readback for the whole step (not one per micro-batch).
        let loss_sum = match loss_total {
            Some(total) => read_f32(total).await?[0] as f64,
            None => return Err(TrainError::EmptyStep),
        };
        if !loss_sum.is_finite() {
            return Err(TrainError::NonFinite {
                what: "loss",
                value: loss_sum,
                step,
            });
        }
        let (lr, grad_norm) = self.apply_gradients(params, grads).await?;
        let tokens = micro.iter().map(|b| b.tokens).sum();
        Ok(StepMetrics {
            step,
            loss: loss_sum,
            lr,
            grad_norm,
            tokens,
        })
    }

    /// The update half of a step, shared by every objective (SFT here, GRPO in `par`): mask the
    /// gradients (no update and no decay outside the mask), check and clip the global norm, take
    /// the scheduled AdamW step and write the parameters back. Returns `(lr, grad_norm)`.
    pub async fn apply_gradients(
        &mut self,
        params: Vec<Tensor<2>>,
        mut grads: Vec<Tensor<2>>,
    ) -> Result<(f64, f64), TrainError> {
        let step = self.optimizer.step + 1;
        if let Some(m) = &self.masks {
            grads = grads
                .into_iter()
                .zip(m)
                .map(|(g, m)| g * m.clone())
                .collect();
        }
        let grad_norm = read_f32(global_norm(&grads)).await?[0] as f64;
        if !grad_norm.is_finite() {
            return Err(TrainError::NonFinite {
                what: "gradient norm",
                value: grad_norm,
                step,
            });
        }
        let max = self.config.max_grad_norm;
        if max > 0.0 && grad_norm > max {
            let coef = max / (grad_norm + 1e-6);
            grads = grads.into_iter().map(|g| g.mul_scalar(coef)).collect();
        }
        let c = &self.config;
        let lr = learning_rate(
            c.lr,
            c.schedule,
            (step - 1) as usize,
            c.warmup_steps,
            c.total_steps,
        );
        let mut inner: Vec<Tensor<2>> = params.into_iter().map(|p| p.inner()).collect();
        self.optimizer
            .update(&mut inner, &grads, self.masks.as_deref(), lr);
        for ((_, slot), new) in adapters::parameters_mut(&mut self.model)
            .into_iter()
            .zip(inner)
        {
            *slot = Tensor::from_inner(new);
        }
        if let Some((_, first)) = adapters::named_parameters(&self.model).into_iter().next() {
            self.mark(Phase::Optimizer, first.inner()).await?;
        }
        Ok((lr, grad_norm))
    }

    /// Token-weighted mean loss over `batches`, without gradients or dropout.
    pub async fn eval_loss(&mut self, batches: &[Batch]) -> Result<f64, TrainError> {
        let model = self.model.without_autodiff();
        let (mut total, mut count) = (0.0f64, 0usize);
        for b in batches {
            match model.chunked_loss(&b.input_ids, &b.labels) {
                Ok((loss, n)) => {
                    total += read_f32(loss.detach()).await?[0] as f64 * n as f64;
                    count += n;
                }
                Err(ModelError::NoLabels) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if count == 0 {
            return Err(TrainError::EmptyStep);
        }
        Ok(total / count as f64)
    }

    /// Checkpoint bytes (safetensors): adapter tensors, AdamW moments and the step in metadata.
    /// Refuses a state with NaN/inf anywhere, so a checkpoint on disk is always a good one.
    pub async fn checkpoint(&self) -> Result<Vec<u8>, TrainError> {
        let mut out = BTreeMap::new();
        let named = adapters::named_parameters(&self.model);
        let step = self.optimizer.step;
        let mut put = |key: String, shape: Vec<usize>, values: Vec<f32>| {
            if values.iter().any(|x| !x.is_finite()) {
                return Err(TrainError::NonFiniteState { tensor: key, step });
            }
            out.insert(key, (shape, values));
            Ok(())
        };
        for (i, (key, p)) in named.into_iter().enumerate() {
            let shape = p.dims().to_vec();
            put(format!("param/{key}"), shape.clone(), read_f32(p).await?)?;
            if let Some(mom) = self.optimizer.moments.get(i) {
                put(
                    format!("adam_m/{key}"),
                    shape.clone(),
                    read_f32(mom.m.clone()).await?,
                )?;
                put(
                    format!("adam_v/{key}"),
                    shape,
                    read_f32(mom.v.clone()).await?,
                )?;
            }
        }
        let meta = HashMap::from([
            ("format".to_string(), "wgtune-checkpoint-1".to_string()),
            ("step".to_string(), self.optimizer.step.to_string()),
        ]);
        crate::io::safetensors::serialize_f32(&out, Some(meta))
            .map_err(|e| TrainError::Checkpoint(e.to_string()))
    }

    /// Restore adapter tensors, moments and step from [`Trainer::checkpoint`] bytes.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), TrainError> {
        let bad = |e: String| TrainError::Checkpoint(e);
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
        let info = meta.metadata().clone().unwrap_or_default();
        if info.get("format").map(String::as_str) != Some("wgtune-checkpoint-1") {
            return Err(bad("not a wgtune checkpoint".into()));
        }
        let step: u64 = info
            .get("step")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("no step".into()))?;
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
        let device = self.model.device();
        let load = |name: &str, want: [usize; 2]| -> Result<Tensor<2>, TrainError> {
            let view = st.tensor(name).map_err(|_| scalar_mismatch(name))?;
            if view.shape() != want {
                return Err(scalar_mismatch(name));
            }
            let v: Vec<f32> = bytemuck::pod_collect_to_vec(view.data());
            Ok(Tensor::from_data(TensorData::new(v, want), &device).inner())
        };
        let mut moments = Vec::new();
        let mut params = Vec::new();
        for (key, p) in adapters::named_parameters(&self.model) {
            let shape: [usize; 2] = p.dims();
            params.push(load(&format!("param/{key}"), shape)?);
            if step > 0 {
                moments.push(Moments {
                    m: load(&format!("adam_m/{key}"), shape)?,
                    v: load(&format!("adam_v/{key}"), shape)?,
                });
            }
        }
        for ((_, slot), new) in adapters::parameters_mut(&mut self.model)
            .into_iter()
            .zip(params)
        {
            *slot = Tensor::from_inner(new);
        }
        self.optimizer.moments = moments;
        self.optimizer.step = step;
        Ok(())
    }
}
