#!/usr/bin/env bash
# The test command: system deps if missing, demo assets if missing, then the whole test suite
# (CPU backend and wgpu over lavapipe; fixtures from transformers are committed, no torch needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-deps.sh
bash scripts/fetch-assets.sh
export CUBECL_AUTOTUNE_LEVEL=minimal
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
cargo test --locked "$@"
