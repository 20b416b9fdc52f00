# Shared helpers for the packaging scripts (sourced, not executed).
# SPDX-License-Identifier: GPL-2.0-or-later

# The repository root (this file lives in packaging/).
PRH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# prh_use_arch ARCH: the architecture the artifacts are for (x86_64 or
# aarch64), exported for the scripts this one runs, and its static target.
prh_use_arch() {
    case "$1" in
        x86_64 | aarch64) ;;
        *) printf '%s: architecture %s: only x86_64 and aarch64 are built\n' "$(basename "$0")" "$1" >&2; exit 1 ;;
    esac
    export PRH_ARCH=$1
    PRH_TARGET=$1-unknown-linux-musl
}
prh_use_arch "${PRH_ARCH:-x86_64}"
# prh_arch_option "$@": a script's leading `--arch ARCH`. Sets PRH_SHIFT to
# the number of arguments it took (2, or 0 without it), for `shift`.
prh_arch_option() {
    PRH_SHIFT=0
    [ "${1:-}" = --arch ] || return 0
    [ $# -ge 2 ] || { printf '%s: --arch needs x86_64 or aarch64\n' "$(basename "$0")" >&2; exit 1; }
    prh_use_arch "$2"
    PRH_SHIFT=2
}
# Debian's and the OCI names of the architecture.
prh_deb_arch() { case "$1" in x86_64) echo amd64 ;; aarch64) echo arm64 ;; esac; }
# Every architecture the packaging builds.
PRH_ARCHES=(x86_64 aarch64)
# Where packaging scripts keep downloaded tools (cargo-deb) and caches.
PRH_PKG_CACHE=${PRH_PKG_CACHE:-${PRH_TEST_CACHE:-/var/cache/pr-helper}/packaging}
# Pinned versions of the cargo tools packaging/setup.sh installs (each
# into $PRH_PKG_CACHE/NAME with cargo install --locked).
PRH_CARGO_AUDITABLE_VERSION=0.7.7
PRH_CARGO_CYCLONEDX_VERSION=0.5.9
# The crate version, from Cargo.toml's [package] section.
PRH_VERSION=$(sed -n '/^\[package\]/,/^\[/{s/^version *= *"\(.*\)"/\1/p}' "$PRH_ROOT/Cargo.toml" | head -n1)

prh_die() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

# prh_need CMD... : fail with a clear message when a prerequisite is missing.
prh_need() {
    local missing=()
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || missing+=("$c")
    done
    [ ${#missing[@]} -eq 0 ] ||
        prh_die "missing prerequisite(s): ${missing[*]} (run packaging/setup.sh)"
}

# prh_copy_tree DEST: the files of HEAD plus the working-tree changes
# (tracked files as they are now, untracked files that are not ignored),
# without .git and build output. This is what a commit of the current state
# would contain.
prh_copy_tree() {
    local dest=$1
    mkdir -p "$dest"
    (cd "$PRH_ROOT" &&
        git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' f; do
            [ -e "$f" ] || [ -L "$f" ] && printf '%s\0' "$f"
        done |
        tar --null --no-recursion -T - -cf - ) | tar -xf - -C "$dest"
}

# prh_remove_tree DIR: unmounts anything left mounted below DIR (an
# interrupted run's containers or loop mounts), then removes it.
prh_remove_tree() {
    local m
    for m in $(findmnt -rn -o TARGET | grep "^$1/" | sort -r); do umount -l "$m" || true; done
    rm -rf "$1"
}

# SOURCE_DATE_EPOCH: the time of the last commit unless given.
prh_source_date_epoch() {
    if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
        echo "$SOURCE_DATE_EPOCH"
    else
        git -C "$PRH_ROOT" log -1 --format=%ct 2>/dev/null || echo 0
    fi
}
# Container tools as they work on our machines (testbed README section 3):
# vfs storage (no overlay in nested setups), runc (crun fails on hybrid
# cgroups) and explicit ulimits (root lacks CAP_SYS_RESOURCE). The
# machine's container storage, unless PRH_CONTAINER_STORAGE names a
# directory of its own (packaging/test.sh: one in its fresh work directory,
# so no image of an earlier run is ever seen); its run-time state then goes
# to PRH_CONTAINER_RUNROOT, a short path (podman refuses a runroot longer
# than 50 characters; its sockets live there).
prh_storage_args() {
    [ -z "${PRH_CONTAINER_STORAGE:-}" ] ||
        printf '%s\n' --root "$PRH_CONTAINER_STORAGE" --runroot "$PRH_CONTAINER_RUNROOT/run"
}
prh_buildah() { buildah --storage-driver vfs $(prh_storage_args) "$@"; }
prh_podman() {
    podman --storage-driver vfs --runtime runc $(prh_storage_args) \
        ${PRH_CONTAINER_STORAGE:+--tmpdir "$PRH_CONTAINER_RUNROOT/tmp"} "$@"
}
PRH_PODMAN_ULIMITS=(--ulimit nofile=1024:20000 --ulimit nproc=1024:1024)

# The local base image of the multipath variant: no registry here, so a
# Debian root made by packaging/setup.sh with mmdebstrap from the Debian
# mirror, cached as a tarball named after what it was made from, and
# imported into the container storage in use when first needed. Debian 14
# (forky, testing) for multipath-tools 0.15: the reservation rework of 0.13
# and the pathname socket of 0.12 (README, "Which library"); Debian 13 has
# 0.11. mmdebstrap runs with SOURCE_DATE_EPOCH=$PRH_ROOT_EPOCH, so the same
# package set gives the same tarball; the image's SBOM lists that set.
# Release files of testing carry a Valid-Until a week ahead; a mirror that
# is a fixed copy of the archive (a snapshot, or this machine's) serves
# them expired, so that check is off (apt still verifies the signatures).
PRH_MPATH_BASE=${PRH_MPATH_BASE:-localhost/pr-helper-mpath-base:forky}
PRH_MPATH_BASE_MMDEBSTRAP=(--variant=minbase --include=multipath-tools,ca-certificates
    '--aptopt=Acquire::Check-Valid-Until "false"' forky)
PRH_ROOT_EPOCH=1767225600
# The systemd boot test's root: systemd as PID 1 (systemd-sysv, dbus),
# libnss-systemd (names of dynamic users), socat (a client that holds a
# connection).
PRH_NSPAWN_MMDEBSTRAP=(--variant=minbase --include=systemd,systemd-sysv,dbus,libnss-systemd,socat bookworm)
# The VM test bed's systemd boot (tests/testbed/build-systemd-root.sh): the
# multipath variant's unit under systemd as PID 1, with multipathd, udev
# and sg3-utils (Debian 12's, the library the RPM's Fedora peers are near).
PRH_SYSTEMD_MPATH_MMDEBSTRAP=(--variant=minbase --include=systemd,systemd-sysv,dbus,libnss-systemd,udev,multipath-tools,sg3-utils bookworm)
# prh_rootfs_tar NAME ARGS...: the cache path of the root made by
# `mmdebstrap ARGS...`: the name carries a hash of the arguments.
prh_rootfs_tar() {
    local name=$1
    shift
    printf '%s/%s-%s.tar\n' "$PRH_PKG_CACHE" "$name" "$(printf '%s\n' "$@" | sha256sum | cut -c1-16)"
}
PRH_MPATH_BASE_TAR=$(prh_rootfs_tar mpath-base "SOURCE_DATE_EPOCH=$PRH_ROOT_EPOCH" "${PRH_MPATH_BASE_MMDEBSTRAP[@]}")
PRH_NSPAWN_TAR=$(prh_rootfs_tar nspawn "${PRH_NSPAWN_MMDEBSTRAP[@]}")
PRH_SYSTEMD_MPATH_TAR=$(prh_rootfs_tar systemd-mpath "${PRH_SYSTEMD_MPATH_MMDEBSTRAP[@]}")
# prh_mpath_base: make sure $PRH_MPATH_BASE is in the storage in use (from
# the cached root; fails when setup has not made it).
prh_mpath_base() {
    prh_buildah inspect --type image "$PRH_MPATH_BASE" >/dev/null 2>&1 && return 0
    [ -f "$PRH_MPATH_BASE_TAR" ] || prh_die "$PRH_MPATH_BASE_TAR missing (run packaging/setup.sh)"
    local ctr
    ctr=$(prh_buildah from scratch)
    prh_buildah add "$ctr" "$PRH_MPATH_BASE_TAR" / >/dev/null
    prh_buildah commit --quiet --timestamp 0 "$ctr" "$PRH_MPATH_BASE" >/dev/null
    prh_buildah rm "$ctr" >/dev/null
}
