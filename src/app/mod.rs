//! Front ends: the headless CLI (and, with later issues, the egui app and the web entry). File
//! access, blocking on futures and the process exit code live here, not in the core.

pub mod cli;
pub mod files;
pub mod loftq;
pub mod merge;
pub mod par;
pub mod quantize;
pub mod train;
