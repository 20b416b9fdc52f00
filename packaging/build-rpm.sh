#!/usr/bin/env bash
# Makes the source tarball with vendored crates and builds the RPMs offline,
# as a distribution would: rpmbuild -ba inside a network namespace without
# network (unshare -n), so a missing crate fails the build. Two builds: the
# default (with mpath, and %check) in OUTDIR/rpmbuild, and --without mpath
# (--nocheck: the same unit tests) in OUTDIR/rpmbuild-nompath.
#
#   packaging/build-rpm.sh [OUTDIR]     (default: target/rpm)
#   packaging/build-rpm.sh --arch aarch64 [OUTDIR]
#                                       (rpmbuild --target aarch64: the spec
#                                        cross-builds the static musl binary)
#
# The tarball, pr-helper-VERSION.tar.gz, holds the tree (HEAD plus working
# changes), vendor/ and .cargo/config.toml pointing cargo at vendor/; its
# bytes depend only on the sources (sorted, owner 0, mtime SOURCE_DATE_EPOCH).
# On Debian the rpm database knows no BuildRequires: they are skipped
# (--nodeps) when `rpm -q cargo` finds nothing.
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail
. "$(dirname "$0")/lib.sh"
prh_arch_option "$@"
shift "$PRH_SHIFT"
prh_need rpmbuild cargo tar gzip unshare

out=${1:-$PRH_ROOT/target/rpm}
mkdir -p "$out"
out=$(cd "$out" && pwd)
export SOURCE_DATE_EPOCH=$(prh_source_date_epoch)
src=$out/sources
rm -rf "$src"
mkdir -p "$src"

name=pr-helper-$PRH_VERSION
stage=$(mktemp -d "${TMPDIR:-/tmp}/prh-rpm.XXXXXX")
trap 'rm -rf "$stage"' EXIT
prh_copy_tree "$stage/$name"
mkdir -p "$stage/$name/.cargo"
# Crates from the local registry cache (packaging/setup.sh fetched them).
(cd "$stage/$name" && cargo vendor --locked --offline --quiet vendor) \
    >"$stage/$name/.cargo/config.toml" ||
    prh_die "cargo vendor failed (crates not cached? run packaging/setup.sh)"
# Source1: the vendored crates as cargo-rpm-macros' %cargo_vendor_manifest
# lists them ("NAME VERSION"), for the bundled(crate()) Provides.
(cd "$stage/$name" && cargo tree --workspace --offline --edges normal,build --no-dedupe \
    --prefix none --format '{p}' | grep -v "$stage/$name" | sed -e 's: (proc-macro)$::' -e 's: v: :' |
    sort -u) >"$src/$name-vendor.txt"
tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$stage" -cf - "$name" | gzip -n -9 >"$src/$name.tar.gz"
echo "tarball $(sha256sum "$src/$name.tar.gz" | cut -d' ' -f1) $src/$name.tar.gz ($(du -h "$src/$name.tar.gz" | cut -f1)), $(wc -l <"$src/$name-vendor.txt") vendored crates"

nodeps=()
rpm -q cargo >/dev/null 2>&1 || nodeps=(--nodeps)
# rpmbuild TOPDIR ARGS...: offline (no network namespace), mtimes and build
# time from SOURCE_DATE_EPOCH.
build() {
    local top=$1
    shift
    rm -rf "$top"
    mkdir -p "$top"/{SOURCES,SPECS,BUILD,RPMS,SRPMS}
    cp "$src"/* "$top/SOURCES/"
    cp "$PRH_ROOT/rpm/pr-helper.spec" "$top/SPECS/"
    unshare -n rpmbuild -ba "${nodeps[@]}" --quiet \
        --define "_topdir $top" \
        --define "use_source_date_epoch_as_buildtime 1" \
        --define "clamp_mtime_to_source_date_epoch 1" \
        "$@" "$top/SPECS/pr-helper.spec" >&2
    find "$top/RPMS" "$top/SRPMS" -name '*.rpm' -printf 'rpm %p\n' | sort
}
if [ "$PRH_ARCH" != "$(uname -m)" ]; then
    # Cross build (rpmbuild --target aarch64 on x86_64): the spec builds the
    # static musl binary with rust-lld; libmpathpersist cannot be cross-linked
    # and the tests cannot run here, so --without mpath --nocheck. The host's
    # strip does not know the target's ELF.
    build "$out/rpmbuild" --target "$PRH_ARCH" --define "__strip /bin/true" --without mpath --nocheck
else
    # The default (with mpath, %check runs the unit tests), then --without mpath.
    build "$out/rpmbuild"
    [ -n "${PRH_RPM_ONLY_DEFAULT:-}" ] || build "$out/rpmbuild-nompath" --without mpath --nocheck
fi
