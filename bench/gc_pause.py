#!/usr/bin/env python3
"""How long one full garbage collection stops a hub process that holds N connections.

    python bench/gc_pause.py [--clients 17000] [--groups 100]

The Sans-IO core takes N connects with groups (bench/core.py's connect phase,
no sockets), the start frozen as the shell does (``tune_gc``); the benchmark's
own wsproto clients are dropped, so what is left to scan is the hub's. Then
three full collections are timed. A full collection runs once the objects that
survived the young ones since the last have grown by a quarter (CPython's
rule), so a process meets it during connect waves and after a quarter of its
connections have been replaced, not on every message. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import core  # bench/core.py, beside this file


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--clients", type=int, default=17000, help="connections (a multiple of --groups)")
    p.add_argument("--groups", type=int, default=100)
    a = p.parse_args()
    gc.freeze()  # as wshub_asyncio._cli.tune_gc does after the start
    bench = core.CoreBench(core.Params(clients=a.clients, groups=a.groups, fanout=0, client_messages=0),
                           core.Markers(instructions=False))
    bench.start()
    bench.connect()
    for client in bench.clients:  # the benchmark's side of each connection is not the hub's
        client.ws = None  # type: ignore[assignment]
    gc.collect()
    pauses = []
    for _ in range(3):
        start = time.perf_counter()
        gc.collect()
        pauses.append(time.perf_counter() - start)
    tracked = len(gc.get_objects())
    print(json.dumps({"clients": a.clients, "groups": a.groups, "tracked_objects": tracked,
                      "objects_per_connection": round(tracked / a.clients, 1),
                      "full_collection_ms": round(statistics.median(pauses) * 1e3, 1),
                      "runs_ms": [round(x * 1e3, 1) for x in pauses], "python": sys.version.split()[0]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
