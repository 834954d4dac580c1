#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ (docs/FUZZING.md), each for a bounded time, on the
# committed corpus and the regression inputs, and prints one line per target:
#
#   tools/fuzz.sh [--seconds N] [TARGET...]     (default: 30 s each, every target)
#
# New inputs the fuzzer finds go to fuzz/target/work/<target> (not committed); a crash,
# panic, hang (10 s) or a process above 2 GiB RSS stops the target, leaves its input in
# fuzz/artifacts/<target>/, and makes the script exit non-zero. Works on the stable
# toolchain (`-s none`: the project has no unsafe code; libFuzzer's coverage
# instrumentation needs no nightly). Installs cargo-fuzz from crates.io when missing.
set -euo pipefail

seconds=30
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) targets+=("$1"); shift ;;
    esac
done

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/fuzz"
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --version 0.13.2
fi
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi

cargo fuzz build -s none
failed=0
for target in "${targets[@]}"; do
    work="target/work/$target"
    mkdir -p "$work" "regressions/$target" "artifacts/$target"
    log="target/work/$target.log"
    if cargo fuzz run -s none "$target" "$work" "corpus/$target" "regressions/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        >"$log" 2>&1; then
        outcome="0 crashes"
    else
        outcome="FAILED (see fuzz/$log; the input is in fuzz/artifacts/$target/)"
        failed=1
    fi
    runs=$(grep -aoE '^stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo "?")
    rate=$(grep -aoE '^stat::average_exec_per_sec: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo "?")
    cov=$(grep -aoE 'cov: [0-9]+' "$log" | tail -1 || true)
    printf '%-16s %12s executions in %ss (%s/s, %s): %s\n' "$target" "$runs" "$seconds" "$rate" "$cov" "$outcome"
done
exit $failed
