#!/usr/bin/env bash
# Makes a fresh Debian 12/13 machine ready: Mesa 25 lavapipe (a CPU Vulkan driver Dawn can use)
# and the npm dependencies. Idempotent; quiet and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "[setup] $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Dawn needs Mesa >= 25 (Debian 12's own 22.x has no usable Vulkan 1.1 features for it).
mesa_ok() {
  local v
  v=$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true)
  [ -n "$v" ] && dpkg --compare-versions "$v" ge 25 && dpkg-query -W libvulkan1 >/dev/null 2>&1
}

if ! mesa_ok; then
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  export DEBIAN_FRONTEND=noninteractive
  if [ "$codename" = bookworm ]; then
    list=/etc/apt/sources.list.d/bookworm-backports.list
    [ -f "$list" ] || echo "deb http://deb.debian.org/debian bookworm-backports main" | as_root tee "$list" >/dev/null
    log "installing Mesa 25 lavapipe from bookworm-backports"
    as_root apt-get update -qq
    as_root apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers libvulkan1 >/dev/null
  else
    log "installing Mesa lavapipe"
    as_root apt-get update -qq
    as_root apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
  fi
  mesa_ok || { log "Mesa >= 25 is still missing after install"; exit 1; }
fi

# npm ci only when the lockfile changed since the last install.
stamp=node_modules/.setup-stamp
if [ ! -f "$stamp" ] || [ package-lock.json -nt "$stamp" ] || [ package.json -nt "$stamp" ]; then
  log "installing npm dependencies"
  if [ -f package-lock.json ]; then npm ci --no-audit --no-fund --loglevel=error; else npm install --no-audit --no-fund --loglevel=error; fi
  touch "$stamp"
fi
