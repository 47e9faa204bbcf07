#!/usr/bin/env python3
"""WS-Hub benchmark orchestrator: one command per scenario, one JSON line of results.

Every run starts its own redis-server on a free port, the server under test
(WS-Hub: ``python -m wshub_asyncio``, or ``python -m wshub_trio`` for the servers
named ``wshub-trio``, ``wshub-trio-memory``; the reference peer ``peer``: ``bench/peer_websockets.py``;
the Node peer ``node``: ``bench/peer_node.js`` on ws + ioredis), the benchmark listener, the
publisher (and, for ``upstream``, a Redis subscriber) and the Node load generator(s).
``--server wshub-memory`` runs WS-Hub on its memory broker instead: no redis-server, the listener
(``bench/api_listener.js``) reads ``GET /api/events`` and answers with ``PUT /api/keys/KEY/groups``, and the
publisher POSTs to ``/api/groups/GROUP`` over ``--api-conns`` keep-alive
connections. It measures the server's CPU from
/proc/PID/stat (utime+stime) and RSS from /proc/PID/status, and stops every
process it started, by PID. With ``--server both`` the two servers run one after
the other in the same invocation, so their numbers can be compared as ratios.

    python bench/run.py connect   --server both --clients 15000 --groups 100
    python bench/run.py fanout    --server both --clients 1000 --groups 1 --size 64 --rates 100,200,400 --seconds 5
    python bench/run.py broadcast --server both --clients 10000 --reps 30
    python bench/run.py upstream  --server both --clients 1000 --rate 20 --seconds 10
    python bench/run.py fanout    --server wshub,wshub-memory --clients 1000 --groups 1 --rates 100,400,800
    python bench/run.py api_publish --server wshub,wshub-memory --clients 20 --seconds 5 --api-conns 4 --api-depth 1
    python bench/run.py connect   --server wshub,wshub-trio --clients 15000 --groups 100
    python bench/run.py connect   --server wshub,node,peer --clients 15000 --groups 100   (issue 13: next to Node ws)
    python bench/run.py hold      --server wshub --workers 6 --clients 100000 --per-address 1000 --procs 7 \
        --concurrency 300 --budget 420 --reps 2 --drain 60   (issue 13; 1,000 per source address: bind() stays cheap)

``hold``: ``--clients`` connections held open, every one in a group, then ``--reps`` broadcasts (one publish per
group) counted to the last member; RSS of the hub's tree per connection, each process's open files (how the
kernel spread the connects over SO_REUSEPORT workers), the kernel's TCP buffer memory (/proc/net/sockstat,
machine-wide, both ends of every loopback connection) and the connect rate.
    python bench/run.py fanout    --server wshub --redis standalone,cluster-sharded,cluster-classic --workers 1,3 \
        --clients 1000 --groups 30 --rates 200,400,800,1600   (issue 10; bench/cluster_table.py prints the table)

``--redis cluster-sharded`` / ``cluster-classic``: six redis-servers with ``--cluster-enabled`` (three masters, a
replica each), WS-Hub in ``redis.mode: cluster`` with that ``redis.pubsub``; the listener and publisher get
``CLUSTER SLOTS`` and send each channel to the master of its slot (SPUBLISH, or PUBLISH in classic mode).

``api_publish``: a closed loop of publishes to one group of ``--clients`` members,
``--api-conns`` connections with ``--api-depth`` requests in flight on each: first
``POST /api/groups/g0`` (keep-alive), then, on the Redis broker, PUBLISH straight to
the hub's Redis on as many connections, the same depth (1: not pipelined).

A/B runs of a patched copy of WS-Hub: ``--server wshub,proto --hub-pythonpath /tmp/copy``;
uvloop: ``--server wshub+uv,peer+uv --uvloop DIR`` (DIR from ``pip install --target DIR uvloop``);
WS-Hub's ``workers: N``: ``--workers N`` (CPU and RSS are summed over the process tree).
Profiles: ``--profile FILE`` (py-spy), then ``python bench/profile_top.py FILE.wshub``.

Clocks: the payloads carry CLOCK_MONOTONIC microseconds (Node's process.hrtime,
Python's time.monotonic_ns), so latencies are comparable across processes of
this machine. Every wait here is bounded in time; every loop in count.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PYTHON = sys.executable
NODE = shutil.which("node") or "node"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
REDIS_KINDS = ("standalone", "cluster-sharded", "cluster-classic")
PEERS = ("peer", "node")  # the reference servers: bench/peer_websockets.py, bench/peer_node.js
CLK_TCK = os.sysconf("SC_CLK_TCK")
PREFIX = "bench:"
MAX_CLIENTS_PER_PROC = 10_000  # each loadgen process stays well below the 20,000 open-files limit
Json = dict[str, Any]


# -- measurements -----------------------------------------------------------------------


def cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process (all threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all threads), in seconds."""
    return sum(cpu_split(pid))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (WS-Hub with ``workers: N`` forks N hub processes)."""
    out = [pid]
    i = 0
    while i < len(out):
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{out[i]}/task"):
                with open(f"/proc/{out[i]}/task/{task}/children") as f:
                    out.extend(int(c) for c in f.read().split())
        i += 1
    return out


def tree_cpu(pid: int) -> tuple[float, float]:
    """(utime + stime, stime) summed over the process tree, in seconds."""
    total = sys_ = 0.0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            u, s = cpu_split(p)
            total += u + s
            sys_ += s
    return total, sys_


def tree_rss_kib(pid: int) -> int:
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            total += rss_kib(p)
    return total


def now_us() -> int:
    """CLOCK_MONOTONIC in microseconds: the clock of every timestamp in the payloads."""
    return time.monotonic_ns() // 1000


# The histogram layout of bench/common.js: 1 us buckets below 2048 us, then 256 per power of two.
LINEAR = 2048
SUB = 256


def bucket_value(b: int) -> float:
    """Upper bound of histogram bucket ``b``, in microseconds."""
    if b < LINEAR:
        return float(b + 1)
    return float(2.0 ** (11 + (b - LINEAR + 1) / SUB))


@dataclass
class Histogram:
    counts: dict[int, int] = field(default_factory=dict)
    total: int = 0
    max_us: float = 0.0

    def merge(self, step: Json) -> None:
        for b, c in step["hist"]:
            self.counts[b] = self.counts.get(b, 0) + c
            self.total += c
        self.max_us = max(self.max_us, float(step["max"]))

    def quantile(self, q: float) -> float:
        if not self.total:
            return math.nan
        rank = max(1, math.ceil(q * self.total))
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= rank:
                return min(bucket_value(b), self.max_us)
        return self.max_us

    def summary_ms(self) -> Json:
        return {
            "p50_ms": round(self.quantile(0.50) / 1000, 3),
            "p99_ms": round(self.quantile(0.99) / 1000, 3),
            "max_ms": round(self.max_us / 1000, 3),
        }


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of a small sample."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


# -- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class NodeProc:
    """A Node helper speaking JSON lines: commands on stdin, events on stdout."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.pid = proc.pid
        self.events: asyncio.Queue[Json] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, name: str, script: str, args: Sequence[str], logdir: Path) -> NodeProc:
        stderr = open(logdir / f"{name}.err", "wb")  # noqa: SIM115 - closed with the process
        # BENCH_NODE_FLAGS (e.g. "--cpu-prof --cpu-prof-dir=/tmp/p") applies to the load generators only.
        flags = os.environ.get("BENCH_NODE_FLAGS", "").split() if script == "loadgen.js" else []
        proc = await asyncio.create_subprocess_exec(
            NODE, *flags, str(BENCH / script), *args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
            limit=64 * 1024 * 1024, cwd=BENCH,
        )
        stderr.close()
        return cls(name, proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                await self.events.put({"event": "exit"})
                return
            try:
                await self.events.put(json.loads(line))
            except ValueError:
                print(f"[{self.name}] {line.decode(errors='replace').rstrip()}", file=sys.stderr)

    async def send(self, cmd: Json) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        await self.proc.stdin.drain()

    async def wait(self, event: str, timeout: float) -> Json:
        """The next event of kind ``event``; errors and exits raise."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no {event!r} within {timeout:g}s")
            try:
                msg = await asyncio.wait_for(self.events.get(), left)
            except asyncio.TimeoutError:
                raise TimeoutError(f"{self.name}: no {event!r} within {timeout:g}s") from None
            if msg.get("event") == event:
                return msg
            if msg.get("event") in ("error", "exit"):
                raise RuntimeError(f"{self.name}: {msg}")

    async def call(self, cmd: Json, event: str, timeout: float = 30.0) -> Json:
        await self.send(cmd)
        return await self.wait(event, timeout)

    async def stop(self) -> None:
        """Close stdin (the helpers exit on EOF), then SIGTERM / SIGKILL this PID if needed."""
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        await stop_pid(self.proc, 5.0)
        self._reader.cancel()


async def stop_pid(proc: asyncio.subprocess.Process, grace: float) -> None:
    """Give the process ``grace`` seconds to exit by itself, then ``terminate`` it."""
    if proc.returncode is not None:
        return
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except asyncio.TimeoutError:
        await terminate(proc, grace)


async def terminate(proc: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM this PID, wait, SIGKILL it if it is still there."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except asyncio.TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()


async def wait_tcp(port: int, timeout: float, proc: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"process {proc.pid} exited with {proc.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)  # polling a process we just spawned: nothing to await
    raise TimeoutError(f"nothing listening on {port} after {timeout:g}s")


async def wait_idle(pid: int, window: float = 0.1, busy: float = 0.05, timeout: float = 10.0) -> int:
    """Wait (bounded) until ``pid`` used under ``busy`` of a CPU over ``window``; returns when (us)."""
    deadline = time.monotonic() + timeout
    while True:
        t = now_us()
        c0 = tree_cpu(pid)[0]
        await asyncio.sleep(window)
        if tree_cpu(pid)[0] - c0 < busy * window + 1 / CLK_TCK or time.monotonic() > deadline:
            return t


async def http_status(port: int, path: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    line = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    return int(line.split()[1]) if line else 0


async def redis_ping(port: int) -> bool:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.write(b"PING\r\n")
    line = await asyncio.wait_for(reader.readline(), 2)
    writer.close()
    return line.startswith(b"+PONG")


# -- one rig: redis + listener + server + publisher + loadgens -----------------------------


@dataclass
class Options:
    server: str  # wshub, peer (bench/peer_websockets.py) or node (bench/peer_node.js)
    clients: int
    groups: int
    size: int = 64
    procs: int = 0
    per_address: int = 25_000
    concurrency: int = 200
    receiver: str = "raw"
    subscriber: bool = False
    hub_pythonpath: str = ""
    uvloop: str = ""
    workers: int = 1
    profile: str = ""
    logdir: Path = Path("/tmp")
    broker: str = "redis"  # WS-Hub's broker: redis, or memory (no redis-server; the helpers use the HTTP API)
    shell: str = "asyncio"  # WS-Hub's event loop: python -m wshub_asyncio, or wshub_trio (servers named NAME-trio)
    api: bool = False  # give WS-Hub an api.key (the memory broker always has one)
    api_conns: int = 4  # keep-alive connections of an HTTP API publisher
    api_depth: int = 1  # requests in flight on each of them (1: no pipelining)
    extra_yaml: str = ""  # appended to WS-Hub's config file (bench/presence.py: a presence section)
    compression: bool = False  # permessage-deflate: servers on, load generators offer it
    redis: str = "standalone"  # one redis-server, or a 3-master + 3-replica cluster (sharded or classic pub/sub)

    @property
    def cluster(self) -> bool:
        return self.redis.startswith("cluster")

    @property
    def memory(self) -> bool:
        return self.broker == "memory"


class Rig:
    def __init__(self, opts: Options) -> None:
        self.o = opts
        self.redis: asyncio.subprocess.Process | None = None
        self.redis_nodes: list[asyncio.subprocess.Process] = []  # every redis-server (cluster: six)
        self.slots = ""  # cluster: START-END=HOST:PORT,... of the masters, for the Node helpers
        self.seeds: list[str] = []
        self.server: asyncio.subprocess.Process | None = None
        self.listener: NodeProc | None = None
        self.publisher: NodeProc | None = None
        self.subscriber: NodeProc | None = None
        self.loadgens: list[NodeProc] = []
        self.shares: list[tuple[int, int]] = []  # (offset, clients) per loadgen
        self.redis_port = 0
        self.port = 0
        self.opened = 0
        self.pid = 0
        self.api_key = secrets.token_hex(16) if opts.api or opts.memory else ""
        self.wire_bytes = 0  # frame bytes the load generators received in collect()ed steps

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # lifecycle

    async def start(self) -> None:
        o = self.o
        self.port = free_port()
        if o.memory:  # no Redis at all: the listener and the publisher speak the hub's HTTP API
            await self._start_server("")
            self.listener = await NodeProc.start(
                "listener", "api_listener.js",
                ["--api", self.api_url, "--api-key", self.api_key, "--groups", str(o.groups)], o.logdir)
            await self.listener.wait("ready", 10)
            self.publisher = await NodeProc.start("publisher", "publisher.js", self._api_args(), o.logdir)
            await self.publisher.wait("ready", 10)
        else:
            await self._start_redis_side()
        await self._start_loadgens()

    def _api_args(self) -> list[str]:
        return ["--api", self.api_url, "--api-key", self.api_key, "--conns", str(self.o.api_conns),
                "--depth", str(self.o.api_depth)]

    async def _start_redis_side(self) -> None:
        """redis-server, the Redis listener, publisher (and subscriber), then the server."""
        o = self.o
        if o.cluster:
            await self._start_cluster()
        else:
            self.redis_port = free_port()
            self.redis = await self._redis_node(self.redis_port, o.logdir, [])
        raddr = f"127.0.0.1:{self.redis_port}"
        sharded = "1" if o.redis == "cluster-sharded" else "0"
        cluster = ["--slots", self.slots, "--sharded", sharded] if o.cluster else []
        self.listener = await NodeProc.start(
            "listener", "listener.js", ["--redis", raddr, "--prefix", PREFIX, "--groups", str(o.groups), *cluster],
            o.logdir)
        await self.listener.wait("ready", 10)
        # With an api.key the publisher can flood through the API too (api_publish); its paced
        # messages and probes still go through Redis (--via redis).
        api = [*self._api_args(), "--via", "redis"] if self.api_key else []
        self.publisher = await NodeProc.start("publisher", "publisher.js",
                                              ["--redis", raddr, "--prefix", PREFIX, *cluster, *api], o.logdir)
        await self.publisher.wait("ready", 10)
        if o.subscriber:
            self.subscriber = await NodeProc.start("subscriber", "subscriber.js", ["--redis", raddr, "--prefix",
                                                                                   PREFIX], o.logdir)
            await self.subscriber.wait("ready", 10)
        await self._start_server(raddr)

    async def _redis_node(self, port: int, logdir: Path, extra: Sequence[str]) -> asyncio.subprocess.Process:
        logdir.mkdir(parents=True, exist_ok=True)
        proc = await asyncio.create_subprocess_exec(
            REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
            "no", "--daemonize", "no", "--dir", str(logdir), "--logfile", str(logdir / "redis.log"), *extra,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.redis_nodes.append(proc)
        for _ in range(200):
            if await redis_ping(port):
                return proc
            await asyncio.sleep(0.05)  # polling a process we just spawned: nothing to await
        raise RuntimeError(f"redis-server on {port} did not start")

    async def _start_cluster(self) -> None:
        """Six nodes with --cluster-enabled (bus port = port + 10000), then redis-cli --cluster create
        with a replica each: three masters of 5,461 slots, as tests/test_cluster.py builds it."""
        ports = [cluster_port() for _ in range(6)]
        extra = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000"]
        for i, port in enumerate(ports):
            await self._redis_node(port, self.o.logdir / f"redis{i}", extra)
        self.redis_port = ports[0]
        self.seeds = [f"127.0.0.1:{p}" for p in ports[:3]]
        create = await asyncio.create_subprocess_exec(
            REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "1",
            "--cluster-yes", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if await asyncio.wait_for(create.wait(), 60) != 0:
            raise RuntimeError("redis-cli --cluster create failed")
        for _ in range(300):  # bounded: 300 x 0.1 s for every node to say cluster_state:ok
            if all([await cluster_ok(p) for p in ports]):
                break
            await asyncio.sleep(0.1)  # nodes converge by gossip: no event to await
        else:
            raise RuntimeError("the cluster did not settle")
        self.slots = await cluster_slots(ports[0])

    async def _start_loadgens(self) -> None:
        o = self.o
        procs = o.procs or max(1, math.ceil(o.clients / MAX_CLIENTS_PER_PROC))
        # Up to --per-address clients come from 127.0.0.1 with kernel-chosen ports (plain connect());
        # beyond that, clients rotate over 127.0.0.1, .2, ... (Node binds the source address first,
        # which costs more per connect but gives each address its own ephemeral port range).
        addresses = max(1, math.ceil(o.clients / o.per_address))
        local = "" if addresses == 1 else ",".join(f"127.0.0.{1 + i}" for i in range(addresses))
        offset = 0
        for p in range(procs):
            n = o.clients // procs + (1 if p < o.clients % procs else 0)
            lg = await NodeProc.start(
                f"loadgen{p}", "loadgen.js",
                ["--url", f"ws://127.0.0.1:{self.port}/ws", "--key", "session_key", "--clients", str(n),
                 "--offset", str(offset), "--groups", str(o.groups), "--local", local,
                 "--concurrency", str(max(1, o.concurrency // procs)), "--receiver", o.receiver,
                 "--deflate", "1" if o.compression else "0"], o.logdir)
            await lg.wait("started", 10)
            self.loadgens.append(lg)
            self.shares.append((offset, n))
            offset += n

    async def _start_server(self, raddr: str) -> None:
        """The server under test on ``self.port``; ``raddr`` empty: WS-Hub on the memory broker."""
        o = self.o
        err = open(o.logdir / f"{o.server}.err", "wb")  # noqa: SIM115 - closed right after the spawn
        env = server_env(o)
        if o.server == "wshub":
            # The Redis broker's file is the one every earlier figure used (a tree from before the
            # broker and api keys, e.g. an A/B's old copy, reads it unchanged); the other keys are
            # written only when asked for.
            broker = ('broker: memory\n' if o.memory else
                      f'redis:\n  address: "{raddr}"\n  channelPrefix: "{PREFIX}"\n')
            if o.cluster:
                broker = (f'redis:\n  mode: cluster\n  address: "{",".join(self.seeds)}"\n'
                          f'  pubsub: {o.redis.removeprefix("cluster-")}\n  channelPrefix: "{PREFIX}"\n')
            api = f'api:\n  key: "{self.api_key}"\n' if self.api_key else ""
            cfg = o.logdir / "wshub.yaml"
            cfg.write_text(
                f'address: "127.0.0.1:{self.port}"\nclientKey: "session_key"\nserverUrl: "/ws"\n'
                f"workers: {o.workers}\n{broker}{api}"
                "webSocket:\n  pongWait: 60\n  maxMessageSize: 65536\n"
                + ("  compression: true\n" if o.compression else "") + o.extra_yaml
            )
            self.server = await asyncio.create_subprocess_exec(
                PYTHON, "-m", f"wshub_{o.shell}", "--config", str(cfg), stdout=subprocess.DEVNULL, stderr=err,
                cwd=o.logdir, env=env)
        elif o.server == "node":
            self.server = await asyncio.create_subprocess_exec(
                NODE, str(BENCH / "peer_node.js"), "--address", f"127.0.0.1:{self.port}", "--redis", raddr,
                "--prefix", PREFIX, "--pong-wait", "60", "--max-message-size", "65536",
                "--compression", "1" if o.compression else "0",
                stdout=subprocess.DEVNULL, stderr=err, cwd=BENCH, env=env)
        else:
            self.server = await asyncio.create_subprocess_exec(
                PYTHON, str(BENCH / "peer_websockets.py"), "--address", f"127.0.0.1:{self.port}", "--redis", raddr,
                "--prefix", PREFIX, "--pong-wait", "60", "--max-message-size", "65536",
                *(["--compression"] if o.compression else []),
                stdout=subprocess.DEVNULL, stderr=err, cwd=o.logdir, env=env)
        err.close()
        self.pid = self.server.pid
        await wait_tcp(self.port, 20, self.server)
        if o.server == "wshub":
            ok = 0  # with workers, each request reaches one of them: ask until several in a row are ready
            for _ in range(400):
                ok = ok + 1 if await http_status(self.port, "/readyz") == 200 else 0
                if ok >= 4 * o.workers:
                    break
                await asyncio.sleep(0.02 if ok else 0.05)
            else:
                raise RuntimeError("wshub never became ready")
            await asyncio.sleep(0.2 * (o.workers - 1))

    async def stop(self) -> None:
        for lg in self.loadgens:
            with contextlib.suppress(Exception):
                await lg.call({"cmd": "quit"}, "bye", 10)
        for lg in self.loadgens:
            await lg.stop()
        if self.server is not None:
            # A hub's workers first process every disconnect the load generators just caused (16,000 each at
            # 100,000 clients took up to 25 s on the shared cores): a SIGKILLed parent would orphan them.
            await terminate(self.server, max(15.0, self.o.clients / 2000))
        for helper in (self.publisher, self.subscriber, self.listener):
            if helper is not None:
                await helper.stop()
        for node in self.redis_nodes:
            await terminate(node, 5)

    # measurements

    def server_cpu(self) -> float:
        return tree_cpu(self.pid)[0]

    def helper_cpu(self) -> Json:
        """CPU seconds of the load side, to show it is not the bottleneck."""
        out = {"loadgen": sum(cpu_seconds(lg.pid) for lg in self.loadgens),
               "loadgen_sys": sum(cpu_split(lg.pid)[1] for lg in self.loadgens),
               "server_sys": tree_cpu(self.pid)[1]}
        if self.redis_nodes:  # a cluster: its six nodes together
            out["redis"] = sum(cpu_seconds(n.pid) for n in self.redis_nodes)
        if self.publisher is not None:
            out["publisher"] = cpu_seconds(self.publisher.pid)
        if self.listener is not None:
            out["listener"] = cpu_seconds(self.listener.pid)
        if self.subscriber is not None:
            out["subscriber"] = cpu_seconds(self.subscriber.pid)
        return out

    def members(self, group: int) -> int:
        n, g = self.o.clients, self.o.groups
        return n // g + (1 if group < n % g else 0)

    # connecting

    async def connect_all(self, budget: float = 600.0) -> Json:
        """Open every client, then probe until every one has received a message of its group.
        TimeoutError if the clients are not all open within ``budget`` seconds."""
        t0 = now_us()
        deadline = time.monotonic() + budget
        for lg in self.loadgens:
            await lg.send({"cmd": "connect"})
        opens = [await lg.wait("open", max(0.1, deadline - time.monotonic())) for lg in self.loadgens]
        self.opened = sum(o["opened"] for o in opens)
        failed = sum(o["failed"] for o in opens)
        errors: dict[str, int] = {}
        for o in opens:
            for k, v in o["errors"].items():
                errors[k] = errors.get(k, 0) + v
        assert self.publisher is not None and self.listener is not None
        # Probing costs the server deliveries: first wait (bounded) until the listener has
        # answered every client-new, so that one or two probe rounds suffice.
        answered = 0
        for _ in range(600):  # bounded: 600 x 50 ms
            answered = (await self.listener.call({"cmd": "stats"}, "stats", 30))["answered"]
            if answered >= self.opened:
                break
            await asyncio.sleep(0.05)
        # ... and until the server has gone idle (it has processed the groups answers).
        t_idle = await wait_idle(self.pid)
        cpu_settled = self.server_cpu()
        missing = list(range(self.o.groups))
        probes = 0
        have = live = last = 0
        stalled = 10
        for probe_id in range(1, 401):  # bounded: 400 x 50 ms
            # Probe again only after ten rounds (0.5 s) without progress: a probe to 100,000 members takes
            # seconds to arrive, and one sent every 50 ms meanwhile would pile broadcasts on the hub.
            if missing and stalled >= 10:
                await self.publisher.call({"cmd": "probe", "id": probe_id, "groups": missing}, "done", 30)
                probes += 1
                stalled = 0
            before = have
            await asyncio.sleep(0.05)
            statuses = [await lg.call({"cmd": "probe_status"}, "probe_status", 30) for lg in self.loadgens]
            have = sum(s["have"] for s in statuses)
            stalled = 0 if have > before else stalled + 1
            live = sum(s["live"] for s in statuses)
            last = max(s["last"] for s in statuses)
            missing = sorted({g for s in statuses for g in s["missing_groups"]})
            if not missing:
                break
        return {
            "opened": self.opened, "failed": failed, "errors": errors, "grouped": have, "live": live,
            "probe_rounds": probes, "answered": answered, "t0": t0, "t_open": max(o["t1"] for o in opens),
            "t_grouped": last, "t_idle": t_idle, "cpu_settled": cpu_settled,
        }

    async def reset_reports(self) -> None:
        for lg in self.loadgens:
            await lg.call({"cmd": "report"}, "report", 30)

    async def collect(self, step: int) -> tuple[Histogram, int, int, int]:
        """Merge one step's receipts over the loadgens: (histogram, count, first, last receipt)."""
        hist = Histogram()
        count = first = last = 0
        for lg in self.loadgens:
            rep = await lg.call({"cmd": "report"}, "report", 60)
            self.wire_bytes += rep.get("wire_bytes", 0)
            s = rep["steps"].get(str(step))
            if s is None:
                continue
            hist.merge(s)
            count += s["count"]
            first = s["first"] if not first else min(first, s["first"])
            last = max(last, s["last"])
        return hist, count, first, last

    async def expect(self, step: int, per_group: Sequence[int], timeout: float) -> bool:
        """Wait until every loadgen has all receipts of ``step`` (False on timeout: messages lost)."""
        for lg, (offset, n) in zip(self.loadgens, self.shares, strict=True):
            g = len(per_group)
            count = sum(per_group[(offset + i) % g] for i in range(n))
            await lg.send({"cmd": "expect", "step": step, "count": count})
        ok = True
        for lg in self.loadgens:
            try:
                await lg.wait("step_done", max(0.1, timeout))
            except TimeoutError:
                ok = False
        return ok


def cluster_port() -> int:
    """A free port whose cluster bus port (10000 higher, so at most 55535) is free too."""
    for _ in range(100):
        port = free_port()
        if port > 55535:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair")


async def redis_call(port: int, *args: str) -> Any:
    """One command on a new connection (bounded), its RESP2 reply parsed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"*{len(args)}\r\n".encode() + b"".join(f"${len(a)}\r\n{a}\r\n".encode() for a in args))

        async def value() -> Any:
            line = (await reader.readline()).rstrip(b"\r\n")
            kind, rest = line[:1], line[1:]
            if kind == b"*":
                return [await value() for _ in range(int(rest))]
            if kind == b"$":
                return None if int(rest) < 0 else (await reader.readexactly(int(rest) + 2))[:-2]
            if kind == b":":
                return int(rest)
            return rest

        return await asyncio.wait_for(value(), 5)
    finally:
        writer.close()


async def cluster_ok(port: int) -> bool:
    try:
        info = await redis_call(port, "CLUSTER", "INFO")
    except (OSError, asyncio.TimeoutError):
        return False
    return isinstance(info, bytes) and b"cluster_state:ok" in info


async def cluster_slots(port: int) -> str:
    """CLUSTER SLOTS as the Node helpers' --slots: START-END=HOST:PORT of each master's range."""
    reply = await redis_call(port, "CLUSTER", "SLOTS")
    return ",".join(f"{r[0]}-{r[1]}=127.0.0.1:{r[2][1]}" for r in sorted(reply))


def server_env(o: Options) -> dict[str, str]:
    env = dict(os.environ)
    paths = [p for p in (o.hub_pythonpath, o.uvloop) if p]  # a prototype tree; uvloop (NAME+uv servers)
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def hub_source(o: Options) -> str:
    """The directory WS-Hub's server imports ``wshub_core`` from (an A/B shows which tree each side ran)."""
    proc = subprocess.run([PYTHON, "-c", "import wshub_core; print(wshub_core.__file__)"], capture_output=True,
                          text=True, env=server_env(o), cwd=o.logdir, timeout=30, check=False)
    return str(Path(proc.stdout.strip()).parent.parent) if proc.returncode == 0 else f"? {proc.stderr.strip()}"


@contextlib.asynccontextmanager
async def rig(opts: Options) -> AsyncIterator[Rig]:
    r = Rig(opts)
    try:
        await r.start()
        yield r
    finally:
        await r.stop()


# -- profiling --------------------------------------------------------------------------------


async def start_profile(pid: int, out: str) -> asyncio.subprocess.Process | None:
    """py-spy (if installed next to this Python) samples the server until ``stop_profile``."""
    if not out:
        return None
    spy = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
    if not os.path.exists(spy):
        print("py-spy not found; no profile", file=sys.stderr)
        return None
    proc = await asyncio.create_subprocess_exec(
        spy, "record", "--pid", str(pid), "--rate", "500", "--format", "raw", "--output", out, "--nonblocking",
        "--subprocesses",
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await asyncio.sleep(0.3)  # let it attach before the measured phase
    return proc


async def stop_profile(proc: asyncio.subprocess.Process | None) -> None:
    """SIGINT makes py-spy write its output; then wait for that PID (bounded)."""
    if proc is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGINT)
    await stop_pid(proc, 30)


# -- scenarios ---------------------------------------------------------------------------------


async def scenario_connect(a: argparse.Namespace, opts: Options) -> Json:
    async with rig(opts) as r:
        await asyncio.sleep(1.0)
        rss0 = tree_rss_kib(r.pid)
        spy = await start_profile(r.pid, opts.profile)
        cpu0 = r.server_cpu()
        h0 = r.helper_cpu()
        c = await r.connect_all()
        cpu1 = r.server_cpu()
        h1 = r.helper_cpu()
        await stop_profile(spy)
        await asyncio.sleep(a.settle)
        rss1 = tree_rss_kib(r.pid)
        # The clock stops when the server has processed every connect and groups answer and gone
        # idle; the probe that proves every client is in its group (and its deliveries) is excluded.
        seconds = (c["t_idle"] - c["t0"]) / 1e6
        n = c["opened"]
        return {
            "clients": n, "failed": c["failed"], "grouped": c["grouped"], "errors": c["errors"],
            "seconds": round(seconds, 3),
            "connects_per_s": round(n / seconds, 1) if seconds > 0 else None,
            "open_seconds": round((c["t_open"] - c["t0"]) / 1e6, 3),
            "seconds_to_probe": round((c["t_grouped"] - c["t0"]) / 1e6, 3),
            "cpu_us_per_connect": round((c["cpu_settled"] - cpu0) * 1e6 / max(1, n), 1),
            "cpu_us_per_connect_with_probes": round((cpu1 - cpu0) * 1e6 / max(1, n), 1),
            "server_sys_share": round((h1["server_sys"] - h0["server_sys"]) / max(0.01, cpu1 - cpu0), 2),
            "rss_before_kib": rss0, "rss_after_kib": rss1,
            "rss_kib_per_conn": round((rss1 - rss0) / max(1, n), 2),
            "loadgen_cpu_us_per_connect": round((h1["loadgen"] - h0["loadgen"]) * 1e6 / max(1, n), 1),
            "probe_rounds": c["probe_rounds"],
        }


async def scenario_fanout(a: argparse.Namespace, opts: Options) -> Json:
    rates = [float(x) for x in a.rates.split(",") if x]
    steps: list[Json] = []
    async with rig(opts) as r:
        c = await r.connect_all()
        if c["grouped"] < c["opened"]:
            raise RuntimeError(f"only {c['grouped']} of {c['opened']} clients got a probe: {c}")
        per_msg = opts.clients / opts.groups  # members per published message (groups are even)
        assert r.publisher is not None
        for idx, rate in enumerate(rates, start=1):
            await asyncio.sleep(0.5)
            await r.reset_reports()
            cpu0, h0 = r.server_cpu(), r.helper_cpu()
            spy = await start_profile(r.pid, opts.profile) if idx == len(rates) else None
            done = await r.publisher.call(
                {"cmd": "rate", "step": idx, "rate": rate, "seconds": a.seconds, "groups": opts.groups,
                 "size": opts.size}, "done", a.seconds + 60)
            complete = await r.expect(idx, done["perGroup"], a.drain)
            cpu1, h1 = r.server_cpu(), r.helper_cpu()
            await stop_profile(spy)
            hist, count, _first, last = await r.collect(idx)
            expected = sum(p * r.members(g) for g, p in enumerate(done["perGroup"]))
            span = max(1, last - done["t0"]) / 1e6
            offered = done["published"] / max(1e-6, (done["t1"] - done["t0"]) / 1e6) * per_msg
            step = {
                "rate": rate, "published": done["published"], "offered_deliveries_per_s": round(offered),
                "deliveries": count, "lost": expected - count, "complete": complete,
                "deliveries_per_s": round(count / span), **hist.summary_ms(),
                "server_cpu_s": round(cpu1 - cpu0, 3),
                "cpu_us_per_delivery": round((cpu1 - cpu0) * 1e6 / max(1, count), 3),
                "server_cpu_util": round((cpu1 - cpu0) / span, 3),
                "server_sys_share": round((h1["server_sys"] - h0["server_sys"]) / max(0.01, cpu1 - cpu0), 2),
                **user_sys_per(cpu1 - cpu0, h1["server_sys"] - h0["server_sys"], count, "delivery"),
                "loadgen_sys_share": round((h1["loadgen_sys"] - h0["loadgen_sys"])
                                           / max(0.01, h1["loadgen"] - h0["loadgen"]), 2),
                "loadgen_cpu_us_per_delivery": round((h1["loadgen"] - h0["loadgen"]) * 1e6 / max(1, count), 3),
                "redis_cpu_util": redis_util(h0, h1, span),
                "no_subscriber": done["zero"], "publisher_reconnects": done["reconnects"],
            }
            steps.append(step)
            saturated = not complete or count < 0.8 * offered * a.seconds
            if saturated and not a.no_stop:
                break
    best = max(steps, key=lambda s: s["deliveries_per_s"])
    return {"max_deliveries_per_s": best["deliveries_per_s"], "steps": steps, "clients": c["opened"]}


def user_sys_per(cpu: float, sys_: float, count: int, unit: str) -> Json:
    """The server's user and system CPU per operation (us): the user part is its own code (Python, the
    event loop), the system part the kernel's (sends, wake-ups), which no change to the hub's code removes."""
    return {f"server_user_us_per_{unit}": round((cpu - sys_) * 1e6 / max(1, count), 3),
            f"server_sys_us_per_{unit}": round(sys_ * 1e6 / max(1, count), 3)}


def redis_util(h0: Json, h1: Json, span: float) -> float | None:
    """redis-server's CPU share over ``span`` seconds (None on the memory broker: no Redis)."""
    return round((h1["redis"] - h0["redis"]) / span, 3) if "redis" in h1 else None


async def scenario_api_publish(a: argparse.Namespace, opts: Options) -> Json:
    """Closed-loop publishes to one group: through the HTTP API, then (Redis broker) PUBLISH to its Redis."""
    opts.groups = 1
    opts.api = True
    out: Json = {}
    async with rig(opts) as r:
        c = await r.connect_all()
        if c["grouped"] < c["opened"]:
            raise RuntimeError(f"only {c['grouped']} of {c['opened']} clients got a probe: {c}")
        assert r.publisher is not None
        out["members"] = c["opened"]
        ways = ["api"] if opts.memory else ["api", "redis"]
        for idx, via in enumerate(ways, start=1):
            await asyncio.sleep(0.5)
            await r.reset_reports()
            cpu0, h0 = r.server_cpu(), r.helper_cpu()
            spy = await start_profile(r.pid, f"{opts.profile}.{via}" if opts.profile else "")
            done = await r.publisher.call(
                {"cmd": "flood", "step": idx, "via": via, "seconds": a.seconds, "conns": opts.api_conns,
                 "depth": opts.api_depth, "group": 0, "size": opts.size}, "done", a.seconds + 60)
            complete = await r.expect(idx, [done["ok"]], a.drain)
            cpu1, h1 = r.server_cpu(), r.helper_cpu()
            await stop_profile(spy)
            hist, count, _first, last = await r.collect(idx)
            rtt = Histogram()
            rtt.merge(done["rtt"])
            ok = done["ok"]
            seconds = max(1, done["t1"] - done["t0"]) / 1e6
            span = max(1, last - done["t0"]) / 1e6
            out[via] = {
                "conns": opts.api_conns, "depth": opts.api_depth, "published": done["published"], "ok": ok,
                "errors": done["errors"], "seconds": round(seconds, 3),
                "publishes_per_s": round(ok / seconds), "answer": rtt.summary_ms(),
                "deliveries": count, "expected_deliveries": ok * c["opened"], "lost": ok * c["opened"] - count,
                "complete": complete, "delivery": hist.summary_ms(),
                "redis_receivers": done["receivers"], "reconnects": done["reconnects"],
                "server_cpu_s": round(cpu1 - cpu0, 3),
                "cpu_us_per_publish": round((cpu1 - cpu0) * 1e6 / max(1, ok), 3),
                "cpu_us_per_delivery": round((cpu1 - cpu0) * 1e6 / max(1, count), 3),
                "server_cpu_util": round((cpu1 - cpu0) / span, 3),
                "server_sys_share": round((h1["server_sys"] - h0["server_sys"]) / max(0.01, cpu1 - cpu0), 2),
                "publisher_cpu_us_per_publish": round((h1["publisher"] - h0["publisher"]) * 1e6 / max(1, ok), 3),
                "loadgen_cpu_us_per_delivery": round((h1["loadgen"] - h0["loadgen"]) * 1e6 / max(1, count), 3),
                "redis_cpu_util": redis_util(h0, h1, span),
            }
            out[f"{via}_publishes_per_s"] = out[via]["publishes_per_s"]
            out[f"{via}_cpu_us_per_publish"] = out[via]["cpu_us_per_publish"]
    return out


async def scenario_broadcast(a: argparse.Namespace, opts: Options) -> Json:
    opts.groups = 1
    to_last: list[float] = []
    async with rig(opts) as r:
        c = await r.connect_all()
        if c["grouped"] < c["opened"]:
            raise RuntimeError(f"only {c['grouped']} of {c['opened']} clients got a probe: {c}")
        assert r.publisher is not None
        await asyncio.sleep(0.5)
        await r.reset_reports()
        r.wire_bytes = 0
        spy = await start_profile(r.pid, opts.profile)
        cpu0, h0 = r.server_cpu(), r.helper_cpu()
        lost = 0
        all_hist = Histogram()
        for rep in range(1, a.reps + 1):
            await r.publisher.call({"cmd": "once", "step": rep, "group": 0, "size": opts.size}, "done", 30)
            complete = await r.expect(rep, [1], a.drain)
            hist, count, _first, _last = await r.collect(rep)
            all_hist.merge({"hist": list(hist.counts.items()), "max": hist.max_us})
            to_last.append(hist.max_us / 1000)
            if not complete or count < c["opened"]:
                lost += 1
            await asyncio.sleep(a.gap)
        cpu1, h1 = r.server_cpu(), r.helper_cpu()
        await stop_profile(spy)
        deliveries = all_hist.total
    return {
        "members": c["opened"], "reps": a.reps, "incomplete_reps": lost,
        "last_member_p50_ms": round(quantile(to_last, 0.5), 3),
        "last_member_p99_ms": round(quantile(to_last, 0.99), 3),
        "last_member_max_ms": round(max(to_last), 3),
        "delivery": all_hist.summary_ms(),
        "cpu_ms_per_broadcast": round((cpu1 - cpu0) * 1e3 / a.reps, 2),
        "cpu_us_per_delivery": round((cpu1 - cpu0) * 1e6 / max(1, deliveries), 3),
        "server_sys_share": round((h1["server_sys"] - h0["server_sys"]) / max(0.01, cpu1 - cpu0), 2),
        **user_sys_per(cpu1 - cpu0, h1["server_sys"] - h0["server_sys"], deliveries, "delivery"),
        "loadgen_cpu_us_per_delivery": round((h1["loadgen"] - h0["loadgen"]) * 1e6 / max(1, deliveries), 3),
        "wire_bytes_per_broadcast": round(r.wire_bytes / a.reps),
    }


def sockstat_tcp() -> Json:
    """The kernel's TCP line of /proc/net/sockstat: sockets in use and their buffer memory (pages -> KiB)."""
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                parts = line.split()[1:]
                fields = dict(zip(parts[::2], (int(v) for v in parts[1::2]), strict=True))
                return {"inuse": fields["inuse"], "mem_kib": fields["mem"] * os.sysconf("SC_PAGE_SIZE") // 1024}
    return {"inuse": 0, "mem_kib": 0}


def per_process(pid: int) -> list[Json]:
    """RSS and open files of each process of the tree: how evenly the kernel spread the connects over workers."""
    out = []
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            out.append({"pid": p, "rss_kib": rss_kib(p), "files": len(os.listdir(f"/proc/{p}/fd"))})
    return out


async def hold_cut_short(r: Rig, a: argparse.Namespace, rss0: int, cpu0: float, h0: Json, t0: float) -> Json:
    """What ``hold`` reached when the clients were not all open within --budget: how many were, and
    where the CPU went meanwhile (a starved machine, or one side busy)."""
    live = sum([(await lg.call({"cmd": "probe_status"}, "probe_status", 60))["live"] for lg in r.loadgens])
    seconds = time.monotonic() - t0
    h1 = r.helper_cpu()
    return {
        "connect_complete": False, "budget_s": a.budget, "clients": a.clients, "open_at_budget": live,
        "connects_per_s": round(live / seconds, 1),
        "rss_kib_per_conn": round((tree_rss_kib(r.pid) - rss0) / max(1, live), 2),
        "processes": per_process(r.pid), "kernel_tcp": sockstat_tcp(),
        "cpu_util_while_connecting": cpu_util(r.server_cpu() - cpu0, h0, h1, seconds),
        "load1": round(os.getloadavg()[0], 2),
    }


def cpu_util(hub: float, h0: Json, h1: Json, seconds: float) -> Json:
    """Cores used over ``seconds`` by the hub and by each helper (helper_cpu's keys)."""
    return {"hub": round(hub / seconds, 3), **{k: round((h1[k] - h0[k]) / seconds, 3) for k in h1}}


async def scenario_hold(a: argparse.Namespace, opts: Options) -> Json:
    """N clients held open, every one in a group; then --reps broadcasts that reach every member
    (--groups 1: one group of everyone; G groups: one publish per group, each counted to its last member)."""
    async with rig(opts) as r:
        await asyncio.sleep(1.0)
        rss0, kernel0 = tree_rss_kib(r.pid), sockstat_tcp()
        cpu0, h0, t0 = r.server_cpu(), r.helper_cpu(), time.monotonic()
        try:
            c = await r.connect_all(budget=a.budget)
        except TimeoutError:
            return await hold_cut_short(r, a, rss0, cpu0, h0, t0)
        if c["grouped"] < c["opened"]:
            raise RuntimeError(f"only {c['grouped']} of {c['opened']} clients got a probe: {c}")
        cpu1, h1, t1 = r.server_cpu(), r.helper_cpu(), time.monotonic()
        await asyncio.sleep(a.settle)
        rss1, kernel1, procs = tree_rss_kib(r.pid), sockstat_tcp(), per_process(r.pid)
        loadgen_rss = sum(rss_kib(lg.pid) for lg in r.loadgens)
        assert r.publisher is not None
        await r.reset_reports()
        to_last: list[float] = []
        incomplete = 0
        hist_all = Histogram()
        for rep in range(1, a.reps + 1):
            for g in range(opts.groups):
                await r.publisher.call({"cmd": "once", "step": rep, "group": g, "size": opts.size}, "done", 30)
            complete = await r.expect(rep, [1] * opts.groups, a.drain)
            hist, count, _first, _last = await r.collect(rep)
            hist_all.merge({"hist": list(hist.counts.items()), "max": hist.max_us})
            to_last.append(hist.max_us / 1000)
            incomplete += not complete or count < c["opened"]
            await asyncio.sleep(a.gap)
        reports = [await lg.call({"cmd": "report"}, "report", 60) for lg in r.loadgens]
        n = c["opened"]
        seconds = (c["t_idle"] - c["t0"]) / 1e6
    return {
        "clients": n, "failed": c["failed"], "errors": c["errors"], "grouped": c["grouped"],
        "closed_early": sum(rep["closed_early"] for rep in reports),
        "connect_seconds": round(seconds, 3), "connects_per_s": round(n / seconds, 1) if seconds > 0 else None,
        "open_seconds": round((c["t_open"] - c["t0"]) / 1e6, 3),
        "cpu_us_per_connect": round((c["cpu_settled"] - cpu0) * 1e6 / max(1, n), 1),
        "connect_cpu_util": round((cpu1 - cpu0) / max(0.001, (c["t_grouped"] - c["t0"]) / 1e6), 3),
        "rss_before_kib": rss0, "rss_after_kib": rss1, "rss_kib_per_conn": round((rss1 - rss0) / max(1, n), 2),
        "kernel_tcp_before": kernel0, "kernel_tcp_after": kernel1,
        "kernel_tcp_kib_per_conn": round((kernel1["mem_kib"] - kernel0["mem_kib"]) / max(1, n), 2),
        "loadgen_rss_kib_per_conn": round(loadgen_rss / max(1, n), 2),
        "connect_complete": True, "processes": procs, "probe_rounds": c["probe_rounds"],
        "cpu_util_while_connecting": cpu_util(cpu1 - cpu0, h0, h1, max(0.001, t1 - t0)),
        "reps": a.reps, "incomplete_reps": incomplete,
        "to_last_member_ms": [round(t, 1) for t in to_last],
        "last_member_p50_ms": round(quantile(to_last, 0.5), 3), "last_member_max_ms": round(max(to_last), 3),
        "delivery": hist_all.summary_ms(),
    }


async def scenario_upstream(a: argparse.Namespace, opts: Options) -> Json:
    opts.subscriber = True
    async with rig(opts) as r:
        c = await r.connect_all()
        assert r.subscriber is not None
        await asyncio.sleep(0.5)
        await r.subscriber.call({"cmd": "report"}, "report", 30)
        spy = await start_profile(r.pid, opts.profile)
        cpu0, h0 = r.server_cpu(), r.helper_cpu()
        for lg in r.loadgens:
            await lg.send({"cmd": "send", "step": 1, "rate": a.rate, "seconds": a.seconds, "size": opts.size})
        sent_events = [await lg.wait("sent", a.seconds + 60) for lg in r.loadgens]
        sent = sum(e["sent"] for e in sent_events)
        t0 = min(e["t0"] for e in sent_events)
        # Drain: the subscriber's count must reach what was sent (bounded by --drain).
        hist = Histogram()
        received = last = 0
        deadline = time.monotonic() + a.drain
        while True:
            await asyncio.sleep(0.2)
            rep = await r.subscriber.call({"cmd": "report"}, "report", 30)
            s = rep["steps"].get("1")
            if s is not None:
                hist.merge(s)
                received += s["count"]
                last = max(last, s["last"])
            if received >= sent or time.monotonic() > deadline:
                break
        cpu1, h1 = r.server_cpu(), r.helper_cpu()
        await stop_profile(spy)
        span = max(1, last - t0) / 1e6
    return {
        "clients": c["opened"], "rate_per_client": a.rate, "sent": sent, "received": received,
        "lost": sent - received, "msgs_per_s": round(received / span), **hist.summary_ms(),
        "cpu_us_per_msg": round((cpu1 - cpu0) * 1e6 / max(1, received), 3),
        "server_sys_share": round((h1["server_sys"] - h0["server_sys"]) / max(0.01, cpu1 - cpu0), 2),
        "server_cpu_util": round((cpu1 - cpu0) / span, 3),
        "loadgen_cpu_us_per_msg": round((h1["loadgen"] - h0["loadgen"]) * 1e6 / max(1, received), 3),
    }


SCENARIOS = {
    "connect": scenario_connect,
    "fanout": scenario_fanout,
    "broadcast": scenario_broadcast,
    "upstream": scenario_upstream,
    "api_publish": scenario_api_publish,
    "hold": scenario_hold,
}

# Metrics compared as WS-Hub / peer in the "ratio" field.
RATIO_KEYS = {
    "connect": ["connects_per_s", "cpu_us_per_connect", "rss_kib_per_conn"],
    "fanout": ["max_deliveries_per_s"],
    "broadcast": ["last_member_p50_ms", "last_member_p99_ms", "cpu_us_per_delivery"],
    "upstream": ["msgs_per_s", "p99_ms", "cpu_us_per_msg"],
    "api_publish": ["api_publishes_per_s", "api_cpu_us_per_publish"],
    "hold": ["connects_per_s", "rss_kib_per_conn", "last_member_max_ms"],
}


def machine() -> Json:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "load1": round(os.getloadavg()[0], 2)}


def server_kind(server: str) -> tuple[str, str, str]:
    """``--server`` name -> (kind, broker, shell): ``proto-memory+uv`` -> (proto, memory, asyncio),
    ``wshub-trio-memory`` -> (wshub, memory, trio), ``peer`` -> (peer, redis, asyncio); a bad name -> kind ""."""
    kind, *parts = server.removesuffix("+uv").split("-")
    shell = "trio" if parts[:1] == ["trio"] else "asyncio"
    parts = parts[1:] if shell == "trio" else parts
    broker = parts[0] if len(parts) == 1 else "redis"
    return (kind if len(parts) <= 1 else ""), broker, shell


async def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("--server", default="both",
                   help="both (= wshub,peer), or a comma list of wshub, peer, node (bench/peer_node.js: ws + ioredis), "
                   "proto (WS-Hub from --hub-pythonpath); "
                   "NAME-memory runs WS-Hub (wshub, proto) on the memory broker, with no redis-server: the listener "
                   "and publisher use its HTTP API; NAME+uv runs that server on uvloop from --uvloop DIR; wshub-trio "
                   "(wshub-trio-memory, proto-trio) runs WS-Hub's trio shell, python -m wshub_trio")
    p.add_argument("--clients", type=int, default=None,
                   help="default: connect 15000, broadcast and hold 10000, api_publish 20, else 1000")
    p.add_argument("--groups", type=int, default=None, help="default: connect 100, others 1")
    p.add_argument("--size", type=int, default=64, help="payload bytes")
    p.add_argument("--rates", default="100,200,400,800", help="fanout: published messages/s per step")
    p.add_argument("--seconds", type=float, default=5.0, help="fanout/upstream: seconds per step")
    p.add_argument("--drain", type=float, default=10.0, help="max seconds to wait for the last receipts")
    p.add_argument("--no-stop", action="store_true", help="fanout: keep stepping after saturation")
    p.add_argument("--reps", type=int, default=None, help="broadcast (default 30), hold (default 3): repetitions")
    p.add_argument("--gap", type=float, default=0.2, help="broadcast: seconds between repetitions")
    p.add_argument("--rate", type=float, default=20.0, help="upstream: messages/s per client")
    p.add_argument("--settle", type=float, default=2.0, help="connect: idle seconds before reading RSS")
    p.add_argument("--budget", type=float, default=480.0,
                   help="hold: seconds for every client to open; past it the run reports how many did, and stops")
    p.add_argument("--procs", type=int, default=0, help="loadgen processes (default: one per 10,000 clients)")
    p.add_argument("--per-address", type=int, default=25_000, help="clients per source address 127.0.0.N")
    p.add_argument("--concurrency", type=int, default=200, help="connects in flight (all loadgens)")
    p.add_argument("--receiver", choices=["raw", "ws"], default="raw",
                   help="loadgen: parse received frames itself (raw) or use ws' message events")
    p.add_argument("--profile", default="",
                   help="write py-spy raw stacks of WS-Hub's measured phase (fanout: last step) to FILE.wshub / .proto")
    p.add_argument("--hub-pythonpath", default="", help="source tree of the 'proto' server (a patched WS-Hub copy)")
    p.add_argument("--workers", default="1",
                   help="WS-Hub's workers setting (processes on one port); a comma list (1,3) runs each in turn")
    p.add_argument("--redis", default="standalone",
                   help="comma list of standalone (one redis-server), cluster-sharded, cluster-classic (three "
                   "masters with a replica each; WS-Hub in redis.mode: cluster with that redis.pubsub, the "
                   "listener and publisher sending each channel to the master of its slot, SPUBLISH or PUBLISH)")
    p.add_argument("--uvloop", default="", help="a directory holding uvloop (pip install --target DIR uvloop), "
                   "put on PYTHONPATH of the servers named NAME+uv")
    p.add_argument("--api-conns", type=int, default=4,
                   help="keep-alive connections of an HTTP API publisher (NAME-memory, api_publish); api_publish's "
                   "PUBLISH client to Redis opens as many")
    p.add_argument("--api-depth", type=int, default=None,
                   help="requests in flight on each of those connections (1: no pipelining, a request waits for "
                   "the answer to the one before); default: api_publish 1, else 64 (a paced publisher that waits "
                   "for each answer would be the limit, where the Redis one pipelines without bound)")
    p.add_argument("--compression", action="store_true",
                   help="permessage-deflate on: WS-Hub webSocket.compression, the peer's websockets compression, "
                   "load generators offering it (no context takeover either way)")
    p.add_argument("--fill", choices=["x", "json"], default="x",
                   help="payload padding: 'x' repeated, or JSON records (what compression sees in production)")
    p.add_argument("--label", default="", help="free text copied into the result")
    p.add_argument("--keep", action="store_true", help="keep the run directory (logs)")
    a = p.parse_args(argv)
    defaults = {"connect": (15_000, 100), "broadcast": (10_000, 1), "api_publish": (20, 1), "hold": (10_000, 1)}
    clients, groups = defaults.get(a.scenario, (1000, 1))
    a.clients = a.clients or clients
    a.groups = a.groups or groups
    a.api_depth = a.api_depth or (1 if a.scenario == "api_publish" else 64)
    a.reps = a.reps or (3 if a.scenario == "hold" else 30)
    try:
        worker_counts = [int(w) for w in a.workers.split(",") if w]
    except ValueError:
        p.error(f"--workers: a comma list of integers, got {a.workers!r}")
    redis_kinds = [k for k in a.redis.split(",") if k]
    if any(k not in REDIS_KINDS for k in redis_kinds) or not redis_kinds or not worker_counts:
        p.error(f"--redis: a comma list of {', '.join(REDIS_KINDS)}")
    if a.fill == "json":
        os.environ["BENCH_FILL"] = "json"  # read by the Node helpers (common.js makePayload)

    servers = ["wshub", "peer"] if a.server == "both" else a.server.split(",")
    for server in servers:
        kind, broker, shell = server_kind(server)
        if kind not in ("wshub", *PEERS, "proto") or broker not in ("redis", "memory"):
            p.error(f"unknown server {server!r}")
        if kind == "node" and server != "node":
            p.error(f"the Node peer runs as it is (no -trio, -memory, +uv): --server {server}")
        if shell == "trio" and (kind == "peer" or server.endswith("+uv")):
            p.error(f"-trio names WS-Hub's trio shell (no peer, no uvloop): --server {server}")
        if server.endswith("+uv") and not a.uvloop:
            p.error(f"--server {server} needs --uvloop DIR")
        if kind in PEERS and redis_kinds != ["standalone"]:
            p.error("the peers speak to one standalone Redis: --redis standalone")
        if kind in PEERS and (broker == "memory" or a.scenario == "api_publish"):
            p.error(f"the peers have no memory broker nor HTTP API: --server {server}")
        if broker == "memory" and a.scenario == "upstream":
            p.error("upstream reads the client messages from Redis: it needs the Redis broker")
        if broker == "memory" and max(worker_counts) > 1:
            p.error("workers > 1 needs the Redis broker")
    if any(s.startswith("proto") for s in servers) and not a.hub_pythonpath:
        p.error("--server proto needs --hub-pythonpath")
    results: Json = {}
    logroot = Path(tempfile.mkdtemp(prefix=f"wshub-bench-{a.scenario}-"))
    runs = [(server, rk, w) for server in servers
            for rk in (redis_kinds if server_kind(server)[1] == "redis" else ["standalone"]) for w in worker_counts]
    for server, redis_kind, workers in runs:
        # The key stays the server's name when there is one Redis kind and one workers count.
        name = server + (f"@{redis_kind}" if len(redis_kinds) > 1 or redis_kind != "standalone" else "") + (
            f"x{workers}" if len(worker_counts) > 1 else "")
        logdir = logroot / name
        logdir.mkdir()
        kind, broker, shell = server_kind(server)
        opts = Options(server=kind if kind in PEERS else "wshub", broker=broker, shell=shell,
                       clients=a.clients, groups=a.groups,
                       size=a.size, procs=a.procs, per_address=a.per_address, concurrency=a.concurrency,
                       receiver=a.receiver, hub_pythonpath=a.hub_pythonpath if kind == "proto" else "",
                       uvloop=a.uvloop if server.endswith("+uv") else "", workers=workers, redis=redis_kind,
                       profile=f"{a.profile}.{server}" if a.profile and kind not in PEERS else "", logdir=logdir,
                       api_conns=a.api_conns, api_depth=a.api_depth, compression=a.compression)
        try:
            results[name] = await SCENARIOS[a.scenario](a, opts)
            if kind not in PEERS:
                results[name]["hub_source"] = hub_source(opts)
        except Exception as exc:  # one server failing must not hide the other's numbers
            results[name] = {"error": f"{type(exc).__name__}: {exc}", "logs": str(logdir)}
            a.keep = True
    out: Json = {
        "scenario": a.scenario,
        "params": {k: v for k, v in vars(a).items() if k not in ("keep", "profile", "scenario")},
        "machine": machine(), "results": results,
    }
    for num, den in (("wshub", "peer"), ("wshub", "node"), ("peer", "node"),
                     ("proto", "wshub"), ("wshub+uv", "peer+uv"), ("proto+uv", "peer+uv"),
                     ("proto+uv", "proto"), ("wshub-memory", "wshub"), ("proto-memory", "wshub-memory"),
                     ("wshub-trio", "wshub"), ("wshub-trio-memory", "wshub-memory")):
        if num in results and den in results and "error" not in results[num] and "error" not in results[den]:
            out[f"ratio_{num}_over_{den}"] = {
                k: round(results[num][k] / results[den][k], 3)
                for k in RATIO_KEYS[a.scenario]
                if isinstance(results[den].get(k), int | float) and results[den][k]
            }
    print(json.dumps(out), flush=True)
    if a.keep:
        print(f"logs kept in {logroot}", file=sys.stderr)
    else:
        shutil.rmtree(logroot, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
