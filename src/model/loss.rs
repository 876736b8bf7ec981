//! The causal-LM loss as transformers computes it (mean cross-entropy of `logits[t]` against
//! `labels[t+1]` over labels that are not -100), in two forms with the same value:
//! [`causal_lm_loss`] on full logits (every gradient, including the head's), and
//! [`chunked_causal_lm_loss`] ([`Decoder::chunked_loss`]) for training adapters, which never
//! holds the `[B, T, V]` logits:
//! it scores only labelled positions, a chunk of rows at a time, and hands autodiff the exact
//! gradient with respect to the final hidden states. With Gemma 3's 262 144-token vocabulary
//! the plain path needs 2.1 GB for the logits of a 4×512 batch and as much again for their
//! gradient; the chunked path holds one chunk's logits at a time.

use super::ModelError;
use super::decoder::{Decoder, softcap};
use super::vocab::{VocabMatrix, logit_rows};
use burn::tensor::{Int, Tensor, TensorData};

/// Rows per chunk of the chunked loss (a `[CHUNK, V]` block of logits at a time).
pub const CHUNK_ROWS: usize = 256;

/// The scored positions of a batch: flat row `b·T + t` of the input (the position whose logits
/// predict `labels[b][t+1]`) and its target id.
struct Targets {
    rows: Vec<i64>,
    ids: Vec<i64>,
}

/// Check `labels` against the batch shape and vocabulary, and list the scored positions.
fn targets(labels: &[Vec<i64>], b: usize, t: usize, v: usize) -> Result<Targets, ModelError> {
    if labels.len() != b || labels.iter().any(|r| r.len() != t) {
        return Err(ModelError::Input(
            "labels must have the shape of the input ids".into(),
        ));
    }
    if t < 2 {
        return Err(ModelError::NoLabels);
    }
    let mut out = Targets {
        rows: Vec::new(),
        ids: Vec::new(),
    };
    for (bi, row) in labels.iter().enumerate() {
        for (ti, &y) in row[1..].iter().enumerate() {
            if y == -100 {
                continue;
            }
            if !(0..v as i64).contains(&y) {
                return Err(ModelError::TokenOutOfRange { id: y, vocab: v });
            }
            out.rows.push((bi * t + ti) as i64);
            out.ids.push(y);
        }
    }
    if out.rows.is_empty() {
        return Err(ModelError::NoLabels);
    }
    Ok(out)
}

/// `log_softmax` over dim 1, shifted by the row maximum first so every `exp` is at most 1. The
/// maximum is detached: the value is shift-invariant, so the gradient is exact without
/// differentiating through it. (Only the full-logits path uses it; on wgpu, reductions over a
/// 262 144-wide row returned infinities under load even shifted, which is why the chunked loss
/// never reduces over more than one vocabulary shard.)
fn log_softmax_rows(z: Tensor<2>) -> Tensor<2> {
    let shifted = z.clone() - z.max_dim(1).detach();
    shifted.clone() - shifted.exp().sum_dim(1).log()
}

/// HF's causal-LM loss on full logits `[B, T, V]`: mean over positions `t` with
/// `labels[t+1] != -100` of `CE(logits[t], labels[t+1])`. Returns the loss `[1]` and the number
/// of counted tokens.
pub fn causal_lm_loss(
    logits: Tensor<3>,
    labels: &[Vec<i64>],
) -> Result<(Tensor<1>, usize), ModelError> {
    let [b, t, v] = logits.dims();
    let tg = targets(labels, b, t, v)?;
    let n = tg.rows.len();
    let device = logits.device();
    let rows = Tensor::<1, Int>::from_data(TensorData::new(tg.rows, [n]), &device);
    let ids = Tensor::<2, Int>::from_data(TensorData::new(tg.ids, [n, 1]), &device);
    let logp = log_softmax_rows(logits.reshape([b * t, v]).select(0, rows));
    let loss = logp.gather(1, ids).sum().neg().div_scalar(n as f64);
    Ok((loss, n))
}

impl Decoder {
    /// The causal-LM loss of `ids` against `labels`, equal in value to [`causal_lm_loss`] on
    /// [`Decoder::forward`]'s logits, without materialising them (see [`chunked_causal_lm_loss`]).
    /// The head and embedding get no gradient through it: use this only where they are frozen
    /// (adapter training).
    pub fn chunked_loss(
        &self,
        ids: &[Vec<u32>],
        labels: &[Vec<i64>],
    ) -> Result<(Tensor<1>, usize), ModelError> {
        self.chunked_loss_by(ids, labels, CHUNK_ROWS)
    }

    /// [`Decoder::chunked_loss`] with `chunk_rows` rows of logits at a time (at least 1).
    pub fn chunked_loss_by(
        &self,
        ids: &[Vec<u32>],
        labels: &[Vec<i64>],
        chunk_rows: usize,
    ) -> Result<(Tensor<1>, usize), ModelError> {
        let hidden = self.hidden_states(ids, None)?;
        let cap = self.config.final_logit_softcapping;
        chunked_causal_lm_loss(hidden, self.head(), cap, labels, chunk_rows)
    }
}

/// The causal-LM loss of final hidden states `[B, T, hidden]` under a frozen `head` `[V, hidden]`
/// (logits `cap·tanh(h·headᵀ/cap)` when `cap` is set), chunk by chunk: for each `chunk_rows`
/// scored positions the logits are computed on the inner backend, and the loss's gradient with
/// respect to the hidden states, `(softmax − onehot)·head / N` (times the softcap's derivative),
/// is accumulated there. The returned tensor is `Σ h·G − stop(Σ h·G) + loss`: its value is the
/// loss and its gradient reaches everything below the head; the head gets none.
pub fn chunked_causal_lm_loss(
    hidden: Tensor<3>,
    head: &VocabMatrix,
    cap: Option<f64>,
    labels: &[Vec<i64>],
    chunk_rows: usize,
) -> Result<(Tensor<1>, usize), ModelError> {
    let [b, t, h] = hidden.dims();
    let v = head.dims()[0];
    // Never more logits at once than one storage binding holds (see `vocab`).
    let chunk_rows = chunk_rows.min(logit_rows(v)).max(1);
    let tg = targets(labels, b, t, v)?;
    let n = tg.rows.len();
    let device = hidden.device();
    let rows = Tensor::<1, Int>::from_data(TensorData::new(tg.rows, [n]), &device);
    let scored = hidden.reshape([b * t, h]).select(0, rows);
    // Without a tracked graph (evaluation) only the value is needed: no gradient products.
    let tracked = scored.is_tracked();
    let x = scored.clone().inner();
    let head = head.inner();
    let mut grads = Vec::with_capacity(n.div_ceil(chunk_rows));
    let mut total: Option<Tensor<1>> = None;
    for start in (0..n).step_by(chunk_rows) {
        let end = (start + chunk_rows).min(n);
        let c = end - start;
        let xc = x.clone().slice([start..end, 0..h]);
        // Logits shard by shard ([c, V_i] each, never a [c, V] block), and the log-sum-exp over
        // all of them streamed: lse = m + log Σ_i Σ_j exp(z_ij − m) with m the detached row max
        // (shift-invariant, so the gradient stays exact). burn's own log_softmax over Gemma 3's
        // 262 144 columns returned infinities on wgpu; no reduction here spans more than a shard.
        let z: Vec<Tensor<2>> = head
            .shard_products(xc.clone())
            .into_iter()
            .map(|zi| softcap(zi, cap))
            .collect();
        let m = z
            .iter()
            .map(|zi| zi.clone().max_dim(1))
            .reduce(Tensor::max_pair)
            .expect("at least one shard")
            .detach();
        let sum_exp = z
            .iter()
            .map(|zi| (zi.clone() - m.clone()).exp().sum_dim(1))
            .reduce(|a, b| a + b)
            .expect("at least one shard");
        let lse = m + sum_exp.log();
        // The target logits: x · head[target]ᵀ, from the target rows alone.
        let ids = Tensor::<2, Int>::from_data(
            TensorData::new(tg.ids[start..end].to_vec(), [1, c]),
            &device,
        )
        .inner();
        let w_t = head.embed(ids).reshape([c, h]);
        let z_t = softcap((xc * w_t.clone()).sum_dim(1), cap);
        let nll = (lse.clone() - z_t.clone()).sum();
        total = Some(match total {
            Some(s) => s + nll,
            None => nll,
        });
        if !tracked {
            continue;
        }
        // dL/dh = (Σ_i (softmax_i ⊙ slope_i) · W_i − slope_t · W_t) / N, where the softcap's
        // slope is d(cap·tanh(z/cap))/dz = 1 − (logit/cap)² (1 without a cap).
        let slope =
            |zi: Tensor<2>| cap.map(|cap| zi.div_scalar(cap).square().neg().add_scalar(1.0));
        let mut g = w_t.neg();
        if let Some(s) = slope(z_t) {
            g = g * s;
        }
        for (zi, w) in z.into_iter().zip(head.shards()) {
            let mut p = (zi.clone() - lse.clone()).exp();
            if let Some(s) = slope(zi) {
                p = p * s;
            }
            g = g + p.matmul(w.clone());
        }
        grads.push(g.div_scalar(n as f64));
    }
    let loss = total.expect("at least one scored row").div_scalar(n as f64);
    if !tracked {
        return Ok((loss, n));
    }
    let g = Tensor::cat(grads, 0);
    let surrogate = (scored * g).sum();
    Ok((surrogate.clone() - surrogate.detach() + loss, n))
}
