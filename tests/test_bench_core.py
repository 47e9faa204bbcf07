"""bench/core.py keeps running against the core's public API (a benchmark that rots measures nothing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "core.py"


def test_the_core_benchmark_reports_every_phase_with_its_operation_count() -> None:
    out = subprocess.run([sys.executable, str(BENCH), "--clients", "20", "--groups", "2", "--fanout", "3",
                          "--client-messages", "2", "--repeat", "1", "--json"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    report = json.loads(out)
    ops = {p["phase"]: p["ops"] for p in report["phases"]}
    assert ops == {"connect": 20, "fanout": 60, "groups": 20, "client_messages": 40, "disconnect": 20}
    assert all(p["seconds_median"] > 0 for p in report["phases"])
