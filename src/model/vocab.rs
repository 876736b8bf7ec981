//! The `[V, hidden]` vocabulary matrices — token embedding and output head — stored as row
//! shards. WebGPU binds at most 128 MiB per storage buffer by default (lavapipe and browsers
//! enforce it), and real vocabularies pass that in f32: Gemma 3's 262 144 × 640 embedding is
//! 640 MiB, Qwen2.5-0.5B's 545 MiB. On devices running our WGSL kernels (wgpu) the rows are
//! therefore split into shards of at most [`SHARD_BYTES`]; the CPU backend keeps one shard. The
//! embedding lookup and the head products work shard by shard, with results identical to the
//! unsharded matrix (each output element is computed from exactly one shard).

use burn::tensor::{Bool, Device, Int, Tensor, TensorData, module::embedding};

/// Largest shard of a vocabulary matrix on wgpu devices, in bytes (half WebGPU's default
/// 128 MiB storage-binding limit, leaving room for the products' outputs).
pub const SHARD_BYTES: usize = 64 << 20;

/// Largest `[rows, V]` block of logits computed at once on any device, in bytes (the chunked
/// loss and generation stay under the same binding limit).
pub const LOGITS_BYTES: usize = 64 << 20;

/// Rows of logits over a vocabulary of `v` that fit [`LOGITS_BYTES`] (at least 1).
pub fn logit_rows(v: usize) -> usize {
    (LOGITS_BYTES / (v.max(1) * 4)).max(1)
}

/// A `[V, hidden]` matrix as consecutive row shards.
#[derive(Debug, Clone)]
pub struct VocabMatrix {
    shards: Vec<Tensor<2>>,
    rows: usize,
    cols: usize,
}

impl VocabMatrix {
    /// Upload row-major `values` of `[rows, cols]` to `device`, sharded where the device runs
    /// our WGSL kernels (see the module doc).
    pub fn from_host(values: Vec<f32>, rows: usize, cols: usize, device: &Device) -> Self {
        let shard_rows = if crate::kernels::has_wgsl_kernels(device) {
            (SHARD_BYTES / (cols.max(1) * 4)).max(1)
        } else {
            rows.max(1)
        };
        Self::from_host_sharded(values, rows, cols, shard_rows, device)
    }

    /// [`Self::from_host`] with shards of `shard_rows` rows (the last may be shorter).
    pub fn from_host_sharded(
        values: Vec<f32>,
        rows: usize,
        cols: usize,
        shard_rows: usize,
        device: &Device,
    ) -> Self {
        let shard_rows = shard_rows.max(1);
        let shards = if rows <= shard_rows {
            vec![Tensor::from_data(
                TensorData::new(values, [rows, cols]),
                device,
            )]
        } else {
            values
                .chunks(shard_rows * cols)
                .map(|c| {
                    Tensor::from_data(TensorData::new(c.to_vec(), [c.len() / cols, cols]), device)
                })
                .collect()
        };
        Self { shards, rows, cols }
    }

    /// From one dense tensor (a single shard).
    pub fn from_tensor(t: Tensor<2>) -> Self {
        let [rows, cols] = t.dims();
        Self {
            shards: vec![t],
            rows,
            cols,
        }
    }

    /// `[V, hidden]`.
    pub fn dims(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// The shards, in row order.
    pub fn shards(&self) -> &[Tensor<2>] {
        &self.shards
    }

    /// The device the shards live on.
    pub fn device(&self) -> Device {
        self.shards[0].device()
    }

    /// Every shard marked as requiring a gradient (tests of the base gradients).
    pub fn require_grad(self) -> Self {
        Self {
            shards: self.shards.into_iter().map(Tensor::require_grad).collect(),
            ..self
        }
    }

    /// The same shards on the inner (non-autodiff) backend; shares device memory.
    pub fn inner(&self) -> Self {
        Self {
            shards: self.shards.iter().map(|s| s.clone().inner()).collect(),
            ..*self
        }
    }

    /// The whole matrix as one tensor (merging on the CPU backend; exceeds WebGPU's binding
    /// limit for large vocabularies).
    pub fn to_dense(&self) -> Tensor<2> {
        match self.shards.as_slice() {
            [one] => one.clone(),
            many => Tensor::cat(many.to_vec(), 0),
        }
    }

    /// Row `ids[b, t]` of the matrix for every id (ids must be `< V`): `[B, T, hidden]`.
    pub fn embed(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        if let [one] = self.shards.as_slice() {
            return embedding(one.clone(), ids);
        }
        let mut out: Option<Tensor<3>> = None;
        let mut lo = 0i64;
        for shard in &self.shards {
            let n = shard.dims()[0] as i64;
            let inside: Tensor<2, Bool> = ids
                .clone()
                .greater_equal_elem(lo)
                .bool_and(ids.clone().lower_elem(lo + n));
            let local = ids.clone().sub_scalar(lo).clamp(0, n - 1);
            let rows = embedding(shard.clone(), local) * inside.float().unsqueeze_dim::<3>(2);
            out = Some(match out {
                Some(o) => o + rows,
                None => rows,
            });
            lo += n;
        }
        out.expect("at least one shard")
    }

    /// `x [N, hidden] · M_iᵀ → [N, V_i]` for every shard `i`, in row order.
    pub fn shard_products(&self, x: Tensor<2>) -> Vec<Tensor<2>> {
        self.shards
            .iter()
            .map(|s| x.clone().matmul(s.clone().transpose()))
            .collect()
    }

    /// `x [N, hidden] · Mᵀ → [N, V]` (logits under a head).
    pub fn matmul_t(&self, x: Tensor<2>) -> Tensor<2> {
        let mut parts = self.shard_products(x);
        match parts.len() {
            1 => parts.pop().expect("one part"),
            _ => Tensor::cat(parts, 1),
        }
    }
}
