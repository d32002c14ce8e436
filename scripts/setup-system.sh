#!/usr/bin/env bash
# Installs the Debian packages vmdesk needs to build, run and test. Idempotent:
# it installs only what is missing and is quick when everything is there.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# Tauri 2 (WebKitGTK, tray), headless display and WebDriver for the end-to-end tests.
TAURI_PKGS="build-essential pkg-config libssl-dev libwebkit2gtk-4.1-dev libgtk-3-dev
  libayatana-appindicator3-dev librsvg2-dev libsoup-3.0-dev libxdo-dev xvfb xauth
  webkit2gtk-driver imagemagick xdotool x11-utils trayer fonts-dejavu-core dbus dbus-x11"
# libvirt (daemon, client, headers) without libvirt-daemon-system, which pulls systemd.
LIBVIRT_PKGS="libvirt-dev libvirt-clients libvirt-daemon libvirt-daemon-driver-qemu procps"
# The OS keyring (Secret Service) the Azure secret is kept in, and a session bus for it in tests.
KEYRING_PKGS="gnome-keyring dbus-daemon dbus-bin"
# websockify: the console benchmark compares the bridge with it.
BENCH_PKGS="websockify"
# virt-manager, only for `make bench` (`setup-system.sh bench`): the desktop
# benchmark measures it side by side with vmdesk.
DESKTOP_BENCH_PKGS=""
if [ "${1:-}" = bench ]; then DESKTOP_BENCH_PKGS="virt-manager"; fi
# QEMU must come from bookworm-backports: the plain bookworm one removes the
# machine's qemu-utils 10 (also from backports).
QEMU_PKGS="qemu-system-x86 qemu-system-common qemu-system-data seabios"
NODE_PKGS="nodejs npm"
# PostgreSQL for the team-store tests (scripts/postgres.sh runs its own cluster)
# and openssl for that cluster's throwaway TLS certificates.
PG_PKGS="postgresql-15 postgresql-client-15 openssl"
# The remote-host tests (scripts/remote-host.sh): an sshd in a network
# namespace, and on that "remote" host netcat with unix sockets, which joins
# an SSH channel to a VM's display socket (as for virt-manager); iproute2 for
# the namespace and its veth pair.
REMOTE_PKGS="openssh-server openssh-client netcat-openbsd iproute2"
# SSH access to VMs: ssh-keygen makes each user's key pair; mkfs.fat and
# mcopy make the cloud-init NoCloud seed disk (crates/core/src/access.rs).
SEED_PKGS="openssh-client dosfstools mtools"
# VM networks: libvirt's network driver (in libvirt-daemon) runs dnsmasq for
# DHCP and DNS and sets NAT with iptables (nf_tables) for vmdesk's network;
# tiny-linux carries Debian's dropbear as its SSH server.
NET_PKGS="dnsmasq-base iptables dropbear-bin"
# The window's *Open terminal* (a terminal emulator: x-terminal-emulator)
# and reading the clipboard under Xvfb in its tests.
TERMINAL_PKGS="xterm xclip"

missing() {
  local out=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || out+=("$p")
  done
  echo "${out[@]:-}"
}

need_base=$(missing $TAURI_PKGS $LIBVIRT_PKGS $KEYRING_PKGS $BENCH_PKGS $DESKTOP_BENCH_PKGS $PG_PKGS $REMOTE_PKGS $SEED_PKGS $NET_PKGS $TERMINAL_PKGS)
need_qemu=$(missing $QEMU_PKGS)
need_node=""
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || need_node=$NODE_PKGS

if [ -n "$need_base$need_qemu$need_node" ]; then
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
  if [ -n "$need_qemu" ] && ! grep -rqs "${codename}-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    # Use the same Debian mirror the machine's sources already use.
    mirror=$(grep -rhoE '^(URIs:|deb) +[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
      | awk '{print $2}' | grep -E '/debian/?$' | head -n1 || true)
    mirror=${mirror:-http://deb.debian.org/debian}
    echo "deb ${mirror%/} ${codename}-backports main" | $SUDO tee /etc/apt/sources.list.d/vmdesk-backports.list >/dev/null
  fi
  export DEBIAN_FRONTEND=noninteractive
  # Without systemd, a package's postinst starts its service through
  # invoke-rc.d and the init script (postgresql-15 would start the `15/main`
  # cluster it creates on port 5432). The project starts what it needs itself,
  # so while installing, a policy-rc.d (unless the machine has one) says no.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# scripts/setup-system.sh: no service starts while it installs.\nexit 101\n' \
      | $SUDO tee /usr/sbin/policy-rc.d.vmdesk >/dev/null
    $SUDO chmod 0755 /usr/sbin/policy-rc.d.vmdesk
    $SUDO mv /usr/sbin/policy-rc.d.vmdesk /usr/sbin/policy-rc.d
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  $SUDO apt-get update -q
  # shellcheck disable=SC2086
  [ -z "$need_base$need_node" ] || $SUDO apt-get install -y -q --no-install-recommends $need_base $need_node
  if [ -n "$need_qemu" ]; then
    # shellcheck disable=SC2086
    $SUDO apt-get install -y -q --no-install-recommends $(for p in $QEMU_PKGS; do printf '%s/%s-backports ' "$p" "$codename"; done)
  fi
  if [ -n "$(trap -p EXIT)" ]; then $SUDO rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
fi

# The QEMU driver of libvirtd needs this user and group.
getent group kvm >/dev/null || $SUDO groupadd --system kvm
getent group libvirt-qemu >/dev/null || $SUDO groupadd --system libvirt-qemu
id libvirt-qemu >/dev/null 2>&1 || $SUDO useradd --system --no-create-home -g libvirt-qemu -G kvm -s /usr/sbin/nologin libvirt-qemu
# A root-only /dev/kvm makes libvirt re-probe QEMU at every start (+4 s).
if [ -e /dev/kvm ]; then $SUDO chgrp kvm /dev/kvm 2>/dev/null || true; $SUDO chmod 0660 /dev/kvm 2>/dev/null || true; fi

# tauri-driver drives the app through WebKitWebDriver in the end-to-end tests.
if ! command -v tauri-driver >/dev/null 2>&1 && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/tauri-driver" ]; then
  cargo install tauri-driver --locked --quiet
fi
echo "system packages: ready"
