#!/usr/bin/env bash
# Downloads and unpacks what the VM test bed needs into $PRH_TEST_CACHE/testbed:
# Debian's 6.1 kernel (with modules.dep generated), busybox-static,
# sg3-utils and its library, kmod. Idempotent: does nothing when the cache
# holds the candidate versions (exact file names, SHA256 checked); the
# unpacked root is stamped with those file names. Run by `tests/run setup`;
# the tests never download.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${PRH_TEST_CACHE:-/var/cache/pr-helper}/testbed
mkdir -p "$CACHE/debs"
cd "$CACHE/debs"

# shellcheck source=tests/testbed/apt.sh
. "$HERE/apt.sh"
kpkg=$(kernel_package)
PACKAGES=("$kpkg" busybox-static sg3-utils libsgutils2-1.46-2 kmod)

# The exact files of the candidate versions, each checked against its
# SHA256 (fetch_candidate).
DEBS=()
for p in "${PACKAGES[@]}"; do
    DEBS+=("$(fetch_candidate . "$p")")
done

ROOT=$CACHE/root
if unpack_root "$CACHE" "${DEBS[*]}" "${DEBS[@]}"; then
    kver=$(ls "$ROOT/lib/modules" | head -1)
    # The package's postinst would run depmod; run the unpacked kmod's.
    (exec -a depmod "$ROOT/bin/kmod" -b "$ROOT" "$kver")
    echo "$kver" > "$CACHE/kernel-version"
    mark_root "$CACHE" "${DEBS[*]}"
fi
echo "test bed cache ready: $CACHE (kernel $(cat "$CACHE/kernel-version"))"
