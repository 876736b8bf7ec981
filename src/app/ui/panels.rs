//! The settings panels and curves both apps draw: the model and data summaries, the method panel
//! (with LoRA-PAR's settings), the training panel and the live plots. Each edits a [`RunConfig`]
//! in place; validation lives in [`super::state`] so it is unit-tested without a window. Path
//! fields, pickers and jobs stay with each front end; [`Front`] hides the rows one cannot use.

use super::ERR;
use super::state::{
    DataInfo, MethodChoice, ModelInfo, memory_estimate, mib, trainable_line, trainable_params,
};
use super::widgets::{choice, flag, histogram, num, opt_text, small_plot};
use crate::adapters::TARGET_MODULES;
use crate::app::curves::{Curves, Series, log10, scaled};
use crate::train::run::RunConfig;
use eframe::egui;
use egui::{Color32, RichText};
use egui_plot::{BarChart, Legend, Line, Plot, VLine};

/// Which app draws a panel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    /// The desktop app: every method, output folder, checkpoints, resume, backend choice.
    Desktop,
    /// The browser app: no file system (no output folder, checkpoints or init-adapter folder), and
    /// the methods `app::web` trains in a tab (LoftQ and LoRA-PAR need the desktop app or the CLI).
    Browser,
}

impl Front {
    /// True when this front end can train `m`.
    pub fn offers(self, m: MethodChoice) -> bool {
        match self {
            Front::Desktop => true,
            Front::Browser => matches!(
                m,
                MethodChoice::Lora | MethodChoice::Qlora | MethodChoice::Oft | MethodChoice::Qoft
            ),
        }
    }
}

/// The model summary: architecture, parameters, format, stored size, memory estimate, tokenizer.
pub fn model_summary(ui: &mut egui::Ui, m: &ModelInfo, run: &RunConfig) {
    let c = &m.config;
    let quantized = run.base_quantization().is_some();
    let trainable = run
        .adapter()
        .ok()
        .and_then(|a| trainable_params(c, &a).ok())
        .unwrap_or(0);
    egui::Grid::new("model_summary").num_columns(2).show(ui, |ui| {
        ui.label("architecture");
        ui.label(format!(
            "{}: {} layers, hidden {}, heads {} (kv {}), vocab {}",
            c.arch.name(),
            c.num_hidden_layers,
            c.hidden_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.vocab_size
        ));
        ui.end_row();
        ui.label("features");
        ui.label(c.features().join(", "));
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
                run.batch_size.unwrap_or(4),
                run.max_seq_len.unwrap_or(512)
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

/// The eval-split slider (fraction of the examples held out for the eval loss).
pub fn eval_split(ui: &mut egui::Ui, run: &mut RunConfig) {
    let mut split = run.eval_split.unwrap_or(0.0);
    if ui
        .add(egui::Slider::new(&mut split, 0.0..=0.5).text("eval split"))
        .on_hover_text("Fraction of the examples held out (seeded) for the eval loss")
        .changed()
    {
        run.eval_split = (split > 0.0).then_some(split);
    }
}

/// What a data file holds: records per format, the train/eval counts, problems, a histogram of
/// token lengths against `max_seq_len` and the first examples as the model will see them.
pub fn data_summary(ui: &mut egui::Ui, d: &DataInfo, run: &RunConfig) {
    let n = d.lengths.len();
    // The same count the training run splits off.
    let n_eval = crate::train::data::eval_count(n, run.eval_split.unwrap_or(0.0));
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
    let max_len = run.max_seq_len.unwrap_or(512);
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
            p.bar_chart(BarChart::new("examples", bars).color(Color32::from_rgb(100, 150, 230)));
            p.vline(VLine::new("max seq len", max_len as f64).color(ERR));
        });
    ui.label(RichText::new("first examples (scored part in [[ ]])").weak());
    for ex in &d.preview {
        let short: String = ex.chars().take(400).collect();
        ui.label(RichText::new(short).monospace().small());
    }
}

/// The method panel: the method, its hyper-parameters, the target modules and the trainable
/// parameter count for `model`; methods `front` cannot train are listed but disabled.
pub fn method_panel(ui: &mut egui::Ui, r: &mut RunConfig, model: Option<&ModelInfo>, front: Front) {
    let mut choice = MethodChoice::of(r);
    egui::ComboBox::from_label("method")
        .selected_text(choice.label())
        .show_ui(ui, |ui| {
            for c in MethodChoice::ALL {
                if front.offers(c) {
                    ui.selectable_value(&mut choice, c, c.label())
                        .on_hover_text(c.help());
                } else {
                    ui.add_enabled(false, egui::Button::selectable(false, c.label()))
                        .on_disabled_hover_text("needs the desktop app or `wgtune train --no-gui`");
                }
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
    if front == Front::Desktop {
        ui.horizontal(|ui| {
            ui.label("init adapter")
                .on_hover_text("Start from this peft adapter folder instead of a fresh init");
            opt_text(ui, &mut r.init_adapter, 180.0);
        });
    }
    if choice.is_par() && front.offers(choice) {
        par_settings(ui, r);
    }
    let line = trainable_line(r, model);
    ui.label(RichText::new(line).strong());
}

/// LoRA-PAR's settings (split, importance, partition, the two stages, GRPO).
fn par_settings(ui: &mut egui::Ui, r: &mut RunConfig) {
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

/// The training panel: schedule, batches, regularisation, evaluation, seed and backend. On the
/// desktop it also has checkpointing, resume and the output folder; returns true when the output
/// folder's pick button was clicked.
pub fn training_panel(ui: &mut egui::Ui, r: &mut RunConfig, front: Front) -> bool {
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
    choice(
        ui,
        "bad data line",
        "What a malformed data line does",
        &mut r.on_bad_line,
        &["stop", "skip"],
    );
    if front == Front::Browser {
        choice(
            ui,
            "backend",
            "auto: the page's WebGPU when the browser has it, else burn's CPU backend in wasm",
            &mut r.backend,
            &["auto", "cpu"],
        );
        return false;
    }
    choice(
        ui,
        "backend",
        "auto: wgpu on a real GPU, else the CPU backend",
        &mut r.backend,
        &["auto", "wgpu", "cpu"],
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
    let mut pick_out = false;
    ui.horizontal(|ui| {
        ui.label("output folder")
            .on_hover_text("Adapter, checkpoint, metrics.jsonl, run.toml");
        opt_text(ui, &mut r.out, 200.0);
        pick_out = ui
            .small_button("…")
            .on_hover_text("pick a folder")
            .clicked();
    });
    pick_out
}

/// The live curves: train / smoothed / eval loss (optionally log10), learning rate, gradient norm,
/// tokens per second, device memory and LoRA-PAR's reward and accuracy, with stage boundaries.
/// `log_scale` and `smoothing` are the view options above the plots. The browser has no device
/// memory figure and no LoRA-PAR, so those two plots are left out there.
pub fn plots(
    ui: &mut egui::Ui,
    c: &mut Curves,
    log_scale: &mut bool,
    smoothing: &mut f64,
    front: Front,
) {
    ui.horizontal(|ui| {
        ui.checkbox(log_scale, "log scale")
            .on_hover_text("log10 y axis on the loss plot");
        if ui
            .add(egui::Slider::new(smoothing, 0.0..=0.99).text("smoothing"))
            .on_hover_text("EMA weight of the smoothed train loss")
            .changed()
        {
            c.set_smoothing(*smoothing);
        }
        ui.label(RichText::new("drag to pan, ctrl+scroll to zoom, double-click to reset").weak());
    });
    let h = ((ui.available_height() - 260.0) / 2.0).clamp(120.0, 320.0);
    let log = *log_scale;
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
        let (lr, e) = scaled(&c.lr);
        let lr_name = if e == 0 {
            "learning rate".to_string()
        } else {
            format!("learning rate (×1e{e})")
        };
        small_plot(
            &mut cols[1],
            &lr_name,
            &lr,
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
        if front == Front::Browser {
            return;
        }
        let mem_known = c.mem_mib.iter().any(|p| p[1] > 0.0);
        small_plot(
            &mut cols[1],
            if mem_known || c.mem_mib.is_empty() {
                "device memory (MiB)"
            } else {
                "device memory (n/a)"
            },
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every text the panel drew in one headless egui pass.
    fn drawn_text(draw: impl FnMut(&mut egui::Ui)) -> String {
        let ctx = egui::Context::default();
        let mut draw = draw;
        let mut out = ctx.run_ui(egui::RawInput::default(), |ui| {
            egui::CentralPanel::default().show(ui, |ui| draw(ui));
        });
        // No renderer here to take the font atlas.
        out.textures_delta.clear();
        fn walk(s: &egui::Shape, out: &mut String) {
            match s {
                egui::Shape::Text(t) => {
                    out.push_str(&t.galley.job.text);
                    out.push('\n');
                }
                egui::Shape::Vec(v) => v.iter().for_each(|s| walk(s, out)),
                _ => {}
            }
        }
        let mut text = String::new();
        for c in &out.shapes {
            walk(&c.shape, &mut text);
        }
        text
    }

    #[test]
    fn browser_offers_the_methods_it_can_train_in_a_tab() {
        let offered: Vec<_> = MethodChoice::ALL
            .into_iter()
            .filter(|m| Front::Browser.offers(*m))
            .map(|m| m.label())
            .collect();
        assert_eq!(offered, ["LoRA", "QLoRA", "OFTv2", "QOFT"]);
        assert!(MethodChoice::ALL.iter().all(|m| Front::Desktop.offers(*m)));
    }

    #[test]
    fn file_system_rows_only_on_the_desktop() {
        for front in [Front::Desktop, Front::Browser] {
            let mut run = RunConfig::default();
            let text = drawn_text(|ui| {
                training_panel(ui, &mut run, front);
            });
            assert!(text.contains("learning rate") && text.contains("batch size"));
            for desktop_only in ["output folder", "resume", "save every"] {
                assert_eq!(
                    text.contains(desktop_only),
                    front == Front::Desktop,
                    "{desktop_only} on {front:?}"
                );
            }
            let mut run = RunConfig {
                method: Some("lora-par".into()),
                ..RunConfig::default()
            };
            let text = drawn_text(|ui| method_panel(ui, &mut run, None, front));
            assert!(text.contains("rank r") && text.contains("target modules"));
            assert_eq!(text.contains("init adapter"), front == Front::Desktop);
            // LoRA-PAR's settings only where LoRA-PAR can run.
            assert_eq!(text.contains("LoRA-PAR settings"), front == Front::Desktop);
        }
    }
}
