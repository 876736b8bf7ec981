//! Quantized weight formats and their maths on the CPU: bitsandbytes NF4 (`nf4`, `bnb`, LoftQ) and
//! ggml's block types (`ggml`: legacy, K-quants). The GPU side re-lays the same codes for the fused
//! kernels (`crate::kernels::qmatmul`).

pub mod bnb;
pub mod ggml;
pub mod loftq;
pub mod nf4;
pub mod torch_sum;
