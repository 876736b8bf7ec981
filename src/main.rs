//! `wgtune` binary: parse arguments, run, and turn any error into one line and a non-zero exit.

use clap::Parser;
use std::process::ExitCode;

/// Mesa's Vulkan loader prints `error: XDG_RUNTIME_DIR is invalid` when probing adapters without
/// one; give it a private directory so our own `error:` line is the only one a user sees.
fn quiet_vulkan_probe() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_some() {
        return;
    }
    let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
    let dir = std::env::temp_dir().join(format!("wgtune-runtime-{user}"));
    if std::fs::create_dir_all(&dir).is_ok() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        }
        // SAFETY: called first thing in main, before any other thread exists.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", &dir) };
    }
}

fn main() -> ExitCode {
    quiet_vulkan_probe();
    let cli = wgtune::app::cli::Cli::parse();
    match wgtune::app::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
