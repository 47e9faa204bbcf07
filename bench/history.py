#!/usr/bin/env python3
"""History's costs, measured on real processes: a redis-server and a hub process of their own, on loopback.

    python bench/history.py publish  [--count 20000]                 # FCALL wshub_publish next to PUBLISH
    python bench/history.py delivery [--members 1000 --messages 2000] # the hub's CPU per live delivery, on vs off
    python bench/history.py repair   [--members 1000 --gap 10000]    # time to repair a gap for every member
    python bench/history.py all [--json]

``publish``: ``count`` publishes to a group one hub member is in, pipelined
100 at a time, once with PUBLISH and once through ``wshub_publish``:
publishes/s and Redis's CPU per publish (``INFO cpu``, main thread).

``delivery``: ``members`` WebSocket members of one group (raw sockets that
count messages), ``messages`` group messages, published one at a time at the same pace;
the hub process's CPU (utime + stime from /proc) per delivery, with
``history.enabled: false`` and PUBLISH, then with history and
``wshub_publish``: what the history part costs a live delivery.

``repair``: ``members`` members; ``CONFIG SET requirepass`` (connections
already open stay logged in, so the hub's subscriber cannot come back),
``CLIENT KILL TYPE pubsub``, ``gap`` messages through ``wshub_publish``,
then the password is lifted: the time from then until every member has
every message, and the hub's CPU meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aredis

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "bench:"
GROUP = f"{PREFIX}group-data:g"
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class Redis:
    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="bench-history-")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def up(self) -> aredis.Redis:
        r = aredis.Redis(port=self.port)
        for _ in range(200):
            try:
                await r.ping()
                return r
            except (OSError, aredis.ConnectionError):
                await asyncio.sleep(0.05)  # polling a process just spawned
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


async def redis_cpu(r: aredis.Redis) -> float:
    info = await r.info("cpu")
    return float(info["used_cpu_sys_main_thread"]) + float(info["used_cpu_user_main_thread"])


class Hub:
    """``python -m wshub_asyncio`` on a free port, configured from the environment."""

    def __init__(self, redis_port: int, *, history: bool, size: int = 1000) -> None:
        self.port = free_port()
        env = {**os.environ, "WSHUB_ADDRESS": f"127.0.0.1:{self.port}", "WSHUB_BROKER": "redis",
               "WSHUB_REDIS_ADDRESS": f"127.0.0.1:{redis_port}", "WSHUB_REDIS_CHANNEL_PREFIX": PREFIX,
               "WSHUB_REDIS_RECONNECT_MIN": "0.05", "WSHUB_REDIS_RECONNECT_MAX": "0.2",
               "WSHUB_HISTORY_ENABLED": "true" if history else "false", "WSHUB_HISTORY_SIZE": str(size),
               "WSHUB_WEBSOCKET_MAX_OUTBOUND_BUFFER": str(64 * 1024 * 1024)}
        self.proc = subprocess.Popen([sys.executable, "-m", "wshub_asyncio", "--config", os.devnull], cwd=ROOT,
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def ready(self) -> None:
        for _ in range(400):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
                status = await reader.readline()
                writer.close()
                if b" 200 " in status:
                    return
            except OSError:
                pass
            await asyncio.sleep(0.025)  # polling a process just spawned
        raise RuntimeError("the hub did not become ready")

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Member(asyncio.Protocol):
    """A WebSocket member that only counts the group messages it gets (each payload ends with ``|``)."""

    def __init__(self, key: str, on_count: asyncio.Event) -> None:
        self.key = key
        self.count = 0
        self.target = 0
        self.reached = on_count
        self.upgraded = asyncio.get_running_loop().create_future()
        self.head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(f"GET /ws?session_key={self.key} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                        "Sec-WebSocket-Version: 13\r\n\r\n".encode())

    def data_received(self, data: bytes) -> None:
        if not self.upgraded.done():
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            self.upgraded.set_result(self.head.startswith(b"HTTP/1.1 101"))
            data = self.head[end + 4:]
        self.count += data.count(b"|")
        if self.target and self.count >= self.target:
            self.reached.set()


async def members_in_group(hub: Hub, r: aredis.Redis, n: int) -> list[Member]:
    """``n`` members, each announced and answered with the group ``g``, all confirmed."""
    loop = asyncio.get_running_loop()
    sub = r.pubsub()
    await sub.subscribe(f"{PREFIX}client-new")
    members: list[Member] = []
    for start in range(0, n, 100):
        batch = []
        for i in range(start, min(n, start + 100)):
            member = Member(f"m{i}", asyncio.Event())
            await loop.create_connection(lambda member=member: member, "127.0.0.1", hub.port)  # type: ignore[misc]
            batch.append(member)
        assert all(await asyncio.gather(*(m.upgraded for m in batch)))
        members += batch
    announced = 0
    while announced < n:
        msg = await sub.get_message(ignore_subscribe_messages=True, timeout=5)
        if msg is None:
            continue
        announced += 1
        await r.publish(f"{PREFIX}groups-new:{msg['data'].decode()}", '["g"]')
    await sub.aclose()
    await hub.ready()  # every groups-new and the group's channel confirmed
    probe = "probe|"  # one message all must see: every member is in the group
    await arrive(members, lambda: r.publish(GROUP, probe), 1)
    return members


async def arrive(members: list[Member], publish: Any, count: int, timeout: float = 120.0) -> float:
    """Run ``publish()`` and wait until each member has ``count`` more messages; seconds from the call."""
    for m in members:
        m.reached.clear()
        m.target = m.count + count
    start = time.perf_counter()
    await publish()
    await asyncio.wait_for(asyncio.gather(*(m.reached.wait() for m in members)), timeout)
    return time.perf_counter() - start


@contextlib.asynccontextmanager
async def rig(members: int, *, history: bool = True,
              size: int = 1000) -> AsyncIterator[tuple[aredis.Redis, Hub, list[Member]]]:
    """A redis-server and a hub process of their own, ``members`` in the group; both stopped at the end."""
    server = Redis()
    hub: Hub | None = None
    try:
        r = await server.up()
        hub = Hub(server.port, history=history, size=size)
        await hub.ready()
        yield r, hub, await members_in_group(hub, r, members)
    finally:
        if hub is not None:
            hub.stop()
        server.stop()


async def fcall(r: aredis.Redis, payload: str) -> Any:
    return await r.fcall("wshub_publish", 1, GROUP, payload)  # type: ignore[misc]


async def bench_publish(a: argparse.Namespace) -> dict[str, Any]:
    async with rig(1) as (r, _, members):
        out: dict[str, Any] = {}
        for kind in ("PUBLISH", "wshub_publish"):
            cpu0, t0 = await redis_cpu(r), time.perf_counter()
            for start in range(0, a.count, 100):
                pipe = r.pipeline(transaction=False)
                for i in range(start, min(a.count, start + 100)):
                    if kind == "PUBLISH":
                        pipe.publish(GROUP, f"{i:08d}{'x' * 56}|")
                    else:
                        pipe.fcall("wshub_publish", 1, GROUP, f"{i:08d}{'x' * 56}|")
                await pipe.execute()
            wall, cpu = time.perf_counter() - t0, await redis_cpu(r) - cpu0
            out[kind] = {"publishes_per_s": round(a.count / wall),
                         "redis_cpu_us_per_publish": round(cpu / a.count * 1e6, 2)}
            await asyncio.wait_for(asyncio.gather(*(wait_count(m, a.count) for m in members)), 60)
        out["memory_per_group_kib"] = round(int(await r.memory_usage(GROUP) or 0) / 1024, 1)
        return out


async def wait_count(member: Member, more: int) -> None:
    member.target = member.count + more if member.count < member.target else member.target
    while member.count < member.target:
        member.reached.clear()
        if member.count >= member.target:
            return
        await member.reached.wait()


async def publish_all(r: aredis.Redis, history: bool, count: int) -> None:
    for i in range(count):
        payload = f"{i:08d}|"
        await (fcall(r, payload) if history else r.publish(GROUP, payload))
        # One message at a time, at the same pace for both: the hub reads each on its own (a faster publisher
        # would let it batch several per read and write, which is cheaper per delivery but says nothing of history).
        await asyncio.sleep(0.001)


async def bench_delivery(a: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for history in (False, True, False, True):  # alternated: drift on this machine hits both alike
        async with rig(a.members, history=history) as (r, hub, members):
            cpu0 = hub.cpu()

            await arrive(members, lambda r=r, history=history: publish_all(r, history, a.messages), a.messages)
            cpu = hub.cpu() - cpu0
            key = "history on (wshub_publish)" if history else "history off (PUBLISH)"
            out.setdefault(key, []).append(round(cpu / (a.members * a.messages) * 1e6, 3))
    return {k: {"hub_cpu_us_per_delivery": v, "best": min(v)} for k, v in out.items()}


async def bench_repair(a: argparse.Namespace) -> dict[str, Any]:
    async with rig(a.members, size=a.gap) as (r, hub, members):  # the history holds the whole gap
        await r.config_set("requirepass", "gate")  # r stays logged in; the hub's subscriber cannot come back
        await r.client_kill_filter(_type="pubsub")
        pipe = r.pipeline(transaction=False)
        for i in range(a.gap):
            pipe.fcall("wshub_publish", 1, GROUP, f"{i:08d}|")
        await pipe.execute()
        for m in members:
            m.reached.clear()
            m.target = m.count + a.gap
        cpu0 = hub.cpu()
        start = time.perf_counter()
        await r.config_set("requirepass", "")
        await asyncio.wait_for(asyncio.gather(*(m.reached.wait() for m in members)), 300)
        elapsed = time.perf_counter() - start
        return {"members": a.members, "gap": a.gap, "deliveries": a.members * a.gap,
                "seconds_to_repair": round(elapsed, 3), "hub_cpu_s": round(hub.cpu() - cpu0, 3),
                "note": "from lifting the password (the hub's reconnect backoff included) to the last delivery"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("what", choices=["publish", "delivery", "repair", "all"])
    p.add_argument("--count", type=int, default=20000, help="publish: messages per kind")
    p.add_argument("--members", type=int, default=1000)
    p.add_argument("--messages", type=int, default=2000, help="delivery: messages per run")
    p.add_argument("--gap", type=int, default=10000, help="repair: messages published while cut off")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    results: dict[str, Any] = {}
    for what in (["publish", "delivery", "repair"] if a.what == "all" else [a.what]):
        results[what] = asyncio.run({"publish": bench_publish, "delivery": bench_delivery,
                                     "repair": bench_repair}[what](a))
    print(json.dumps(results, indent=None if a.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
