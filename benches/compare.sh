#!/usr/bin/env bash
# Side by side on this machine, back to back: `wgtune bench --methods` and the torch+peft peer
# (benches/peer/peft_bench.py) on the same shape and methods; prints one table of ratios
# (ours / peer) with both absolute figures and keeps both JSON files.
#
#   bash benches/compare.sh [--backend cpu|wgpu] [shape flags: --layers 8 --hidden 512 ...]
#
# Env: PYTHON (a python with torch, transformers, peft, bitsandbytes; default python3),
# THREADS (torch threads, default 2), OUT (default target/bench), METHODS (default all five).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
THREADS=${THREADS:-2}
OUT=${OUT:-target/bench}
METHODS=${METHODS:-lora,oft,oft-v1,qlora,qoft}
BACKEND=cpu
SHAPE=()
while [ $# -gt 0 ]; do
  case "$1" in
    --backend) BACKEND=$2; shift 2 ;;
    *) SHAPE+=("$1"); shift ;;
  esac
done
mkdir -p "$OUT"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/wgtune-target}
cargo build --locked --quiet
"$CARGO_TARGET_DIR/debug/wgtune" bench --backend "$BACKEND" --methods "$METHODS" "${SHAPE[@]}" \
  --json "$OUT/wgtune.json"
"$PYTHON" benches/peer/peft_bench.py --methods "$METHODS" --threads "$THREADS" "${SHAPE[@]}" \
  --json "$OUT/peer.json"
"$PYTHON" - "$OUT/wgtune.json" "$OUT/peer.json" <<'PY'
import json, sys
ours, peer = (json.load(open(p)) for p in sys.argv[1:3])
print(f"\nours: {ours['backend']} | peer: {peer['backend']} ({peer['version']})")
print(f"model {ours['model']}, batch {ours['batch']} x seq {ours['seq']}, median of {ours['iters']} steps\n")
p = {r["method"]: r for r in peer["results"]}
mib = lambda b: "-" if b is None else f"{b / 2**20:.0f}"
print(f"{'method':<8}{'ours tok/s':>11}{'peer tok/s':>11}{'ratio':>7}   {'ours ms fwd/bwd/opt':>22}   "
      f"{'peer ms fwd/bwd/opt':>22}   {'mem MiB ours/peer':>17}")
for r in ours["results"]:
    q = p.get(r["method"])
    ratio = f"{r['tokens_per_s'] / q['tokens_per_s']:.2f}" if q else "-"
    split = lambda x: f"{x['forward_ms']:.0f}/{x['backward_ms']:.0f}/{x['optimizer_ms']:.0f}"
    print(f"{r['method']:<8}{r['tokens_per_s']:>11.1f}{(q['tokens_per_s'] if q else float('nan')):>11.1f}{ratio:>7}   "
          f"{split(r):>22}   {(split(q) if q else '-'):>22}   "
          f"{mib(r['peak_mem_bytes']) + '/' + (mib(q['peak_mem_bytes']) if q else '-'):>17}")
PY
