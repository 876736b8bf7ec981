//! Kernel micro-benchmarks: the fused quantized matmul against burn's f32 matmul on the same
//! shapes, measured side by side in one run on one device.

use crate::kernels::qmatmul::{PackedHost, PackedWeight};
use crate::model::read_f32;
use crate::quant::ggml::GgmlType;
use crate::quant::nf4::quantize_nf4_shaped;
use anyhow::Result;
use burn::tensor::{Device, Tensor, TensorData};
use std::time::Instant;

/// SmolLM2-135M's projection shapes `[out, in]`: q/o, k/v, gate/up, down.
pub const SMOLLM2_SHAPES: [(usize, usize); 4] = [(576, 576), (192, 576), (1536, 576), (576, 1536)];

/// One shape × format measurement.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QMatmulBench {
    /// `NF4`, `Q4_1`, ...
    pub format: String,
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
/// and small f16 scales).
fn packed(format: &str, n: usize, k: usize) -> Result<PackedHost> {
    if format == "NF4" {
        let q = quantize_nf4_shaped(&values(n * k, 1), &[n, k], 64)?;
        return Ok(PackedHost::from_nf4(&q)?);
    }
    let ty = match format {
        "Q4_0" => GgmlType::Q4_0,
        "Q4_1" => GgmlType::Q4_1,
        "Q8_0" => GgmlType::Q8_0,
        f => anyhow::bail!("unknown format {f}"),
    };
    let scalars = if ty == GgmlType::Q4_1 { 4 } else { 2 };
    let bytes: Vec<u8> = values(n * ty.row_bytes(k)?, 2)
        .iter()
        .enumerate()
        .map(|(i, v)| match i % ty.block_bytes() {
            // f16 0x2a1f ≈ 0.047 for every scale (and min)
            at if at < scalars && at % 2 == 0 => 0x1f,
            at if at < scalars => 0x2a,
            _ => ((v + 1.0) * 127.9) as u8,
        })
        .collect();
    Ok(PackedHost::from_ggml(ty, &bytes, n, k)?)
}

/// Median wall seconds of `f` (each call ends with a device sync), after one warm-up call.
fn median_secs(device: &Device, iters: usize, mut f: impl FnMut() -> Tensor<2>) -> Result<f64> {
    let run = |f: &mut dyn FnMut() -> Tensor<2>| -> Result<f64> {
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

/// Fused quantized matmul vs f32 matmul for every `shape × format`, `m` rows of input.
pub fn bench_qmatmul(
    device: &Device,
    m: usize,
    shapes: &[(usize, usize)],
    formats: &[&str],
    iters: usize,
) -> Result<Vec<QMatmulBench>> {
    let mut out = Vec::new();
    for &(n, k) in shapes {
        let x: Tensor<2> = Tensor::from_data(TensorData::new(values(m * k, 3), [m, k]), device);
        let wt: Tensor<2> = Tensor::from_data(TensorData::new(values(k * n, 4), [k, n]), device);
        let f32_secs = median_secs(device, iters, || x.clone().matmul(wt.clone()))?;
        let flops = 2.0 * (m * n * k) as f64;
        for format in formats {
            let host = packed(format, n, k)?;
            let w = PackedWeight::upload(&host, device);
            let fused_secs = median_secs(device, iters, || w.matmul_t(x.clone()))?;
            // Read one result back so a kernel that silently did nothing cannot pass unnoticed.
            pollster::block_on(read_f32(w.matmul_t(x.clone().slice([0..1, 0..k]))))?;
            out.push(QMatmulBench {
                format: format.to_string(),
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
    Ok(out)
}
