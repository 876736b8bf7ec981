//! Training in a dedicated Web Worker, so nothing of a run (kernel compilation, autotuning,
//! command encoding) ever runs on the page's thread. `web/worker.js` loads this same module in
//! the worker; the page posts it a run (the run file, the data text and the model's files, whose
//! buffers are transferred, not copied) and gets [`Event`]s back as JSON, the adapter's bytes
//! beside the last one. The worker keeps its WebGPU device between runs, so kernels compile once.

use super::{Event, Job, MemFolder, ModelChoice, apply, run_job, shared};
use crate::io::Blob;
use crate::train::run::RunConfig;
use burn::tensor::Device;
use js_sys::{Array, Object, Reflect, Uint8Array};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

thread_local! {
    /// The page's worker: `None` before the first run, `Some(None)` where it cannot start.
    static WORKER: RefCell<Option<Option<web_sys::Worker>>> = const { RefCell::new(None) };
    /// In the worker: its device and how to name it, kept between runs.
    static DEVICE: RefCell<Option<(Device, String)>> = const { RefCell::new(None) };
    /// In the worker: the page asked the running job to stop.
    static STOP: Cell<bool> = const { Cell::new(false) };
}

fn set(o: &Object, key: &str, v: &JsValue) -> Result<(), JsValue> {
    Reflect::set(o, &key.into(), v).map(|_| ())
}

fn get(o: &JsValue, key: &str) -> JsValue {
    Reflect::get(o, &key.into()).unwrap_or(JsValue::UNDEFINED)
}

/// The page's training worker, started on first use (`?worker=0` in the URL trains in the page).
pub(super) fn worker() -> Option<web_sys::Worker> {
    WORKER.with(|w| {
        let mut w = w.borrow_mut();
        w.get_or_insert_with(start_worker).clone()
    })
}

fn start_worker() -> Option<web_sys::Worker> {
    let window = web_sys::window()?;
    if window.location().search().ok()?.contains("worker=0") {
        return None;
    }
    let opts = web_sys::WorkerOptions::new();
    opts.set_type(web_sys::WorkerType::Module);
    let w = match web_sys::Worker::new_with_options("./worker.js", &opts) {
        Ok(w) => w,
        Err(e) => {
            web_sys::console::warn_2(&"wgtune: no training worker:".into(), &e);
            return None;
        }
    };
    let on_message =
        Closure::<dyn FnMut(web_sys::MessageEvent)>::new(|e: web_sys::MessageEvent| {
            let data = e.data();
            let event = get(&data, "event")
                .as_string()
                .and_then(|j| serde_json::from_str::<Event>(&j).ok());
            let weights = get(&data, "weights")
                .dyn_into::<Uint8Array>()
                .map(|u| u.to_vec())
                .unwrap_or_default();
            if let Some(ev) = event {
                apply(&mut shared().borrow_mut(), ev, weights);
            }
        });
    w.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    on_message.forget();
    let on_error = Closure::<dyn FnMut(web_sys::ErrorEvent)>::new(|e: web_sys::ErrorEvent| {
        let msg = format!("the training worker failed: {}", e.message());
        apply(&mut shared().borrow_mut(), Event::Failed(msg), Vec::new());
    });
    w.set_onerror(Some(on_error.as_ref().unchecked_ref()));
    on_error.forget();
    Some(w)
}

/// Send `job` to the worker. The model's bytes are copied out of this module's memory once and
/// their buffers transferred to the worker.
pub(super) fn post_job(w: &web_sys::Worker, job: &Job) -> Result<(), JsValue> {
    let msg = Object::new();
    set(&msg, "run", &job.run.to_toml().into())?;
    set(&msg, "data_name", &job.data.0.as_str().into())?;
    set(&msg, "data_text", &job.data.1.as_str().into())?;
    set(&msg, "adapter", &shared().borrow().adapter.as_str().into())?;
    let files = Array::new();
    let transfer = Array::new();
    let add = |name: &str, bytes: &[u8]| {
        let u = Uint8Array::from(bytes);
        transfer.push(&u.buffer());
        files.push(&Array::of2(&name.into(), &u));
    };
    match &*job.model {
        ModelChoice::Folder(f) => {
            set(&msg, "folder", &f.name.as_str().into())?;
            for (name, bytes) in &f.files {
                add(name, (**bytes).as_ref());
            }
        }
        ModelChoice::Gguf { name, bytes } => {
            set(&msg, "gguf", &name.as_str().into())?;
            add(name, (**bytes).as_ref());
        }
    }
    set(&msg, "files", &files)?;
    w.post_message_with_transfer(&msg, &transfer)
}

/// Ask the worker's running job to stop after its current step.
pub(super) fn post_stop() {
    if let Some(Some(w)) = WORKER.with(|w| w.borrow().clone()) {
        let msg = Object::new();
        if set(&msg, "stop", &true.into()).is_ok() {
            let _ = w.post_message(&msg);
        }
    }
}

/// In the worker: a message from the page (a run, or a stop request).
#[wasm_bindgen]
pub fn wgtune_worker_message(msg: JsValue) {
    if get(&msg, "stop").as_bool() == Some(true) {
        STOP.set(true);
        return;
    }
    STOP.set(false);
    wasm_bindgen_futures::spawn_local(async move {
        if let Err(e) = train(msg).await {
            post(Event::Failed(format!("{e:#}")), Vec::new());
        }
    });
}

/// In the worker: post `ev` (and the adapter bytes) to the page.
fn post(ev: Event, weights: Vec<u8>) {
    let scope: web_sys::DedicatedWorkerGlobalScope = js_sys::global().unchecked_into();
    let msg = Object::new();
    let json = serde_json::to_string(&ev).unwrap_or_default();
    let transfer = Array::new();
    let _ = set(&msg, "event", &json.into());
    if !weights.is_empty() {
        let u = Uint8Array::from(&weights[..]);
        transfer.push(&u.buffer());
        let _ = set(&msg, "weights", &u);
    }
    if let Err(e) = scope.post_message_with_transfer(&msg, &transfer) {
        web_sys::console::error_2(&"wgtune worker: postMessage failed:".into(), &e);
    }
}

/// The worker's device: WebGPU where the worker has it (initialised once), else burn's CPU backend.
async fn device(page_adapter: String) -> (Device, String) {
    if let Some(d) = DEVICE.with(|d| d.borrow().clone()) {
        return d;
    }
    let d = match Device::wgpu_options().init_with_setup_async().await {
        Ok((device, setup)) => {
            // wgpu often gets an empty name in browsers; the page's adapter is the same one.
            let info = setup.adapter.get_info();
            let name = Some(info.name)
                .filter(|n| !n.is_empty())
                .unwrap_or(page_adapter);
            (device, format!("WebGPU in a worker: {name}"))
        }
        Err(e) => (
            Device::flex(),
            format!("the CPU backend in a worker (no WebGPU: {e})"),
        ),
    };
    DEVICE.with(|slot| *slot.borrow_mut() = Some(d.clone()));
    d
}

async fn train(msg: JsValue) -> anyhow::Result<()> {
    let text = |k: &str| get(&msg, k).as_string().unwrap_or_default();
    let run = RunConfig::from_toml(&text("run")).map_err(|e| anyhow::anyhow!("run file: {e}"))?;
    let mut files: HashMap<String, Blob> = HashMap::new();
    for f in Array::from(&get(&msg, "files")).iter() {
        let pair = Array::from(&f);
        let name = pair.get(0).as_string().unwrap_or_default();
        let bytes = Uint8Array::new(&pair.get(1)).to_vec();
        files.insert(name, Arc::new(bytes) as Blob);
    }
    let model = match get(&msg, "gguf").as_string() {
        Some(name) => {
            let bytes = files
                .remove(&name)
                .ok_or_else(|| anyhow::anyhow!("{name}: not sent"))?;
            ModelChoice::Gguf { name, bytes }
        }
        None => ModelChoice::Folder(Rc::new(MemFolder {
            name: text("folder"),
            files,
        })),
    };
    let job = Job {
        run,
        model: Rc::new(model),
        data: (text("data_name"), Rc::new(text("data_text"))),
    };
    let device = device(text("adapter")).await;
    run_job(job, device, &post, &|| STOP.get()).await
}
