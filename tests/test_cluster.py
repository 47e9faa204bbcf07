"""Cluster mode against a real Redis Cluster: three masters with a replica each, all on loopback.

The cluster is started once for the module (``redis-server --cluster-enabled
yes`` per node on free ports, then ``redis-cli --cluster create``) and handed
from test to test whole: every slot served, every master with a replica in
sync. Each fault test injects one fault with WebSocket clients connected and
puts the cluster back (a killed master is restarted and rejoins as a replica).

What is checked is what a user of a hub on a Cluster cares about: the hub
subscribes each shard channel on the master that owns its slot, and nowhere
else (``PUBSUB SHARDCHANNELS`` on every node, against what is needed); group
messages published to the owner reach every member, in order; client messages
reach the owner of their channel, in order per key; through a failover, a
killed master, a slot migrated while its group is in use and a master stopped
with SIGSTOP, no client is disconnected and, with history, nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import jwt
import pytest
import redis
import redis.asyncio as aredis
import websockets
from websockets.asyncio.client import ClientConnection

from helpers import (
    REDIS_SERVER,
    TEST_API_KEY,
    RedisProcess,
    http_exchange,
    hub_process,
    on_hub,
    running_hub,
    wait_for,
    wait_until,
    within,
)
from wshub_core import load_config
from wshub_core._cluster import key_slot, parse_shards

REDIS_CLI = shutil.which("redis-cli") or "redis-cli"
NODE_TIMEOUT_MS = 1000  # how long a master may be silent before its replica takes over
SETTLE = 30.0  # bound on how long the cluster may take to agree after a fault


def cluster_port() -> int:
    """A free port whose cluster bus port (10000 higher, so at most 55535) is free too."""
    for _ in range(100):
        port = random.randrange(20000, 45000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise AssertionError("no free port pair")


class Cluster:
    """Six redis-server processes in cluster mode: three masters, one replica each."""

    def __init__(self) -> None:
        extra = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--cluster-allow-pubsubshard-when-down", "yes")
        self.nodes = [RedisProcess(port=cluster_port(), extra=extra)
                      for _ in range(6)]
        self.paused: set[int] = set()  # SIGSTOPped: asking them would block the test

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run([REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                        "--cluster-replicas", "1", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        self.wait_healthy()

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
            shutil.rmtree(node.dir, ignore_errors=True)

    def sync(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)

    def alive(self) -> list[RedisProcess]:
        """Nodes that run and answer (not killed, not stopped)."""
        return [n for n in self.nodes if n.proc is not None and n.port not in self.paused]

    def shards(self, port: int | None = None) -> dict[int, int]:
        """slot-range start -> master port, as node ``port`` reports it (by default the first live node that
        answers)."""
        for node in self.alive():
            if port is not None and node.port != port:
                continue
            with contextlib.suppress(redis.RedisError):
                reply = self.sync(node.port).execute_command("CLUSTER", "SHARDS")
                found = parse_shards(reply)
                assert not isinstance(found, str), found
                return {s: a[1] for s in range(16384) if (a := found.owner(s)) is not None and
                        (s == 0 or found.owner(s - 1) != a)}
        raise AssertionError("no node answers")

    def owner(self, name: str, port: int | None = None) -> int:
        """The port of the master that serves ``name``'s slot now (as node ``port`` sees it)."""
        slot = key_slot(name.encode())
        starts = self.shards(port)
        return starts[max(s for s in starts if s <= slot)]

    def agreed_owner(self, name: str) -> int | None:
        """The master of ``name``'s slot once every live node says the same; None while gossip still spreads
        a failover (a client sent to one node's answer could meet -MOVED from the other)."""
        try:
            owners = {self.owner(name, node.port) for node in self.alive()}
        except (AssertionError, redis.RedisError):
            return None
        return owners.pop() if len(owners) == 1 else None

    def masters(self) -> list[int]:
        return sorted(set(self.shards().values()))

    def replica_of(self, master: int) -> int:
        for node in self.alive():
            info = self.sync(node.port).execute_command("ROLE")
            if info[0] == b"slave" and int(info[2]) == master:
                return node.port
        raise AssertionError(f"no replica of {master}")

    def node(self, port: int) -> RedisProcess:
        return next(n for n in self.nodes if n.port == port)

    def wait_healthy(self) -> None:
        """Every node says cluster_state:ok, every master has a replica in sync, every node agrees on the slots."""
        deadline = time.monotonic() + SETTLE
        while time.monotonic() < deadline:
            try:
                if self._healthy():
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)  # polling processes that converge by gossip: no event to await
        raise AssertionError("the cluster did not settle")

    def _healthy(self) -> bool:
        views = set()
        for node in self.nodes:
            if node.proc is None or node.port in self.paused:
                return False
            client = self.sync(node.port)
            if b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                return False
            views.add(tuple(sorted(self.shards(node.port).items())))
            role = client.execute_command("ROLE")
            if role[0] == b"slave" and role[3] != b"connected":
                return False
        masters = self.masters()
        return len(views) == 1 and len(masters) == 3 and all(self._has_replica(m) for m in masters)

    def _has_replica(self, master: int) -> bool:
        try:
            self.replica_of(master)
        except AssertionError:
            return False
        return True


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if REDIS_SERVER is None:
        pytest.fail("redis-server is needed")
    topology = Cluster()
    try:
        topology.start()
        yield topology
    finally:
        topology.stop()


class Publisher:
    """Sends a command for a channel to the master that serves it, following -MOVED as redis-cli -c does."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.clients: dict[int, aredis.Redis] = {}

    def client(self, port: int) -> aredis.Redis:
        if port not in self.clients:
            self.clients[port] = aredis.Redis(host="127.0.0.1", port=port)
        return self.clients[port]

    async def call(self, channel: str, *args: Any) -> Any:
        port = self.cluster.owner(channel)
        for _ in range(20):
            try:
                return await self.client(port).execute_command(*args)
            except redis.exceptions.MovedError as exc:  # (ASK: the channel's keys are being migrated: retry)
                port = exc.port
            except redis.exceptions.AskError:
                await asyncio.sleep(0.05)
            except (redis.exceptions.ClusterDownError, redis.exceptions.TryAgainError):
                await asyncio.sleep(0.1)  # a failover in progress: ask again once it is over
                port = self.cluster.owner(channel)
            except (redis.ConnectionError, redis.TimeoutError, ConnectionError):
                await asyncio.sleep(0.1)  # the master is down: ask again once the cluster moved on
                port = self.cluster.owner(channel)
        raise AssertionError(f"no master took {args!r}")

    async def spublish(self, channel: str, data: str) -> None:
        await self.call(channel, "SPUBLISH", channel, data)

    async def fcall(self, channel: str, data: str) -> str:
        position = await self.call(channel, "FCALL", "wshub_publish", "1", channel, data)
        return position.decode() if isinstance(position, bytes) else str(position)

    async def close(self) -> None:
        for client in self.clients.values():
            await client.aclose()


class ShardListener:
    """SSUBSCRIBE on a channel's master: a listener of client-new, or an observer of client-data."""

    def __init__(self, cluster: Cluster, channel: str) -> None:
        self.channel = channel
        self.client = aredis.Redis(host="127.0.0.1", port=cluster.owner(channel))
        self.pubsub = self.client.pubsub()

    async def start(self) -> None:
        """SSUBSCRIBE, following -MOVED (a node's view of the slots can lag a failover by a gossip round)."""
        for _ in range(10):
            await self.pubsub.ssubscribe(self.channel)
            try:
                msg = await within(self.pubsub.get_message(timeout=5))
            except redis.exceptions.MovedError as exc:
                await self.close()
                self.client = aredis.Redis(host="127.0.0.1", port=exc.port)
                self.pubsub = self.client.pubsub()
                continue
            assert msg is not None and msg["type"] == "ssubscribe"
            return
        raise AssertionError(f"no master took SSUBSCRIBE {self.channel}")

    async def next(self, timeout: float = 10.0) -> bytes:
        deadline = asyncio.get_running_loop().time() + timeout
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            msg = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
            if msg is not None:
                data: bytes = msg["data"]
                return data
        raise AssertionError(f"nothing arrived on {self.channel}")

    async def close(self) -> None:
        await self.pubsub.aclose()
        await self.client.aclose()


def spread_groups(cluster: Cluster, prefix: str, per_master: int = 2) -> list[str]:
    """Group names whose group-data channels land on every master, ``per_master`` on each."""
    masters = {m: 0 for m in cluster.masters()}
    groups: list[str] = []
    i = 0
    while any(n < per_master for n in masters.values()):
        name = f"g{i}"
        owner = cluster.owner(f"{prefix}group-data:{name}")
        if masters[owner] < per_master:
            masters[owner] += 1
            groups.append(name)
        i += 1
    return groups


def cluster_config(cluster: Cluster, prefix: str, **overrides: Any) -> Any:
    tree: dict[str, Any] = {
        "address": "127.0.0.1:0",
        "redis": {"mode": "cluster", "address": [f"127.0.0.1:{n.port}" for n in cluster.nodes[:2]],
                  "channelPrefix": prefix, "reconnectMin": 0.05, "reconnectMax": 0.5, "timeout": 5,
                  "probeInterval": 0.5},
        "history": {"enabled": False},
    }
    for name, value in overrides.items():
        section, _, key = name.partition("_")
        tree.setdefault(section, {})[key] = value
    import yaml

    return load_config(yaml.safe_dump(tree), source="test")


class Member:
    def __init__(self, key: str, ws: ClientConnection, envelopes: bool) -> None:
        self.key = key
        self.ws = ws
        self.envelopes = envelopes
        self.got: dict[str, list[str]] = {}
        self.closed = False

    async def read_until(self, groups: list[str], last: str, timeout: float = 20.0) -> None:
        """Receive until every group's ``last`` message arrived (groups are independent streams)."""
        while not all(self.got.get(g, [])[-1:] == [f"{g}:{last}"] for g in groups):
            raw = await within(self.ws.recv(), timeout)
            assert isinstance(raw, str)
            if self.envelopes:
                value = json.loads(raw)
                assert "reset" not in value, value
                group, data = value["group"], value["data"]
            else:
                group, _, _ = raw.partition(":")
                data = raw
            self.got.setdefault(group, []).append(data)


@contextlib.asynccontextmanager
async def hub_with_members(shell: str, cluster: Cluster, prefix: str, groups: list[str], *, members: int = 3,
                           recover: bool = False, **config: Any) -> AsyncIterator[tuple[Any, Publisher, list[Member]]]:
    """A hub on the cluster with ``members`` clients, each in every one of ``groups`` (the test is the listener)."""
    publisher = Publisher(cluster)
    listener = ShardListener(cluster, f"{prefix}client-new")
    await listener.start()
    clients: list[Member] = []
    try:
        async with running_hub(cluster_config(cluster, prefix, **config), shell) as server:
            for i in range(members):
                key = f"k{i}"
                url = f"ws://127.0.0.1:{server.port}/ws?session_key={key}" + ("&recover=1" if recover else "")
                clients.append(Member(key, await websockets.connect(url, proxy=None), recover))
                assert await listener.next() == key.encode()
                await publisher.spublish(f"{prefix}groups-new:{key}", json.dumps(groups))
            channels = {f"{prefix}group-data:{g}".encode() for g in groups}
            await wait_for(lambda: channels <= on_hub(server, lambda s: s.core.subscribed_channels())
                           and on_hub(server, lambda s: s.core.ready), timeout=10, what="groups subscribed")
            yield server, publisher, clients
            for member in clients:
                assert member.ws.close_code is None, f"{member.key} was disconnected: {member.ws.close_code}"
                await member.ws.close()
    finally:
        await listener.close()
        await publisher.close()


def shard_channels(cluster: Cluster, prefix: str) -> dict[int, set[bytes]]:
    """What every live master reports in PUBSUB SHARDCHANNELS under ``prefix`` (probes left out)."""
    out: dict[int, set[bytes]] = {}
    for port in cluster.masters():
        names = cluster.sync(port).execute_command("PUBSUB", "SHARDCHANNELS", f"{prefix}*")
        out[port] = {n for n in names if b":probe:" not in n and not n.endswith(b"client-new")}  # not the test's
    return out


def needed_by_node(server: Any) -> dict[int, set[bytes]]:
    found: dict[tuple[str, int], set[bytes]] = on_hub(server, lambda s: s.core.broker.channels_by_node())
    return {address[1]: set(channels) for address, channels in found.items()}


async def publish_rounds(publisher: Publisher, prefix: str, groups: list[str], rounds: range, *,
                         history: bool = False) -> None:
    for i in rounds:
        for group in groups:
            channel = f"{prefix}group-data:{group}"
            if history:
                await publisher.fcall(channel, f"{group}:{i}")
            else:
                await publisher.spublish(channel, f"{group}:{i}")


def assert_all_in_order(members: list[Member], groups: list[str], count: int) -> None:
    for member in members:
        for group in groups:
            assert member.got[group] == [f"{group}:{i}" for i in range(count)], (member.key, group)


async def readyz(server: Any) -> int:
    answer = await http_exchange(server.port, b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    return answer.status


# -- tests ---------------------------------------------------------------------------------------------


def test_each_shard_channel_lives_on_its_master_and_group_messages_reach_every_member(
        shell: str, cluster: Cluster, prefix: str) -> None:
    async def scenario() -> None:
        groups = spread_groups(cluster, prefix)
        async with hub_with_members(shell, cluster, prefix, groups) as (server, publisher, members):
            # Subscribed where each slot is served, and nowhere else; every master holds some.
            by_node = needed_by_node(server)
            assert by_node == shard_channels(cluster, prefix)
            assert all(by_node.values()) and len(by_node) == 3
            for port, channels in by_node.items():
                assert all(cluster.owner(c.decode()) == port for c in channels)
            await publish_rounds(publisher, prefix, groups, range(20))
            for member in members:
                await member.read_until(groups, "19")
            assert_all_in_order(members, groups, 20)

    asyncio.run(scenario())


def test_client_messages_reach_their_keys_master_in_order(shell: str, cluster: Cluster, prefix: str) -> None:
    async def scenario() -> None:
        async with hub_with_members(shell, cluster, prefix, ["g"], members=3) as (_, _publisher, members):
            observers = [ShardListener(cluster, f"{prefix}client-data:{m.key}") for m in members]
            for observer in observers:
                await observer.start()
            assert len({o.client.connection_pool.connection_kwargs["port"] for o in observers}) >= 2
            for i in range(30):
                for member in members:
                    await member.ws.send(f"{member.key}-{i}")
            for member, observer in zip(members, observers, strict=True):
                assert [await observer.next() for _ in range(30)] == [f"{member.key}-{i}".encode() for i in range(30)]
                await observer.close()

    asyncio.run(scenario())


def test_classic_mode_subscribes_on_one_node_and_delivers(shell: str, cluster: Cluster, prefix: str) -> None:
    async def scenario() -> None:
        config = cluster_config(cluster, prefix, redis_pubsub="classic")
        async with running_hub(config, shell) as server:
            async with websockets.connect(f"ws://127.0.0.1:{server.port}/ws?session_key=c1", proxy=None) as ws:
                r = aredis.Redis(host="127.0.0.1", port=cluster.nodes[3].port)  # any node: classic PUBLISH
                await wait_for(lambda: f"{prefix}groups-new:c1".encode()
                               in on_hub(server, lambda s: s.core.subscribed_channels()), what="key subscribed")
                await r.publish(f"{prefix}groups-new:c1", '["g1"]')
                await wait_for(lambda: f"{prefix}group-data:g1".encode()
                               in on_hub(server, lambda s: s.core.subscribed_channels()), what="group subscribed")
                await wait_for(lambda: on_hub(server, lambda s: s.core.ready), what="ready")
                for i in range(5):
                    await r.publish(f"{prefix}group-data:g1", f"m{i}")
                assert [await within(ws.recv()) for _ in range(5)] == [f"m{i}" for i in range(5)]
                await r.aclose()
            by_node = {p: c for p, c in needed_by_node(server).items() if c}
            assert len(by_node) <= 1  # every classic subscription on slot 0's master

    asyncio.run(scenario())


async def _fault_scenario(shell: str, cluster: Cluster, prefix: str, fault: str) -> dict[str, float]:
    """Members in groups on every master, a steady stream through wshub_publish, one fault mid-stream."""
    groups = spread_groups(cluster, prefix)
    async with hub_with_members(shell, cluster, prefix, groups, recover=True, history_enabled=True) as (
            server, publisher, members):
        victim = cluster.owner(f"{prefix}group-data:{groups[0]}")
        stopped: RedisProcess | None = None
        ready_seen: list[bool] = []
        count = 60
        for i in range(count):
            if i == 20:
                if fault == "failover":
                    replica = cluster.replica_of(victim)
                    cluster.sync(replica).execute_command("CLUSTER", "FAILOVER")
                elif fault == "kill":
                    cluster.node(victim).kill()
                    # The hub must say so (503) until the replica takes over: ask until it does, rather than
                    # once, which could come before the hub has read the closed links.
                    async def down() -> bool:
                        return await readyz(server) != 200
                    await wait_until(down, timeout=10, what="/readyz 503 after the master was killed")
                    ready_seen.append(False)
                elif fault == "stop":  # until the probe finds the stall (the cluster may fail it over meanwhile)
                    stopped = cluster.node(victim)
                    cluster.paused.add(victim)
                    stopped.pause()
                    try:
                        await wait_for(lambda: on_hub(server, lambda s: s.core.broker.stalls) >= 1, timeout=10,
                                       what="the stall probe fired")
                    finally:
                        stopped.resume()
                        cluster.paused.discard(victim)
            ready_seen.append(await readyz(server) == 200)
            await publish_rounds(publisher, prefix, groups, range(i, i + 1), history=True)
        for member in members:
            await member.read_until(groups, str(count - 1), timeout=30)
        assert_all_in_order(members, groups, count)
        await wait_for(lambda: on_hub(server, lambda s: s.core.ready), timeout=SETTLE, what="ready again")
        assert needed_by_node(server) == shard_channels(cluster, prefix)
        counters = {"stalls": on_hub(server, lambda s: s.core.broker.stalls),
                    "moves": on_hub(server, lambda s: s.core.broker.moves),
                    "not_ready": ready_seen.count(False)}
    return counters


def _restore(cluster: Cluster) -> None:
    for node in cluster.nodes:
        if node.proc is None:
            node.proc = subprocess.Popen(  # the same port and folder: it rejoins from its nodes.conf
                [REDIS_SERVER, "--port", str(node.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", node.dir, "--logfile", os.path.join(node.dir, "redis.log"), *node.extra],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cluster.wait_healthy()


def test_cluster_failover_loses_nothing_with_history(shell: str, cluster: Cluster, prefix: str) -> None:
    counters = asyncio.run(_fault_scenario(shell, cluster, prefix, "failover"))
    assert counters["moves"] >= 1
    cluster.wait_healthy()


def test_sigkill_of_a_master_loses_nothing_with_history(shell: str, cluster: Cluster, prefix: str) -> None:
    try:
        counters = asyncio.run(_fault_scenario(shell, cluster, prefix, "kill"))
        assert counters["moves"] >= 1 and counters["not_ready"] >= 1
    finally:
        _restore(cluster)


def test_sigstop_of_a_master_fires_the_stall_probe(shell: str, cluster: Cluster, prefix: str) -> None:
    try:
        counters = asyncio.run(_fault_scenario(shell, cluster, prefix, "stop"))
        assert counters["stalls"] >= 1
    finally:
        for node in cluster.nodes:
            if node.proc is not None:
                os.kill(node.proc.pid, signal.SIGCONT)
        _restore(cluster)


def test_a_slot_migrated_while_its_group_is_in_use(shell: str, cluster: Cluster, prefix: str) -> None:
    async def scenario() -> None:
        groups = spread_groups(cluster, prefix, per_master=1)
        async with hub_with_members(shell, cluster, prefix, groups, recover=True, history_enabled=True) as (
                server, publisher, members):
            group = groups[0]
            channel = f"{prefix}group-data:{group}"
            source = cluster.owner(channel)
            target = next(m for m in cluster.masters() if m != source)
            for i in range(20):
                await publish_rounds(publisher, prefix, groups, range(i, i + 1), history=True)
            migrate_slot(cluster, key_slot(channel.encode()), source, target)
            assert cluster.owner(channel) == target
            for i in range(20, 40):
                await publish_rounds(publisher, prefix, groups, range(i, i + 1), history=True)
            for member in members:
                await member.read_until(groups, "39", timeout=30)
            assert_all_in_order(members, groups, 40)
            await wait_for(lambda: needed_by_node(server) == shard_channels(cluster, prefix), timeout=SETTLE,
                           what="every channel on its new master")
            assert channel.encode() in needed_by_node(server)[target]
            migrate_slot(cluster, key_slot(channel.encode()), target, source)  # as it was, for the next test

    asyncio.run(scenario())


def migrate_slot(cluster: Cluster, slot: int, source: int, target: int) -> None:
    """Move ``slot`` and its keys from master ``source`` to ``target`` (what redis-cli --cluster reshard does)."""
    src, dst = cluster.sync(source), cluster.sync(target)
    src_id = src.execute_command("CLUSTER", "MYID")
    dst_id = dst.execute_command("CLUSTER", "MYID")
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
    while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
        src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
    for node in cluster.alive():
        role = cluster.sync(node.port).execute_command("ROLE")
        if role[0] == b"master":
            cluster.sync(node.port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
    cluster.wait_healthy()


def test_three_hub_processes_on_one_cluster(cluster: Cluster, prefix: str) -> None:
    """asyncio, trio, asyncio: each subscribes its own clients' channels only (PUBSUB SHARDNUMSUB on the owners)."""
    async def scenario() -> None:
        groups = spread_groups(cluster, prefix, per_master=1)
        publisher = Publisher(cluster)
        listener = ShardListener(cluster, f"{prefix}client-new")
        await listener.start()
        env = {"WSHUB_REDIS_MODE": "cluster", "WSHUB_REDIS_ADDRESS": f"127.0.0.1:{cluster.nodes[0].port}",
               "WSHUB_REDIS_CHANNEL_PREFIX": prefix, "WSHUB_HISTORY_ENABLED": "false"}
        members: list[Member] = []

        def numsub(channel: str) -> int:
            reply = cluster.sync(cluster.owner(channel)).execute_command("PUBSUB", "SHARDNUMSUB", channel)
            return int(reply[1])

        try:
            async with contextlib.AsyncExitStack() as stack:
                hubs = [await stack.enter_async_context(hub_process(shell=shell, **env))
                        for shell in ("asyncio", "trio", "asyncio")]
                for h, hub in enumerate(hubs):
                    for i in range(2):
                        key = f"p{h}k{i}"
                        ws = await websockets.connect(f"ws://127.0.0.1:{hub.port}/ws?session_key={key}", proxy=None)
                        members.append(Member(key, ws, False))
                        assert await listener.next() == key.encode()
                        mine = sorted({groups[0], groups[h]})
                        await publisher.spublish(f"{prefix}groups-new:{key}", json.dumps(mine))
                expected = {g: sum(1 for h in range(3) if g in (groups[0], groups[h])) for g in groups}
                await wait_for(lambda: all(numsub(f"{prefix}group-data:{g}") == n for g, n in expected.items()),
                               timeout=10, what="every hub subscribed its groups")
                for member in members:  # each key's channels: on one hub, its own
                    for kind in ("groups-new", "client-send", "client-kick"):
                        assert numsub(f"{prefix}{kind}:{member.key}") == 1, (kind, member.key)
                await publish_rounds(publisher, prefix, groups, range(10))
                for member in members:
                    mine = sorted({groups[0], groups[int(member.key[1])]})
                    await member.read_until(mine, "9")
                    assert_all_in_order([member], mine, 10)
                    assert set(member.got) == set(mine)
                for member in members:
                    await member.ws.close()
        finally:
            await listener.close()
            await publisher.close()

    asyncio.run(scenario())


# -- presence --------------------------------------------------------------------------------------------

PRESENCE_SECRET = "cluster-presence-secret-0123456789abcdef"
PRESENCE_TIMEOUT = 2.0


def presence_token(key: str, groups: list[str]) -> str:
    """A token whose groups claim puts the client in its groups at once: no listener needed."""
    return jwt.encode({"sub": key, "groups": groups, "exp": int(time.time()) + 600}, PRESENCE_SECRET,
                      algorithm="HS256")


def presence_groups(cluster: Cluster, prefix: str) -> list[str]:
    """One group per master, by the slot of its events channel (where its presence keys live too)."""
    groups: list[str] = []
    owners: set[int] = set()
    i = 0
    while len(owners) < 3:
        owner = cluster.owner(f"{prefix}presence:r{i}")
        if owner not in owners:
            owners.add(owner)
            groups.append(f"r{i}")
        i += 1
    return groups


async def presence_answer(port: int, group: str) -> dict[str, int] | None:
    """The keys of ``GET /api/groups/GROUP/presence``; None while the hub cannot ask (503)."""
    answer = await http_exchange(port, f"GET /api/groups/{group}/presence HTTP/1.1\r\nHost: x\r\n"
                                       f"Authorization: Bearer {TEST_API_KEY}\r\nConnection: close\r\n\r\n".encode())
    if answer.status != 200:
        return None
    keys: dict[str, int] = json.loads(answer.body)["keys"]
    return keys


async def presence_is(ports: list[int], groups: list[str], expected: dict[str, int], what: str,
                      timeout: float = 10.0) -> None:
    seen: dict[tuple[int, str], dict[str, int] | None] = {}

    async def agreed() -> bool:
        for p in ports:
            for g in groups:
                seen[p, g] = await presence_answer(p, g)
        return all(answer == expected for answer in seen.values())
    try:
        await wait_until(agreed, timeout=timeout, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: the hubs answered {seen}") from None


async def presence_event(listener: ShardListener, timeout: float = 10.0) -> dict[str, str]:
    event: dict[str, str] = json.loads(await listener.next(timeout))
    return event


def test_presence_across_hub_processes_through_a_failover_and_a_killed_hub(cluster: Cluster, prefix: str) -> None:
    """Sharded: join/leave SPUBLISHed on each group's master; the answers agree on both hubs, survive a failover
    of a master holding presence keys, and lose a SIGKILLed hub's keys within presence.timeout."""
    async def scenario() -> None:
        groups = presence_groups(cluster, prefix)
        env = {"WSHUB_REDIS_MODE": "cluster", "WSHUB_REDIS_ADDRESS": f"127.0.0.1:{cluster.nodes[0].port}",
               "WSHUB_REDIS_CHANNEL_PREFIX": prefix, "WSHUB_HISTORY_ENABLED": "false",
               "WSHUB_REDIS_RECONNECT_MIN": "0.05", "WSHUB_REDIS_RECONNECT_MAX": "0.5",
               "WSHUB_AUTH_JWT_SECRET": PRESENCE_SECRET, "WSHUB_PRESENCE_ENABLED": "true",
               "WSHUB_PRESENCE_TIMEOUT": str(PRESENCE_TIMEOUT), "WSHUB_PRESENCE_GRACE": "0.2"}
        listeners = {g: ShardListener(cluster, f"{prefix}presence:{g}") for g in groups}
        for listener in listeners.values():
            await listener.start()
        try:
            async with hub_process(shell="asyncio", **env) as a, hub_process(shell="trio", **env) as b:
                url = "ws://127.0.0.1:{}/ws?session_key={}"
                alice = await websockets.connect(url.format(a.port, presence_token("alice", groups)), proxy=None)
                for g in groups:
                    assert await presence_event(listeners[g]) == {"event": "join", "group": g, "key": "alice"}
                bob = await websockets.connect(url.format(b.port, presence_token("bob", groups)), proxy=None)
                alice2 = await websockets.connect(url.format(b.port, presence_token("alice", groups)), proxy=None)
                for g in groups:  # bob joins; alice's second connection is no join
                    assert await presence_event(listeners[g]) == {"event": "join", "group": g, "key": "bob"}
                await presence_is([a.port, b.port], groups, {"alice": 2, "bob": 1}, "both hubs' counts")

                # A failover of the master that holds groups[0]'s presence keys: the hubs follow it and the
                # counts are still whole there (each hub writes its own again when the new master's link is up).
                victim = cluster.owner(f"{prefix}presence:{groups[0]}")
                cluster.sync(cluster.replica_of(victim)).execute_command("CLUSTER", "FAILOVER")
                await wait_for(lambda: cluster.agreed_owner(f"{prefix}presence:{groups[0]}") not in (None, victim),
                               timeout=SETTLE, what="the replica promoted, as every node sees it")
                await listeners[groups[0]].close()  # its master is a replica now: SSUBSCRIBE on the new one
                listeners[groups[0]] = ShardListener(cluster, f"{prefix}presence:{groups[0]}")
                await listeners[groups[0]].start()
                await presence_is([a.port, b.port], groups, {"alice": 2, "bob": 1}, "counts after the failover",
                                  timeout=SETTLE)
                carol = await websockets.connect(url.format(a.port, presence_token("carol", groups[:1])), proxy=None)
                assert await presence_event(listeners[groups[0]]) == {"event": "join", "group": groups[0],
                                                                      "key": "carol"}

                # SIGKILL b: no goodbye. Its keys leave every answer, and a survivor SPUBLISHes bob's leave.
                assert b.proc is not None
                b.proc.send_signal(signal.SIGKILL)
                await presence_is([a.port], groups[1:], {"alice": 1}, "b's entries gone",
                                  timeout=PRESENCE_TIMEOUT * 2 + 5)
                for g in groups:
                    assert await presence_event(listeners[g], timeout=PRESENCE_TIMEOUT * 2 + 5) == {
                        "event": "leave", "group": g, "key": "bob"}
                assert await presence_answer(a.port, groups[0]) == {"alice": 1, "carol": 1}
                for ws in (alice, alice2, bob, carol):
                    await ws.close()
        finally:
            for listener in listeners.values():
                await listener.close()
        cluster.wait_healthy()

    asyncio.run(scenario())


def test_presence_in_classic_mode_publishes_events_every_node_delivers(shell: str, cluster: Cluster,
                                                                       prefix: str) -> None:
    async def scenario() -> None:
        group = presence_groups(cluster, prefix)[1]
        config = cluster_config(cluster, prefix, redis_pubsub="classic", presence_enabled=True, presence_grace=0,
                                auth_jwt={"secret": PRESENCE_SECRET}, api_key=TEST_API_KEY)
        far = next(n.port for n in cluster.nodes if n.port != cluster.owner(f"{prefix}presence:{group}"))
        heard = aredis.Redis(host="127.0.0.1", port=far).pubsub()  # classic: any node, even a replica, hears it
        await heard.subscribe(f"{prefix}presence:{group}")
        try:
            async with running_hub(config, shell) as server:
                await wait_for(lambda: on_hub(server, lambda s: s.core.ready), timeout=10, what="ready")
                ws = await websockets.connect(f"ws://127.0.0.1:{server.port}/ws?session_key="
                                              + presence_token("dana", [group]), proxy=None)
                assert await classic_event(heard) == {"event": "join", "group": group, "key": "dana"}
                assert await presence_answer(server.port, group) == {"dana": 1}
                await ws.close()
                assert await classic_event(heard) == {"event": "leave", "group": group, "key": "dana"}
                assert await presence_answer(server.port, group) == {}
        finally:
            await heard.aclose()

    asyncio.run(scenario())


async def classic_event(pubsub: Any, timeout: float = 10.0) -> dict[str, str]:
    deadline = asyncio.get_running_loop().time() + timeout
    while (left := deadline - asyncio.get_running_loop().time()) > 0:
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
        if msg is not None:
            event: dict[str, str] = json.loads(msg["data"])
            return event
    raise AssertionError("no presence event arrived")
