// The training worker: the same wasm module as the page, driven by messages from it
// (src/app/web/worker.rs). Messages that arrive while the module loads are kept and replayed.
import "./subgroups.js";
import init, { wgtune_worker_message } from "./wgtune.js";

const early = [];
self.onmessage = (e) => early.push(e.data);
await init();
self.onmessage = (e) => wgtune_worker_message(e.data);
for (const m of early) wgtune_worker_message(m);
