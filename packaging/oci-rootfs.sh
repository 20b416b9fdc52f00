#!/bin/sh
# Lays out the root filesystem of the pr-helper image from a static binary:
#   /usr/bin/pr-helper   /run/pr-helper/ (the socket directory)   /tmp/
#   /entrypoint.sh -> /usr/bin/pr-helper (KubeVirt's container spec runs
#   "/entrypoint.sh -k SOCKET"; the image has no shell, so it is a link)
# plus the licence, the third-party notices and the binary's SBOM
# (packaging/licenses/, from Cargo.lock):
#   /usr/share/licenses/pr-helper/{LICENSE,THIRD-PARTY-NOTICES}
#   /usr/share/doc/pr-helper/pr-helper.cdx.json
# Used by the Containerfile's build stage and by
# packaging/build-image.sh (from a locally built binary), so both images
# have the same content.
#
#   packaging/oci-rootfs.sh BINARY LICENSE DEST
# SPDX-License-Identifier: GPL-2.0-or-later
set -eu
[ $# -eq 3 ] || { echo "usage: $0 BINARY LICENSE DEST" >&2; exit 2; }
bin=$1 license=$2 dest=$3
rm -rf "$dest"
lic=$(dirname "$0")/licenses
mkdir -p "$dest/usr/bin" "$dest/usr/share/licenses/pr-helper" "$dest/usr/share/doc/pr-helper" \
    "$dest/run/pr-helper" "$dest/tmp"
install -m 0755 "$bin" "$dest/usr/bin/pr-helper"
install -m 0644 "$license" "$dest/usr/share/licenses/pr-helper/LICENSE"
install -m 0644 "$lic/THIRD-PARTY-NOTICES" "$dest/usr/share/licenses/pr-helper/THIRD-PARTY-NOTICES"
install -m 0644 "$lic/pr-helper.cdx.json" "$dest/usr/share/doc/pr-helper/pr-helper.cdx.json"
chmod 0755 "$dest/run/pr-helper"
chmod 1777 "$dest/tmp"
ln -s /usr/bin/pr-helper "$dest/entrypoint.sh"
