#!/usr/bin/env bash
# Runs the README's operator walkthrough (the first code block under "## Operator
# walkthrough") as a script, every command exactly as printed, so that the README cannot
# drift from the programs. Usage: tools/readme-walkthrough.sh [BIN_DIR]
#
# BIN_DIR (default target/debug) holds the built programs, fleet-sim included; it goes first
# on the PATH, as the README says. The only additions are waits: after a command that starts
# a server in the background (`... --listen HOST:PORT ... &`), the script waits (bounded) until
# the port accepts connections, as a person would wait for "listening on"; and at the end it
# waits (bounded) until the campaign completes with its image installed on the vehicle. Ports 8080, 8081
# and 50051 on 127.0.0.1 must be free. Exits non-zero when any command fails.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$(cd "${1:-$root/target/debug}" && pwd)"
work="$(mktemp -d)"
script="$work/walkthrough.sh"

# The block, continuation lines joined into one command per line.
commands="$(awk '
    /^## Operator walkthrough/ { section = 1; next }
    section && /^```/ { if (inside) exit; inside = 1; next }
    inside { print }
' "$root/README.md" | awk '
    /\\$/ { sub(/\\$/, ""); pending = pending $0; next }
    { print pending $0; pending = "" }
')"
if [ -z "$commands" ]; then
    echo "no walkthrough block found in README.md" >&2
    exit 1
fi

{
    echo 'set -euo pipefail'
    echo "cd '$work'"
    echo "export PATH='$bin':\"\$PATH\""
    echo 'trap '"'"'kill $(jobs -p) 2>/dev/null || true'"'"' EXIT'
    cat <<'EOF'
wait_for() {
    for _ in $(seq 1 600); do
        if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listens on $1:$2 after 60 s" >&2
    return 1
}
EOF
    while IFS= read -r line; do
        printf '%s\n' "$line"
        # A server started in the background: wait until it accepts connections.
        if [[ "$line" =~ --listen[[:space:]]+([0-9.]+):([0-9]+).*\&[[:space:]]*$ ]]; then
            printf 'wait_for %s %s\n' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"
        fi
    done <<<"$commands"
    cat <<'EOF'
# The walkthrough's point: the campaign's image reaches the vehicle, and the campaign
# completes (every wave ran).
for _ in $(seq 1 1800); do
    if director campaign show brake-3 --json | grep -q '"state": "completed"' \
        && director vehicle show VIN0001 --json | grep -q '"filename": "brake-3.bin"'; then
        echo "walkthrough: campaign brake-3 completed, brake-3.bin installed on VIN0001"
        exit 0
    fi
    sleep 0.1
done
echo "walkthrough: the campaign did not complete within 180 s" >&2
director campaign show brake-3 >&2
director assignment list --vin VIN0001 >&2
exit 1
EOF
} >"$script"

set +e
bash "$script"
status=$?
set -e
if [ "$status" -eq 0 ]; then
    rm -rf "$work"
else
    echo "the README walkthrough failed (status $status); its script and files are in $work" >&2
fi
exit "$status"
