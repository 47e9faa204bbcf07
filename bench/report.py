#!/usr/bin/env python3
"""Markdown tables from bench/run.py's JSON lines (one table per scenario line).

    python bench/report.py bench/results/2026....jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

Json = dict[str, Any]

# (label, key) rows per scenario; fanout rows come from each step.
ROWS: dict[str, list[tuple[str, str]]] = {
    "connect": [
        ("clients", "clients"),
        ("connects/s (until the server is idle)", "connects_per_s"),
        ("server CPU per connect (us)", "cpu_us_per_connect"),
        ("  same, with the probe deliveries (us)", "cpu_us_per_connect_with_probes"),
        ("  kernel share of that CPU", "server_sys_share"),
        ("RSS before / after (KiB)", "rss_before_kib/rss_after_kib"),
        ("RSS per connection (KiB)", "rss_kib_per_conn"),
        ("loadgen CPU per connect (us)", "loadgen_cpu_us_per_connect"),
        ("failed connects", "failed"),
    ],
    "broadcast": [
        ("members", "members"),
        ("time to last member p50 (ms)", "last_member_p50_ms"),
        ("time to last member p99 (ms)", "last_member_p99_ms"),
        ("time to last member max (ms)", "last_member_max_ms"),
        ("server CPU per broadcast (ms)", "cpu_ms_per_broadcast"),
        ("server CPU per delivery (us)", "cpu_us_per_delivery"),
        ("  kernel share", "server_sys_share"),
        ("loadgen CPU per delivery (us)", "loadgen_cpu_us_per_delivery"),
        ("incomplete repetitions", "incomplete_reps"),
    ],
    "upstream": [
        ("clients x msg/s", "clients/rate_per_client"),
        ("messages sent / received", "sent/received"),
        ("msgs/s reaching Redis", "msgs_per_s"),
        ("latency p50 (ms)", "p50_ms"),
        ("latency p99 (ms)", "p99_ms"),
        ("latency max (ms)", "max_ms"),
        ("server CPU per message (us)", "cpu_us_per_msg"),
        ("server CPU utilisation", "server_cpu_util"),
        ("loadgen CPU per message (us)", "loadgen_cpu_us_per_msg"),
    ],
    "hold": [
        ("clients held / in their group", "clients/grouped"),
        ("failed connects / closed early", "failed/closed_early"),
        ("connects/s (until the server is idle)", "connects_per_s"),
        ("server CPU per connect (us)", "cpu_us_per_connect"),
        ("RSS before / after (KiB)", "rss_before_kib/rss_after_kib"),
        ("RSS per connection (KiB)", "rss_kib_per_conn"),
        ("loadgen RSS per connection (KiB)", "loadgen_rss_kib_per_conn"),
        ("time to last member, each broadcast (ms)", "to_last_member_ms"),
        ("delivery p50 / p99 / max (ms)", "delivery"),
        ("incomplete broadcasts", "incomplete_reps"),
    ],
}
STEP_ROWS = [
    ("offered deliveries/s", "offered_deliveries_per_s"),
    ("deliveries/s", "deliveries_per_s"),
    ("latency p50 / p99 / max (ms)", "p50_ms/p99_ms/max_ms"),
    ("server CPU per delivery (us)", "cpu_us_per_delivery"),
    ("server CPU utilisation", "server_cpu_util"),
    ("loadgen CPU per delivery (us)", "loadgen_cpu_us_per_delivery"),
    ("undelivered at drain timeout", "lost"),
]


def cell(result: Json, key: str) -> str:
    if "error" in result:
        return "error"
    parts = [result.get(k) for k in key.split("/")]
    return " / ".join(value(p) for p in parts)


def value(p: object) -> str:
    """A number with thousands separators; a dict's values (p50/p99/max) with slashes; a list with commas."""
    if p is None:
        return "-"
    if isinstance(p, int):
        return f"{p:,}"
    if isinstance(p, dict):
        return " / ".join(value(v) for v in p.values())
    if isinstance(p, list):
        return ", ".join(value(v) for v in p)
    return str(p)


def table(line: Json) -> str:
    results: Json = line["results"]
    servers = list(results)
    p = line["params"]
    m = line["machine"]
    head = (f"**{line['scenario']}** — clients {p['clients']}, groups {p['groups']}, size {p['size']} B"
            f"{', workers ' + str(p['workers']) if p.get('workers', 1) != 1 else ''}"
            f"{', uvloop' if p.get('uvloop') else ''}; load average at the end {m.get('load1')}\n\n")
    out = [head, "| metric | " + " | ".join(servers) + " |", "|---|" + "---|" * len(servers)]
    if line["scenario"] == "fanout":
        rates: list[float] = sorted({s["rate"] for r in results.values() for s in r.get("steps", [])})
        for rate in rates:
            out.append(f"| *{rate:g} publishes/s* |" + " |" * len(servers))
            for label, key in STEP_ROWS:
                cells = []
                for server in servers:
                    step = next((s for s in results[server].get("steps", []) if s["rate"] == rate), None)
                    cells.append("(stopped: saturated)" if step is None else cell(step, key))
                out.append(f"| {label} | " + " | ".join(cells) + " |")
        out.append("| **max deliveries/s** | " + " | ".join(cell(results[s], "max_deliveries_per_s")
                                                         for s in servers) + " |")
    else:
        for label, key in ROWS[line["scenario"]]:
            out.append(f"| {label} | " + " | ".join(cell(results[s], key) for s in servers) + " |")
    for k, v in line.items():
        if k.startswith("ratio_"):
            out.append(f"\n{k.removeprefix('ratio_').replace('_over_', ' / ')}: "
                       + ", ".join(f"{name} {x}" for name, x in v.items()))
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("files", type=Path, nargs="+")
    a = ap.parse_args()
    for path in a.files:
        for raw in path.read_text().splitlines():
            if raw.startswith("{"):
                sys.stdout.write(table(json.loads(raw)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
