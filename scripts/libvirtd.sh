#!/usr/bin/env bash
# Starts virtlogd and libvirtd (QEMU driver) by hand, for machines without
# systemd. Idempotent: does nothing when the daemon already answers.
# Usage: scripts/libvirtd.sh [start|stop|status]
set -euo pipefail

URI="qemu:///system"
STATE_DIR="${VMDESK_LIBVIRT_STATE:-${XDG_RUNTIME_DIR:-/tmp}/vmdesk-libvirt}"
HERE="$(cd "$(dirname "$0")" && pwd)"

answers() { timeout 5 virsh -q -c "$URI" version >/dev/null 2>&1; }

start() {
  if answers; then echo "libvirtd: already running ($URI)"; return 0; fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "libvirtd: starting the system daemon needs root; run 'sudo $0' or use test:///default" >&2
    return 1
  fi
  command -v libvirtd >/dev/null || { echo "libvirtd: not installed (run scripts/setup-system.sh)" >&2; return 1; }
  mkdir -p "$STATE_DIR" /run/libvirt /var/lib/libvirt/qemu /var/cache/libvirt/qemu
  cat > "$STATE_DIR/virtlogd.conf" <<CONF
log_outputs="3:file:$STATE_DIR/virtlogd.log"
CONF
  cat > "$STATE_DIR/libvirtd.conf" <<CONF
log_outputs="3:file:$STATE_DIR/libvirtd.log"
unix_sock_group="root"
unix_sock_rw_perms="0770"
auth_unix_rw="none"
auth_unix_ro="none"
CONF
  if ! pgrep -x virtlogd >/dev/null; then
    virtlogd -d -f "$STATE_DIR/virtlogd.conf" -p "$STATE_DIR/virtlogd.pid"
  fi
  if ! pgrep -x libvirtd >/dev/null; then
    # Under a child subreaper that reaps at once, a destroyed QEMU does not
    # linger as a zombie until PID 1 gets to it (destroy: ~2 s -> ~0.25 s).
    setsid python3 "$HERE/subreaper.py" libvirtd -f "$STATE_DIR/libvirtd.conf" -p "$STATE_DIR/libvirtd.pid" \
      >"$STATE_DIR/libvirtd.out" 2>&1 < /dev/null &
  fi
  for _ in $(seq 1 100); do
    if answers; then echo "libvirtd: ready ($URI)"; return 0; fi
    sleep 0.1
  done
  echo "libvirtd: did not come up; see $STATE_DIR/libvirtd.log" >&2
  tail -n 20 "$STATE_DIR/libvirtd.out" "$STATE_DIR/libvirtd.log" >&2 2>/dev/null || true
  return 1
}

stop() {
  pkill -x libvirtd 2>/dev/null || true
  pkill -x virtlogd 2>/dev/null || true
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) if answers; then echo running; else echo stopped; exit 1; fi ;;
  *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac
