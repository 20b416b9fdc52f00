#!/usr/bin/env bash
# Downloads multipath-tools from Debian unstable (0.15.1 at the time of
# writing: the reservation code reworked in 0.13.0) and QEMU (11.1 at the
# time of writing: scsi-block's migrate-pr) with the libraries they need,
# and unpacks them into $PRH_TEST_CACHE/testbed-sid/root: the root the
# multipath test bed runs the current libmpathpersist and QEMU 11 from (in
# a chroot, next to bookworm's 0.9.4 and QEMU 10). unstable's binaries need unstable's
# glibc, so they get their own root rather than being mixed into bookworm's.
#
# apt runs with a private state directory and sources list (the host's apt
# state is not touched) and an empty dpkg status, so `install -d` downloads
# the whole dependency closure; only the libraries and multipath-tools are
# unpacked. Idempotent: nothing is downloaded or unpacked again while the
# candidate files are the ones already there (the root is stamped with
# their names). Run by `tests/run setup`; the tests never download.
set -euo pipefail
CACHE=${PRH_TEST_CACHE:-/var/cache/pr-helper}/testbed-sid
# shellcheck source=tests/testbed/apt.sh
. "$(dirname "$0")/apt.sh"
apt_private "$CACHE" sid
OPTS=("${APT_OPTS[@]}")
APT=(apt-get -q "${OPTS[@]}")
cd "$CACHE"
"${APT[@]}" install -d -y --no-install-recommends multipath-tools qemu-system-x86 >/dev/null

# What the root holds: multipath-tools, QEMU with the firmware a -kernel
# boot loads, and every library package of the closure (not systemd, udev
# or initramfs-tools, which multipath-tools also pulls in).
DEBS=()
for f in cache/archives/*.deb; do
    case $(basename "$f") in
        multipath-tools_* | qemu-system-x86_* | qemu-system-data_* | seabios_* | lib* | zlib1g_*)
            DEBS+=("$f") ;;
    esac
done
# Older versions left by an earlier run are not unpacked: only the files
# the current candidates name.
declare -A candidate=()
PKGS=()
for f in "${DEBS[@]}"; do PKGS+=("$(dpkg-deb -f "$f" Package)"); done
while read -r pkg ver; do
    candidate[$pkg]=$ver
done < <(apt-cache "${OPTS[@]}" policy "${PKGS[@]}" |
    awk '/^[^ ].*:$/ {p=substr($0, 1, length($0)-1)} /Candidate:/ {print p, $2}')
CURRENT=()
for f in "${DEBS[@]}"; do
    read -r pkg ver < <(dpkg-deb -f "$f" Package Version | awk '{print $2}' | paste -sd' ')
    if [ "$ver" = "${candidate[$pkg]:-}" ]; then CURRENT+=("$f"); else rm -f "$f"; fi
done
stamp=$(printf '%s\n' "${CURRENT[@]}" | sort | tr '\n' ' ')
ROOT=$CACHE/root
if unpack_root "$CACHE" "$stamp" "${CURRENT[@]}"; then
    # The merged-/usr links base-files would make.
    for d in lib lib64 bin sbin; do
        [ -e "$ROOT/$d" ] || ln -s "usr/$d" "$ROOT/$d"
    done
    dpkg-deb -f cache/archives/multipath-tools_*.deb Version > "$CACHE/multipath-tools-version"
    dpkg-deb -f cache/archives/qemu-system-x86_*.deb Version > "$CACHE/qemu-version"
    mark_root "$CACHE" "$stamp"
fi
echo "unstable root ready: $ROOT (multipath-tools $(cat "$CACHE/multipath-tools-version"), QEMU $(cat "$CACHE/qemu-version"))"
