#!/bin/bash
# One-time setup for fuzz/run.sh (needs the network: crates.io, Debian):
# a C++ compiler (libfuzzer-sys builds libFuzzer from source), cargo-fuzz
# (the version fuzz/tool.sh pins, into $CARGO_FUZZ_ROOT), and every crate
# the fuzz crate needs, so that run.sh works offline.
set -euo pipefail
FUZZ_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$FUZZ_DIR/tool.sh"

if ! command -v c++ >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q g++
    else
        echo "a C++ compiler is needed: apt-get install g++" >&2
        exit 1
    fi
fi

if ! "$CARGO_FUZZ_ROOT/bin/cargo-fuzz" --version 2>/dev/null | grep -q " $CARGO_FUZZ_VERSION\$"; then
    cargo install --locked --quiet --force --root "$CARGO_FUZZ_ROOT" --version "$CARGO_FUZZ_VERSION" cargo-fuzz
fi
"$CARGO_FUZZ_ROOT/bin/cargo-fuzz" --version

cd "$FUZZ_DIR"
cargo fetch
echo "fuzz setup done: run fuzz/run.sh SECONDS [TARGET...]"
