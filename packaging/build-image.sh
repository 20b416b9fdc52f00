#!/usr/bin/env bash
# Builds the final stage of Containerfile (or, with --mpath, of
# Containerfile.mpath) from a binary built on this machine, with buildah and
# no registry: the same instructions as the multi-stage build, with the
# builder stage replaced by the local binary. The digest is reproducible
# (--timestamp SOURCE_DATE_EPOCH: image and file times are the last
# commit's) in the default OCI format. That format has no HEALTHCHECK (buildah notes it and drops it;
# the probe is given at run time, docs/packaging.md). PRH_IMAGE_FORMAT=docker
# keeps it, but the docker config records the random build container id
# and hostname, so that digest differs from build to build.
#
#   packaging/build-image.sh BINARY [TAG]            (static musl binary)
#   packaging/build-image.sh --mpath BINARY [TAG]    (glibc build with --features mpath,
#                                                     base: $PRH_MPATH_BASE, from the root setup.sh made)
#   packaging/build-image.sh --arch aarch64 BINARY [TAG]
#                                                    (the static image for linux/arm64;
#                                                     packaging/build-multiarch-image.sh
#                                                     puts both in one index)
# Prints "image TAG id ID digest DIGEST size BYTES".
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail
. "$(dirname "$0")/lib.sh"
prh_arch_option "$@"
shift "$PRH_SHIFT"
prh_need buildah

mpath=
if [ "${1:-}" = --mpath ]; then mpath=1; shift; fi
[ $# -ge 1 ] || prh_die "usage: $0 [--mpath] BINARY [TAG]"
bin=$1
[ -x "$bin" ] || prh_die "no executable binary at $bin"

ctx=$(mktemp -d "${TMPDIR:-/tmp}/prh-image.XXXXXX")
trap 'rm -rf "$ctx"' EXIT

if [ -n "$mpath" ] && [ "$PRH_ARCH" != "$(uname -m)" ]; then
    prh_die "--mpath is built for the host's architecture only (its base image is the host's)"
fi
if [ -n "$mpath" ]; then
    tag=${2:-localhost/pr-helper:mpath}
    containerfile=$PRH_ROOT/Containerfile.mpath
    prh_mpath_base
    "$PRH_ROOT/packaging/mpath-image/layout.sh" "$bin" "$ctx/rootfs"
else
    tag=${2:-localhost/pr-helper:latest}
    containerfile=$PRH_ROOT/Containerfile
    "$PRH_ROOT/packaging/oci-rootfs.sh" "$bin" "$PRH_ROOT/LICENSE" "$ctx/rootfs"
fi

# The final stage, from its marker to the end: the builder's output comes
# from the context instead, and the local base already has multipath-tools
# (its RUN apt-get, which needs the network, is dropped).
awk -v base="$PRH_MPATH_BASE" '
    /^# --- final stage/ { on = 1 }
    !on { next }
    /^FROM \$\{BASE\}/ { print "FROM " base; next }
    /^COPY --from=build / { print "COPY rootfs/ /"; next }
    /^RUN apt-get/ { skip = 1 }
    skip { if ($0 !~ /\\$/) skip = 0; next }
    { print }
' "$containerfile" >"$ctx/Containerfile"
grep -q '^COPY rootfs/ /$' "$ctx/Containerfile" ||
    prh_die "$containerfile: final stage marker or COPY --from=build line not found"

# The image's SBOM, in the image (/usr/share/doc/pr-helper/image.cdx.json)
# and next to it when PRH_IMAGE_SBOM names a file: the binary's crates, and
# for the multipath image the Debian packages of its base.
export SOURCE_DATE_EPOCH=$(prh_source_date_epoch)
revision=$(git -C "$PRH_ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
[ -z "$(git -C "$PRH_ROOT" status --porcelain --untracked-files=normal 2>/dev/null)" ] || revision=$revision-dirty
licenses=$(cat "$PRH_ROOT/packaging/licenses/license-expression")
created=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
dpkg_list=()
if [ -n "$mpath" ]; then
    prh_podman run --rm --network none "${PRH_PODMAN_ULIMITS[@]}" --entrypoint dpkg-query "$PRH_MPATH_BASE" \
        -W -f '${Package} ${Version} ${Architecture}\n' | sort >"$ctx/dpkg.list"
    dpkg_list=("$ctx/dpkg.list")
fi
python3 "$PRH_ROOT/packaging/sbom.py" image "$PRH_ROOT/packaging/licenses/pr-helper.cdx.json" \
    "$(basename "${tag%%:*}")" "$PRH_VERSION" "$SOURCE_DATE_EPOCH" "$revision" "$licenses" \
    "${dpkg_list[@]}" >"$ctx/image.cdx.json"
install -D -m 0644 "$ctx/image.cdx.json" "$ctx/rootfs/usr/share/doc/pr-helper/image.cdx.json"
[ -z "${PRH_IMAGE_SBOM:-}" ] || cp "$ctx/image.cdx.json" "$PRH_IMAGE_SBOM"

# Image times (config, history, file mtimes) are SOURCE_DATE_EPOCH, as is
# the created label: the same commit gives the same digest.
prh_buildah bud --quiet --timestamp "$SOURCE_DATE_EPOCH" --format "${PRH_IMAGE_FORMAT:-oci}" --layers=false \
    --os linux --arch "$(prh_deb_arch "$PRH_ARCH")" \
    --build-arg VERSION="$PRH_VERSION" --build-arg CREATED="$created" \
    --build-arg REVISION="$revision" --build-arg LICENSES="$licenses" \
    -f "$ctx/Containerfile" -t "$tag" "$ctx" 2>&1 >/dev/null |
    { grep -v 'HEALTHCHECK is not supported for OCI image format' >&2 || true; }
id=$(prh_buildah inspect --type image --format '{{.FromImageID}}' "$tag")
digest=$(prh_buildah inspect --type image --format '{{.FromImageDigest}}' "$tag")
size=$(prh_podman image inspect --format '{{.Size}}' "$tag")
echo "image $tag id $id digest $digest size $size"
