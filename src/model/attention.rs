//! Self-attention as transformers computes it for every supported decoder: optional per-head q/k
//! RMSNorm, rotate_half RoPE (with optional Llama-3 frequency scaling), grouped-query attention,
//! causal softmax (optionally through a sliding window), and the KV cache used for generation.

use super::config::RopeScaling;
use super::decoder::RmsNorm;
use super::linear::AdaptedLinear;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData, activation::softmax};

/// RoPE inverse frequencies exactly as transformers computes them in f32, including Llama-3
/// scaling (`_compute_llama3_parameters`).
pub fn inv_freq(head_dim: usize, theta: f64, scaling: Option<&RopeScaling>) -> Vec<f32> {
    let base = theta as f32;
    let freqs = (0..head_dim / 2).map(|j| 1.0f32 / base.powf((2 * j) as f32 / head_dim as f32));
    let Some(s) = scaling else {
        return freqs.collect();
    };
    let (factor, low, high, old) = (
        s.factor as f32,
        s.low_freq_factor as f32,
        s.high_freq_factor as f32,
        s.original_max_position_embeddings as f32,
    );
    let low_wavelen = old / low;
    let high_wavelen = old / high;
    freqs
        .map(|f| {
            let wavelen = 2.0 * std::f32::consts::PI / f;
            let scaled = if wavelen > low_wavelen { f / factor } else { f };
            let smooth = (old / wavelen - low) / (high - low);
            let smoothed = (1.0 - smooth) * scaled / factor + smooth * scaled;
            let medium = (high_wavelen..=low_wavelen).contains(&wavelen);
            if medium { smoothed } else { scaled }
        })
        .collect()
}

/// cos/sin tables `[T, head_dim]` (as `cat(ang, ang)`) for positions `start..start+len`.
pub fn rope_tables(
    inv_freq: &[f32],
    start: usize,
    len: usize,
    device: &Device,
) -> (Tensor<2>, Tensor<2>) {
    let d = inv_freq.len() * 2;
    let mut cos = Vec::with_capacity(len * d);
    let mut sin = Vec::with_capacity(len * d);
    for t in start..start + len {
        for _ in 0..2 {
            for &f in inv_freq {
                let a = t as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
    }
    (
        Tensor::from_data(TensorData::new(cos, [len, d]), device),
        Tensor::from_data(TensorData::new(sin, [len, d]), device),
    )
}

/// `x·cos + rotate_half(x)·sin` for `x` of shape `[B, H, T, D]`.
fn apply_rope(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let [b, h, t, d] = x.dims();
    let first = x.clone().slice([0..b, 0..h, 0..t, 0..d / 2]);
    let second = x.clone().slice([0..b, 0..h, 0..t, d / 2..d]);
    let rotated = Tensor::cat(vec![second.neg(), first], 3);
    x * cos.clone() + rotated * sin.clone()
}

/// Cached keys and values of one layer, `[B, KV, T, D]` each.
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    kv: Option<(Tensor<4>, Tensor<4>)>,
}

impl LayerCache {
    /// Keep only the batch rows `rows` (in that order), dropping the others.
    pub fn select_rows(&mut self, rows: &[usize]) {
        if let Some((k, v)) = self.kv.take() {
            let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
            let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [rows.len()]), &k.device());
            self.kv = Some((k.select(0, idx.clone()), v.select(0, idx)));
        }
    }
}

/// Per-forward context shared by all layers of one kind: RoPE tables and the causal mask.
pub struct AttnContext {
    /// cos `[1, 1, T, D]`, or `[B, 1, T, D]` when rows are left-padded.
    pub cos: Tensor<4>,
    /// sin, shaped as `cos`.
    pub sin: Tensor<4>,
    /// `true` where a query may NOT attend to a key: `[1, 1, T, past + T]`, or
    /// `[B, 1, T, past + T]` when rows are left-padded.
    pub mask: Option<Tensor<4, Bool>>,
}

impl AttnContext {
    /// Tables for `len` new positions after `past` cached ones; with `window`, query `i` sees
    /// key `j` only when `0 <= i - j < window` (transformers' sliding-window causal mask).
    ///
    /// `pads` (empty, or one entry per batch row) is the number of left-padding columns of each
    /// row: row `b`'s column `c` holds position `c - pads[b]`, so its RoPE angles are those of an
    /// unpadded run, and its real queries never see its padding keys. A padding query sees only
    /// itself (its output is never used; attending to nothing would give NaN, and `0·NaN` would
    /// leak into the real rows through the value matmul). All-zero `pads` give exactly the
    /// unpadded tables and mask.
    pub fn new(
        inv_freq: &[f32],
        past: usize,
        len: usize,
        window: Option<usize>,
        pads: &[usize],
        device: &Device,
    ) -> Self {
        let d = inv_freq.len() * 2;
        let total = past + len;
        if pads.iter().all(|&p| p == 0) {
            let (cos, sin) = rope_tables(inv_freq, past, len, device);
            let windowed = window.is_some_and(|w| total > w);
            let mask = (len > 1 || windowed).then(|| {
                let blocked: Vec<bool> = (0..len)
                    .flat_map(|i| {
                        (0..total).map(move |j| {
                            let q = past + i;
                            j > q || window.is_some_and(|w| q - j >= w)
                        })
                    })
                    .collect();
                Tensor::<4, Bool>::from_data(TensorData::new(blocked, [1, 1, len, total]), device)
            });
            return Self {
                cos: cos.reshape([1, 1, len, d]),
                sin: sin.reshape([1, 1, len, d]),
                mask,
            };
        }
        let b = pads.len();
        let mut cos = Vec::with_capacity(b * len * d);
        let mut sin = Vec::with_capacity(b * len * d);
        let mut blocked = Vec::with_capacity(b * len * total);
        for &pad in pads {
            for i in 0..len {
                let q = past + i;
                let pos = q.saturating_sub(pad);
                for _ in 0..2 {
                    for &f in inv_freq {
                        let a = pos as f32 * f;
                        cos.push(a.cos());
                        sin.push(a.sin());
                    }
                }
                blocked.extend(
                    (0..total).map(|j| {
                        j > q || (j < pad && j != q) || window.is_some_and(|w| q - j >= w)
                    }),
                );
            }
        }
        Self {
            cos: Tensor::<4>::from_data(TensorData::new(cos, [b, 1, len, d]), device),
            sin: Tensor::<4>::from_data(TensorData::new(sin, [b, 1, len, d]), device),
            mask: Some(Tensor::<4, Bool>::from_data(
                TensorData::new(blocked, [b, 1, len, total]),
                device,
            )),
        }
    }
}

/// Multi-head self-attention with grouped KV heads, optional biases (in the projections) and
/// optional per-head q/k norms.
#[derive(Debug)]
pub struct Attention {
    /// Query projection `[H·D, hidden]`.
    pub q_proj: AdaptedLinear,
    /// Key projection `[KV·D, hidden]`.
    pub k_proj: AdaptedLinear,
    /// Value projection `[KV·D, hidden]`.
    pub v_proj: AdaptedLinear,
    /// Output projection `[hidden, H·D]`.
    pub o_proj: AdaptedLinear,
    /// Query heads H.
    pub n_heads: usize,
    /// Key/value heads KV (H is a multiple of KV).
    pub n_kv_heads: usize,
    /// Per-head dimension D.
    pub head_dim: usize,
    /// RMSNorm over each query head before RoPE (Qwen3, Gemma 3).
    pub q_norm: Option<RmsNorm>,
    /// RMSNorm over each key head before RoPE.
    pub k_norm: Option<RmsNorm>,
    /// Factor on `q·kᵀ` (`head_dim^-½`, or Gemma's `query_pre_attn_scalar^-½`).
    pub scale: f64,
}

impl Attention {
    /// `x` `[B, T, hidden]` → `[B, T, hidden]`, appending to `cache` when given.
    pub fn forward(
        &self,
        x: Tensor<3>,
        ctx: &AttnContext,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (h, kv, d) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let heads = |y: Tensor<3>, n: usize, norm: &Option<RmsNorm>| {
            let y = y.reshape([b, t, n, d]).swap_dims(1, 2);
            match norm {
                Some(norm) => norm.forward(y),
                None => y,
            }
        };
        let q = heads(self.q_proj.forward(x.clone()), h, &self.q_norm);
        let q = apply_rope(q, &ctx.cos, &ctx.sin);
        let k = heads(self.k_proj.forward(x.clone()), kv, &self.k_norm);
        let mut k = apply_rope(k, &ctx.cos, &ctx.sin);
        let mut v = heads(self.v_proj.forward(x), kv, &None);
        if let Some(cache) = cache {
            if let Some((pk, pv)) = cache.kv.take() {
                k = Tensor::cat(vec![pk, k], 2);
                v = Tensor::cat(vec![pv, v], 2);
            }
            cache.kv = Some((k.clone(), v.clone()));
        }
        let total = k.dims()[2];
        let groups = h / kv;
        let repeat = |y: Tensor<4>| {
            if groups == 1 {
                y
            } else {
                y.unsqueeze_dim::<5>(2)
                    .repeat_dim(2, groups)
                    .reshape([b, h, total, d])
            }
        };
        let (k, v) = (repeat(k), repeat(v));
        let mut scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(self.scale);
        if let Some(mask) = &ctx.mask {
            scores = scores.mask_fill(mask.clone().expand([b, h, t, total]), f32::NEG_INFINITY);
        }
        let out = softmax(scores, 3).matmul(v);
        self.o_proj
            .forward(out.swap_dims(1, 2).reshape([b, t, h * d]))
    }
}
