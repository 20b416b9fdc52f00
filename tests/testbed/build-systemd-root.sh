#!/bin/bash
# The root of the test bed's systemd boot: Debian 12 with systemd,
# multipath-tools and sg3-utils ($PRH_SYSTEMD_MPATH_TAR, made by
# packaging/setup.sh), pr-helper's
# multipath build as /usr/bin/pr-helper, the units as the RPM installs them
# (pr-helper.socket and .service, the pr-helper-multipath subpackage's
# drop-in), and a test unit (systemd-root/prh-test.*), as ext4.
#
#   tests/testbed/build-systemd-root.sh IMAGE BINARY
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 IMAGE BINARY" >&2; exit 1; }
img=$1 bin=$2
here=$(cd "$(dirname "$0")" && pwd)
top=$here/../..
. "$top/packaging/lib.sh"
tar=$PRH_SYSTEMD_MPATH_TAR
[ -f "$tar" ] || prh_die "$tar missing (run tests/run setup)"
dir=$(mktemp -d "${TMPDIR:-/var/tmp}/prh-systemd-root.XXXXXX")
trap 'rm -rf "$dir"' EXIT
tar -xf "$tar" -C "$dir" --numeric-owner
install -D -m 0755 "$bin" "$dir/usr/bin/pr-helper"
install -D -m 0644 "$top/systemd/pr-helper.service" "$dir/usr/lib/systemd/system/pr-helper.service"
install -D -m 0644 "$top/systemd/pr-helper.socket" "$dir/usr/lib/systemd/system/pr-helper.socket"
install -D -m 0644 "$top/systemd/mpath.conf.example" "$dir/usr/lib/systemd/system/pr-helper.service.d/mpath.conf"
install -D -m 0644 "$here/systemd-root/multipath.conf" "$dir/etc/multipath.conf"
install -D -m 0755 "$here/systemd-root/prh-test.sh" "$dir/usr/local/bin/prh-test.sh"
install -D -m 0644 "$here/systemd-root/prh-test.service" "$dir/etc/systemd/system/prh-test.service"
install -d "$dir/etc/multipath"
systemctl --root="$dir" enable pr-helper.socket multipathd.service prh-test.service >/dev/null 2>&1
systemctl --root="$dir" mask serial-getty@ttyS0.service getty@tty1.service systemd-timesyncd.service >/dev/null 2>&1 || true
mb=$(( $(du -sm "$dir" | cut -f1) * 5 / 4 + 64 ))
rm -f "$img.tmp"
mkfs.ext4 -q -F -L prh-systemd -d "$dir" "$img.tmp" "${mb}M"
mv "$img.tmp" "$img"
