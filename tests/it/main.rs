//! Integration tests: the engine against reference fixtures from transformers (tests/fixtures/gen.py),
//! the real SmolLM2 GGUF, and the CLI's handling of bad input.

mod arch_fixtures;
mod batch_generate;
mod bench;
mod bnb_quantize;
mod cli_errors;
mod common;
mod gemma3;
mod gemma_tokenizer;
mod ggml_blocks;
mod ggml_quantize;
mod gguf_export;
mod gguf_merge;
mod gguf_meta;
mod gui;
mod hf_fixtures;
mod hostile_chat;
mod hostile_model;
mod hostile_run;
mod kernels;
mod loftq;
mod oft_kernels;
mod par;
mod peft_fixtures;
mod session;
mod smollm2;
mod train_cli;
mod trl_export;
mod vocab_shards;
