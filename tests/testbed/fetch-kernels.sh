#!/usr/bin/env bash
# Downloads the current Debian kernels for the VM test bed: Debian 13's
# (trixie, 6.12) and unstable's newest, each the package linux-image-amd64
# depends on in that suite, and unpacks each (kernel and modules) into
# $PRH_TEST_CACHE/testbed-kernel-SUITE/root, with modules.dep made by the
# host's depmod. The test bed's 6.1 kernel (fetch.sh) stays the main one;
# these boot the same suites on kernels with Landlock ABI 6 and later.
#
# Private apt state per suite (tests/testbed/apt.sh); idempotent: nothing
# is downloaded or unpacked again while the candidate files are the ones
# already there (SHA256 checked). Run by `tests/run setup`; the tests
# never download.
set -euo pipefail
# shellcheck source=tests/testbed/apt.sh
. "$(dirname "$0")/apt.sh"
for suite in trixie sid; do
    CACHE=${PRH_TEST_CACHE:-/var/cache/pr-helper}/testbed-kernel-$suite
    apt_private "$CACHE" "$suite"
    kpkg=$(kernel_package "${APT_OPTS[@]}")
    # Newer suites split the image package: its files are in a
    # linux-binary-* (or linux-modules-*) package it depends on.
    pkgs=("$kpkg")
    while read -r dep; do
        pkgs+=("$dep")
    done < <(apt-cache "${APT_OPTS[@]}" depends "$kpkg" |
        awk '/Depends: linux-(binary|modules)-[0-9]/ {print $2}')
    debs=$CACHE/cache/archives
    files=()
    for p in "${pkgs[@]}"; do
        files+=("$(fetch_candidate "$debs" "$p" "${APT_OPTS[@]}")")
    done
    ROOT=$CACHE/root
    if unpack_root "$CACHE" "${files[*]}" "${files[@]/#/$debs/}"; then
        [ -e "$ROOT/lib" ] || ln -s usr/lib "$ROOT/lib"
        kver=$(ls "$ROOT/lib/modules" | head -1)
        # /boot/vmlinuz-KVER, or (unstable's split packages) in the
        # modules directory.
        image=
        for f in "boot/vmlinuz-$kver" "lib/modules/$kver/vmlinuz"; do
            [ -n "$kver" ] && [ -f "$ROOT/$f" ] && { image=$ROOT/$f; break; }
        done
        [ -n "$image" ] || { echo "fetch-kernels.sh: no kernel in ${files[*]}" >&2; exit 1; }
        depmod -b "$ROOT" "$kver"
        echo "$image" > "$CACHE/kernel-image"
        echo "$kver" > "$CACHE/kernel-version"
        mark_root "$CACHE" "${files[*]}"
    fi
    echo "$suite kernel ready: $(cat "$CACHE/kernel-image")"
done
