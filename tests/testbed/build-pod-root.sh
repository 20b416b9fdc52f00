#!/bin/bash
# The multipath image's root filesystem for the VM test bed's pod: the
# image's base tarball ($PRH_MPATH_BASE_TAR, made by packaging/setup.sh:
# Debian 14 with multipath-tools 0.15.1, the packages of
# packaging/mpath-image/packages.lock) with the image's own files on top
# (packaging/mpath-image/layout.sh), as packaging/build-image.sh --mpath
# makes the image, in an ext4 file system the guest mounts read-only from a
# virtio disk (/dev/vda). Made without mounting (mkfs.ext4 -d).
#
#   tests/testbed/build-pod-root.sh IMAGE BINARY
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 IMAGE BINARY" >&2; exit 1; }
img=$1 bin=$2
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../../packaging/lib.sh"
[ -f "$PRH_MPATH_BASE_TAR" ] || prh_die "$PRH_MPATH_BASE_TAR missing (run tests/run setup)"
dir=$(mktemp -d "${TMPDIR:-/var/tmp}/prh-pod-root.XXXXXX")
trap 'rm -rf "$dir"' EXIT
tar -xf "$PRH_MPATH_BASE_TAR" -C "$dir" --numeric-owner
"$here/../../packaging/mpath-image/layout.sh" "$bin" "$dir"
# Room for the files and their inodes, and a little over.
mb=$(( $(du -sm "$dir" | cut -f1) * 5 / 4 + 32 ))
rm -f "$img.tmp"
mkfs.ext4 -q -F -L prh-pod -d "$dir" "$img.tmp" "${mb}M"
mv "$img.tmp" "$img"
