#!/usr/bin/env bash
# Benchmarks our TUF client against python-tuf's ngclient and tough, side by side, on the
# same generated repositories served by the same HTTP server on 127.0.0.1. See README.md.
#
#   tools/peer-bench/run.sh
#
# Optional environment:
#   SIZES="1000 10000"   numbers of small targets, one repository each
#   ROUNDS=3             rounds; each runs every client once per repository, order rotated
#   RUNS=5               measurements per client per round (K)
#   WHOLE=5              whole-process runs per client per repository
#   KEEP=1               keep the temporary directory (repositories, raw results.jsonl)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
SIZES="${SIZES:-1000 10000}"
ROUNDS="${ROUNDS:-3}"
RUNS="${RUNS:-5}"
WHOLE="${WHOLE:-5}"
BENCH="$HERE/target/release/peer-bench"
VENV="$HERE/.venv"
PY="$VENV/bin/python"
OURS_CLI="$REPO/target/release/tuf-conformance-client"

log() { echo "peer-bench: $*" >&2; }

# --- build (never the main workspace: this crate is its own workspace and target dir) ---
log "building $BENCH (release, -j 1, nice 19)"
build_start=$EPOCHREALTIME
CARGO_TARGET_DIR="$HERE/target" nice -n 19 \
    cargo build --release -j 1 --manifest-path "$HERE/Cargo.toml"
build_secs=$(python3 -c "print(f'{$EPOCHREALTIME - $build_start:.1f}')")
log "build took ${build_secs}s"

# --- python-tuf venv ---
if ! "$PY" -c 'import tuf.ngclient, cryptography' 2>/dev/null; then
    log "creating $VENV with python-tuf"
    python3 -m venv "$VENV"
    # cryptography: without it securesystemslib verifies ed25519 in pure Python.
    nice -n 19 "$VENV/bin/pip" install --quiet tuf cryptography
fi

# --- repositories and the one server ---
TMP="$(mktemp -d -t peer-bench.XXXXXX)"
SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [ "${KEEP:-0}" = 1 ]; then
        log "kept $TMP"
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
mkdir -p "$TMP/work"

for n in $SIZES; do
    "$BENCH" generate --targets "$n" --out "$TMP/r$n"
done

PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
python3 -m http.server --bind 127.0.0.1 --directory "$TMP" "$PORT" >"$TMP/server.log" 2>&1 &
SERVER_PID=$!
BASE="http://127.0.0.1:$PORT"
# Readiness by polling (at most ~10 s).
python3 - "$BASE/" <<'EOF'
import sys, time, urllib.request
for _ in range(200):
    try:
        urllib.request.urlopen(sys.argv[1], timeout=1).read()
        sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit("peer-bench: the HTTP server did not come up")
EOF
log "serving $TMP on $BASE (pid $SERVER_PID)"

RESULTS="$TMP/results.jsonl"
CLIENTS=(ours python-tuf tough tough-no-backoff)

# One measurement process: run CLIENT on repository N, append its line tagged with N.
measure() {
    local client="$1" n="$2" line
    local args=(--metadata-url "$BASE/r$n/metadata" --targets-url "$BASE/r$n/targets"
        --root "$TMP/r$n/metadata/1.root.json" --runs "$RUNS" --download large.bin
        --workdir "$TMP/work")
    if [ "$client" = python-tuf ]; then
        line="$("$PY" "$HERE/python_tuf.py" "${args[@]}")"
    else
        line="$("$BENCH" run --client "$client" "${args[@]}")"
    fi
    echo "{\"kind\":\"run\",\"size\":$n,\"data\":$line}" >>"$RESULTS"
}

# One whole process (init + refresh + download), wall time from this shell.
whole() {
    local client="$1" n="$2" start ms dir
    dir="$(mktemp -d -p "$TMP/work")"
    local md="$BASE/r$n/metadata" tg="$BASE/r$n/targets" root="$TMP/r$n/metadata/1.root.json"
    start=$EPOCHREALTIME
    case "$client" in
        ours)
            "$OURS_CLI" --metadata-dir "$dir/md" init "$root"
            RUST_LOG=warn "$OURS_CLI" --metadata-url "$md" --metadata-dir "$dir/md" \
                --target-name large.bin --target-dir "$dir/out" --target-base-url "$tg" download
            ;;
        python-tuf)
            "$PY" "$HERE/python_tuf.py" --metadata-url "$md" --targets-url "$tg" --root "$root" \
                --runs 1 --only-download --download large.bin --workdir "$dir" >/dev/null
            ;;
        *)
            "$BENCH" run --client "$client" --metadata-url "$md" --targets-url "$tg" --root "$root" \
                --runs 1 --only-download --download large.bin --workdir "$dir" >/dev/null
            ;;
    esac
    ms=$(python3 -c "print(round(($EPOCHREALTIME - $start) * 1000, 3))")
    rm -rf "$dir"
    echo "{\"kind\":\"whole\",\"size\":$n,\"client\":\"$client\",\"ms\":$ms}" >>"$RESULTS"
}

load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq 1 "$ROUNDS"); do
    for n in $SIZES; do
        # Rotate the order each round so no client always goes first.
        for i in "${!CLIENTS[@]}"; do
            c="${CLIENTS[$(((i + round - 1) % ${#CLIENTS[@]}))]}"
            log "round $round/$ROUNDS, $n targets: $c (K=$RUNS)"
            measure "$c" "$n"
        done
    done
done

WHOLE_CLIENTS=(python-tuf tough tough-no-backoff)
if [ -x "$OURS_CLI" ]; then
    WHOLE_CLIENTS=(ours "${WHOLE_CLIENTS[@]}")
else
    log "no $OURS_CLI: the whole-process figure for ours is left out (build it yourself)"
fi
for rep in $(seq 1 "$WHOLE"); do
    for n in $SIZES; do
        for c in "${WHOLE_CLIENTS[@]}"; do
            whole "$c" "$n"
        done
    done
done
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"

# --- the table ---
OURS_CLI_INFO="absent"
if [ -x "$OURS_CLI" ]; then
    OURS_CLI_INFO="$OURS_CLI (built $(date -u -r "$OURS_CLI" '+%Y-%m-%d %H:%M UTC'))"
fi
TOUGH_VERSION="$(awk '/^name = "tough"$/ {getline; gsub(/"/, "", $3); print $3}' "$HERE/Cargo.lock")"
python3 - "$RESULTS" <<EOF
import json, statistics, sys

rows = [json.loads(l) for l in open(sys.argv[1])]
sizes = [int(s) for s in "$SIZES".split()]
clients = ["ours", "python-tuf", "tough", "tough-no-backoff"]
header = ["ours", "python-tuf", "tough", "tough-nb", "py/ours", "tough/ours", "tough-nb/ours"]
py_version = next((r["data"].get("version") for r in rows
                   if r["kind"] == "run" and r["data"]["client"] == "python-tuf"), "?")

# Every client must have verified every target and written all of large.bin.
for r in rows:
    if r["kind"] == "run":
        d = r["data"]
        if d["targets"] != r["size"] + 1 or d["downloaded_bytes"] != 8 << 20:
            sys.exit(f"peer-bench: {d['client']} at {r['size']}: {d['targets']} targets, "
                     f"{d['downloaded_bytes']} bytes downloaded")

def pooled(size, client, metric):
    out = []
    for r in rows:
        if r["kind"] == "run" and r["size"] == size and r["data"]["client"] == client:
            out += r["data"][metric]["samples"]
    return out

def whole(size, client):
    return [r["ms"] for r in rows
            if r["kind"] == "whole" and r["size"] == size and r["client"] == client]

def table(title, get):
    print(f"\n{title}")
    print(f"{'targets':>8} " + " ".join(f"{h:>13}" for h in header))
    for size in sizes:
        med = {}
        cells = []
        for c in clients:
            s = get(size, c)
            if s:
                med[c] = statistics.median(s)
                cells.append(f"{med[c]:7.1f} ({min(s):.0f})")
            else:
                cells.append("-")
        for c in ["python-tuf", "tough", "tough-no-backoff"]:
            cells.append(f"{med[c] / med['ours']:.2f}x" if c in med and "ours" in med else "-")
        print(f"{size:>8} " + " ".join(f"{x:>13}" for x in cells))

n_runs = $ROUNDS * $RUNS
print(f"peer-bench: median ms (min in parentheses); ratios are medians over ours (>1: ours faster)")
print(f"ours = primary-ecu Updater; python-tuf {py_version} ngclient.Updater; "
      f"tough $TOUGH_VERSION RepositoryLoader (tough-nb: initial_backoff 0)")
print(f"samples per cell: {n_runs} ($ROUNDS rounds x $RUNS runs); targets = small targets (each repository also lists large.bin, 8 MiB)")
table("refresh from empty state (root, timestamp, snapshot, targets)",
      lambda s, c: pooled(s, c, "refresh_ms"))
table("refresh + download of large.bin (8 MiB) to a file",
      lambda s, c: pooled(s, c, "refresh_download_ms"))
table("whole process: init + refresh + download, wall time ($WHOLE runs each)", whole)
print()
print("ours whole-process binary: $OURS_CLI_INFO (init and download are two processes)")
print("checked: every run verified all targets (small + large.bin) and wrote 8 MiB")
print("server: python3 -m http.server (ThreadingHTTPServer, HTTP/1.0) on 127.0.0.1, same for all")
print(f"load average before/after: $load_before / $load_after; build: ${build_secs}s")
EOF
