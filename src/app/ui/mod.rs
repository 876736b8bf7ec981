//! The egui parts the desktop app ([`crate::app::gui`]) and the browser app (`app::web`) share:
//! the run settings state and its validation, the settings panels (model summary, data summary,
//! method, training) and the live curves. Everything here edits a [`crate::train::run::RunConfig`]
//! or draws what a model/data summary says; file pickers, jobs and threads belong to each front end.

pub mod panels;
pub mod state;
pub mod widgets;

use eframe::egui::Color32;

/// Colour of error and warning text.
pub const ERR: Color32 = Color32::from_rgb(230, 90, 80);
