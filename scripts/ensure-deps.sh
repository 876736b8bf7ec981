#!/usr/bin/env bash
# System packages the tests need: Mesa's software Vulkan driver (lavapipe) so every wgpu/WGSL path
# runs without a GPU, the Vulkan loader, and unzip for the asset fetcher. Installs only what is missing.
set -euo pipefail
need=()
for p in mesa-vulkan-drivers libvulkan1 unzip; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
