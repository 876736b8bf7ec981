//! The eframe application: panels on the left (model, data, method, training), run controls,
//! live curves and the sample box in the middle. All slow work goes to [`super::worker`].

use super::ScreenshotPlan;
use super::curves::{Curves, Series, log10};
use super::state::{
    MethodChoice, ModelInfo, Settings, memory_estimate, mib, problems, remember, trainable_line,
    trainable_params,
};
use super::worker::{DataInfo, Job, SampleRequest, TrainJob, TrainMsg};
use crate::adapters::TARGET_MODULES;
use crate::app::train::{TrainEvent, TrainSummary};
use crate::train::run::RunConfig;
use eframe::egui;
use egui::{Color32, DragValue, RichText};
use egui_plot::{Bar, BarChart, Legend, Line, Plot, VLine};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

const STORAGE_KEY: &str = "wgtune-settings";
const ERR: Color32 = Color32::from_rgb(230, 90, 80);

/// How the app was launched.
pub(crate) struct Launch {
    pub run: Option<(RunConfig, String)>,
    pub autostart: bool,
    pub screenshot: Option<ScreenshotPlan>,
    pub device_line: String,
    pub persist: bool,
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
    last_frame: Option<Instant>,
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
            last_frame: None,
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

    fn report_fps(&self) {
        if self.frame_times.len() > 5 {
            let mut v = self.frame_times.clone();
            v.sort_by(|a, b| a.total_cmp(b));
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            eprintln!(
                "gui: {} frames while training, mean {:.1} fps, median frame {:.1} ms",
                v.len(),
                1.0 / mean,
                v[v.len() / 2] * 1e3
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
            if ui
                .button("Save run…")
                .on_hover_text("Write these settings as a run file for `wgtune train --config`")
                .clicked()
            {
                let file = self.settings.run_file.clone();
                match crate::app::files::write_atomic(
                    Path::new(&file),
                    self.run.to_toml().as_bytes(),
                ) {
                    Ok(()) => {
                        remember(&mut self.settings.recent_runs, &file);
                        self.notice = Some(format!("saved {file}"));
                    }
                    Err(e) => self.error = Some(format!("{file}: {e:#}")),
                }
            }
            recent_menu(ui, "recent runs", &self.settings.recent_runs.clone(), |p| {
                self.settings.run_file = p
            });
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

    fn model_panel(&mut self, ui: &mut egui::Ui, ctx: &egui::Context) {
        ui.horizontal(|ui| {
            let r = opt_text(ui, &mut self.run.model, 220.0).on_hover_text(
                "HF model folder (config.json, *.safetensors, tokenizer.json) or a .gguf file",
            );
            if ui.button("Load").clicked()
                || (r.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter)))
            {
                self.load_model(ctx);
            }
            let mut picked = None;
            recent_menu(ui, "recent", &self.settings.recent_models, |p| {
                picked = Some(p)
            });
            if let Some(p) = picked {
                self.run.model = Some(p);
                self.load_model(ctx);
            }
        });
        if self.model_job.is_some() {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label("reading model files…");
            });
        }
        if let Some(e) = &self.model_err {
            ui.label(RichText::new(e).color(ERR));
        }
        let Some(m) = &self.model else {
            return;
        };
        let c = &m.config;
        let quantized = self.run.base_quantization().is_some();
        let trainable = self
            .run
            .adapter()
            .ok()
            .and_then(|a| trainable_params(c, &a).ok())
            .unwrap_or(0);
        egui::Grid::new("model_summary").num_columns(2).show(ui, |ui| {
            ui.label("architecture");
            ui.label(format!(
                "Llama: {} layers, hidden {}, heads {} (kv {}), vocab {}",
                c.num_hidden_layers,
                c.hidden_size,
                c.num_attention_heads,
                c.num_key_value_heads,
                c.vocab_size
            ));
            ui.end_row();
            ui.label("parameters");
            ui.label(format!(
                "{} ({:.2} M)",
                c.num_parameters(),
                c.num_parameters() as f64 / 1e6
            ));
            ui.end_row();
            ui.label("format");
            ui.label(format!("{}; {}", m.format, m.quantization()));
            ui.end_row();
            ui.label("stored");
            ui.label(mib(m.stored_bytes()));
            ui.end_row();
            ui.label("memory estimate").on_hover_text(
                "Rough device memory of training: base weights (NF4 when quantized), adapter + gradient + AdamW moments, activations of one micro-batch",
            );
            ui.label(format!(
                "≈ {}{}",
                mib(memory_estimate(
                    c,
                    quantized,
                    trainable,
                    self.run.batch_size.unwrap_or(4),
                    self.run.max_seq_len.unwrap_or(512)
                )),
                if quantized { " (NF4 base)" } else { " (f32 base)" }
            ));
            ui.end_row();
            ui.label("tokenizer");
            ui.label(match (&m.tokenizer, &m.chat_template) {
                (Some(_), Some(_)) => "yes, with chat template",
                (Some(_), None) => "yes, no chat template",
                _ => "none (token-id data only)",
            });
            ui.end_row();
        });
    }

    fn data_panel(&mut self, ui: &mut egui::Ui, ctx: &egui::Context) {
        ui.horizontal(|ui| {
            let r = opt_text(ui, &mut self.run.data, 220.0).on_hover_text(
                "jsonl or JSON array: input_ids, text, prompt/completion, alpaca or messages records",
            );
            if ui.button("Preview").clicked()
                || (r.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter)))
            {
                self.load_data(ctx);
            }
            let mut picked = None;
            recent_menu(ui, "recent", &self.settings.recent_data, |p| picked = Some(p));
            if let Some(p) = picked {
                self.run.data = Some(p);
                self.load_data(ctx);
            }
        });
        let mut split = self.run.eval_split.unwrap_or(0.0);
        if ui
            .add(egui::Slider::new(&mut split, 0.0..=0.5).text("eval split"))
            .on_hover_text("Fraction of the examples held out (seeded) for the eval loss")
            .changed()
        {
            self.run.eval_split = (split > 0.0).then_some(split);
        }
        if self.data_job.is_some() {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label("reading data…");
            });
        }
        if let Some(e) = &self.data_err {
            ui.label(RichText::new(e).color(ERR));
        }
        let Some(d) = &self.data else {
            return;
        };
        let n = d.lengths.len();
        let n_eval = (n as f64 * split).round() as usize;
        ui.label(format!(
            "{} records, format: {}; {} train / {} eval",
            d.records,
            d.formats
                .iter()
                .map(|(f, c)| format!("{f} ({c})"))
                .collect::<Vec<_>>()
                .join(", "),
            n - n_eval.min(n),
            n_eval
        ));
        for p in &d.problems {
            ui.label(RichText::new(p).color(ERR));
        }
        let max_len = self.run.max_seq_len.unwrap_or(512);
        let over = d.lengths.iter().filter(|&&l| l > max_len).count();
        if over > 0 {
            ui.label(format!(
                "{over} examples longer than {max_len} tokens will be truncated"
            ));
        }
        let bars = histogram(&d.lengths, 24);
        Plot::new("token_hist")
            .height(110.0)
            .allow_scroll(false)
            .x_axis_label("tokens per example")
            .show(ui, |p| {
                p.bar_chart(
                    BarChart::new("examples", bars).color(Color32::from_rgb(100, 150, 230)),
                );
                p.vline(VLine::new("max seq len", max_len as f64).color(ERR));
            });
        ui.label(RichText::new("first examples (scored part in [[ ]])").weak());
        for ex in &d.preview {
            let short: String = ex.chars().take(400).collect();
            ui.label(RichText::new(short).monospace().small());
        }
    }

    fn method_panel(&mut self, ui: &mut egui::Ui) {
        let r = &mut self.run;
        let mut choice = MethodChoice::of(r);
        egui::ComboBox::from_label("method")
            .selected_text(choice.label())
            .show_ui(ui, |ui| {
                for c in MethodChoice::ALL {
                    ui.selectable_value(&mut choice, c, c.label())
                        .on_hover_text(c.help());
                }
            })
            .response
            .on_hover_text(choice.help());
        if choice != MethodChoice::of(r) {
            choice.apply(r);
        }
        if choice.is_oft() {
            num(
                ui,
                "block size b",
                "Rotation block size (peft default 32); must divide every target's in_features",
                &mut r.oft_block_size,
                32usize,
                1.0,
            );
            num(
                ui,
                "Neumann terms",
                "Terms of the Cayley-Neumann series approximating (I+Q)(I-Q)⁻¹ (peft default 5)",
                &mut r.cayley_neumann_terms,
                5usize,
                0.1,
            );
            flag(
                ui,
                "exact Cayley",
                "Exact Cayley transform (a matrix inverse per block) instead of the Neumann series",
                &mut r.exact_cayley,
            );
            flag(
                ui,
                "COFT",
                "Constrained OFT: keep each skew matrix inside an eps-ball around zero",
                &mut r.coft,
            );
            num(
                ui,
                "COFT eps",
                "Radius of the COFT ball (peft default 6e-5)",
                &mut r.eps,
                6e-5,
                1e-6,
            );
            flag(
                ui,
                "block share",
                "One rotation shared by all blocks of a layer (fewer parameters)",
                &mut r.block_share,
            );
        } else {
            num(
                ui,
                "rank r",
                "LoRA rank: size of the low-rank update (peft default 8)",
                &mut r.r,
                8usize,
                0.1,
            );
            num(
                ui,
                "alpha",
                "LoRA alpha: the update is scaled by alpha / r (peft default 16)",
                &mut r.lora_alpha,
                16.0,
                0.5,
            );
            num(
                ui,
                "dropout",
                "Dropout on the adapter input (peft default 0)",
                &mut r.lora_dropout,
                0.0,
                0.01,
            );
            flag(
                ui,
                "rsLoRA",
                "Rank-stabilised scaling alpha / sqrt(r)",
                &mut r.use_rslora,
            );
        }
        if choice == MethodChoice::Loftq {
            num(
                ui,
                "LoftQ rounds",
                "Alternating NF4-quantize + rank-r SVD rounds (LoftQ default 1)",
                &mut r.loftq_iters,
                1usize,
                0.1,
            );
        }
        ui.label("target modules")
            .on_hover_text("Which decoder projections get an adapter");
        let mut on: Vec<String> = r
            .target_modules
            .as_deref()
            .map(|t| t.split(',').map(|s| s.trim().to_string()).collect())
            .unwrap_or_else(|| TARGET_MODULES.iter().map(|s| s.to_string()).collect());
        let before = on.clone();
        ui.horizontal_wrapped(|ui| {
            for t in TARGET_MODULES {
                let mut checked = on.iter().any(|o| o == t);
                if ui.checkbox(&mut checked, t).changed() {
                    if checked {
                        on.push(t.to_string());
                    } else {
                        on.retain(|o| o != t);
                    }
                }
            }
        });
        if on != before {
            let ordered: Vec<&str> = TARGET_MODULES
                .iter()
                .copied()
                .filter(|t| on.iter().any(|o| o == t))
                .collect();
            r.target_modules = Some(ordered.join(","));
        }
        ui.horizontal(|ui| {
            ui.label("init adapter")
                .on_hover_text("Start from this peft adapter folder instead of a fresh init");
            opt_text(ui, &mut r.init_adapter, 180.0);
        });
        if choice.is_par() {
            self.par_settings(ui);
        }
        let line = trainable_line(&self.run, self.model.as_ref());
        ui.label(RichText::new(line).strong());
    }

    fn par_settings(&mut self, ui: &mut egui::Ui) {
        let r = &mut self.run;
        egui::CollapsingHeader::new("LoRA-PAR settings")
            .default_open(true)
            .show(ui, |ui| {
                ui.horizontal(|ui| {
                    ui.label("RL data")
                        .on_hover_text("System-2 prompts with `answer` for the GRPO stage");
                    opt_text(ui, &mut r.rl_data, 180.0);
                });
                choice(
                    ui,
                    "split",
                    "How --data is split into System 1 / System 2",
                    &mut r.par_split,
                    &["auto", "label", "vote", "heuristic"],
                );
                num(
                    ui,
                    "voters",
                    "Voters of the role-play vote (odd)",
                    &mut r.par_voters,
                    3usize,
                    0.1,
                );
                choice(
                    ui,
                    "importance",
                    "Element importance score",
                    &mut r.par_importance,
                    &["taylor", "grad-fisher"],
                );
                num(
                    ui,
                    "samples",
                    "Examples per system for the importance pass",
                    &mut r.par_samples,
                    100usize,
                    1.0,
                );
                num(
                    ui,
                    "theta",
                    "Cumulative importance share each system keeps",
                    &mut r.par_theta,
                    0.9,
                    0.01,
                );
                num(
                    ui,
                    "alpha (stage 1)",
                    "Fraction of shared elements stage 1 updates",
                    &mut r.par_alpha,
                    1.0,
                    0.01,
                );
                num(
                    ui,
                    "beta (stage 2)",
                    "Fraction of shared elements stage 2 updates",
                    &mut r.par_beta,
                    1.0,
                    0.01,
                );
                num(
                    ui,
                    "SFT steps",
                    "Steps of stage 1",
                    &mut r.sft_steps,
                    100usize,
                    1.0,
                );
                num(
                    ui,
                    "RL steps",
                    "Steps of stage 2 (GRPO)",
                    &mut r.rl_steps,
                    100usize,
                    1.0,
                );
                num(
                    ui,
                    "SFT lr",
                    "Stage-1 learning rate",
                    &mut r.sft_lr,
                    2e-4,
                    1e-5,
                );
                num(
                    ui,
                    "RL lr",
                    "Stage-2 learning rate",
                    &mut r.rl_lr,
                    5e-6,
                    1e-7,
                );
                num(
                    ui,
                    "GRPO group",
                    "Completions sampled per prompt",
                    &mut r.grpo_group,
                    8usize,
                    0.1,
                );
                num(
                    ui,
                    "GRPO prompts",
                    "Prompts per optimizer step",
                    &mut r.grpo_prompts,
                    1usize,
                    0.1,
                );
                num(
                    ui,
                    "GRPO KL",
                    "KL coefficient to the stage-1 policy",
                    &mut r.grpo_kl,
                    0.0,
                    0.001,
                );
                num(
                    ui,
                    "GRPO clip",
                    "Clip range of the policy ratio",
                    &mut r.grpo_clip,
                    0.2,
                    0.01,
                );
                num(
                    ui,
                    "temperature",
                    "GRPO sampling temperature",
                    &mut r.grpo_temperature,
                    1.0f32,
                    0.01,
                );
                num(
                    ui,
                    "max new tokens",
                    "Longest GRPO completion",
                    &mut r.grpo_max_new_tokens,
                    64usize,
                    1.0,
                );
                num(
                    ui,
                    "RL eval items",
                    "System-2 items held out for accuracy before/after stage 2",
                    &mut r.rl_eval,
                    0usize,
                    1.0,
                );
                ui.horizontal(|ui| {
                    ui.label("reward")
                        .on_hover_text("number, exact, or regex:PATTERN");
                    opt_text(ui, &mut r.grpo_reward, 160.0);
                });
            });
    }

    fn training_panel(&mut self, ui: &mut egui::Ui) {
        let r = &mut self.run;
        num(
            ui,
            "learning rate",
            "Peak learning rate (peft/trl default 2e-4)",
            &mut r.lr,
            2e-4,
            1e-5,
        );
        choice(
            ui,
            "schedule",
            "Learning-rate schedule after warm-up",
            &mut r.lr_scheduler,
            &["constant", "linear", "cosine"],
        );
        num(
            ui,
            "warm-up steps",
            "Linear warm-up from 0",
            &mut r.warmup_steps,
            0usize,
            1.0,
        );
        let mut fixed = r.steps.is_some();
        ui.horizontal(|ui| {
            if ui
                .checkbox(&mut fixed, "fixed steps")
                .on_hover_text("Train a fixed number of optimizer steps instead of whole epochs")
                .changed()
            {
                r.steps = fixed.then_some(r.steps.unwrap_or(100));
            }
        });
        if fixed {
            num(ui, "steps", "Optimizer steps", &mut r.steps, 100usize, 1.0);
        } else {
            num(
                ui,
                "epochs",
                "Passes over the training data",
                &mut r.epochs,
                1usize,
                0.1,
            );
        }
        num(
            ui,
            "batch size",
            "Examples per micro-batch",
            &mut r.batch_size,
            4usize,
            0.1,
        );
        num(
            ui,
            "grad accum",
            "Micro-batches per optimizer step",
            &mut r.grad_accum,
            1usize,
            0.1,
        );
        num(
            ui,
            "max seq len",
            "Examples are truncated to this many tokens",
            &mut r.max_seq_len,
            512usize,
            1.0,
        );
        flag(
            ui,
            "packing",
            "Pack several examples into each row",
            &mut r.packing,
        );
        flag(
            ui,
            "keep data order",
            "No seeded shuffling",
            &mut r.no_shuffle,
        );
        num(
            ui,
            "max grad norm",
            "Clip the global gradient norm (0 disables)",
            &mut r.max_grad_norm,
            1.0,
            0.01,
        );
        num(
            ui,
            "weight decay",
            "AdamW decoupled weight decay",
            &mut r.weight_decay,
            0.0,
            0.001,
        );
        num(
            ui,
            "eval every",
            "Eval loss every N steps (0: at the end only)",
            &mut r.eval_every,
            0usize,
            1.0,
        );
        num(
            ui,
            "seed",
            "Seed of init, shuffling and dropout",
            &mut r.seed,
            42u64,
            1.0,
        );
        num(
            ui,
            "save every",
            "Checkpoint every N steps (0: at the end only)",
            &mut r.save_every,
            0usize,
            1.0,
        );
        flag(
            ui,
            "resume",
            "Continue from OUT/checkpoint if present",
            &mut r.resume,
        );
        ui.horizontal(|ui| {
            ui.label("output folder")
                .on_hover_text("Adapter, checkpoint, metrics.jsonl, run.toml");
            opt_text(ui, &mut r.out, 200.0);
        });
        choice(
            ui,
            "backend",
            "auto: wgpu on a real GPU, else the CPU backend",
            &mut r.backend,
            &["auto", "wgpu", "cpu"],
        );
        choice(
            ui,
            "bad data line",
            "What a malformed data line does",
            &mut r.on_bad_line,
            &["stop", "skip"],
        );
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
        ui.horizontal(|ui| {
            ui.checkbox(&mut self.settings.log_scale, "log scale")
                .on_hover_text("log10 y axis on the loss plot");
            if ui
                .add(egui::Slider::new(&mut self.settings.smoothing, 0.0..=0.99).text("smoothing"))
                .on_hover_text("EMA weight of the smoothed train loss")
                .changed()
            {
                self.curves.set_smoothing(self.settings.smoothing);
            }
            ui.label(
                RichText::new("drag to pan, ctrl+scroll to zoom, double-click to reset").weak(),
            );
        });
        let h = ((ui.available_height() - 260.0) / 2.0).clamp(120.0, 320.0);
        let c = &self.curves;
        let log = self.settings.log_scale;
        let tf = |s: &Series| if log { log10(s) } else { s.clone() };
        ui.columns(3, |cols| {
            let loss_plot = Plot::new("loss")
                .height(h)
                .legend(Legend::default())
                .x_axis_label("step")
                .y_axis_label(if log { "log10 loss" } else { "loss" });
            loss_plot.show(&mut cols[0], |p| {
                p.line(Line::new("train", tf(&c.loss)).color(Color32::from_gray(140)));
                p.line(
                    Line::new("smoothed", tf(&c.smooth))
                        .color(Color32::from_rgb(80, 160, 255))
                        .width(2.0),
                );
                p.line(
                    Line::new("eval", tf(&c.eval))
                        .color(Color32::from_rgb(255, 150, 60))
                        .width(2.0),
                );
                for x in &c.stages {
                    p.vline(VLine::new("stage 1 → 2", *x).color(ERR));
                }
            });
            small_plot(
                &mut cols[1],
                "learning rate",
                &c.lr,
                h,
                Color32::from_rgb(120, 200, 120),
            );
            small_plot(
                &mut cols[2],
                "grad norm",
                &c.grad_norm,
                h,
                Color32::from_rgb(220, 180, 80),
            );
        });
        ui.columns(3, |cols| {
            small_plot(
                &mut cols[0],
                "tokens/s",
                &c.tokens_per_s,
                h,
                Color32::from_rgb(180, 120, 220),
            );
            small_plot(
                &mut cols[1],
                "device memory (MiB)",
                &c.mem_mib,
                h,
                Color32::from_rgb(120, 200, 220),
            );
            Plot::new("par")
                .height(h)
                .legend(Legend::default())
                .x_axis_label("step")
                .show(&mut cols[2], |p| {
                    p.line(Line::new("GRPO reward", c.reward.clone()));
                    p.line(Line::new("accuracy", c.accuracy.clone()).width(2.0));
                    for x in &c.stages {
                        p.vline(VLine::new("stage 1 → 2", *x).color(ERR));
                    }
                });
        });
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

fn small_plot(ui: &mut egui::Ui, name: &str, s: &Series, h: f32, color: Color32) {
    Plot::new(name)
        .height(h)
        .legend(Legend::default())
        .x_axis_label("step")
        .show(ui, |p| {
            p.line(Line::new(name, s.clone()).color(color).width(1.5))
        });
}

/// Bars of a histogram of `values` in about `bins` equal bins.
fn histogram(values: &[usize], bins: usize) -> Vec<Bar> {
    let Some(&max) = values.iter().max() else {
        return Vec::new();
    };
    let width = (max / bins.max(1)).max(1);
    let mut counts = vec![0usize; max / width + 1];
    for &v in values {
        counts[v / width] += 1;
    }
    counts
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            Bar::new((i * width) as f64 + width as f64 / 2.0, c as f64).width(width as f64 * 0.9)
        })
        .collect()
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

/// A text box for an optional string setting (empty = unset).
fn opt_text(ui: &mut egui::Ui, v: &mut Option<String>, width: f32) -> egui::Response {
    let mut s = v.clone().unwrap_or_default();
    let r = ui.add(egui::TextEdit::singleline(&mut s).desired_width(width));
    if r.changed() {
        *v = (!s.trim().is_empty()).then_some(s);
    }
    r
}

/// A labelled number for an optional setting, showing its default until changed.
fn num<T: egui::emath::Numeric>(
    ui: &mut egui::Ui,
    label: &str,
    help: &str,
    v: &mut Option<T>,
    default: T,
    speed: f64,
) {
    ui.horizontal(|ui| {
        ui.label(label).on_hover_text(help);
        let mut x = v.unwrap_or(default);
        let small = !T::INTEGRAL && x.to_f64() != 0.0 && x.to_f64().abs() < 1e-2;
        let mut dv = DragValue::new(&mut x).speed(speed);
        if small {
            dv = dv.custom_formatter(|n, _| format!("{n:.2e}"));
        }
        if ui.add(dv).on_hover_text(help).changed() {
            *v = Some(x);
        }
        if v.is_some()
            && ui
                .small_button("reset")
                .on_hover_text("back to the default")
                .clicked()
        {
            *v = None;
        }
    });
}

/// A checkbox for an optional flag.
fn flag(ui: &mut egui::Ui, label: &str, help: &str, v: &mut Option<bool>) {
    let mut b = v.unwrap_or(false);
    if ui.checkbox(&mut b, label).on_hover_text(help).changed() {
        *v = b.then_some(true);
    }
}

/// A combo box for an optional string setting with known values (the first is the default).
fn choice(ui: &mut egui::Ui, label: &str, help: &str, v: &mut Option<String>, options: &[&str]) {
    let current = v.clone().unwrap_or_else(|| options[0].to_string());
    let mut picked = current.clone();
    egui::ComboBox::from_label(label)
        .selected_text(&current)
        .show_ui(ui, |ui| {
            for o in options {
                ui.selectable_value(&mut picked, o.to_string(), *o);
            }
        })
        .response
        .on_hover_text(help);
    if picked != current {
        *v = Some(picked);
    }
}

/// A drop-down of recent paths.
fn recent_menu(ui: &mut egui::Ui, label: &str, items: &[String], mut pick: impl FnMut(String)) {
    ui.add_enabled_ui(!items.is_empty(), |ui| {
        ui.menu_button(label, |ui| {
            for p in items {
                if ui.button(p).clicked() {
                    pick(p.clone());
                    ui.close();
                }
            }
        });
    });
}
