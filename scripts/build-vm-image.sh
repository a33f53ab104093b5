#!/usr/bin/env bash
# Builds the nines service-VM guest from Debian packages: OUT_DIR/vmlinuz (a copy of the
# installed linux-image-cloud-amd64 kernel), OUT_DIR/vmlinux (the same kernel uncompressed,
# which boots faster through QEMU's PVH entry) and OUT_DIR/initramfs.cpio (static busybox, the
# virtio modules of that kernel, an init that configures the network from the kernel command
# line, and a tiny HTTP service). See ../shared/VM-RECIPE.md §2 for the facts behind each step.
#
#   scripts/build-vm-image.sh OUT_DIR
#
# Idempotent: when OUT_DIR already holds an image built from the same inputs (this script, the
# kernel, busybox, the optional agent binary and overlay) it prints so and exits at once.
#
# Guest command line (`key=value` pairs the kernel hands to init as environment variables):
#   svcname=NAME        name served by `GET /` ("ok NAME BOOTID"), default "vm"
#   svcip=ADDR/LEN      eth0's address, default 10.0.2.15/24 (QEMU user-mode network)
#   svcgw=ADDR          default route, default 10.0.2.2
#   svcport=PORT        HTTP port, default 80
#   svcvip=ADDR/LEN     a floating IP that `GET /cgi-bin/takeover` claims (svcvipowner=1: at boot)
#   svcdie=SECS         power the guest off SECS seconds after it is ready (a guest shutdown)
#   svcpanic=SECS       panic the guest kernel SECS seconds after it is ready (pvpanic test)
#   svcnoacpi=1         ignore the ACPI power button (a guest that will not shut down)
#   svcdebug=1          print init's steps on the serial console
# The service: `GET /` -> "ok NAME BOOTID", `GET /cgi-bin/health` -> "healthy NAME".
# ACPI power button (QMP `system_powerdown`) -> the guest powers off.
# When ready, init prints "SVC-READY name=NAME ip=ADDR boot_id=BOOTID" on ttyS0.
#
# The nines agent inside the guest (nested clusters; scripts/build-guest-image.sh does both):
#   NINES_AGENT_BIN=/path/to/nines   copied into the image as /usr/bin/nines (stripped), with
#                                    the shared libraries `ldd` names (none for a static build,
#                                    RUSTFLAGS="-C target-feature=+crt-static"), and started at
#                                    boot as `nines agent` when the VM's node appended
#                                    /etc/nines/{node,director,key} to the initrd.
#   VM_IMAGE_OVERLAY=/path/to/dir    copied over the image root as is (e.g. etc/svc.d/50-agent).
#   At boot, init runs every executable /etc/svc.d/* in name order, after the network is up and
#   before SVC-READY, with the svc* variables in its environment; a script there is how
#   `nines agent` will be started inside the guest.
#
# Needs (Debian): linux-image-cloud-amd64 busybox-static cpio lz4; .ci/run installs
# them.
set -euo pipefail

die() {
    echo "build-vm-image: error: $*" >&2
    exit 1
}
say() {
    echo "build-vm-image: $*"
}

[ $# -eq 1 ] || die "usage: $0 OUT_DIR"
mkdir -p "$1" || die "cannot create $1"
OUT=$(cd "$1" && pwd)

# --- inputs -----------------------------------------------------------------------------------
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || die "$BUSYBOX not found: install the Debian package busybox-static"
"$BUSYBOX" true 2>/dev/null || die "$BUSYBOX does not run: install the Debian package busybox-static"
# The static build is what the guest needs (it has no libc); the dynamic `busybox` package
# would install the same path.
if command -v ldd >/dev/null 2>&1 && ldd "$BUSYBOX" >/dev/null 2>&1; then
    die "$BUSYBOX is dynamically linked: install the Debian package busybox-static"
fi
command -v cpio >/dev/null 2>&1 || die "cpio not found: install the Debian package cpio"
command -v lz4 >/dev/null 2>&1 || die "lz4 not found: install the Debian package lz4"

# The newest installed Debian cloud kernel that has its modules (KERNEL_VERSION overrides).
if [ -n "${KERNEL_VERSION:-}" ]; then
    KVER=$KERNEL_VERSION
else
    KVER=""
    for k in $(ls /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sed 's|^/boot/vmlinuz-||' | sort -V); do
        [ -d "/lib/modules/$k" ] && KVER=$k
    done
fi
[ -n "$KVER" ] && [ -f "/boot/vmlinuz-$KVER" ] ||
    die "no kernel /boot/vmlinuz-*-cloud-amd64 with /lib/modules: install the Debian package linux-image-cloud-amd64"
KERNEL=/boot/vmlinuz-$KVER
MODDIR=/lib/modules/$KVER
[ -f "$MODDIR/modules.dep" ] || die "$MODDIR/modules.dep missing: reinstall linux-image-$KVER"

# The drivers the guest needs; their dependencies come from modules.dep, loaded deepest first
# (virtio_ring before virtio before the transports: a wrong order gives "Unknown symbol").
WANTED="virtio_mmio virtio_pci virtio_net virtio-rng pvpanic-mmio button evdev"
MODULES=()
add_module() { # relative path from modules.dep
    local m
    for m in "${MODULES[@]}"; do [ "$m" = "$1" ] && return 0; done
    MODULES+=("$1")
}
for w in $WANTED; do
    line=$(grep -E "(^|/)${w}\.ko(\.[a-z]+)?:" "$MODDIR/modules.dep" || true)
    [ -n "$line" ] || die "module $w not in $MODDIR (a linux-image-cloud-amd64 kernel is expected)"
    mod=${line%%:*}
    read -r -a deps <<<"${line#*:}"
    for ((i = ${#deps[@]} - 1; i >= 0; i--)); do add_module "${deps[i]}"; done
    add_module "$mod"
done
for m in "${MODULES[@]}"; do
    case $m in *.ko) ;; *) die "module $m is compressed; busybox insmod needs plain .ko files" ;; esac
done

AGENT=${NINES_AGENT_BIN:-}
[ -z "$AGENT" ] || [ -x "$AGENT" ] || die "NINES_AGENT_BIN=$AGENT is not an executable file"
OVERLAY=${VM_IMAGE_OVERLAY:-}
[ -z "$OVERLAY" ] || [ -d "$OVERLAY" ] || die "VM_IMAGE_OVERLAY=$OVERLAY is not a directory"

# --- up to date? ------------------------------------------------------------------------------
SELF=$(readlink -f "${BASH_SOURCE[0]}")
stamp_of() {
    {
        echo "format 2"
        sha256sum "$SELF" | cut -d' ' -f1
        echo "kernel $KVER $(stat -c '%s %Y' "$KERNEL")"
        echo "busybox $(stat -c '%s %Y' "$BUSYBOX")"
        echo "modules ${MODULES[*]}"
        [ -z "$AGENT" ] || echo "agent $(sha256sum "$AGENT" | cut -d' ' -f1)"
        [ -z "$OVERLAY" ] || (cd "$OVERLAY" && find . -type f -print0 | sort -z | xargs -0 -r sha256sum)
    } | sha256sum | cut -d' ' -f1
}
STAMP=$(stamp_of)
if [ -f "$OUT/stamp" ] && [ "$(cat "$OUT/stamp")" = "$STAMP" ] &&
    [ -f "$OUT/vmlinuz" ] && [ -f "$OUT/initramfs.cpio" ]; then
    say "up to date: $OUT (kernel $KVER)"
    exit 0
fi

say "building into $OUT (kernel $KVER, ${#MODULES[@]} modules)"
mkdir -p "$OUT"
WORK=$(mktemp -d "$OUT/.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/root
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,etc/svc.d,etc/acpi/PWRF,lib/modules,www/cgi-bin}

# --- busybox and modules ----------------------------------------------------------------------
cp "$BUSYBOX" "$ROOT/bin/busybox"
# The applet links are made here, not by `busybox --install` at boot: hundreds of symlinks
# cost a noticeable part of a second under TCG.
for applet in $("$BUSYBOX" --list); do
    [ -e "$ROOT/bin/$applet" ] || ln -s busybox "$ROOT/bin/$applet"
done
: >"$ROOT/lib/modules/order"
for m in "${MODULES[@]}"; do
    base=$(basename "$m")
    cp "$MODDIR/$m" "$ROOT/lib/modules/$base"
    echo "$base" >>"$ROOT/lib/modules/order"
done
say "modules: $(tr '\n' ' ' <"$ROOT/lib/modules/order")"

# --- the agent hook ---------------------------------------------------------------------------
if [ -n "$AGENT" ]; then
    # Without its debug info: the image is unpacked into guest RAM at every boot.
    if command -v strip >/dev/null 2>&1; then
        strip -o "$ROOT/usr/bin/nines" "$AGENT"
    else
        cp "$AGENT" "$ROOT/usr/bin/nines"
    fi
    # Started at boot when the VM's node appended /etc/nines (crates/agent/src/vm_guest.rs):
    # the guest then joins the cluster as that node. Its log goes to the serial console.
    cat >"$ROOT/etc/svc.d/50-nines-agent" <<'HOOK'
#!/bin/sh
[ -f /etc/nines/node ] || exit 0
chmod 600 /etc/nines/key
mkdir -p /run/nines
echo "SVC-AGENT node=$(cat /etc/nines/node) director=$(cat /etc/nines/director) uptime=$(cut -d' ' -f1 /proc/uptime)"
verbose=""
[ "${svcdebug:-0}" = 1 ] && verbose=-v
exec nines agent --node "$(cat /etc/nines/node)" --director "$(cat /etc/nines/director)" \
    --key /etc/nines/key --state-dir /run/nines $verbose
HOOK
    chmod 755 "$ROOT/etc/svc.d/50-nines-agent"
    # Shared libraries (none for a +crt-static build): copy each to the path ldd names.
    if ldd "$AGENT" 2>&1 | grep -q "=>"; then
        ldd "$AGENT" | grep -oE '/[^ ]+' | sort -u | while read -r lib; do
            [ -f "$lib" ] || continue
            mkdir -p "$ROOT$(dirname "$lib")"
            cp -L "$lib" "$ROOT$lib"
        done
    fi
    say "agent: $AGENT -> /usr/bin/nines"
fi

# --- init ------------------------------------------------------------------------------------
cat >"$ROOT/init" <<'INIT'
#!/bin/busybox sh
# nines service-VM init (generated by scripts/build-vm-image.sh). PID 1: must never exit.
export PATH=/usr/bin:/usr/sbin:/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
dbg() { [ "${svcdebug:-0}" = 1 ] && echo "svc-init: $(cut -d' ' -f1 /proc/uptime) $*" >/dev/console; return 0; }
echo "SVC-INIT uptime=$(cut -d' ' -f1 /proc/uptime)" >/dev/console

for m in $(cat /lib/modules/order); do
    insmod "/lib/modules/$m" 2>/dev/console || echo "svc-init: insmod $m failed" >/dev/console
done
dbg "modules loaded"

: "${svcname:=vm}" "${svcip:=10.0.2.15/24}" "${svcgw:=10.0.2.2}" "${svcport:=80}"
export svcname svcip svcgw svcport svcvip svcvipowner svcdie svcpanic svcnoacpi svcdebug
BOOTID=$(cat /proc/sys/kernel/random/boot_id)
export BOOTID
hostname "$svcname"

ip link set lo up
# The network device appears once virtio_net has probed; wait a little for it.
n=0
while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 50 ]; do usleep 20000; n=$((n + 1)); done
if [ -e /sys/class/net/eth0 ]; then
    ip addr add "$svcip" dev eth0
    ip link set eth0 up
    ip route add default via "$svcgw" dev eth0 2>/dev/null
    # Gratuitous ARP: peers that probed before we were up drop their stale entries at once.
    arping -U -c 2 -w 1 -I eth0 -s "${svcip%/*}" "${svcip%/*}" >/dev/null 2>&1 &
    if [ -n "${svcvip:-}" ] && [ "${svcvipowner:-0}" = 1 ]; then
        ip addr add "$svcvip" dev eth0
        arping -U -c 2 -w 1 -I eth0 -s "${svcvip%/*}" "${svcvip%/*}" >/dev/null 2>&1 &
    fi
    NET=${svcip%/*}
else
    echo "svc-init: no eth0 (net=none)" >/dev/console
    NET=none
fi
dbg "network $NET"

# ACPI power button (QMP system_powerdown) -> power off; svcnoacpi=1 plays a guest that
# ignores it (to test the terminate ladder). Before the service: once the service answers,
# the VM counts as healthy and may be asked to stop at once, and a press that comes before
# acpid runs is lost.
[ "${svcnoacpi:-0}" = 1 ] || acpid -c /etc/acpi -l /dev/null 2>/dev/null

# The service.
echo "ok $svcname $BOOTID" >/www/index.html
httpd -p "$svcport" -h /www

# Hooks (e.g. the nines agent inside the guest).
for h in /etc/svc.d/*; do
    [ -x "$h" ] || continue
    dbg "hook $h"
    "$h" </dev/null >/dev/console 2>&1 &
done

echo 1 >/proc/sys/kernel/sysrq
if [ -n "${svcdie:-}" ]; then (sleep "$svcdie"; echo "SVC-DIE" >/dev/console; poweroff -f) & fi
if [ -n "${svcpanic:-}" ]; then (sleep "$svcpanic"; echo "SVC-PANIC" >/dev/console; echo c >/proc/sysrq-trigger) & fi

echo "SVC-READY name=$svcname ip=$NET boot_id=$BOOTID uptime=$(cut -d' ' -f1 /proc/uptime)" >/dev/console
# Stay PID 1 forever, reaping whatever is orphaned to us.
while :; do
    wait
    sleep 1
done
INIT
chmod 755 "$ROOT/init"

cat >"$ROOT/www/cgi-bin/health" <<'CGI'
#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
echo "healthy $svcname"
CGI
cat >"$ROOT/www/cgi-bin/takeover" <<'CGI'
#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
if [ -z "$svcvip" ]; then echo "no svcvip"; exit 0; fi
ip addr add "$svcvip" dev eth0 2>/dev/null
arping -U -c 2 -w 1 -I eth0 -s "${svcvip%/*}" "${svcvip%/*}" >/dev/null 2>&1 &
echo "took $svcvip"
CGI
cat >"$ROOT/etc/acpi/PWRF/00000080" <<'ACPI'
#!/bin/sh
echo "SVC-POWERDOWN" >/dev/console
sync
poweroff -f
ACPI
chmod 755 "$ROOT/www/cgi-bin/health" "$ROOT/www/cgi-bin/takeover" "$ROOT/etc/acpi/PWRF/00000080"

if [ -n "$OVERLAY" ]; then
    cp -a "$OVERLAY/." "$ROOT/"
    say "overlay: $OVERLAY"
fi

# --- pack ------------------------------------------------------------------------------------
# /dev/console and /dev/null must exist before devtmpfs is mounted (the kernel opens the
# console for init); cpio takes them from a list so no mknod (and no root) is needed here.
(
    cd "$ROOT"
    {
        find . -mindepth 1 | sed 's|^\./||' | sort
    } | cpio --quiet -o -H newc -R 0:0 >"$WORK/files.cpio"
)
# Append the device nodes with gen_init_cpio-like entries built by cpio from a tiny tree when we
# can mknod (root), else rely on devtmpfs (the kernel falls back to no console output early).
if mkdir -p "$WORK/devroot/dev" && mknod -m 600 "$WORK/devroot/dev/console" c 5 1 2>/dev/null &&
    mknod -m 666 "$WORK/devroot/dev/null" c 1 3 2>/dev/null; then
    (cd "$WORK/devroot" && printf 'dev/console\ndev/null\n' | cpio --quiet -o -H newc -R 0:0 >"$WORK/dev.cpio")
    cat "$WORK/dev.cpio" "$WORK/files.cpio" >"$WORK/all.cpio"
else
    say "warning: not root, /dev/console is not in the image (early console output is lost)"
    cp "$WORK/files.cpio" "$WORK/all.cpio"
fi
# Uncompressed: the guest kernel would decompress the archive under TCG at every boot, which
# costs more than QEMU copying the bigger file into guest RAM (measured on the 17 MB image with
# the agent: SVC-READY 1.60 s after spawn instead of 1.89 s, medians of 6 boots each; LZ4 1.77 s).
mv "$WORK/all.cpio" "$WORK/initramfs.cpio"

cp "$KERNEL" "$WORK/vmlinuz"
# The same kernel uncompressed: QEMU boots an ELF vmlinux through its PVH entry point, which
# skips the bzImage's self-decompression (measured: 0.35-0.8 s less to HTTP under TCG).
# Debian's kernels are LZ4; find the payload by its magic and decompress it (lz4 then complains
# about the bzImage's trailing bytes, so its status is not what tells success: the ELF magic is).
off=$(LC_ALL=C grep -aboP '\x02\x21\x4c\x18' "$KERNEL" | head -1 | cut -d: -f1 || true)
if [ -n "$off" ]; then
    tail -c +$((off + 1)) "$KERNEL" | lz4 -dc >"$WORK/vmlinux" 2>/dev/null || true
fi
if [ -s "$WORK/vmlinux" ] && [ "$(head -c 4 "$WORK/vmlinux" | od -An -c | tr -d ' ')" = '177ELF' ]; then
    mv -f "$WORK/vmlinux" "$OUT/vmlinux"
    say "vmlinux: uncompressed PVH kernel ($(stat -c %s "$OUT/vmlinux") bytes)"
else
    rm -f "$WORK/vmlinux" "$OUT/vmlinux"
    say "note: no LZ4 payload in $KERNEL, so no vmlinux (boot vmlinuz instead)"
fi
mv -f "$WORK/vmlinuz" "$OUT/vmlinuz"
mv -f "$WORK/initramfs.cpio" "$OUT/initramfs.cpio"
# An image built before the archive was uncompressed: its old archive would only mislead.
rm -f "$OUT/initramfs.cpio.gz"
echo "$STAMP" >"$OUT/stamp"
say "done: $OUT/vmlinuz ($(stat -c %s "$OUT/vmlinuz") bytes), $OUT/initramfs.cpio ($(stat -c %s "$OUT/initramfs.cpio") bytes)"
