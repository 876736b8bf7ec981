//! The settings panels on the left of the window: model, data, method (with LoRA-PAR's
//! settings) and training. Each edits the app's [`RunConfig`] in place; validation lives in
//! [`super::super::state`] so it is unit-tested without a window.

use super::widgets::{PathAction, choice, flag, histogram, num, opt_text, path_row};
use super::{ERR, Pick, WgtuneApp};
use crate::adapters::TARGET_MODULES;
use crate::app::gui::browse::Want;
use crate::app::gui::state::{
    MethodChoice, memory_estimate, mib, trainable_line, trainable_params,
};
use eframe::egui;
use egui::{Color32, RichText};
use egui_plot::{BarChart, Plot, VLine};

impl WgtuneApp {
    /// Draws the model panel.
    pub(super) fn model_panel(&mut self, ui: &mut egui::Ui, ctx: &egui::Context) {
        let action = ui
            .horizontal(|ui| {
                path_row(
                    ui,
                    &mut self.run.model,
                    "HF model folder (config.json, *.safetensors, tokenizer.json) or a .gguf file",
                    "Load",
                    "Pick an HF model folder (📦) or a .gguf file",
                    &self.settings.recent_models,
                )
            })
            .inner;
        match action {
            PathAction::Apply => self.load_model(ctx),
            PathAction::Browse => self.browse(
                Pick::Model,
                "Open model",
                Want::Open {
                    extensions: &["gguf"],
                    folders: true,
                },
            ),
            PathAction::None => {}
        }
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

    /// Draws the data panel.
    pub(super) fn data_panel(&mut self, ui: &mut egui::Ui, ctx: &egui::Context) {
        let action = ui
            .horizontal(|ui| {
                path_row(
                    ui,
                    &mut self.run.data,
                    "jsonl or JSON array: input_ids, text, prompt/completion, alpaca or messages records",
                    "Preview",
                    "Pick a .jsonl or .json data file",
                    &self.settings.recent_data,
                )
            })
            .inner;
        match action {
            PathAction::Apply => self.load_data(ctx),
            PathAction::Browse => self.browse(
                Pick::Data,
                "Open data",
                Want::Open {
                    extensions: &["jsonl", "json"],
                    folders: false,
                },
            ),
            PathAction::None => {}
        }
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
        // The same count the training run splits off.
        let n_eval = crate::train::data::eval_count(n, split);
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

    /// Draws the method panel.
    pub(super) fn method_panel(&mut self, ui: &mut egui::Ui) {
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

    /// Draws the training panel.
    pub(super) fn training_panel(&mut self, ui: &mut egui::Ui) {
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
        if pick_out {
            self.browse(Pick::Out, "Output folder", Want::Folder);
        }
    }
}
