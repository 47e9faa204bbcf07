#!/usr/bin/env python3
"""How long one full garbage collection stops a hub process that holds N connections.

    python bench/gc_pause.py [--clients 17000] [--groups 100]

The Sans-IO core takes N connects with groups (bench/core.py's connect phase,
no sockets), the start frozen as the shell does (``tune_gc``); the benchmark's
own wsproto clients are dropped, so what is left to scan is the hub's. Then
three full collections are timed. A full collection runs once the objects that
survived the young ones since the last have grown by a quarter (CPython's
rule), so a process meets it during connect waves and after a quarter of its
connections have been replaced, not on every message.

Then it counts the cyclic garbage a hub's lifetime leaves: with the collector
off, a second core takes every phase of bench/core.py (connects, fan-out,
group messages, client messages, disconnects), then one collection counts
what only it could free. ``tune_gc``'s larger young generation assumes that
this is 0. Prints one JSON line.
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

from wshub_asyncio._cli import tune_gc


def cyclic_garbage(clients: int, groups: int) -> int:
    """Objects only the cycle collector frees after a whole run of the core (refcounting frees the rest)."""
    gc.collect()
    gc.disable()
    try:
        bench = core.CoreBench(core.Params(clients=clients, groups=groups), core.Markers(instructions=False))
        bench.run([])
        return gc.collect()  # while ``bench`` (its own wsproto clients, which do hold cycles) is still reachable
    finally:
        gc.enable()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--clients", type=int, default=17000, help="connections (a multiple of --groups)")
    p.add_argument("--groups", type=int, default=100)
    a = p.parse_args()
    params = core.Params(clients=a.clients, groups=a.groups, fanout=0, client_messages=0)
    params.check()
    tune_gc()  # as the command line does after the start
    bench = core.CoreBench(params, core.Markers(instructions=False))
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
    del bench
    garbage = cyclic_garbage(a.clients, a.groups)
    print(json.dumps({"clients": a.clients, "groups": a.groups, "tracked_objects": tracked,
                      "objects_per_connection": round(tracked / a.clients, 1),
                      "full_collection_ms": round(statistics.median(pauses) * 1e3, 1),
                      "runs_ms": [round(x * 1e3, 1) for x in pauses], "cyclic_garbage": garbage,
                      "python": sys.version.split()[0]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
