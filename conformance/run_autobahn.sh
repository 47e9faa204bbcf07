#!/usr/bin/env bash
# Autobahn|Testsuite fuzzing client against the WS-Hub echo app (docs/conformance.md).
#
#   conformance/run_autobahn.sh [CASE_PATTERN ...]     e.g.  conformance/run_autobahn.sh '6.4.*' 3.2
#
# Environment:
#   PYTHON       Python that has wshub installed   (default: /tmp/wsvenv/bin/python, else python3)
#   PY27         CPython 2.7 for autobahntestsuite (default: pyenv's 2.7.18)
#   AB_VENV      where the 2.7 virtualenv lives    (default: /tmp/ab27; created if missing)
#   REPORTS      where reports go                  (default: /tmp/wshub-autobahn; never inside the repo)
#   ECHO_SRC     directory the echo app is run from (default: this checkout); point it at a
#                copy of the tree to try a candidate change to the core
#   SHELL_NAME   which shell serves the echo app: asyncio (default) or trio
#                (python -m wshub_$SHELL_NAME.echo)
#   ECHO_ARGS    more arguments for the echo app, e.g. --compression (with cases '12.*' '13.*')
#
# Exits 0 when no case is FAILED or NON-STRICT, 1 otherwise, 2 on a setup error.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
PYTHON="${PYTHON:-/tmp/wsvenv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"
PY27="${PY27:-${PYENV_ROOT:-$HOME/.pyenv}/versions/2.7.18/bin/python}"
AB_VENV="${AB_VENV:-/tmp/ab27}"
REPORTS="${REPORTS:-/tmp/wshub-autobahn}"
SHELL_NAME="${SHELL_NAME:-asyncio}"
case "$SHELL_NAME" in asyncio|trio) ;; *) echo "run_autobahn: SHELL_NAME must be asyncio or trio" >&2; exit 2;; esac

mkdir -p "$REPORTS"

# autobahntestsuite runs on CPython 2.7 only; requirements-py27.txt pins the set
# that installed and ran here (virtualenv 20.22 dropped 2.7, so did later deps).
if [ ! -x "$AB_VENV/bin/wstest" ]; then
    [ -x "$PY27" ] || { echo "run_autobahn: no CPython 2.7 at $PY27 (set PY27)" >&2; exit 2; }
    echo "creating $AB_VENV (log: $REPORTS/setup.log)"
    {
        "$PY27" -m virtualenv --version || "$PY27" -m pip install 'virtualenv<20.22'
        "$PY27" -m virtualenv "$AB_VENV"
        "$AB_VENV/bin/pip" install -r "$here/requirements-py27.txt"
    } >"$REPORTS/setup.log" 2>&1 || { tail -20 "$REPORTS/setup.log" >&2; exit 2; }
fi

port="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
rm -rf "$REPORTS/servers"

# The spec with this run's port, outdir and (optionally) the cases asked for.
"$PYTHON" - "$here/fuzzingclient.json" "$REPORTS/spec.json" "$port" "$REPORTS/servers" "$@" <<'PY'
import json, sys
src, dst, port, outdir, *cases = sys.argv[1:]
spec = json.load(open(src))
spec["outdir"] = outdir
spec["servers"][0]["url"] = f"ws://127.0.0.1:{port}"
if cases:
    spec["cases"] = cases
json.dump(spec, open(dst, "w"), indent=2)
PY

cd "${ECHO_SRC:-$repo}"  # python -m puts the current directory first on sys.path
# shellcheck disable=SC2086  # ECHO_ARGS is a list of words
"$PYTHON" -m "wshub_$SHELL_NAME.echo" --address "127.0.0.1:$port" ${ECHO_ARGS:-} >"$REPORTS/echo.log" 2>&1 &
server_pid=$!
stop_server() {
    if kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid"
        wait "$server_pid" || true
    fi
}
trap stop_server EXIT

for _ in $(seq 100); do
    grep -q "listening on" "$REPORTS/echo.log" 2>/dev/null && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$REPORTS/echo.log" >&2; exit 2; }
    sleep 0.1
done

echo "echo server (wshub_$SHELL_NAME) pid $server_pid on 127.0.0.1:$port; reports in $REPORTS/servers"
started=$(date +%s)
(cd "$REPORTS" && "$AB_VENV/bin/wstest" -m fuzzingclient -s "$REPORTS/spec.json") >"$REPORTS/wstest.log" 2>&1 \
    || { tail -20 "$REPORTS/wstest.log" >&2; exit 2; }
echo "wstest finished in $(( $(date +%s) - started ))s"

stop_server
trap - EXIT
"$PYTHON" "$here/summarise.py" "$REPORTS/servers/index.json"
