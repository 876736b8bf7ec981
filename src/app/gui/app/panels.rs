//! The desktop's settings panels: path rows with Browse… and recent files around the shared
//! panels of [`crate::app::ui::panels`], plus the load/preview jobs' progress and errors.

use super::{Pick, WgtuneApp};
use crate::app::gui::browse::Want;
use crate::app::ui::ERR;
use crate::app::ui::panels::{self, Front};
use crate::app::ui::widgets::{PathAction, path_row};
use eframe::egui;
use egui::RichText;

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
        job_state(
            ui,
            self.model_job.is_some(),
            "reading model files…",
            self.model_err.as_deref(),
        );
        if let Some(m) = &self.model {
            panels::model_summary(ui, m, &self.run);
        }
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
        panels::eval_split(ui, &mut self.run);
        job_state(
            ui,
            self.data_job.is_some(),
            "reading data…",
            self.data_err.as_deref(),
        );
        if let Some(d) = &self.data {
            panels::data_summary(ui, d, &self.run);
        }
    }

    /// Draws the method panel.
    pub(super) fn method_panel(&mut self, ui: &mut egui::Ui) {
        panels::method_panel(ui, &mut self.run, self.model.as_ref(), Front::Desktop);
    }

    /// Draws the training panel.
    pub(super) fn training_panel(&mut self, ui: &mut egui::Ui) {
        if panels::training_panel(ui, &mut self.run, Front::Desktop) {
            self.browse(Pick::Out, "Output folder", Want::Folder);
        }
    }
}

/// A load job's progress (spinner + `what` while `running`) and its last error.
fn job_state(ui: &mut egui::Ui, running: bool, what: &str, err: Option<&str>) {
    if running {
        ui.horizontal(|ui| {
            ui.spinner();
            ui.label(what);
        });
    }
    if let Some(e) = err {
        ui.label(RichText::new(e).color(ERR));
    }
}
