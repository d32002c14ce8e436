#!/usr/bin/env bash
# A second libvirt host that is really elsewhere, for the remote-host tests and
# for trying remote hosts on one machine: a network namespace of its own
# (a veth pair with private addresses), an sshd listening only inside it, and
# a session libvirtd run by a dedicated unix user, reached from this machine
# as qemu+ssh://vmdesk-remote@10.213.47.2/session. Root only. Idempotent.
# Usage: scripts/remote-host.sh [start|stop|freeze|thaw|kill-daemons|status|env]
#
#   start          makes what is missing (namespace, link, user, keys, pool)
#                  and starts sshd and libvirtd in the namespace
#   stop           stops both daemons and removes the namespace (the user's
#                  VMs' QEMUs are killed with it; their disks stay)
#   freeze / thaw  SIGSTOP / SIGCONT every process of the namespace: a host
#                  that hangs (TCP still answers, nothing else does)
#   kill-daemons   kills sshd and libvirtd, leaving the VMs' QEMUs running
#   env            prints VMDESK_REMOTE_URI, _NS, _ADDR, _USER as shell lines
#
# Files: /run/vmdesk-remote (root, 0700): sshd's config, host key, pid and log,
# the desk's key pair (desk_ed25519) and a known_hosts holding the host's key.
# /etc/ssh/ssh_config.d/vmdesk-remote-host.conf points ssh (root's, and so
# libvirt's ssh transport and vmdesk's console channel) at that key and
# known_hosts for the namespace's address only. The remote user's home is
# /var/lib/vmdr (its session daemon keeps disks under
# ~/.local/share/libvirt/images/vmdesk, the pool vmdesk).
#
# The host's VM network, as its admin would set it up for a session daemon
# (which cannot make bridges itself): a bridge vmdbr0 at 10.213.48.1/24 in
# the namespace, dnsmasq (root) giving DHCP leases on it, and QEMU's
# qemu-bridge-helper allowed on it (/etc/qemu/bridge.conf, the helper setuid
# root through dpkg-statoverride). The desk names it in its settings:
# [network.hosts.remote] bridge = "vmdbr0". The desk has no route to it:
# `vmdesk ssh` reaches the VMs through the host's sshd (ssh -J).
set -euo pipefail

NS="${VMDESK_REMOTE_NS:-vmdesk-remote}"
DESK_IF=vmdr0
HOST_IF=vmdr1
DESK_ADDR=10.213.47.1
HOST_ADDR=10.213.47.2
VM_BRIDGE=vmdbr0
VM_NET=10.213.48
BRIDGE_HELPER=/usr/lib/qemu/qemu-bridge-helper
RUSER=vmdesk-remote
RHOME=/var/lib/vmdr
STATE=/run/vmdesk-remote
SSH_CONF=/etc/ssh/ssh_config.d/vmdesk-remote-host.conf
URI="qemu+ssh://$RUSER@$HOST_ADDR/session"
HERE="$(cd "$(dirname "$0")" && pwd)"

# One change at a time: the tests start the host from several threads at
# once, and two set-ups racing failed (install: ... File exists). flock -o
# holds the lock in flock itself, so the daemons started do not inherit it.
case "${1:-start}" in
  start|stop|kill-daemons)
    if [ -z "${VMDESK_REMOTE_LOCKED:-}" ]; then
      VMDESK_REMOTE_LOCKED=1 exec flock -o /run/vmdesk-remote-host.lock bash "$HERE/$(basename "$0")" "$@"
    fi
    ;;
esac

say() { echo "remote-host: $*"; }
fail() { echo "remote-host: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || fail "needs root (network namespaces, a unix user, sshd)"

in_ns() { ip netns exec "$NS" "$@"; }
as_remote() {
  in_ns runuser -u "$RUSER" -- env -i HOME="$RHOME" PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin "$@"
}
answers() {
  timeout 10 virsh -q -c "$URI" version >/dev/null 2>&1
}
ns_pids() { ip netns pids "$NS" 2>/dev/null || true; }
# The pid of a daemon of the namespace (its pid file, if that process lives).
daemon_pid() {
  local f=$1 pid
  [ -s "$f" ] || return 1
  pid=$(cat "$f")
  [ -d "/proc/$pid" ] && echo "$pid"
}

network() {
  [ -e "/run/netns/$NS" ] || ip netns add "$NS"
  in_ns ip link set lo up
  if ! ip link show "$DESK_IF" >/dev/null 2>&1; then
    ip link add "$DESK_IF" type veth peer name "$HOST_IF"
    ip link set "$HOST_IF" netns "$NS"
  fi
  ip addr replace "$DESK_ADDR/30" dev "$DESK_IF"
  ip link set "$DESK_IF" up
  in_ns ip addr replace "$HOST_ADDR/30" dev "$HOST_IF"
  in_ns ip link set "$HOST_IF" up
}

vm_network() {
  if ! in_ns ip link show "$VM_BRIDGE" >/dev/null 2>&1; then
    in_ns ip link add "$VM_BRIDGE" type bridge
  fi
  in_ns ip addr replace "$VM_NET.1/24" dev "$VM_BRIDGE"
  in_ns ip link set "$VM_BRIDGE" up
  if ! daemon_pid "$STATE/dnsmasq.pid" >/dev/null; then
    in_ns dnsmasq --conf-file=/dev/null --port=0 --bind-interfaces --interface="$VM_BRIDGE" \
      --except-interface=lo --dhcp-range="$VM_NET.10,$VM_NET.254,1h" \
      --dhcp-leasefile="$STATE/dnsmasq.leases" --pid-file="$STATE/dnsmasq.pid"
  fi
  mkdir -p /etc/qemu
  grep -qx "allow $VM_BRIDGE" /etc/qemu/bridge.conf 2>/dev/null || echo "allow $VM_BRIDGE" >> /etc/qemu/bridge.conf
  # The helper opens /dev/net/tun as the user (with CAP_NET_ADMIN only):
  # it needs the mode udev gives it on Debian, 0666 (a container may have 0600).
  [ -c /dev/net/tun ] && [ "$(stat -c %a /dev/net/tun)" != 666 ] && chmod 0666 /dev/net/tun
  if [ ! -u "$BRIDGE_HELPER" ]; then
    dpkg-statoverride --list "$BRIDGE_HELPER" >/dev/null 2>&1 || \
      dpkg-statoverride --update --add root root 4755 "$BRIDGE_HELPER"
    chmod 4755 "$BRIDGE_HELPER"
  fi
}

remote_user() {
  if ! id "$RUSER" >/dev/null 2>&1; then
    useradd --system --home-dir "$RHOME" --no-create-home -s /bin/sh "$RUSER"
  fi
  # Not locked (sshd refuses a locked account) and no password either.
  usermod -p '*' "$RUSER"
  # QEMU under the session daemon may use /dev/kvm when the CPU can.
  getent group kvm >/dev/null && usermod -a -G kvm "$RUSER"
  mkdir -p "$RHOME/.ssh"
  chown "$RUSER:" "$RHOME" "$RHOME/.ssh"
  chmod 0700 "$RHOME" "$RHOME/.ssh"
}

keys() {
  mkdir -p "$STATE"
  chmod 0700 "$STATE"
  [ -s "$STATE/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -C "vmdesk remote host" -f "$STATE/ssh_host_ed25519_key"
  [ -s "$STATE/desk_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C "vmdesk desk" -f "$STATE/desk_ed25519"
  install -o "$RUSER" -g "$(id -gn "$RUSER")" -m 0600 "$STATE/desk_ed25519.pub" "$RHOME/.ssh/authorized_keys"
  printf '%s %s\n' "$HOST_ADDR" "$(cut -d' ' -f1,2 "$STATE/ssh_host_ed25519_key.pub")" > "$STATE/known_hosts"
  mkdir -p "$(dirname "$SSH_CONF")"
  cat > "$SSH_CONF" <<CONF
# scripts/remote-host.sh: the test host in the network namespace $NS.
Host $HOST_ADDR
  IdentityFile $STATE/desk_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $STATE/known_hosts
CONF
  cat > "$STATE/sshd_config" <<CONF
ListenAddress $HOST_ADDR
Port 22
HostKey $STATE/ssh_host_ed25519_key
PidFile $STATE/sshd.pid
AllowUsers $RUSER
AuthenticationMethods publickey
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# Consoles come through `nc -U` in a session. TCP forwarding from the desk
# only (ssh -J to the VMs' SSH ports); nothing else is forwarded.
AllowTcpForwarding local
PermitOpen any
AllowStreamLocalForwarding no
AllowAgentForwarding no
X11Forwarding no
PermitTunnel no
LogLevel VERBOSE
CONF
}

sshd_up() {
  mkdir -p /run/sshd
  chmod 0755 /run/sshd
  daemon_pid "$STATE/sshd.pid" >/dev/null && return 0
  in_ns /usr/sbin/sshd -f "$STATE/sshd_config" -E "$STATE/sshd.log"
}

libvirtd_up() {
  local sock="$RHOME/.cache/libvirt/libvirt-sock"
  if pgrep -u "$RUSER" -x libvirtd >/dev/null && [ -S "$sock" ]; then return 0; fi
  # Under a subreaper, as the system daemon (scripts/libvirtd.sh): a destroyed
  # QEMU is reaped at once.
  in_ns runuser -u "$RUSER" -- env -i HOME="$RHOME" PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
    setsid python3 "$HERE/subreaper.py" libvirtd >/dev/null 2>&1 < /dev/null &
  for _ in $(seq 1 100); do
    [ -S "$sock" ] && return 0
    sleep 0.1
  done
  fail "the session libvirtd of $RUSER did not come up"
}

storage_pool() {
  local dir="$RHOME/.local/share/libvirt/images/vmdesk"
  if ! as_remote virsh -q -c qemu:///session pool-info vmdesk >/dev/null 2>&1; then
    as_remote virsh -q -c qemu:///session pool-define-as vmdesk dir --target "$dir" >/dev/null
    as_remote virsh -q -c qemu:///session pool-autostart vmdesk >/dev/null
  fi
  as_remote virsh -q -c qemu:///session pool-build vmdesk >/dev/null 2>&1 || true
  as_remote virsh -q -c qemu:///session pool-start vmdesk >/dev/null 2>&1 || true
}

start() {
  command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || fail "openssh-server is not installed (run scripts/setup-system.sh)"
  command -v libvirtd >/dev/null || fail "libvirtd is not installed (run scripts/setup-system.sh)"
  network
  remote_user
  keys
  vm_network
  sshd_up
  libvirtd_up
  storage_pool
  for _ in $(seq 1 50); do
    if answers; then say "ready ($URI)"; return 0; fi
    sleep 0.2
  done
  fail "$URI does not answer; see $STATE/sshd.log"
}

kill_daemons() {
  local pid
  if pid=$(daemon_pid "$STATE/sshd.pid"); then kill "$pid"; fi
  # The per-connection sshd processes too: their peers see the connection end.
  pkill -u 0 -f "^sshd: $RUSER" 2>/dev/null || true
  pkill -u "$RUSER" -x sshd 2>/dev/null || true
  pkill -u "$RUSER" -x libvirtd 2>/dev/null || true
  for _ in $(seq 1 50); do
    pgrep -u "$RUSER" -x libvirtd >/dev/null || return 0
    sleep 0.1
  done
}

stop() {
  kill_daemons
  local pid
  if pid=$(daemon_pid "$STATE/dnsmasq.pid"); then kill "$pid"; fi
  pkill -u "$RUSER" 2>/dev/null || true
  [ -e "/run/netns/$NS" ] && ip netns delete "$NS"
  ip link delete "$DESK_IF" 2>/dev/null || true
  say "stopped"
}

signal_all() {
  local pid
  for pid in $(ns_pids); do kill "-$1" "$pid" 2>/dev/null || true; done
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  freeze) signal_all STOP ;;
  thaw) signal_all CONT ;;
  kill-daemons) kill_daemons ;;
  status) if answers; then echo running; else echo stopped; exit 1; fi ;;
  env)
    echo "VMDESK_REMOTE_URI=$URI"
    echo "VMDESK_REMOTE_NS=$NS"
    echo "VMDESK_REMOTE_ADDR=$HOST_ADDR"
    echo "VMDESK_REMOTE_USER=$RUSER"
    echo "VMDESK_REMOTE_BRIDGE=$VM_BRIDGE"
    ;;
  *) echo "usage: $0 [start|stop|freeze|thaw|kill-daemons|status|env]" >&2; exit 2 ;;
esac
