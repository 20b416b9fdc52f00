#!/usr/bin/env bash
# Builds the .deb with cargo-deb from a static binary built by
# packaging/build-static.sh (the metadata is [package.metadata.deb] in
# Cargo.toml; deb/ holds the copyright, changelog and lintian overrides).
# The binary goes in as is (--no-build --no-strip); the package is
# byte-reproducible with SOURCE_DATE_EPOCH (default: the last commit's time).
#
#   packaging/build-deb.sh BINARY OUTPUT.deb
#   packaging/build-deb.sh --arch aarch64 BINARY OUTPUT.deb     (Architecture: arm64)
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail
. "$(dirname "$0")/lib.sh"
prh_arch_option "$@"
shift "$PRH_SHIFT"
cargo_deb=${CARGO_DEB:-$PRH_PKG_CACHE/cargo-deb/bin/cargo-deb}
[ -x "$cargo_deb" ] || cargo_deb=$(command -v cargo-deb) ||
    prh_die "cargo-deb missing (run packaging/setup.sh)"
[ $# -eq 2 ] || prh_die "usage: $0 BINARY OUTPUT.deb"
bin=$1 out=$2
[ -x "$bin" ] || prh_die "no executable binary at $bin"

# cargo-deb finds the binary as <target dir>/<target>/release/pr-helper.
tgt=$(mktemp -d "${TMPDIR:-/tmp}/prh-deb.XXXXXX")
trap 'rm -rf "$tgt"' EXIT
install -D -m 0755 "$bin" "$tgt/$PRH_TARGET/release/pr-helper"
export SOURCE_DATE_EPOCH=$(prh_source_date_epoch)
(cd "$PRH_ROOT" &&
    CARGO_TARGET_DIR=$tgt CARGO_NET_OFFLINE=true "$cargo_deb" --quiet --no-build --no-strip \
        --target "$PRH_TARGET" -o "$out" >/dev/null)
echo "deb $(sha256sum "$out" | cut -d' ' -f1) $out"
