#!/usr/bin/env bash
# Builds the static image for linux/amd64 and linux/arm64 (packaging/build-image.sh
# --arch, one per static binary) and puts both in one OCI image index (a
# manifest list), reproducibly: each image has --timestamp 0, and the index
# holds only their digests, sizes and platforms, so the same binaries give
# the same index digest.
#
#   packaging/build-multiarch-image.sh X86_64_BINARY AARCH64_BINARY [NAME] [OCI_DIR]
#
# NAME (default localhost/pr-helper:multiarch) is the manifest list in local
# storage; the per-architecture images are NAME-amd64 and NAME-arm64. With
# OCI_DIR the index and both images are also written there as an OCI layout
# (what `skopeo copy --all oci:OCI_DIR docker://REGISTRY/...` or
# `buildah manifest push --all` to a registry would publish).
# Prints "image linux/ARCH digest DIGEST size BYTES" per platform (the
# manifest digests in the index), then "index NAME digest DIGEST".
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail
. "$(dirname "$0")/lib.sh"
prh_need buildah

[ $# -ge 2 ] || prh_die "usage: $0 X86_64_BINARY AARCH64_BINARY [NAME] [OCI_DIR]"
declare -A bins=([x86_64]=$1 [aarch64]=$2)
name=${3:-localhost/pr-helper:multiarch}
oci=${4:-}

prh_buildah manifest rm "$name" >/dev/null 2>&1 || true
prh_buildah manifest create "$name" >/dev/null
for arch in "${PRH_ARCHES[@]}"; do
    deb=$(prh_deb_arch "$arch")
    "$PRH_ROOT/packaging/build-image.sh" --arch "$arch" "${bins[$arch]}" "$name-$deb" >/dev/null
    prh_buildah manifest add --os linux --arch "$deb" "$name" "containers-storage:$name-$deb" >/dev/null
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/prh-index.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
dest=${oci:-$tmp/oci}
rm -rf "$dest"
prh_buildah manifest push --quiet --all --digestfile "$tmp/digest" "$name" "oci:$dest" >/dev/null
index=$(cat "$tmp/digest")
# The per-platform manifests as the index lists them (the digests a
# registry serves; containers-storage's own digest of an image differs).
grep -o '"digest":"sha256:[0-9a-f]*","size":[0-9]*,"platform":{"architecture":"[a-z0-9]*","os":"linux"' \
    "$dest/blobs/sha256/${index#sha256:}" |
    sed 's/"digest":"\([^"]*\)","size":\([0-9]*\),"platform":{"architecture":"\([^"]*\)".*/image linux\/\3 digest \1 size \2/'
echo "index $name digest $index"
