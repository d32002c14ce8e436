#!/usr/bin/env bash
# Takes away what set-up makes, so that the `make test` after it sets those
# parts up from nothing, as on a fresh machine (.ci/run calls it first). What
# one machine happens to have, a fresh one lacks: without this, a set-up step
# that forgets to make something passes on every machine that once had it.
#
# Removes: vmdesk's libvirt domains, its NAT network (with its bridge and
# dnsmasq) and its storage pool `vmdesk` (with its
# directory), the QEMU driver's state, log, cache and run directories, the
# libvirtd.sh state directory, the postgres.sh cluster directory (its data,
# password, certificates and env file), the tiny-linux image (target/os) and
# the UI build (ui/dist), and the remote test host of scripts/remote-host.sh
# (its namespace, user, home, keys and ssh config). Stops the libvirt daemons,
# that PostgreSQL and the remote host first if they run.
# Run as root (it removes system directories); not while tests run.
set -euo pipefail
cd "$(dirname "$0")/.."

URI="qemu:///system"
POOL="vmdesk"                       # crates/libvirt: pool_name
POOL_DIR="/var/lib/libvirt/images/vmdesk"
MARKER_NS="urn:vmdesk:machine:1"    # crates/libvirt: MARKER_NS
STATE_DIR="${VMDESK_LIBVIRT_STATE:-/run/vmdesk-libvirt}"
PG_DIR="${VMDESK_PG_DIR:-/run/vmdesk-postgres}"

if [ "$(id -u)" -ne 0 ]; then
  echo "fresh-check: needs root (it removes libvirt's system directories)" >&2
  exit 1
fi

say() { echo "fresh-check: $*"; }

if command -v virsh >/dev/null && timeout 5 virsh -q -c "$URI" version >/dev/null 2>&1; then
  virsh_() { timeout 30 virsh -q -c "$URI" "$@"; }
  # vmdesk's machines carry its metadata namespace.
  for dom in $(virsh_ list --all --name || true); do
    if virsh_ dumpxml "$dom" 2>/dev/null | grep -q "$MARKER_NS"; then
      virsh_ destroy "$dom" >/dev/null 2>&1 || true
      virsh_ undefine "$dom" >/dev/null 2>&1 || true
      say "removed domain $dom"
    fi
  done
  # vmdesk's NAT network (crates/libvirt: NETWORK), made on first use.
  if virsh_ net-info vmdesk >/dev/null 2>&1; then
    virsh_ net-destroy vmdesk >/dev/null 2>&1 || true
    virsh_ net-undefine vmdesk >/dev/null
    say "removed network vmdesk"
  fi
  if virsh_ pool-info "$POOL" >/dev/null 2>&1; then
    virsh_ pool-destroy "$POOL" >/dev/null 2>&1 || true
    virsh_ pool-undefine "$POOL" >/dev/null
    say "removed storage pool $POOL"
  fi
fi

# The remote test host (scripts/remote-host.sh): its namespace, daemons and
# the QEMUs of its user go first, then its user, home, keys and ssh config.
if [ -f scripts/remote-host.sh ]; then
  bash scripts/remote-host.sh stop
  if id vmdesk-remote >/dev/null 2>&1; then
    pkill -9 -u vmdesk-remote 2>/dev/null || true
    for _ in $(seq 1 50); do pgrep -u vmdesk-remote >/dev/null || break; sleep 0.1; done
    userdel vmdesk-remote
    say "removed the user vmdesk-remote"
  fi
fi

bash scripts/libvirtd.sh stop
say "libvirt daemons stopped"
# A QEMU that is not vmdesk's keeps its state in the directories below.
if pgrep -f '^(/usr/bin/)?qemu-system-' >/dev/null; then
  echo "fresh-check: a QEMU that is not vmdesk's still runs; its libvirt state is left alone" >&2
  exit 1
fi

# With the daemon down (a machine just booted), the loop above could not ask
# it; its persistent definitions are files, and a pool left defined without
# its directory is exactly what a fresh machine never has.
for xml in /etc/libvirt/qemu/*.xml; do
  if [ -f "$xml" ] && grep -q "$MARKER_NS" "$xml"; then
    rm -f -- "$xml" "/etc/libvirt/qemu/autostart/$(basename "$xml")"
    say "removed domain definition $xml"
  fi
done
for path in /etc/libvirt/storage/"$POOL".xml /etc/libvirt/storage/autostart/"$POOL".xml \
  /etc/libvirt/qemu/networks/vmdesk.xml /etc/libvirt/qemu/networks/autostart/vmdesk.xml; do
  if [ -e "$path" ] || [ -L "$path" ]; then
    rm -f -- "$path"
    say "removed $path"
  fi
done

# A daemon that stops leaves its networks up: the dnsmasq of vmdesk's
# network and its bridge (crates/libvirt: NETWORK_CHOICES) outlive it, and
# with /run/libvirt gone the next daemon would find the bridge in its way.
pkill -f '^/usr/sbin/dnsmasq --conf-file=/var/lib/libvirt/dnsmasq/vmdesk.conf' 2>/dev/null || true
for bridge in vmdesk0 vmdesk1 vmdesk2 vmdesk3 vmdesk4 vmdesk5; do
  if ip link show "$bridge" >/dev/null 2>&1; then
    ip link del "$bridge"
    say "removed the bridge $bridge"
  fi
done
rm -f /var/lib/libvirt/dnsmasq/vmdesk*

if [ -f scripts/postgres.sh ]; then
  bash scripts/postgres.sh stop
fi

for path in \
  "$POOL_DIR" \
  /var/log/libvirt/qemu \
  /var/lib/libvirt/qemu \
  /var/cache/libvirt/qemu \
  /run/libvirt \
  "$STATE_DIR" \
  "$PG_DIR" \
  /run/vmdesk-remote \
  /var/lib/vmdr \
  /etc/ssh/ssh_config.d/vmdesk-remote-host.conf \
  target/os \
  ui/dist; do
  if [ -e "$path" ] || [ -L "$path" ]; then
    rm -rf -- "$path"
    say "removed $path"
  fi
done
# The remote host's bridge permission for qemu-bridge-helper, and the
# helper's setuid bit (a dpkg-statoverride of scripts/remote-host.sh).
if [ -f /etc/qemu/bridge.conf ] && grep -qx "allow vmdbr0" /etc/qemu/bridge.conf; then
  sed -i '/^allow vmdbr0$/d' /etc/qemu/bridge.conf
  [ -s /etc/qemu/bridge.conf ] || rm -f /etc/qemu/bridge.conf
  say "removed vmdbr0 from /etc/qemu/bridge.conf"
fi
if dpkg-statoverride --list /usr/lib/qemu/qemu-bridge-helper >/dev/null 2>&1; then
  dpkg-statoverride --remove /usr/lib/qemu/qemu-bridge-helper >/dev/null
  chmod 0755 /usr/lib/qemu/qemu-bridge-helper
  say "removed the setuid bit of qemu-bridge-helper"
fi
say "set-up must now make these again"
