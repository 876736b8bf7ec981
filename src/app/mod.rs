//! Front ends: the headless CLI, the desktop app (`gui`) and, with a later issue, the web entry. File
//! access, blocking on futures and the process exit code live here, not in the core.

pub mod cli;
pub mod curves;
pub mod files;
#[cfg(not(target_arch = "wasm32"))]
pub mod gui;
pub mod loftq;
pub mod merge;
pub mod par;
pub mod quantize;
pub mod train;
