#!/usr/bin/env bash
# The test command: system deps if missing, demo assets if missing, then the whole test suite
# (CPU backend and wgpu over lavapipe; fixtures from transformers are committed, no torch needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-deps.sh
bash scripts/fetch-assets.sh
export CUBECL_AUTOTUNE_LEVEL=minimal
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
start=$(date +%s)
cargo test --locked "$@"
# The browser end-to-end test (web/test.sh: rebuild the wasm bundle, train LoRA and OFTv2 in
# headless Chromium on WebGPU, compare with the native CPU backend). Skipped when cargo test got a
# filter or WGTUNE_WEB_TEST=0. The wasm build must end WGTUNE_TEST_BUDGET_MIN (default 85, CI
# allows 90) minutes after this script started, less 15 for the browser run itself; a cold build
# that does not fit skips the test loudly and keeps its cache for the next run.
if [ $# -eq 0 ] && [ "${WGTUNE_WEB_TEST:-1}" != 0 ]; then
    REBUILD=1 STEPS="${WEB_STEPS:-4}" \
        BUILD_DEADLINE=$((start + ${WGTUNE_TEST_BUDGET_MIN:-85} * 60 - 15 * 60)) bash web/test.sh
fi
