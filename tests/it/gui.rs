//! The desktop app: its run file trains exactly like `wgtune train --no-gui --config` (same loop,
//! same adapter, same losses), and under Xvfb the real window starts a run on the tiny fixture,
//! takes a non-blank screenshot and leaves a growing metrics file behind.

use crate::common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use wgtune::app::gui::state::MethodChoice;
use wgtune::app::gui::worker::{TrainJob, TrainMsg};
use wgtune::app::train::TrainEvent;
use wgtune::train::run::RunConfig;

/// The run the GUI state describes after a user picked LoRA and a few settings.
fn gui_run(out: &Path, steps: usize) -> RunConfig {
    let mut run = RunConfig {
        model: Some(fixture("tiny_gqa").display().to_string()),
        data: Some(fixture("tiny_gqa/data.jsonl").display().to_string()),
        out: Some(out.display().to_string()),
        backend: Some("cpu".into()),
        r: Some(4),
        lora_alpha: Some(8.0),
        lr: Some(0.01),
        steps: Some(steps),
        batch_size: Some(2),
        seed: Some(3),
        ..Default::default()
    };
    MethodChoice::Lora.apply(&mut run);
    run
}

fn losses(dir: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| Some((v["step"].as_u64()?, v["loss"].as_f64()?)))
        .collect()
}

#[test]
fn gui_run_file_trains_identically_headless() {
    let tmp = tempfile::tempdir().unwrap();
    let (gui_out, cli_out) = (tmp.path().join("gui"), tmp.path().join("cli"));
    let run = gui_run(&gui_out, 4);
    // "Save run…" writes exactly this text.
    let file = tmp.path().join("run.toml");
    std::fs::write(&file, run.to_toml()).unwrap();
    // The app's path: the training thread behind the Start button.
    let mut job = TrainJob::start(run, &eframe::egui::Context::default());
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut steps = 0;
    let done = loop {
        assert!(Instant::now() < deadline, "GUI training did not finish");
        let msgs = job.drain();
        let mut done = None;
        for m in msgs {
            match m {
                TrainMsg::Event(TrainEvent::Metrics(v)) if v.get("loss").is_some() => steps += 1,
                TrainMsg::Done(r) => done = Some(r),
                _ => {}
            }
        }
        if let Some(d) = done {
            break d;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let summary = done.unwrap().expect("a summary");
    assert_eq!((summary.steps, steps, summary.stopped), (4, 4, false));
    // The headless path on the saved run file (only the output folder differs).
    let out = Command::new(env!("CARGO_BIN_EXE_wgtune"))
        .args(["train", "--no-gui", "--config"])
        .arg(&file)
        .arg("--out")
        .arg(&cli_out)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(losses(&gui_out), losses(&cli_out));
    assert_eq!(losses(&gui_out).len(), 4);
    let a = std::fs::read(gui_out.join("adapter_model.safetensors")).unwrap();
    let b = std::fs::read(cli_out.join("adapter_model.safetensors")).unwrap();
    assert!(a == b, "adapters differ");
    assert_eq!(
        std::fs::read_to_string(gui_out.join("adapter_config.json")).unwrap(),
        std::fs::read_to_string(cli_out.join("adapter_config.json")).unwrap()
    );
}

#[test]
fn gui_stop_writes_checkpoint_and_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let run = gui_run(tmp.path(), 100_000);
    let mut job = TrainJob::start(run, &eframe::egui::Context::default());
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut seen = 0;
    let done = loop {
        assert!(Instant::now() < deadline, "run did not stop");
        let mut done = None;
        for m in job.drain() {
            match m {
                TrainMsg::Event(TrainEvent::Metrics(_)) => seen += 1,
                TrainMsg::Done(r) => done = Some(r),
                _ => {}
            }
        }
        if seen >= 2 {
            job.ctl
                .stop
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(d) = done {
            break d;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let s = done.unwrap().unwrap();
    assert!(s.stopped && s.steps >= 2 && s.steps < 100_000);
    assert!(tmp.path().join("checkpoint/trainer.safetensors").exists());
    assert!(tmp.path().join("adapter_model.safetensors").exists());
}

/// Bad settings come back as a message, not a panic.
#[test]
fn gui_training_errors_are_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let mut run = gui_run(tmp.path(), 2);
    run.model = Some(tmp.path().join("missing").display().to_string());
    let mut job = TrainJob::start(run, &eframe::egui::Context::default());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline);
        if let Some(TrainMsg::Done(r)) = job
            .drain()
            .into_iter()
            .find(|m| matches!(m, TrainMsg::Done(_)))
        {
            let e = r.expect_err("an error");
            assert!(e.contains("missing"), "{e}");
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The real window under Xvfb: autostart a run, screenshot it, stop, exit.
#[test]
fn gui_window_screenshot_under_xvfb() {
    if !have("xvfb-run") {
        eprintln!("skipped: xvfb-run not installed (scripts/ensure-deps.sh installs it)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let run = gui_run(&out, 100_000);
    let file = tmp.path().join("run.toml");
    std::fs::write(&file, run.to_toml()).unwrap();
    let png = tmp.path().join("shot.png");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut child = Command::new("xvfb-run")
        .args(["-a", "-s", "-screen 0 1280x800x24"])
        .arg(env!("CARGO_BIN_EXE_wgtune"))
        .args([
            "gui",
            "--no-persist",
            "--autostart",
            "--exit-after-screenshot",
            "--config",
        ])
        .arg(&file)
        .arg("--screenshot-after")
        .arg("3")
        .arg(&png)
        .env("HOME", &home)
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(400);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the app did not exit after its screenshot");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stderr}");
    assert!(status.success(), "{stderr}");
    let img = image::open(&png).expect("a PNG").to_rgb8();
    assert!(
        img.width() >= 640 && img.height() >= 400,
        "{:?}",
        img.dimensions()
    );
    let px: Vec<f64> = img
        .pixels()
        .map(|p| p.0.iter().map(|&c| c as f64).sum())
        .collect();
    let mean = px.iter().sum::<f64>() / px.len() as f64;
    let var = px.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / px.len() as f64;
    assert!(var > 100.0, "screenshot looks blank (variance {var})");
    let steps = losses(&out);
    assert!(!steps.is_empty(), "metrics.jsonl did not grow");
    assert!(
        out.join("checkpoint/trainer.safetensors").exists(),
        "stop wrote no checkpoint"
    );
}
