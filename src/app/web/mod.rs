//! The browser app (wasm32 only): the desktop app's training core in a tab, on WebGPU.
//!
//! Model and data come from the page's file picker (an HF folder's files or one GGUF, and a JSONL
//! file, read into memory once) or from the tiny demo bundled in the wasm; the settings panels and
//! curves are the desktop app's ([`crate::app::ui`]). Training runs in a Web Worker ([`worker`])
//! or, where none can start, as a `spawn_local` task in the page; either way it awaits every GPU
//! readback and yields to the browser between steps. Each step is logged to the console as one
//! JSON line, and `window.wgtune_status()` returns the same state for automation (web/test.sh).
//! Without WebGPU the page says how to enable it and trains on burn's CPU backend instead.

use crate::app::curves::Curves;
use crate::app::ui::ERR;
use crate::app::ui::panels::{self, Front};
use crate::app::ui::state::{DataInfo, MethodChoice, ModelInfo, problems, summarize_data};
use crate::io::{Blob, FileSource, LoadError};
use crate::model::loader::{ModelSource, load_model, read_model};
use crate::train::run::RunConfig;
use crate::train::session::Session;
use burn::tensor::Device;
use eframe::egui::{self, Color32, RichText};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

mod worker;
pub use worker::wgtune_worker_message;
use worker::{post_job, post_stop, worker};

/// The demo run: the tiny fixture model with its data (the same file `web/test.sh` trains
/// natively with `--backend cpu` to compare losses).
const DEMO_RUN: &str = include_str!("../../../web/demo-run.toml");
const DEMO_DIR: &str = "tests/fixtures/tiny_gqa";
const DEMO_FILES: [(&str, &[u8]); 3] = [
    (
        "config.json",
        include_bytes!("../../../tests/fixtures/tiny_gqa/config.json"),
    ),
    (
        "generation_config.json",
        include_bytes!("../../../tests/fixtures/tiny_gqa/generation_config.json"),
    ),
    (
        "model.safetensors",
        include_bytes!("../../../tests/fixtures/tiny_gqa/model.safetensors"),
    ),
];
const DEMO_DATA_NAME: &str = "tests/fixtures/tiny_gqa/data.jsonl";
const DEMO_DATA: &str = include_str!("../../../tests/fixtures/tiny_gqa/data.jsonl");
/// The run file's `model` for an HF model picked as files (the browser gives no folder path).
const PICKED_MODEL: &str = "picked-model";
/// File types the model and data pickers offer.
const MODEL_ACCEPT: &str = ".gguf,.safetensors,.json,.jinja";
const DATA_ACCEPT: &str = ".jsonl,.json,.txt";

/// Files picked in the browser (or bundled), by name, as an HF folder.
struct MemFolder {
    name: String,
    files: HashMap<String, Blob>,
}

impl FileSource for MemFolder {
    fn read(&self, name: &str) -> Result<Option<Blob>, LoadError> {
        Ok(self.files.get(name).cloned())
    }
    fn display(&self, name: &str) -> String {
        format!("{}/{name}", self.name)
    }
}

/// The model the user chose.
enum ModelChoice {
    Folder(Rc<MemFolder>),
    Gguf { name: String, bytes: Blob },
}

impl ModelChoice {
    /// The files as the model loader reads them (the bytes are shared, not copied).
    fn source(&self) -> ModelSource<'_> {
        match self {
            ModelChoice::Folder(f) => ModelSource::HfFolder(&**f),
            ModelChoice::Gguf { name, bytes } => ModelSource::Gguf {
                bytes: bytes.clone(),
                name: name.clone(),
            },
        }
    }

    fn name(&self) -> String {
        match self {
            ModelChoice::Folder(f) => f.name.clone(),
            ModelChoice::Gguf { name, .. } => name.clone(),
        }
    }
}

/// Everything the page shows and `wgtune_status()` reports.
struct Shared {
    /// `starting`, `ready`, `loading`, `training`, `done` or `error`.
    phase: &'static str,
    device: Option<Device>,
    /// WebGPU adapter (empty without WebGPU).
    adapter: String,
    /// Backend description shown on the page.
    backend: String,
    /// Why WebGPU is not used (empty when it is).
    no_webgpu: String,
    model: Option<Rc<ModelChoice>>,
    /// What the model's files say about it (the model panel's summary).
    model_info: Option<ModelInfo>,
    data: Option<(String, Rc<String>)>,
    /// The data panel's summary of `data` (tokenized with the model's tokenizer when it has one).
    data_info: Option<Result<DataInfo, String>>,
    run: RunConfig,
    /// Loss plot options (as the desktop app's).
    log_scale: bool,
    smoothing: f64,
    step: u64,
    total: usize,
    losses: Vec<f64>,
    step_ms: Vec<f64>,
    tokens: Vec<usize>,
    curves: Curves,
    log: Vec<String>,
    error: Option<String>,
    adapter_files: Option<(String, Vec<u8>)>,
    stop: bool,
    ctx: Option<egui::Context>,
}

impl Shared {
    fn status(&self) -> serde_json::Value {
        let mean_ms = if self.step_ms.len() > 1 {
            // The first step compiles the shaders: leave it out of the mean.
            let rest = &self.step_ms[1..];
            rest.iter().sum::<f64>() / rest.len() as f64
        } else {
            self.step_ms.first().copied().unwrap_or(0.0)
        };
        serde_json::json!({
            "phase": self.phase,
            "step": self.step,
            "total": self.total,
            "loss": self.losses.last(),
            "losses": self.losses,
            "step_ms": self.step_ms,
            "tokens": self.tokens,
            "mean_step_ms": mean_ms,
            "error": self.error,
            "adapter": self.adapter,
            "backend": self.backend,
            "webgpu": self.no_webgpu.is_empty() && !self.adapter.is_empty(),
            "method": self.run.method,
            "model": self.model.as_ref().map(|m| m.name()),
            "model_layers": self.model_info.as_ref().map(|m| m.config.num_hidden_layers),
            "model_format": self.model_info.as_ref().map(|m| m.format.clone()),
            "model_tokenizer": self.model_info.as_ref().is_some_and(|m| m.tokenizer.is_some()),
            "data": self.data.as_ref().map(|d| d.0.clone()),
            "data_examples": match &self.data_info {
                Some(Ok(d)) => Some(d.lengths.len()),
                _ => None,
            },
            "adapter_ready": self.adapter_files.is_some(),
            "last_log": self.log.last(),
        })
    }

    fn log(&mut self, line: String) {
        web_sys::console::log_1(&line.clone().into());
        self.log.push(line);
    }

    fn fail(&mut self, e: String) {
        web_sys::console::error_1(&format!("wgtune error: {e}").into());
        self.log.push(format!("error: {e}"));
        self.error = Some(e);
        self.phase = "error";
    }

    fn repaint(&self) {
        if let Some(ctx) = &self.ctx {
            ctx.request_repaint();
        }
    }

    /// Use `m` as the model when its files read as a supported model (else log why and keep the old).
    fn set_model(&mut self, m: ModelChoice) {
        match read_model(m.source()) {
            Ok(files) => {
                let info = ModelInfo::from_files(&m.name(), files);
                self.log(format!(
                    "model: {} ({}, {} layers, hidden {})",
                    m.name(),
                    info.format,
                    info.config.num_hidden_layers,
                    info.config.hidden_size
                ));
                self.model_info = Some(info);
                self.model = Some(Rc::new(m));
                self.summarize_data();
            }
            // Every load error names the file already.
            Err(e) => self.log(format!("error: {e}")),
        }
    }

    /// Use `text` (file `name`) as the training data.
    fn set_data(&mut self, name: String, text: String) {
        self.log(format!("data: {name} ({} lines)", text.lines().count()));
        self.data = Some((name, Rc::new(text)));
        self.summarize_data();
    }

    fn summarize_data(&mut self) {
        self.data_info = self
            .data
            .as_ref()
            .map(|(name, text)| summarize_data(text, name, self.model_info.as_ref()));
    }
}

thread_local! {
    static SHARED: Rc<RefCell<Shared>> = Rc::new(RefCell::new(Shared {
        phase: "starting",
        device: None,
        adapter: String::new(),
        backend: "starting…".into(),
        no_webgpu: String::new(),
        model: None,
        model_info: None,
        data: None,
        data_info: None,
        run: RunConfig::from_toml(DEMO_RUN).unwrap_or_default(),
        log_scale: false,
        smoothing: 0.6,
        step: 0,
        total: 0,
        losses: Vec::new(),
        step_ms: Vec::new(),
        tokens: Vec::new(),
        curves: Curves::new(0.6),
        log: Vec::new(),
        error: None,
        adapter_files: None,
        stop: false,
        ctx: None,
    }));
}

fn shared() -> Rc<RefCell<Shared>> {
    SHARED.with(Rc::clone)
}

/// The page's state as JSON: phase, step, total, loss, losses, step_ms, tokens, mean_step_ms,
/// error, adapter (WebGPU adapter), backend, webgpu, method, model, model_layers, model_format,
/// model_tokenizer, data, data_examples, adapter_ready.
#[wasm_bindgen]
pub fn wgtune_status() -> String {
    shared().borrow().status().to_string()
}

/// Load the bundled demo model and data (as the "Load demo" button does).
#[wasm_bindgen]
pub fn wgtune_load_demo() {
    load_demo(&mut shared().borrow_mut());
}

/// Open the browser's file picker for `what` (`model`: one .gguf or an HF folder's files; `data`:
/// a JSONL file), as the Open buttons do. The browser shows it only during a user gesture (a
/// click on the page shortly before). Returns false for an unknown `what` or while training.
#[wasm_bindgen]
pub fn wgtune_pick(what: &str) -> bool {
    if matches!(shared().borrow().phase, "training" | "loading" | "starting") {
        return false;
    }
    match what {
        "model" => pick_files(MODEL_ACCEPT, true, picked_model),
        "data" => pick_files(DATA_ACCEPT, false, picked_data),
        _ => return false,
    }
    true
}

/// Start training with `method` (`lora`, `qlora`, `oft` or `qoft`) for `steps` steps on `backend` (`webgpu`, or
/// `cpu` for burn's CPU backend) with the loaded model and data (the demo when nothing is loaded),
/// as the Train button does. Returns false when busy or when the run has a problem (logged).
#[wasm_bindgen]
pub fn wgtune_train(method: &str, steps: usize, backend: &str) -> bool {
    let s = shared();
    let mut st = s.borrow_mut();
    if matches!(st.phase, "training" | "loading" | "starting") {
        return false;
    }
    if st.model.is_none() || st.data.is_none() {
        load_demo(&mut st);
    }
    st.run.method = Some(method.into());
    st.run.steps = Some(steps);
    st.run.backend = (backend == "cpu").then(|| "cpu".into());
    let issues = browser_problems(&st);
    if !issues.is_empty() {
        st.log(format!("cannot train: {}", issues.join("; ")));
        return false;
    }
    drop(st);
    start_training();
    true
}

/// Stop the running training after its current step (as the Stop button does); the adapter as
/// it stands is then ready to download.
#[wasm_bindgen]
pub fn wgtune_stop() {
    request_stop(&mut shared().borrow_mut());
}

fn request_stop(st: &mut Shared) {
    st.stop = true;
    post_stop();
}

/// Download `adapter` (adapter_config.json and adapter_model.safetensors), `adapter-gguf` (the
/// LoRA as llama.cpp's GGUF adapter) or `run` (run.toml), as the page's buttons do. Returns
/// false when there is nothing to download yet (or the adapter cannot be a GGUF adapter: OFT).
#[wasm_bindgen]
pub fn wgtune_download(what: &str) -> bool {
    wgtune_download_from(&shared().borrow(), what)
}

fn wgtune_download_from(st: &Shared, what: &str) -> bool {
    match what {
        "adapter" => match &st.adapter_files {
            Some((json, bytes)) => {
                download("adapter_config.json", json.as_bytes(), "application/json");
                download(
                    "adapter_model.safetensors",
                    bytes,
                    "application/octet-stream",
                );
                true
            }
            None => false,
        },
        "adapter-gguf" => {
            let (Some((json, bytes)), Some(info)) = (&st.adapter_files, &st.model_info) else {
                return false;
            };
            let files = [
                (
                    "adapter_config.json",
                    Arc::new(json.clone().into_bytes()) as Blob,
                ),
                ("adapter_model.safetensors", Arc::new(bytes.clone()) as Blob),
            ];
            let folder = MemFolder {
                name: "adapter".into(),
                files: files.into_iter().map(|(n, b)| (n.to_string(), b)).collect(),
            };
            let out = crate::io::gguf_adapter::OutType::F32;
            match crate::io::gguf_adapter::lora_to_gguf(&folder, &info.config, "Adapter", out) {
                Ok(gguf) => {
                    download("adapter.gguf", &gguf, "application/octet-stream");
                    true
                }
                Err(e) => {
                    web_sys::console::error_1(&format!("adapter.gguf: {e}").into());
                    false
                }
            }
        }
        "run" => {
            download("run.toml", st.run.to_toml().as_bytes(), "application/toml");
            true
        }
        _ => false,
    }
}

fn load_demo(st: &mut Shared) {
    let files = DEMO_FILES
        .iter()
        .map(|(n, b)| (n.to_string(), Arc::new(*b) as Blob))
        .collect();
    st.set_model(ModelChoice::Folder(Rc::new(MemFolder {
        name: DEMO_DIR.into(),
        files,
    })));
    st.set_data(DEMO_DATA_NAME.into(), DEMO_DATA.into());
    let demo = RunConfig::from_toml(DEMO_RUN).unwrap_or_default();
    let (method, steps) = (st.run.method.clone(), st.run.steps);
    st.run = demo;
    st.run.method = method.or(st.run.method.take());
    st.run.steps = steps.or(st.run.steps);
    st.log("demo: tiny Llama (2 layers, 64 wide) and 2 rows of data".into());
    st.repaint();
}

/// Save `bytes` as a download named `name`.
fn download(name: &str, bytes: &[u8], mime: &str) {
    let go = || -> Result<(), JsValue> {
        let window = web_sys::window().ok_or("no window")?;
        let doc = window.document().ok_or("no document")?;
        let arr = js_sys::Uint8Array::from(bytes);
        let parts = js_sys::Array::of1(&arr);
        let opts = web_sys::BlobPropertyBag::new();
        opts.set_type(mime);
        let blob = web_sys::Blob::new_with_u8_array_sequence_and_options(&parts, &opts)?;
        let url = web_sys::Url::create_object_url_with_blob(&blob)?;
        let a: web_sys::HtmlAnchorElement = doc.create_element("a")?.dyn_into()?;
        a.set_href(&url);
        a.set_download(name);
        let body = doc.body().ok_or("no body")?;
        body.append_child(&a)?;
        a.click();
        body.remove_child(&a)?;
        Ok(())
    };
    if let Err(e) = go() {
        web_sys::console::error_2(&format!("download {name} failed:").into(), &e);
    }
}

/// Resolve after the browser had a chance to run its own tasks (a `setTimeout(0)`).
/// (In the page and in the worker: both have `setTimeout` and `performance` on their global.)
async fn yield_to_browser() {
    let p = js_sys::Promise::new(&mut |resolve, _| {
        let global = js_sys::global();
        if let Ok(f) = js_sys::Reflect::get(&global, &"setTimeout".into())
            .and_then(|f| f.dyn_into::<js_sys::Function>().map_err(JsValue::from))
        {
            let _ = f.call2(&global, &resolve, &0.into());
        }
    });
    let _ = JsFuture::from(p).await;
}

/// `performance.now()` of the page or the worker.
fn now_ms() -> f64 {
    let global = js_sys::global();
    js_sys::Reflect::get(&global, &"performance".into())
        .ok()
        .and_then(|p| {
            let now: js_sys::Function = js_sys::Reflect::get(&p, &"now".into())
                .ok()?
                .dyn_into()
                .ok()?;
            now.call0(&p).ok()?.as_f64()
        })
        .unwrap_or(0.0)
}

/// The page's WebGPU adapter as the browser describes it (`GPUAdapterInfo` vendor, architecture,
/// description; wgpu only passes the often empty description on).
async fn js_adapter_name() -> Option<String> {
    let nav = web_sys::window()?.navigator();
    let gpu = js_sys::Reflect::get(&nav, &"gpu".into()).ok()?;
    let request: js_sys::Function = js_sys::Reflect::get(&gpu, &"requestAdapter".into())
        .ok()?
        .dyn_into()
        .ok()?;
    let promise: js_sys::Promise = request.call0(&gpu).ok()?.dyn_into().ok()?;
    let adapter = JsFuture::from(promise).await.ok()?;
    if adapter.is_null() || adapter.is_undefined() {
        return None;
    }
    let info = js_sys::Reflect::get(&adapter, &"info".into()).ok()?;
    let parts: Vec<String> = ["vendor", "architecture", "description"]
        .iter()
        .filter_map(|k| {
            js_sys::Reflect::get(&info, &(*k).into())
                .ok()
                .and_then(|v| v.as_string())
                .filter(|s| !s.is_empty())
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join(" "))
}

/// Initialise burn's wgpu runtime on the browser's WebGPU (async adapter/device requests), or
/// fall back to the CPU backend with a message.
async fn init_device() {
    let has_gpu = web_sys::window()
        .map(|w| {
            js_sys::Reflect::get(&w.navigator(), &"gpu".into())
                .map(|g| !g.is_undefined() && !g.is_null())
                .unwrap_or(false)
        })
        .unwrap_or(false);
    let js_name = if has_gpu {
        js_adapter_name().await
    } else {
        None
    };
    let result = if has_gpu {
        Device::wgpu_options()
            .init_with_setup_async()
            .await
            .map_err(|e| e.to_string())
    } else {
        Err("this browser has no navigator.gpu".into())
    };
    let s = shared();
    let mut st = s.borrow_mut();
    match result {
        Ok((device, setup)) => {
            let info = setup.adapter.get_info();
            let name = Some(info.name.clone())
                .filter(|n| !n.is_empty())
                .or(js_name)
                .unwrap_or_else(|| "unnamed adapter".into());
            st.adapter = format!("{name} ({:?}, {:?})", info.backend, info.device_type);
            st.backend = format!("WebGPU: {}", st.adapter);
            st.device = Some(device);
        }
        Err(e) => {
            st.no_webgpu = e.clone();
            st.backend = "CPU (burn flex backend; no WebGPU)".into();
            st.device = Some(Device::flex());
            st.log(format!(
                "WebGPU unavailable ({e}): training on the CPU backend. Enable WebGPU: Chrome/Edge \
                 113+ have it on (on Linux start with --enable-unsafe-webgpu or enable \
                 chrome://flags/#enable-unsafe-webgpu); Firefox 141+ on Windows, Nightly elsewhere \
                 (dom.webgpu.enabled); Safari 26+."
            ));
            set_banner(&format!(
                "WebGPU is not available in this browser ({e}). wgtune trains on its much slower \
                 CPU backend instead. To enable WebGPU: Chrome/Edge 113+ (on Linux: \
                 chrome://flags/#enable-unsafe-webgpu, or start with --enable-unsafe-webgpu), \
                 Firefox Nightly (dom.webgpu.enabled), Safari 26+."
            ));
        }
    }
    st.phase = "ready";
    let line = serde_json::json!({"wgtune": "ready", "adapter": st.adapter, "backend": st.backend});
    web_sys::console::log_1(&line.to_string().into());
    st.repaint();
}

/// Show `text` in the page's banner (outside the canvas).
fn set_banner(text: &str) {
    if let Some(el) = web_sys::window()
        .and_then(|w| w.document())
        .and_then(|d| d.get_element_by_id("wgtune_banner"))
    {
        el.set_text_content(Some(text));
        let _ = el.set_attribute("style", "display:block");
    }
}

/// What a training run reports, in the page or from the worker (as JSON through `postMessage`).
#[derive(serde::Serialize, serde::Deserialize)]
enum Event {
    /// A line for the page's log.
    Log(String),
    /// Training started: the scheduled number of steps and the backend it runs on.
    Started { total: usize, backend: String },
    /// Eval loss before the first step.
    EvalBefore(f64),
    /// One step: the console/metrics line (step, loss, lr, grad_norm, tokens_per_s, step_ms,
    /// eval_loss) and the step's tokens.
    Step {
        line: serde_json::Value,
        tokens: usize,
    },
    /// Finished (or stopped): adapter_config.json; the safetensors bytes travel beside it.
    Done { config: String },
    /// The run failed.
    Failed(String),
}

/// Apply a run's event to the page's state (`weights`: the adapter bytes with [`Event::Done`]).
fn apply(st: &mut Shared, ev: Event, weights: Vec<u8>) {
    match ev {
        Event::Log(l) => st.log(l),
        Event::Started { total, backend } => {
            st.total = total;
            st.phase = "training";
            st.log(format!("training on {backend}"));
        }
        Event::EvalBefore(el) => {
            st.curves
                .push(&serde_json::json!({"step": 0, "eval_loss": el}));
            st.log(format!("eval loss before training: {el:.4}"));
        }
        Event::Step { line, tokens } => {
            web_sys::console::log_1(&format!("wgtune step {line}").into());
            st.step = line["step"].as_u64().unwrap_or(st.step + 1);
            st.losses.push(line["loss"].as_f64().unwrap_or(f64::NAN));
            st.step_ms.push(line["step_ms"].as_f64().unwrap_or(0.0));
            st.tokens.push(tokens);
            st.curves.push(&line);
        }
        Event::Done { config } => {
            st.adapter_files = Some((config, weights));
            st.phase = "done";
            let summary = st.status();
            let line = format!(
                "done: {} steps, final loss {:.4}; download the adapter on the left",
                st.step,
                st.losses.last().copied().unwrap_or(f64::NAN)
            );
            st.log(line);
            web_sys::console::log_1(&format!("wgtune done {summary}").into());
        }
        Event::Failed(e) => st.fail(e),
    }
    st.repaint();
}

/// One training run's inputs, as the page holds them.
struct Job {
    run: RunConfig,
    model: Rc<ModelChoice>,
    data: (String, Rc<String>),
}

fn start_training() {
    let s = shared();
    let job = {
        let mut st = s.borrow_mut();
        st.phase = "loading";
        st.step = 0;
        st.losses.clear();
        st.step_ms.clear();
        st.tokens.clear();
        st.curves = Curves::new(st.smoothing);
        st.error = None;
        st.adapter_files = None;
        st.stop = false;
        match (st.model.clone(), st.data.clone()) {
            (Some(model), Some(data)) => {
                st.run.model = Some(model.name());
                st.run.data = Some(data.0.clone());
                Job {
                    run: st.run.clone(),
                    model,
                    data,
                }
            }
            _ => {
                st.fail("open a model and data first".into());
                return;
            }
        }
    };
    // In a worker the page's thread never runs training (kernel compilation, autotuning and
    // command encoding included); where workers are unavailable the run happens in the page.
    if let Some(w) = worker() {
        match post_job(&w, &job) {
            Ok(()) => return,
            Err(e) => s.borrow_mut().log(format!(
                "the training worker did not take the run ({e:?}); training in the page"
            )),
        }
    }
    wasm_bindgen_futures::spawn_local(async move {
        let device = {
            let s = shared();
            let st = s.borrow();
            st.device.clone().map(|d| (d, st.backend.clone()))
        };
        let emit = |ev: Event, weights: Vec<u8>| apply(&mut shared().borrow_mut(), ev, weights);
        let result = match device {
            Some(d) => run_job(job, d, &emit, &|| shared().borrow().stop).await,
            None => Err(anyhow::anyhow!("no device yet")),
        };
        if let Err(e) = result {
            emit(Event::Failed(format!("{e:#}")), Vec::new());
        }
    });
}

/// Train `job` on `device` (burn's CPU backend instead when the run says `backend = "cpu"`),
/// reporting through `emit` and ending early when `stop()` says so. Yields to the browser after
/// every step; all readbacks are awaited.
async fn run_job(
    job: Job,
    (device, backend): (Device, String),
    emit: &dyn Fn(Event, Vec<u8>),
    stop: &dyn Fn() -> bool,
) -> anyhow::Result<()> {
    let Job { run, model, data } = job;
    yield_to_browser().await;
    let (device, backend) = match run.backend.as_deref() {
        Some("cpu") => (Device::flex(), "the CPU backend (burn flex)".to_string()),
        _ => (device, backend),
    };
    let device = device.autodiff();
    let quantize = run.base_quantization();
    let lm = load_model(model.source(), &device, quantize.as_deref())?;
    let (mut session, log) = Session::new(&run, lm, &data.1, &data.0)?;
    for l in log {
        emit(Event::Log(l), Vec::new());
    }
    emit(
        Event::Started {
            total: session.schedule.total,
            backend,
        },
        Vec::new(),
    );
    if let Some(el) = session.eval_before().await? {
        emit(Event::EvalBefore(el), Vec::new());
    }
    while !session.done() {
        if stop() {
            emit(Event::Log("stopped".into()), Vec::new());
            break;
        }
        let t0 = now_ms();
        let (m, eval) = session.step().await?;
        let ms = now_ms() - t0;
        let mut line = serde_json::json!({
            "step": m.step, "loss": m.loss, "lr": m.lr, "grad_norm": m.grad_norm,
            "tokens_per_s": m.tokens as f64 / (ms / 1000.0).max(1e-9), "step_ms": ms,
        });
        if let Some(el) = eval {
            line["eval_loss"] = el.into();
        }
        emit(
            Event::Step {
                line,
                tokens: m.tokens,
            },
            Vec::new(),
        );
        yield_to_browser().await;
    }
    let (config, weights) = session.adapter_files(&model.name()).await?;
    emit(Event::Done { config }, weights);
    Ok(())
}

/// Open the browser's file picker; `on_files` gets the picked files once chosen.
fn pick_files(accept: &str, multiple: bool, on_files: impl FnOnce(Vec<web_sys::File>) + 'static) {
    let go = || -> Result<(), JsValue> {
        let doc = web_sys::window()
            .and_then(|w| w.document())
            .ok_or("no document")?;
        let input: web_sys::HtmlInputElement = doc.create_element("input")?.dyn_into()?;
        input.set_type("file");
        input.set_accept(accept);
        input.set_multiple(multiple);
        let inp = input.clone();
        let mut on_files = Some(on_files);
        let cb = Closure::<dyn FnMut()>::new(move || {
            let mut files = Vec::new();
            if let Some(list) = inp.files() {
                for i in 0..list.length() {
                    if let Some(f) = list.get(i) {
                        files.push(f);
                    }
                }
            }
            if let Some(f) = on_files.take() {
                f(files);
            }
        });
        input.set_onchange(Some(cb.as_ref().unchecked_ref()));
        cb.forget();
        input.click();
        Ok(())
    };
    if let Err(e) = go() {
        web_sys::console::error_2(&"file picker failed:".into(), &e);
    }
}

/// A picked file's bytes (one copy, into wasm memory).
async fn read_file(f: &web_sys::File) -> Result<Vec<u8>, String> {
    let buf = JsFuture::from(f.array_buffer())
        .await
        .map_err(|e| format!("{}: cannot read: {e:?}", f.name()))?;
    Ok(js_sys::Uint8Array::new(&buf).to_vec())
}

fn picked_model(files: Vec<web_sys::File>) {
    wasm_bindgen_futures::spawn_local(async move {
        let s = shared();
        let result: Result<ModelChoice, String> = async {
            if let Some(g) = files.iter().find(|f| f.name().ends_with(".gguf")) {
                let bytes = read_file(g).await?;
                return Ok(ModelChoice::Gguf {
                    name: g.name(),
                    bytes: Arc::new(bytes),
                });
            }
            if !files.iter().any(|f| f.name() == "config.json") {
                return Err(
                    "pick one .gguf file, or an HF model's files (config.json, *.safetensors, \
                     tokenizer.json, …) together"
                        .into(),
                );
            }
            let mut map = HashMap::new();
            for f in &files {
                map.insert(f.name(), Arc::new(read_file(f).await?) as Blob);
            }
            Ok(ModelChoice::Folder(Rc::new(MemFolder {
                name: PICKED_MODEL.into(),
                files: map,
            })))
        }
        .await;
        let mut st = s.borrow_mut();
        match result {
            Ok(m) => st.set_model(m),
            Err(e) => st.log(format!("error: {e}")),
        }
        st.repaint();
    });
}

fn picked_data(files: Vec<web_sys::File>) {
    wasm_bindgen_futures::spawn_local(async move {
        let Some(f) = files.first() else { return };
        let s = shared();
        let result = read_file(f).await.and_then(|b| {
            String::from_utf8(b).map_err(|_| format!("{}: not UTF-8 text", f.name()))
        });
        let mut st = s.borrow_mut();
        match result {
            Ok(text) => st.set_data(f.name(), text),
            Err(e) => st.log(format!("error: {e}")),
        }
        st.repaint();
    });
}

/// Why the run cannot start in the browser (empty when it can): the desktop app's checks on the
/// run with the in-memory model and data, plus methods that need the desktop app.
fn browser_problems(st: &Shared) -> Vec<String> {
    let mut run = st.run.clone();
    run.model = st.model.as_ref().map(|m| m.name());
    run.data = st.data.as_ref().map(|d| d.0.clone());
    run.out = Some("browser".into());
    let mut out = problems(&run, st.model_info.as_ref());
    let choice = MethodChoice::of(&run);
    if !Front::Browser.offers(choice) {
        out.push(format!(
            "{} needs the desktop app or `wgtune train --no-gui`",
            choice.label()
        ));
    }
    out
}

/// The egui app: the desktop app's settings panels and curves around the page's own model/data
/// pickers and run controls.
struct WebApp;

impl WebApp {
    fn model_section(ui: &mut egui::Ui, st: &mut Shared, busy: bool) {
        ui.label(RichText::new(st.backend.clone()).strong());
        if !st.no_webgpu.is_empty() {
            ui.colored_label(
                Color32::from_rgb(230, 120, 60),
                "No WebGPU: see the note above the app for how to enable it.",
            );
        }
        ui.add_enabled_ui(!busy, |ui| {
            ui.horizontal(|ui| {
                if ui
                    .button("Open model…")
                    .on_hover_text("one .gguf, or an HF folder's files (select them all)")
                    .clicked()
                {
                    pick_files(MODEL_ACCEPT, true, picked_model);
                }
                if ui
                    .button("Tiny demo")
                    .on_hover_text("the bundled 2-layer Llama and its data")
                    .clicked()
                {
                    load_demo(st);
                }
            });
        });
        ui.label(format!(
            "model: {}",
            st.model.as_ref().map_or("none".into(), |m| m.name())
        ));
        if let Some(m) = &st.model_info {
            panels::model_summary(ui, m, &st.run);
        }
    }

    fn data_section(ui: &mut egui::Ui, st: &mut Shared, busy: bool) {
        ui.horizontal(|ui| {
            if ui
                .add_enabled(!busy, egui::Button::new("Open data…"))
                .on_hover_text(
                    "jsonl or JSON array: input_ids, text, prompt/completion, alpaca or messages records",
                )
                .clicked()
            {
                pick_files(DATA_ACCEPT, false, picked_data);
            }
            ui.label(st.data.as_ref().map_or("no data", |d| d.0.as_str()));
        });
        panels::eval_split(ui, &mut st.run);
        match &st.data_info {
            Some(Ok(d)) => panels::data_summary(ui, d, &st.run),
            Some(Err(e)) => {
                ui.label(RichText::new(e).color(ERR));
            }
            None => {}
        }
    }

    fn controls(ui: &mut egui::Ui, st: &mut Shared, busy: bool) -> bool {
        let issues = browser_problems(st);
        let mut start = false;
        ui.horizontal(|ui| {
            let can_start = !busy
                && st.device.is_some()
                && st.model.is_some()
                && st.data.is_some()
                && issues.is_empty();
            if ui
                .add_enabled(can_start, egui::Button::new("▶ Train"))
                .clicked()
            {
                start = true;
            }
            if ui.add_enabled(busy, egui::Button::new("■ Stop")).clicked() {
                request_stop(st);
            }
            if ui
                .add_enabled(
                    st.adapter_files.is_some(),
                    egui::Button::new("Download adapter"),
                )
                .on_hover_text("adapter_config.json + adapter_model.safetensors (peft format)")
                .clicked()
            {
                wgtune_download_from(st, "adapter");
            }
            let oft = st.run.method.as_deref().is_some_and(|m| m.contains("oft"));
            if ui
                .add_enabled(
                    st.adapter_files.is_some() && !oft,
                    egui::Button::new("Download adapter.gguf"),
                )
                .on_hover_text(
                    "the LoRA as llama.cpp's GGUF adapter: llama-cli --lora, Ollama ADAPTER",
                )
                .on_disabled_hover_text("llama.cpp has no OFT adapter type")
                .clicked()
            {
                wgtune_download_from(st, "adapter-gguf");
            }
            if ui.button("Download run file").clicked() {
                wgtune_download_from(st, "run");
            }
        });
        if st.model.is_some() && st.data.is_some() {
            for p in &issues {
                ui.label(RichText::new(format!("• {p}")).color(ERR));
            }
        } else {
            ui.label(RichText::new("open a model and data, or load the tiny demo").weak());
        }
        start
    }
}

impl eframe::App for WebApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let s = shared();
        let mut start = false;
        egui::Panel::top("top").show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.heading("wgtune");
                ui.label("LoRA / QLoRA / OFTv2 / QOFT finetuning in the browser");
            });
        });
        egui::Panel::left("settings")
            .default_size(380.0)
            .show(ui, |ui| {
                let mut st = s.borrow_mut();
                let st = &mut *st;
                let busy = matches!(st.phase, "loading" | "training" | "starting");
                egui::ScrollArea::vertical().show(ui, |ui| {
                    egui::CollapsingHeader::new("Model")
                        .default_open(true)
                        .show(ui, |ui| Self::model_section(ui, st, busy));
                    egui::CollapsingHeader::new("Data")
                        .default_open(true)
                        .show(ui, |ui| Self::data_section(ui, st, busy));
                    ui.add_enabled_ui(!busy, |ui| {
                        egui::CollapsingHeader::new("Method")
                            .default_open(true)
                            .show(ui, |ui| {
                                panels::method_panel(
                                    ui,
                                    &mut st.run,
                                    st.model_info.as_ref(),
                                    Front::Browser,
                                )
                            });
                        egui::CollapsingHeader::new("Training")
                            .default_open(false)
                            .show(ui, |ui| {
                                panels::training_panel(ui, &mut st.run, Front::Browser)
                            });
                    });
                });
            });
        egui::CentralPanel::default().show(ui, |ui| {
            let mut st = s.borrow_mut();
            let st = &mut *st;
            let busy = matches!(st.phase, "loading" | "training" | "starting");
            start = Self::controls(ui, st, busy);
            let mean = st.status()["mean_step_ms"].as_f64().unwrap_or(0.0);
            ui.label(format!(
                "{}: step {}/{}{}{}",
                st.phase,
                st.step,
                st.total,
                st.losses
                    .last()
                    .map_or(String::new(), |l| format!(", loss {l:.4}")),
                if mean > 0.0 {
                    format!(", {mean:.0} ms/step")
                } else {
                    String::new()
                }
            ));
            if let Some(e) = &st.error {
                ui.colored_label(ERR, e);
            }
            panels::plots(
                ui,
                &mut st.curves,
                &mut st.log_scale,
                &mut st.smoothing,
                Front::Browser,
            );
            egui::ScrollArea::vertical()
                .stick_to_bottom(true)
                .show(ui, |ui| {
                    for l in &st.log {
                        ui.label(RichText::new(l).monospace().small());
                    }
                });
        });
        if start {
            start_training();
        }
    }
}

/// The UI renders through wgpu's WebGL2 backend, leaving the page's WebGPU to training (one
/// WebGPU user per page; a WebGPU canvas also broke adapter requests in headless Chromium).
fn web_options() -> eframe::WebOptions {
    use eframe::egui_wgpu::{WgpuConfiguration, WgpuSetup, WgpuSetupCreateNew};
    let mut create = WgpuSetupCreateNew::without_display_handle();
    create.instance_descriptor.backends = eframe::wgpu::Backends::GL;
    eframe::WebOptions {
        wgpu_options: WgpuConfiguration {
            wgpu_setup: WgpuSetup::CreateNew(create),
            ..Default::default()
        },
        ..Default::default()
    }
}

// The static constructors the linker collects (cubecl registers its IR dialects with `inventory`).
unsafe extern "C" {
    fn __wasm_call_ctors();
}

/// Entry point: called by the JS glue once the module is instantiated.
#[wasm_bindgen(start)]
pub fn start() {
    // Run the static constructors once, here. Without a call from an export, wasm-ld treats the
    // module as a "command" and wraps every export in `__wasm_call_ctors`, so each call from JS
    // (every promise resolution, timer and frame) re-ran cubecl's ~1000 `inventory` constructors:
    // measured ~2 s of the page thread per training step. See the `inventory` crate's docs.
    // SAFETY: called once, before any other Rust code of this module runs.
    unsafe { __wasm_call_ctors() };
    if web_sys::window().is_none() {
        // The training worker (web/worker.js): it only answers `wgtune_worker_message`.
        return;
    }
    let canvas = web_sys::window()
        .and_then(|w| w.document())
        .and_then(|d| d.get_element_by_id("wgtune_canvas"))
        .and_then(|e| e.dyn_into::<web_sys::HtmlCanvasElement>().ok());
    let Some(canvas) = canvas else {
        web_sys::console::error_1(&"wgtune: no <canvas id=wgtune_canvas> on the page".into());
        return;
    };
    wasm_bindgen_futures::spawn_local(async move {
        // Training device first: in headless Chromium a WebGPU canvas makes later adapter
        // requests come back empty ("A valid external Instance reference no longer exists").
        init_device().await;
        let runner = eframe::WebRunner::new();
        let started = runner
            .start(
                canvas,
                web_options(),
                Box::new(|cc| {
                    shared().borrow_mut().ctx = Some(cc.egui_ctx.clone());
                    Ok(Box::new(WebApp))
                }),
            )
            .await;
        if let Err(e) = started {
            let msg = format!("the app could not start its renderer: {e:?}");
            set_banner(&msg);
            shared().borrow_mut().fail(msg);
        }
        // Keep the runner alive for the page's lifetime.
        std::mem::forget(runner);
    });
}
