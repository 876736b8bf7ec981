#!/usr/bin/env bash
# The demo: fetch SmolLM2-135M-Instruct (Q4_1 GGUF) and the demo data if missing, then run the
# main job on it. Extra arguments are passed to `wgtune generate`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-assets.sh
cargo run --locked -- generate --model assets/SmolLM2-135M-Instruct.Q4_1.gguf \
  --prompt "Once upon a time" --max-new-tokens 48 "$@"
