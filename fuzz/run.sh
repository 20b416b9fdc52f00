#!/bin/bash
# Runs the cargo-fuzz targets for a bounded time each and fails on any crash.
#
#   fuzz/run.sh SECONDS [TARGET...]      (default: every target)
#
# Targets run FUZZ_PARALLEL at a time (default 2, one per core of the CI
# machine), so every target gets SECONDS and four take 2 x SECONDS.
#
# Run fuzz/setup.sh once first (cargo-fuzz, a C++ compiler, the crates);
# this script then works offline. Per target it prints executions, exec/s
# and libFuzzer's final coverage (cov: edges, ft: features) and keeps the
# full log in fuzz/target/logs/TARGET.log.
#
# Environment:
#   FUZZ_SANITIZER=none|address   default none: the fuzzed code is safe Rust,
#                                 and `none` needs no nightly feature. With
#                                 `address`, RUSTC_BOOTSTRAP=1 lets the stable
#                                 toolchain take -Zsanitizer.
#   FUZZ_WORK=DIR                 working corpora (default fuzz/target/corpus);
#                                 the committed seeds in fuzz/corpus/TARGET are
#                                 read, never written.
#   FUZZ_ARGS="..."               extra libFuzzer options (e.g. -jobs=2).
#   FUZZ_FRESH=1                  start from the seeds only (empty the working
#                                 corpus first).
#   FUZZ_PARALLEL=N               targets run at once (default 2).
set -euo pipefail

usage() {
    echo "usage: $0 SECONDS [TARGET...]" >&2
    exit 2
}
[ $# -ge 1 ] || usage
SECONDS_PER_TARGET=$1
shift
[[ $SECONDS_PER_TARGET =~ ^[0-9]+$ ]] && [ "$SECONDS_PER_TARGET" -gt 0 ] || usage

FUZZ_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$FUZZ_DIR")
cd "$ROOT"

ALL_TARGETS=(decoder handshake_and_response scsi mpath_translate)
if [ $# -gt 0 ]; then
    TARGETS=("$@")
else
    TARGETS=("${ALL_TARGETS[@]}")
fi
for t in "${TARGETS[@]}"; do
    [ -f "$FUZZ_DIR/fuzz_targets/$t.rs" ] || { echo "unknown target: $t (have: ${ALL_TARGETS[*]})" >&2; exit 2; }
done

. "$FUZZ_DIR/tool.sh"
export PATH=$CARGO_FUZZ_ROOT/bin:$PATH
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz $CARGO_FUZZ_VERSION missing from $CARGO_FUZZ_ROOT: run fuzz/setup.sh" >&2; exit 1; }

SANITIZER=${FUZZ_SANITIZER:-none}
WORK=${FUZZ_WORK:-$FUZZ_DIR/target/corpus}
LOGS=$FUZZ_DIR/target/logs
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
if [ "$SANITIZER" != none ]; then
    export RUSTC_BOOTSTRAP=1
fi
# Nothing is downloaded here: setup.sh fetched every crate.
export CARGO_NET_OFFLINE=true

echo "== building fuzz targets (sanitizer: $SANITIZER, debug assertions on)"
for t in "${TARGETS[@]}"; do
    cargo fuzz build --sanitizer "$SANITIZER" --debug-assertions "$t"
done

mkdir -p "$LOGS"
PARALLEL=${FUZZ_PARALLEL:-2}
[[ $PARALLEL =~ ^[1-9][0-9]*$ ]] || { echo "FUZZ_PARALLEL must be a positive number" >&2; exit 2; }

# Runs one target; its summary line goes to $LOGS/TARGET.summary, and the
# exit status says whether it failed.
fuzz_one() {
    local t=$1 bin log rc=0 execs rate last cov ft corp status line artifact
    bin=$FUZZ_DIR/target/$TRIPLE/release/$t
    [ -x "$bin" ] || { echo "missing $bin" >&2; return 1; }
    [ "${FUZZ_FRESH:-0}" = 1 ] && rm -rf "${WORK:?}/$t"
    mkdir -p "$WORK/$t" "$FUZZ_DIR/artifacts/$t"
    log=$LOGS/$t.log
    echo "== $t: ${SECONDS_PER_TARGET}s (log: ${log#"$ROOT"/})"
    # The first corpus directory receives new inputs; the seeds are only read.
    # -timeout: an input running 10 s is a hang, reported like a crash.
    # shellcheck disable=SC2086
    "$bin" "$WORK/$t" "$FUZZ_DIR/corpus/$t" \
        -max_total_time="$SECONDS_PER_TARGET" \
        -print_final_stats=1 \
        -timeout=10 \
        -artifact_prefix="$FUZZ_DIR/artifacts/$t/" \
        ${FUZZ_ARGS:-} >"$log" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p' <<<"$last")
    status=ok
    if [ "$rc" -ne 0 ] || grep -qE '^==[0-9]+== ERROR|^SUMMARY: libFuzzer|deadly signal|panicked at' "$log"; then
        status=CRASH
        {
            echo "!! $t failed (exit $rc); end of the log:"
            tail -40 "$log" | sed 's/^/   /'
            artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
            if [ -n "$artifact" ]; then
                echo "   reproduce: cargo fuzz run --sanitizer $SANITIZER --debug-assertions $t $artifact"
            fi
        } >&2
    fi
    line=$(printf '%-24s %-6s %12s %10s %8s %8s %12s' "$t" "$status" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}")
    echo "$line"
    echo "$line" >"$LOGS/$t.summary"
    [ "$status" = ok ]
}

FAILED=0
running=0
for t in "${TARGETS[@]}"; do
    rm -f "$LOGS/$t.summary"
    if [ "$running" -ge "$PARALLEL" ]; then
        wait -n || FAILED=1
        running=$((running - 1))
    fi
    fuzz_one "$t" &
    running=$((running + 1))
done
while [ "$running" -gt 0 ]; do
    wait -n || FAILED=1
    running=$((running - 1))
done

echo
echo "== fuzz summary: ${SECONDS_PER_TARGET}s per target, sanitizer $SANITIZER"
printf '%-24s %-6s %12s %10s %8s %8s %12s\n' target result executions exec/s cov ft corpus
for t in "${TARGETS[@]}"; do
    cat "$LOGS/$t.summary" 2>/dev/null || { printf '%-24s %-6s\n' "$t" "FAILED"; FAILED=1; }
done
exit "$FAILED"
