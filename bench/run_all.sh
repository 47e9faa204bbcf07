#!/usr/bin/env bash
# The benchmark suite of docs/benchmarks.md: every scenario once, WS-Hub and the
# websockets peer side by side in each invocation; one JSON line per scenario.
#   bench/run_all.sh [OUT.jsonl] [extra run.py options, e.g. --server wshub,proto,peer --hub-pythonpath DIR]
# Needs: a Python with the package installed (PYTHON, default python3), node, redis-server,
# and `npm ci` done in bench/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${1:-bench/results/$(date -u +%Y%m%dT%H%M%SZ).jsonl}
shift || true
run() { timeout 900 "$PY" bench/run.py "$@" | tee -a "$OUT"; }
run connect   --clients 15000 --groups 100 "$@"
run fanout    --clients 1000  --groups 1   --size 64 --rates 100,200,400,800 --seconds 5 "$@"
run fanout    --clients 10000 --groups 100 --size 64 --rates 100,1000 --seconds 5 --no-stop "$@"
run broadcast --clients 10000 --reps 30 --procs 2 "$@"
run upstream  --clients 1000  --rate 20 --seconds 10 "$@"
echo "results appended to $OUT" >&2
