#!/usr/bin/env bash
# Serve the browser bundle (web/dist/, built by web/build.sh) on http://localhost:PORT (default 8080).
# localhost counts as a secure context, which WebGPU requires.
set -euo pipefail
cd "$(dirname "$0")/dist"
port=${1:-8080}
echo "wgtune: http://localhost:$port/"
exec python3 -m http.server --bind 127.0.0.1 "$port"
