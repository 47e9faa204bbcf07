#!/usr/bin/env python3
"""Markdown table of a ``bench/run.py fanout --redis ... --workers ...`` result (issue 10), one row per step.

    python bench/cluster_table.py bench/results/20261202-issue10-cluster-fanout.json

Reads the JSON line run.py printed; writes nothing but stdout.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def rows(result: dict[str, Any]) -> list[str]:
    out = ["| run | msg/s | deliveries/s | lost | p50 ms | p99 ms | hub CPU (cores) | hub µs/delivery | "
           "Redis CPU (cores, all nodes) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, res in result["results"].items():
        if "error" in res:
            out.append(f"| {name} | error: {res['error']} | | | | | | | |")
            continue
        for s in res["steps"]:
            out.append(f"| {name} | {s['rate']:g} | {s['deliveries_per_s']:,} | {s['lost']} | {s['p50_ms']} | "
                       f"{s['p99_ms']} | {s['server_cpu_util']} | {s['cpu_us_per_delivery']} | "
                       f"{s['redis_cpu_util']} |")
    return out


def main(argv: list[str]) -> int:
    with open(argv[1]) as f:
        result = json.loads(f.readline())
    print("\n".join(rows(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
