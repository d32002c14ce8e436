#!/usr/bin/env bash
# Builds "tiny-linux", a small bootable disk image, from Debian packages only
# (nothing else is downloaded): the Debian kernel, a busybox initramfs that
# starts a shell on the VGA console and the serial port, and syslinux on a FAT
# partition. At every boot its init also reads a cloud-init NoCloud seed (a
# vfat disk labelled CIDATA: hostname, root's authorized keys, the SSH host
# key), brings up a virtio NIC by DHCP (busybox udhcpc) and runs Debian's
# dropbear SSH server. For the console: virtio-gpu (the screen follows the
# viewer's size, the text console with it), vdclip (guest/vdclip.c: the
# clipboard shared with the host through QEMU's qemu-vdagent; `clip` copies,
# `clip -o` pastes) and console keymaps (`loadkmap < /etc/keymaps/de.bmap`).
# Output: OUT/tiny-linux.qcow2 (default OUT: target/os).
# Idempotent: does nothing when the image of this version exists.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-target/os}"
IMG="$OUT/tiny-linux.qcow2"
# Raised whenever what goes into the image changes, so that `make` rebuilds it.
VERSION=5
STAMP="$OUT/tiny-linux.version"
if [ -f "$IMG" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$VERSION" ]; then
  echo "tiny-linux: $IMG exists (version $VERSION)"; exit 0
fi

SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
need=""
for p in busybox-static syslinux syslinux-common mtools dosfstools fdisk cpio qemu-utils dropbear-bin \
         libglib2.0-0 libnuma1 libudev1 liburing2 gcc libc6-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need="$need $p"
done
if [ -n "$need" ]; then
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $need >/dev/null
fi

work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
# The kernel: the image package the linux-image-amd64 meta-package points to.
kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
(cd "$work" && apt-get download -q "$kpkg" >/dev/null)
dpkg-deb -x "$work"/"$kpkg"_*.deb "$work/kernel"
vmlinuz=$(ls "$work"/kernel/boot/vmlinuz-*)
# QEMU's guest agent (it tells the host the guest's addresses), from its
# package; the libraries it links are the host's (installed above).
(cd "$work" && apt-get download -q qemu-guest-agent >/dev/null 2>&1)
dpkg-deb -x "$work"/qemu-guest-agent_*.deb "$work/qga"
# Console keymaps in busybox's binary form, made by kbd's loadkeys from
# console-data's maps (both only unpacked here, not installed).
(cd "$work" && apt-get download -q console-data kbd >/dev/null 2>&1)
dpkg-deb -x "$work"/console-data_*.deb "$work/kmaps"
dpkg-deb -x "$work"/kbd_*.deb "$work/kbd"

# The initramfs: busybox, the kernel modules for virtio disks and NICs and
# vfat, dropbear with the libraries it links, and the init.
root="$work/root"
mkdir -p "$root"/{bin,sbin,proc,sys,dev,etc,tmp,root,lib/modules,etc/udhcpc,etc/dropbear,var/log}
cp /bin/busybox "$root/bin/busybox"
for app in $("$root/bin/busybox" --list); do [ "$app" = busybox ] || ln -sf busybox "$root/bin/$app"; done
kmods="$work/kernel/lib/modules/$(ls "$work/kernel/lib/modules")/kernel"
# The modules, each after those it depends on (the package has no
# modules.dep: each module's own `depends=` says; init insmods them in order).
declare -A added=()
add_module() {
  local name=${1//-/_} path dep
  [ -n "${added[$name]:-}" ] && return
  added[$name]=1
  # A few file names keep a dash (virtio-gpu.ko).
  path=$(find "$kmods" \( -name "$name.ko" -o -name "${name//_/-}.ko" \) | head -n1)
  [ -n "$path" ] || { echo "tiny-linux: no module $name in the kernel package" >&2; exit 1; }
  for dep in $(grep -a -o 'depends=[a-z0-9_,-]*' "$path" | head -n1 | cut -d= -f2 | tr ',' ' '); do add_module "$dep"; done
  cp "$path" "$root/lib/modules/"
  basename "$path" >> "$root/lib/modules/order"
}
for m in virtio_pci virtio_blk virtio_net virtio_console virtio_gpu vfat nls_cp437 nls_ascii button evdev; do add_module "$m"; done
# The clipboard agent, static.
gcc -static -Os -Wall -o "$root/bin/vdclip" guest/vdclip.c
strip "$root/bin/vdclip"
ln -sf vdclip "$root/bin/clip"
# Keymaps: US and German.
mkdir -p "$root/etc/keymaps"
for km in qwerty/us qwertz/de-latin1; do
  setsid "$work/kbd/bin/loadkeys" -b "$work/kmaps/usr/share/keymaps/i386/$km.kmap.gz" \
    > "$root/etc/keymaps/$(basename "$km" | sed 's/-latin1//').bmap" </dev/null
done
# The text console follows the screen's size: at each display hotplug
# (the viewer asked for another size), the terminal's rows and columns.
cat > "$root/etc/fit-console" <<'FIT'
#!/bin/sh
[ "$SUBSYSTEM" = drm ] && [ "$HOTPLUG" = 1 ] || exit 0
for m in /sys/class/drm/card*-*/modes; do
  mode=$(head -n1 "$m"); [ -n "$mode" ] || continue
  w=${mode%x*}; h=${mode#*x}
  stty -F /dev/tty1 cols $((w / 8)) rows $((h / 16))
  break
done
FIT
chmod +x "$root/etc/fit-console"
# dropbear, dropbearconvert and qemu-ga, with every library they link.
cp /usr/sbin/dropbear "$root/sbin/dropbear"
cp /usr/lib/dropbear/dropbearconvert "$root/bin/dropbearconvert" 2>/dev/null || cp /usr/bin/dropbearconvert "$root/bin/dropbearconvert"
cp "$work/qga/usr/sbin/qemu-ga" "$root/sbin/qemu-ga"
for lib in $(ldd /usr/sbin/dropbear /usr/lib/dropbear/dropbearconvert "$work/qga/usr/sbin/qemu-ga" 2>/dev/null | awk '/=> \// {print $3} /^\t\/lib/ {print $1}' | sort -u); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
ld=$(ldd /usr/sbin/dropbear | awk '/ld-linux/ {print $1}')
mkdir -p "$root$(dirname "$ld")"; cp -L "$ld" "$root$ld"
echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
echo 'root:*:19000:0:99999:7:::' > "$root/etc/shadow"
echo 'root:x:0:' > "$root/etc/group"
echo '/bin/sh' > "$root/etc/shells"
# The power button (an ACPI shutdown from the host) powers off: busybox
# acpid runs /etc/acpi/PWRF/00000080 for it.
mkdir -p "$root/etc/acpi/PWRF"
printf '#!/bin/sh\necho "tiny-linux: power button, powering off" >/dev/console\nsync\npoweroff -f\n' > "$root/etc/acpi/PWRF/00000080"
chmod +x "$root/etc/acpi/PWRF/00000080"
cat > "$root/etc/udhcpc/default.script" <<'DHCP'
#!/bin/sh
# udhcpc's hook: set the leased address, the default route and DNS.
exec >/dev/console 2>&1
case "$1" in
  deconfig) ip -4 addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip -4 addr add "$ip/${mask:-24}" dev "$interface"
    for r in $router; do ip -4 route replace default via "$r" dev "$interface"; break; done
    : > /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
    echo "tiny-linux: $interface has $ip"
    # Say hello to the gateway, so that the host's ARP table knows us too.
    for r in $router; do ping -c 1 -W 1 "$r" >/dev/null 2>&1; break; done ;;
esac
exit 0
DHCP
chmod +x "$root/etc/udhcpc/default.script"
cat > "$root/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
hostname tiny-linux
for m in $(cat /lib/modules/order); do
  insmod /lib/modules/$m 2>/dev/null || grep -q "^${m%.ko} " /proc/modules || echo "tiny-linux: cannot load $m"
done
echo
echo "tiny-linux (vmdesk): busybox $(busybox | head -n1 | cut -d' ' -f2) on Linux $(uname -r)"
echo
# The cloud-init NoCloud seed: a vfat disk labelled CIDATA, read at every boot.
mkdir -p /seed /root/.ssh && chmod 700 /root /root/.ssh
sleep 1
echo "tiny-linux: disks" $(ls /dev/vd? 2>/dev/null) "NICs" $(ls /sys/class/net)
for d in /dev/vd? /dev/sd?; do
  [ -b "$d" ] || continue
  mount -t vfat -o ro "$d" /seed 2>/dev/null || continue
  if [ -f /seed/meta-data ]; then
    echo "tiny-linux: cloud-init seed on $d"
    h=$(sed -n 's/^local-hostname: *//p' /seed/meta-data | head -n1)
    [ -n "$h" ] && hostname "$h"
    # user-data as vmdesk writes it: each authorized key a quoted string,
    # the host key a literal block.
    awk '/^ssh_authorized_keys:/ {k=1; next} /^[^ ]/ {k=0} k && /^  - / {sub(/^  - "/, ""); sub(/"$/, ""); print}' \
      /seed/user-data > /root/.ssh/authorized_keys
    awk '/^  ed25519_private: \|/ {k=1; next} k && /^    / {sub(/^    /, ""); print; next} {k=0}' \
      /seed/user-data > /tmp/host_key
    break
  fi
  umount /seed
done
chmod 600 /root/.ssh/authorized_keys 2>/dev/null
if [ -s /tmp/host_key ]; then
  dropbearconvert openssh dropbear /tmp/host_key /etc/dropbear/dropbear_ed25519_host_key >/dev/null 2>&1
fi
rm -f /tmp/host_key
echo "tiny-linux: hostname $(hostname), $(grep -c . /root/.ssh/authorized_keys 2>/dev/null || echo 0) authorized key(s)"
# The network: every NIC by DHCP, in the background (retried until a lease).
ip link set lo up
for n in /sys/class/net/*; do
  n=${n##*/}; [ "$n" = lo ] && continue
  ip link set "$n" up
  udhcpc -i "$n" -b -t 10 -T 2 -A 5 -s /etc/udhcpc/default.script
done
acpid
# The guest agent, on the virtio port libvirt names org.qemu.guest_agent.0.
mkdir -p /var/run
for p in /sys/class/virtio-ports/*; do
  [ "$(cat "$p/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] || continue
  qemu-ga -d -m virtio-serial -p "/dev/${p##*/}" -l /var/log/qemu-ga.log
done
# The clipboard agent, on the port QEMU's qemu-vdagent serves.
mkdir -p /run
vdclip -d 2>/var/log/vdclip.log &
uevent /etc/fit-console >/dev/null 2>&1 &
# SSH: keys only (-s), root may log in, host key from the seed or made now (-R).
dropbear -R -s -E 2>/var/log/dropbear.log
for tty in tty1 ttyS0; do
  [ -e /dev/$tty ] && setsid sh -c "exec sh -i </dev/$tty >/dev/$tty 2>&1" &
done
while true; do wait; sleep 1; done
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -9) > "$work/initrd.gz"

# The disk: an MBR, one bootable FAT partition from 1 MiB, syslinux on it.
raw="$work/disk.raw"
truncate -s 64M "$raw"
echo 'start=2048, type=6, bootable' | sfdisk -q "$raw"
mkfs.fat -F 16 --offset 2048 -n TINYLINUX "$raw" $(( (64 * 1024 - 1024) )) >/dev/null
syslinux --offset $((2048 * 512)) --install "$raw"
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$raw" bs=440 count=1 conv=notrunc status=none
cat > "$work/syslinux.cfg" <<'CFG'
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  KERNEL vmlinuz
  INITRD initrd.gz
  APPEND console=tty1 console=ttyS0 quiet
CFG
export MTOOLS_SKIP_CHECK=1
mcopy -i "$raw@@1M" "$vmlinuz" ::vmlinuz
mcopy -i "$raw@@1M" "$work/initrd.gz" ::initrd.gz
mcopy -i "$raw@@1M" "$work/syslinux.cfg" ::syslinux.cfg
mkdir -p "$OUT"
qemu-img convert -q -f raw -O qcow2 -c "$raw" "$IMG.tmp" && mv "$IMG.tmp" "$IMG"
echo "$VERSION" > "$STAMP"
echo "tiny-linux: built $IMG ($(du -h "$IMG" | cut -f1)) with $kpkg"
