#!/usr/bin/env bash
# The demo: fetch SmolLM2-135M-Instruct (Q4_1 GGUF) and the alpaca demo data if missing, train a LoRA
# adapter on it (assets/demo-lora.toml; extra arguments override its settings, e.g. --steps 10
# or --method oft), then generate with the trained adapter.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-deps.sh
bash scripts/fetch-assets.sh
cargo run --locked -- train --no-gui --config assets/demo-lora.toml "$@"
cargo run --locked -- generate --model assets/SmolLM2-135M-Instruct.Q4_1.gguf --chat \
  --adapter runs/demo-lora --prompt "Give three tips for staying healthy." --max-new-tokens 48
