#!/bin/bash
# One-time setup for fuzz/run.sh (needs the network: crates.io, Debian):
# a C++ compiler (libfuzzer-sys builds libFuzzer from source), cargo-fuzz,
# and every crate the fuzz crate needs, so that run.sh works offline.
set -euo pipefail
FUZZ_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if ! command -v c++ >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q g++
    else
        echo "a C++ compiler is needed: apt-get install g++" >&2
        exit 1
    fi
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
cargo fuzz --version

cd "$FUZZ_DIR"
cargo fetch
echo "fuzz setup done: run fuzz/run.sh SECONDS [TARGET...]"
