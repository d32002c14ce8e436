#!/usr/bin/env bash
# Opens the vmdesk window. On a data dir without hosts, adds a default host
# (the local QEMU daemon when it can run, else libvirt's test driver) and a
# small demo pool, so the window has something to show.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/debug/vmdesk

if [ -z "$($BIN --json host list | tr -d '[:space:]' | sed 's/^\[\]$//')" ]; then
  if bash scripts/libvirtd.sh start >/dev/null 2>&1; then uri="qemu:///system"; else uri="test:///default"; fi
  echo "first run: adding host 'local' ($uri) and a demo pool"
  $BIN host add local --uri "$uri"
  $BIN project create demo
  $BIN workspace create team-a --project demo
  for i in 1 2 3; do
    $BIN vm add "demo-$i" --pool demo --host local --ram-mb 64 --disk-gb 1 --cpus 1 >/dev/null
  done
  $BIN credits grant admin 1000 --reason "demo credits" >/dev/null
else
  # The host may need its daemon after a reboot.
  bash scripts/libvirtd.sh start >/dev/null 2>&1 || true
fi
# The small Linux of the catalog, built by `make os-image`.
if [ -f target/os/tiny-linux.qcow2 ] && ! $BIN --json os list | grep -q '"tiny-linux"'; then
  $BIN os import tiny-linux target/os/tiny-linux.qcow2
fi

if [ -z "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
  echo "no display: running under Xvfb (xvfb-run); the window is not visible here"
  exec xvfb-run -a "$BIN"
fi
exec "$BIN"
