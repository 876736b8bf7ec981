#!/usr/bin/env bash
# The demo: fetch the demo models (SmolLM2-135M-Instruct Q4_1, Gemma 3 270M Q4_K_M) and the alpaca
# demo data if missing, train an adapter with a run file (default assets/demo-lora.toml: LoRA on
# SmolLM2; `bash scripts/demo.sh assets/demo-gemma3.toml` is QLoRA on Gemma 3 270M's own K-quant
# base), then generate with the trained adapter. Extra arguments override the run file's settings,
# e.g. --steps 10 or --method oft.
set -euo pipefail
cd "$(dirname "$0")/.."
config=assets/demo-lora.toml
if [[ "${1:-}" == *.toml ]]; then
  config=$1
  shift
fi
bash scripts/ensure-deps.sh
bash scripts/fetch-assets.sh
setting() { sed -n "s/^$1 = \"\(.*\)\"/\1/p" "$config"; }
cargo run --locked -- train --no-gui --config "$config" "$@"
# With the model's chat template when it has one (the Gemma 3 270M base GGUF has none: plain prompt,
# as the run formatted its alpaca records).
chat=()
if cargo run --locked -q -- inspect --model "$(setting model)" | grep -q "template present"; then
  chat=(--chat)
fi
cargo run --locked -- generate --model "$(setting model)" "${chat[@]}" \
  --adapter "$(setting out)" --prompt "Give three tips for staying healthy." --max-new-tokens 48
