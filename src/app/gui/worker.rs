//! Work the app hands to background threads so a frame never waits: the training run (the same
//! [`run_training`] as `wgtune train --no-gui`), reading a model's files, previewing a data file
//! and sampling from the trained adapter. Panics in a job come back as error messages.

use crate::app::files::DirSource;
use crate::app::train::{TrainControl, TrainEvent, TrainSummary, run_training};
use crate::app::ui::state::{DataInfo, ModelInfo, summarize_data};
use crate::io::chat::ChatMessage;
use crate::model::generate::{SamplingConfig, generate};
use crate::train::run::RunConfig;
use eframe::egui;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError, channel};

/// The text of a panic payload.
fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// A one-shot background job returning `Result<T, String>`.
pub struct Job<T> {
    rx: Receiver<Result<T, String>>,
}

impl<T: Send + 'static> Job<T> {
    /// Run `f` on a new thread; `ctx` is repainted when it finishes.
    pub fn spawn(
        ctx: &egui::Context,
        f: impl FnOnce() -> Result<T, String> + Send + 'static,
    ) -> Job<T> {
        let (tx, rx) = channel();
        let ctx = ctx.clone();
        std::thread::spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
                .unwrap_or_else(|p| Err(format!("internal error: {}", panic_text(p))));
            let _ = tx.send(r);
            ctx.request_repaint();
        });
        Job { rx }
    }

    /// The result once the job is done (`None` while it runs).
    pub fn poll(&self) -> Option<Result<T, String>> {
        match self.rx.try_recv() {
            Ok(r) => Some(r),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Err("the job ended without a result".into())),
        }
    }
}

/// What the training thread sends to the UI.
pub enum TrainMsg {
    /// A progress event of the training loop.
    Event(TrainEvent),
    /// The run finished (or failed, or was stopped).
    Done(Result<Option<TrainSummary>, String>),
}

/// A training run on its own thread.
pub struct TrainJob {
    /// Stop / pause / save-adapter requests.
    pub ctl: Arc<TrainControl>,
    rx: Receiver<TrainMsg>,
    /// LoRA-PAR runs report through their metrics file, tailed from here.
    tail: Option<(PathBuf, u64)>,
}

impl TrainJob {
    /// Start `run` in the background: LoRA-PAR through its own command, every other method
    /// through [`run_training`].
    pub fn start(run: RunConfig, ctx: &egui::Context) -> TrainJob {
        let ctl = Arc::new(TrainControl::default());
        let (tx, rx) = channel();
        let par = matches!(run.method.as_deref(), Some("lora-par" | "qlora-par"));
        let tail = par
            .then(|| {
                run.out
                    .as_ref()
                    .map(|o| (Path::new(o).join("metrics.jsonl"), 0))
            })
            .flatten();
        if let Some((p, _)) = &tail {
            let _ = std::fs::remove_file(p);
        }
        let thread_ctl = ctl.clone();
        let ctx = ctx.clone();
        std::thread::spawn(move || {
            let events = tx.clone();
            let repaint = ctx.clone();
            let mut sink = move |e: TrainEvent| {
                let _ = events.send(TrainMsg::Event(e));
                repaint.request_repaint();
            };
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if par {
                    crate::app::par::cmd_train_par(run, &thread_ctl).map(|()| None)
                } else {
                    run_training(&run, &thread_ctl, &mut sink).map(Some)
                }
            }));
            let r = match r {
                Ok(Ok(s)) => Ok(s),
                Ok(Err(e)) => Err(format!("{e:#}").replace('\n', " ")),
                Err(p) => Err(format!("internal error: {}", panic_text(p))),
            };
            let _ = tx.send(TrainMsg::Done(r));
            ctx.request_repaint();
        });
        TrainJob { ctl, rx, tail }
    }

    /// Everything the run reported since the last call (LoRA-PAR: new metrics-file lines).
    pub fn drain(&mut self) -> Vec<TrainMsg> {
        let mut out: Vec<TrainMsg> = self.rx.try_iter().collect();
        if let Some((path, pos)) = self.tail.as_mut() {
            let mut tailed = Vec::new();
            read_new_lines(path, pos, &mut tailed);
            // Lines first, so a `Done` comes after the last of them.
            let done = std::mem::take(&mut out);
            out.extend(
                tailed
                    .into_iter()
                    .map(|v| TrainMsg::Event(TrainEvent::Metrics(v))),
            );
            out.extend(done);
        }
        out
    }
}

/// Append the complete JSON lines written to `path` after byte `pos`, and advance `pos`.
fn read_new_lines(path: &Path, pos: &mut u64, out: &mut Vec<serde_json::Value>) {
    let Ok(mut f) = std::fs::File::open(path) else {
        return;
    };
    if f.seek(SeekFrom::Start(*pos)).is_err() {
        return;
    }
    let mut buf = String::new();
    if f.read_to_string(&mut buf).is_err() {
        return;
    }
    let complete = buf.rfind('\n').map_or(0, |i| i + 1);
    for line in buf[..complete].lines() {
        if let Ok(v) = serde_json::from_str(line) {
            out.push(v);
        }
    }
    *pos += complete as u64;
}

/// Read a model's files and summarise them.
pub fn inspect_model(path: String) -> Result<ModelInfo, String> {
    let files = crate::app::cli::read_model_files(Path::new(path.trim()))
        .map_err(|e| format!("{e:#}").replace('\n', " "))?;
    Ok(ModelInfo::from_files(&path, files))
}

/// Read and tokenize a data file for the data panel (see [`summarize_data`]).
pub fn preview_data(path: String, model: Option<ModelInfo>) -> Result<DataInfo, String> {
    let bytes = std::fs::read(path.trim()).map_err(|e| format!("{}: {e}", path.trim()))?;
    let text = String::from_utf8(bytes).map_err(|_| format!("{path}: not UTF-8 text"))?;
    summarize_data(&text, &path, model.as_ref())
}

/// Settings of one sample from the generation box.
#[derive(Debug, Clone)]
pub struct SampleRequest {
    /// Base model path.
    pub model: String,
    /// Quantize on load (as the run did).
    pub quantize: Option<String>,
    /// Adapter folder to apply (the run's output folder), if it holds one.
    pub adapter: Option<PathBuf>,
    /// The prompt.
    pub prompt: String,
    /// Wrap the prompt in the model's chat template.
    pub chat: bool,
    /// New tokens.
    pub max_new_tokens: usize,
    /// Backend choice (`auto`, `wgpu`, `cpu`).
    pub backend: String,
}

/// Continue a prompt with the base model plus the saved adapter (greedy).
pub fn sample(req: SampleRequest) -> Result<String, String> {
    let err = |e: anyhow::Error| format!("{e:#}").replace('\n', " ");
    let choice: crate::backend::BackendChoice = req.backend.parse()?;
    let backend = crate::backend::select(choice)?;
    let mut lm = crate::app::cli::load(
        Path::new(&req.model),
        &backend.device,
        req.quantize.as_deref(),
    )
    .map_err(err)?;
    if let Some(dir) = &req.adapter {
        crate::io::peft::load_adapter(&DirSource::new(dir), &mut lm.model)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let tok = lm
        .tokenizer
        .as_ref()
        .ok_or("the model has no tokenizer (tokenizer.json or GGUF vocabulary)")?;
    let text = match (&lm.chat_template, req.chat) {
        (Some(t), true) => t
            .render(
                &[ChatMessage {
                    role: "user".into(),
                    content: req.prompt.clone(),
                }],
                true,
            )
            .map_err(|e| e.to_string())?,
        _ => req.prompt.clone(),
    };
    let ids = tok
        .encode(text.as_str(), !req.chat)
        .map_err(|e| e.to_string())?
        .get_ids()
        .to_vec();
    if ids.is_empty() {
        return Err("the prompt tokenizes to nothing".into());
    }
    let cfg = SamplingConfig {
        temperature: 0.0,
        top_p: 1.0,
        max_new_tokens: req.max_new_tokens,
        seed: 0,
    };
    let out =
        pollster::block_on(generate(&lm.model, &ids, &cfg, |_| {})).map_err(|e| e.to_string())?;
    let new = tok.decode(&out.tokens, true).map_err(|e| e.to_string())?;
    Ok(format!(
        "{}{new}\n\n({} tokens, {:.1} tokens/s{})",
        req.prompt,
        out.tokens.len(),
        out.tokens_per_sec(),
        if req.adapter.is_some() {
            ", with the run's adapter"
        } else {
            ", base model only: no adapter saved yet"
        }
    ))
}
