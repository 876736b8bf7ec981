#!/usr/bin/env bash
# System packages the tests need: Mesa's software Vulkan driver (lavapipe) so every wgpu/WGSL path
# runs without a GPU, the Vulkan loader, unzip for the asset fetcher, and an X server in memory (Xvfb)
# plus the X11 client libraries winit loads at run time, so the desktop app's window test can open a
# real window and screenshot it. Installs only what is missing.
set -euo pipefail
need=()
for p in mesa-vulkan-drivers libvulkan1 unzip xvfb xauth libx11-6 libx11-xcb1 libxcursor1 libxi6 \
  libxrandr2 libxkbcommon0 libxkbcommon-x11-0; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
