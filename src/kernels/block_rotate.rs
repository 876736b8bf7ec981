//! OFT's input-side block rotation fused for all blocks of a layer (`shaders/block_rotate.wgsl`):
//! `y[m, k·b + j] = Σ_i x[m, k·b + i] · R[k][i][j]` (one shared `R` with peft's `block_share`), with
//! its backward: `dx = dy_blk · R_kᵀ` (the same kernel, transposed) and
//! `dR[k] = Σ_m x_blkᵀ · dy_blk` (summed over the blocks too when shared). The burn-ops reference
//! is [`crate::adapters::oft::rotate_reference`].

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::wgpu::{CubeBackend, KernelSource, SourceTemplate, into_contiguous};
use burn::backend::{Autodiff, AutodiffBackend, Dispatch, TensorMetadata, backend_extension};
use burn::cubecl::CubeDim;
use burn::cubecl::prelude::KernelId;
use burn::tensor::{DType, Shape, Tensor};

/// Why a shape cannot take one of the OFT kernels (callers then use the burn-ops path).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OftKernelError {
    /// The tensors do not describe a block rotation.
    #[error("OFT kernel: {0}")]
    Shape(String),
    /// Beyond what one launch addresses.
    #[error("OFT kernel: {0} exceeds the kernel's limits")]
    TooLarge(String),
}

/// The template text of `shaders/block_rotate.wgsl`.
pub const SOURCE: &str = include_str!("../../shaders/block_rotate.wgsl");

/// Largest dispatch size along one grid dimension (WebGPU's default limit).
const MAX_GROUPS: usize = 65_535;
/// Reduction entries per workgroup of the weight gradient before the host-side sum.
const SPLIT: usize = 256;

/// Kernel directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Mode {
    /// `x_blk · R`.
    Forward,
    /// `x_blk · Rᵀ`.
    Transposed,
    /// Partial `Σ x_blkᵀ · dy_blk` per split of the reduction.
    WeightGrad,
}

/// Column tile edge for block size `b`: the smallest of 16, 32, 64 covering `min(b, 64)`.
fn tile_cols(b: usize) -> usize {
    match b {
        0..=16 => 16,
        17..=32 => 32,
        _ => 64,
    }
}

/// The WGSL template with its compile-time values.
#[derive(Debug)]
struct BlockRotateSource {
    mode: Mode,
    tc: usize,
}

impl BlockRotateSource {
    /// `(rows, cols, tk, mt)` of the output tile (see the shader's header).
    fn tiles(&self) -> (usize, usize, usize, usize) {
        let tc = self.tc;
        match self.mode {
            Mode::WeightGrad => (tc, tc, 1024 / tc, tc / 16),
            _ => (4096 / tc, tc, tc / 4, 4),
        }
    }

    fn template(&self) -> SourceTemplate {
        let (rows, cols, tk, mt) = self.tiles();
        let mode = match self.mode {
            Mode::Forward => 0,
            Mode::Transposed => 1,
            Mode::WeightGrad => 2,
        };
        SourceTemplate::new(SOURCE)
            .add_template(super::UNIFORM_INFO)
            .register("mode", format!("{mode}"))
            .register("rows", rows.to_string())
            .register("cols", cols.to_string())
            .register("tk", tk.to_string())
            .register("mt", mt.to_string())
    }
}

impl KernelSource for BlockRotateSource {
    fn source(&self) -> SourceTemplate {
        self.template()
    }

    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info((self.mode, self.tc as u32))
    }

    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

/// Every template fill the kernel launches: each direction × column tile (for validation).
pub fn variants() -> Vec<(String, String)> {
    [Mode::Forward, Mode::Transposed, Mode::WeightGrad]
        .into_iter()
        .flat_map(|mode| {
            [16, 32, 64].map(|tc| {
                let src = BlockRotateSource { mode, tc };
                (format!("{mode:?} tile {tc}"), src.template().complete())
            })
        })
        .collect()
}

/// Checks that `x [m, width]` and `R [rows, b, b]` describe a rotation the kernel can run.
pub fn check(x_dims: [usize; 2], r_dims: [usize; 3]) -> Result<(), OftKernelError> {
    let [m, width] = x_dims;
    let [rows, b, b2] = r_dims;
    if b == 0 || b != b2 || !width.is_multiple_of(b) {
        return Err(OftKernelError::Shape(format!(
            "rotations {r_dims:?} do not tile {width} input features"
        )));
    }
    let nb = width / b;
    if rows != nb && rows != 1 {
        return Err(OftKernelError::Shape(format!(
            "{rows} rotations for {nb} blocks (need {nb}, or 1 when shared)"
        )));
    }
    if nb > MAX_GROUPS || m.saturating_mul(width) > u32::MAX as usize {
        return Err(OftKernelError::TooLarge(format!(
            "x [{m}, {width}] in {nb} blocks"
        )));
    }
    Ok(())
}

/// The custom backend operations; implemented for the CubeCL (wgpu) backend and for autodiff.
#[backend_extension(Autodiff, Cube)]
pub trait BlockRotateKernels: burn::backend::Backend {
    /// `x [M, nb·b]` times `blockdiag(R)` (`transpose = false`) or `blockdiag(R)ᵀ`, with
    /// `R [nb or 1, b, b]`.
    fn block_rotate(
        x: FloatTensor<Self>,
        r: FloatTensor<Self>,
        transpose: bool,
    ) -> FloatTensor<Self>;

    /// `dR [rows, b, b]`, `dR[k'] = Σ_m Σ_{k → k'} x_blkᵀ · dy_blk` for `x`, `dy` `[M, nb·b]`
    /// (`rows` = nb, or 1 when shared). Not differentiable itself.
    fn block_rotate_weight_grad(
        x: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        rows: usize,
        b: usize,
    ) -> FloatTensor<Self>;
}

impl BlockRotateKernels for CubeBackend {
    fn block_rotate(
        x: FloatTensor<Self>,
        r: FloatTensor<Self>,
        transpose: bool,
    ) -> FloatTensor<Self> {
        let x = into_contiguous(x);
        let r = into_contiguous(r);
        let (xd, rd) = (x.meta.shape().to_vec(), r.meta.shape().to_vec());
        assert!(
            xd.len() == 2 && rd.len() == 3 && x.dtype == DType::F32 && r.dtype == DType::F32,
            "block_rotate: x {xd:?} {:?}, R {rd:?} {:?}",
            x.dtype,
            r.dtype
        );
        let (m, width, rows, b) = (xd[0], xd[1], rd[0], rd[1]);
        if let Err(e) = check([m, width], [rows, b, rd[2]]) {
            panic!("block_rotate: {e}");
        }
        let nb = width / b;
        let out = super::empty_f32(&x, vec![m, width]);
        let tc = tile_cols(b);
        let src = BlockRotateSource {
            mode: if transpose {
                Mode::Transposed
            } else {
                Mode::Forward
            },
            tc,
        };
        let row_tiles = m.div_ceil(4096 / tc).clamp(1, MAX_GROUPS);
        let info = [m as u32, b as u32, nb as u32, (rows == 1) as u32, 0];
        super::launch(
            &x,
            src,
            CubeDim::new_1d(256),
            [b.div_ceil(tc) as u32, row_tiles as u32, nb as u32],
            vec![
                x.handle.clone().binding(),
                r.handle.clone().binding(),
                out.handle.clone().binding(),
            ],
            &info,
        );
        out
    }

    fn block_rotate_weight_grad(
        x: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        rows: usize,
        b: usize,
    ) -> FloatTensor<Self> {
        let x = into_contiguous(x);
        let dy = into_contiguous(dy);
        let (xd, gd) = (x.meta.shape().to_vec(), dy.meta.shape().to_vec());
        assert!(
            xd == gd && xd.len() == 2 && x.dtype == DType::F32 && dy.dtype == DType::F32,
            "block_rotate_weight_grad: x {xd:?}, dy {gd:?}"
        );
        let (m, width) = (xd[0], xd[1]);
        if let Err(e) = check([m, width], [rows, b, b]) {
            panic!("block_rotate_weight_grad: {e}");
        }
        let nb = width / b;
        let len = m * (nb / rows);
        // Split length: a multiple of every TK (≤ 64), few enough splits for one grid dimension.
        let chunk = SPLIT.max(len.div_ceil(MAX_GROUPS)).next_multiple_of(64);
        let splits = len.div_ceil(chunk).max(1);
        let tc = tile_cols(b);
        let tiles = b.div_ceil(tc);
        let partial = super::empty_f32(&x, vec![splits, rows * b * b]);
        let info = [
            m as u32,
            b as u32,
            nb as u32,
            (rows == 1) as u32,
            chunk as u32,
        ];
        super::launch(
            &x,
            BlockRotateSource {
                mode: Mode::WeightGrad,
                tc,
            },
            CubeDim::new_1d(256),
            [(tiles * tiles) as u32, splits as u32, rows as u32],
            vec![
                x.handle.clone().binding(),
                dy.handle.clone().binding(),
                partial.handle.clone().binding(),
            ],
            &info,
        );
        let summed = if splits == 1 {
            partial
        } else {
            Self::float_sum_dim(partial, 0)
        };
        Self::float_reshape(summed, Shape::from(vec![rows, b, b]))
    }
}

impl<B: BlockRotateKernels, C: CheckpointStrategy> BlockRotateKernels for Autodiff<B, C> {
    fn block_rotate(
        x: FloatTensor<Self>,
        r: FloatTensor<Self>,
        transpose: bool,
    ) -> FloatTensor<Self> {
        /// `dx` is the other direction against the same R; `dR` the x/dy outer products
        /// (swapped for the transposed direction).
        #[derive(Debug)]
        struct BlockRotateBackward;

        impl<B: BlockRotateKernels> Backward<B, 2> for BlockRotateBackward {
            type State = (FloatTensor<B>, FloatTensor<B>, bool);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let [node_x, node_r] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x, r, transpose) = ops.state;
                let [rows, b, _] = r.shape().dims();
                if let Some(node) = node_r {
                    let dr = if transpose {
                        B::block_rotate_weight_grad(grad.clone(), x, rows, b)
                    } else {
                        B::block_rotate_weight_grad(x, grad.clone(), rows, b)
                    };
                    grads.register::<B>(node.id, dr);
                }
                if let Some(node) = node_x {
                    grads.register::<B>(node.id, B::block_rotate(grad, r, !transpose));
                }
            }
        }

        match BlockRotateBackward
            .prepare::<C>([x.node(), r.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, r) = (x.into_primitive(), r.into_primitive());
                let out = B::block_rotate(x.clone(), r.clone(), transpose);
                prep.finish((x, r, transpose), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::block_rotate(
                x.into_primitive(),
                r.into_primitive(),
                transpose,
            )),
        }
    }

    fn block_rotate_weight_grad(
        x: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        rows: usize,
        b: usize,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::block_rotate_weight_grad(
            Self::inner(x),
            Self::inner(dy),
            rows,
            b,
        ))
    }
}

/// `x [M, nb·b] · blockdiag(R)` with `R [nb or 1, b, b]` in one launch, differentiable in `x` and
/// `R`. The device must have our WGSL kernels ([`super::has_wgsl_kernels`]).
pub fn block_rotate(x: Tensor<2>, r: Tensor<3>) -> Result<Tensor<2>, OftKernelError> {
    check(x.dims(), r.dims())?;
    Ok(Tensor::from_dispatch(
        <Dispatch as BlockRotateKernels>::block_rotate(x.into_dispatch(), r.into_dispatch(), false),
    ))
}
