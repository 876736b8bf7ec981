//! The desktop app (`wgtune`, `wgtune gui`): an eframe window with model, data, method and
//! training panels, live egui_plot curves and run controls. Training runs on a background thread
//! through [`crate::app::train::run_training`], the loop of `wgtune train --no-gui`; the window
//! renders with wgpu on the same device as burn's wgpu backend when one is available.

mod app;
pub mod browse;
pub use super::curves;
pub use super::ui::state;
pub mod worker;

use anyhow::{Result, anyhow, bail};
use eframe::egui;
use std::path::PathBuf;

/// `wgtune gui` arguments.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct GuiArgs {
    /// Run file to open (replaces the remembered run settings).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Start training as soon as the window is up.
    #[arg(long)]
    pub autostart: bool,
    /// Capture the window SECONDS after start (once the run has reported a step) to OUT.png.
    #[arg(long, num_args = 2, value_names = ["SECONDS", "OUT.png"])]
    pub screenshot_after: Vec<String>,
    /// Close the app once the screenshot is written (a running training is stopped first, which
    /// writes its checkpoint and adapter).
    #[arg(long)]
    pub exit_after_screenshot: bool,
    /// Neither read nor write remembered settings.
    #[arg(long)]
    pub no_persist: bool,
}

/// Parsed `--screenshot-after SECONDS OUT.png`.
#[derive(Debug, Clone)]
pub(crate) struct ScreenshotPlan {
    after: f64,
    path: PathBuf,
    exit: bool,
}

fn screenshot_plan(a: &GuiArgs) -> Result<Option<ScreenshotPlan>> {
    match a.screenshot_after.as_slice() {
        [] => {
            if a.exit_after_screenshot {
                bail!("--exit-after-screenshot needs --screenshot-after SECONDS OUT.png");
            }
            Ok(None)
        }
        [secs, path] => {
            let after: f64 = secs
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                .ok_or_else(|| {
                    anyhow!("--screenshot-after: `{secs}` is not a number of seconds")
                })?;
            Ok(Some(ScreenshotPlan {
                after,
                path: PathBuf::from(path),
                exit: a.exit_after_screenshot,
            }))
        }
        _ => bail!("--screenshot-after takes SECONDS and OUT.png"),
    }
}

/// Open the window and run until it is closed.
pub fn run_gui(a: GuiArgs) -> Result<()> {
    let plan = screenshot_plan(&a)?;
    if cfg!(target_os = "linux")
        && std::env::var_os("DISPLAY").is_none()
        && std::env::var_os("WAYLAND_DISPLAY").is_none()
    {
        bail!(
            "no display (DISPLAY is not set): run the desktop app in a graphical session or under \
             xvfb-run, or train headless with `wgtune train --no-gui`"
        );
    }
    let start_run = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| anyhow!("{}: {e}", p.display()))?;
            Some((
                crate::train::run::RunConfig::from_toml(&text)
                    .map_err(|e| anyhow!("{}: {e}", p.display()))?,
                p.display().to_string(),
            ))
        }
        None => None,
    };
    // One wgpu device for burn and the window: burn's runtime initialises first and eframe adopts
    // its instance, adapter, device and queue (WGTUNE_GUI_OWN_DEVICE=1 opts out).
    let shared = if std::env::var_os("WGTUNE_GUI_OWN_DEVICE").is_some() {
        None
    } else {
        crate::backend::shared_wgpu_setup()
    };
    let device_line = match &shared {
        Some(s) => {
            let i = s.adapter.get_info();
            format!(
                "window and wgpu training share one device: {} ({:?})",
                i.name, i.backend
            )
        }
        None => "window renders on its own wgpu device (burn's wgpu runtime unavailable)".into(),
    };
    let run_app = move |setup: Option<burn::tensor::wgpu::WgpuSetup>, device_line: String| {
        let mut opts = eframe::NativeOptions {
            viewport: egui::ViewportBuilder::default()
                .with_title("wgtune")
                .with_inner_size([1280.0, 800.0]),
            renderer: eframe::Renderer::Wgpu,
            ..Default::default()
        };
        if a.no_persist {
            opts.persistence_path = Some(
                std::env::temp_dir().join(format!("wgtune-gui-scratch-{}.ron", std::process::id())),
            );
        }
        if let Some(s) = setup {
            opts.wgpu_options.wgpu_setup =
                eframe::egui_wgpu::WgpuSetup::Existing(eframe::egui_wgpu::WgpuSetupExisting {
                    instance: s.instance,
                    adapter: s.adapter,
                    device: s.device,
                    queue: s.queue,
                });
        }
        let start_run = start_run.clone();
        let plan = plan.clone();
        let autostart = a.autostart;
        let no_persist = a.no_persist;
        eframe::run_native(
            "wgtune",
            opts,
            Box::new(move |cc| {
                Ok(Box::new(app::WgtuneApp::new(
                    cc,
                    app::Launch {
                        run: start_run,
                        autostart,
                        screenshot: plan,
                        device_line,
                        persist: !no_persist,
                    },
                )))
            }),
        )
    };
    // winit cannot create a second event loop in one process, so there is no in-process retry.
    let had_shared = shared.is_some();
    run_app(shared, device_line).map_err(|e| {
        anyhow!(
            "cannot open the window: {e}{}",
            if had_shared {
                " (if the GPU cannot present with burn's device, try WGTUNE_GUI_OWN_DEVICE=1)"
            } else {
                ""
            }
        )
    })
}
