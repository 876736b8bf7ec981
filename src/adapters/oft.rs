//! OFT v2 (peft `OFTConfig`, input-centric): each adapted linear rotates its input block-wise,
//! `x_blk ← x_blk · R_i`, before the frozen base, with `R_i = cayley(Q_i)` and `Q_i` skew-symmetric
//! from peft's upper-triangle vectors. Cost O(n·b) per token. The weight-centric v1 (rebuild
//! `W·blockdiag(R)ᵀ` every step) is kept only as a benchmark baseline (`OftForm::WeightCentric`).

use crate::model::linear::{Adapter, BaseLinear};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// OFT hyper-parameters, named as in peft's `adapter_config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OftConfig {
    /// Block size b (peft: `r = 0` when this is given).
    pub oft_block_size: usize,
    /// Number of blocks (peft's `r`); used only when `oft_block_size` is 0.
    pub r: usize,
    /// Truncated Neumann series instead of the exact Cayley transform.
    pub use_cayley_neumann: bool,
    /// Neumann terms (peft's semantics, default 5).
    pub num_cayley_neumann_terms: usize,
    /// Constrained OFT: project each Q into an eps-ball before every forward.
    pub coft: bool,
    /// COFT radius.
    pub eps: f64,
    /// One rotation shared by all blocks of a layer.
    pub block_share: bool,
    /// peft's module_dropout (stored for interop; peft 0.21's OFT v2 forward does not apply it).
    pub module_dropout: f64,
    /// Benchmark baseline only: weight-centric OFT v1 (rebuild `W·blockdiag(R)ᵀ` every forward).
    /// Not a peft field: never written to `adapter_config.json`.
    #[serde(skip)]
    pub weight_centric: bool,
}

impl Default for OftConfig {
    fn default() -> Self {
        Self {
            oft_block_size: 32,
            r: 0,
            use_cayley_neumann: true,
            num_cayley_neumann_terms: 5,
            coft: false,
            eps: 6e-5,
            block_share: false,
            module_dropout: 0.0,
            weight_centric: false,
        }
    }
}

impl OftConfig {
    /// Block size for a layer with `in_features` inputs, or a message saying why it does not fit.
    pub fn block_size_for(&self, in_features: usize) -> Result<usize, String> {
        let b = match (self.oft_block_size, self.r) {
            (0, 0) => return Err("OFT needs oft_block_size or r".into()),
            (b, 0) => b,
            (0, r) if in_features.is_multiple_of(r) => in_features / r,
            (0, r) => {
                return Err(format!(
                    "OFT r = {r} blocks does not divide in_features {in_features}"
                ));
            }
            (_, _) => return Err("give OFT either oft_block_size or r, not both".into()),
        };
        if b < 2 || !in_features.is_multiple_of(b) {
            return Err(format!(
                "OFT block size {b} does not divide in_features {in_features} (divisors near it: {})",
                nearby_divisors(in_features, b)
            ));
        }
        Ok(b)
    }
}

fn nearby_divisors(n: usize, b: usize) -> String {
    let below = (2..=b.min(n)).rev().find(|&d| n.is_multiple_of(d));
    let above = (b..=n).find(|&d| n.is_multiple_of(d));
    [below, above]
        .iter()
        .flatten()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// How the rotation is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OftForm {
    /// OFT v2: rotate the activations (the default and what peft >= 0.18 does).
    InputCentric,
    /// OFT v1: rebuild `W·blockdiag(R)ᵀ` every forward (benchmark baseline only).
    WeightCentric,
}

/// Index and sign tables that turn `[nb, b(b-1)/2]` vectors into skew matrices with one `select`.
fn skew_tables(b: usize, device: &Device) -> (Tensor<1, Int>, Tensor<1>) {
    let n = b * (b - 1) / 2;
    let mut idx = vec![n as i64; b * b];
    let mut sign = vec![0.0f32; b * b];
    let mut k = 0;
    for p in 0..b {
        for q in p + 1..b {
            idx[p * b + q] = k as i64;
            sign[p * b + q] = 1.0;
            idx[q * b + p] = k as i64;
            sign[q * b + p] = -1.0;
            k += 1;
        }
    }
    (
        Tensor::from_data(TensorData::new(idx, [b * b]), device),
        Tensor::from_data(TensorData::new(sign, [b * b]), device),
    )
}

/// Skew matrices `[nb, b, b]` from peft's row-major strict-upper-triangle vectors `[nb, b(b-1)/2]`.
pub fn skew(v: Tensor<2>, b: usize) -> Tensor<3> {
    let [nb, _] = v.dims();
    let device = v.device();
    let (idx, sign) = skew_tables(b, &device);
    let padded = Tensor::cat(vec![v, Tensor::zeros([nb, 1], &device)], 1);
    (padded.select(1, idx) * sign.unsqueeze::<2>()).reshape([nb, b, b])
}

fn eye(nb: usize, b: usize, device: &Device) -> Tensor<3> {
    let mut v = vec![0.0f32; b * b];
    (0..b).for_each(|i| v[i * b + i] = 1.0);
    Tensor::<2>::from_data(TensorData::new(v, [b, b]), device)
        .unsqueeze::<3>()
        .repeat_dim(0, nb)
}

/// peft's truncated Neumann series for `(I + Q)(I − Q)⁻¹`: n ≤ 1: I; n = 2: I + 2Q;
/// n ≥ 3: `I + 2·Σ_{k=1..m} Qᵏ + Q^{m+1}` with m = max(2, n − 2).
pub fn cayley_neumann(q: Tensor<3>, terms: usize) -> Tensor<3> {
    let [nb, b, _] = q.dims();
    let mut r = eye(nb, b, &q.device());
    if terms <= 1 {
        return r;
    }
    r = r + q.clone().mul_scalar(2.0);
    if terms == 2 {
        return r;
    }
    let m = 2.max(terms - 2);
    let mut power = q.clone();
    for _ in 2..=m {
        power = power.matmul(q.clone());
        r = r + power.clone().mul_scalar(2.0);
    }
    r + power.matmul(q)
}

/// Batched inverse of `I + Q` by Gauss-Jordan without pivoting (stable: the symmetric part of
/// `I + Q` is I for skew Q, so every pivot is positive), written in tensor ops so autodiff flows.
fn inverse_i_plus_skew(q: Tensor<3>) -> Tensor<3> {
    let [nb, b, _] = q.dims();
    let device = q.device();
    let mut a = eye(nb, b, &device) + q;
    let mut inv = eye(nb, b, &device);
    for k in 0..b {
        let pivot = a.clone().slice([0..nb, k..k + 1, k..k + 1]);
        let row_a = a.clone().slice([0..nb, k..k + 1, 0..b]) / pivot.clone();
        let row_i = inv.clone().slice([0..nb, k..k + 1, 0..b]) / pivot;
        let mut e = vec![0.0f32; b];
        e[k] = 1.0;
        let e = Tensor::<1>::from_data(TensorData::new(e, [b]), &device).reshape([1, b, 1]);
        let factor = a.clone().slice([0..nb, 0..b, k..k + 1]) - e;
        a = a - factor.clone() * row_a;
        inv = inv - factor * row_i;
    }
    inv
}

/// peft's exact Cayley (`torch.linalg.solve(I + Q, I − Q, left=False)`): `R = (I − Q)(I + Q)⁻¹`,
/// the transpose of what the Neumann series approximates; matched, not "fixed".
pub fn cayley_exact(q: Tensor<3>) -> Tensor<3> {
    let [nb, b, _] = q.dims();
    let i_minus_q = eye(nb, b, &q.device()) - q.clone();
    i_minus_q.matmul(inverse_i_plus_skew(q))
}

/// `x [M, nb·b] · blockdiag(R)` in burn ops (the reference path), `R [nb, b, b]`, or `[1, b, b]`
/// shared by every block.
pub fn rotate_reference(x: Tensor<2>, r: Tensor<3>) -> Tensor<2> {
    let [m, width] = x.dims();
    let [rows, b, _] = r.dims();
    let nb = width / b;
    let rotated = if rows == 1 {
        x.reshape([1, m * nb, b]).matmul(r)
    } else {
        x.reshape([m, nb, b])
            .swap_dims(0, 1)
            .matmul(r)
            .swap_dims(0, 1)
    };
    rotated.reshape([m, width])
}

/// An OFT rotation on one linear layer.
#[derive(Debug, Clone)]
pub struct Oft {
    /// Skew parameters `[nb, b(b-1)/2]` (`[1, ..]` with block sharing).
    pub weight: Tensor<2>,
    /// Block size b.
    pub block: usize,
    /// Blocks per input row (in_features / b).
    pub n_blocks: usize,
    /// Settings.
    pub config: OftConfig,
    /// Input-centric (v2) or weight-centric (v1 baseline).
    pub form: OftForm,
}

impl Oft {
    /// peft's default init: `oft_R = 0`, the identity rotation.
    pub fn init(cfg: &OftConfig, in_features: usize, device: &Device) -> Result<Self, String> {
        let b = cfg.block_size_for(in_features)?;
        let rows = if cfg.block_share { 1 } else { in_features / b };
        let w = Tensor::zeros([rows, b * (b - 1) / 2], device);
        Self::from_weight(cfg, in_features, w)
    }

    /// An OFT adapter from stored parameters (checked against the layer).
    pub fn from_weight(
        cfg: &OftConfig,
        in_features: usize,
        weight: Tensor<2>,
    ) -> Result<Self, String> {
        let b = cfg.block_size_for(in_features)?;
        let nb = in_features / b;
        let want = [if cfg.block_share { 1 } else { nb }, b * (b - 1) / 2];
        if weight.dims() != want {
            return Err(format!(
                "oft_R.weight has shape {:?}, expected {want:?}",
                weight.dims()
            ));
        }
        Ok(Self {
            weight,
            block: b,
            n_blocks: nb,
            config: cfg.clone(),
            form: OftForm::InputCentric,
        })
    }

    /// COFT's projection of skew vectors `w` `[rows, n]`: `Q ← ε'·Q/‖Q‖_F` where `‖Q‖_F > ε' =
    /// eps/√rows` (peft `_project_batch`; `‖Q‖_F = √2·‖row‖`). Gradient-free.
    fn project(&self, w: Tensor<2>) -> Tensor<2> {
        let w = w.detach();
        let rows = w.dims()[0];
        let eps = self.config.eps / (rows as f64).sqrt();
        let norm = w.clone().square().sum_dim(1).mul_scalar(2.0).sqrt();
        let outside = norm.clone().greater_elem(eps);
        let scaled = w.clone() * norm.recip().mul_scalar(eps);
        w.mask_where(outside, scaled)
    }

    /// The skew vectors a forward uses: with COFT the projected values, with the gradient passed
    /// straight through to the parameter as peft does (it projects in place under `no_grad`).
    fn effective_weight(&self) -> Tensor<2> {
        if !self.config.coft {
            return self.weight.clone();
        }
        let w = self.weight.clone();
        let projected = self.project(w.clone());
        w.clone() + (projected - w.detach())
    }

    /// The rotation blocks `[rows, b, b]` built from the parameters: on wgpu the Neumann series
    /// runs as one fused kernel ([`crate::kernels::cayley`], b ≤ 64), elsewhere as burn ops.
    pub fn rotations(&self) -> Tensor<3> {
        let w = self.effective_weight();
        if !self.config.use_cayley_neumann {
            return cayley_exact(skew(w, self.block));
        }
        let terms = self.config.num_cayley_neumann_terms;
        if crate::kernels::has_wgsl_kernels(&w.device())
            && let Ok(r) = crate::kernels::cayley::cayley_neumann(w.clone(), self.block, terms)
        {
            return r;
        }
        cayley_neumann(skew(w, self.block), terms)
    }

    /// `x·blockdiag(R)` for `x` `[.., in]`: one fused kernel on wgpu
    /// ([`crate::kernels::block_rotate`]), [`rotate_reference`] elsewhere.
    fn rotate(&self, x: Tensor<3>) -> Tensor<3> {
        let [bs, t, i] = x.dims();
        let r = self.rotations();
        let x = x.reshape([bs * t, i]);
        let fused = if crate::kernels::has_wgsl_kernels(&x.device()) {
            crate::kernels::block_rotate::block_rotate(x.clone(), r.clone()).ok()
        } else {
            None
        };
        fused
            .unwrap_or_else(|| rotate_reference(x, r))
            .reshape([bs, t, i])
    }

    /// `blockdiag(R)` as a dense `[in, in]` matrix.
    fn block_diagonal(&self) -> Tensor<2> {
        let r = self.rotations();
        let (nb, b) = (self.n_blocks, self.block);
        let device = r.device();
        let mut dense = Tensor::<2>::zeros([nb * b, nb * b], &device);
        for i in 0..nb {
            let blk = if self.config.block_share { 0 } else { i };
            let ri = r.clone().slice([blk..blk + 1, 0..b, 0..b]).reshape([b, b]);
            dense = dense.slice_assign([i * b..(i + 1) * b, i * b..(i + 1) * b], ri);
        }
        dense
    }
}

impl Adapter for Oft {
    fn forward(&self, x: Tensor<3>, base: &BaseLinear) -> Tensor<3> {
        match self.form {
            OftForm::InputCentric => base.forward(self.rotate(x)),
            OftForm::WeightCentric => BaseLinear::Dense(self.merge(&base.dense())).forward(x),
        }
    }

    fn parameters(&self) -> Vec<(&'static str, Tensor<2>)> {
        vec![("oft_R.weight", self.weight.clone())]
    }

    fn parameters_mut(&mut self) -> Vec<(&'static str, &mut Tensor<2>)> {
        vec![("oft_R.weight", &mut self.weight)]
    }

    /// COFT before a training step: project the parameter in place, so AdamW (and its weight
    /// decay) acts on the projected values exactly as in peft.
    fn prepare(&mut self) {
        if self.config.coft {
            self.weight = self.project(self.weight.clone());
        }
    }

    fn without_autodiff(&self) -> Box<dyn Adapter> {
        Box::new(Oft {
            weight: self.weight.clone().inner(),
            ..self.clone()
        })
    }

    /// `W' = W·blockdiag(R)ᵀ`... in peft's orientation: `y = (x·R)·Wᵀ = x·(W·Rᵀ)ᵀ`.
    fn merge(&self, base: &Tensor<2>) -> Tensor<2> {
        base.clone().matmul(self.block_diagonal().transpose())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> Device {
        Device::flex()
    }

    fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn skew_layout_matches_triu_indices() {
        let v = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0], [1, 3]), &dev());
        let q = to_vec(skew(v, 3));
        assert_eq!(q, vec![0.0, 1.0, 2.0, -1.0, 0.0, 3.0, -2.0, -3.0, 0.0]);
    }

    #[test]
    fn exact_cayley_is_orthogonal_and_neumann_approximates_its_transpose() {
        let v = Tensor::<2>::from_data(
            TensorData::new(vec![0.05f32, -0.02, 0.03, 0.01, 0.04, -0.03], [1, 6]),
            &dev(),
        );
        let q = skew(v, 4);
        let exact = cayley_exact(q.clone());
        let rtr = to_vec(exact.clone().swap_dims(1, 2).matmul(exact.clone()));
        let eye: Vec<f32> = (0..16)
            .map(|i| if i % 5 == 0 { 1.0 } else { 0.0 })
            .collect();
        assert!(rtr.iter().zip(&eye).all(|(a, b)| (a - b).abs() < 1e-5));
        let neumann = to_vec(cayley_neumann(q, 12));
        let exact_t = to_vec(exact.swap_dims(1, 2));
        assert!(
            neumann
                .iter()
                .zip(&exact_t)
                .all(|(a, b)| (a - b).abs() < 1e-5)
        );
    }

    #[test]
    fn block_size_errors_name_divisors() {
        let cfg = OftConfig {
            oft_block_size: 30,
            ..Default::default()
        };
        let e = cfg.block_size_for(64).unwrap_err();
        assert!(
            e.contains("does not divide in_features 64") && e.contains("16, 32"),
            "{e}"
        );
        assert_eq!(
            OftConfig {
                oft_block_size: 16,
                ..Default::default()
            }
            .block_size_for(112),
            Ok(16)
        );
    }
}
