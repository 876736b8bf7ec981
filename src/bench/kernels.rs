//! Kernel micro-benchmarks: the fused quantized matmul against burn's f32 matmul on the same
//! shapes, and OFT's fused block rotation and Cayley-Neumann build against their burn-ops
//! reference, measured side by side in one run on one device.

use crate::adapters::oft::{cayley_neumann, rotate_reference, skew};
use crate::kernels::qmatmul::{GEMV_MAX_ROWS, PackedHost, PackedWeight, QFormat, QKernel};
use crate::kernels::{block_rotate, cayley};
use crate::model::read_f32;
use crate::quant::ggml;
use crate::quant::nf4::quantize_nf4_shaped;
use anyhow::Result;
use burn::tensor::{Device, Tensor, TensorData};
use std::time::Instant;

/// SmolLM2-135M's projection shapes `[out, in]`: q/o, k/v, gate/up, down.
pub const SMOLLM2_SHAPES: [(usize, usize); 4] = [(576, 576), (192, 576), (1536, 576), (576, 1536)];

/// Gemma 3 270M's projection shapes `[out, in]`: q, k/v, gate/up, o, down (only o and down have
/// rows of whole 256-value K-quant super-blocks, as in a real Q4_K_M file).
pub const GEMMA3_270M_SHAPES: [(usize, usize); 5] = [
    (1024, 640),
    (256, 640),
    (2048, 640),
    (640, 1024),
    (640, 2048),
];

/// One shape × format measurement.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QMatmulBench {
    /// `NF4`, `Q4_1`, ...
    pub format: String,
    /// The fused kernel: `Tiled`, `Gemv` (workgroup reduction) or `GemvSubgroup`.
    pub kernel: String,
    /// Rows of x (batch · seq).
    pub m: usize,
    /// out_features.
    pub n: usize,
    /// in_features.
    pub k: usize,
    /// Median seconds of the fused `x · deq(W)ᵀ`.
    pub fused_secs: f64,
    /// Its throughput (2·m·n·k flops).
    pub fused_gflops: f64,
    /// Median seconds of burn's f32 `x · Wᵀ` (Wᵀ pre-transposed, contiguous).
    pub f32_secs: f64,
    /// Its throughput.
    pub f32_gflops: f64,
    /// fused / f32 throughput.
    pub ratio: f64,
    /// Bytes of the packed weight on the GPU.
    pub packed_bytes: usize,
    /// Bytes of the f32 weight.
    pub f32_bytes: usize,
}

/// Random values in [-1, 1) (an LCG: the benchmark needs no statistical quality).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

/// A weight `[n, k]` in `format` (NF4 quantized from random values; ggml blocks with random codes
/// and small f16 scales), or `None` when rows of `k` do not fill the format's blocks.
fn packed(format: QFormat, n: usize, k: usize) -> Result<Option<PackedHost>> {
    match format {
        QFormat::Nf4 => {
            let q = quantize_nf4_shaped(&values(n * k, 1), &[n, k], 64)?;
            Ok(Some(PackedHost::from_nf4(&q)?))
        }
        QFormat::Ggml(ty) if k.is_multiple_of(ty.block_size()) => {
            let bytes = ggml::synthetic_blocks(ty, n * k, 2)?;
            Ok(Some(PackedHost::from_ggml(ty, &bytes, n, k)?))
        }
        QFormat::Ggml(_) => Ok(None),
    }
}

/// Median wall seconds of `f` (each call ends with a device sync), after one warm-up call.
fn median_secs<const D: usize>(
    device: &Device,
    iters: usize,
    mut f: impl FnMut() -> Tensor<D>,
) -> Result<f64> {
    let run = |f: &mut dyn FnMut() -> Tensor<D>| -> Result<f64> {
        let t0 = Instant::now();
        let y = f();
        device
            .sync()
            .map_err(|e| anyhow::anyhow!("device sync: {e:?}"))?;
        let s = t0.elapsed().as_secs_f64();
        drop(y);
        Ok(s)
    };
    run(&mut f)?; // shader compile, autotune
    let mut t: Vec<f64> = (0..iters.max(1))
        .map(|_| run(&mut f))
        .collect::<Result<_>>()?;
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

/// Fused quantized matmul vs f32 matmul for every `shape × format × kernel`, `m` rows of input
/// (kernels that do not take `m` rows are skipped).
pub fn bench_qmatmul(
    device: &Device,
    m: usize,
    shapes: &[(usize, usize)],
    formats: &[QFormat],
    kernels: &[QKernel],
    iters: usize,
) -> Result<Vec<QMatmulBench>> {
    let mut out = Vec::new();
    for &(n, k) in shapes {
        let x: Tensor<2> = Tensor::from_data(TensorData::new(values(m * k, 3), [m, k]), device);
        let wt: Tensor<2> = Tensor::from_data(TensorData::new(values(k * n, 4), [k, n]), device);
        let f32_secs = median_secs(device, iters, || x.clone().matmul(wt.clone()))?;
        let flops = 2.0 * (m * n * k) as f64;
        for format in formats {
            let Some(host) = packed(*format, n, k)? else {
                continue;
            };
            let w = PackedWeight::upload(&host, device);
            for &kernel in kernels {
                if kernel != QKernel::Tiled && m > GEMV_MAX_ROWS {
                    continue;
                }
                let fused_secs = median_secs(device, iters, || w.matmul_t_with(x.clone(), kernel))?;
                // Check the result against the f32 path on the dequantized weight, so a kernel
                // that silently did nothing cannot be timed.
                let got = pollster::block_on(read_f32(w.matmul_t_with(x.clone(), kernel)))?;
                let dense: Tensor<2> =
                    Tensor::from_data(TensorData::new(host.dequantize(), [n, k]), device);
                let want = pollster::block_on(read_f32(x.clone().matmul(dense.transpose())))?;
                let scale = want.iter().fold(1e-6f32, |a, v| a.max(v.abs()));
                let err = got
                    .iter()
                    .zip(&want)
                    .fold(0f32, |a, (g, w)| a.max((g - w).abs()));
                anyhow::ensure!(
                    err <= 1e-4 * scale,
                    "{} {kernel:?} {m}x{n}x{k}: result off by {err}",
                    format.name()
                );
                out.push(QMatmulBench {
                    format: format.name().to_string(),
                    kernel: format!("{kernel:?}"),
                    m,
                    n,
                    k,
                    fused_secs,
                    fused_gflops: flops / fused_secs / 1e9,
                    f32_secs,
                    f32_gflops: flops / f32_secs / 1e9,
                    ratio: f32_secs / fused_secs,
                    packed_bytes: w.gpu_bytes(),
                    f32_bytes: n * k * 4,
                });
            }
        }
    }
    Ok(out)
}

/// SmolLM2-135M's OFT input widths: hidden (q/k/v/o, gate/up) and intermediate (down).
pub const SMOLLM2_OFT_WIDTHS: [usize; 2] = [576, 1536];

/// One OFT kernel measurement: fused kernel vs the burn-ops reference path.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OftBench {
    /// `rotate`, `rotate+grad`, `cayley` or `cayley+grad` (forward, or forward and backward).
    pub op: String,
    /// Rows of x (batch · seq); 0 for the Cayley build.
    pub m: usize,
    /// Input features.
    pub width: usize,
    /// Block size.
    pub b: usize,
    /// Median seconds of the fused kernel(s).
    pub fused_secs: f64,
    /// Median seconds of the burn-ops path.
    pub burn_secs: f64,
    /// burn / fused time.
    pub speedup: f64,
}

/// OFT's fused rotation `x·blockdiag(R)` and Cayley-Neumann build (peft's default 5 terms) vs
/// burn ops, forward and forward + backward, for every input width (blocks of `b`, `m` rows).
pub fn bench_oft(
    device: &Device,
    m: usize,
    widths: &[usize],
    b: usize,
    iters: usize,
) -> Result<Vec<OftBench>> {
    const TERMS: usize = 5;
    let ad = device.clone().autodiff();
    let mut out = Vec::new();
    for &width in widths {
        anyhow::ensure!(
            b >= 2 && width.is_multiple_of(b),
            "block {b} does not divide {width}"
        );
        let nb = width / b;
        let n = b * (b - 1) / 2;
        let upload = |v: Vec<f32>, shape: [usize; 2], d: &Device| {
            Tensor::<2>::from_data(TensorData::new(v, shape), d)
        };
        let x = values(m * width, 5);
        let g = values(m * width, 6);
        let v: Vec<f32> = values(nb * n, 7).iter().map(|a| a * 0.05).collect();
        let gr = values(nb * b * b, 8);
        let mut push = |op: &str, rows: usize, fused_secs: f64, burn_secs: f64| {
            out.push(OftBench {
                op: op.into(),
                m: rows,
                width,
                b,
                fused_secs,
                burn_secs,
                speedup: burn_secs / fused_secs,
            })
        };

        // The rotation against fixed rotations R (those of the skew vectors v).
        let rv = pollster::block_on(read_f32(cayley_neumann(
            skew(upload(v.clone(), [nb, n], device), b),
            TERMS,
        )))?;
        let r3 = |d: &Device| Tensor::<3>::from_data(TensorData::new(rv.clone(), [nb, b, b]), d);
        let r = r3(device);
        let xt = upload(x.clone(), [m, width], device);
        let fused = || block_rotate::block_rotate(xt.clone(), r.clone());
        pollster::block_on(read_f32(fused()?.slice([0..1, 0..width])))?;
        let fused_secs = median_secs(device, iters, || fused().expect("checked above"))?;
        let burn_secs = median_secs(device, iters, || rotate_reference(xt.clone(), r.clone()))?;
        push("rotate", m, fused_secs, burn_secs);

        let (xa, ga) = (upload(x, [m, width], &ad), upload(g, [m, width], &ad));
        let ra = r3(&ad).require_grad();
        let rotate_grad = |use_kernel: bool| {
            let xr = xa.clone().require_grad();
            let y = if use_kernel {
                block_rotate::block_rotate(xr.clone(), ra.clone()).expect("checked above")
            } else {
                rotate_reference(xr.clone(), ra.clone())
            };
            let grads = (y * ga.clone()).sum().backward();
            xr.grad(&grads).expect("x is tracked")
        };
        let fused_secs = median_secs(&ad, iters, || rotate_grad(true))?;
        let burn_secs = median_secs(&ad, iters, || rotate_grad(false))?;
        push("rotate+grad", m, fused_secs, burn_secs);

        let vt = upload(v.clone(), [nb, n], device);
        let fused = || cayley::cayley_neumann(vt.clone(), b, TERMS);
        pollster::block_on(read_f32(fused()?.slice([0..1, 0..1, 0..b])))?;
        let fused_secs = median_secs(device, iters, || fused().expect("checked above"))?;
        let burn_secs = median_secs(device, iters, || cayley_neumann(skew(vt.clone(), b), TERMS))?;
        push("cayley", 0, fused_secs, burn_secs);

        let va = upload(v, [nb, n], &ad);
        let gra = Tensor::<3>::from_data(TensorData::new(gr, [nb, b, b]), &ad);
        let cayley_grad = |use_kernel: bool| {
            let vr = va.clone().require_grad();
            let r = if use_kernel {
                cayley::cayley_neumann(vr.clone(), b, TERMS).expect("checked above")
            } else {
                cayley_neumann(skew(vr.clone(), b), TERMS)
            };
            let grads = (r * gra.clone()).sum().backward();
            vr.grad(&grads).expect("v is tracked")
        };
        let fused_secs = median_secs(&ad, iters, || cayley_grad(true))?;
        let burn_secs = median_secs(&ad, iters, || cayley_grad(false))?;
        push("cayley+grad", 0, fused_secs, burn_secs);
    }
    Ok(out)
}

/// Prints [`bench_oft`]'s results as a table.
pub fn print_oft(results: &[OftBench]) {
    println!("OFT op         m  width   b   fused ms   burn-ops ms   speedup");
    for r in results {
        println!(
            "{:<12} {:>5} {:>6} {:>3} {:>10.3} {:>13.3} {:>9.2}",
            r.op,
            r.m,
            r.width,
            r.b,
            r.fused_secs * 1e3,
            r.burn_secs * 1e3,
            r.speedup
        );
    }
}
