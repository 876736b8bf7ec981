//! Our own GPU kernels (WGSL in `shaders/`), registered as burn backend-extension operations with
//! their backward passes: the fused quantized matmul. Each kernel keeps a CPU reference next to
//! it; on devices without the kernel (the CPU backend) callers use the reference path instead.

pub mod qmatmul;

use burn::tensor::Device;

/// True when `device` (autodiff or not) runs on burn's CubeCL backend (wgpu), where our WGSL
/// kernels can launch.
pub fn has_wgsl_kernels(device: &Device) -> bool {
    matches!(
        device.clone().inner().as_dispatch(),
        burn::backend::DispatchDevice::Cube(_)
    )
}

/// Every WGSL source we own, by file name, for validation and for the template fill.
pub const SHADERS: &[(&str, &str)] =
    &[("qmatmul.wgsl", include_str!("../../shaders/qmatmul.wgsl"))];
