#!/usr/bin/env bash
# Build the browser bundle into web/dist/: index.html, the wasm-bindgen JS glue and the .wasm.
# Installs what is missing first: Debian's wasm-capable Rust (rustc-web, cargo-web, rust-web-src,
# rust-web-llvm, lld-22), binaryen (wasm-opt) and wasm-bindgen-cli 0.2.130 (the version the crate
# pins). Release build with the `web` profile; std is rebuilt for wasm32 (-Zbuild-std).
#
# Environment: WASM_TARGET_DIR (cargo target dir, default $CARGO_TARGET_DIR/wasm, else target/wasm,
# so a machine that keeps the native build cache keeps this one too), JOBS (cargo -j),
# WASM_OPT=0 to skip wasm-opt, NICE (nice level, default 0), BUILD_DEADLINE (Unix time: stop
# cargo then and exit 124, keeping what it compiled for the next try).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
dist=$root/web/dist
target_dir=${WASM_TARGET_DIR:-${CARGO_TARGET_DIR:-$root/target}/wasm}
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo

missing=()
for p in rustc-web cargo-web rust-web-src rust-web-llvm lld-22 binaryen; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "build.sh: installing ${missing[*]}"
    $sudo apt-get update -qq
    # dpkg sometimes trips over the rust-web triggers on the first try.
    $sudo apt-get install -y --no-install-recommends "${missing[@]}" ||
        $sudo apt-get install -y --no-install-recommends "${missing[@]}"
fi

export PATH="$HOME/.cargo/bin:$PATH"
if [ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen 0.2.130" ]; then
    echo "build.sh: installing wasm-bindgen-cli 0.2.130"
    cargo install wasm-bindgen-cli --version 0.2.130 ${JOBS:+-j "$JOBS"}
fi

echo "build.sh: cargo (target dir $target_dir)"
start=$(date +%s)
limit=()
if [ -n "${BUILD_DEADLINE:-}" ]; then
    left=$((BUILD_DEADLINE - start))
    [ "$left" -gt 0 ] || { echo "build.sh: no time left before BUILD_DEADLINE"; exit 124; }
    # SIGINT lets cargo finish writing what it has compiled; exit status 124 on timeout.
    limit=(timeout --signal=INT --kill-after=60 "$left")
    echo "build.sh: cargo gets at most $left s (BUILD_DEADLINE)"
fi
# RUSTFLAGS would override .cargo/config.toml, so it is left alone (getrandom's cfg lives there).
RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=$target_dir \
    "${limit[@]}" nice -n "${NICE:-0}" /usr/bin/cargo rustc --lib --locked --profile web \
    --target wasm32-unknown-unknown -Zbuild-std=std,panic_abort --crate-type cdylib \
    ${JOBS:+-j "$JOBS"}
echo "build.sh: cargo took $(($(date +%s) - start)) s"
wasm=$target_dir/wasm32-unknown-unknown/web/wgtune.wasm
# Static constructors must run once (src/app/web.rs calls __wasm_call_ctors at start); otherwise
# wasm-ld wraps every export in them ("command_export") and each call from JS re-runs cubecl's
# constructors, which cost ~2 s of the page's thread per training step.
if grep -q command_export "$wasm"; then
    echo "build.sh: $wasm: wasm-ld wrapped the exports in __wasm_call_ctors (command-style module)" >&2
    exit 1
fi

rm -rf "$dist"
mkdir -p "$dist"
raw=$(stat -c %s "$wasm")
# wasm-opt runs before wasm-bindgen: Debian's binaryen (108) breaks the externref table that
# wasm-bindgen adds ("WebAssembly.Table.set(): Argument 1 is invalid for table").
input=$wasm
if [ "${WASM_OPT:-1}" != 0 ] && command -v wasm-opt >/dev/null; then
    start=$(date +%s)
    opt=$target_dir/wgtune.opt.wasm
    if wasm-opt -Oz --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext \
        --enable-mutable-globals --enable-reference-types --enable-multivalue \
        -o "$opt" "$wasm"; then
        input=$opt
        echo "build.sh: wasm-opt took $(($(date +%s) - start)) s"
    else
        echo "build.sh: wasm-opt failed; using the unoptimised .wasm"
    fi
fi
wasm-bindgen --target web --no-typescript --remove-name-section --remove-producers-section \
    --out-dir "$dist" --out-name wgtune "$input"
cp web/index.html web/worker.js web/subgroups.js "$dist/"
size=$(stat -c %s "$dist/wgtune_bg.wasm")
echo "build.sh: $dist/wgtune_bg.wasm: $((size / 1048576)) MiB ($size bytes; cargo's .wasm: $raw bytes)"
