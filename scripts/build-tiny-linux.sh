#!/usr/bin/env bash
# Builds "tiny-linux", a small bootable disk image, from Debian packages only
# (nothing else is downloaded): the Debian kernel, a busybox initramfs that
# starts a shell on the VGA console and the serial port, and syslinux on a FAT
# partition. Output: OUT/tiny-linux.qcow2 (default OUT: target/os).
# Idempotent: does nothing when the image exists.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-target/os}"
IMG="$OUT/tiny-linux.qcow2"
[ -f "$IMG" ] && { echo "tiny-linux: $IMG exists"; exit 0; }

SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
need=""
for p in busybox-static syslinux syslinux-common mtools dosfstools fdisk cpio qemu-utils; do
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

# The initramfs: busybox and an init that gives a shell.
root="$work/root"
mkdir -p "$root"/{bin,sbin,proc,sys,dev,etc,tmp,root}
cp /bin/busybox "$root/bin/busybox"
for app in $("$root/bin/busybox" --list); do [ "$app" = busybox ] || ln -sf busybox "$root/bin/$app"; done
cat > "$root/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
hostname tiny-linux
echo
echo "tiny-linux (vmdesk): busybox $(busybox | head -n1 | cut -d' ' -f2) on Linux $(uname -r)"
echo
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
echo "tiny-linux: built $IMG ($(du -h "$IMG" | cut -f1)) with $kpkg"
