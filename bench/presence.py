#!/usr/bin/env python3
"""What presence costs: connect CPU with it off and on, and its steady cost per refresh interval, in one run.

Two rigs of bench/run.py one after the other (its redis-server, listener and
Node load generators; WS-Hub on the Redis broker): ``presence.enabled`` false,
then true with ``presence.timeout`` ``--timeout`` (a refresh every timeout / 3;
what one refresh costs does not depend on the timeout, so a short one measures
many intervals quickly). For each: server CPU per connect, and Redis's own
``INFO commandstats`` over the connects; with presence, over ``--intervals``
idle refresh intervals afterwards: the commands Redis ran per interval (by
name), Redis's CPU in them, the bytes the hub sent Redis and the hub's CPU.

    python bench/presence.py --clients 10000 --groups 100 --timeout 3 --intervals 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import Options, machine, rig, wait_idle

Json = dict[str, Any]


async def redis_info(port: int, section: str) -> dict[str, str]:
    """``INFO section`` as name -> value (a raw RESP exchange: the bench needs no Redis client)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"INFO {section}\r\n".encode())
    head = await asyncio.wait_for(reader.readline(), 5)
    body = await asyncio.wait_for(reader.readexactly(int(head[1:]) + 2), 5)
    writer.close()
    out = {}
    for line in body.decode().splitlines():
        name, sep, value = line.partition(":")
        if sep:
            out[name] = value
    return out


async def commandstats(port: int) -> dict[str, tuple[int, int]]:
    """cmdstat_NAME -> (calls, usec)."""
    out = {}
    for name, value in (await redis_info(port, "commandstats")).items():
        fields = dict(f.split("=") for f in value.split(","))
        out[name.removeprefix("cmdstat_")] = (int(fields["calls"]), int(fields["usec"]))
    return out


def delta(after: dict[str, tuple[int, int]], before: dict[str, tuple[int, int]]) -> Json:
    out = {}
    for name, (calls, usec) in sorted(after.items()):
        c0, u0 = before.get(name, (0, 0))
        if calls - c0:
            out[name] = {"calls": calls - c0, "usec": usec - u0}
    return out


async def measure(a: argparse.Namespace, presence: bool, logdir: Path) -> Json:
    extra = (f"presence:\n  enabled: true\n  timeout: {a.timeout}\n  grace: 0\n" if presence else "")
    opts = Options(server="wshub", clients=a.clients, groups=a.groups, logdir=logdir, extra_yaml=extra)
    async with rig(opts) as r:
        await asyncio.sleep(1.0)
        stats0 = await commandstats(r.redis_port)
        cpu0 = r.server_cpu()
        c = await r.connect_all()
        n = c["opened"]
        stats1 = await commandstats(r.redis_port)
        out: Json = {"presence": presence, "clients": n, "grouped": c["grouped"],
                     "cpu_us_per_connect": round((c["cpu_settled"] - cpu0) * 1e6 / max(1, n), 1),
                     "redis_during_connects": delta(stats1, stats0)}
        if presence:
            await wait_idle(r.pid)
            interval = a.timeout / 3
            net0 = int((await redis_info(r.redis_port, "stats"))["total_net_input_bytes"])
            s0, cpu0, rcpu0 = await commandstats(r.redis_port), r.server_cpu(), r.helper_cpu()["redis"]
            await asyncio.sleep(interval * a.intervals)
            s1, cpu1, rcpu1 = await commandstats(r.redis_port), r.server_cpu(), r.helper_cpu()["redis"]
            net1 = int((await redis_info(r.redis_port, "stats"))["total_net_input_bytes"])
            idle = delta(s1, s0)
            k = a.intervals
            out["per_refresh_interval"] = {
                "commands": {name: round(v["calls"] / k, 1) for name, v in idle.items()},
                "redis_usec_in_commands": round(sum(v["usec"] for v in idle.values()) / k),
                "redis_cpu_ms": round((rcpu1 - rcpu0) * 1000 / k, 2),
                "bytes_to_redis": round((net1 - net0) / k),
                "hub_cpu_ms": round((cpu1 - cpu0) * 1000 / k, 2),
            }
            out["presence_entries"] = n  # one key per client here: one (group, key) entry each
        return out


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--clients", type=int, default=10_000)
    p.add_argument("--groups", type=int, default=100)
    p.add_argument("--timeout", type=float, default=3.0, help="presence.timeout (a refresh every timeout / 3)")
    p.add_argument("--intervals", type=int, default=10, help="idle refresh intervals measured")
    a = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="wshub-bench-presence-"))
    results = []
    for presence in (False, True):
        logdir = root / ("on" if presence else "off")
        logdir.mkdir()
        results.append(await measure(a, presence, logdir))
    print(json.dumps({"scenario": "presence", "params": vars(a), "machine": machine(), "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
