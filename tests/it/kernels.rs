//! Our WGSL kernels: every shader validates with naga (all template variants) and stays within
//! WebGPU's default 16 KiB of workgroup memory, and the fused quantized matmul equals the dense reference (dequantize, then matmul in f64) on odd shapes in
//! both directions and through autodiff, on wgpu.

use crate::common::{block, device};
use burn::tensor::{Device, Tensor, TensorData};
use wgtune::backend::{BackendChoice, select};
use wgtune::kernels::qmatmul::{GEMV_MAX_ROWS, PackedHost, PackedWeight, QFormat, QKernel};
use wgtune::kernels::{SHADERS, has_wgsl_kernels};
use wgtune::model::read_f32;
use wgtune::quant::ggml;
use wgtune::quant::nf4::quantize_nf4;

/// Deterministic values in [-1, 1) with a few large outliers.
pub(crate) fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|i| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let v = (s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0;
            if i % 97 == 0 { v * 8.0 } else { v }
        })
        .collect()
}

/// One packed weight per format whose blocks fit rows of `k`, `[n, k]`: NF4 quantized from
/// values, ggml blocks with arbitrary codes and finite scales of both signs.
fn weights(n: usize, k: usize) -> Vec<PackedHost> {
    let mut nf4 = quantize_nf4(&values(n * k, 7), 64).unwrap();
    nf4.shape = vec![n, k];
    let mut out = vec![PackedHost::from_nf4(&nf4).unwrap()];
    for (i, format) in QFormat::all().into_iter().enumerate() {
        let QFormat::Ggml(ty) = format else { continue };
        if k.is_multiple_of(ty.block_size()) {
            let bytes = ggml::synthetic_blocks(ty, n * k, 11 + i as u64).unwrap();
            out.push(PackedHost::from_ggml(ty, &bytes, n, k).unwrap());
        }
    }
    out
}

/// `a [m, r] · b [r, c]` in f64, b given as a function.
fn reference(a: &[f32], m: usize, r: usize, c: usize, b: impl Fn(usize, usize) -> f32) -> Vec<f32> {
    let mut out = vec![0f32; m * c];
    for i in 0..m {
        for j in 0..c {
            let s: f64 = (0..r).map(|t| a[i * r + t] as f64 * b(t, j) as f64).sum();
            out[i * c + j] = s as f32;
        }
    }
    out
}

/// Largest difference relative to the largest reference magnitude.
pub(crate) fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |a, b| a.max(b.abs())).max(1e-30);
    got.iter()
        .zip(want)
        .fold(0f32, |a, (g, w)| a.max((g - w).abs()))
        / scale
}

pub(crate) fn upload<const D: usize>(v: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// WebGPU's default `maxComputeWorkgroupStorageSize`.
const WORKGROUP_BYTES: u32 = 16 * 1024;

#[test]
fn every_shader_validates_with_naga() {
    let mut listed: Vec<&str> = SHADERS.iter().map(|s| s.file).collect();
    listed.sort_unstable();
    let mut on_disk: Vec<String> = std::fs::read_dir(crate::common::root().join("shaders"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".wgsl"))
        .collect();
    on_disk.sort_unstable();
    assert_eq!(
        listed, on_disk,
        "every shaders/*.wgsl is in kernels::SHADERS"
    );
    for shader in SHADERS {
        let file = shader.file;
        let on_disk = std::fs::read_to_string(crate::common::root().join("shaders").join(file));
        assert_eq!(
            on_disk.unwrap(),
            shader.source,
            "{file}: SHADERS holds the file's text"
        );
        let variants = (shader.variants)();
        assert!(!variants.is_empty(), "{file} has no variants");
        for (what, src) in variants {
            assert!(
                !src.contains("{{"),
                "{file} {what}: unfilled template value"
            );
            let module = naga::front::wgsl::parse_str(&src)
                .unwrap_or_else(|e| panic!("{file} {what}: {}", e.emit_to_string(&src)));
            // Only the subgroup variants may need the device feature; everything else must
            // validate with the default (WebGPU baseline) capabilities.
            let caps = if src.contains("subgroupAdd") {
                naga::valid::Capabilities::default() | naga::valid::Capabilities::SUBGROUP
            } else {
                naga::valid::Capabilities::default()
            };
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
                .validate(&module)
                .unwrap_or_else(|e| panic!("{file} {what}: {e:?}"));
            let mut layouter = naga::proc::Layouter::default();
            layouter.update(module.to_ctx()).unwrap();
            let shared: u32 = module
                .global_variables
                .iter()
                .filter(|(_, g)| g.space == naga::AddressSpace::WorkGroup)
                .map(|(_, g)| layouter[g.ty].size)
                .sum();
            assert!(
                shared <= WORKGROUP_BYTES,
                "{file} {what}: {shared} bytes of workgroup memory"
            );
        }
    }
}

#[test]
fn fused_qmatmul_equals_dense_reference_on_wgpu() {
    let device = device("wgpu");
    assert!(has_wgsl_kernels(&device));
    assert!(!has_wgsl_kernels(
        &select(BackendChoice::Cpu).unwrap().device
    ));
    // M, N not multiples of the 64 tile; K = 192 is not a multiple of the 64-wide output tile of
    // the input-gradient direction; K = 112 makes NF4's flat 64-blocks straddle rows and leaves a
    // partial last block (7·112 = 784 = 12·64 + 16); K = 512 takes the K-quants.
    for (m, n, k) in [(37, 70, 192), (5, 3, 64), (7, 7, 112), (19, 67, 512)] {
        for host in weights(n, k) {
            let name = host.layout.format.name();
            let w = host.dequantize();
            let packed = PackedWeight::upload(&host, &device);
            let x = values(m * k, 3);
            let y = block(read_f32(packed.matmul_t(upload(
                x.clone(),
                [m, k],
                &device,
            ))))
            .unwrap();
            let want = reference(&x, m, k, n, |t, j| w[j * k + t]);
            let e = rel_err(&y, &want);
            assert!(e < 1e-5, "{name} forward {m}x{n}x{k}: rel err {e}");

            let dy = values(m * n, 5);
            let dx = block(read_f32(packed.matmul(upload(dy.clone(), [m, n], &device)))).unwrap();
            let want = reference(&dy, m, n, k, |t, j| w[t * k + j]);
            let e = rel_err(&dx, &want);
            assert!(e < 1e-5, "{name} input-grad {m}x{n}x{k}: rel err {e}");

            let dense = block(read_f32(packed.dequantize())).unwrap();
            assert_eq!(dense, w, "{name}: dequantize through the kernel is exact");
        }
    }
}

/// The matrix-vector kernel (decoding: M ≤ 8), with its portable workgroup reduction and with
/// the subgroup reduction (lavapipe has `subgroups`), against the dense reference; and `Auto`
/// takes it for M ≤ 8 and the tiled kernel above.
#[test]
fn qgemv_equals_dense_reference_on_wgpu() {
    let device = device("wgpu");
    let sub = wgtune::kernels::subgroups();
    eprintln!("device subgroups: {sub}");
    let mut kernels = vec![QKernel::Gemv, QKernel::Auto];
    if sub {
        kernels.push(QKernel::GemvSubgroup);
    }
    // N not a multiple of the 4 columns per workgroup; K = 112 straddles NF4 blocks over rows;
    // K = 320 gives invocations unequal shares of the 64 × 4 stride; K = 768 takes the K-quants.
    for (m, n, k) in [
        (1, 70, 192),
        (3, 5, 112),
        (8, 9, 320),
        (9, 4, 64),
        (2, 9, 768),
    ] {
        for host in weights(n, k) {
            let name = host.layout.format.name();
            let w = host.dequantize();
            let packed = PackedWeight::upload(&host, &device);
            let x = values(m * k, 13);
            let want = reference(&x, m, k, n, |t, j| w[j * k + t]);
            for &kernel in &kernels {
                if m > GEMV_MAX_ROWS && kernel != QKernel::Auto {
                    continue;
                }
                let y = block(read_f32(
                    packed.matmul_t_with(upload(x.clone(), [m, k], &device), kernel),
                ))
                .unwrap();
                let e = rel_err(&y, &want);
                assert!(e < 1e-5, "{name} {kernel:?} {m}x{n}x{k}: rel err {e}");
            }
        }
    }
    assert_eq!(QKernel::Auto.resolve(9, false), QKernel::Tiled);
    assert_eq!(QKernel::Auto.resolve(1, true), QKernel::Tiled);
    assert_eq!(
        QKernel::Auto.resolve(1, false),
        if sub {
            QKernel::GemvSubgroup
        } else {
            QKernel::Gemv
        }
    );
}

#[test]
fn fused_qmatmul_backward_through_autodiff() {
    let device = device("wgpu").autodiff();
    for host in weights(33, 256).into_iter().chain(weights(5, 112)) {
        let (n, k, m) = (host.layout.n, host.layout.k, 9);
        let w = host.dequantize();
        let packed = PackedWeight::upload(&host, &device);
        let x = upload(values(m * k, 21), [m, k], &device).require_grad();
        let g = values(m * n, 22);
        let y = packed.matmul_t(x.clone());
        let loss = (y * upload(g.clone(), [m, n], &device)).sum();
        let grads = loss.backward();
        let gx = block(read_f32(x.grad(&grads).unwrap())).unwrap();
        let want = reference(&g, m, n, k, |t, j| w[t * k + j]);
        let e = rel_err(&gx, &want);
        assert!(e < 1e-5, "{}: dx rel err {e}", host.layout.format.name());
    }
}
