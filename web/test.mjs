// Drives the browser bundle in Debian's headless Chromium (WebGPU on SwiftShader) and checks it
// against the native CPU backend. Usage (web/test.sh runs it):
//   node web/test.mjs URL OUT_DIR STEPS NATIVE_WGTUNE_BIN
// LoRA and OFTv2 on the bundled demo, then QLoRA on a model and data opened through the page's
// file pickers: train STEPS steps, download the adapter and the run file, and assert: a WebGPU
// adapter, STEPS steps, a falling loss, peft-format safetensors with the right keys, and the same
// losses as `wgtune train --no-gui --config run.toml --backend cpu` within 1e-3. Writes
// OUT_DIR/report.json with the step times.
import { chromium } from "playwright-core";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";

const [url, outDir, stepsArg, nativeBin] = process.argv.slice(2);
const steps = Number(stepsArg || 10);
// BACKEND=cpu trains on the page's CPU backend (burn flex in wasm) instead of WebGPU.
const backend = process.env.BACKEND || "webgpu";
const TOL = 1e-3;
fs.mkdirSync(outDir, { recursive: true });
const consoleLog = fs.createWriteStream(path.join(outDir, "console.log"));

// A GGUF header whose llama.block_count claims 2^31 layers (one metadata key, no tensors).
function hugeLayerGguf() {
  const parts = [Buffer.from("GGUF"), u32(3), u64(0n), u64(2n)];
  const str = (s) => [u64(BigInt(Buffer.byteLength(s))), Buffer.from(s)];
  parts.push(...str("general.architecture"), u32(8), ...str("llama"));
  parts.push(...str("llama.block_count"), u32(4), u32(2 ** 31));
  return Buffer.concat(parts);
}
function u32(x) { const b = Buffer.alloc(4); b.writeUInt32LE(x); return b; }
function u64(x) { const b = Buffer.alloc(8); b.writeBigUInt64LE(x); return b; }

function check(cond, msg) {
  if (!cond) {
    console.error(`FAIL: ${msg}`);
    process.exitCode = 1;
    throw new Error(msg);
  }
  console.log(`ok: ${msg}`);
}

function safetensorsKeys(file) {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString("utf8"));
  for (const [k, v] of Object.entries(header)) {
    if (k === "__metadata__") continue;
    const [a, b] = v.data_offsets;
    if (!(b <= buf.length - 8 - n && a <= b)) throw new Error(`${file}: ${k}: bad offsets`);
  }
  return Object.keys(header).filter((k) => k !== "__metadata__");
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/lib/chromium/chromium",
  headless: true,
  args: [
    "--enable-unsafe-webgpu",
    "--no-sandbox",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const report = { url, steps, backend, methods: {} };
try {
  const context = await browser.newContext({ acceptDownloads: true });
  const page = await context.newPage();
  page.on("console", (m) => consoleLog.write(`[${m.type()}] ${m.text()}\n`));
  page.on("pageerror", (e) => consoleLog.write(`[pageerror] ${e}\n`));
  const t0 = Date.now();
  await page.goto(url);
  await page.waitForFunction(
    () => window.wgtune_status && ["ready", "error"].includes(window.wgtune_status().phase),
    null,
    { timeout: 300_000, polling: 250 },
  );
  report.startup_s = (Date.now() - t0) / 1000;
  let st = await page.evaluate(() => window.wgtune_status());
  console.log(`page ready in ${report.startup_s}s: ${st.backend}`);
  check(st.webgpu === true && st.adapter.length > 0, `WebGPU adapter obtained (${st.adapter})`);
  report.adapter = st.adapter;

  // Train `method` on what the page has loaded, download, and compare with the native CPU
  // backend on the downloaded run file (`nativeArgs` point it at the same model and data).
  async function trainAndCheck(name, method, nativeArgs) {
    const dir = path.join(outDir, name);
    fs.mkdirSync(dir, { recursive: true });
    // While training: the page thread's event-loop gaps (a 20 ms timer: how long the thread is
    // ever busy, i.e. how long a click would wait) and the animation-frame gaps (which also wait
    // for the GPU process, where SwiftShader runs both the training and the UI's WebGL).
    await page.evaluate(() => {
      window.__gaps = { timer: [], frame: [] };
      window.__probeOn = true;
      let lastT = performance.now();
      const timer = () => {
        const t = performance.now();
        window.__gaps.timer.push(t - lastT);
        lastT = t;
        if (window.__probeOn) setTimeout(timer, 20);
      };
      setTimeout(timer, 20);
      let lastF = performance.now();
      const frame = (t) => {
        window.__gaps.frame.push(t - lastF);
        lastF = t;
        if (window.__probeOn) requestAnimationFrame(frame);
      };
      requestAnimationFrame(frame);
    });
    const started = await page.evaluate(
      ([m, n, b]) => window.wgtune.wgtune_train(m, n, b),
      [method, steps, backend],
    );
    check(started, `${name}: ${method} training started on ${backend}`);
    await page.waitForFunction(
      () => ["done", "error"].includes(window.wgtune_status().phase),
      null,
      { timeout: 600_000, polling: 250 },
    );
    st = await page.evaluate(() => window.wgtune_status());
    const gaps = await page.evaluate(() => { window.__probeOn = false; return window.__gaps; });
    const stats = (g) => {
      const v = [...g].sort((a, b) => a - b);
      const at = (q) => v[Math.min(v.length - 1, Math.floor(v.length * q))] ?? 0;
      return { n: v.length, median_ms: at(0.5), p99_ms: at(0.99), max_ms: at(1) };
    };
    const responsiveness = { timer: stats(gaps.timer), frame: stats(gaps.frame) };
    for (const [k, v] of Object.entries(responsiveness)) {
      console.log(`${name}: ${k} gaps while training: ${v.n}, median ${v.median_ms.toFixed(0)} ms, p99 ${v.p99_ms.toFixed(0)} ms, max ${v.max_ms.toFixed(0)} ms`);
    }
    fs.writeFileSync(path.join(dir, "status.json"), JSON.stringify(st, null, 1));
    check(st.phase === "done", `${name}: finished (${st.error ?? "no error"})`);
    check(st.step === steps && st.losses.length === steps, `${name}: ${steps} steps advanced`);
    const [first, last] = [st.losses[0], st.losses[st.losses.length - 1]];
    check(last < first, `${name}: loss decreased (${first.toFixed(4)} -> ${last.toFixed(4)})`);

    // The page's downloads: adapter (two peft files) and the run file.
    const want = { adapter: ["adapter_config.json", "adapter_model.safetensors"], run: ["run.toml"] };
    for (const [what, names] of Object.entries(want)) {
      const got = [];
      const onDownload = (d) => got.push(d);
      page.on("download", onDownload);
      check(await page.evaluate((w) => window.wgtune.wgtune_download(w), what), `${name}: download ${what}`);
      const deadline = Date.now() + 30_000;
      while (got.length < names.length && Date.now() < deadline) await page.waitForTimeout(100);
      page.off("download", onDownload);
      for (const d of got) await d.saveAs(path.join(dir, d.suggestedFilename()));
      check(
        names.every((n) => fs.existsSync(path.join(dir, n))),
        `${name}: downloaded ${names.join(", ")}`,
      );
    }
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, "adapter_config.json"), "utf8"));
    const oft = method.endsWith("oft");
    const peftType = oft ? "OFT" : "LORA";
    check(cfg.peft_type === peftType, `${name}: adapter_config.json peft_type ${cfg.peft_type}`);
    const keys = safetensorsKeys(path.join(dir, "adapter_model.safetensors"));
    const suffix = oft ? /\.oft_R\.weight$/ : /\.(lora_A|lora_B)\.weight$/;
    const keyRe = /^base_model\.model\.model\.layers\.\d+\.(self_attn|mlp)\.[a-z_]+_proj\./;
    check(
      keys.length > 0 && keys.every((k) => keyRe.test(k) && suffix.test(k)),
      `${name}: ${keys.length} peft tensors (${keys[0]} …)`,
    );

    // A LoRA also downloads as llama.cpp's GGUF adapter: byte-identical to what the native
    // `wgtune export --format gguf` writes from the downloaded peft files and the same base.
    const baseModel = nativeArgs.includes("--model") ? nativeArgs[nativeArgs.indexOf("--model") + 1] : "tests/fixtures/tiny_gqa";
    if (!oft) {
      const got = [];
      const onDownload = (d) => got.push(d);
      page.on("download", onDownload);
      check(await page.evaluate(() => window.wgtune.wgtune_download("adapter-gguf")), `${name}: download adapter-gguf`);
      const deadline = Date.now() + 30_000;
      while (got.length < 1 && Date.now() < deadline) await page.waitForTimeout(100);
      page.off("download", onDownload);
      for (const d of got) await d.saveAs(path.join(dir, d.suggestedFilename()));
      // The CLI names the adapter after its folder (`adapter` → "Adapter", the browser's name).
      const peftDir = path.join(dir, "adapter");
      fs.mkdirSync(peftDir, { recursive: true });
      for (const f of ["adapter_config.json", "adapter_model.safetensors"]) fs.copyFileSync(path.join(dir, f), path.join(peftDir, f));
      const nativeGguf = path.join(dir, "native-adapter.gguf");
      execFileSync(nativeBin, ["export", "--adapter", peftDir, "--base", baseModel, "--format", "gguf", "--out", nativeGguf],
        { stdio: ["ignore", "ignore", "inherit"] });
      const a = fs.readFileSync(path.join(dir, "adapter.gguf"));
      check(a.length > 0 && a.equals(fs.readFileSync(nativeGguf)),
        `${name}: adapter.gguf (${a.length} bytes) is byte-identical to the native export`);
    } else {
      check(!(await page.evaluate(() => window.wgtune.wgtune_download("adapter-gguf"))), `${name}: no GGUF adapter for OFT`);
    }

    // The same run file on the native CPU backend.
    const nativeOut = path.join(dir, "native-cpu");
    execFileSync(nativeBin, [
      "train", "--no-gui", "--config", path.join(dir, "run.toml"),
      "--backend", "cpu", "--out", nativeOut, ...nativeArgs,
    ], { stdio: ["ignore", "ignore", "inherit"] });
    const native = fs.readFileSync(path.join(nativeOut, "metrics.jsonl"), "utf8")
      .trim().split("\n").map((l) => JSON.parse(l)).filter((v) => v.loss !== undefined);
    check(native.length === steps, `${name}: native run has ${native.length} steps`);
    const diffs = native.map((v, i) => Math.abs(v.loss - st.losses[i]));
    const maxDiff = Math.max(...diffs);
    check(maxDiff <= TOL, `${name}: browser losses equal native cpu within ${TOL} (max diff ${maxDiff.toExponential(2)})`);
    report.methods[name] = {
      method,
      losses: st.losses,
      native_cpu_losses: native.map((v) => v.loss),
      max_abs_diff: maxDiff,
      browser_step_ms: st.step_ms,
      browser_mean_step_ms: st.mean_step_ms,
      responsiveness,
    };
  }

  // The bundled tiny demo (loaded by wgtune_train when nothing is loaded yet).
  await trainAndCheck("lora", "lora", []);
  await trainAndCheck("oft", "oft", []);

  // Stop: a long run stopped after a few steps ends after its current step, with the adapter as
  // it stands ready to download.
  check(await page.evaluate(([b]) => window.wgtune.wgtune_train("lora", 500, b), [backend]), "stop: a 500-step run started");
  await page.waitForFunction(() => window.wgtune_status().step >= 2, null, { timeout: 300_000, polling: 100 });
  await page.evaluate(() => window.wgtune.wgtune_stop());
  await page.waitForFunction(
    () => ["done", "error"].includes(window.wgtune_status().phase),
    null,
    { timeout: 300_000, polling: 100 },
  );
  st = await page.evaluate(() => window.wgtune_status());
  check(st.phase === "done" && st.step >= 2 && st.step < 500 && st.adapter_ready,
    `stop: ended after step ${st.step} of 500 with the adapter ready`);

  // The page's real file pickers: an HF folder's files (sharded safetensors + index, tied
  // embeddings) and a JSONL file, then QLoRA (NF4 base on WebGPU). Browsers open a file picker
  // only during a user gesture, hence the click on the page first.
  const fixture = "tests/fixtures/tiny_tied_llama3";
  const modelFiles = fs.readdirSync(fixture)
    .filter((f) => f.startsWith("model") || f.endsWith("config.json"))
    .map((f) => path.join(fixture, f));
  async function pick(what, files, ready, arg = null) {
    await page.mouse.click(640, 12);
    const [chooser] = await Promise.all([
      page.waitForEvent("filechooser", { timeout: 30_000 }),
      page.evaluate((w) => window.wgtune.wgtune_pick(w), what),
    ]);
    const t = Date.now();
    await chooser.setFiles(files);
    await page.waitForFunction(ready, arg, { timeout: 120_000, polling: 100 });
    // Reading the files into wasm memory and summarising them (on the page's thread).
    report.picks = [...(report.picks || []), { what, files: files.map((f) => path.basename(f)), ms: Date.now() - t }];
    return page.evaluate(() => window.wgtune_status());
  }
  st = await pick("model", modelFiles, () => window.wgtune_status().model === "picked-model");
  check(st.model_layers === 2 && st.model_format === "hf-safetensors",
    `picked model: ${modelFiles.length} files read (${st.model}, ${st.model_format}, ${st.model_layers} layers)`);
  st = await pick("data", [path.join(fixture, "data.jsonl")], () => window.wgtune_status().data === "data.jsonl");
  check(st.data_examples === 2, `picked data: ${st.data}, ${st.data_examples} examples`);
  await trainAndCheck("picked-qlora", "qlora", ["--model", fixture, "--data", path.join(fixture, "data.jsonl")]);
  // A GGUF file (the demo's SmolLM2 Q4_1, 98 MB) and a JSON array of alpaca records through the
  // same pickers: the model summary and the data summary tokenized with the GGUF's own tokenizer
  // and chat template. No training (135M parameters on SwiftShader would take minutes a step).
  const gguf = "assets/SmolLM2-135M-Instruct.Q4_1.gguf";
  st = await pick("model", [gguf], () => window.wgtune_status().model === "SmolLM2-135M-Instruct.Q4_1.gguf");
  check(st.model_layers === 30 && st.model_format.startsWith("gguf") && st.model_tokenizer,
    `picked GGUF: ${st.model}, ${st.model_format}, ${st.model_layers} layers, tokenizer ${st.model_tokenizer}`);
  st = await pick("data", ["assets/alpaca_en_demo.json"], () => window.wgtune_status().data === "alpaca_en_demo.json");
  check(st.data_examples > 900, `picked alpaca data: ${st.data_examples} examples tokenized in the page`);
  // Gemma 3 270M Q4_K_M (253 MB of Q4_K, Q5_0, Q6_K and Q8_0 blocks, a 262 144-token SentencePiece
  // vocabulary) through the same picker: the page reads it, builds its tokenizer and summarises it.
  const gemma = "assets/gemma-3-270m-q4_k_m.gguf";
  st = await pick("model", [gemma], () => window.wgtune_status().model === "gemma-3-270m-q4_k_m.gguf");
  check(st.model_layers === 18 && st.model_format.startsWith("gguf") && st.model_tokenizer,
    `picked Gemma 3 GGUF: ${st.model}, ${st.model_format}, ${st.model_layers} layers, tokenizer ${st.model_tokenizer}`);
  // Hostile GGUFs picked in the page: a truncated copy of the demo model and a header claiming
  // 2^31 layers. Each gives one error line naming the file, the page stays responsive and keeps
  // the model it had.
  const hostileDir = fs.mkdtempSync(path.join(outDir, "hostile-"));
  const cut = path.join(hostileDir, "cut.gguf");
  fs.writeFileSync(cut, fs.readFileSync(gguf).subarray(0, 5000));
  const layers = path.join(hostileDir, "layers.gguf");
  fs.writeFileSync(layers, hugeLayerGguf());
  for (const f of [cut, layers]) {
    const name = path.basename(f);
    st = await pick("model", [f], (n) => (window.wgtune_status().last_log || "").includes(n), name);
    check(st.last_log.startsWith("error:") && st.model === "gemma-3-270m-q4_k_m.gguf",
      `hostile ${name}: ${st.last_log}`);
  }
  // The page as it looks after the runs (the shared settings panels and curves).
  await page.screenshot({ path: path.join(outDir, "page.png") });

  // A browser without WebGPU (navigator.gpu removed before the app starts, as in browsers that do
  // not ship it): the page must say so and how to enable it, and fall back to the CPU backend.
  const plain = await browser.newContext();
  await plain.addInitScript(() => { delete Navigator.prototype.gpu; });
  const page2 = await plain.newPage();
  await page2.goto(url);
  await page2.waitForFunction(
    () => window.wgtune_status && ["ready", "error"].includes(window.wgtune_status().phase),
    null,
    { timeout: 120_000, polling: 250 },
  );
  const st2 = await page2.evaluate(() => window.wgtune_status());
  const banner = await page2.evaluate(() => {
    const b = document.getElementById("wgtune_banner");
    return b && getComputedStyle(b).display !== "none" ? b.textContent : "";
  });
  check(st2.phase === "ready" && st2.webgpu === false && st2.backend.startsWith("CPU"),
    `without WebGPU: ready on ${st2.backend}`);
  check(/WebGPU is not available/.test(banner) && /enable-unsafe-webgpu/.test(banner),
    `without WebGPU: the page says how to enable it ("${banner.slice(0, 60)}…")`);
  await plain.close();
} finally {
  fs.writeFileSync(path.join(outDir, "report.json"), JSON.stringify(report, null, 1));
  await browser.close();
  consoleLog.end();
}
