"""Redis Cluster for the deterministic simulation (``world.py``): seeds ``N % 7 == 4`` that are not Sentinel's.

What is simulated
-----------------
* **The cluster.** Three shards, each a master and (most seeds) a replica, nine
  node names in all; a slot map over 16384 slots (three ranges at first) and
  names hashed with ``wshub_core._cluster.key_slot`` (hash tags honoured). The
  hub's config names one or two seed nodes; ``redis.pubsub`` is ``sharded``
  (three seeds in four) or ``classic``.
* **Per node.** ``CLUSTER SHARDS`` (a fifth of the seeds: an error, as before
  Redis 7, so the hub falls back to ``CLUSTER SLOTS``), answered from the
  node's *view*: the topology as it was ``topo_lag`` seconds ago (0, 0.3 or
  1.5 s), so answers lag the truth after every change. SSUBSCRIBE/SUNSUBSCRIBE
  (a slot the node's shard does not serve: ``-MOVED``, for SUNSUBSCRIBE too, as
  valkey-io/valkey#1066 describes; two slots in one command: ``-CROSSSLOT``),
  SPUBLISH (``smessage`` to the shard channel's subscribers on every node of the
  shard that publishes it, replicas included); classic SUBSCRIBE on any node and
  PUBLISH from any node to the subscribers on every node (the cluster bus);
  ``FUNCTION LOAD`` (a replica: ``-READONLY``; the library is replicated to the
  whole shard) and ``FCALL``/``FCALL_RO`` routed by the stream key's slot
  (elsewhere, or on a replica: ``-MOVED``; on a slot being migrated whose key
  is gone or has moved: ``-ASK`` to the importing master, which runs it after
  ``ASKING``); PING; the stall probe (a PUBLISH/SPUBLISH like any other).
* **Faults.** A link cut; a node killed (its connections cut, connects refused
  until it restarts; a master's replica is promoted after a detection delay, and
  the old master comes back as its replica); a manual failover (the master
  becomes a replica: no cut, but both nodes drop the shard channels of the
  shard's slots, each subscriber getting an unsolicited ``sunsubscribe``, as
  ``clusterDelSlot`` does in Redis 7.0); a slot migration of a slot in use (the
  source serves its shard channels to the end, as Redis does for pub/sub,
  then sends ``sunsubscribe`` for them and answers ``-MOVED``; history seeds
  migrate the stream midway: ``-ASK`` for it until the end, and sometimes cut the
  source's subscriber link meanwhile, so the hub reads the history then; half the
  migrations take a live client's client-data slot too, and that client sends
  bursts around the end: publishes in flight when the slot moves); a stalled node
  (answers nothing, executes everything afterwards: the probe must fire); a
  PUBLISH whose reply is lost (its connection dies after executing it); a
  history burst. Not simulated: writes lost at a failover (asynchronous
  replication), ``-TRYAGAIN``, ``-CLUSTERDOWN``.

Invariants, besides every one of ``world.py`` (their Redis-link parts per link)
------------------------------------------------------------------------------
(k1) The hub dials only node addresses; its links are the topology link and a
     subscriber and a command link per master of its map; SSUBSCRIBE only on a
     subscriber link, publishes only on a command link, CLUSTER only on the
     topology link; the publish verb matches ``redis.pubsub``.
(k2) At quiescence (with (a3)): the hub's masters are the cluster's, its slot
     map is the cluster's, each master's two links are up, and every needed
     channel is subscribed on exactly the node owning its slot (classic: all
     on slot 0's master), nothing extra (the probes apart).
(k3) (d) per link: a reply timeout drops a link, never early; a node link is
     idle-pinged within ``redis.timeout`` (the topology link is not: its
     refresh every 10 s is its keepalive); a connect is abandoned after
     ``redis.timeout``, never early, unless its master left the map; a lost
     link of a master still in the map, and the topology link, are dialled again
     within ``redis.reconnectMax``. A link owing no reply is closed only when its
     master left the map, its probe failed, or Redis answered it an error
     (``-MOVED`` on a subscriber link is such an error).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from wshub_core import Config, OpenLink, RedisLink
from wshub_core._cluster import SLOTS, key_slot
from wshub_core._cluster_broker import _REFRESH, ClusterBroker

from .world import _NOT_ENOUGH, CMD, EPS, SUB, T0, RedisConn, SimRedis, Stalls, World, _bulk, _push

__all__ = ["ClusterWorld", "is_cluster_seed"]

Address = tuple[str, int]
SHARDS = 3
# Shard i: master NODES[i], replica NODES[i + 3] (seeds without replicas leave some out).
NODES: tuple[Address, ...] = tuple((f"node-{i}.sim", 7000 + i) for i in range(2 * SHARDS))
_PONG_SUBSCRIBED = b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"


def is_cluster_seed(seed: int) -> bool:
    """Seeds ``N % 7 == 4`` run on a Cluster, except Sentinel's (``N % 4 == 3``)."""
    return seed % 7 == 4 and seed % 4 != 3


def _resp(value: object) -> bytes:
    """RESP2 of bytes, str, int and lists of them (a map: a flat list of names and values)."""
    if isinstance(value, bytes):
        return _bulk(value)
    if isinstance(value, str):
        return _bulk(value.encode())
    if isinstance(value, int):
        return b":%d\r\n" % value
    assert isinstance(value, list)
    return b"*%d\r\n" % len(value) + b"".join(_resp(v) for v in value)


class SimNode(Stalls):
    """One Redis process of the cluster."""

    def __init__(self, addr: Address, shard: int, role: str) -> None:
        super().__init__()
        self.addr = addr
        self.name = addr[0].split(".")[0]
        self.shard = shard
        self.role = role  # "master" | "replica"
        self.up = True  # False: killed (connects refused)
        self.conns: dict[int, ClusterConn] = {}


class ClusterConn(RedisConn):
    """A connection to one node: which of the hub's links it is, and its shard channels."""

    __slots__ = ("kind", "node", "ssubs", "asking", "refused", "key")

    def __init__(self, world: World, cid: int, kind: str, link_id: int, node: SimNode) -> None:
        super().__init__(world, cid, SUB if kind == "subscriber" else CMD, link_id, 1, node.addr)
        self.kind = kind  # "topology" | "subscriber" | "commands"
        self.node = node
        self.ssubs: dict[bytes, None] = {}
        self.asking = False  # ASKING came: the next command may run on an importing slot
        self.refused = False  # Redis answered an error here (the hub may drop the link for it)
        self.key: tuple[str, Address | None] = (kind, None if kind == "topology" else node.addr)

    def __repr__(self) -> str:
        return f"{self.kind}#{self.id}@{self.node.name}"


class Migration:
    __slots__ = ("src", "dst", "keys_moved")

    def __init__(self, src: int, dst: int) -> None:
        self.src = src
        self.dst = dst
        self.keys_moved = False  # MIGRATE has moved the slot's keys (the stream) to the importing master


View = tuple[tuple[tuple[int, int, int], ...], tuple[tuple[tuple[Address, str, str], ...], ...]]


class SimCluster(SimRedis):
    """Three shards of nodes, a slot map, shard and classic pub/sub, the wshub functions per shard."""

    def __init__(self, world: ClusterWorld) -> None:
        super().__init__(world)
        self.cw = world
        self.nodes: dict[Address, SimNode] = {}
        self.shards: list[list[SimNode]] = []  # members of each shard (the master is the one with that role)
        for i in range(SHARDS):
            members = [SimNode(NODES[i], i, "master")]
            if world.replicas[i]:
                members.append(SimNode(NODES[i + SHARDS], i, "replica"))
            self.shards.append(members)
            for n in members:
                self.nodes[n.addr] = n
        third = SLOTS // SHARDS
        self.owner = [min(s // (third + 1), SHARDS - 1) for s in range(SLOTS)]  # 0-5461, 5462-10922, ...
        self.migrating: dict[int, Migration] = {}
        self.with_library: set[int] = set()  # shards that have the wshub library (replicated to replicas)
        self.ssubs: dict[bytes, dict[ClusterConn, None]] = {}  # shard channel -> subscribers, on any node
        self._from_shard: int | None = None  # the shard executing a publish (SPUBLISH goes to its nodes)
        self.views: list[tuple[float, View]] = [(world.now, self._snapshot())]

    # -- topology ------------------------------------------------------------------------

    def master(self, shard: int) -> SimNode:
        return next(n for n in self.shards[shard] if n.role == "master")

    def masters(self) -> list[Address]:
        return sorted(self.master(s).addr for s in range(SHARDS))

    def owner_addr(self, slot: int) -> Address:
        return self.master(self.owner[slot]).addr

    def _snapshot(self) -> View:
        ranges: list[tuple[int, int, int]] = []
        start = 0
        for s in range(1, SLOTS + 1):
            if s == SLOTS or self.owner[s] != self.owner[start]:
                ranges.append((start, s - 1, self.owner[start]))
                start = s
        members = tuple(tuple((n.addr, n.role, "online" if n.up else "fail")
                              for n in sorted(self.shards[i], key=lambda n: n.role != "master"))
                        for i in range(SHARDS))
        return tuple(ranges), members

    def changed(self) -> None:
        """The truth changed: nodes learn it ``topo_lag`` later."""
        self.world.log("cluster: topology now %s", self._describe(self._snapshot()))
        self.views.append((self.world.now, self._snapshot()))

    @staticmethod
    def _describe(view: View) -> str:
        ranges, members = view
        shards = ["/".join(f"{a[0].split('.')[0]}({r[0]},{h})" for a, r, h in m) for m in members]
        return f"{len(ranges)} ranges, shards {' '.join(shards)}"

    def _view(self) -> View:
        cutoff = self.world.now - self.cw.topo_lag
        seen = self.views[0][1]
        for t, view in self.views:
            if t > cutoff + EPS:
                break
            seen = view
        return seen

    def _shards_reply(self) -> bytes:
        ranges, members = self._view()
        out: list[object] = []
        for shard, nodes in enumerate(members):
            slots: list[object] = [b for s, e, sh in ranges if sh == shard for b in (s, e)]
            infos: list[object] = []
            for (host, port), role, health in nodes:
                infos.append([b"id", f"{host}-id".encode(), b"port", port, b"ip", host, b"endpoint", host,
                              b"hostname", host, b"role", role, b"replication-offset", 0, b"health", health])
            out.append([b"slots", slots, b"nodes", infos])
        return _resp(out)

    def _slots_reply(self) -> bytes:
        ranges, members = self._view()
        out: list[object] = []
        for start, end, shard in ranges:
            nodes: list[object] = [[h.encode(), p, f"{h}-id".encode()] for (h, p), role, health in members[shard]
                                   if role == "master" or health != "fail"]
            out.append([start, end, *nodes])
        return _resp(out)

    # -- connections -----------------------------------------------------------------------

    def accept_on(self, kind: str, link_id: int, node: SimNode) -> ClusterConn:
        self.next_id += 1
        c = ClusterConn(self.world, self.next_id, kind, link_id, node)
        node.conns[c.id] = c
        return c

    def close(self, c: RedisConn) -> None:
        assert isinstance(c, ClusterConn)
        if not c.alive:
            return
        for ch in list(c.ssubs):
            self._unsubscribe(c, ch, c.ssubs, self.ssubs)
        c.node.conns.pop(c.id, None)
        super().close(c)

    def feed(self, c: RedisConn, data: bytes) -> None:
        assert isinstance(c, ClusterConn)
        c.node.run(self._process, c, data)

    def run(self, fn: Callable[..., None], *args: Any) -> None:
        """A backend's or the listener's command: on the master of its channel's slot (queued while it stalls)."""
        w = self.cw
        if fn == w._answer:
            channel = w.pfx_key + args[0].encode()
        elif fn == w._backend_publish or fn == w._burst:
            channel = w.pfx_group + args[0].encode()
        else:
            w.fail(f"simulation bug: SimCluster.run({fn!r})")
            return
        self.master(self.owner[key_slot(channel)]).run(fn, *args)

    def kill_node(self, node: SimNode) -> None:
        node.up = False
        node.stalled = False
        node.queue = []
        for c in sorted(node.conns.values(), key=lambda c: c.id):
            self.cw.kill_conn(c)

    # -- commands -----------------------------------------------------------------------------

    def _moved(self, c: ClusterConn, slot: int, ask: bool = False, to: Address | None = None) -> None:
        host, port = to or self.owner_addr(slot)
        c.refused = True
        self.cw.stats_cluster["asks_sent" if ask else "moved_sent"] += 1
        self._reply(c, b"-%s %d %s:%d\r\n" % (b"ASK" if ask else b"MOVED", slot, host.encode(), port))

    def _serves(self, node: SimNode, slot: int) -> bool:
        return self.owner[slot] == node.shard

    def _command(self, c: RedisConn, cmd: list[bytes]) -> None:
        assert isinstance(c, ClusterConn)
        w = self.world
        name = cmd[0].upper()
        args = cmd[1:]
        if name == b"AUTH" or not c.authed:
            super()._command(c, cmd)
            return
        w.log("redis@%s<%r %s", c.node.name, c, b" ".join(a[:40] for a in cmd))
        node = c.node
        asking, c.asking = c.asking, False
        if name == b"PING":
            self._reply(c, _PONG_SUBSCRIBED if c.subs or c.ssubs else b"+PONG\r\n")
            return
        kind = c.kind
        sharded = self.cw.sharded
        if name in (b"SSUBSCRIBE", b"SUNSUBSCRIBE", b"SUBSCRIBE", b"UNSUBSCRIBE"):
            if kind != "subscriber" or (name in (b"SSUBSCRIBE", b"SUNSUBSCRIBE")) != sharded:
                w.fail(f"(k1) the hub sent {name.decode()} on its {kind} link {c!r} (pubsub {w.cfg.redis_pubsub})")
            if not args:
                w.fail(f"the hub sent {name.decode()} without channels")
            if sharded:
                self._shard_subscription(c, name == b"SSUBSCRIBE", args)
            else:
                self._subscription(c, name == b"SUBSCRIBE", args, sharded=False)
            return
        if c.subs or c.ssubs:
            self._reply(c, b"-ERR Can't execute '%s': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / "
                           b"RESET are allowed in this context\r\n" % name.lower())
            return
        if name == b"CLUSTER":
            if kind != "topology" or len(args) != 1:
                w.fail(f"(k1) the hub sent CLUSTER {args!r} on its {kind} link {c!r}")
            verb = args[0].upper()
            if verb == b"SHARDS" and self.cw.slots_only:
                c.refused = True
                self._reply(c, b"-ERR unknown subcommand 'SHARDS'. Try CLUSTER HELP.\r\n")
            elif verb == b"SHARDS":
                self._reply(c, self._shards_reply())
            elif verb == b"SLOTS":
                self._reply(c, self._slots_reply())
            else:
                w.fail(f"the hub sent CLUSTER {verb!r}")
            return
        if kind != "commands":
            w.fail(f"(k1) the hub sent {name!r} on its {kind} link {c!r}")
        if name == b"ASKING":
            c.asking = True
            self._reply(c, b"+OK\r\n")
        elif name in (b"SPUBLISH", b"PUBLISH") and len(args) == 2:
            if (name == b"SPUBLISH") != sharded:
                w.fail(f"(k1) the hub sent {name.decode()} with redis.pubsub {w.cfg.redis_pubsub}")
            slot = key_slot(args[0])
            if sharded and not self._serves(node, slot):  # SPUBLISH on a replica of the shard is fine
                self._moved(c, slot)
                return
            self._from_shard = node.shard
            try:
                n, rec = self.publish(args[0], args[1], c)
            finally:
                self._from_shard = None
            if self.kill_after_publish:
                self.kill_after_publish -= 1
                if not self.kill_after_publish:
                    w.log("FAULT: the node dies after executing a PUBLISH, before its reply")
                    self.cw.kill_conn(c)
                    return
            self._reply(c, b":%d\r\n" % n, rec)
        elif name == b"FUNCTION" and args[:2] == [b"LOAD", b"REPLACE"] and len(args) == 3:
            if not w.cfg.history or b"#!lua name=wshub" not in args[2]:
                w.fail(f"the hub loaded a function library it should not: {args[:2]!r}")
            if node.role != "master":
                c.refused = True
                self._reply(c, b"-READONLY You can't write against a read only replica.\r\n")
                return
            self.with_library.add(node.shard)
            self._reply(c, _bulk(b"wshub"))
        elif name in (b"FCALL", b"FCALL_RO") and len(args) >= 3:
            self._cluster_fcall(c, name, args, asking)
        else:
            w.fail(f"the hub sent a command the simulated cluster does not implement: {cmd!r}")

    def _shard_subscription(self, c: ClusterConn, subscribe: bool, channels: list[bytes]) -> None:
        slots = sorted({key_slot(ch) for ch in channels})
        if len(slots) > 1:
            c.refused = True
            self._reply(c, b"-CROSSSLOT Keys in request don't hash to the same slot\r\n")
            return
        if not self._serves(c.node, slots[0]):
            self._moved(c, slots[0])
            return
        self._subscription(c, subscribe, channels, sharded=True)

    def _subscription(self, c: ClusterConn, subscribe: bool, channels: list[bytes], *, sharded: bool) -> None:
        """(S)SUBSCRIBE or (S)UNSUBSCRIBE: one confirmation per channel, with the connection's count."""
        mine, everyone = (c.ssubs, self.ssubs) if sharded else (c.subs, self.subs)
        verb = (b"s" if sharded else b"") + (b"subscribe" if subscribe else b"unsubscribe")
        parts: list[tuple[bytes, tuple[Any, ...] | None]] = []
        for i, ch in enumerate(channels):
            if subscribe and ch not in mine:
                mine[ch] = None
                everyone.setdefault(ch, {})[c] = None
            elif not subscribe and ch in mine:
                self._unsubscribe(c, ch, mine, everyone)
            parts.append((_push(verb, ch, b":%d\r\n" % len(mine)), ("reply", i == len(channels) - 1, None)))
        self._send(c, parts)

    @staticmethod
    def _unsubscribe(c: ClusterConn, ch: bytes, mine: dict[bytes, None], everyone: dict[bytes, Any]) -> None:
        del mine[ch]
        subs = everyone[ch]
        del subs[c]
        if not subs:
            del everyone[ch]

    def _cluster_fcall(self, c: ClusterConn, name: bytes, args: list[bytes], asking: bool) -> None:
        """The stream key's slot decides: here, -MOVED, -ASK (a migrating slot's missing key), or after ASKING."""
        w = self.world
        if args[1] != b"1":
            w.fail(f"the hub sent a malformed {name!r}: {args!r}")
        node = c.node
        key = args[2]
        slot = key_slot(key)
        mig = self.migrating.get(slot)
        if self._serves(node, slot):
            if node.role != "master":
                self._moved(c, slot)
                return
            if mig is not None and (mig.keys_moved or key not in self.streams):
                self._moved(c, slot, ask=True, to=self.master(mig.dst).addr)
                return
        elif not (mig is not None and mig.dst == node.shard and asking and node.role == "master"):
            self._moved(c, slot)
            return
        if node.shard not in self.with_library:
            self._reply(c, b"-ERR Function not found\r\n")
            return
        self._from_shard = node.shard
        try:
            self._function(c, name, args)
        finally:
            self._from_shard = None

    # -- pub/sub ----------------------------------------------------------------------------

    def history_publish(self, key: bytes, payload: bytes) -> str:
        """As a standalone Redis; a backend's runs where its key is (a migrating slot: after ASK)."""
        if self._from_shard is not None:
            return super().history_publish(key, payload)
        slot = key_slot(key)
        mig = self.migrating.get(slot)
        self._from_shard = mig.dst if mig is not None and (mig.keys_moved or key not in self.streams) \
            else self.owner[slot]
        try:
            return super().history_publish(key, payload)
        finally:
            self._from_shard = None

    def publish(self, channel: bytes, payload: bytes, origin: RedisConn | None) -> tuple[int, Any]:
        """SPUBLISH: to the channel's subscribers on the publishing shard's nodes; PUBLISH: on every node."""
        n = 0
        if self.cw.sharded:
            shard = self._from_shard if self._from_shard is not None else self.owner[key_slot(channel)]
            kind = b"smessage"
            targets = [c for c in self.ssubs.get(channel, ()) if c.node.shard == shard]
        else:
            kind = b"message"
            targets = [c for c in self.subs.get(channel, ()) if isinstance(c, ClusterConn)]
        for c in targets:
            n += 1
            c.node.run(self._deliver, c, kind, channel, payload)
        internal, rec = self.world.observe(channel, payload, origin)
        return n + internal, rec

    def _deliver(self, c: ClusterConn, kind: bytes, channel: bytes, payload: bytes) -> None:
        if not c.alive or channel not in (c.ssubs if kind == b"smessage" else c.subs):
            return
        self._send(c, [(_push(kind, channel, _bulk(payload)), ("push", channel, payload))])
        limit = self.world.obuf_limit
        if limit and c.sent - c.delivered > limit:
            self.world.log("FAULT: %s drops %r for its output buffer (%d B unread)", c.node.name, c,
                           c.sent - c.delivered)
            self.world.stats["output_buffer_kills"] += 1
            self.cw.kill_conn(c)

    def drop_shard_channels(self, node: SimNode, slots: Callable[[int], bool]) -> None:
        """``removeChannelsInSlot``: an unsolicited ``sunsubscribe`` for each shard channel of those slots."""
        for c in sorted(node.conns.values(), key=lambda c: c.id):
            gone = [ch for ch in c.ssubs if slots(key_slot(ch))]
            for ch in gone:
                self._unsubscribe(c, ch, c.ssubs, self.ssubs)
                self.world.log("cluster: %s unsubscribes %r from %r", node.name, c, ch)
                self._send(c, [(_push(b"sunsubscribe", ch, b":%d\r\n" % len(c.ssubs)), None)])
                self.cw.stats_cluster["sunsubscribes_sent"] += 1

    # -- changes of the truth ---------------------------------------------------------------

    def promote(self, node: SimNode) -> None:
        """A replica becomes its shard's master (the old master, if it lives, its replica)."""
        shard = node.shard
        old = self.master(shard)
        old.role = "replica"
        node.role = "master"
        self.world.log("cluster: %s promoted in place of %s (shard %d)", node.name, old.name, shard)
        for n in (old, node):  # both delete the shard's slots and re-add them: their shard channels go
            if n.up:
                n.run(self.drop_shard_channels, n, lambda s, shard=shard: self.owner[s] == shard)
        self.changed()

    def complete_migration(self, slot: int) -> None:
        mig = self.migrating.pop(slot)
        self.owner[slot] = mig.dst
        self.world.log("cluster: slot %d now served by shard %d (was %d)", slot, mig.dst, mig.src)
        for n in self.shards[mig.src]:
            if n.up:
                n.run(self.drop_shard_channels, n, lambda s: s == slot)
        self.changed()


class ClusterWorld(World):
    """A seeded run against a simulated Redis Cluster: the shell's links per link id, cluster faults."""

    redis: SimCluster

    def _topology_config(self, cfg: Config) -> Config:
        rng = self.rng
        self.sharded = rng.random() < 0.75
        self.replicas = [rng.random() < 0.8 for _ in range(SHARDS)]
        self.slots_only = rng.random() < 0.2  # the nodes answer CLUSTER SHARDS with an error (before Redis 7)
        self.topo_lag = rng.choice([0.0, 0.0, 0.3, 1.5])
        nodes = [a for i, a in enumerate(NODES) if i < SHARDS or self.replicas[i - SHARDS]]
        seeds = tuple(rng.sample(nodes, rng.choice([1, 2])))
        # The shell's side, per link id (the hub dials many).
        self.conns: dict[int, ClusterConn] = {}
        self.dialling: dict[int, tuple[Address, float, tuple[str, Address | None]]] = {}
        self.link_keys: dict[int, tuple[str, Address | None]] = {}
        self.lost_at: dict[tuple[str, Address | None], float] = {}
        self._burst_sender: Any = None
        self.stats_cluster = {"migrations": 0, "failovers": 0, "kills": 0, "moved_sent": 0, "asks_sent": 0,
                              "sunsubscribes_sent": 0, "redirects": 0, "moves": 0}
        return dataclasses.replace(cfg, redis_mode="cluster", redis_pubsub="sharded" if self.sharded else "classic",
                                   redis_seeds=seeds, redis_host=seeds[0][0], redis_port=seeds[0][1], redis_db=0)

    def _make_redis(self) -> SimRedis:
        return SimCluster(self)

    @property
    def broker(self) -> ClusterBroker:
        broker = self.hub.broker
        assert isinstance(broker, ClusterBroker)
        return broker

    def run(self) -> dict[str, Any]:
        result = super().run()
        broker = self.broker
        self.stats_cluster["redirects"] = broker.redirects
        self.stats_cluster["moves"] = broker.moves
        return {**result, **self.stats_cluster}

    # -- links (the shell's side) -------------------------------------------------------------

    def _connect_redis(self, a: OpenLink) -> None:
        broker = self.broker
        addr = (a.host, a.port)
        if a.link in self.link_keys:
            self.fail(f"OpenLink #{a.link}: an id the hub used before")
        if a.link == broker._topology_link:
            key: tuple[str, Address | None] = ("topology", None)
        else:
            found = broker._link_of.get(a.link)
            if found is None or found[0].address != addr:
                self.fail(f"(k1) OpenLink #{a.link} to {addr}: not a link of a master the hub holds")
                return
            key = (found[1], addr)
        self.log("action OpenLink %s %s:%d #%d", key[0], a.host, a.port, a.link)
        if addr not in self.redis.nodes or a.tls != self.cfg.redis_tls:
            self.fail(f"(k1) OpenLink to {a.host}:{a.port} tls={a.tls}: not a node of the cluster")
        if any(k == key for k in self._held_keys()):
            self.fail(f"the hub dialled its {key} link while the previous connection is still open")
        self.link_keys[a.link] = key
        self.lost_at.pop(key, None)
        self.dialling[a.link] = (addr, self.now, key)
        self.at(self.now + 2 * self.redis_latency + 0.0002, self._cluster_connect_done, a.link)

    def _held_keys(self) -> list[tuple[str, Address | None]]:
        return [c.key for c in self.conns.values()] + [k for _, _, k in self.dialling.values()]

    def _cluster_connect_done(self, link_id: int) -> None:
        entry = self.dialling.pop(link_id, None)
        if entry is None:
            return  # cancelled by CloseLink
        addr, _, key = entry
        node = self.redis.nodes[addr]
        if not node.up:
            self.lost_at[key] = self.now
            self.call(f"link_lost({key[0]} #{link_id}) [connection refused by {node.name}]", self.hub.link_lost,
                      link_id, self.now)
            return
        c = self.redis.accept_on(key[0], link_id, node)
        self.conns[link_id] = c
        self.call(f"link_opened({key[0]} #{link_id}) {c!r}", self.hub.link_opened, link_id, self.now)

    def _held(self, link_id: int, action: str) -> tuple[str, Address | None]:
        key = self.link_keys.get(link_id)
        if key is None or (link_id not in self.conns and link_id not in self.dialling):
            self.fail(f"{action} #{link_id}: a link the hub closed or heard was lost (or never dialled)")
        assert key is not None
        return key

    def _send_to_redis(self, link_id: int, data: bytes) -> None:
        key = self._held(link_id, "SendToLink")
        c = self.conns.get(link_id)
        self.log("action SendToLink %s #%d %r", key[0], link_id, data[:80])
        if c is None:
            self.fail(f"SendToLink on the {key[0]} link #{link_id} before it was opened")
            return
        if c.kind != "topology" and not c.pending and self.now > c.last_rx + self.cfg.redis_timeout / 2 + EPS:
            self.notes["late_idle_pings"] += 1
        c.out_reader.feed(data)
        while (cmd := c.out_reader.gets()) is not _NOT_ENOUGH:
            name = cmd[0].upper() if isinstance(cmd, list) and cmd else b"?"
            if name in (b"PUBLISH", b"SPUBLISH") and len(cmd) > 1 and cmd[1].startswith(self.pfx_probe):
                name = b"PROBE"
            c.pending.append((self.now, name))
        c.up.send(data)

    def _close_redis(self, link_id: int) -> None:
        key = self._held(link_id, "CloseLink")
        self.log("action CloseLink %s #%d", key[0], link_id)
        broker = self.broker
        timeout = self.cfg.redis_timeout
        retired = key[1] is not None and key[1] not in broker._nodes  # its master left the hub's map
        entry = self.dialling.pop(link_id, None)
        if entry is not None and not retired and self.now < entry[1] + timeout - EPS:
            self.fail(f"(d) the hub abandoned a {key[0]} connect after {self.now - entry[1]:.6f}s, "
                      f"before redis.timeout={timeout}")
        c = self.conns.pop(link_id, None)
        if c is not None:
            stalled = c.kind == "subscriber" and broker.stalls > self.stalls_seen
            if stalled:
                self.stalls_seen = broker.stalls
            broken = c.refused and c.kind != "commands"  # an error there breaks the link (-MOVED is followed)
            if not (retired or stalled or broken):
                if not c.pending:
                    self.fail(f"(k3) the hub dropped its {c!r} link while no reply was owed, its master in the "
                              f"map, no probe failed and no error answered")
                due = max(c.wait_rx, c.pending[0][0]) + timeout
                if self.now < due - EPS:
                    self.fail(f"(d) the hub dropped {c!r} {due - self.now:.6f}s before its reply timeout")
            self.redis.close(c)
        if not retired:
            self.lost_at[key] = self.now

    def redis_rx(self, c: RedisConn, data: bytes) -> None:
        if self.conns.get(c.link_id) is not c:
            return  # the shell detached this connection
        c.last_rx = self.now
        self.call(f"link_data({c!r}, {len(data)}B)", self.hub.link_data, c.link_id, data, self.now,
                  post=lambda: self._redis_records(c, len(data)))

    def kill_conn(self, c: ClusterConn) -> None:
        if not c.alive:
            return
        self.log("FAULT: %r dropped by %s", c, c.node.name)
        self.redis.close(c)
        self.at(self.now + self.rng.uniform(0.0, 0.05), self._cluster_notify_lost, c)

    def kill_link(self, link: RedisLink) -> None:
        self.fail("simulation bug: kill_link(role) in cluster mode")

    def _cluster_notify_lost(self, c: ClusterConn) -> None:
        if self.conns.get(c.link_id) is not c:
            return  # the hub closed it first
        del self.conns[c.link_id]
        self.lost_at[c.key] = self.now
        self.call(f"link_lost({c!r})", self.hub.link_lost, c.link_id, self.now)

    # -- faults ----------------------------------------------------------------------------

    def _fault(self) -> None:
        if self.phase != "active":
            return
        rng = self.rng
        cluster = self.redis
        kinds = ["drop_link", "kill_node", "manual_failover", "migrate", "stall", "lose_reply"]
        kind = self._pick_fault(kinds, [3.0, 2, 2, 4, 1.5, 1.5])
        timeout = self.cfg.redis_timeout
        heal = self.now
        nodes = [cluster.nodes[a] for a in sorted(cluster.nodes)]
        if kind == "drop_link":
            live = [c for _, c in sorted(self.conns.items()) if c.alive]
            if live:
                self.kill_conn(rng.choice(live))
        elif kind == "kill_node":
            node = rng.choice(nodes)
            if node.up:
                self.stats_cluster["kills"] += 1
                down = rng.uniform(0.1, 3.0)
                detect = rng.uniform(0.05, 1.0)
                self.log("FAULT: %s (%s of shard %d) killed for %.3fs", node.name, node.role, node.shard, down)
                cluster.kill_node(node)
                self.at(self.now + detect, self._detected, node.shard)
                self.at(self.now + down, self._restart, node)
                heal = self.now + max(down, detect) + 0.01
        elif kind == "manual_failover":
            shard = rng.randrange(SHARDS)
            replicas = [n for n in cluster.shards[shard] if n.role == "replica" and n.up]
            if replicas and cluster.master(shard).up:
                self.stats_cluster["failovers"] += 1
                cluster.promote(replicas[0])
        elif kind == "migrate":
            # A slot in use: of a channel the hub subscribes, or of a key's client-data it publishes on.
            names = self.hub.needed_channels() | {self.pfx_data + c.key.encode() for c in self.live.values()}
            used = sorted({key_slot(ch) for ch in names} - set(cluster.migrating))
            chosen = rng.sample(used, min(len(used), rng.choice([1, 1, 2, 3])))
            senders = [c for _, c in sorted(self.live.items()) if c.state == "open"]
            if senders and rng.random() < 0.5:
                # A client sending in bursts while its key's slot migrates: publishes in flight when it ends.
                sender = rng.choice(senders)
                slot = key_slot(self.pfx_data + sender.key.encode())
                if slot not in chosen and slot not in cluster.migrating:
                    chosen.append(slot)
                if slot in chosen:
                    self._burst_sender = sender
            for slot in chosen:
                src = cluster.owner[slot]
                dst = rng.choice([s for s in range(SHARDS) if s != src])
                cluster.migrating[slot] = Migration(src, dst)
                self.stats_cluster["migrations"] += 1
                length = rng.uniform(0.05, 4.0)
                self.log("FAULT: slot %d migrates from shard %d to %d for %.3fs", slot, src, dst, length)
                if self.history_mode:
                    moved = rng.uniform(0.0, 0.5 * length)
                    self.at(self.now + moved, self._keys_moved, slot)
                    if rng.random() < 0.5:  # resubscribed meanwhile, the hub reads the history: -ASK
                        self.at(self.now + rng.uniform(moved, length), self._drop_subscriber, src)
                self.at(self.now + length, self._migrated, slot)
                sender = self._burst_sender
                if sender is not None and slot == key_slot(self.pfx_data + sender.key.encode()):
                    for delay in (-0.01, 0.0, 0.01, 0.03):
                        self.at(self.now + length + delay * rng.random(), self._sender_burst, sender)
                heal = max(heal, self.now + length)
            self._burst_sender = None
        elif kind == "stall":
            node = rng.choice(nodes)
            if node.up and not node.stalled:
                node.stalled = True
                heal = self.now + rng.uniform(0.2, 2.0) * timeout
                self.at(heal, self._end_node_stall, node)
        elif kind == "lose_reply":
            cluster.kill_after_publish = rng.randint(1, 3)
        else:
            self._start_burst()
        self._next_fault(heal)

    def _detected(self, shard: int) -> None:
        """The cluster marks a dead node failed; a dead master's live replica is elected."""
        cluster = self.redis
        master = cluster.master(shard)
        replicas = [n for n in cluster.shards[shard] if n.role == "replica" and n.up]
        if not master.up and replicas:
            self.stats_cluster["failovers"] += 1
            cluster.promote(replicas[0])
        else:
            cluster.changed()

    def _restart(self, node: SimNode) -> None:
        node.up = True
        self.log("cluster: %s restarts as %s of shard %d", node.name, node.role, node.shard)
        self.redis.changed()
        if node.role == "replica" and not self.redis.master(node.shard).up:
            self.at(self.now + self.rng.uniform(0.05, 1.0), self._detected, node.shard)
            self.fault_until = max(self.fault_until, self.now + 1.01)

    def _sender_burst(self, c: Any) -> None:
        if c.state == "open" and self.phase == "active":
            for _ in range(self.rng.randint(2, 8)):
                c.send_message()

    def _drop_subscriber(self, shard: int) -> None:
        for c in sorted(self.conns.values(), key=lambda c: c.id):
            if c.kind == "subscriber" and c.node is self.redis.master(shard) and c.alive:
                self.kill_conn(c)

    def _keys_moved(self, slot: int) -> None:
        mig = self.redis.migrating.get(slot)
        if mig is not None:
            self.log("cluster: the keys of slot %d moved to shard %d (ASK from now on)", slot, mig.dst)
            mig.keys_moved = True

    def _migrated(self, slot: int) -> None:
        self.redis.complete_migration(slot)

    def _end_node_stall(self, node: SimNode) -> None:
        self.log("cluster: %s stall ends (%d queued)", node.name, len(node.queue))
        node.end_stall()

    def _settle_extra(self) -> float:
        # The hub may hold a topology that lagged the truth until its next periodic refresh.
        return _REFRESH + self.topo_lag + self.cfg.redis_timeout + 1.0

    # -- invariants --------------------------------------------------------------------------

    def _node_links(self, addr: Address) -> list[ClusterConn | None]:
        by_key = {c.key: c for c in self.conns.values()}
        return [by_key.get(("subscriber", addr)), by_key.get(("commands", addr))]

    def _check_links_up(self) -> None:
        """(k2) The hub's masters and map are the cluster's, and each master's links are up."""
        broker = self.broker
        cluster = self.redis
        if sorted(broker._nodes) != cluster.masters():
            self.fail(f"(k2) the hub's masters are {sorted(broker._nodes)}, the cluster's {cluster.masters()}")
        hub_map = broker._map
        if hub_map is None or any(hub_map.owner(s) != cluster.owner_addr(s) for s in range(SLOTS)):
            wrong = [s for s in range(SLOTS) if hub_map is None or hub_map.owner(s) != cluster.owner_addr(s)]
            self.fail(f"(k2) the hub's slot map differs from the cluster's on {len(wrong)} slots, first {wrong[:5]}")
        for addr in cluster.masters():
            for c in self._node_links(addr):
                if c is None or not c.alive or c.prelude_left:
                    self.fail(f"(a3) a link to master {addr} is not up after the faults healed")

    def _publish_in_flight(self) -> bool:
        return any(name in (b"PUBLISH", b"SPUBLISH", b"FCALL") for c in self.conns.values() if c.kind == "commands"
                   for _, name in c.pending)

    def _check_subscriptions(self, needed: set[bytes]) -> None:
        """(k2) Each needed channel subscribed on exactly the master of its slot (classic: of slot 0)."""
        cluster = self.redis
        actual = sorted((c.node.addr, ch) for c in self.conns.values() if c.kind == "subscriber"
                        for ch in (c.ssubs if self.sharded else c.subs) if not ch.startswith(self.pfx_probe))
        expected = sorted((cluster.owner_addr(key_slot(ch) if self.sharded else 0), ch) for ch in needed)
        if actual != expected:
            extra = [x for x in actual if x not in expected]
            missing = [x for x in expected if x not in actual]
            self.fail(f"(k2) subscriptions differ from the slot map: extra {extra[:6]}, missing {missing[:6]}")

    def _check_links_final(self) -> None:
        for addr in sorted(self.broker._nodes):
            for c in self._node_links(addr):
                if c is None:
                    self.fail(f"(c) a link to master {addr} is down at the end")
        for c in self.conns.values():
            left = sorted(ch for ch in (*c.subs, *c.ssubs) if not ch.startswith(self.pfx_probe))
            if left:
                self.fail(f"(c) {c!r} is still subscribed to {left}")
            waiting = [name for _, name in c.pending if name not in (b"PING", b"PROBE", b"CLUSTER")]
            if waiting:
                self.fail(f"(c) {c!r} still waits for replies to {waiting}")
        for ch in (*self.redis.subs, *self.redis.ssubs):
            if not ch.startswith(self.pfx_probe):
                self.fail(f"(c) the cluster still has subscribers on {ch!r}")

    def _check_links_due(self, t: float) -> None:
        cfg = self.cfg
        timeout = cfg.redis_timeout
        for c in self.conns.values():
            if c.pending:
                due = max(c.wait_rx, c.pending[0][0]) + timeout
                what = "reply timeout (drop the link)"
            elif c.kind != "topology":
                due = c.last_rx + timeout
                what = "idle PING"
            else:
                continue
            if t > due + EPS:
                self.fail(f"(d) {c!r}: {what} was due at {due - T0:.6f}, nothing happened by {t - T0:.6f}")
        for link_id, (addr, since, key) in self.dialling.items():
            if t > since + timeout + EPS and (key[1] is None or key[1] in self.broker._nodes):
                self.fail(f"(d) the {key} connect #{link_id} to {addr} was not abandoned after redis.timeout")
        if not self.lost_at:
            return
        held = set(self._held_keys())
        nodes = self.broker._nodes
        for key, at in self.lost_at.items():
            if key in held or (key[1] is not None and key[1] not in nodes):
                continue
            if t > at + cfg.reconnect_max + EPS:
                self.fail(f"(d) the {key} link lost at {at - T0:.6f} was not dialled again within "
                          f"reconnectMax={cfg.reconnect_max}")

