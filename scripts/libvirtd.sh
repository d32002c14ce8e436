#!/usr/bin/env bash
# Starts virtlogd and libvirtd (QEMU driver) by hand, for machines without
# systemd. Idempotent: does nothing when the daemon already answers.
# Usage: scripts/libvirtd.sh [start|stop|status]
#
# Its own files (configs, logs, pid files) live in a root-owned 0700 state
# directory, /run/vmdesk-libvirt unless VMDESK_LIBVIRT_STATE names another. A
# state directory that is a symlink, not owned by root, or writable by group
# or others is refused: root writes configs there and starts daemons on them.
# On start it also makes every directory the daemons and vmdesk's domains use,
# since a fresh machine has none of them.
set -euo pipefail

URI="qemu:///system"
STATE_DIR="${VMDESK_LIBVIRT_STATE:-/run/vmdesk-libvirt}"
HERE="$(cd "$(dirname "$0")" && pwd)"

# What libvirtd, virtlogd and vmdesk's domains and storage pool use (a domain's
# serial log is /var/log/libvirt/qemu/<machine>-serial.log; the pool `vmdesk`
# is /var/lib/libvirt/images/vmdesk, see crates/libvirt).
LIBVIRT_DIRS=(
  /run/libvirt
  /run/libvirt/qemu
  /var/log/libvirt
  /var/log/libvirt/qemu
  /var/lib/libvirt
  /var/lib/libvirt/qemu
  /var/lib/libvirt/images
  /var/cache/libvirt
  /var/cache/libvirt/qemu
)

answers() { timeout 5 virsh -q -c "$URI" version >/dev/null 2>&1; }

refuse() {
  echo "libvirtd: refusing the state directory $STATE_DIR: $1" >&2
  exit 1
}

# Makes (or checks) the state directory: a real directory, owned by root,
# not writable by group or others.
state_dir() {
  case "$STATE_DIR" in
    /*) ;;
    *) refuse "it must be an absolute path" ;;
  esac
  if [ -L "$STATE_DIR" ]; then refuse "it is a symlink"; fi
  if [ ! -e "$STATE_DIR" ]; then
    mkdir -p -- "$(dirname -- "$STATE_DIR")"
    # mkdir (without -p) fails if someone made it meanwhile: checked below.
    mkdir -m 0700 -- "$STATE_DIR" 2>/dev/null || true
  fi
  if [ -L "$STATE_DIR" ]; then refuse "it is a symlink"; fi
  [ -d "$STATE_DIR" ] || refuse "it is not a directory"
  local owner mode
  owner=$(stat -c %u -- "$STATE_DIR")
  mode=$(stat -c %a -- "$STATE_DIR")
  [ "$owner" -eq 0 ] || refuse "it is owned by uid $owner, not root"
  if (( 8#$mode & 8#022 )); then refuse "it is writable by group or others (mode $mode)"; fi
}

start() {
  if [ "$(id -u)" -ne 0 ]; then
    if answers; then echo "libvirtd: already running ($URI)"; return 0; fi
    echo "libvirtd: starting the system daemon needs root; run 'sudo $0' or use test:///default" >&2
    return 1
  fi
  state_dir
  # A fresh machine lacks these; a domain whose log cannot be opened fails to start.
  (umask 022 && mkdir -p -- "${LIBVIRT_DIRS[@]}")
  if answers; then echo "libvirtd: already running ($URI)"; return 0; fi
  command -v libvirtd >/dev/null || { echo "libvirtd: not installed (run scripts/setup-system.sh)" >&2; return 1; }
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
  if ! pgrep -u 0 -x virtlogd >/dev/null; then
    virtlogd -d -f "$STATE_DIR/virtlogd.conf" -p "$STATE_DIR/virtlogd.pid"
  fi
  if ! pgrep -u 0 -x libvirtd >/dev/null; then
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
  pkill -u 0 -x libvirtd 2>/dev/null || true
  pkill -u 0 -x virtlogd 2>/dev/null || true
  for _ in $(seq 1 100); do
    pgrep -u 0 -x libvirtd >/dev/null || pgrep -u 0 -x virtlogd >/dev/null || return 0
    sleep 0.1
  done
  echo "libvirtd: still running 10 s after it was told to stop" >&2
  return 1
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) if answers; then echo running; else echo stopped; exit 1; fi ;;
  *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac
