#!/usr/bin/env bash
# Browser end-to-end test: build (or reuse) web/dist, serve it, drive Debian's headless Chromium
# (WebGPU on SwiftShader) with playwright-core: load the bundled demo, train LoRA and OFTv2 for
# STEPS steps each, then open a model's files and a data file through the page's file pickers and
# train QLoRA; download the adapters and run files, and compare the losses with the native CPU
# backend on the same run file (web/test.mjs has the assertions). Then time the same run file
# natively on wgpu (lavapipe on machines without a GPU) for the browser-vs-native note.
#
# Environment: STEPS (default 10), PORT (default 8090), REBUILD=1 to rebuild the bundle
# (BUILD_DEADLINE: see web/build.sh; a build cut off by it skips the test, saying so),
# BACKEND=cpu to train in the page on burn's CPU backend instead of WebGPU,
# WGTUNE_BIN (native wgtune; default: cargo build), OUT (default target/web-test).
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${STEPS:-10}
port=${PORT:-8090}
out=${OUT:-target/web-test}
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo

if [ ! -x /usr/lib/chromium/chromium ] || ! command -v node >/dev/null; then
    $sudo apt-get update -qq
    $sudo apt-get install -y --no-install-recommends chromium nodejs
fi
if [ ! -d web/node_modules/playwright-core ]; then
    (cd web && npm install --no-save --no-package-lock --no-audit --no-fund playwright-core@1.65.1)
fi
if [ -n "${REBUILD:-}" ] || [ ! -f web/dist/wgtune_bg.wasm ]; then
    rc=0
    web/build.sh || rc=$?
    if [ "$rc" = 124 ]; then
        # Only with BUILD_DEADLINE (scripts/test.sh under CI's time budget): a cold wasm build
        # (~55 min on 2 cores) did not fit. What cargo compiled is kept, so the next run finishes it.
        echo "web/test.sh: SKIPPED: the wasm build did not finish before BUILD_DEADLINE (cold build cache)"
        exit 0
    fi
    [ "$rc" = 0 ] || exit "$rc"
fi
bin=${WGTUNE_BIN:-}
if [ -z "$bin" ]; then
    cargo build --locked --bin wgtune
    bin=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/wgtune
fi

bash scripts/fetch-assets.sh   # the GGUF and alpaca files the picker check opens
rm -rf "$out"
mkdir -p "$out"
python3 -m http.server --bind 127.0.0.1 --directory web/dist "$port" >"$out/http.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do
    curl -sf "http://127.0.0.1:$port/" >/dev/null && break
    sleep 0.2
done

node web/test.mjs "http://localhost:$port/index.html" "$out" "$steps" "$bin"

# Native wgpu on the same run file (the LoRA one the browser wrote), for the timing note.
"$bin" train --no-gui --config "$out/lora/run.toml" --backend wgpu --out "$out/native-wgpu" \
    >"$out/native-wgpu.txt" 2>&1 || echo "native wgpu run failed (see $out/native-wgpu.txt)"
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
rep = json.load(open(f"{out}/report.json"))
lora = rep["methods"]["lora"]
tokens = None
try:
    m = [json.loads(l) for l in open(f"{out}/native-wgpu/metrics.jsonl") if '"loss"' in l]
    st = json.load(open(f"{out}/lora/status.json"))
    # Same batches in both runs: the browser's tokens per step over native tokens/s.
    ms = [1000 * t / v["tokens_per_s"] for t, v in zip(st["tokens"], m)]
    native = sum(ms[1:]) / max(len(ms) - 1, 1)
except (OSError, KeyError, ZeroDivisionError):
    native = None
import os
size = os.path.getsize("web/dist/wgtune_bg.wasm")
print(f"bundle: web/dist/wgtune_bg.wasm {size / 2**20:.1f} MiB")
where = "CPU backend in the page" if rep["backend"] == "cpu" else f"WebGPU: {rep['adapter']}"
ms = {k: v["browser_mean_step_ms"] for k, v in rep["methods"].items()}
print(f"browser ({where}): LoRA {ms['lora']:.0f} ms/step, OFTv2 {ms['oft']:.0f} ms/step, "
      f"QLoRA on picked files {ms['picked-qlora']:.0f} ms/step (first step left out)")
for k, v in rep["methods"].items():
    t = v["responsiveness"]["timer"]
    print(f"page thread while training {k}: event-loop gap median {t['median_ms']:.0f} ms, "
          f"max {t['max_ms']:.0f} ms over {t['n']} ticks (the longest: loading the model and the first step)")
if native is not None:
    print(f"native wgpu, same run file: LoRA {native:.0f} ms/step (first step left out)")
PY
echo "web/test.sh: all checks passed"
