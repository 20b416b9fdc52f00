#!/usr/bin/env bash
# One-time setup for the packaging tests (packaging/test.sh), as root on a
# Debian 12 machine with Rust (rustup) installed. Idempotent: run it again
# after a Cargo.lock change. Everything the tests need is downloaded here;
# packaging/test.sh then runs offline.
#
#   - Debian packages: buildah, podman + runc (containers), rpm + rpmlint
#     (rpmbuild), lintian, nix-bin (+ python3-pyflakes: lints the NixOS VM
#     test's script), mmdebstrap + multipath-tools (the
#     multipath image's local base), systemd-container (systemd-nspawn, for
#     the boot test under systemd as PID 1);
#   - the Rust targets x86_64- and aarch64-unknown-linux-musl (aarch64 is
#     linked with the toolchain's rust-lld) and qemu-user-static to run the
#     aarch64 binary;
#   - cargo-deb, cargo-auditable (dependency list in the binary) and
#     cargo-cyclonedx (SBOM), pinned, installed with --locked into
#     $PRH_PKG_CACHE/NAME;
#   - every crate of Cargo.lock (and of packaging/gen-docs) in the cargo
#     registry cache, so `cargo vendor --offline` and `cargo build --offline`
#     work later;
#   - the root of a local base image for the multipath variant (Debian 14,
#     forky, with multipath-tools 0.15, made with mmdebstrap from the Debian
#     mirror, since registries cannot be reached here), kept as
#     $PRH_PKG_CACHE/mpath-base-HASH.tar and imported by build-image.sh;
#   - a Debian 12 root with systemd for packaging/systemd-boot-test.sh
#     (mmdebstrap, kept as $PRH_PKG_CACHE/nspawn-HASH.tar), and one with
#     systemd and multipath-tools for the VM test bed's systemd boot
#     ($PRH_PKG_CACHE/systemd-mpath-HASH.tar).
#   HASH: of the mmdebstrap arguments (packaging/lib.sh), so a changed
#   package list makes a new root.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail
. "$(dirname "$0")/lib.sh"

CARGO_DEB_VERSION=3.8.0
PKGS=(buildah podman runc rpm rpmlint lintian nix-bin mmdebstrap multipath-tools
    dpkg-dev fakeroot qemu-user-static file systemd-container python3-pyflakes)
# --print-packages: the Debian packages above (tests/run installs them
# with its own, in one apt-get run).
if [ "${1:-}" = --print-packages ]; then
    echo "${PKGS[*]}"
    exit 0
fi

[ "$(id -u)" = 0 ] || prh_die "run as root (apt-get install)"
prh_need apt-get cargo rustup

missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' ||
        missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: apt-get install ${missing[*]}"
    apt-get -o DPkg::Lock::Timeout=900 update -qq
    # TMPDIR: apt links the archives there; keep them away from /tmp cleaners.
    TMPDIR=/var/tmp DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends "${missing[@]}"
fi

# The multipath image's base and the systemd boot test's root: no registry
# here, so Debian roots made from the Debian mirror (packaging/lib.sh says
# what each holds; the file names carry a hash of that). With a registry,
# Containerfile.mpath's default base (docker.io/library/debian:forky-slim)
# is used instead.
mkroot() { # TARBALL [SOURCE_DATE_EPOCH=N] MMDEBSTRAP-ARGS...
    local tarball=$1 epoch=()
    shift
    case $1 in SOURCE_DATE_EPOCH=*) epoch=("$1"); shift ;; esac
    [ -f "$tarball" ] && return 0
    echo "setup: $(basename "$tarball") with ${epoch[*]:+${epoch[*]} }mmdebstrap $*"
    env "${epoch[@]}" mmdebstrap --quiet --mode=root "$@" "$tarball.tmp.tar"
    # With a fixed time, the same packages must give the same tarball: made
    # twice, kept only when both agree (the multipath image's base).
    if [ ${#epoch[@]} -gt 0 ]; then
        env "${epoch[@]}" mmdebstrap --quiet --mode=root "$@" "$tarball.again.tar"
        cmp -s "$tarball.tmp.tar" "$tarball.again.tar" ||
            prh_die "mmdebstrap $* made two different tarballs ($tarball.tmp.tar, $tarball.again.tar)"
        rm "$tarball.again.tar"
    fi
    mv "$tarball.tmp.tar" "$tarball"
}
# Both in the background (network and disk) while cargo builds the tools
# below (processor).
mkdir -p "$PRH_PKG_CACHE"
mkroot "$PRH_MPATH_BASE_TAR" "SOURCE_DATE_EPOCH=$PRH_ROOT_EPOCH" "${PRH_MPATH_BASE_MMDEBSTRAP[@]}" &
mpath_base=$!
mkroot "$PRH_NSPAWN_TAR" "${PRH_NSPAWN_MMDEBSTRAP[@]}" &
nspawn_root=$!
mkroot "$PRH_SYSTEMD_MPATH_TAR" "${PRH_SYSTEMD_MPATH_MMDEBSTRAP[@]}" &
systemd_mpath_root=$!

echo "setup: rust targets ${PRH_ARCHES[*]/%/-unknown-linux-musl}"
rustup target add "${PRH_ARCHES[@]/%/-unknown-linux-musl}" >/dev/null

if ! "$PRH_PKG_CACHE/cargo-deb/bin/cargo-deb" --version 2>/dev/null | grep -q "$CARGO_DEB_VERSION"; then
    echo "setup: cargo install cargo-deb $CARGO_DEB_VERSION"
    cargo install --locked --quiet --root "$PRH_PKG_CACHE/cargo-deb" \
        --version "$CARGO_DEB_VERSION" cargo-deb
fi

for tool in "cargo-auditable $PRH_CARGO_AUDITABLE_VERSION" "cargo-cyclonedx $PRH_CARGO_CYCLONEDX_VERSION"; do
    set -- $tool
    if ! cargo install --list --root "$PRH_PKG_CACHE/$1" 2>/dev/null | grep -qx "$1 v$2:"; then
        echo "setup: cargo install $1 $2"
        cargo install --locked --quiet --force --root "$PRH_PKG_CACHE/$1" --version "$2" "$1"
    fi
done

echo "setup: cargo fetch (crates for offline builds and cargo vendor)"
(cd "$PRH_ROOT" && cargo fetch --locked --quiet)
(cd "$PRH_ROOT/packaging/gen-docs" && cargo fetch --locked --quiet)

wait "$mpath_base" || prh_die "mmdebstrap of the multipath base failed"
wait "$nspawn_root" || prh_die "mmdebstrap of the systemd boot test root failed"
wait "$systemd_mpath_root" || prh_die "mmdebstrap of the test bed's systemd root failed"
echo "setup: done"
