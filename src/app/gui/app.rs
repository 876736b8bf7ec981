//! The eframe application: panels on the left (model, data, method, training), run controls,
//! live curves and the sample box in the middle. All slow work goes to [`super::worker`].

use super::ScreenshotPlan;
use super::browse::{Browser, Outcome, Want};
use super::curves::Curves;
use super::state::DataInfo;
use super::state::{ModelInfo, Settings, problems, remember};
use super::worker::{Job, SampleRequest, TrainJob, TrainMsg};
use crate::app::train::{TrainEvent, TrainSummary};
use crate::io::gguf_model::Mix;
use crate::train::run::RunConfig;
use eframe::egui;
use egui::RichText;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

mod panels;

use crate::app::ui::ERR;
use crate::app::ui::widgets::recent_menu;

const STORAGE_KEY: &str = "wgtune-settings";

/// How the app was launched.
pub(crate) struct Launch {
    pub run: Option<(RunConfig, String)>,
    pub autostart: bool,
    pub screenshot: Option<ScreenshotPlan>,
    pub device_line: String,
    pub persist: bool,
}

/// What the export row writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExportKind {
    /// `wgtune merge`: HF folder.
    HfFolder,
    /// `wgtune merge --format gguf`: one GGUF model file.
    GgufModel,
    /// `wgtune export --format gguf`: llama.cpp LoRA adapter.
    GgufAdapter,
}

impl ExportKind {
    /// The label in the picker.
    fn label(self) -> &'static str {
        match self {
            ExportKind::HfFolder => "merged HF folder",
            ExportKind::GgufModel => "merged GGUF model",
            ExportKind::GgufAdapter => "GGUF LoRA adapter",
        }
    }

    /// Where it goes by default, inside the run folder `out`.
    fn default_path(self, out: &Path, quant: Mix) -> PathBuf {
        match self {
            ExportKind::HfFolder => out.join("merged"),
            ExportKind::GgufModel => out.join(format!("merged-{}.gguf", quant.name())),
            ExportKind::GgufAdapter => out.join("adapter.gguf"),
        }
    }
}

#[derive(PartialEq)]
enum Shot {
    Waiting,
    Requested,
    Closing,
    Done,
}

/// A run in progress or finished, as the UI shows it.
#[derive(Default)]
struct RunView {
    total: usize,
    first_step: u64,
    trainable: usize,
    backend: String,
    started: Option<Instant>,
    steps_seen: u64,
    summary: Option<TrainSummary>,
    log: Vec<String>,
}

pub(crate) struct WgtuneApp {
    settings: Settings,
    run: RunConfig,
    persist: bool,
    device_line: String,
    model: Option<ModelInfo>,
    model_job: Option<Job<ModelInfo>>,
    model_err: Option<String>,
    data: Option<DataInfo>,
    data_job: Option<Job<DataInfo>>,
    data_err: Option<String>,
    train: Option<TrainJob>,
    view: RunView,
    curves: Curves,
    error: Option<String>,
    notice: Option<String>,
    sample_job: Option<Job<String>>,
    sample_out: String,
    sample_chat: bool,
    launched: Instant,
    autostart: bool,
    shot_plan: Option<ScreenshotPlan>,
    shot: Shot,
    shot_result: Arc<Mutex<Option<Result<(), String>>>>,
    frame_times: Vec<f64>,
    ui_times: Vec<f64>,
    last_frame: Option<Instant>,
    browser: Option<Browser<Pick>>,
    export_dir: String,
    export_kind: ExportKind,
    export_quant: Mix,
    export_job: Option<Job<String>>,
}

/// Which field a file picker fills.
#[derive(Clone, Copy, PartialEq)]
enum Pick {
    Model,
    Data,
    RunOpen,
    RunSave,
    Out,
    Export,
}

impl WgtuneApp {
    pub(crate) fn new(cc: &eframe::CreationContext<'_>, l: Launch) -> WgtuneApp {
        let mut settings: Settings = if l.persist {
            cc.storage
                .and_then(|s| eframe::get_value(s, STORAGE_KEY))
                .unwrap_or_default()
        } else {
            Settings::default()
        };
        let mut notice = None;
        let run = match l.run {
            Some((run, file)) => {
                remember(&mut settings.recent_runs, &file);
                settings.run_file = file.clone();
                notice = Some(format!("opened {file}"));
                run
            }
            None => settings.run(),
        };
        let mut app = WgtuneApp {
            curves: Curves::new(settings.smoothing),
            settings,
            run,
            persist: l.persist,
            device_line: l.device_line,
            model: None,
            model_job: None,
            model_err: None,
            data: None,
            data_job: None,
            data_err: None,
            train: None,
            view: RunView::default(),
            error: None,
            notice,
            sample_job: None,
            sample_out: String::new(),
            sample_chat: false,
            launched: Instant::now(),
            autostart: l.autostart,
            shot_plan: l.screenshot,
            shot: Shot::Waiting,
            shot_result: Arc::new(Mutex::new(None)),
            frame_times: Vec::new(),
            ui_times: Vec::new(),
            last_frame: None,
            browser: None,
            export_dir: String::new(),
            export_kind: ExportKind::HfFolder,
            export_quant: Mix::Q8_0,
            export_job: None,
        };
        app.load_model(&cc.egui_ctx);
        app
    }

    fn load_model(&mut self, ctx: &egui::Context) {
        let Some(path) = self.run.model.clone().filter(|p| !p.trim().is_empty()) else {
            return;
        };
        remember(&mut self.settings.recent_models, &path);
        self.model_err = None;
        self.model_job = Some(Job::spawn(ctx, move || super::worker::inspect_model(path)));
    }

    fn load_data(&mut self, ctx: &egui::Context) {
        let Some(path) = self.run.data.clone().filter(|p| !p.trim().is_empty()) else {
            return;
        };
        remember(&mut self.settings.recent_data, &path);
        self.data_err = None;
        let model = self.model.clone();
        self.data_job = Some(Job::spawn(ctx, move || {
            super::worker::preview_data(path, model)
        }));
    }

    /// Read the run file named in the top bar into the settings.
    fn open_run(&mut self, ctx: &egui::Context) {
        let file = self.settings.run_file.clone();
        match std::fs::read_to_string(&file)
            .map_err(|e| e.to_string())
            .and_then(|t| RunConfig::from_toml(&t))
        {
            Ok(run) => {
                self.run = run;
                remember(&mut self.settings.recent_runs, &file);
                self.notice = Some(format!("opened {file}"));
                self.error = None;
                self.load_model(ctx);
            }
            Err(e) => self.error = Some(format!("{file}: {e}")),
        }
    }

    /// Write the settings to the run file named in the top bar.
    fn save_run(&mut self) {
        let file = self.settings.run_file.clone();
        match crate::app::files::write_atomic(Path::new(&file), self.run.to_toml().as_bytes()) {
            Ok(()) => {
                remember(&mut self.settings.recent_runs, &file);
                self.notice = Some(format!("saved {file}"));
            }
            Err(e) => self.error = Some(format!("{file}: {e:#}")),
        }
    }

    /// Open the file picker for `pick`, starting near that field's current value.
    fn browse(&mut self, pick: Pick, title: &'static str, want: Want) {
        let current = match pick {
            Pick::Model => self.run.model.clone(),
            Pick::Data => self.run.data.clone(),
            Pick::RunOpen | Pick::RunSave => Some(self.settings.run_file.clone()),
            Pick::Out => self.run.out.clone(),
            Pick::Export => Some(self.export_dir.clone()),
        };
        self.browser = Some(Browser::new(
            pick,
            title,
            want,
            &current.unwrap_or_default(),
        ));
    }

    /// Put a path chosen in the picker where it belongs and act on it.
    fn picked(&mut self, pick: Pick, path: &Path, ctx: &egui::Context) {
        let p = path.display().to_string();
        match pick {
            Pick::Model => {
                self.run.model = Some(p);
                self.load_model(ctx);
            }
            Pick::Data => {
                self.run.data = Some(p);
                self.load_data(ctx);
            }
            Pick::RunOpen => {
                self.settings.run_file = p;
                self.open_run(ctx);
            }
            Pick::RunSave => {
                self.settings.run_file = p;
                self.save_run();
            }
            Pick::Out => self.run.out = Some(p),
            Pick::Export => self.export_dir = p,
        }
    }

    /// Export the adapter in the output folder to `export_dir` on a background thread, as
    /// `export_kind` says: merged HF folder or GGUF model (`wgtune merge`'s code), or GGUF LoRA
    /// adapter (`wgtune export`'s).
    fn export(&mut self, ctx: &egui::Context) {
        let Some((model, quantize, adapter)) = self.export_source() else {
            self.error = Some("export: no adapter in the output folder yet".into());
            return;
        };
        let dest = PathBuf::from(self.export_dir.trim());
        let (kind, mix) = (self.export_kind, self.export_quant);
        self.notice = Some(format!("exporting to {}…", dest.display()));
        self.export_job = Some(Job::spawn(ctx, move || {
            let shown = dest.display().to_string();
            match kind {
                ExportKind::HfFolder => {
                    crate::app::merge::merge_into(&model, quantize.as_deref(), &adapter, &dest)
                        .map(|n| format!("merged model written to {shown} ({n} tensors)"))
                }
                ExportKind::GgufModel => crate::app::merge::merge_to_gguf(
                    &model,
                    quantize.as_deref(),
                    &adapter,
                    &dest,
                    mix,
                ),
                ExportKind::GgufAdapter => crate::app::export::export_adapter_gguf(
                    &adapter,
                    &model,
                    &dest,
                    crate::io::gguf_adapter::OutType::F32,
                ),
            }
            .map_err(|e| format!("export: {e:#}"))
        }));
    }

    /// Base model, its on-load quantization and adapter folder of the last run, when the output
    /// folder holds an adapter. A LoftQ run's base is the quantized `base-nf4` it wrote.
    fn export_source(&self) -> Option<(PathBuf, Option<String>, PathBuf)> {
        let out = PathBuf::from(self.run.out.as_ref()?);
        if !out.join("adapter_model.safetensors").is_file() {
            return None;
        }
        let loftq = out.join("base-nf4");
        if self.run.init.as_deref() == Some("loftq") && loftq.is_dir() {
            return Some((loftq, None, out));
        }
        let model = PathBuf::from(self.run.model.as_ref()?);
        Some((model, self.run.base_quantization(), out))
    }

    /// The export row under a finished run: what to write (merged HF folder, merged GGUF with
    /// its quantization, GGUF LoRA adapter), where, and the button.
    fn export_row(&mut self, ui: &mut egui::Ui, ctx: &egui::Context) {
        let out = self.run.out.clone().map(PathBuf::from);
        let oft = self
            .run
            .method
            .as_deref()
            .is_some_and(|m| m.contains("oft"));
        if oft && self.export_kind == ExportKind::GgufAdapter {
            self.export_kind = ExportKind::GgufModel;
        }
        ui.horizontal(|ui| {
            let before = (self.export_kind, self.export_quant);
            egui::ComboBox::from_id_salt("export-kind")
                .selected_text(self.export_kind.label())
                .show_ui(ui, |ui| {
                    for k in [
                        ExportKind::HfFolder,
                        ExportKind::GgufModel,
                        ExportKind::GgufAdapter,
                    ] {
                        let r = ui.add_enabled_ui(!(oft && k == ExportKind::GgufAdapter), |ui| {
                            ui.selectable_value(&mut self.export_kind, k, k.label())
                        });
                        r.response.on_disabled_hover_text(
                            "llama.cpp has no OFT adapter type: export a merged GGUF model",
                        );
                    }
                });
            if self.export_kind == ExportKind::GgufModel {
                egui::ComboBox::from_id_salt("export-quant")
                    .selected_text(self.export_quant.name())
                    .show_ui(ui, |ui| {
                        for m in Mix::ALL {
                            ui.selectable_value(&mut self.export_quant, m, m.name());
                        }
                    })
                    .response
                    .on_hover_text("tensor types as llama-quantize picks them; same = the base's");
            }
            if let Some(o) = &out
                && (self.export_dir.trim().is_empty()
                    || (self.export_kind, self.export_quant) != before)
            {
                self.export_dir = self
                    .export_kind
                    .default_path(o, self.export_quant)
                    .display()
                    .to_string();
            }
            ui.label("to");
            ui.add(egui::TextEdit::singleline(&mut self.export_dir).desired_width(220.0));
            let (title, want) = match self.export_kind {
                ExportKind::HfFolder => ("Export folder", Want::Folder),
                _ => (
                    "Export file",
                    Want::Save { extension: "gguf" },
                ),
            };
            if ui.small_button("…").on_hover_text("pick where").clicked() {
                self.browse(Pick::Export, title, want);
            }
            let busy = self.export_job.is_some();
            if ui
                .add_enabled(
                    !busy && !self.export_dir.trim().is_empty(),
                    egui::Button::new("Export"),
                )
                .on_hover_text(match self.export_kind {
                    ExportKind::HfFolder => "Fold the adapter into the base and write config.json, model.safetensors and the tokenizer",
                    ExportKind::GgufModel => "Fold the adapter into the base and write one GGUF model for llama.cpp / Ollama / LM Studio",
                    ExportKind::GgufAdapter => "Write the LoRA adapter as llama.cpp's GGUF adapter (llama-cli --lora, Ollama ADAPTER)",
                })
                .clicked()
            {
                self.export(ctx);
            }
            if busy {
                ui.spinner();
            }
        });
    }

    fn start(&mut self, ctx: &egui::Context) {
        let p = problems(&self.run, self.model.as_ref());
        if !p.is_empty() {
            self.error = Some(format!("cannot start: {}", p.join("; ")));
            return;
        }
        self.error = None;
        self.curves = Curves::new(self.settings.smoothing);
        self.view = RunView {
            started: Some(Instant::now()),
            ..Default::default()
        };
        self.train = Some(TrainJob::start(self.run.clone(), ctx));
    }

    fn poll_jobs(&mut self, ctx: &egui::Context) {
        if let Some(r) = self.export_job.as_ref().and_then(|j| j.poll()) {
            self.export_job = None;
            match r {
                Ok(report) => self.notice = Some(report.trim_end().to_string()),
                Err(e) => self.error = Some(e),
            }
        }
        if let Some(r) = self.model_job.as_ref().and_then(|j| j.poll()) {
            self.model_job = None;
            match r {
                Ok(m) => {
                    self.model = Some(m);
                    self.load_data(ctx);
                }
                Err(e) => {
                    self.model = None;
                    self.model_err = Some(e);
                    self.load_data(ctx);
                }
            }
        }
        if let Some(r) = self.data_job.as_ref().and_then(|j| j.poll()) {
            self.data_job = None;
            match r {
                Ok(d) => self.data = Some(d),
                Err(e) => {
                    self.data = None;
                    self.data_err = Some(e);
                }
            }
        }
        if let Some(r) = self.sample_job.as_ref().and_then(|j| j.poll()) {
            self.sample_job = None;
            self.sample_out = match r {
                Ok(s) => s,
                Err(e) => format!("error: {e}"),
            };
        }
        let Some(job) = self.train.as_mut() else {
            return;
        };
        for msg in job.drain() {
            match msg {
                TrainMsg::Event(TrainEvent::Log(line)) => self.view.log.push(line),
                TrainMsg::Event(TrainEvent::Started {
                    first_step,
                    total,
                    trainable,
                    backend,
                }) => {
                    self.view.first_step = first_step;
                    self.view.total = total;
                    self.view.trainable = trainable;
                    self.view.backend = backend;
                }
                TrainMsg::Event(TrainEvent::Metrics(v)) => {
                    if v.get("loss").is_some() || v.get("reward_mean").is_some() {
                        self.view.steps_seen += 1;
                    }
                    if let Some(l) = v.get("loss").and_then(|l| l.as_f64())
                        && !l.is_finite()
                    {
                        self.error = Some(format!("non-finite loss at step {}", v["step"]));
                    }
                    self.curves.push(&v);
                }
                TrainMsg::Event(TrainEvent::Checkpoint(s)) => self
                    .view
                    .log
                    .push(format!("checkpoint written after step {s}")),
                TrainMsg::Event(TrainEvent::AdapterSaved(s)) => {
                    self.view.log.push(format!("adapter saved after step {s}"))
                }
                TrainMsg::Done(r) => {
                    match r {
                        Ok(Some(s)) => {
                            self.view.log.push(format!(
                                "{} after {} steps in {:.1}s; adapter in {}",
                                if s.stopped { "stopped" } else { "finished" },
                                s.steps,
                                s.secs,
                                s.out.display()
                            ));
                            self.view.summary = Some(s);
                        }
                        Ok(None) => self.view.log.push("LoRA-PAR run finished".into()),
                        Err(e) => self.error = Some(e),
                    }
                    self.train = None;
                    break;
                }
            }
        }
        let n = self.view.log.len();
        if n > 200 {
            self.view.log.drain(..n - 200);
        }
    }

    fn screenshots(&mut self, ctx: &egui::Context) {
        let Some(plan) = self.shot_plan.clone() else {
            return;
        };
        let t = self.launched.elapsed().as_secs_f64();
        match self.shot {
            Shot::Waiting => {
                let run_ready = !self.autostart
                    || self.view.steps_seen > 0
                    || (self.train.is_none() && self.view.started.is_some())
                    || t > plan.after + 120.0;
                if t >= plan.after && run_ready {
                    let result = self.shot_result.clone();
                    let path = plan.path.clone();
                    ctx.request_screenshot(move |img| {
                        *result.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(save_png(&img, &path));
                    });
                    self.shot = Shot::Requested;
                }
                ctx.request_repaint_after(std::time::Duration::from_millis(100));
            }
            Shot::Requested => {
                let done = self
                    .shot_result
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                match done {
                    Some(Ok(())) => {
                        eprintln!("screenshot: {}", plan.path.display());
                        self.shot = if plan.exit { Shot::Closing } else { Shot::Done };
                    }
                    Some(Err(e)) => {
                        eprintln!("error: screenshot: {e}");
                        self.error = Some(format!("screenshot: {e}"));
                        self.shot = if plan.exit { Shot::Closing } else { Shot::Done };
                    }
                    None => ctx.request_repaint(),
                }
            }
            Shot::Closing => {
                if let Some(j) = &self.train {
                    j.ctl.stop.store(true, Ordering::Relaxed);
                    ctx.request_repaint_after(std::time::Duration::from_millis(50));
                } else {
                    ctx.send_viewport_cmd(egui::ViewportCommand::Close);
                    self.shot = Shot::Done;
                }
            }
            Shot::Done => {}
        }
    }

    /// Frame statistics of the time a run was active (printed on exit): the interval between
    /// frames, and the part of it spent in our UI code (the rest is egui's tessellation, the
    /// renderer and the compositor).
    fn report_fps(&self) {
        let median = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        if self.frame_times.len() > 5 && !self.ui_times.is_empty() {
            let mean = self.frame_times.iter().sum::<f64>() / self.frame_times.len() as f64;
            eprintln!(
                "gui: {} frames while training, mean {:.1} fps, median frame {:.1} ms, of which UI code {:.2} ms",
                self.frame_times.len(),
                1.0 / mean,
                median(&self.frame_times) * 1e3,
                median(&self.ui_times) * 1e3
            );
        }
    }

    fn top_bar(&mut self, ui: &mut egui::Ui, ctx: &egui::Context) {
        ui.horizontal(|ui| {
            ui.heading("wgtune");
            ui.label(RichText::new(&self.device_line).weak());
        });
        ui.horizontal(|ui| {
            ui.label("run file");
            ui.add(egui::TextEdit::singleline(&mut self.settings.run_file).desired_width(260.0))
                .on_hover_text("TOML run file: what `wgtune train --no-gui --config FILE` reads");
            if ui
                .button("Open run…")
                .on_hover_text("Load the settings of a run file")
                .clicked()
            {
                self.browse(
                    Pick::RunOpen,
                    "Open run file",
                    Want::Open {
                        extensions: &["toml"],
                        folders: false,
                    },
                );
            }
            if ui
                .button("Save run…")
                .on_hover_text("Write these settings as a run file for `wgtune train --config`")
                .clicked()
            {
                self.browse(
                    Pick::RunSave,
                    "Save run file",
                    Want::Save { extension: "toml" },
                );
            }
            let mut picked = None;
            recent_menu(ui, "recent runs", &self.settings.recent_runs, |p| {
                picked = Some(p)
            });
            if let Some(p) = picked {
                self.settings.run_file = p;
                self.open_run(ctx);
            }
            if let Some(n) = &self.notice {
                ui.label(RichText::new(n).weak());
            }
        });
        if let Some(e) = self.error.clone() {
            ui.horizontal(|ui| {
                ui.label(RichText::new(format!("error: {e}")).color(ERR));
                if ui.small_button("dismiss").clicked() {
                    self.error = None;
                }
            });
        }
    }

    fn controls(&mut self, ui: &mut egui::Ui, ctx: &egui::Context) {
        let issues = problems(&self.run, self.model.as_ref());
        ui.horizontal(|ui| {
            let running = self.train.is_some();
            if ui
                .add_enabled(!running && issues.is_empty(), egui::Button::new("Start"))
                .on_hover_text("Train with these settings (same loop as `wgtune train --no-gui`)")
                .clicked()
            {
                self.start(ctx);
            }
            if let Some(j) = &self.train {
                let paused = j.ctl.pause.load(Ordering::Relaxed);
                if ui.button(if paused { "Resume" } else { "Pause" }).clicked() {
                    j.ctl.pause.store(!paused, Ordering::Relaxed);
                }
                if ui
                    .button("Stop")
                    .on_hover_text("Stop after this step; writes the checkpoint and the adapter")
                    .clicked()
                {
                    j.ctl.stop.store(true, Ordering::Relaxed);
                }
                if ui
                    .button("Save adapter")
                    .on_hover_text(
                        "Write the adapter (peft format) to the output folder after this step",
                    )
                    .clicked()
                {
                    j.ctl.save_adapter.store(true, Ordering::Relaxed);
                }
                if j.ctl.stop.load(Ordering::Relaxed) {
                    ui.spinner();
                    ui.label("stopping…");
                } else if paused {
                    ui.label("paused");
                }
            } else if let Some(s) = &self.view.summary {
                ui.label(format!(
                    "adapter saved in {}/adapter_model.safetensors",
                    s.out.display()
                ));
            }
            let v = &self.view;
            if v.total > 0 {
                let done = self.curves.last_step();
                ui.add(
                    egui::ProgressBar::new((done / v.total as f64) as f32)
                        .desired_width(180.0)
                        .text(format!("step {done:.0}/{}", v.total)),
                );
            }
            if let Some([_, l]) = self.curves.loss.last() {
                ui.label(format!("loss {l:.4}"));
            }
            if let Some([_, t]) = self.curves.tokens_per_s.last() {
                ui.label(format!("{t:.0} tok/s"));
            }
            if let Some(t) = v.started {
                ui.label(format!("{:.0}s", t.elapsed().as_secs_f64()));
            }
        });
        if self.train.is_none() && self.export_source().is_some() {
            self.export_row(ui, ctx);
        }
        if !self.view.backend.is_empty() {
            ui.label(
                RichText::new(format!(
                    "training on {} · {} trainable parameters",
                    self.view.backend, self.view.trainable
                ))
                .weak(),
            );
        }
        for p in &issues {
            ui.label(RichText::new(format!("• {p}")).color(ERR));
        }
    }

    fn plots(&mut self, ui: &mut egui::Ui) {
        crate::app::ui::panels::plots(
            ui,
            &mut self.curves,
            &mut self.settings.log_scale,
            &mut self.settings.smoothing,
            crate::app::ui::panels::Front::Desktop,
        );
    }

    fn sample_box(&mut self, ui: &mut egui::Ui, ctx: &egui::Context) {
        ui.horizontal(|ui| {
            ui.label("prompt").on_hover_text(
                "Try the base model plus the adapter saved in the output folder (greedy)",
            );
            ui.add(egui::TextEdit::singleline(&mut self.settings.prompt).desired_width(360.0));
            ui.checkbox(&mut self.sample_chat, "chat template");
            let busy = self.sample_job.is_some();
            if ui
                .add_enabled(!busy, egui::Button::new("Generate"))
                .clicked()
            {
                match self.run.model.clone() {
                    Some(model) => {
                        let adapter = self
                            .run
                            .out
                            .as_ref()
                            .map(|o| Path::new(o).to_path_buf())
                            .filter(|o| o.join("adapter_model.safetensors").exists());
                        let req = SampleRequest {
                            model,
                            quantize: self.run.base_quantization(),
                            adapter,
                            prompt: self.settings.prompt.clone(),
                            chat: self.sample_chat,
                            max_new_tokens: 48,
                            backend: self.run.backend.clone().unwrap_or_else(|| "auto".into()),
                        };
                        self.sample_out = "generating…".into();
                        self.sample_job = Some(Job::spawn(ctx, move || super::worker::sample(req)));
                    }
                    None => self.sample_out = "error: set a model first".into(),
                }
            }
            if busy {
                ui.spinner();
            }
        });
        if !self.sample_out.is_empty() {
            ui.label(RichText::new(&self.sample_out).monospace());
        }
    }
}

impl eframe::App for WgtuneApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        let now = Instant::now();
        if self.train.is_some()
            && let Some(prev) = self.last_frame
        {
            self.frame_times
                .push(now.duration_since(prev).as_secs_f64());
        }
        self.last_frame = Some(now);
        if self.autostart && self.model_job.is_none() {
            self.autostart = false;
            self.start(&ctx);
        }
        self.poll_jobs(&ctx);
        self.screenshots(&ctx);
        if self.train.is_some() {
            // Live curves and a responsive UI while a step runs (about 60 fps).
            ctx.request_repaint_after(std::time::Duration::from_millis(16));
        }
        if let Some(b) = self.browser.as_mut() {
            match b.show(&ctx) {
                Outcome::Open => {}
                Outcome::Cancelled => self.browser = None,
                Outcome::Picked(path) => {
                    let pick = b.target;
                    self.browser = None;
                    self.picked(pick, &path, &ctx);
                }
            }
        }
        egui::Panel::top("top").show(ui, |ui| self.top_bar(ui, &ctx));
        egui::Panel::left("settings")
            .resizable(true)
            .default_size(440.0)
            .show(ui, |ui| {
                egui::ScrollArea::vertical().show(ui, |ui| {
                    egui::CollapsingHeader::new("Model")
                        .default_open(true)
                        .show(ui, |ui| self.model_panel(ui, &ctx));
                    egui::CollapsingHeader::new("Data")
                        .default_open(true)
                        .show(ui, |ui| self.data_panel(ui, &ctx));
                    egui::CollapsingHeader::new("Method")
                        .default_open(true)
                        .show(ui, |ui| self.method_panel(ui));
                    egui::CollapsingHeader::new("Training")
                        .default_open(false)
                        .show(ui, |ui| self.training_panel(ui));
                });
            });
        egui::CentralPanel::default().show(ui, |ui| {
            self.controls(ui, &ctx);
            ui.separator();
            self.plots(ui);
            ui.separator();
            self.sample_box(ui, &ctx);
            ui.separator();
            egui::ScrollArea::vertical()
                .stick_to_bottom(true)
                .max_height(80.0)
                .show(ui, |ui| {
                    for l in &self.view.log {
                        ui.label(RichText::new(l).monospace().small());
                    }
                });
        });
        if self.train.is_some() {
            self.ui_times.push(now.elapsed().as_secs_f64());
        }
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        if self.persist {
            self.settings.run_toml = self.run.to_toml();
            eframe::set_value(storage, STORAGE_KEY, &self.settings);
        }
    }

    fn on_exit(&mut self) {
        if let Some(j) = &self.train {
            j.ctl.stop.store(true, Ordering::Relaxed);
        }
        self.report_fps();
    }
}

/// Write an egui screenshot as PNG.
fn save_png(img: &egui::ColorImage, path: &Path) -> Result<(), String> {
    let [w, h] = img.size;
    let bytes: Vec<u8> = img.pixels.iter().flat_map(|c| c.to_array()).collect();
    let buf = image::RgbaImage::from_raw(w as u32, h as u32, bytes)
        .ok_or("screenshot has an unexpected size")?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    buf.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| format!("{}: {e}", path.display()))
}
