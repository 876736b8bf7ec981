//! Fused dequantize × matmul (`shaders/qmatmul.wgsl`): `y = x · deq(W)ᵀ` and its input gradient
//! `dx = dy · deq(W)` against a base weight that stays block-quantized on the GPU (bitsandbytes
//! NF4, ggml Q4_0 / Q4_1 / Q8_0). The base is frozen, so no weight gradient exists. For x with
//! few rows (token-by-token decoding) the forward runs a matrix-vector kernel instead
//! (`shaders/qgemv.wgsl`), reduced with subgroup operations where the device has them.
//!
//! All four formats share one GPU layout, [`PackedHost`]: codes re-laid 8 (4-bit) or 4 (8-bit)
//! per u32 in element order, then f32 scales, then f32 mins (Q4_1). Converting from the file
//! layouts only moves bits (codes keep their values; f16 scales widen exactly), so the values the
//! kernel decodes are exactly the file's.

use crate::quant::ggml::GgmlType;
use crate::quant::nf4::{NF4_CODE, Nf4Tensor};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::wgpu::{CubeBackend, KernelSource, SourceTemplate, into_contiguous};
use burn::backend::{Autodiff, Dispatch, backend_extension};
use burn::cubecl::CubeDim;
use burn::cubecl::prelude::KernelId;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use half::f16;

/// Why a weight cannot take the fused path.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QError {
    /// The kernel reads rows in slices of 16 values, and 4 consecutive values share a scale.
    #[error(
        "in_features {k} is not a multiple of 16 (or block size {block} not a multiple of 4): the fused kernel reads rows in slices of 16"
    )]
    Unaligned {
        /// Row length.
        k: usize,
        /// Block size.
        block: usize,
    },
    /// The byte/element counts do not describe `[n, k]`.
    #[error("quantized data does not match shape [{n}, {k}]: {what}")]
    Mismatch {
        /// Rows.
        n: usize,
        /// Columns.
        k: usize,
        /// What is off.
        what: String,
    },
    /// A format the kernel does not read.
    #[error("the fused kernel does not read {0}")]
    Unsupported(String),
    /// More than a storage binding can address.
    #[error("weight too large for one GPU buffer: {0} words")]
    TooLarge(usize),
}

/// Block-quantized formats the kernel decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QFormat {
    /// bitsandbytes NF4: `code[c] · absmax`.
    Nf4,
    /// ggml Q4_0: `(c - 8) · d`.
    Q4_0,
    /// ggml Q4_1: `c · d + m`.
    Q4_1,
    /// ggml Q8_0: `i8(c) · d`.
    Q8_0,
}

impl QFormat {
    fn id(self) -> u32 {
        match self {
            QFormat::Nf4 => 0,
            QFormat::Q4_0 => 1,
            QFormat::Q4_1 => 2,
            QFormat::Q8_0 => 3,
        }
    }

    /// Bits per code.
    pub fn bits(self) -> usize {
        if self == QFormat::Q8_0 { 8 } else { 4 }
    }

    /// Name as users know it.
    pub fn name(self) -> &'static str {
        match self {
            QFormat::Nf4 => "NF4",
            QFormat::Q4_0 => "Q4_0",
            QFormat::Q4_1 => "Q4_1",
            QFormat::Q8_0 => "Q8_0",
        }
    }

    /// The value of code `c` before scaling (CPU mirror of the shader's `decode`).
    fn decode(self, c: u32) -> f32 {
        match self {
            QFormat::Nf4 => NF4_CODE[c as usize],
            QFormat::Q4_0 => (c as i32 - 8) as f32,
            QFormat::Q4_1 => c as f32,
            QFormat::Q8_0 => (c as u8 as i8) as f32,
        }
    }
}

/// Shape and format of one packed weight `W [n, k]` (HF `[out, in]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QLayout {
    /// Format of the codes.
    pub format: QFormat,
    /// Rows (out_features).
    pub n: usize,
    /// Columns (in_features).
    pub k: usize,
    /// Elements per scale.
    pub block: usize,
}

impl QLayout {
    fn new(format: QFormat, n: usize, k: usize, block: usize) -> Result<Self, QError> {
        // Blocks run over the flat row-major array (bitsandbytes) and may straddle rows; the
        // kernel only needs every aligned group of 4 values inside one block and one u32 word.
        if block == 0 || !block.is_multiple_of(4) || !k.is_multiple_of(16) || k == 0 {
            return Err(QError::Unaligned { k, block });
        }
        let l = Self {
            format,
            n,
            k,
            block,
        };
        if l.total_words() > (128 << 20) / 4 {
            return Err(QError::TooLarge(l.total_words()));
        }
        Ok(l)
    }

    fn blocks(&self) -> usize {
        (self.n * self.k).div_ceil(self.block)
    }

    fn code_words(&self) -> usize {
        self.n * self.k * self.format.bits() / 32
    }

    fn mins_offset(&self) -> usize {
        self.code_words() + self.blocks()
    }

    /// u32 words of the packed buffer.
    pub fn total_words(&self) -> usize {
        let mins = if self.format == QFormat::Q4_1 {
            self.blocks()
        } else {
            0
        };
        self.code_words() + self.blocks() + mins
    }
}

/// A weight in the kernel's layout, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedHost {
    /// Shape and format.
    pub layout: QLayout,
    /// Codes, then scales, then mins (see the module doc).
    pub words: Vec<u32>,
}

impl PackedHost {
    fn from_codes(
        layout: QLayout,
        codes: impl Iterator<Item = u32>,
        scales: &[f32],
        mins: &[f32],
    ) -> Self {
        let bits = layout.format.bits();
        let per_word = 32 / bits;
        let mut words = vec![0u32; layout.total_words()];
        for (i, c) in codes.enumerate() {
            words[i / per_word] |= c << ((i % per_word) * bits);
        }
        let s = layout.code_words();
        for (w, v) in words[s..].iter_mut().zip(scales.iter().chain(mins)) {
            *w = v.to_bits();
        }
        Self { layout, words }
    }

    /// From bitsandbytes NF4 (two codes per byte, high nibble first; fp32 absmax per block).
    pub fn from_nf4(t: &Nf4Tensor) -> Result<Self, QError> {
        let (n, k) = match t.shape.as_slice() {
            [n, k] => (*n, *k),
            s => {
                return Err(QError::Mismatch {
                    n: 0,
                    k: 0,
                    what: format!("NF4 tensor of shape {s:?} is not 2-D"),
                });
            }
        };
        let layout = QLayout::new(QFormat::Nf4, n, k, t.blocksize)?;
        if t.packed.len() != n * k / 2 || t.absmax.len() != layout.blocks() {
            return Err(QError::Mismatch {
                n,
                k,
                what: format!(
                    "{} packed bytes and {} absmax values",
                    t.packed.len(),
                    t.absmax.len()
                ),
            });
        }
        let codes = t
            .packed
            .iter()
            .flat_map(|b| [(*b >> 4) as u32, (*b & 15) as u32]);
        Ok(Self::from_codes(layout, codes, &t.absmax, &[]))
    }

    /// From ggml blocks (rows of `k` values, `ty.row_bytes(k)` bytes each).
    pub fn from_ggml(ty: GgmlType, bytes: &[u8], n: usize, k: usize) -> Result<Self, QError> {
        let format = match ty {
            GgmlType::Q4_0 => QFormat::Q4_0,
            GgmlType::Q4_1 => QFormat::Q4_1,
            GgmlType::Q8_0 => QFormat::Q8_0,
            other => return Err(QError::Unsupported(other.name().to_string())),
        };
        let layout = QLayout::new(format, n, k, 32)?;
        let block_bytes = ty.block_bytes();
        if bytes.len() != layout.blocks() * block_bytes {
            return Err(QError::Mismatch {
                n,
                k,
                what: format!("{} bytes of {}", bytes.len(), ty.name()),
            });
        }
        let half_at = |b: &[u8], at: usize| f16::from_le_bytes([b[at], b[at + 1]]).to_f32();
        let blocks = || bytes.chunks_exact(block_bytes);
        let scales: Vec<f32> = blocks().map(|b| half_at(b, 0)).collect();
        let mins: Vec<f32> = if format == QFormat::Q4_1 {
            blocks().map(|b| half_at(b, 2)).collect()
        } else {
            Vec::new()
        };
        let host = match format {
            QFormat::Q8_0 => Self::from_codes(
                layout,
                blocks().flat_map(|b| b[2..34].iter().map(|&q| q as u32)),
                &scales,
                &mins,
            ),
            _ => {
                let qs_at = if format == QFormat::Q4_1 { 4 } else { 2 };
                // byte j of a block holds value j (low nibble) and value j + 16 (high nibble).
                let codes = blocks().flat_map(|b| {
                    let qs = &b[qs_at..qs_at + 16];
                    (0..32).map(move |i| {
                        if i < 16 {
                            (qs[i] & 15) as u32
                        } else {
                            (qs[i - 16] >> 4) as u32
                        }
                    })
                });
                Self::from_codes(layout, codes, &scales, &mins)
            }
        };
        Ok(host)
    }

    /// The dense `[n, k]` values, decoded exactly as the shader does (the CPU reference).
    pub fn dequantize(&self) -> Vec<f32> {
        let l = &self.layout;
        let bits = l.format.bits();
        let per_word = 32 / bits;
        let mask = (1u32 << bits) - 1;
        let s = l.code_words();
        (0..l.n * l.k)
            .map(|i| {
                let c = (self.words[i / per_word] >> ((i % per_word) * bits)) & mask;
                let blk = i / l.block;
                let lo = if l.format == QFormat::Q4_1 {
                    f32::from_bits(self.words[l.mins_offset() + blk])
                } else {
                    0.0
                };
                l.format.decode(c) * f32::from_bits(self.words[s + blk]) + lo
            })
            .collect()
    }

    /// Bytes this weight takes on the GPU.
    pub fn gpu_bytes(&self) -> usize {
        self.words.len() * 4
    }
}

/// Which kernel computes a product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QKernel {
    /// Pick: the matrix-vector kernel for a forward with at most [`GEMV_MAX_ROWS`] rows (its
    /// subgroup reduction when [`super::subgroups`] says the device has them), else the tiled one.
    Auto,
    /// `shaders/qmatmul.wgsl`: 64 × 64 output tiles; both directions, any M.
    Tiled,
    /// `shaders/qgemv.wgsl` + `qgemv_workgroup.wgsl`: forward only, M ≤ [`GEMV_MAX_ROWS`].
    Gemv,
    /// `shaders/qgemv.wgsl` + `qgemv_subgroup.wgsl`: as `Gemv`, reduced with `subgroupAdd`; needs
    /// a device with the `subgroups` feature.
    GemvSubgroup,
}

/// Most rows of x the matrix-vector kernel takes (`MAXM` in `shaders/qgemv.wgsl`).
pub const GEMV_MAX_ROWS: usize = 8;

impl QKernel {
    /// The concrete kernel for `m` rows in the given direction.
    pub fn resolve(self, m: usize, input_grad: bool) -> QKernel {
        match self {
            QKernel::Auto if !input_grad && m <= GEMV_MAX_ROWS => {
                if super::subgroups() {
                    QKernel::GemvSubgroup
                } else {
                    QKernel::Gemv
                }
            }
            QKernel::Auto => QKernel::Tiled,
            k => k,
        }
    }
}

/// The custom backend operation; implemented for the CubeCL (wgpu) backend and for autodiff.
#[backend_extension(Autodiff, Cube)]
pub trait QuantKernels: burn::backend::Backend {
    /// `input_grad = false`: `x [M, k] · deq(W)ᵀ → [M, n]`; `true`: `x [M, n] · deq(W) → [M, k]`.
    fn qmatmul(
        x: FloatTensor<Self>,
        packed: IntTensor<Self>,
        layout: QLayout,
        input_grad: bool,
        kernel: QKernel,
    ) -> FloatTensor<Self>;
}

/// The WGSL template with its compile-time values.
#[derive(Debug)]
struct QMatmulSource {
    layout: QLayout,
    input_grad: bool,
    /// Resolved (never `Auto`).
    kernel: QKernel,
}

impl KernelSource for QMatmulSource {
    fn source(&self) -> SourceTemplate {
        kernel_template(&self.layout, self.input_grad, self.kernel)
    }

    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info((
            self.layout.format.id(),
            self.layout.block as u32,
            self.input_grad,
            self.kernel,
        ))
    }

    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

/// The template text of `shaders/qmatmul.wgsl` (the tiled kernel).
pub const SOURCE: &str = include_str!("../../shaders/qmatmul.wgsl");
/// `shaders/qdecode.wgsl`: the packed-layout decoding appended to both kernels.
pub const DECODE: &str = include_str!("../../shaders/qdecode.wgsl");
/// `shaders/qgemv.wgsl`: the matrix-vector kernel's body.
pub const GEMV: &str = include_str!("../../shaders/qgemv.wgsl");
/// `shaders/qgemv_subgroup.wgsl`: its entry point with a subgroup reduction.
pub const GEMV_SUBGROUP: &str = include_str!("../../shaders/qgemv_subgroup.wgsl");
/// `shaders/qgemv_workgroup.wgsl`: its portable entry point.
pub const GEMV_WORKGROUP: &str = include_str!("../../shaders/qgemv_workgroup.wgsl");

/// The complete template of a resolved kernel: its files, appended, with the layout's values.
pub fn kernel_template(layout: &QLayout, input_grad: bool, kernel: QKernel) -> SourceTemplate {
    let t = match kernel {
        QKernel::Gemv => SourceTemplate::new(GEMV).add_template(GEMV_WORKGROUP),
        QKernel::GemvSubgroup => SourceTemplate::new(GEMV).add_template(GEMV_SUBGROUP),
        QKernel::Tiled | QKernel::Auto => {
            SourceTemplate::new(SOURCE).add_template(super::UNIFORM_INFO)
        }
    };
    t.add_template(DECODE)
        .register("format", layout.format.id().to_string())
        .register("bits", layout.format.bits().to_string())
        .register("block", layout.block.to_string())
        .register("input_grad", input_grad.to_string())
}

/// Every complete kernel launched for `kernels`: each format × (both directions for the tiled
/// kernel, the forward for the others), for validation.
fn variants_of(kernels: &[QKernel]) -> Vec<(String, String)> {
    let layouts = [
        (QFormat::Nf4, 64),
        (QFormat::Q4_0, 32),
        (QFormat::Q4_1, 32),
        (QFormat::Q8_0, 32),
    ];
    let mut out = Vec::new();
    for (format, block) in layouts {
        let layout = QLayout::new(format, 2, 64, block).expect("a valid layout");
        for &kernel in kernels {
            let directions: &[bool] = if kernel == QKernel::Tiled {
                &[false, true]
            } else {
                &[false]
            };
            for &input_grad in directions {
                out.push((
                    format!("{} {kernel:?} input_grad={input_grad}", format.name()),
                    kernel_template(&layout, input_grad, kernel).complete(),
                ));
            }
        }
    }
    out
}

/// Variants of `qmatmul.wgsl`.
pub fn variants() -> Vec<(String, String)> {
    variants_of(&[QKernel::Tiled])
}

/// Variants of `qdecode.wgsl`: every kernel it is appended to.
pub fn decode_variants() -> Vec<(String, String)> {
    variants_of(&[QKernel::Tiled, QKernel::Gemv, QKernel::GemvSubgroup])
}

/// Variants of `qgemv.wgsl`.
pub fn gemv_variants() -> Vec<(String, String)> {
    variants_of(&[QKernel::Gemv, QKernel::GemvSubgroup])
}

/// Variants of `qgemv_subgroup.wgsl` (they need the `subgroups` capability).
pub fn gemv_subgroup_variants() -> Vec<(String, String)> {
    variants_of(&[QKernel::GemvSubgroup])
}

/// Variants of `qgemv_workgroup.wgsl`.
pub fn gemv_workgroup_variants() -> Vec<(String, String)> {
    variants_of(&[QKernel::Gemv])
}

/// Output tile edge of the tiled kernel (rows and columns per workgroup).
const TILE: usize = 64;
/// Output columns per workgroup of the matrix-vector kernel (`COLS` in `shaders/qgemv.wgsl`).
const GEMV_COLS: usize = 4;

impl QuantKernels for CubeBackend {
    fn qmatmul(
        x: FloatTensor<Self>,
        packed: IntTensor<Self>,
        layout: QLayout,
        input_grad: bool,
        kernel: QKernel,
    ) -> FloatTensor<Self> {
        let x = into_contiguous(x);
        let dims = x.meta.shape().to_vec();
        let (reduce, cols) = if input_grad {
            (layout.n, layout.k)
        } else {
            (layout.k, layout.n)
        };
        assert!(
            dims.len() == 2 && dims[1] == reduce && x.dtype == DType::F32,
            "qmatmul: input {dims:?} {:?} does not fit {layout:?}",
            x.dtype
        );
        assert_eq!(
            packed.dtype.size(),
            4,
            "qmatmul: packed words must be 32-bit"
        );
        let m = dims[0];
        let kernel = kernel.resolve(m, input_grad);
        let gemv = matches!(kernel, QKernel::Gemv | QKernel::GemvSubgroup);
        assert!(
            !gemv || (!input_grad && m <= GEMV_MAX_ROWS),
            "qmatmul: the matrix-vector kernel takes a forward of at most {GEMV_MAX_ROWS} rows"
        );
        let (cube_dim, count) = if gemv {
            (CubeDim::new_1d(64), [cols.div_ceil(GEMV_COLS) as u32, 1, 1])
        } else {
            (
                CubeDim::new_2d(16, 16),
                [
                    cols.div_ceil(TILE) as u32,
                    m.div_ceil(TILE).max(1) as u32,
                    1,
                ],
            )
        };
        let out = super::empty_f32(&x, vec![m, cols]);
        let info: [u32; 5] = [
            m as u32,
            layout.n as u32,
            layout.k as u32,
            layout.code_words() as u32,
            layout.mins_offset() as u32,
        ];
        super::launch(
            &x,
            QMatmulSource {
                layout,
                input_grad,
                kernel,
            },
            cube_dim,
            count,
            vec![
                x.handle.clone().binding(),
                packed.handle.binding(),
                out.handle.clone().binding(),
            ],
            &info,
        );
        out
    }
}

impl<B: QuantKernels, C: CheckpointStrategy> QuantKernels for Autodiff<B, C> {
    fn qmatmul(
        x: FloatTensor<Self>,
        packed: IntTensor<Self>,
        layout: QLayout,
        input_grad: bool,
        kernel: QKernel,
    ) -> FloatTensor<Self> {
        /// The gradient of either direction is the other direction against the same W.
        #[derive(Debug)]
        struct QMatmulBackward;

        impl<B: QuantKernels> Backward<B, 1> for QMatmulBackward {
            type State = (IntTensor<B>, QLayout, bool);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let [node] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (packed, layout, input_grad) = ops.state;
                if let Some(node) = node {
                    grads.register::<B>(
                        node.id,
                        B::qmatmul(grad, packed, layout, !input_grad, QKernel::Auto),
                    );
                }
            }
        }

        match QMatmulBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = B::qmatmul(
                    x.into_primitive(),
                    packed.clone(),
                    layout,
                    input_grad,
                    kernel,
                );
                prep.finish((packed, layout, input_grad), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::qmatmul(
                x.into_primitive(),
                packed,
                layout,
                input_grad,
                kernel,
            )),
        }
    }
}

/// A frozen base weight living packed on the GPU.
#[derive(Debug, Clone)]
pub struct PackedWeight {
    /// Shape and format.
    pub layout: QLayout,
    words: Tensor<1, Int>,
}

impl PackedWeight {
    /// Upload `host` to `device` (which must have our WGSL kernels: see
    /// [`super::has_wgsl_kernels`]).
    pub fn upload(host: &PackedHost, device: &Device) -> Self {
        let words: Vec<i32> = host.words.iter().map(|&w| w as i32).collect();
        let n = words.len();
        Self {
            layout: host.layout,
            words: Tensor::from_data(TensorData::new(words, [n]), device),
        }
    }

    /// The same packed words on the inner (non-autodiff) backend; shares the device memory.
    pub fn without_autodiff(&self) -> PackedWeight {
        PackedWeight {
            layout: self.layout,
            words: self.words.clone().inner(),
        }
    }

    fn apply(&self, x: Tensor<2>, input_grad: bool, kernel: QKernel) -> Tensor<2> {
        Tensor::from_dispatch(<Dispatch as QuantKernels>::qmatmul(
            x.into_dispatch(),
            self.words.clone().into_dispatch(),
            self.layout,
            input_grad,
            kernel,
        ))
    }

    /// `x [M, k] · deq(W)ᵀ → [M, n]`, differentiable in `x`.
    pub fn matmul_t(&self, x: Tensor<2>) -> Tensor<2> {
        self.apply(x, false, QKernel::Auto)
    }

    /// [`Self::matmul_t`] through a chosen kernel (tests and benchmarks compare them).
    pub fn matmul_t_with(&self, x: Tensor<2>, kernel: QKernel) -> Tensor<2> {
        self.apply(x, false, kernel)
    }

    /// `x [M, n] · deq(W) → [M, k]`, differentiable in `x` (the input-gradient direction).
    pub fn matmul(&self, x: Tensor<2>) -> Tensor<2> {
        self.apply(x, true, QKernel::Tiled)
    }

    /// The dense `[n, k]` weight (for merging and the weight-centric OFT baseline only): the
    /// kernel applied to the identity, which is exact (every sum has one nonzero term).
    pub fn dequantize(&self) -> Tensor<2> {
        let eye = Tensor::<2>::eye(self.layout.n, &self.words.device());
        self.matmul(eye)
    }

    /// Bytes on the GPU.
    pub fn gpu_bytes(&self) -> usize {
        self.layout.total_words() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::ggml;
    use crate::quant::nf4::{dequantize_nf4, quantize_nf4};

    fn sample(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn nf4_repack_decodes_like_bitsandbytes() {
        let v = sample(6 * 128, 1);
        let mut q = quantize_nf4(&v, 64).unwrap();
        q.shape = vec![6, 128];
        let host = PackedHost::from_nf4(&q).unwrap();
        assert_eq!(host.dequantize(), dequantize_nf4(&q).unwrap());
        assert_eq!(host.gpu_bytes(), 6 * 128 / 2 + 12 * 4);
    }

    #[test]
    fn ggml_repack_decodes_like_ggml() {
        let (n, k) = (3, 64);
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
            let bytes: Vec<u8> = (0..n * ty.row_bytes(k).unwrap())
                .map(|i| {
                    // small positive f16 scales, arbitrary codes
                    let at = i % ty.block_bytes();
                    if at < 4 && (ty == GgmlType::Q4_1 || at < 2) {
                        if at % 2 == 0 { 0x66 } else { 0x26 }
                    } else {
                        (i * 37 % 251) as u8
                    }
                })
                .collect();
            let host = PackedHost::from_ggml(ty, &bytes, n, k).unwrap();
            assert_eq!(
                host.dequantize(),
                ggml::dequantize(ty, &bytes, n * k).unwrap(),
                "{ty:?}"
            );
        }
    }

    #[test]
    fn unaligned_rows_are_a_clear_error() {
        // Rows of 112 with 64-blocks straddling rows (and a partial last block) are fine ...
        let mut q = quantize_nf4(&sample(5 * 112, 2), 64).unwrap();
        q.shape = vec![5, 112];
        let host = PackedHost::from_nf4(&q).unwrap();
        assert_eq!(host.dequantize(), dequantize_nf4(&q).unwrap());
        // ... rows of 40 are not.
        let mut q = quantize_nf4(&sample(5 * 40, 2), 64).unwrap();
        q.shape = vec![5, 40];
        let e = PackedHost::from_nf4(&q).unwrap_err();
        assert!(e.to_string().contains("40 is not a multiple of 16"), "{e}");
        assert!(matches!(
            PackedHost::from_ggml(GgmlType::F16, &[0; 128], 1, 64),
            Err(QError::Unsupported(_))
        ));
    }
}
