//! Fused dequantize × matmul (`shaders/qmatmul.wgsl`): `y = x · deq(W)ᵀ` and its input gradient
//! `dx = dy · deq(W)` against a base weight that stays block-quantized on the GPU (bitsandbytes
//! NF4, every ggml block type: Q4_0 … Q8_0 and the K-quants Q2_K … Q6_K). The base is frozen, so
//! no weight gradient exists. For x with few rows (token-by-token decoding) the forward runs a
//! matrix-vector kernel instead (`shaders/qgemv.wgsl`), reduced with subgroup operations where
//! the device has them.
//!
//! All formats share one GPU layout, [`PackedHost`], described in `shaders/qdecode.wgsl`: the
//! integer codes of [`ggml::Unpacked`] in a dense low bit plane (2, 4 or 8 bits) and an optional
//! high plane (1 or 2 bits) in element order, then f32 block scales (and mins), then the K-quants'
//! 4- or 8-bit sub-block scale and min codes. Converting from the file layouts only moves bits
//! (codes and sub-block codes keep their values; f16 scales widen exactly), so the kernel decodes
//! exactly the file's values, and the buffer stays within 1.2× of the file's size:
//!
//! | type | file bits/weight | GPU bits/weight |
//! |------|-----------------:|----------------:|
//! | NF4 (block 64) | 4.5 | 4.5 |
//! | Q4_0 | 4.5 | 5.0 |
//! | Q4_1 | 5.0 | 6.0 |
//! | Q5_0 | 5.5 | 6.0 |
//! | Q5_1 | 6.0 | 7.0 |
//! | Q8_0 | 8.5 | 9.0 |
//! | Q2_K | 2.625 | 2.75 |
//! | Q3_K | 3.4375 | 3.625 |
//! | Q4_K | 4.5 | 4.75 |
//! | Q5_K | 5.5 | 5.75 |
//! | Q6_K | 6.5625 | 6.625 |
//!
//! (Q4_1 and Q5_1 are the only ones above 1.1×: their f16 scale and min widen to f32.)

use crate::quant::ggml::{self, CodeScheme, GgmlType, Unpacked};
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
    /// A ggml block type (legacy or K-quant), decoded by its [`CodeScheme`].
    Ggml(GgmlType),
}

impl QFormat {
    /// Name as users know it.
    pub fn name(self) -> &'static str {
        match self {
            QFormat::Nf4 => "NF4",
            QFormat::Ggml(ty) => ty.name(),
        }
    }

    /// Every format the kernel reads, with a block size it is used with (for validation and
    /// benchmarks).
    pub fn all() -> Vec<QFormat> {
        std::iter::once(QFormat::Nf4)
            .chain(
                GgmlType::ALL
                    .into_iter()
                    .filter(|t| t.scheme().is_some())
                    .map(QFormat::Ggml),
            )
            .collect()
    }

    /// The code scheme with `block` values per scale (NF4's block size is per tensor).
    fn scheme(self, block: usize) -> Result<CodeScheme, QError> {
        match self {
            QFormat::Nf4 => Ok(CodeScheme {
                values: block,
                lo_bits: 4,
                hi_bits: 0,
                code_offset: 0,
                sub: 0,
                sub_bits: 0,
                sub_offset: 0,
                has_min: false,
            }),
            QFormat::Ggml(ty) => ty
                .scheme()
                .ok_or_else(|| QError::Unsupported(ty.name().to_string())),
        }
    }
}

/// Shape and format of one packed weight `W [n, k]` (HF `[out, in]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QLayout {
    /// Format of the codes.
    pub format: QFormat,
    /// How values follow from codes (block size included).
    pub scheme: CodeScheme,
    /// Rows (out_features).
    pub n: usize,
    /// Columns (in_features).
    pub k: usize,
}

/// Words of a plane of `count` entries of `bits` bits each (entries never straddle words).
fn plane_words(count: usize, bits: u32) -> usize {
    if bits == 0 {
        0
    } else {
        count.div_ceil(32 / bits as usize)
    }
}

impl QLayout {
    /// The layout of `format` for `[n, k]` with `block` values per scale (ggml types have their own).
    pub fn new(format: QFormat, n: usize, k: usize, block: usize) -> Result<Self, QError> {
        let scheme = format.scheme(block)?;
        let block = scheme.values;
        // Blocks run over the flat row-major array (bitsandbytes) and may straddle rows; the
        // kernel only needs every aligned group of 4 values inside one block, one sub-block and
        // one word of each plane.
        if block == 0 || !block.is_multiple_of(4) || !k.is_multiple_of(16) || k == 0 {
            return Err(QError::Unaligned { k, block });
        }
        // Sizes come from model files: refuse before any unchecked product can overflow (a
        // buffer under the limit below holds far fewer values than this).
        if (n as u64).checked_mul(k as u64).is_none_or(|v| v > 1 << 40) {
            return Err(QError::TooLarge(usize::MAX));
        }
        let l = Self {
            format,
            scheme,
            n,
            k,
        };
        if l.total_words() > (128 << 20) / 4 {
            return Err(QError::TooLarge(l.total_words()));
        }
        Ok(l)
    }

    fn values(&self) -> usize {
        self.n * self.k
    }

    fn blocks(&self) -> usize {
        self.values().div_ceil(self.scheme.values)
    }

    fn subs(&self) -> usize {
        self.blocks() * self.scheme.subs()
    }

    /// Word offsets of the sections after the low code plane, in order: high code plane, `d`,
    /// `dmin`, sub-block scales, sub-block mins, end (absent sections are empty).
    fn offsets(&self) -> [usize; 6] {
        let s = &self.scheme;
        let mins = s.has_min as usize;
        let sub_mins = (s.has_min && s.sub > 0) as usize;
        let hi = plane_words(self.values(), s.lo_bits);
        let d = hi + plane_words(self.values(), s.hi_bits);
        let dmin = d + self.blocks();
        let sc = dmin + mins * self.blocks();
        let m = sc + plane_words(self.subs(), s.sub_bits);
        let end = m + sub_mins * plane_words(self.subs(), s.sub_bits);
        [hi, d, dmin, sc, m, end]
    }

    /// u32 words of the packed buffer.
    pub fn total_words(&self) -> usize {
        self.offsets()[5]
    }

    /// Bits per weight on the GPU (the packed buffer over the weight's values).
    pub fn gpu_bits_per_weight(&self) -> f64 {
        self.total_words() as f64 * 32.0 / self.values() as f64
    }
}

/// Writes a plane of `bits`-bit entries from word `start` on.
struct PlaneWriter {
    start: usize,
    bits: u32,
    next: usize,
}

impl PlaneWriter {
    fn put(&mut self, words: &mut [u32], v: u32) {
        if self.bits == 0 {
            return;
        }
        let per = 32 / self.bits as usize;
        words[self.start + self.next / per] |= v << ((self.next % per) as u32 * self.bits);
        self.next += 1;
    }
}

/// Reads entry `i` of a plane of `bits`-bit entries starting at word `start`.
fn plane_get(words: &[u32], start: usize, bits: u32, i: usize) -> u32 {
    if bits == 0 {
        return 0;
    }
    let per = 32 / bits as usize;
    (words[start + i / per] >> ((i % per) as u32 * bits)) & ((1u32 << bits) - 1)
}

/// A weight in the kernel's layout, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedHost {
    /// Shape and format.
    pub layout: QLayout,
    /// The sections of the module doc, in order.
    pub words: Vec<u32>,
}

/// Fills a [`PackedHost`] block by block from unpacked blocks.
struct Packer {
    layout: QLayout,
    words: Vec<u32>,
    planes: [PlaneWriter; 4],
    /// Word offsets of the `d` and `dmin` sections.
    d_at: usize,
    dmin_at: usize,
    block: usize,
}

impl Packer {
    fn new(layout: QLayout) -> Self {
        let s = layout.scheme;
        let [hi, d_at, dmin_at, sc, m, end] = layout.offsets();
        let plane = |start, bits| PlaneWriter {
            start,
            bits,
            next: 0,
        };
        Self {
            layout,
            words: vec![0u32; end],
            planes: [
                plane(0, s.lo_bits),
                plane(hi, s.hi_bits),
                plane(sc, s.sub_bits),
                plane(m, if s.has_min { s.sub_bits } else { 0 }),
            ],
            d_at,
            dmin_at,
            block: 0,
        }
    }

    /// Appends one block's first `len` codes (the last NF4 block may be partial).
    fn push(&mut self, u: &Unpacked, len: usize) {
        let s = self.layout.scheme;
        let lo_mask = (1u32 << s.lo_bits) - 1;
        let [lo, hi, sc, m] = &mut self.planes;
        for &c in &u.codes[..len] {
            lo.put(&mut self.words, c as u32 & lo_mask);
            hi.put(&mut self.words, c as u32 >> s.lo_bits);
        }
        for j in 0..s.subs() {
            sc.put(&mut self.words, u.scales[j] as u32);
            m.put(&mut self.words, u.mins[j] as u32);
        }
        self.words[self.d_at + self.block] = u.d.to_bits();
        if s.has_min {
            self.words[self.dmin_at + self.block] = u.dmin.to_bits();
        }
        self.block += 1;
    }

    fn finish(self) -> PackedHost {
        PackedHost {
            layout: self.layout,
            words: self.words,
        }
    }
}

impl PackedHost {
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
        let mut packer = Packer::new(layout);
        let mut u = Unpacked::default();
        for (bytes, &absmax) in t.packed.chunks(t.blocksize / 2).zip(&t.absmax) {
            for (j, b) in bytes.iter().enumerate() {
                u.codes[2 * j] = b >> 4;
                u.codes[2 * j + 1] = b & 15;
            }
            u.d = absmax;
            packer.push(&u, bytes.len() * 2);
        }
        Ok(packer.finish())
    }

    /// From ggml blocks (rows of `k` values, `ty.row_bytes(k)` bytes each).
    pub fn from_ggml(ty: GgmlType, bytes: &[u8], n: usize, k: usize) -> Result<Self, QError> {
        let layout = QLayout::new(QFormat::Ggml(ty), n, k, 0)?;
        let mismatch = |what: String| QError::Mismatch { n, k, what };
        let row = ty.row_bytes(k).map_err(|e| mismatch(e.to_string()))?;
        if Some(bytes.len()) != row.checked_mul(n) {
            return Err(mismatch(format!("{} bytes of {}", bytes.len(), ty.name())));
        }
        let mut packer = Packer::new(layout);
        let values = layout.scheme.values;
        ggml::unpack_blocks(ty, bytes, |u| packer.push(u, values))
            .map_err(|e| mismatch(e.to_string()))?;
        Ok(packer.finish())
    }

    /// The dense `[n, k]` values, decoded exactly as the shader does (the CPU reference).
    pub fn dequantize(&self) -> Vec<f32> {
        let l = &self.layout;
        let s = &l.scheme;
        let [hi, d_at, dmin_at, sc_at, m_at, _] = l.offsets();
        let w = &self.words;
        (0..l.values())
            .map(|i| {
                let c =
                    plane_get(w, 0, s.lo_bits, i) | (plane_get(w, hi, s.hi_bits, i) << s.lo_bits);
                let q = match l.format {
                    QFormat::Nf4 => NF4_CODE[c as usize],
                    QFormat::Ggml(_) => (c as i32 - s.code_offset) as f32,
                };
                let blk = i / s.values;
                let d = f32::from_bits(w[d_at + blk]);
                let dmin = if s.has_min {
                    f32::from_bits(w[dmin_at + blk])
                } else {
                    0.0
                };
                if let Some(j) = i.checked_div(s.sub) {
                    let scale =
                        d * (plane_get(w, sc_at, s.sub_bits, j) as i32 - s.sub_offset) as f32;
                    // -0.0 is the additive identity (keeps a -0.0 product, as ggml does).
                    let lo = if s.has_min {
                        -(dmin * plane_get(w, m_at, s.sub_bits, j) as f32)
                    } else {
                        -0.0
                    };
                    scale * q + lo
                } else if s.has_min {
                    q * d + dmin
                } else {
                    q * d
                }
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
            self.layout.format,
            self.layout.scheme,
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
    let s = &layout.scheme;
    t.add_template(DECODE)
        .register("table", (layout.format == QFormat::Nf4).to_string())
        .register("lo_bits", s.lo_bits.to_string())
        .register("hi_bits", s.hi_bits.to_string())
        .register("code_offset", s.code_offset.to_string())
        .register("block", s.values.to_string())
        .register("sub", s.sub.to_string())
        .register("sub_bits", s.sub_bits.to_string())
        .register("sub_offset", s.sub_offset.to_string())
        .register("has_min", s.has_min.to_string())
        .register("input_grad", input_grad.to_string())
}

/// Every complete kernel launched for `kernels`: each format × (both directions for the tiled
/// kernel, the forward for the others), for validation.
fn variants_of(kernels: &[QKernel]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for format in QFormat::all() {
        let layout = QLayout::new(format, 2, 256, 64).expect("a valid layout");
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
        let [hi, d, dmin, sc, sub_min, _] = layout.offsets().map(|o| o as u32);
        let info: [u32; 8] = [
            m as u32,
            layout.n as u32,
            layout.k as u32,
            hi,
            d,
            dmin,
            sc,
            sub_min,
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
        for format in QFormat::all() {
            let QFormat::Ggml(ty) = format else { continue };
            let (n, k) = (3, 512);
            let bytes = ggml::synthetic_blocks(ty, n * k, 7).unwrap();
            let host = PackedHost::from_ggml(ty, &bytes, n, k).unwrap();
            let want = ggml::dequantize(ty, &bytes, n * k).unwrap();
            let got = host.dequantize();
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{ty:?}"
            );
            let file_bpw = ty.bits_per_weight();
            let gpu_bpw = host.layout.gpu_bits_per_weight();
            assert!(
                gpu_bpw <= 1.25 * file_bpw,
                "{ty:?}: {gpu_bpw} vs {file_bpw}"
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
