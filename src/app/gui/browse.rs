//! An in-app file and folder picker. The native dialogs (rfd) need a desktop portal over D-Bus
//! or GTK on Linux, which a laptop without a desktop session (or Xvfb in CI) does not have; this
//! one lists directories with `std::fs` and renders in egui, so it works wherever the window does.

use eframe::egui::{self, RichText};
use std::path::{Path, PathBuf};

/// One row of a directory listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// File or folder name.
    pub name: String,
    /// A folder (navigable).
    pub is_dir: bool,
    /// A folder holding a `config.json`: an HF model folder, pickable as a model.
    pub model_dir: bool,
    /// File size in bytes (0 for folders).
    pub size: u64,
}

/// What the picker is choosing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Want {
    /// An existing file with one of these extensions (any file when empty), or, with
    /// `folders`, a folder.
    Open {
        /// Accepted file extensions, lower case, without the dot.
        extensions: &'static [&'static str],
        /// Folders may be chosen too (HF model folders, output folders).
        folders: bool,
    },
    /// A file name to write (existing or new) with this extension.
    Save {
        /// Extension given to a typed name without one.
        extension: &'static str,
    },
    /// A folder (existing or to be created).
    Folder,
}

/// The list of `dir`: folders first, then files `want` accepts, each sorted by name; hidden
/// entries (leading dot) are left out.
pub fn list_dir(dir: &Path, want: Want) -> Result<Vec<Entry>, String> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = e.path();
        let is_dir = path.is_dir();
        let shown = is_dir
            || match want {
                Want::Open { extensions, .. } => accepts(&name, extensions),
                Want::Save { extension } => accepts(&name, &[extension]),
                Want::Folder => false,
            };
        if !shown {
            continue;
        }
        out.push(Entry {
            model_dir: is_dir && path.join("config.json").is_file(),
            size: if is_dir {
                0
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            },
            name,
            is_dir,
        });
    }
    out.sort_by(|a, b| b.is_dir.cmp(&a.is_dir).then_with(|| a.name.cmp(&b.name)));
    Ok(out)
}

fn accepts(name: &str, extensions: &[&str]) -> bool {
    extensions.is_empty()
        || Path::new(name)
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| extensions.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// The folder a picker opens in for the current value `current` of a path field: the file's
/// folder, the folder itself, or the working directory.
pub fn start_dir(current: &str) -> PathBuf {
    let p = Path::new(current.trim());
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let p = if p.as_os_str().is_empty() {
        return cwd;
    } else if p.is_relative() {
        cwd.join(p)
    } else {
        p.to_path_buf()
    };
    if p.is_dir() {
        p
    } else {
        p.parent()
            .filter(|d| d.is_dir())
            .map(Path::to_path_buf)
            .unwrap_or(cwd)
    }
}

/// A path typed for `Want::Save` gets the extension when it has none.
pub fn with_extension(name: &str, extension: &str) -> String {
    if Path::new(name).extension().is_some() || extension.is_empty() {
        name.to_string()
    } else {
        format!("{name}.{extension}")
    }
}

/// The picker window's state; `T` says which field the chosen path goes to.
pub struct Browser<T> {
    /// Which field asked.
    pub target: T,
    title: &'static str,
    want: Want,
    dir: PathBuf,
    entries: Result<Vec<Entry>, String>,
    name: String,
    selected: Option<usize>,
}

/// What one frame of the picker decided.
pub enum Outcome {
    /// Still open.
    Open,
    /// Closed without a choice.
    Cancelled,
    /// This path was chosen.
    Picked(PathBuf),
}

impl<T> Browser<T> {
    /// A picker for `target`, opened near `current` (the field's value).
    pub fn new(target: T, title: &'static str, want: Want, current: &str) -> Browser<T> {
        let dir = start_dir(current);
        let name = match want {
            Want::Save { .. } => Path::new(current)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            _ => String::new(),
        };
        let entries = list_dir(&dir, want);
        Browser {
            target,
            title,
            want,
            dir,
            entries,
            name,
            selected: None,
        }
    }

    fn go(&mut self, dir: PathBuf) {
        self.entries = list_dir(&dir, self.want);
        self.dir = dir;
        self.selected = None;
    }

    /// Draw the window; returns what the user did this frame.
    pub fn show(&mut self, ctx: &egui::Context) -> Outcome {
        let mut outcome = Outcome::Open;
        let mut open = true;
        let mut go_to = None;
        egui::Window::new(self.title)
            .open(&mut open)
            .collapsible(false)
            .default_size([520.0, 380.0])
            .show(ctx, |ui| {
                ui.horizontal(|ui| {
                    if ui.button("⬆").on_hover_text("parent folder").clicked()
                        && let Some(p) = self.dir.parent()
                    {
                        go_to = Some(p.to_path_buf());
                    }
                    if ui.button("home").clicked()
                        && let Some(h) = std::env::var_os("HOME")
                    {
                        go_to = Some(PathBuf::from(h));
                    }
                    ui.label(RichText::new(self.dir.display().to_string()).monospace());
                });
                ui.separator();
                let list_h = ui.available_height() - 60.0;
                egui::ScrollArea::vertical()
                    .max_height(list_h.max(120.0))
                    .auto_shrink([false, false])
                    .show(ui, |ui| match &self.entries {
                        Err(e) => {
                            ui.label(RichText::new(e).color(crate::app::ui::ERR));
                        }
                        Ok(entries) => {
                            for (i, e) in entries.iter().enumerate() {
                                let label = if e.model_dir {
                                    format!("📦 {}/  (model folder)", e.name)
                                } else if e.is_dir {
                                    format!("📁 {}/", e.name)
                                } else {
                                    format!("📄 {}  ({})", e.name, size_text(e.size))
                                };
                                let r = ui.selectable_label(self.selected == Some(i), label);
                                if r.clicked() {
                                    self.selected = Some(i);
                                    if !e.is_dir && matches!(self.want, Want::Save { .. }) {
                                        self.name = e.name.clone();
                                    }
                                }
                                if r.double_clicked() {
                                    if e.is_dir && !e.model_dir {
                                        go_to = Some(self.dir.join(&e.name));
                                    } else if !e.is_dir || self.folders_ok() {
                                        outcome = Outcome::Picked(self.dir.join(&e.name));
                                    } else {
                                        go_to = Some(self.dir.join(&e.name));
                                    }
                                }
                            }
                        }
                    });
                ui.separator();
                ui.horizontal(|ui| {
                    if let Want::Save { extension } = self.want {
                        ui.label("name");
                        ui.text_edit_singleline(&mut self.name);
                        let ok = !self.name.trim().is_empty();
                        if ui.add_enabled(ok, egui::Button::new("Save")).clicked() {
                            outcome = Outcome::Picked(
                                self.dir.join(with_extension(self.name.trim(), extension)),
                            );
                        }
                    } else {
                        let chosen = self
                            .selected
                            .and_then(|i| self.entries.as_ref().ok()?.get(i).cloned());
                        let can_pick = chosen
                            .as_ref()
                            .is_some_and(|e| !e.is_dir || self.folders_ok());
                        if ui
                            .add_enabled(can_pick, egui::Button::new("Open"))
                            .clicked()
                            && let Some(e) = &chosen
                        {
                            outcome = Outcome::Picked(self.dir.join(&e.name));
                        }
                        if chosen.as_ref().is_some_and(|e| e.is_dir)
                            && ui.button("Enter folder").clicked()
                            && let Some(e) = &chosen
                        {
                            go_to = Some(self.dir.join(&e.name));
                        }
                        if self.folders_ok()
                            && ui
                                .button("Use this folder")
                                .on_hover_text(self.dir.display().to_string())
                                .clicked()
                        {
                            outcome = Outcome::Picked(self.dir.clone());
                        }
                    }
                    if ui.button("Cancel").clicked() {
                        outcome = Outcome::Cancelled;
                    }
                });
            });
        if let Some(d) = go_to {
            self.go(d);
        }
        if !open {
            outcome = Outcome::Cancelled;
        }
        outcome
    }

    fn folders_ok(&self) -> bool {
        matches!(self.want, Want::Folder | Want::Open { folders: true, .. })
    }
}

fn size_text(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_sorts_folders_first_and_filters_by_extension() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("zmodel")).unwrap();
        std::fs::write(d.path().join("zmodel/config.json"), "{}").unwrap();
        std::fs::create_dir(d.path().join("adir")).unwrap();
        std::fs::create_dir(d.path().join(".hidden")).unwrap();
        std::fs::write(d.path().join("b.jsonl"), "x").unwrap();
        std::fs::write(d.path().join("a.GGUF"), "xy").unwrap();
        std::fs::write(d.path().join("notes.txt"), "").unwrap();
        let want = Want::Open {
            extensions: &["gguf", "jsonl"],
            folders: true,
        };
        let l = list_dir(d.path(), want).unwrap();
        let names: Vec<_> = l.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["adir", "zmodel", "a.GGUF", "b.jsonl"]);
        assert!(l[1].model_dir && !l[0].model_dir);
        assert_eq!(l[2].size, 2);
        let folders = list_dir(d.path(), Want::Folder).unwrap();
        assert_eq!(folders.len(), 2);
        assert!(list_dir(&d.path().join("missing"), Want::Folder).is_err());
    }

    #[test]
    fn start_dir_and_extension() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("run.toml");
        std::fs::write(&f, "").unwrap();
        assert_eq!(start_dir(f.to_str().unwrap()), d.path());
        assert_eq!(start_dir(d.path().to_str().unwrap()), d.path());
        assert_eq!(
            start_dir(d.path().join("new/x.toml").to_str().unwrap()),
            std::env::current_dir().unwrap()
        );
        assert_eq!(with_extension("run", "toml"), "run.toml");
        assert_eq!(with_extension("run.cfg", "toml"), "run.cfg");
    }
}
