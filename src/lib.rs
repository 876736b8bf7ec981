//! wgtune: a cross-platform WebGPU finetuner for small decoder LMs (Llama, Mistral, Qwen2/2.5,
//! Qwen3, Gemma 3).
//!
//! Data flows one way: files ([`io`]) → model ([`model`], with quantized bases from [`quant`]) →
//! adapters → training loop → metrics → front end. The core library never touches the file
//! system and never blocks on GPU readbacks, so the same code runs natively and in a browser tab;
//! file access and the event loop belong to the front ends in [`app`].

pub mod adapters;
pub mod backend;
pub mod io;
pub mod kernels;
pub mod model;
pub mod par;
pub mod quant;
pub mod train;

pub mod app;
#[cfg(not(target_arch = "wasm32"))]
pub mod bench;

pub use adapters::{AdapterConfig, Method};
pub use model::arch::Arch;
pub use model::config::DecoderConfig;
pub use model::decoder::Decoder;
pub use model::loader::{LoadedModel, load_model};
pub use train::run::RunConfig;
pub use train::trainer::{StepMetrics, TrainConfig, Trainer};
