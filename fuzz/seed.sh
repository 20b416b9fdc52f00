#!/bin/bash
# Recreates the committed seed corpus fuzz/corpus/<target>/ from
# examples/seed.rs (shapes of tests/protocol.rs and the tables of src/scsi)
# and checks it with the harness tests (tests/seeds.rs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
cargo run --quiet --example seed -- "$PWD/corpus"
cargo test --quiet --test seeds
