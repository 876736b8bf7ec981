//! Quantized weight formats and their maths, CPU reference first (GPU kernels come with the
//! quantization issue).

pub mod bnb;
pub mod ggml;
pub mod loftq;
pub mod nf4;
pub mod torch_sum;
