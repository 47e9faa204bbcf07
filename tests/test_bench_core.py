"""bench/core.py still drives the core: every phase runs and reports the operations it should.

Not a benchmark (nothing here is timed or compared): the smallest parameters,
wall-clock mode, so that a change of the core's API breaks this test instead
of silently rotting the benchmark. The benchmark checks the hub's output itself
(deliveries decoded by wsproto clients, Redis commands parsed) and exits non-zero
if the hub did not do what the protocol requires.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent.parent / "bench" / "core.py"


def run_bench(*args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(BENCH), "--json", *args], capture_output=True, text=True,
                          timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def test_every_phase_reports_its_operation_count() -> None:
    result = run_bench("--clients", "6", "--groups", "3", "--fanout", "2", "--client-messages", "2",
                       "--size", "16", "--measure", "time", "--repeat", "1")
    phases = result["phases"]
    ops = {row["phase"]: (row["ops"], row["unit"]) for row in phases}
    assert ops == {
        "empty": (0, "-"),
        "connect": (6, "connects"),
        "fanout": (2 * 6, "deliveries"),
        "groups": (6, "deliveries"),
        "client_messages": (2 * 6, "messages"),
        "disconnect": (6, "disconnects"),
    }
    assert all(row["seconds_median"] >= 0 for row in phases)


def test_instruction_mode_runs_without_valgrind() -> None:
    """The callgrind markers are plain calls: outside valgrind they do nothing."""
    result = run_bench("--clients", "2", "--groups", "1", "--fanout", "1", "--client-messages", "1",
                       "--measure", "instructions", "--phases", "connect,disconnect")
    assert [row["phase"] for row in result["phases"]] == ["connect", "disconnect"]


def test_history_mode_delivers_envelopes_through_the_history_part() -> None:
    """--history: the library's load and each group's first read answered, envelopes delivered as payloads."""
    result = run_bench("--clients", "6", "--groups", "3", "--fanout", "2", "--client-messages", "1",
                       "--measure", "time", "--repeat", "1", "--history")
    assert result["params"]["history"] is True
    assert {row["phase"]: row["ops"] for row in result["phases"]}["fanout"] == 2 * 6


HISTORY_BENCH = BENCH.parent / "history.py"


def test_the_history_benchmark_runs_on_real_processes() -> None:
    """bench/history.py at its smallest: a redis-server and a hub process of its own, every member counted."""
    proc = subprocess.run([sys.executable, str(HISTORY_BENCH), "all", "--json", "--count", "200", "--members", "3",
                           "--messages", "20", "--gap", "50"], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert set(result) == {"publish", "delivery", "repair"}
    assert result["repair"]["deliveries"] == 3 * 50
    assert set(result["publish"]) >= {"PUBLISH", "wshub_publish"}


def test_the_gc_pause_benchmark_counts_the_hubs_objects_and_finds_no_cyclic_garbage() -> None:
    """bench/gc_pause.py: its own wsproto clients are dropped before the count (each is dozens of objects), and
    a whole run of the core leaves nothing for the cycle collector, which tune_gc's thresholds rely on."""
    proc = subprocess.run([sys.executable, str(BENCH.parent / "gc_pause.py"), "--clients", "300", "--groups", "10"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["clients"] == 300 and len(result["runs_ms"]) == 3
    assert 5 < result["objects_per_connection"] < 30, result
    assert result["cyclic_garbage"] == 0, result
