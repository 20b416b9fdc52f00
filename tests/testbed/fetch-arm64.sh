#!/usr/bin/env bash
# Downloads and unpacks what the aarch64 VM test bed needs into
# $PRH_TEST_CACHE/testbed-arm64: Debian's 6.1 arm64 kernel (modules.dep
# generated with the amd64 test bed's kmod, `depmod -b`), busybox-static,
# sg3-utils with libsgutils2, dmsetup, qemu-pr-helper (qemu-system-common at
# the host's version, from bookworm-backports like the host's) and the arm64
# libraries of every guest program (glibc and the rest: the packages that
# hold the host's copies of the libraries `ldd` finds for the amd64
# programs). Idempotent: does nothing when the cache is complete. Run by
# `tests/run setup` after tests/testbed/fetch.sh; the tests never download.
#
# The host's apt is not touched (no `dpkg --add-architecture`): the arm64
# package indexes live in a private apt state directory under the cache,
# and packages are fetched with `apt-get download` and unpacked with
# `dpkg -x`.
set -euo pipefail
BASE=${PRH_TEST_CACHE:-/var/cache/pr-helper}
CACHE=$BASE/testbed-arm64
AMD64_ROOT=$BASE/testbed/root
[ -x "$AMD64_ROOT/bin/kmod" ] || { echo "fetch-arm64.sh: run tests/testbed/fetch.sh first (its kmod runs depmod here)" >&2; exit 1; }
QEMU_VERSION=$(dpkg-query -W -f='${Version}' qemu-system-common 2>/dev/null) ||
    { echo "fetch-arm64.sh: qemu-system-common is not installed (tests/run setup installs it)" >&2; exit 1; }
mkdir -p "$CACHE/debs"

# A private apt for arm64: indexes, cache and (empty) dpkg status of its own.
APT=$CACHE/apt
mkdir -p "$APT/state/lists/partial" "$APT/cache/archives/partial" "$APT/sources.list.d" "$APT/preferences.d"
: > "$APT/status"
cat > "$APT/sources.list" <<'EOF'
deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-updates main
deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main
EOF
apt_arm64() {
    apt-get -q \
        -o APT::Architecture=arm64 -o APT::Architectures=arm64 \
        -o Dir::Etc::SourceList="$APT/sources.list" -o Dir::Etc::SourceParts="$APT/sources.list.d" \
        -o Dir::Etc::Preferences="$APT/preferences" -o Dir::Etc::PreferencesParts="$APT/preferences.d" \
        -o Dir::State="$APT/state" -o Dir::State::status="$APT/status" -o Dir::Cache="$APT/cache" \
        -o Debug::NoLocking=1 -o APT::Sandbox::User=root "$@"
}
apt_cache_arm64() {
    apt-cache \
        -o APT::Architecture=arm64 -o APT::Architectures=arm64 \
        -o Dir::Etc::SourceList="$APT/sources.list" -o Dir::Etc::SourceParts="$APT/sources.list.d" \
        -o Dir::Etc::Preferences="$APT/preferences" -o Dir::Etc::PreferencesParts="$APT/preferences.d" \
        -o Dir::State="$APT/state" -o Dir::State::status="$APT/status" -o Dir::Cache="$APT/cache" "$@"
}

# The packages holding the (amd64) libraries of the host programs the guest
# runs; the arm64 packages have the same names.
lib_packages() {
    local bin lib
    for bin in "$@"; do
        LD_LIBRARY_PATH=$AMD64_ROOT/usr/lib/x86_64-linux-gnu ldd "$bin" |
            awk '/=>/ {print $3} /^\t\/lib64/ {print $1}'
    done | sort -u | while read -r lib; do
        [ -n "$lib" ] || continue
        case $lib in
            "$AMD64_ROOT"/*) echo libsgutils2-1.46-2; continue ;;
            /lib64/ld-linux-x86-64.so.2) echo libc6; continue ;;
        esac
        dpkg -S "*/x86_64-linux-gnu/$(basename "$lib")" | cut -d: -f1
    done | sort -u
}

# What the unpacked root was made from; a new qemu-system-common on the
# host (its qemu-pr-helper is the reference in the guest) or a change of
# this script's layout makes it again.
STAMP="layout 1, qemu-system-common $QEMU_VERSION"
if [ "$(head -1 "$CACHE/root.done" 2>/dev/null)" != "$STAMP" ]; then
    rm -f "$CACHE/root.done" "$CACHE"/debs/qemu-system-common_*_arm64.deb
    apt_arm64 update
    kpkg=$(apt_cache_arm64 depends linux-image-arm64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    [ -n "$kpkg" ] || { echo "fetch-arm64.sh: cannot resolve the kernel package of linux-image-arm64" >&2; exit 1; }
    mapfile -t libs < <(lib_packages /usr/bin/qemu-pr-helper /usr/sbin/dmsetup "$AMD64_ROOT/usr/bin/sg_persist")
    mapfile -t PACKAGES < <(printf '%s\n' "$kpkg" busybox-static sg3-utils dmsetup "qemu-system-common=$QEMU_VERSION" "${libs[@]}" | awk '!seen[$0]++')
    echo "arm64 packages: ${PACKAGES[*]}"
    cd "$CACHE/debs"
    missing=()
    for p in "${PACKAGES[@]}"; do
        name=${p%%=*}
        version=${p#"$name"}
        ls "${name}"_*_arm64.deb >/dev/null 2>&1 || missing+=("$name:arm64$version")
    done
    [ ${#missing[@]} -eq 0 ] || apt_arm64 download "${missing[@]}"
    ROOT=$CACHE/root
    rm -rf "$ROOT"
    mkdir -p "$ROOT"
    for p in "${PACKAGES[@]}"; do
        name=${p%%=*}
        dpkg -x "$(ls "${name}"_*_arm64.deb | head -1)" "$ROOT"
    done
    kver=$(ls "$ROOT/lib/modules" | head -1)
    # The package's postinst would run depmod; run the amd64 test bed's
    # kmod on the arm64 tree (module files are data to it).
    (exec -a depmod "$AMD64_ROOT/bin/kmod" -b "$ROOT" "$kver")
    [ -s "$ROOT/lib/modules/$kver/modules.dep" ] || { echo "fetch-arm64.sh: depmod made no modules.dep" >&2; exit 1; }
    echo "$kver" > "$CACHE/kernel-version"
    printf '%s\n%s\n' "$STAMP" "${PACKAGES[*]}" > "$CACHE/root.done"
fi
echo "aarch64 test bed cache ready: $CACHE (kernel $(cat "$CACHE/kernel-version"))"
