#!/bin/bash
# The multipath image's own files, laid out under DIR: what
# packaging/build-image.sh --mpath copies on top of its base
# ($PRH_MPATH_BASE, from $PRH_MPATH_BASE_TAR), and what the VM test bed's
# pod root (tests/testbed/build-pod-root.sh) puts on top of the same base
# tarball, so the pod there runs the image's root filesystem.
#
#   packaging/mpath-image/layout.sh BINARY DIR
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 BINARY DIR" >&2; exit 1; }
bin=$1 dir=$2
root=$(cd "$(dirname "$0")/../.." && pwd)
install -D -m 0755 "$bin" "$dir/usr/bin/pr-helper"
install -D -m 0644 "$root/LICENSE" "$dir/usr/share/licenses/pr-helper/LICENSE"
install -D -m 0644 "$root/packaging/licenses/THIRD-PARTY-NOTICES" \
    "$dir/usr/share/licenses/pr-helper/THIRD-PARTY-NOTICES"
install -D -m 0644 "$root/packaging/licenses/pr-helper.cdx.json" \
    "$dir/usr/share/doc/pr-helper/pr-helper.cdx.json"
install -d -m 0755 "$dir/run/pr-helper"
install -D -m 0755 "$root/packaging/mpath-image/entrypoint.sh" "$dir/entrypoint.sh"
install -D -m 0644 "$root/packaging/mpath-image/multipath.conf" "$dir/etc/multipath.conf"
# Where the prkeys file lives; KubeVirt mounts the host's directory here.
install -d -m 0755 "$dir/etc/multipath"
