#!/usr/bin/env bash
# Downloads and unpacks what the VM test bed needs into $PRH_TEST_CACHE/testbed:
# Debian's 6.1 kernel (with modules.dep generated), busybox-static,
# sg3-utils and its library, kmod. Idempotent: does nothing when the cache
# holds the candidate versions (exact file names, SHA256 checked); the
# unpacked root is stamped with those file names. Run by `tests/run setup`;
# the tests never download.
set -euo pipefail
CACHE=${PRH_TEST_CACHE:-/var/cache/pr-helper}/testbed
mkdir -p "$CACHE/debs"
cd "$CACHE/debs"

kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$kpkg" ] || { echo "fetch.sh: cannot resolve the kernel package of linux-image-amd64" >&2; exit 1; }
PACKAGES=("$kpkg" busybox-static sg3-utils libsgutils2-1.46-2 kmod)

# The exact files of the candidate versions (name_version_arch.deb, as
# apt names them), each checked against its SHA256: a new version in the
# archive is a new file, never an old one reused.
DEBS=()
# apt-get download --print-uris prints nothing for a file already in the
# current directory: ask from an empty one.
EMPTY=$(mktemp -d)
trap 'rmdir "$EMPTY"' EXIT
for p in "${PACKAGES[@]}"; do
    read -r _ file _ sum < <(cd "$EMPTY" && apt-get download --print-uris "$p" | head -1) || true
    [ -n "${file:-}" ] || { echo "fetch.sh: apt knows no candidate for $p" >&2; exit 1; }
    if [ ! -f "$file" ] || [ "SHA256:$(sha256sum "$file" | cut -d' ' -f1)" != "$sum" ]; then
        rm -f "${p}"_*.deb
        apt-get download -q "$p"
    fi
    DEBS+=("$file")
done

ROOT=$CACHE/root
if [ ! -f "$CACHE/root.done" ] || [ "$(cat "$CACHE/root.done")" != "${DEBS[*]}" ]; then
    rm -rf "$ROOT"
    mkdir -p "$ROOT"
    for f in "${DEBS[@]}"; do
        dpkg -x "$f" "$ROOT"
    done
    kver=$(ls "$ROOT/lib/modules" | head -1)
    # The package's postinst would run depmod; run the unpacked kmod's.
    (exec -a depmod "$ROOT/bin/kmod" -b "$ROOT" "$kver")
    echo "$kver" > "$CACHE/kernel-version"
    echo "${DEBS[*]}" > "$CACHE/root.done"
fi
echo "test bed cache ready: $CACHE (kernel $(cat "$CACHE/kernel-version"))"
