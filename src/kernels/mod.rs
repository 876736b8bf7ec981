//! Our own GPU kernels (WGSL in `shaders/`), registered as burn backend-extension operations with
//! their backward passes: the fused quantized matmul, OFT's block-diagonal input rotation and
//! OFT's Cayley-Neumann rotation build. Each kernel keeps a reference next to it (CPU code or burn
//! tensor ops); on devices without the kernels (the CPU backend) callers use the reference instead.

pub mod block_rotate;
pub mod cayley;
pub mod qmatmul;

use burn::backend::wgpu::{CubeTensor, KernelSource, SourceKernel};
use burn::cubecl::server::{BufferBinding, KernelArguments};
use burn::cubecl::{CubeCount, CubeDim};
use burn::tensor::{DType, Device, Shape};
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether the wgpu device enabled the `subgroups` feature (recorded once by the front end's
/// backend selection); kernels with a subgroup variant then use it.
static SUBGROUPS: AtomicBool = AtomicBool::new(false);

/// Record whether the wgpu device has the `subgroups` feature (see [`subgroups`]).
pub fn set_subgroups(on: bool) {
    SUBGROUPS.store(on, Ordering::Relaxed);
}

/// True when our kernels may use their subgroup variants (the device has `subgroups`).
pub fn subgroups() -> bool {
    SUBGROUPS.load(Ordering::Relaxed)
}

/// True when `device` (autodiff or not) runs on burn's CubeCL backend (wgpu), where our WGSL
/// kernels can launch.
pub fn has_wgsl_kernels(device: &Device) -> bool {
    matches!(
        device.clone().inner().as_dispatch(),
        burn::backend::DispatchDevice::Cube(_)
    )
}

/// One WGSL file we own.
#[derive(Debug, Clone, Copy)]
pub struct Shader {
    /// File name under `shaders/`.
    pub file: &'static str,
    /// The template text.
    pub source: &'static str,
    /// Every template fill the kernels launch, as `(description, completed WGSL)`: what the
    /// validation test checks.
    pub variants: fn() -> Vec<(String, String)>,
}

/// Every WGSL source we own, with its template variants, for validation.
pub const SHADERS: &[Shader] = &[
    Shader {
        file: "qmatmul.wgsl",
        source: qmatmul::SOURCE,
        variants: qmatmul::variants,
    },
    Shader {
        file: "qdecode.wgsl",
        source: qmatmul::DECODE,
        variants: qmatmul::decode_variants,
    },
    Shader {
        file: "qgemv.wgsl",
        source: qmatmul::GEMV,
        variants: qmatmul::gemv_variants,
    },
    Shader {
        file: "qgemv_subgroup.wgsl",
        source: qmatmul::GEMV_SUBGROUP,
        variants: qmatmul::gemv_subgroup_variants,
    },
    Shader {
        file: "qgemv_workgroup.wgsl",
        source: qmatmul::GEMV_WORKGROUP,
        variants: qmatmul::gemv_workgroup_variants,
    },
    Shader {
        file: "uniform_info.wgsl",
        source: UNIFORM_INFO,
        variants: uniform_info_variants,
    },
    Shader {
        file: "block_rotate.wgsl",
        source: block_rotate::SOURCE,
        variants: block_rotate::variants,
    },
    Shader {
        file: "cayley_neumann.wgsl",
        source: cayley::SOURCE,
        variants: cayley::variants,
    },
];

/// `shaders/uniform_info.wgsl`: `info` as a workgroup-uniform value, appended to the kernels
/// whose barrier loops take their bounds from it.
pub const UNIFORM_INFO: &str = include_str!("../../shaders/uniform_info.wgsl");

/// Variants of `uniform_info.wgsl`: every kernel it is appended to.
fn uniform_info_variants() -> Vec<(String, String)> {
    let mut v = qmatmul::variants();
    v.extend(block_rotate::variants());
    v
}

/// An uninitialised contiguous f32 tensor of `shape` on `like`'s device.
pub(crate) fn empty_f32(like: &CubeTensor, shape: Vec<usize>) -> CubeTensor {
    let bytes = shape.iter().product::<usize>().max(1) * 4;
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        Shape::from(shape),
        like.client.empty(bytes),
        DType::F32,
    )
}

/// Launches one of our WGSL kernels (256 invocations per workgroup in the x dimension unless
/// `cube_dim` says otherwise) on `like`'s device: `buffers` are bindings 0, 1, ... in order, and
/// a non-empty `info` is uploaded as one more u32 storage binding after them.
pub(crate) fn launch(
    like: &CubeTensor,
    kernel: impl KernelSource,
    cube_dim: CubeDim,
    count: [u32; 3],
    mut buffers: Vec<BufferBinding>,
    info: &[u32],
) {
    let client = &like.client;
    if !info.is_empty() {
        buffers.push(
            client
                .create_from_slice(bytemuck::cast_slice(info))
                .binding(),
        );
    }
    client.launch(
        Box::new(SourceKernel::new(kernel, cube_dim)),
        CubeCount::Static(count[0], count[1], count[2]),
        KernelArguments::new().with_buffers(buffers),
    );
}
