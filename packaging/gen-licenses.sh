#!/usr/bin/env bash
# Generates the licence and bill-of-materials files every artifact ships,
# from Cargo.lock, into DIR (default packaging/licenses/, committed;
# packaging/test.sh's licenses section regenerates them and fails when they
# differ, so a dependency cannot be added without its notice):
#
#   THIRD-PARTY-NOTICES    every crate linked into the binary with its licence,
#                          and the licence files the crates ship
#   copyright              Debian's copyright file (DEP-5): pr-helper, then one
#                          stanza per crate licence, each licence's text
#   license-expression     the SPDX expression of everything linked into the
#                          binary: GPL-2.0-or-later AND the crates' licences
#                          (the RPM's License tag, the image label)
#   pr-helper.cdx.json     the binary's CycloneDX SBOM (cargo-cyclonedx; no
#                          serial number or timestamp, so it is reproducible)
#
#   packaging/gen-licenses.sh [DIR]
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail
. "$(dirname "$0")/lib.sh"
prh_need cargo python3

out=${1:-$PRH_ROOT/packaging/licenses}
mkdir -p "$out"
cyclonedx=$PRH_PKG_CACHE/cargo-cyclonedx/bin/cargo-cyclonedx
[ -x "$cyclonedx" ] || prh_die "cargo-cyclonedx missing (run packaging/setup.sh)"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/prh-licenses.XXXXXX")
trap 'rm -rf "$tmp" "$PRH_ROOT/pr-helper.cdx.json"' EXIT

cd "$PRH_ROOT"
# The crates linked into the binary on Linux (as Fedora's %cargo_license
# counts them: no build, dev or proc-macro edges).
cargo tree --locked --offline --edges no-build,no-dev,no-proc-macro \
    --target x86_64-unknown-linux-gnu --prefix none --format '{l}|{p}' >"$tmp/tree"
cargo metadata --locked --offline --format-version 1 --filter-platform x86_64-unknown-linux-gnu >"$tmp/metadata.json"
python3 "$PRH_ROOT/packaging/licenses.py" collect "$tmp/metadata.json" "$tmp/tree" >"$tmp/about.json"
python3 "$PRH_ROOT/packaging/licenses.py" expression "$tmp/tree" >"$out/license-expression"
python3 "$PRH_ROOT/packaging/licenses.py" notices "$tmp/about.json" "$tmp/tree" >"$out/THIRD-PARTY-NOTICES"
python3 "$PRH_ROOT/packaging/licenses.py" copyright "$tmp/about.json" "$tmp/tree" >"$out/copyright"

# CycloneDX for the binary's dependency graph (normal dependencies, Linux).
CARGO_NET_OFFLINE=true "$cyclonedx" cyclonedx --format json --spec-version 1.5 \
    --target x86_64-unknown-linux-gnu --no-build-deps --override-filename pr-helper.cdx >/dev/null 2>"$tmp/cdx.log" ||
    { cat "$tmp/cdx.log" >&2; prh_die "cargo cyclonedx failed"; }
python3 "$PRH_ROOT/packaging/sbom.py" binary pr-helper.cdx.json "$PRH_ROOT" "$tmp/tree" >"$out/pr-helper.cdx.json"
rm -f pr-helper.cdx.json
echo "licenses $out: $(cat "$out/license-expression")"
