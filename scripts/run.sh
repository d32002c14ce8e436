#!/usr/bin/env bash
# Opens the vmdesk window. On a data dir without hosts, adds a default host
# (the local QEMU daemon: the system one when it answers, else this user's
# session daemon) and a small demo pool, so the window has something to show.
# Usage: scripts/run.sh [--no-window]   (--no-window: set up, then exit)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/debug/vmdesk

# The local host's URI: qemu:///system when that daemon answers (as root it is
# started here first), else qemu:///session, a daemon of this user's own that
# libvirt starts on demand. Never test:///default, whose machines die with
# each process.
local_uri() {
  if [ "$(id -u)" -eq 0 ]; then bash scripts/libvirtd.sh start >/dev/null 2>&1 || true; fi
  if timeout 10 virsh -q -c qemu:///system version >/dev/null 2>&1; then
    echo "qemu:///system"
  else
    echo "qemu:///session"
  fi
}

# The small Linux of the catalog, built by `make os-image`, with the least
# memory it boots with, on the form's 32 MB steps: measured on QEMU (pc
# machine, no KVM) since it carries dropbear and QEMU's guest agent (an
# initramfs of 11 MB), 96 MB runs out of memory unpacking it and 128 MB
# boots to its shell, its network and its SSH server.
TINY_MIN_RAM_MB=128
if [ -f target/os/tiny-linux.qcow2 ] && ! $BIN --json os list | grep -q '"tiny-linux"'; then
  $BIN os import tiny-linux target/os/tiny-linux.qcow2 --min-ram-mb "$TINY_MIN_RAM_MB" --min-disk-gb 1
fi
# A tiny-linux imported before the catalog had minimums says 64 MB: raise it.
tiny_min="$($BIN os list | awk '$1 == "tiny-linux" { print $4 }')"
if [ -n "$tiny_min" ] && [ "$tiny_min" -lt "$TINY_MIN_RAM_MB" ]; then
  $BIN os minimum tiny-linux --min-ram-mb "$TINY_MIN_RAM_MB"
fi

if [ -z "$($BIN --json host list | tr -d '[:space:]' | sed 's/^\[\]$//')" ]; then
  uri="$(local_uri)"
  echo "first run: adding host 'local' ($uri) and a demo pool"
  $BIN host add local --uri "$uri"
  $BIN project create demo
  $BIN workspace create team-a --project demo
  # The demo VMs boot to a shell when tiny-linux is there (blank boots to
  # firmware only).
  if $BIN --json os list | grep -q '"tiny-linux"'; then
    demo_os=(--os tiny-linux --ram-mb "$TINY_MIN_RAM_MB")
  else
    demo_os=(--ram-mb 64)
  fi
  for i in 1 2 3; do
    $BIN vm add "demo-$i" --pool demo --host local "${demo_os[@]}" --disk-gb 1 --cpus 1 >/dev/null
  done
  $BIN credits grant admin 1000 --reason "demo credits" >/dev/null
else
  # The host may need its daemon after a reboot.
  bash scripts/libvirtd.sh start >/dev/null 2>&1 || true
fi

if [ "${1:-}" = "--no-window" ]; then exit 0; fi
if [ -z "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
  echo "no display: running under Xvfb (xvfb-run); the window is not visible here"
  exec xvfb-run -a "$BIN"
fi
exec "$BIN"
