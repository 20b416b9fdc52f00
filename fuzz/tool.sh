# Where fuzz/setup.sh installs cargo-fuzz, and which version (sourced by
# fuzz/setup.sh, fuzz/run.sh and tests/run). Pinned and kept in a directory
# named after its version under the test cache, so a new version is a new
# install, never an old binary reused.
# SPDX-License-Identifier: GPL-2.0-or-later
CARGO_FUZZ_VERSION=0.13.2
CARGO_FUZZ_ROOT=${PRH_TEST_CACHE:-/var/cache/pr-helper}/tools/cargo-fuzz-$CARGO_FUZZ_VERSION
