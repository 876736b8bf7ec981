//! Front ends: the headless CLI, the desktop app (`gui`) and the browser app (`web`, wasm32 only);
//! `ui` holds the egui panels and curves the two apps share.
//! File access, blocking on futures and the process exit code live here, not in the core.

#[cfg(not(target_arch = "wasm32"))]
pub mod cli;
pub mod curves;
#[cfg(not(target_arch = "wasm32"))]
pub mod export;
#[cfg(not(target_arch = "wasm32"))]
pub mod files;
#[cfg(not(target_arch = "wasm32"))]
pub mod gguf_meta;
#[cfg(not(target_arch = "wasm32"))]
pub mod gui;
#[cfg(not(target_arch = "wasm32"))]
pub mod loftq;
#[cfg(not(target_arch = "wasm32"))]
pub mod merge;
#[cfg(not(target_arch = "wasm32"))]
pub mod par;
#[cfg(not(target_arch = "wasm32"))]
pub mod quantize;
#[cfg(not(target_arch = "wasm32"))]
pub mod run_dir;
#[cfg(not(target_arch = "wasm32"))]
pub mod train;
pub mod ui;
#[cfg(target_arch = "wasm32")]
pub mod web;
