#!/usr/bin/env bash
# Runs the public TUF client conformance suite against our client, tuf-conformance-client.
#
#   tools/tuf-conformance.sh SUITE_DIR [CLIENT] [-- PYTEST_ARGS...]
#
# SUITE_DIR  a clone of https://github.com/theupdateframework/tuf-conformance (it is never
#            vendored here; docs/CONFORMANCE.md names the commit we run).
# CLIENT     the client executable (default: target/debug/tuf-conformance-client, built
#            with cargo when missing).
#
# Installs `faketime` from Debian's packages when missing (the suite's expiry tests need it)
# and the suite's own pinned Python dependencies from PyPI into a virtual environment
# (TUF_CONFORMANCE_VENV, default /tmp/tuf-conformance-venv), then runs pytest with
# TUF_CONFORMANCE_JOBS workers (default 2). Its last line is always "N passed, M failed";
# it exits 0 only when M is 0 and at least one test ran.
set -uo pipefail

fail_setup() {
    echo "tuf-conformance: $*" >&2
    echo "0 passed, 1 failed"
    exit 2
}

[ $# -ge 1 ] || fail_setup "usage: $0 SUITE_DIR [CLIENT] [-- PYTEST_ARGS...]"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SUITE="$(cd "$1" 2>/dev/null && pwd)" || fail_setup "no directory $1"
shift
CLIENT="$ROOT/target/debug/tuf-conformance-client"
if [ $# -ge 1 ] && [ "$1" != "--" ]; then
    CLIENT="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
    shift
fi
[ "${1:-}" = "--" ] && shift
VENV="${TUF_CONFORMANCE_VENV:-/tmp/tuf-conformance-venv}"
JOBS="${TUF_CONFORMANCE_JOBS:-2}"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

[ -f "$SUITE/tuf_conformance/conftest.py" ] || fail_setup "$SUITE is not a clone of tuf-conformance"
# The suite splits its --entrypoint on spaces.
case "$CLIENT" in *" "*) fail_setup "the client path must not contain spaces: $CLIENT" ;; esac
if [ ! -x "$CLIENT" ]; then
    [ "$CLIENT" = "$ROOT/target/debug/tuf-conformance-client" ] ||
        fail_setup "$CLIENT is not an executable"
    (cd "$ROOT" && cargo build --locked -p primary-ecu --bin tuf-conformance-client) ||
        fail_setup "cargo could not build tuf-conformance-client"
fi

if ! command -v faketime >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime >/dev/null 2>&1 ||
            { apt-get update -qq >/dev/null 2>&1 &&
              DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime >/dev/null 2>&1; }
    fi
    command -v faketime >/dev/null || fail_setup "faketime is required (apt-get install faketime)"
fi

# The suite pins its dependencies in its pyproject.toml; install exactly those (the set is
# recorded so that a suite checkout with other pins reinstalls).
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    fail_setup "python3 3.11 or later is required"
DEPS="$(python3 - "$SUITE/pyproject.toml" <<'EOF'
import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))
EOF
)" || fail_setup "cannot read the suite's dependencies from $SUITE/pyproject.toml"
DEPS="$DEPS
pytest-xdist"
if [ "$(cat "$VENV/.deps" 2>/dev/null)" != "$DEPS" ]; then
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV" || fail_setup "python3 -m venv $VENV failed"
    # shellcheck disable=SC2086
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check $DEPS ||
        fail_setup "pip could not install the suite's dependencies"
    printf '%s' "$DEPS" > "$VENV/.deps"
fi

echo "tuf-conformance: suite $(git -C "$SUITE" rev-parse --short HEAD 2>/dev/null || echo '?'), client $CLIENT" >&2
ARGS=(-p no:cacheprovider -q -rfE "$SUITE/tuf_conformance" --entrypoint "$CLIENT"
      --junitxml "$OUT/junit.xml")
[ "$JOBS" -gt 1 ] 2>/dev/null && ARGS+=(-n "$JOBS")
(cd "$SUITE" && PATH="$VENV/bin:$PATH" PYTHONDONTWRITEBYTECODE=1 "$VENV/bin/python" -m pytest "${ARGS[@]}" "$@")
RC=$?

# pytest's own summary names xfails and skips differently per version: count from its
# JUnit report instead.
"$VENV/bin/python" - "$OUT/junit.xml" "$RC" <<'EOF'
import sys
import xml.etree.ElementTree as ET
report, rc = sys.argv[1], int(sys.argv[2])
try:
    cases = list(ET.parse(report).getroot().iter("testcase"))
except Exception as e:
    print(f"tuf-conformance: no report from pytest ({e}); its exit status was {rc}", file=sys.stderr)
    print("0 passed, 1 failed")
    sys.exit(2)
failed = [c for c in cases if c.find("failure") is not None or c.find("error") is not None]
skipped = [c for c in cases if c.find("skipped") is not None]
passed = len(cases) - len(failed) - len(skipped)
for c in failed:
    print(f"FAILED {c.get('classname')}::{c.get('name')}")
# pytest exiting otherwise than 0 (all passed) or 1 (tests failed), or running nothing,
# is a failed run too.
bad = len(failed) or int(rc != 0 or not cases)
if skipped:
    print(f"({len(skipped)} skipped or expected to fail)")
print(f"{passed} passed, {bad} failed")
sys.exit(0 if bad == 0 else 1)
EOF
