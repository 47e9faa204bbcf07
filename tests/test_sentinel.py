"""Sentinel mode against a real topology: a master, one replica and three sentinels, all on loopback.

The topology is started once for the module (each process on a free port in a
temporary folder of its own) and handed from test to test in a healthy state:
a master, a replica in sync with it, and three sentinels that agree. Each test
injects one fault — SIGKILL of the master, ``SENTINEL FAILOVER``, SIGKILL of
the sentinel the hub watches — with WebSocket clients connected through it,
and checks what users of a hub behind Sentinel care about: no client is
disconnected; ``/readyz`` is 503 while the hub cannot serve and 200 after;
client messages sent meanwhile reach the new master, in order per key; group
messages published to the new master reach every member, in order.

A race is closed by a gate, not by a sleep: the hub logs in to Redis as the
ACL user ``hub``, which is disabled on the replica before a failover. Once the
replica is promoted (its ROLE says ``master``, after the promotion's CLIENT
KILL) the test subscribes its observer there, then enables the user: the hub
cannot publish on the new master before the observer listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
import websockets
import yaml
from websockets.asyncio.client import ClientConnection

from helpers import (
    REDIS_SERVER,
    RedisProcess,
    Subscriber,
    free_port,
    http_exchange,
    on_hub,
    running_hub,
    wait_for,
    wait_until,
    within,
)
from wshub_core import Config, load_config

MASTER_NAME = "mymaster"
HUB_USER = ("--user", "hub", "on", ">hubpw", "~*", "&*", "+@all")
SETTLE = 30.0  # bound on how long a step of a fault (a promotion, a hub moving over) may take
SETTLE_AFTER_FAULT = 75.0  # bound on the whole topology agreeing again (see Topology.settle)


class SentinelProcess:
    """``redis-server sentinel.conf --sentinel`` on a free port, with its own folder and config file."""

    def __init__(self, master_port: int) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="wshub-sentinel-")
        self.conf = os.path.join(self.dir, "sentinel.conf")
        with open(self.conf, "w") as f:  # the sentinel rewrites this file with what it learns
            f.write(f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\nlogfile {self.dir}/sentinel.log\n"
                    "sentinel resolve-hostnames no\nsentinel announce-ip 127.0.0.1\n"
                    f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n"
                    f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
                    f"sentinel failover-timeout {MASTER_NAME} 4000\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([REDIS_SERVER, self.conf, "--sentinel"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        poll(lambda: _pings(self.port), what=f"sentinel on {self.port} up")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, decode_responses=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(os.path.join(self.dir, "sentinel.log")) as f:
                return "".join(f.readlines()[-lines:])
        except OSError as exc:
            return str(exc)


def _pings(port: int) -> bool:
    try:
        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=1) as r:
            return bool(r.ping())
    except redis.RedisError:
        return False


def poll(predicate: Callable[[], bool], *, timeout: float = SETTLE, what: str) -> None:
    """For the fixture, outside any loop: wait for processes we started to reach a state (bounded)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)  # polling other processes: there is no event to await


@dataclass
class Topology:
    servers: dict[int, RedisProcess]  # by port: the master and the replica, whichever is which now
    sentinels: list[SentinelProcess]

    def master_port(self) -> int:
        """The master the sentinels name (any one that answers)."""
        for sentinel in self.sentinels:
            if sentinel.proc is None:
                continue
            with sentinel.client() as s:
                return int(s.sentinel_get_master_addr_by_name(MASTER_NAME)[1])
        raise AssertionError("no sentinel is running")

    def replica_port(self) -> int:
        return next(port for port in self.servers if port != self.master_port())

    def unhealthy(self) -> str:
        """What keeps the topology from the state tests hand on ("" when healthy): every sentinel names the
        same master, whose ROLE is master, with the other server a replica in sync with it."""
        try:
            masters = set()
            for sentinel in self.sentinels:
                with sentinel.client() as s:
                    masters.add(int(s.sentinel_get_master_addr_by_name(MASTER_NAME)[1]))
                    if s.execute_command("SENTINEL", "CKQUORUM", MASTER_NAME) is None:
                        return f"sentinel {sentinel.port}: no quorum"
                    replicas = s.sentinel_slaves(MASTER_NAME)
                    if not any(r["flags"] == "slave" and r["master-link-status"] == "ok" for r in replicas):
                        return f"sentinel {sentinel.port}: no replica in sync in {replicas}"
            if len(masters) != 1:
                return f"the sentinels name different masters: {sorted(masters)}"
            (master,) = masters
            with redis.Redis(port=master, socket_timeout=1) as r:
                role = r.execute_command("ROLE")
                if role[0] != b"master":
                    return f"the sentinels' master {master} says ROLE {role!r}"
            other = next(p for p in self.servers if p != master)
            with redis.Redis(port=other, socket_timeout=1) as r:
                role = r.execute_command("ROLE")
                if not (role[0] == b"slave" and int(role[2]) == master and role[3] == b"connected"):
                    return f"server {other} says ROLE {role!r}, not a connected replica of {master}"
            return ""
        except (redis.RedisError, ValueError, TypeError, IndexError) as exc:
            return f"{type(exc).__name__}: {exc}"

    def settle(self, what: str) -> None:
        """Wait until healthy again after a fault, or fail saying why, with what the sentinels logged.

        After ``SENTINEL FAILOVER`` the sentinels take about 20 s here to turn the old master into a replica (CI
        once took over 30 s on a loaded machine); the bound also covers a sentinel in TILT (30 s of no action,
        entered when its timer runs 2 s late) followed by its 8 s wait before it converts a returning master."""
        reason = ""

        def healthy() -> bool:
            nonlocal reason
            reason = self.unhealthy()
            return not reason

        try:
            poll(healthy, timeout=SETTLE_AFTER_FAULT, what=what)
        except AssertionError as exc:
            logs = "\n".join(f"--- sentinel {s.port}:\n{s.log_tail()}" for s in self.sentinels)
            raise AssertionError(f"{exc}: {reason}\n{logs}") from None


@pytest.fixture(scope="module")
def started_topology() -> Iterator[Topology]:
    master = RedisProcess(extra=HUB_USER)
    replica = RedisProcess(extra=(*HUB_USER, "--replicaof", "127.0.0.1", str(master.port)))
    sentinels = [SentinelProcess(master.port) for _ in range(3)]
    topo = Topology(servers={master.port: master, replica.port: replica}, sentinels=sentinels)
    try:
        master.start()
        replica.start()
        for sentinel in sentinels:
            sentinel.start()
        topo.settle("the sentinels agree on a master with a replica")
        yield topo
    finally:
        for process in [*sentinels, master, replica]:
            process.kill()
        for folder in [master.dir, replica.dir, *(s.dir for s in sentinels)]:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def topology(started_topology: Topology) -> Topology:
    """The module's topology, healthy: a test that failed mid-fault must not fail the ones after it."""
    started_topology.settle("the topology healthy before the test")
    return started_topology


# -- the hub and its clients ---------------------------------------------------------------------------------


def sentinel_hub_config(topo: Topology, prefix: str) -> Config:
    tree = {
        "address": "127.0.0.1:0",
        "redis": {"mode": "sentinel", "masterName": MASTER_NAME,
                  "address": [f"127.0.0.1:{s.port}" for s in topo.sentinels],
                  "username": "hub", "password": "hubpw", "channelPrefix": prefix,
                  "reconnectMin": 0.02, "reconnectMax": 0.2, "timeout": 5},
    }
    return load_config(yaml.safe_dump(tree), source="test")


@contextlib.asynccontextmanager
async def hub_with_members(shell: str, topo: Topology,
                           prefix: str) -> AsyncIterator[tuple[Any, list[ClientConnection]]]:
    """A hub in sentinel mode; client "a" in group g1 and client "b" in g1 and g2, answered by a listener."""
    master = aredis.Redis(port=topo.master_port())
    listener = Subscriber(master)
    await listener.subscribe(f"{prefix}client-new")
    config = sentinel_hub_config(topo, prefix)
    async with running_hub(config, shell) as server:
        clients = []
        for key, groups in (("a", '["g1"]'), ("b", '["g1", "g2"]')):
            ws = await websockets.connect(f"ws://127.0.0.1:{server.port}/ws?session_key={key}")
            assert await listener.next() == (f"{prefix}client-new", key.encode())
            await master.publish(f"{prefix}groups-new:{key}", groups)
            clients.append(ws)
        channels = {f"{prefix}group-data:{g}".encode() for g in ("g1", "g2")}
        await wait_for(lambda: on_hub(server, lambda s: channels <= s.core.needed_channels() and s.core.ready),
                       what="groups live")
        await listener.close()
        await master.aclose()
        try:
            yield server, clients
        finally:
            for ws in clients:
                await ws.close()


async def readyz(server: Any) -> tuple[int, bytes]:
    answer = await http_exchange(server.port, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    return answer.status, answer.body


def first_occurrences(items: list[bytes]) -> list[bytes]:
    """At-least-once delivery may repeat a message after a reconnect; what matters is the order of first sights."""
    seen: set[bytes] = set()
    return [x for x in items if not (x in seen or seen.add(x))]  # type: ignore[func-returns-value]


async def send_during(server: Any, clients: list[ClientConnection], count: int) -> dict[str, list[bytes]]:
    """Each client sends ``count`` messages, each read by the hub before the next; what each key sent."""
    sent: dict[str, list[bytes]] = {"a": [], "b": []}
    for i in range(count):
        for key, ws in zip(("a", "b"), clients, strict=True):
            before = server.core.stats.messages_in
            await ws.send(f"{key}-during-{i}")
            sent[key].append(f"{key}-during-{i}".encode())
            await wait_for(lambda before=before: server.core.stats.messages_in > before, what="message read")
    return sent


async def observe(port: int, prefix: str) -> Subscriber:
    observer = Subscriber(aredis.Redis(port=port))
    await observer.subscribe(f"{prefix}client-data:a", f"{prefix}client-data:b")
    return observer


async def assert_delivered(observer: Subscriber, prefix: str, sent: dict[str, list[bytes]]) -> None:
    """Every message sent reaches the observer, in order per key (first sights; a resend may repeat one)."""
    got: dict[str, list[bytes]] = {"a": [], "b": []}
    while any(len(first_occurrences(got[k])) < len(sent[k]) for k in sent):
        channel, payload = await observer.next(10)
        got[channel.rsplit(":", 1)[1]].append(payload)
    for key in sent:
        assert first_occurrences(got[key]) == sent[key], (key, got[key])


async def assert_group_messages_reach_every_member(master_port: int, prefix: str,
                                                   clients: list[ClientConnection]) -> None:
    r = aredis.Redis(port=master_port)
    for i in range(20):
        await r.publish(f"{prefix}group-data:g1", f"after-{i}")
    await r.aclose()
    for ws in clients:
        assert [await within(ws.recv(), 10) for _ in range(20)] == [f"after-{i}" for i in range(20)]
        await within(await ws.ping())  # still connected, through all of it


def hub_user(port: int, state: str) -> None:
    """Enable (``on``) or disable (``off``) the hub's ACL user on one server: the gate."""
    with redis.Redis(port=port, socket_timeout=5) as r:
        r.execute_command("ACL", "SETUSER", "hub", state)


async def role_of(port: int) -> bytes:
    r = aredis.Redis(port=port)
    try:
        return bytes((await r.execute_command("ROLE"))[0])
    except (redis.RedisError, OSError):
        return b""
    finally:
        await r.aclose()


async def failover_scenario(shell: str, topo: Topology, prefix: str, fault: Callable[[int], None]) -> int:
    """``fault(old master)`` makes the replica the master; the hub follows with no client lost. The new master."""
    old, new = topo.master_port(), topo.replica_port()
    hub_user(new, "off")  # the gate: the hub cannot log in to the new master yet
    try:
        async with hub_with_members(shell, topo, prefix) as (server, clients):
            fault(old)
            await wait_until(lambda: _is_master(new), timeout=SETTLE, what="the replica promoted")
            observer = await observe(new, prefix)  # after the promotion's CLIENT KILL: it stays subscribed
            await wait_for(lambda: not server.core.ready, timeout=SETTLE, what="the hub left the old master")
            sent = await send_during(server, clients, 10)
            refused = b"master 127.0.0.1:%d: AUTH failed: WRONGPASS" % new

            async def readyz_names_the_new_master() -> bool:
                status, body = await readyz(server)
                assert status == 503, body
                return refused in body

            await wait_until(readyz_names_the_new_master, timeout=SETTLE, what="/readyz names the new master")
            hub_user(new, "on")
            await wait_for(lambda: server.core.ready, timeout=SETTLE, what="the hub ready on the new master")
            assert (await readyz(server))[0] == 200
            await assert_delivered(observer, prefix, sent)
            await observer.close()
            await assert_group_messages_reach_every_member(new, prefix, clients)
            for ws in clients:
                assert ws.close_code is None
    finally:
        hub_user(new, "on")
    return new


async def _is_master(port: int) -> bool:
    return await role_of(port) == b"master"


def test_sigkill_of_the_master(shell: str, topology: Topology, prefix: str) -> None:
    old = topology.master_port()

    def kill(port: int) -> None:
        topology.servers[port].kill()

    new = asyncio.run(failover_scenario(shell, topology, prefix, kill))
    # Back as a replica of the new master, for the next test.
    server = topology.servers[old]
    server.extra = (*HUB_USER, "--replicaof", "127.0.0.1", str(new))
    server.start()
    topology.settle("the old master back as a replica")


def test_sentinel_failover(shell: str, topology: Topology, prefix: str) -> None:
    def failover(port: int) -> None:
        with topology.sentinels[0].client() as s:
            poll(lambda: _failover_started(s), what="SENTINEL FAILOVER accepted")

    asyncio.run(failover_scenario(shell, topology, prefix, failover))
    topology.settle("the old master demoted to a replica")


def _failover_started(s: redis.Redis) -> bool:
    try:
        return bool(s.execute_command("SENTINEL", "FAILOVER", MASTER_NAME))
    except redis.ResponseError as exc:  # NOGOODSLAVE while the replica's state is being refreshed; INPROG
        if "NOGOODSLAVE" in str(exc) or "INPROG" in str(exc):
            return False
        raise


def test_sigkill_of_the_watched_sentinel(shell: str, topology: Topology, prefix: str) -> None:
    asyncio.run(_sigkill_of_the_watched_sentinel(shell, topology, prefix))


def record_readiness(server: Any) -> list[bool]:
    """Every change of ``core.ready``, seen where the hub runs: after each of the shell's drains.

    Every input to the core is followed by a drain (docs/architecture.md), so
    no change is missed, however short; sampling from the test's thread could
    miss one on trio, whose hub runs in a thread of its own.
    """
    readiness = [bool(server.core.ready)]
    drain = server.drain

    def drain_and_record() -> None:
        drain()
        if readiness[-1] != server.core.ready:
            readiness.append(bool(server.core.ready))

    server.drain = drain_and_record  # the shells look ``drain`` up on the instance at every call
    return readiness


async def _sigkill_of_the_watched_sentinel(shell: str, topo: Topology, prefix: str) -> None:
    master = topo.master_port()
    observer = await observe(master, prefix)
    async with hub_with_members(shell, topo, prefix) as (server, clients):
        watched = next(s for s in topo.sentinels if _watches(s))
        readiness = on_hub(server, record_readiness)
        try:
            watched.kill()
            await wait_for(lambda: False in readiness, what="the hub noticed the sentinel is gone")
            sent = await send_during(server, clients, 5)  # the master is fine: these go out at once
            await wait_for(lambda: readiness[-1], timeout=SETTLE, what="watching another sentinel")
        finally:
            watched.start()
        assert readiness[:3] == [True, False, True], readiness
        assert (await readyz(server))[0] == 200
        assert any(_watches(s) for s in topo.sentinels if s is not watched)
        await assert_delivered(observer, prefix, sent)
        await assert_group_messages_reach_every_member(master, prefix, clients)
    await observer.close()
    topo.settle("the sentinel back")


def _watches(sentinel: SentinelProcess) -> bool:
    """The hub's sentinel link is the only pub/sub client of a sentinel (they talk to each other otherwise)."""
    with sentinel.client() as s:
        return bool(s.client_list(_type="pubsub"))



# -- history through a failover (issue 11) -------------------------------------------------------------------


def test_group_messages_with_history_through_a_sentinel_failover(shell: str, topology: Topology, prefix: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A steady stream through ``wshub_publish`` while ``SENTINEL FAILOVER`` moves the master.

    Each member gets every message the new master acknowledged, once and in order, and nothing twice
    overall. What asynchronous replication may lose is measured, not assumed: messages the old master
    acknowledged after the replica was promoted never reach the new one; the test prints how many.
    """
    async def scenario() -> tuple[int, int, int]:
        async with hub_with_members(shell, topology, prefix) as (_, clients):
            old = topology.master_port()
            acked: list[tuple[str, int]] = []  # (message, the port of the master that acknowledged it)
            failing_over = asyncio.Event()
            done = asyncio.Event()

            async def publisher() -> None:
                port = old
                r = aredis.Redis(port=port, username="hub", password="hubpw")
                i = 0
                while not done.is_set():
                    message = f"m{i}"
                    try:
                        await r.fcall("wshub_publish", 1, f"{prefix}group-data:g1", message)  # type: ignore[misc]
                    except (redis.RedisError, OSError):  # READONLY once demoted (not written): to the new master
                        await r.aclose()
                        await wait_until(lambda: _is_master(topology.master_port()), timeout=SETTLE,
                                         what="a master")
                        port = topology.master_port()
                        r = aredis.Redis(port=port, username="hub", password="hubpw")
                        continue
                    acked.append((message, port))
                    i += 1
                    await asyncio.sleep(0.001)  # pacing, not synchronisation: a steady ~500 messages/s
                    if i == 200:
                        failing_over.set()
                    if port != old and sum(1 for _, p in acked if p != old) >= 200:
                        done.set()
                await r.fcall("wshub_publish", 1, f"{prefix}group-data:g1", "end")  # type: ignore[misc]
                await r.aclose()

            task = asyncio.ensure_future(publisher())
            await within(failing_over.wait(), 10)
            with topology.sentinels[0].client() as s:
                poll(lambda: _failover_started(s), what="SENTINEL FAILOVER accepted")
            await within(task, SETTLE)
            lost_overall = 0
            for ws in clients:
                got: list[str] = []
                while not got or got[-1] != "end":
                    got.append(str(await within(ws.recv(), 15)))
                assert len(got) == len(set(got)), "a message arrived twice"
                order = {m: n for n, (m, _) in enumerate(acked)}
                assert [order[m] for m in got[:-1]] == sorted(order[m] for m in got[:-1]), "out of order"
                on_new = [m for m, p in acked if p != old]
                assert [m for m in got if m in set(on_new)] == on_new, "a message the new master took is missing"
                lost_overall = max(lost_overall, len(acked) - len(got) + 1)
                assert ws.close_code is None
            kept = await aredis.Redis(port=topology.master_port(), username="hub", password="hubpw").xrange(
                f"{prefix}group-data:g1", count=100_000)
            not_kept = {m for m, p in acked if p == old} - {fields[b"d"].decode() for _, fields in kept}
            return sum(1 for _, p in acked if p == old), len(not_kept), lost_overall

    # What docs/operations.md recommends: a master that lost its replica refuses writes after 1 s, so an old
    # master that sentinel has not demoted yet (it looks again every 10 s) cannot take writes for long.
    for port in topology.servers:
        with redis.Redis(port=port, socket_timeout=5) as r:
            r.config_set("min-replicas-to-write", 1)
            r.config_set("min-replicas-max-lag", 1)
    try:
        on_old, not_kept, lost = asyncio.run(scenario())
    finally:
        for port in topology.servers:
            with redis.Redis(port=port, socket_timeout=5) as r:
                r.config_set("min-replicas-to-write", 0)
    with capsys.disabled():
        print(f"\n  [{shell}] history through SENTINEL FAILOVER: {on_old} messages acknowledged by the old master, "
              f"{not_kept} of them not in the new master's history (written after the promotion), "
              f"{lost} never delivered to a member (written after the hub had moved to the new master)")
    topology.settle("the old master demoted to a replica")
