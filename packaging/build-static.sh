#!/usr/bin/env bash
# Builds the static (musl, static-pie) pr-helper reproducibly with cargo
# auditable (the dependency list embedded) and prints its sha256. The same
# commit gives the same bytes whatever directory the tree,
# the target directory or CARGO_HOME is in: every absolute path that could
# reach the binary is remapped to a fixed prefix.
#
#   packaging/build-static.sh            -> target/static/x86_64-unknown-linux-musl/release/pr-helper
#   packaging/build-static.sh --arch aarch64
#                                        -> target/static/aarch64-unknown-linux-musl/release/pr-helper
#   CARGO_TARGET_DIR=/tmp/t packaging/build-static.sh
#
# --arch (or PRH_ARCH): x86_64 (default) or aarch64. A target other than the
# host's is linked with rust-lld, the linker rustup ships with the toolchain
# (no cross gcc: the musl target brings its own crt objects and libc.a), so
# the aarch64 binary is as reproducible as the x86_64 one.
#
# Extra arguments go to cargo build (e.g. --offline). A separate target
# directory (target/static) keeps these RUSTFLAGS from invalidating the
# normal builds in target/.
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail
. "$(dirname "$0")/lib.sh"
prh_arch_option "$@"
shift "$PRH_SHIFT"
prh_need cargo rustc sha256sum

cd "$PRH_ROOT"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PRH_ROOT/target/static}
mkdir -p "$CARGO_TARGET_DIR"
CARGO_TARGET_DIR=$(cd "$CARGO_TARGET_DIR" && pwd)
cargo_home=${CARGO_HOME:-$HOME/.cargo}
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}

rustc --print target-libdir --target "$PRH_TARGET" >/dev/null 2>&1 &&
    [ -d "$(rustc --print target-libdir --target "$PRH_TARGET")" ] ||
    prh_die "Rust target $PRH_TARGET missing (rustup target add $PRH_TARGET, or run packaging/setup.sh)"

# rustc uses the last matching --remap-path-prefix: the most specific
# prefixes (the target directory may lie inside the tree) come last.
# RUSTFLAGS replaces any build.rustflags of a cargo config; the builds stay
# identical as long as nobody sets RUSTFLAGS differently.
export RUSTFLAGS="--remap-path-prefix=$rustup_home=/rustup --remap-path-prefix=$cargo_home=/cargo --remap-path-prefix=$PRH_ROOT=/build/pr-helper --remap-path-prefix=$CARGO_TARGET_DIR=/build/target"
unset CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS
export SOURCE_DATE_EPOCH=$(prh_source_date_epoch)
if [ "$PRH_ARCH" != "$(uname -m)" ]; then
    linker_var=CARGO_TARGET_$(echo "$PRH_TARGET" | tr 'a-z-' 'A-Z_')_LINKER
    export "$linker_var=rust-lld"
fi

# cargo auditable: the binary carries its dependency list (crate names,
# versions, sources; compressed JSON in a .dep-v0 section) for vulnerability
# scanners (cargo audit bin, trivy, syft). Deterministic: the build stays
# bit-reproducible.
export PATH=$PRH_PKG_CACHE/cargo-auditable/bin:$PATH
cargo auditable --version >/dev/null 2>&1 ||
    prh_die "cargo-auditable missing (cargo install --locked cargo-auditable@$PRH_CARGO_AUDITABLE_VERSION, or run packaging/setup.sh)"
cargo auditable build --release --locked --target "$PRH_TARGET" --bin pr-helper "$@" >&2
bin=$CARGO_TARGET_DIR/$PRH_TARGET/release/pr-helper
[ -x "$bin" ] || prh_die "no binary at $bin"
sum=$(sha256sum "$bin" | cut -d' ' -f1)
echo "sha256 $sum $bin"
