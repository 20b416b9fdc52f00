#!/usr/bin/env bash
# Downloads and unpacks what the VM test bed needs into $PRH_TEST_CACHE/testbed:
# Debian's 6.1 kernel (with modules.dep generated), busybox-static,
# sg3-utils and its library, kmod. Idempotent: does nothing when the cache
# is complete. Run by `tests/run setup`; the tests never download.
set -euo pipefail
CACHE=${PRH_TEST_CACHE:-/var/cache/pr-helper}/testbed
mkdir -p "$CACHE/debs"
cd "$CACHE/debs"

kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$kpkg" ] || { echo "fetch.sh: cannot resolve the kernel package of linux-image-amd64" >&2; exit 1; }
PACKAGES=("$kpkg" busybox-static sg3-utils libsgutils2-1.46-2 kmod)

for p in "${PACKAGES[@]}"; do
    ls "${p}"_*.deb >/dev/null 2>&1 || apt-get download -q "$p"
done

ROOT=$CACHE/root
if [ ! -f "$CACHE/root.done" ] || [ "$(cat "$CACHE/root.done")" != "${PACKAGES[*]}" ]; then
    rm -rf "$ROOT"
    mkdir -p "$ROOT"
    for p in "${PACKAGES[@]}"; do
        dpkg -x "$(ls "${p}"_*.deb | head -1)" "$ROOT"
    done
    kver=$(ls "$ROOT/lib/modules" | head -1)
    # The package's postinst would run depmod; run the unpacked kmod's.
    (exec -a depmod "$ROOT/bin/kmod" -b "$ROOT" "$kver")
    echo "$kver" > "$CACHE/kernel-version"
    echo "${PACKAGES[*]}" > "$CACHE/root.done"
fi
echo "test bed cache ready: $CACHE (kernel $(cat "$CACHE/kernel-version"))"
