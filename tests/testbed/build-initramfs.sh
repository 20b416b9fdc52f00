#!/usr/bin/env bash
# Builds the test-bed initramfs.
#
#   build-initramfs.sh OUT.cpio.gz PR_HELPER_STATIC GUEST_RUNNER_STATIC [HOST_BINARY...]
#
# Contents: busybox, the kernel modules for LIO (tcm_loop + fileio), sd and
# sg, sg3-utils from the cache, pr-helper and the guest scenario runner
# (static musl binaries built from this tree), each HOST_BINARY (for example
# /usr/bin/qemu-pr-helper) with the shared libraries ldd finds for it, and
# tests/testbed/init as /init.
#
# With TESTBED_NESTED=1 it also bundles what a nested guest needs: QEMU
# (the host's qemu-system-x86_64 with its libraries and firmware), the kernel,
# and an inner initramfs (virtio-scsi, sd, sg, sg3-utils, busybox and
# tests/testbed/inner-init) as /boot/inner.cpio.gz; with TESTBED_MPATH_HELPER
# as well, also unstable's QEMU 11 in /sid (live migration of reservations).
#
# With TESTBED_ARCH=aarch64 it builds the arm64 guest's initramfs from the
# arm64 cache (tests/testbed/fetch-arm64.sh): the kernel modules, busybox,
# sg3-utils and glibc come from there, PR_HELPER and GUEST_RUNNER must be
# aarch64 static binaries, and each HOST_BINARY names a path inside the
# arm64 root (e.g. /usr/bin/qemu-pr-helper), whose libraries are found
# through their ELF DT_NEEDED entries (the host's ldd cannot load arm64
# programs). Neither TESTBED_NESTED nor TESTBED_MPATH_HELPER is supported
# there.
#
# With TESTBED_KERNEL=DIR (x86_64) the kernel modules come from DIR, a
# cache directory made by tests/testbed/fetch-kernels.sh (DIR/root with
# lib/modules, DIR/kernel-version), for booting that kernel instead of the
# 6.1 one; compressed modules (.ko.xz) are stored decompressed.
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: $0 OUT PR_HELPER GUEST_RUNNER [HOST_BINARY...]" >&2; exit 2; }
OUT=$1; PRH=$2; RUNNER=$3; shift 3
HERE=$(cd "$(dirname "$0")" && pwd)
ARCH=${TESTBED_ARCH:-x86_64}
BASE=${PRH_TEST_CACHE:-/var/cache/pr-helper}
# busybox of the amd64 cache makes the cpio archives (it runs on the host).
HOST_BUSYBOX=$BASE/testbed/root/bin/busybox
case $ARCH in
    x86_64) CACHE=$BASE/testbed MULTIARCH=x86_64-linux-gnu FETCH=fetch.sh ;;
    aarch64) CACHE=$BASE/testbed-arm64 MULTIARCH=aarch64-linux-gnu FETCH=fetch-arm64.sh
        [ "${TESTBED_NESTED:-0}" = 0 ] && [ -z "${TESTBED_MPATH_HELPER:-}" ] ||
            { echo "$0: the aarch64 test bed has no nested or multipath image" >&2; exit 2; } ;;
    *) echo "$0: TESTBED_ARCH must be x86_64 or aarch64, not $ARCH" >&2; exit 2 ;;
esac
ROOT=$CACHE/root
[ -f "$CACHE/root.done" ] && [ -x "$HOST_BUSYBOX" ] || { echo "test bed cache missing: run tests/run setup (tests/testbed/$FETCH)" >&2; exit 1; }
KCACHE=${TESTBED_KERNEL:-$CACHE}
[ -f "$KCACHE/root.done" ] || { echo "kernel cache $KCACHE missing: run tests/run setup (tests/testbed/fetch-kernels.sh)" >&2; exit 1; }
KVER=$(cat "$KCACHE/kernel-version")
MODDIR=$KCACHE/root/lib/modules/$KVER

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
I=$WORK/initramfs
mkdir -p "$I"/{bin,sbin,etc,proc,sys,dev,tmp,run,lib/modules,usr/bin,usr/sbin,usr/lib/x86_64-linux-gnu,lib64,var/tmp}

cp "$ROOT/bin/busybox" "$I/bin/busybox"
cp "$HERE/init" "$I/init"
chmod 755 "$I/init"
install -m 755 "$PRH" "$I/bin/pr-helper"
install -m 755 "$RUNNER" "$I/bin/testbed-guest"

# Kernel modules, dependencies first (resolved through modules.dep).
WANTED="configfs scsi_mod crct10dif_generic crc64_rocksoft_generic sd_mod sg target_core_mod target_core_file target_core_iblock tcm_loop dm_mod dm_multipath dm_round_robin dm_service_time dm_queue_length scsi_dh_alua nvme ${TESTBED_EXTRA_MODULES:-}"
# Module name (dashes as underscores) -> path, and path -> dependencies.
declare -A path_of=() deps_of=()
while IFS= read -r line; do
    p=${line%%:*}
    n=$(basename "${p%.xz}" .ko)
    path_of[${n//-/_}]=$p
    deps_of[$p]=${line#*:}
done < "$MODDIR/modules.dep"

# add_modules DEST_ROOT MODULE... : copies the modules and their
# dependencies into DEST_ROOT/lib/modules and lists them, in load order, in
# DEST_ROOT/etc/modules-order.
add_modules() {
    local dest=$1 m p
    shift
    declare -A seen=()
    local order=()
    resolve() {
        local name=${1//-/_} path d
        path=${path_of[$name]:-}
        if [ -z "$path" ]; then
            grep -q "/$1.ko" "$MODDIR/modules.builtin" 2>/dev/null && return 0
            if [ -f "$MODDIR/modules.builtin" ]; then
                echo "module $1 not found in modules.dep" >&2
                exit 1
            fi
            # A kernel package without modules.builtin (unstable's): a
            # module it does not have is built in or gone; the guest's
            # suites fail if it was needed.
            echo "$0: module $1 not in $KVER's modules.dep (built in?)" >&2
            return 0
        fi
        [ -n "${seen[$path]:-}" ] && return 0
        seen[$path]=1
        for d in ${deps_of[$path]}; do
            resolve "$(basename "${d%.xz}" .ko)"
        done
        order+=("$path")
    }
    for m in "$@"; do resolve "$m"; done
    mkdir -p "$dest/etc"
    : > "$dest/etc/modules-order"
    for p in "${order[@]}"; do
        mkdir -p "$dest/lib/modules/$(dirname "$p")"
        case $p in
            *.ko.xz)
                xz -dc "$MODDIR/$p" > "$dest/lib/modules/${p%.xz}"
                echo "/lib/modules/${p%.xz}" >> "$dest/etc/modules-order" ;;
            *)
                cp "$MODDIR/$p" "$dest/lib/modules/$p"
                echo "/lib/modules/$p" >> "$dest/etc/modules-order" ;;
        esac
    done
    MODULE_COUNT=${#order[@]}
}
# The multipath variants also mount the multipath image's root filesystem
# (ext4 on a virtio disk: tests/testbed/build-pod-root.sh) for the pod.
# ext4 asks the crypto API for crc32c when it mounts, which loads no
# module by itself here: the generic one (crc32c-cryptoapi from 7.x).
if [ -n "${TESTBED_MPATH_HELPER:-}" ]; then
    WANTED="$WANTED virtio_pci virtio_blk ext4"
    for m in crc32c_generic crc32c-cryptoapi; do
        ! grep -qE "/$m\.ko(\.xz)?:" "$MODDIR/modules.dep" || WANTED="$WANTED $m"
    done
fi
add_modules "$I" $WANTED

# aarch64: the libraries BINARY needs, recursively (DT_NEEDED entries,
# found in the arm64 root's library directories).
needed_arm64() {
    local todo=("$1") seen=" " f lib path
    while [ ${#todo[@]} -gt 0 ]; do
        f=${todo[0]}
        todo=("${todo[@]:1}")
        for lib in $(readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
            case $seen in *" $lib "*) continue ;; esac
            seen="$seen$lib "
            path=""
            for d in "$ROOT/lib/$MULTIARCH" "$ROOT/usr/lib/$MULTIARCH"; do
                [ -e "$d/$lib" ] && { path=$d/$lib; break; }
            done
            [ -n "$path" ] || { echo "$0: $lib (needed by $f) is not in the arm64 cache" >&2; exit 1; }
            echo "$path"
            todo+=("$path")
        done
    done
}

# glibc programs with their libraries: copy_with_libs ROOTDIR BINARY DEST
copy_with_libs() {
    if [ "$ARCH" = aarch64 ]; then
        local root=$1 bin=$2 dest=$3 lib libs
        install -D -m 755 "$bin" "$root$dest"
        mkdir -p "$root/usr/lib/$MULTIARCH" "$root/lib"
        libs=$(needed_arm64 "$bin")
        for lib in $libs; do
            cp -L "$lib" "$root/usr/lib/$MULTIARCH/$(basename "$lib")"
        done
        cp -L "$ROOT/lib/ld-linux-aarch64.so.1" "$root/lib/"
        [ -e "$root/lib/$MULTIARCH" ] || ln -s "../usr/lib/$MULTIARCH" "$root/lib/$MULTIARCH"
        return 0
    fi
    local root=$1 bin=$2 dest=$3 lib
    install -D -m 755 "$bin" "$root$dest"
    mkdir -p "$root/usr/lib/x86_64-linux-gnu" "$root/lib64"
    LD_LIBRARY_PATH=$ROOT/usr/lib/x86_64-linux-gnu ldd "$bin" | awk '/=>/ {print $3} /^\t\/lib64/ {print $1}' |
        while read -r lib; do
            [ -n "$lib" ] || continue
            cp -L "$lib" "$root/usr/lib/x86_64-linux-gnu/$(basename "$lib")"
        done
    cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/"
    [ -e "$root/lib/x86_64-linux-gnu" ] || { mkdir -p "$root/lib"; ln -s ../usr/lib/x86_64-linux-gnu "$root/lib/x86_64-linux-gnu"; }
}
SG_TOOLS="sg_persist sg_raw sg_turs sg_inq sg_readcap"
for tool in $SG_TOOLS; do
    copy_with_libs "$I" "$ROOT/usr/bin/$tool" "/usr/bin/$tool"
done
for bin in "$@"; do
    if [ "$ARCH" = aarch64 ]; then
        copy_with_libs "$I" "$ROOT$bin" "$bin"
    else
        copy_with_libs "$I" "$bin" "$bin"
    fi
done

if [ -n "${TESTBED_MPATH_HELPER:-}" ]; then
    # Multipath: pr-helper built with --features mpath (glibc, links
    # libmpathpersist), multipath-tools with its plugins, libgcc_s (thread
    # cancellation in multipathd).
    copy_with_libs "$I" "$TESTBED_MPATH_HELPER" /bin/pr-helper-mpath
    for bin in /sbin/multipathd /sbin/multipath /sbin/mpathpersist; do
        [ -x "$bin" ] || { echo "$bin missing: install multipath-tools (tests/run setup)" >&2; exit 1; }
        copy_with_libs "$I" "$bin" "$bin"
    done
    mkdir -p "$I/lib/multipath"
    for plugin in /lib/multipath/*.so; do
        copy_with_libs "$I" "$plugin" "/lib/multipath/$(basename "$plugin")"
    done
    cp -L /lib/x86_64-linux-gnu/libgcc_s.so.1 "$I/usr/lib/x86_64-linux-gnu/"
    # util-linux's unshare and the mount point of the multipath image's root
    # (the KubeVirt pod: tests/testbed/guest/mpath_pod.rs).
    copy_with_libs "$I" /usr/bin/unshare /usr/bin/unshare
    mkdir -p "$I/pod"

    # multipath-tools from Debian unstable (the current libmpathpersist) in
    # its own root, /sid, run with chroot: its programs and plugins, and
    # the libraries they and pr-helper-mpath need, resolved by unstable's
    # own loader. pr-helper-mpath itself is bind-mounted in by the guest.
    SID=${PRH_TEST_CACHE:-/var/cache/pr-helper}/testbed-sid/root
    [ -f "$SID/../root.done" ] || { echo "unstable root missing: run tests/run setup (tests/testbed/fetch-sid.sh)" >&2; exit 1; }
    S=$I/sid
    mkdir -p "$S"/{dev,proc,sys,run,tmp,etc/multipath,usr/lib/x86_64-linux-gnu,usr/lib64,usr/sbin}
    for d in lib lib64 bin sbin; do ln -s "usr/$d" "$S/$d"; done
    cp -a "$SID/usr/sbin/." "$S/usr/sbin/"
    cp -a "$SID/usr/lib/multipath" "$S/usr/lib/"
    cp -L "$SID/usr/lib64/ld-linux-x86-64.so.2" "$S/usr/lib64/"
    sid_list() {
        "$SID/usr/lib64/ld-linux-x86-64.so.2" --library-path \
            "$SID/usr/lib/x86_64-linux-gnu:$SID/usr/lib" --list "$1" |
            awk '/=> \// {print $3}'
    }
    # copy_sid BINARY: BINARY's libraries from the unstable root into /sid
    # (and BINARY itself, when it is in the unstable root).
    copy_sid() {
        local lib dest
        case $1 in "$SID"/*) [ -e "$S${1#"$SID"}" ] || install -D -m 755 "$1" "$S${1#"$SID"}" ;; esac
        for lib in $(sid_list "$1"); do
            dest=$S${lib#"$SID"}
            [ -e "$dest" ] || { mkdir -p "$(dirname "$dest")"; cp -L "$lib" "$dest"; }
        done
    }
    for bin in "$SID"/usr/sbin/* "$SID"/usr/lib/multipath/*.so "$TESTBED_MPATH_HELPER"; do
        [ -f "$bin" ] && copy_sid "$bin"
    done
    cp -L "$SID/usr/lib/x86_64-linux-gnu/libgcc_s.so.1" "$S/usr/lib/x86_64-linux-gnu/"
    touch "$S/pr-helper-mpath"
    cp "$SID/../multipath-tools-version" "$S/multipath-tools-version"
fi

if [ "${TESTBED_NESTED:-0}" = 1 ]; then
    # The inner guest: busybox, sg3-utils, virtio-scsi.
    J=$WORK/inner
    mkdir -p "$J"/{bin,sbin,etc,proc,sys,dev,tmp,usr/bin,usr/sbin}
    cp "$ROOT/bin/busybox" "$J/bin/busybox"
    install -m 755 "$HERE/inner-init" "$J/init"
    add_modules "$J" scsi_mod crct10dif_generic crc64_rocksoft_generic sd_mod sg virtio_pci virtio_scsi
    for tool in $SG_TOOLS; do
        copy_with_libs "$J" "$ROOT/usr/bin/$tool" "/usr/bin/$tool"
    done
    mkdir -p "$I/boot"
    (cd "$J" && find . | "$HOST_BUSYBOX" cpio -o -H newc 2>/dev/null | gzip -1) > "$I/boot/inner.cpio.gz"
    cp "$ROOT/boot/vmlinuz-$KVER" "$I/boot/vmlinuz"
    # QEMU for the nested guest, with the firmware a -kernel boot loads.
    copy_with_libs "$I" /usr/bin/qemu-system-x86_64 /usr/bin/qemu-system-x86_64
    mkdir -p "$I/usr/share/qemu" "$I/usr/share/seabios"
    cp -L /usr/share/qemu/linuxboot_dma.bin /usr/share/qemu/kvmvapic.bin "$I/usr/share/qemu/"
    cp -L /usr/share/seabios/bios-256k.bin "$I/usr/share/seabios/"
    if [ -n "${TESTBED_MPATH_HELPER:-}" ]; then
        # And QEMU 11 from the unstable root (scsi-block's migrate-pr, the
        # live migration of reservations), run there with chroot; the guest
        # bind-mounts /boot into it.
        copy_sid "$SID/usr/bin/qemu-system-x86_64"
        mkdir -p "$S/usr/share/qemu" "$S/usr/share/seabios" "$S/boot"
        cp -L "$SID/usr/share/qemu/linuxboot_dma.bin" "$SID/usr/share/qemu/kvmvapic.bin" "$S/usr/share/qemu/"
        cp -L "$SID/usr/share/seabios/bios-256k.bin" "$S/usr/share/seabios/"
        cp "$SID/../qemu-version" "$S/qemu-version"
    fi
fi
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$I/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$I/etc/group"

(cd "$I" && find . | "$HOST_BUSYBOX" cpio -o -H newc 2>/dev/null | gzip -1) > "$OUT"
echo "initramfs $OUT: $(du -h "$OUT" | cut -f1), kernel $KVER"
