//! `wgtune bench --loss-memory`: peak memory of the causal-LM loss and its backward over a frozen
//! head, the plain path on full `[B, T, V]` logits vs the chunked path training uses
//! ([`crate::model::loss::chunked_causal_lm_loss`]). Both get the same random hidden states,
//! head and labels; the rest of a training step is the same for both, so this isolates what the
//! chunked loss saves. Memory is the process's peak resident set above what it held before
//! (`VmHWM`, reset through `/proc/self/clear_refs` on Linux) and, on wgpu, the device pool's
//! bytes in use after the backward.

use super::{reset_peak_rss, status_bytes};
use crate::model::loss::{CHUNK_ROWS, causal_lm_loss, chunked_causal_lm_loss};
use crate::model::read_f32;
use crate::model::vocab::VocabMatrix;
use anyhow::Result;
use burn::tensor::{Device, Distribution, Tensor};
use std::time::Instant;

/// One loss path's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LossMemory {
    /// `full` (logits materialised) or `chunked`.
    pub loss: String,
    /// Vocabulary V.
    pub vocab: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Scored positions (batch · (seq − 1)).
    pub rows: usize,
    /// Peak resident memory above the starting point, bytes (Linux; `None` elsewhere).
    pub peak_rss_bytes: Option<u64>,
    /// Device pool bytes in use right after the backward (wgpu; `None` on the CPU backend).
    pub device_bytes: Option<u64>,
    /// Wall seconds of loss + backward + reading the gradient back.
    pub secs: f64,
    /// The loss value (both paths must agree).
    pub value: f32,
}

/// Measure both loss paths on `batch × seq` positions of a `vocab × hidden` head.
pub fn bench_loss_memory(
    device: &Device,
    vocab: usize,
    hidden: usize,
    batch: usize,
    seq: usize,
) -> Result<Vec<LossMemory>> {
    let head = Tensor::<2>::random([vocab, hidden], Distribution::Normal(0.0, 0.02), device);
    let states = Tensor::<3>::random([batch, seq, hidden], Distribution::Normal(0.0, 1.0), device);
    let labels: Vec<Vec<i64>> = (0..batch)
        .map(|b| {
            (0..seq)
                .map(|t| ((b * seq + t) * 7919 % vocab) as i64)
                .collect()
        })
        .collect();
    let mut out = Vec::new();
    for loss_kind in ["full", "chunked"] {
        device.memory_cleanup();
        let h = Tensor::from_inner(states.clone()).require_grad();
        reset_peak_rss();
        let start_rss = status_bytes("VmRSS");
        let t0 = Instant::now();
        let (loss, rows) = match loss_kind {
            "full" => {
                let logits = h
                    .clone()
                    .reshape([batch * seq, hidden])
                    .matmul(head.clone().transpose())
                    .reshape([batch, seq, vocab]);
                causal_lm_loss(logits, &labels)?
            }
            _ => chunked_causal_lm_loss(
                h.clone(),
                &VocabMatrix::from_tensor(head.clone()),
                None,
                &labels,
                CHUNK_ROWS,
            )?,
        };
        let value = pollster::block_on(read_f32(loss.clone().detach()))?[0];
        let grads = loss.backward();
        let grad = h.grad(&grads).expect("hidden states are tracked");
        pollster::block_on(read_f32(grad))?;
        let device_bytes = device.memory_pool_usage().map(|u| u.bytes_in_use);
        let secs = t0.elapsed().as_secs_f64();
        let peak = status_bytes("VmHWM");
        out.push(LossMemory {
            loss: loss_kind.into(),
            vocab,
            hidden,
            rows,
            peak_rss_bytes: peak.zip(start_rss).map(|(p, s)| p.saturating_sub(s)),
            device_bytes,
            secs,
            value,
        });
    }
    Ok(out)
}
