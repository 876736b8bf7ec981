//! OFT's rotation build from peft's skew vectors by the truncated Neumann series
//! (`shaders/cayley_neumann.wgsl`), forward and backward, one workgroup per block: exactly
//! [`crate::adapters::oft::cayley_neumann`] applied to [`crate::adapters::oft::skew`] (the burn-ops
//! reference), in one launch instead of one per matrix product.
//!
//! Limit: block size 2 ≤ b ≤ [`MAX_BLOCK`], so one b × b f32 matrix fits WebGPU's default 16 KiB
//! of workgroup memory; larger blocks get [`OftKernelError::TooLarge`] and callers use burn ops.

use super::block_rotate::OftKernelError;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::wgpu::{CubeBackend, KernelSource, SourceTemplate, into_contiguous};
use burn::backend::{Autodiff, AutodiffBackend, Dispatch, backend_extension};
use burn::cubecl::CubeDim;
use burn::cubecl::prelude::KernelId;
use burn::tensor::{DType, Tensor};

/// The template text of `shaders/cayley_neumann.wgsl`.
pub const SOURCE: &str = include_str!("../../shaders/cayley_neumann.wgsl");

/// Largest block size the kernel builds (one b × b f32 matrix in 16 KiB of workgroup memory).
pub const MAX_BLOCK: usize = 64;

/// The WGSL template with its compile-time values.
#[derive(Debug)]
struct CayleySource {
    backward: bool,
    b: usize,
    terms: usize,
}

impl CayleySource {
    /// Highest power K of Q in peft's series for `terms`, and its coefficient (see the shader).
    fn powers(&self) -> (usize, &'static str) {
        match self.terms {
            0 | 1 => (0, "2.0"),
            2 => (1, "2.0"),
            n => (2.max(n - 2) + 1, "1.0"),
        }
    }

    /// f32s of workgroup memory: the b² work matrix, plus a dense copy of Q when both fit in
    /// 16 KiB (b ≤ 45; else Q is read from the vectors).
    fn workgroup_floats(&self) -> usize {
        let bb = self.b * self.b;
        if 2 * bb * 4 <= 16 * 1024 { 2 * bb } else { bb }
    }

    fn template(&self) -> SourceTemplate {
        let (k, last) = self.powers();
        SourceTemplate::new(SOURCE)
            .register("mode", (self.backward as u32).to_string())
            .register("b", self.b.to_string())
            .register("k", k.to_string())
            .register("last", last)
            .register("wn", self.workgroup_floats().to_string())
    }
}

impl KernelSource for CayleySource {
    fn source(&self) -> SourceTemplate {
        self.template()
    }

    fn id(&self) -> KernelId {
        let (k, _) = self.powers();
        KernelId::new::<Self>().info((self.backward, self.b as u32, k as u32))
    }

    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

/// Every kind of template fill the kernel launches: both directions × block sizes × series
/// lengths (for validation).
pub fn variants() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for backward in [false, true] {
        for b in [2, 16, 24, 32, 45, 46, MAX_BLOCK] {
            for terms in [1, 2, 3, 5] {
                let src = CayleySource { backward, b, terms };
                out.push((
                    format!("backward={backward} b={b} terms={terms}"),
                    src.template().complete(),
                ));
            }
        }
    }
    out
}

/// Checks that skew vectors `[rows, b(b-1)/2]` fit the kernel.
pub fn check(v_dims: [usize; 2], b: usize) -> Result<(), OftKernelError> {
    if !(2..=MAX_BLOCK).contains(&b) {
        return Err(OftKernelError::TooLarge(format!(
            "block size {b} (the Cayley-Neumann kernel builds 2 ≤ b ≤ {MAX_BLOCK})"
        )));
    }
    let [rows, n] = v_dims;
    if n != b * (b - 1) / 2 || rows == 0 {
        return Err(OftKernelError::Shape(format!(
            "skew vectors {v_dims:?} do not hold blocks of size {b}"
        )));
    }
    if rows > 65_535 {
        return Err(OftKernelError::TooLarge(format!("{rows} blocks")));
    }
    Ok(())
}

/// The custom backend operations; implemented for the CubeCL (wgpu) backend and for autodiff.
#[backend_extension(Autodiff, Cube)]
pub trait CayleyKernels: burn::backend::Backend {
    /// `R [rows, b, b]` from skew vectors `v [rows, b(b-1)/2]`: peft's Neumann series with
    /// `terms` terms.
    fn cayley_neumann(v: FloatTensor<Self>, b: usize, terms: usize) -> FloatTensor<Self>;

    /// `dL/dv [rows, b(b-1)/2]` from `v` and `dR = dL/dR [rows, b, b]`. Not differentiable itself.
    fn cayley_neumann_grad(
        v: FloatTensor<Self>,
        dr: FloatTensor<Self>,
        b: usize,
        terms: usize,
    ) -> FloatTensor<Self>;
}

/// One launch of either direction: `g` is `dR` (backward) or absent (forward).
fn launch(
    v: FloatTensor<CubeBackend>,
    g: Option<FloatTensor<CubeBackend>>,
    b: usize,
    terms: usize,
) -> FloatTensor<CubeBackend> {
    let v = into_contiguous(v);
    let dims = v.meta.shape().to_vec();
    assert!(
        dims.len() == 2 && v.dtype == DType::F32,
        "cayley_neumann: v {dims:?} {:?}",
        v.dtype
    );
    if let Err(e) = check([dims[0], dims[1]], b) {
        panic!("cayley_neumann: {e}");
    }
    let rows = dims[0];
    let backward = g.is_some();
    let (g, out) = match g {
        Some(g) => {
            let g = into_contiguous(g);
            assert_eq!(
                g.meta.shape().to_vec(),
                vec![rows, b, b],
                "cayley_neumann: dR"
            );
            (g, super::empty_f32(&v, vec![rows, dims[1]]))
        }
        // The forward never reads binding 1; it gets a one-word placeholder.
        None => (
            super::empty_f32(&v, vec![1]),
            super::empty_f32(&v, vec![rows, b, b]),
        ),
    };
    super::launch(
        &v,
        CayleySource { backward, b, terms },
        CubeDim::new_1d(256),
        [rows as u32, 1, 1],
        vec![
            v.handle.clone().binding(),
            g.handle.binding(),
            out.handle.clone().binding(),
        ],
        &[],
    );
    out
}

impl CayleyKernels for CubeBackend {
    fn cayley_neumann(v: FloatTensor<Self>, b: usize, terms: usize) -> FloatTensor<Self> {
        launch(v, None, b, terms)
    }

    fn cayley_neumann_grad(
        v: FloatTensor<Self>,
        dr: FloatTensor<Self>,
        b: usize,
        terms: usize,
    ) -> FloatTensor<Self> {
        launch(v, Some(dr), b, terms)
    }
}

impl<B: CayleyKernels, C: CheckpointStrategy> CayleyKernels for Autodiff<B, C> {
    fn cayley_neumann(v: FloatTensor<Self>, b: usize, terms: usize) -> FloatTensor<Self> {
        /// `dv` from the kernel's backward direction, against the saved vectors.
        #[derive(Debug)]
        struct CayleyBackward;

        impl<B: CayleyKernels> Backward<B, 1> for CayleyBackward {
            type State = (FloatTensor<B>, usize, usize);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let [node] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (v, b, terms) = ops.state;
                if let Some(node) = node {
                    grads.register::<B>(node.id, B::cayley_neumann_grad(v, grad, b, terms));
                }
            }
        }

        match CayleyBackward
            .prepare::<C>([v.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let v = v.into_primitive();
                let out = B::cayley_neumann(v.clone(), b, terms);
                prep.finish((v, b, terms), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::cayley_neumann(v.into_primitive(), b, terms))
            }
        }
    }

    fn cayley_neumann_grad(
        v: FloatTensor<Self>,
        dr: FloatTensor<Self>,
        b: usize,
        terms: usize,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::cayley_neumann_grad(
            Self::inner(v),
            Self::inner(dr),
            b,
            terms,
        ))
    }
}

/// The rotations `[rows, b, b]` from skew vectors `v [rows, b(b-1)/2]` by peft's Neumann series
/// with `terms` terms, in one launch, differentiable in `v`. The device must have our WGSL kernels
/// ([`super::has_wgsl_kernels`]).
pub fn cayley_neumann(v: Tensor<2>, b: usize, terms: usize) -> Result<Tensor<3>, OftKernelError> {
    check(v.dims(), b)?;
    Ok(Tensor::from_dispatch(
        <Dispatch as CayleyKernels>::cayley_neumann(v.into_dispatch(), b, terms),
    ))
}
