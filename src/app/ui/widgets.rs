//! Small egui widgets shared by the panels of both apps: optional text and number fields with
//! tooltips, choice boxes, path rows with recent-file menus, plots and histograms.

use crate::app::curves::Series;
use eframe::egui;
use egui::{Color32, DragValue};
use egui_plot::{Bar, Legend, Line, Plot};

/// A compact line plot of one series against the step. A constant series (a flat learning
/// rate, zero memory) gets the y range [0, 1.25·v] instead of egui_plot's default for a
/// zero-height range, which follows the x range (±200 after 400 steps) and hides the value.
pub fn small_plot(ui: &mut egui::Ui, name: &str, s: &Series, h: f32, color: Color32) {
    let mut plot = Plot::new(name)
        .height(h)
        .legend(Legend::default())
        .x_axis_label("step");
    if let Some([lo, hi]) = flat_range(s) {
        plot = plot.include_y(lo).include_y(hi);
    }
    plot.show(ui, |p| {
        p.line(Line::new(name, s.clone()).color(color).width(1.5))
    });
}

/// The y range to show for a series whose values are all equal (`None` otherwise).
pub fn flat_range(s: &Series) -> Option<[f64; 2]> {
    let first = s.first()?[1];
    if s.iter().any(|p| p[1] != first) {
        return None;
    }
    Some(if first == 0.0 {
        [0.0, 1.0]
    } else {
        [first.min(0.0) * 1.25, first.max(0.0) * 1.25]
    })
}

/// Bars of a histogram of `values` in about `bins` equal bins.
pub fn histogram(values: &[usize], bins: usize) -> Vec<Bar> {
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

/// A text box for an optional string setting (empty = unset).
pub fn opt_text(ui: &mut egui::Ui, v: &mut Option<String>, width: f32) -> egui::Response {
    let mut s = v.clone().unwrap_or_default();
    let r = ui.add(egui::TextEdit::singleline(&mut s).desired_width(width));
    if r.changed() {
        *v = (!s.trim().is_empty()).then_some(s);
    }
    r
}

/// A labelled number for an optional setting, showing its default until changed.
pub fn num<T: egui::emath::Numeric>(
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
pub fn flag(ui: &mut egui::Ui, label: &str, help: &str, v: &mut Option<bool>) {
    let mut b = v.unwrap_or(false);
    if ui.checkbox(&mut b, label).on_hover_text(help).changed() {
        *v = b.then_some(true);
    }
}

/// A combo box for an optional string setting with known values (the first is the default).
pub fn choice(
    ui: &mut egui::Ui,
    label: &str,
    help: &str,
    v: &mut Option<String>,
    options: &[&str],
) {
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

/// What the user did in a [`path_row`].
pub enum PathAction {
    /// Nothing.
    None,
    /// Use the path now (the action button, Enter in the field, or a recent path picked).
    Apply,
    /// Open the file picker.
    Browse,
}

/// A path field (`help` on hover) with its action button (`action`, also Enter), a Browse…
/// button (`browse_help`) and a menu of `recent` paths; a recent pick fills the field.
pub fn path_row(
    ui: &mut egui::Ui,
    value: &mut Option<String>,
    help: &str,
    action: &str,
    browse_help: &str,
    recent: &[String],
) -> PathAction {
    let r = opt_text(ui, value, 220.0).on_hover_text(help);
    let mut out = PathAction::None;
    if ui.button(action).clicked()
        || (r.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter)))
    {
        out = PathAction::Apply;
    }
    if ui.button("Browse…").on_hover_text(browse_help).clicked() {
        out = PathAction::Browse;
    }
    recent_menu(ui, "recent", recent, |p| {
        *value = Some(p);
        out = PathAction::Apply;
    });
    out
}

/// A drop-down of recent paths.
pub fn recent_menu(ui: &mut egui::Ui, label: &str, items: &[String], mut pick: impl FnMut(String)) {
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

#[cfg(test)]
mod tests {
    use super::flat_range;

    #[test]
    fn flat_series_get_a_visible_range() {
        assert_eq!(flat_range(&vec![[0.0, 2.0], [1.0, 2.0]]), Some([0.0, 2.5]));
        assert_eq!(flat_range(&vec![[0.0, 0.0]]), Some([0.0, 1.0]));
        assert_eq!(flat_range(&vec![[0.0, -1.0]]), Some([-1.25, 0.0]));
        assert_eq!(flat_range(&vec![[0.0, 1.0], [1.0, 2.0]]), None);
        assert_eq!(flat_range(&vec![]), None);
    }
}
