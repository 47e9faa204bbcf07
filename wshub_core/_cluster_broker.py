"""The Redis Cluster broker: a topology link, and a subscriber and a command link per master.

The topology link asks a node ``CLUSTER SHARDS`` (``CLUSTER SLOTS`` where that
is unknown) at start, every ``_REFRESH`` seconds, and at once after any sign
that it moved: a lost link, a ``-MOVED`` or ``-ASK`` reply, a shard channel
Redis unsubscribed us from. Each master gets two links, opened at run time
(every dial a new link id, as in ``_redis_broker.py``):

- its subscriber link subscribes the needed channels whose slot it serves
  (``redis.pubsub: sharded``: SSUBSCRIBE, one channel per command) or, in
  classic mode, the master of slot 0 subscribes every channel (SUBSCRIBE
  and PSUBSCRIBE: a classic PUBLISH reaches every node);
- its command link takes the publishes, scripts and reads for the slots it
  serves (SPUBLISH or PUBLISH), each resent in order after a reconnect.

Rules:
1. Every needed channel has one home, the master its slot maps to (classic:
   slot 0's); a new topology moves each channel whose home changed: SUNSUBSCRIBE
   where it was, SSUBSCRIBE where it goes, and the hub hears ``on_confirmed``
   again (history repairs what the move lost).
2. A command is routed by its channel's slot; a reply ``-MOVED`` or ``-ASK``
   sends it again where Redis says (``ASK``: behind ``ASKING``), in order; a
   master that leaves the topology hands its unanswered commands to the new
   owners of their slots. Commands with no owner yet wait, in order, and so
   do a slot's commands while the master it left still owes answers for it
   (they may come back ``-MOVED``: nothing newer may overtake them).
3. Every subscriber link delivers the probe its master's command link
   publishes on a channel in one of that master's slots, or is dropped as
   stalled (``_probe.py``).
4. History: each master loads the ``wshub`` library when its command link
   comes up; ``wshub_publish`` and ``wshub_read`` go to the stream's master
   like any command. Presence (``_redis_presence.py``): each script call goes
   to the master of its keys' slot (a group's keys share its events channel's
   slot, so join/leave are SPUBLISHed from there), SCRIPT LOAD to every
   master, and the whole local state is written again each time a master's
   command link comes up (counts are absolute: a promoted replica, or a
   master restarted empty, is made whole).
5. Nothing a node sends raises out of here: a broken link is dropped and
   redialled, and the topology asked again.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Literal

import hiredis

from ._actions import Action, CloseLink, OpenLink, SendToLink
from ._broker import OnConfirmed, OnEntry, OnHistory, OnMessage, OnPresence, OnPublished, OnPublisherBack
from ._channels import Channels
from ._cluster import Address, SlotMap, key_slot, parse_redirect, parse_shards, parse_slots
from ._config import Config
from ._logs import host_port
from ._metrics import Sample
from ._probe import Probe
from ._redis import (
    Backoff,
    CommandSession,
    Confirmed,
    RedisSession,
    RedisState,
    SubscriberSession,
    Unsubscribed,
    pack,
)
from ._redis_broker import _glob_literal
from ._redis_history import MAGIC, answer_read, library, parse_envelope, publish_args, read_args
from ._redis_presence import RedisPresence
from ._timers import Timers

__all__ = ["ClusterBroker"]

log = logging.getLogger("wshub")

Kind = Literal["subscriber", "commands"]
_KINDS: tuple[Kind, ...] = ("subscriber", "commands")
_Held = tuple[bytes, int, bool, bytes]  # a command waiting for its slot's master: (command, ticket, resend, channel)
_TOPOLOGY = "topology"  # the topology link's timer owner, and its name in logs and metrics
_PRESENCE = "presence"  # timer owner of the presence refresh
_REFRESH = 10.0  # seconds between topology refreshes while nothing suggests a change
_HISTORY_TICKETS = 1 << 60  # as in _redis_broker.py: far above the API's tickets; the first loads the library
_LOAD = _HISTORY_TICKETS
# Where the channel (or key) is in each routed command: PUBLISH/SPUBLISH ch ..., FCALL/FCALL_RO fn 1 ch ...,
# presence's EVALSHA sha 2 key ... and SADD/SREM key member
_CHANNEL_AT = {b"PUBLISH": 1, b"SPUBLISH": 1, b"FCALL": 3, b"FCALL_RO": 3, b"EVALSHA": 3, b"SADD": 1, b"SREM": 1}


class _Node:
    """One master: its two links, the channels homed on it, its probe."""

    __slots__ = ("address", "sub", "cmd", "links", "probe", "channels")

    def __init__(self, address: Address, sub: SubscriberSession, cmd: CommandSession, probe: Probe) -> None:
        self.address = address
        self.sub = sub
        self.cmd = cmd
        self.links: dict[Kind, int] = {}  # each kind's current link (dialling or open)
        self.probe = probe
        self.channels: set[bytes] = set()  # needed channels homed here (wanted on ``sub``)

    def session(self, kind: Kind) -> RedisSession:
        return self.sub if kind == "subscriber" else self.cmd


class ClusterBroker:
    """``Broker`` over a Redis Cluster found from ``redis.address``'s seed nodes."""

    def __init__(self, *, config: Config, seed: int, sink: list[Action], on_message: OnMessage,
                 on_confirmed: OnConfirmed, on_publisher_back: OnPublisherBack,
                 on_published: OnPublished | None = None, on_presence: OnPresence | None = None,
                 on_entry: OnEntry | None = None, on_history: OnHistory | None = None) -> None:
        """As ``RedisBroker``'s; ``redis.pubsub`` picks shard channels or classic ones."""
        self._config = config
        self._seed = seed
        self._sink = sink
        self._on_message = on_message
        self._on_confirmed = on_confirmed
        self._on_publisher_back = on_publisher_back
        self._on_published = on_published
        self._on_presence = on_presence
        self._on_entry = on_entry
        self._on_history = on_history
        self._sharded = config.redis_pubsub == "sharded"
        self._publish_verb = b"SPUBLISH" if self._sharded else b"PUBLISH"
        self._library = (library(size=config.history_size, ttl=config.history_ttl, sharded=self._sharded)
                         if config.history else b"")
        self._history_error = "" if config.history else "history.enabled is false"
        self._history_reads: dict[int, int] = {}  # internal ticket -> the caller's
        self._history_ticket = _HISTORY_TICKETS
        self._timeout = config.redis_timeout
        self._seeds: tuple[Address, ...] = config.redis_seeds
        self._topology = CommandSession(backoff=self._backoff(0), username=config.redis_username,
                                        password=config.redis_password, db=0, healthy_after=config.reconnect_max)
        self._topology_link = 0
        self._topology_at: Address = self._seeds[0]
        self._tried = 0  # topology dials since one answered: which candidate is next
        self._asking = False  # a CLUSTER SHARDS/SLOTS is in flight
        self._use_slots = False  # the nodes do not know CLUSTER SHARDS (before Redis 7)
        self._topology_error = ""
        self._map: SlotMap | None = None
        self._answered: SlotMap | None = None  # the last topology read, before any -MOVED amended ``_map``
        self._nodes: dict[Address, _Node] = {}
        self._next_seed = 3  # backoff seeds of the nodes' sessions
        self._link_of: dict[int, tuple[_Node, Kind]] = {}  # current node links; input for any other id is stale
        self._last_link = 0
        self._needed: set[bytes] = set()
        self._home: dict[bytes, Address] = {}  # needed channel -> the master it is wanted on
        self._last_home: dict[bytes, Address] = {}  # ... or was, before a move took it away (``moves``)
        self._patterns: set[bytes] = set()  # classic mode: PSUBSCRIBEd on slot 0's master
        self._pattern_home: Address | None = None
        self._pending: deque[tuple[bytes, int, bool, bytes]] = deque()  # (command, ticket, resend, channel)
        self._pending_bytes = 0
        self._held_slots: dict[int, int] = {}  # slot -> its commands in _pending: later ones wait behind them
        # A slot that left a master still owing answers to some of its commands: (that master, the slot's
        # commands it has redirected since, the slot's commands routed since). They wait, in that order,
        # until it has answered them all: a command -MOVED later must not land behind a newer one.
        self._moving: dict[int, tuple[Address, list[_Held], list[_Held]]] = {}
        self._link_errors: dict[str, str] = {}  # a link's name -> why it went down
        self._timers = Timers()
        self._warned_prefix = False
        self.now = 0.0
        self.reconnects = 0
        self.stalls = 0
        self.publish_errors = 0
        self.redirects = 0  # -MOVED/-ASK replies followed
        self.moves = 0  # needed channels moved to another master by a new topology
        self.refreshes = 0  # topologies read
        self._presence: RedisPresence | None = None
        if config.presence:
            self._presence = RedisPresence(channels=Channels(config.channel_prefix), hub_id=f"{seed:08x}",
                                           timeout=config.presence_timeout, command=self._presence_command,
                                           on_presence=self._presence_answer,
                                           publish=self._publish_verb.decode())

    def _backoff(self, offset: int) -> Backoff:
        return Backoff(minimum=self._config.reconnect_min, maximum=self._config.reconnect_max,
                       seed=self._seed + offset)

    # -- the hub's requests --------------------------------------------------------

    def start(self, now: float) -> None:
        """Dial the first seed node for the topology; the masters' links open once it is known."""
        self._dial_topology(now)
        if self._presence is not None:
            self._timers.schedule(_PRESENCE, now + self._config.presence_timeout / 3)

    def need(self, channel: bytes) -> None:
        """Subscribe ``channel`` on the master it belongs to (now, or once the topology names one)."""
        self._needed.add(channel)
        self._place(channel)

    def release(self, channel: bytes) -> None:
        """Unsubscribe ``channel`` where it is."""
        self._needed.discard(channel)
        self._last_home.pop(channel, None)
        home = self._home.pop(channel, None)
        node = self._node_at(home)
        if node is not None:
            node.channels.discard(channel)
            node.sub.unwant(channel)

    def need_prefix(self, prefix: bytes) -> None:
        """Classic mode: PSUBSCRIBE ``prefix*``; shard channels have no patterns (said once, in the log)."""
        if self._sharded:
            if not self._warned_prefix:
                self._warned_prefix = True
                log.warning("redis.pubsub is sharded: shard channels have no pattern subscription, so the event "
                            "stream gets no client-data or presence events (client-new and client-gone it gets); "
                            "use redis.pubsub: classic for them", extra={"event": "prefix_unsupported"})
            return
        pattern = _glob_literal(prefix) + b"*"
        self._patterns.add(pattern)
        if (node := self._node_at(self._pattern_home)) is not None:
            node.sub.want_pattern(pattern)

    def release_prefix(self, prefix: bytes) -> None:
        """PUNSUBSCRIBE ``prefix*`` (classic mode)."""
        pattern = _glob_literal(prefix) + b"*"
        self._patterns.discard(pattern)
        if (node := self._node_at(self._pattern_home)) is not None:
            node.sub.unwant_pattern(pattern)

    def is_confirmed(self, channel: bytes) -> bool:
        """The channel's master confirmed its latest subscription."""
        home = self._home.get(channel)
        node = self._node_at(home)
        return node is not None and node.sub.is_confirmed(channel)

    def publish(self, channel: bytes, payload: bytes, *, resend: bool = True, ticket: int = 0) -> None:
        """SPUBLISH (classic: PUBLISH) on the master of ``channel``'s slot, resent in order after a reconnect."""
        self._route(pack(self._publish_verb, channel, payload), ticket, resend, channel)

    def publish_history(self, channel: bytes, payload: bytes, *, message_id: bytes = b"", ticket: int = 0) -> None:
        """``FCALL wshub_publish`` on the stream's master; a plain publish without history."""
        if self._history_error:
            self.publish(channel, payload, ticket=ticket)
            return
        self._route(pack(*publish_args(channel, payload, message_id)), ticket, True, channel)

    def read_history(self, channel: bytes, after: str, count: int, ticket: int) -> None:
        """``FCALL_RO wshub_read`` on the stream's master; dropped, not resent, at a lost link."""
        if self._history_error:
            if self._on_history is not None:
                self._on_history(ticket, "", None, self._history_error)
            return
        self._history_ticket += 1
        self._history_reads[self._history_ticket] = ticket
        self._route(pack(*read_args(channel, after, count)), self._history_ticket, False, channel)

    @property
    def history_error(self) -> str:
        """"" while every master has the library (or is loading it); else why there is no history."""
        return self._history_error

    def presence_set(self, group: str, key: str, count: int) -> None:
        """Written at the next flush, coalesced per group, on the master of the group's presence keys."""
        if self._presence is not None:
            self._presence.set(group, key, count)

    def presence_query(self, group: str, ticket: int) -> None:
        """Every live hub's keys in ``group``, from the master of its presence keys."""
        if self._presence is None:
            self._presence_answer(ticket, None, "presence is off")
        else:
            self._presence.query(group, ticket)

    def _presence_answer(self, ticket: int, counts: dict[str, int] | None, error: str) -> None:
        if self._on_presence is not None:
            self._on_presence(ticket, counts, error)

    def _presence_command(self, *args: bytes, resend: bool = True, ticket: int = 0) -> None:
        """Presence's commands: SCRIPT LOAD on every master, the others on the master of their key's slot."""
        cmd = pack(*args)
        if args[0] == b"SCRIPT":
            for node in self._nodes.values():
                node.cmd.put(cmd, resend=resend, ticket=ticket)
            return
        self._route(cmd, ticket, resend, args[_CHANNEL_AT[args[0]]])

    # -- link inputs ---------------------------------------------------------------------

    def link_opened(self, link: int, now: float) -> None:
        """TCP is up: send the link's prelude."""
        if link == self._topology_link and self._topology.state is RedisState.CONNECTING:
            self.now = now
            self._sink.append(SendToLink(link=link, data=self._topology.connected(now)))
            self._timers.schedule(_TOPOLOGY, self._topology.deadline(self._timeout))
            return
        found = self._link_of.get(link)
        if found is None:
            return
        node, kind = found
        session = node.session(kind)
        if session.state is not RedisState.CONNECTING:
            return
        self.now = now
        self._sink.append(SendToLink(link=link, data=session.connected(now)))
        if kind == "subscriber":
            for channel in sorted(node.channels):
                node.sub.want(channel)
            if node.address == self._pattern_home:
                for pattern in sorted(self._patterns):
                    node.sub.want_pattern(pattern)
        self._timers.schedule((node.address, kind), session.deadline(self._timeout))

    def link_lost(self, link: int, now: float, error: str = "") -> None:
        """A link dropped or could not be opened (idempotent); the topology is asked again."""
        if link == self._topology_link and self._topology.state is not RedisState.DOWN:
            self.now = now
            self._drop_topology(now, _why(self._topology.state, error), close=False)
            return
        found = self._link_of.get(link)
        if found is None:
            return
        self.now = now
        node, kind = found
        self._drop(node, kind, now, _why(node.session(kind).state, error), close=False)

    def link_data(self, link: int, data: bytes, now: float) -> None:
        """Replies and pushes: the topology's answer, confirmations, messages, redirections."""
        if link == self._topology_link:
            self.now = now
            self._topology_data(data, now)
            return
        found = self._link_of.get(link)
        if found is None:
            return
        self.now = now
        node, kind = found
        session = node.session(kind)
        state = session.state
        if state is not RedisState.READY and state is not RedisState.HANDSHAKE:
            return
        if kind == "subscriber":
            self._subscriber_data(node, data, now)
        else:
            for error in node.cmd.feed(data, now):
                self._refused(str(error))
            self._acknowledged(node)
            self._redirected(node, now)
            self._release_moved(node)
        if session.broken:
            self._drop(node, kind, now, session.broken, close=True)
            return
        if state is RedisState.HANDSHAKE and session.state is RedisState.READY:
            self._link_errors.pop(_name(kind, node.address), None)
            log.info("redis %s link up (%s)", kind, host_port(*node.address),
                     extra={"event": "link_up", "link": kind})
            if kind == "commands":
                if node.cmd.dropped:
                    node.cmd.dropped = False
                    self._on_publisher_back()
                if self._library:
                    node.cmd.command(b"FUNCTION", b"LOAD", b"REPLACE", self._library, resend=False, ticket=_LOAD)
                if self._presence is not None:
                    self._presence.restore()  # this master may be a promoted replica, or restarted empty
            elif node.probe.enabled:
                self._probe_up(node, link, now)
            self._arm_probe(node, now)
        self._timers.schedule((node.address, kind), session.deadline(self._timeout))

    def _subscriber_data(self, node: _Node, data: bytes, now: float) -> None:
        probe = node.probe
        for event in node.sub.feed(data, now):
            if event.channel == probe.channel and probe.channel:
                if isinstance(event, Unsubscribed):  # the probe's slot moved away: a channel in one still here
                    self._probe_up(node, node.links["subscriber"], now)
                    continue
                if isinstance(event, Confirmed):
                    probe.confirmed = True
                elif not probe.received(event.payload):
                    continue
                self._arm_probe(node, now)
            elif isinstance(event, Confirmed):
                self._on_confirmed(event.channel)
            elif isinstance(event, Unsubscribed):
                # Its slot left this master (a migration, a failover): find where it went.
                if self._home.get(event.channel) == node.address:
                    del self._home[event.channel]
                    node.channels.discard(event.channel)
                self._refresh(now)
            elif event.payload[:7] == MAGIC and self._on_entry is not None \
                    and (entry := parse_envelope(event.payload)) is not None:
                self._on_entry(event.channel, entry[0], entry[1], entry[2])
            else:
                self._on_message(event.channel, event.payload)

    def handle_timer(self, now: float) -> None:
        """Redials, timeouts, idle pings, probes, the periodic topology refresh."""
        for owner in self._timers.pop_due(now):
            if owner == _TOPOLOGY:
                self._topology_timer(now)
                continue
            if owner == _PRESENCE:
                assert self._presence is not None
                if self.can_publish:
                    self._presence.refresh()  # else restore() writes everything as the masters come back
                self._timers.schedule(_PRESENCE, now + self._config.presence_timeout / 3)
                continue
            assert isinstance(owner, tuple)
            address, kind = owner
            node = self._nodes.get(address)
            if node is None:
                continue  # a master that left the topology
            if kind == "probe":
                self._probe_timer(node, now)
            else:
                self._link_timer(node, kind, now)

    def next_deadline(self) -> float | None:
        """The links' earliest deadline."""
        return self._timers.next_deadline()

    def flush(self, now: float) -> None:
        """What each link owes, one write per link."""
        if self._presence is not None and self.can_publish:
            self._presence.flush()  # else kept, and written whole by restore() when the masters are back
        if self._topology.state is RedisState.READY:
            data = self._topology.take_commands(now)
            if data:
                self._sink.append(SendToLink(link=self._topology_link, data=data))
                self._timers.schedule(_TOPOLOGY, self._topology.deadline(self._timeout))
        for node in self._nodes.values():
            pairs: tuple[tuple[Kind, bytes], ...] = (("subscriber", node.sub.take_commands(now)),
                                                     ("commands", node.cmd.take_commands(now)))
            for kind, data in pairs:
                if data:
                    self._sink.append(SendToLink(link=node.links[kind], data=data))
                    self._timers.schedule((node.address, kind), node.session(kind).deadline(self._timeout))

    # -- queries ------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """The topology covers every slot, every master's links are up, every needed channel is confirmed."""
        if self._map is None or not self._map.complete() or self._pending or self._moving:
            return False
        for node in self._nodes.values():
            if node.sub.state is not RedisState.READY or node.cmd.state is not RedisState.READY:
                return False
            if not node.sub.patterns_confirmed():
                return False
        return all(self.is_confirmed(channel) for channel in self._needed)

    @property
    def can_publish(self) -> bool:
        """Every slot has a master whose command link is up."""
        return self._map is not None and self._map.complete() and bool(self._nodes) and all(
            node.cmd.state is RedisState.READY for node in self._nodes.values())

    def not_ready_reason(self) -> str:
        """The topology's trouble, or the first link that is not up, or what is not confirmed yet."""
        if self._map is None:
            error = self._link_errors.get(_TOPOLOGY) or self._topology_error
            return "no cluster topology yet" + (f" (last error: {error})" if error else "")
        if not self._map.complete():
            return "the cluster topology leaves slots without a master"
        for node in self._nodes.values():
            for kind in _KINDS:
                session = node.session(kind)
                if session.state is not RedisState.READY:
                    error = self._link_errors.get(_name(kind, node.address), "")
                    return (f"redis {kind} link to {host_port(*node.address)} {session.state.value}"
                            + (f" (last error: {error})" if error else ""))
        if self._pending or self._moving:
            return f"{len(self._pending) + len(self._moving_commands())} commands waiting for their slot's master"
        return "subscriptions not confirmed yet"

    @property
    def idle(self) -> bool:
        """Nothing published is waiting for a node."""
        return not self._pending and not self._moving and all(node.cmd.idle for node in self._nodes.values())

    @property
    def buffered_bytes(self) -> int:
        """Bytes of commands not yet answered, on every master and waiting for one."""
        return self._pending_bytes + sum(len(held[0]) for held in self._moving_commands()) + sum(
            node.cmd.buffered_bytes for node in self._nodes.values())

    def pending_count(self) -> int:
        """Commands not yet answered."""
        return len(self._pending) + len(self._moving_commands()) + sum(len(node.cmd) for node in self._nodes.values())

    def subscribed_channels(self) -> set[bytes]:
        """Channels subscribed on some master (the probes' left out)."""
        out: set[bytes] = set()
        for node in self._nodes.values():
            out |= node.sub.subscribed_channels() - {node.probe.channel}
        return out

    def channels_by_node(self) -> dict[Address, set[bytes]]:
        """Each master's subscribed channels as this broker sees them (tests compare PUBSUB SHARDCHANNELS)."""
        return {a: n.sub.subscribed_channels() - {n.probe.channel} for a, n in self._nodes.items()}

    def link_names(self) -> dict[str, RedisState]:
        """Every link by its name (``topology``, ``subscriber HOST:PORT``, ``commands HOST:PORT``)."""
        states = {_TOPOLOGY: self._topology.state}
        for address, node in sorted(self._nodes.items()):
            for kind in _KINDS:
                states[_name(kind, address)] = node.session(kind).state
        return states

    def samples(self) -> list[Sample]:
        """The Redis metrics (wshub_redis_*, wshub_subscriptions, wshub_cluster_*)."""
        def up(name: str) -> str:
            kind, _, node = name.partition(" ")
            return f'{{link="{kind}",node="{node}"}}' if node else f'{{link="{kind}"}}'
        return [
            ("wshub_subscriptions", "gauge", "Redis channels subscribed.",
             [("", len(self.subscribed_channels()))]),
            ("wshub_redis_up", "gauge", "1 if the Redis link is ready.",
             [(up(name), int(state is RedisState.READY)) for name, state in self.link_names().items()]),
            ("wshub_redis_reconnects_total", "counter", "Redis links lost after being ready.",
             [("", self.reconnects)]),
            ("wshub_redis_stalls_total", "counter",
             "Subscriber links dropped because the probe published to them did not come back in time.",
             [("", self.stalls)]),
            ("wshub_redis_buffered_commands", "gauge", "Client messages and notices waiting for Redis.",
             [("", self.pending_count())]),
            ("wshub_redis_buffered_bytes", "gauge", "Bytes of those commands.", [("", self.buffered_bytes)]),
            ("wshub_cluster_masters", "gauge", "Masters in the cluster topology.", [("", len(self._nodes))]),
            ("wshub_cluster_refreshes_total", "counter", "Cluster topologies read.", [("", self.refreshes)]),
            ("wshub_cluster_redirects_total", "counter", "-MOVED and -ASK replies followed.",
             [("", self.redirects)]),
            ("wshub_cluster_moves_total", "counter", "Subscriptions moved to another master by a new topology.",
             [("", self.moves)]),
        ]

    # -- routing --------------------------------------------------------------------------

    def _node_at(self, address: Address | None) -> _Node | None:
        return self._nodes.get(address) if address is not None else None

    def _home_of(self, channel: bytes) -> Address | None:
        if self._map is None:
            return None
        return self._map.owner(key_slot(channel) if self._sharded else 0)

    def _place(self, channel: bytes) -> None:
        """Want a needed channel on its home (moving it if the topology changed)."""
        home = self._home_of(channel)
        where = self._home.get(channel)
        if where == home and home is not None:
            return
        if where is not None:
            old = self._nodes.get(where)
            if old is not None:
                old.channels.discard(channel)
                old.sub.unwant(channel)
            del self._home[channel]
        node = self._node_at(home)
        if node is not None:
            if self._last_home.get(channel, node.address) != node.address:
                self.moves += 1
            self._home[channel] = self._last_home[channel] = node.address
            node.channels.add(channel)
            node.sub.want(channel)

    def _route(self, cmd: bytes, ticket: int, resend: bool, channel: bytes) -> None:
        """Queue ``cmd`` on the master of ``channel``'s slot, or hold it until there is one."""
        slot = key_slot(channel)
        moving = self._moving.get(slot)
        if moving is not None:
            moving[2].append((cmd, ticket, resend, channel))
            return
        node = self._node_at(self._map.owner(slot) if self._map is not None else None)
        if node is None or self._held_slots.get(slot):  # behind what waits already for this slot: order holds
            self._hold(cmd, ticket, resend, channel)
            return
        node.cmd.put(cmd, resend=resend, ticket=ticket)

    def _hold(self, cmd: bytes, ticket: int, resend: bool, channel: bytes) -> None:
        """Keep ``cmd`` until its slot has a master (other slots' commands go on)."""
        self._pending.append((cmd, ticket, resend, channel))
        self._pending_bytes += len(cmd)
        slot = key_slot(channel)
        self._held_slots[slot] = self._held_slots.get(slot, 0) + 1

    def _moved_away(self, old: _Node, left: set[int] | None = None) -> None:
        """Slots that left ``old`` (``None``: as the map says) while it owes answers to some of their commands."""
        for slot in sorted(_slots_of(old.cmd.outstanding())):
            if slot not in self._moving and ((slot in left) if left is not None else
                                             self._map is not None and self._map.owner(slot) != old.address):
                self._moving[slot] = (old.address, [], [])

    def _release_moved(self, node: _Node) -> None:
        """Once ``node`` owes no answer for a slot that left it: that slot's waiting commands, in order."""
        if not self._moving:
            return
        owed = _slots_of(node.cmd.outstanding())
        for slot in sorted(self._moving):
            old, redirected, routed = self._moving[slot]
            if old == node.address and slot not in owed:
                del self._moving[slot]
                for held in (*redirected, *routed):
                    self._route(*held)

    def _moving_commands(self) -> list[_Held]:
        return [held for _, redirected, routed in self._moving.values() for held in (*redirected, *routed)]

    def _drain_pending(self) -> None:
        """Send what waited for a master, in order, as far as the topology allows."""
        pending = self._pending
        self._pending = deque()
        self._pending_bytes = 0
        self._held_slots.clear()
        while pending:
            cmd, ticket, resend, channel = pending.popleft()
            self._route(cmd, ticket, resend, channel)

    def _redirected(self, node: _Node, now: float) -> None:
        """Commands a node answered -MOVED/-ASK: sent where it says (ASK: this once, behind ASKING)."""
        redirected = node.cmd.redirected
        if not redirected:
            return
        node.cmd.redirected = []
        moved = False
        for cmd, ticket, resend, error in redirected:
            self.redirects += 1
            target = parse_redirect(error)
            channel = _channel_of(cmd)
            if target is not None and not target.ask and self._map is not None:
                self._map.assign(target.slot, target.address)  # as Redis says, until a topology says otherwise
                self._moved_away(node, {target.slot})
            moving = self._moving.get(key_slot(channel))
            if moving is not None and moving[0] == node.address and not (target is not None and target.ask):
                moved = True
                moving[1].append((cmd, ticket, resend, channel))  # after the ones it redirected before
                continue
            if target is not None and target.address in self._nodes and not self._held_slots.get(key_slot(channel)):
                there = self._nodes[target.address].cmd
                if target.ask:
                    there.put(pack(b"ASKING"), resend=False)
                else:
                    moved = True  # the topology changed: read it
                there.put(cmd, resend=resend, ticket=ticket)
                continue
            moved = True
            self._hold(cmd, ticket, resend, channel)  # until the new topology names the owner
        if moved:
            self._refresh(now)

    # -- topology --------------------------------------------------------------------------

    def _candidates(self) -> list[Address]:
        """Where to ask for the topology: the known masters, then the seeds."""
        known = list(self._map.masters) if self._map is not None else []
        return known + [seed for seed in self._seeds if seed not in known]

    def _dial_topology(self, now: float) -> None:
        candidates = self._candidates()
        self._topology_at = candidates[self._tried % len(candidates)]
        self._tried += 1
        self._topology.connecting(now)
        self._last_link += 1
        self._topology_link = self._last_link
        self._asking = False
        self._sink.append(OpenLink(link=self._topology_link, host=self._topology_at[0], port=self._topology_at[1],
                                   tls=self._config.redis_tls))
        self._timers.schedule(_TOPOLOGY, self._topology.deadline(self._timeout))

    def _refresh(self, now: float) -> None:
        """Ask for the topology now (once: an answer owed already will do)."""
        if self._topology.state is RedisState.READY and not self._asking:
            self._asking = True
            verb = b"SLOTS" if self._use_slots else b"SHARDS"
            self._topology.command(b"CLUSTER", verb, resend=False, ticket=1)
        elif self._topology.state is RedisState.DOWN and self._topology.connect_at > now:
            self._topology.connect_at = now  # a redial that waits for its backoff: soon, a node moved
            self._timers.schedule(_TOPOLOGY, now)

    def _topology_data(self, data: bytes, now: float) -> None:
        topology = self._topology
        was = topology.state
        for refused in topology.feed(data, now):
            self._topology_error = str(refused)
        if topology.broken:
            self._drop_topology(now, topology.broken, close=True)
            return
        if was is RedisState.HANDSHAKE and topology.state is RedisState.READY:
            self._link_errors.pop(_TOPOLOGY, None)
            self._refresh(now)
        answers = topology.acknowledged
        topology.acknowledged = []
        for _ticket, error, reply in answers:
            self._asking = False
            if error and not self._use_slots and "unknown subcommand" in error.lower():
                self._use_slots = True
                self._refresh(now)
                continue
            found = error or (parse_slots(reply) if self._use_slots else parse_shards(reply))
            if isinstance(found, str):
                if found != self._topology_error:
                    log.warning("redis cluster topology from %s: %s", host_port(*self._topology_at), found,
                                extra={"event": "topology_error", "reason": found})
                self._topology_error = found
                self._drop_topology(now, found, close=True)
                return
            self._topology_error = ""
            self._tried = 0
            self.refreshes += 1
            self._apply(found, now)
        self._timers.schedule(_TOPOLOGY, self._topology_next(now))

    def _topology_next(self, now: float) -> float:
        """The topology link's next deadline: a reply owed, else the next refresh (sooner while not whole)."""
        session = self._topology
        if session.waiting_since is not None or session.state is not RedisState.READY:
            return session.deadline(self._timeout)
        settled = self._map is not None and self._map.complete() and not self._pending and not self._moving and all(
            n.sub.state is RedisState.READY and n.cmd.state is RedisState.READY for n in self._nodes.values())
        return now + (_REFRESH if settled else max(self._config.reconnect_min, 0.5))

    def _apply(self, found: SlotMap, now: float) -> None:
        """A topology: open links to new masters, retire old ones, move channels, send what waited."""
        if found == self._answered:
            # Nothing new (a node whose view lags a failover, say): what a -MOVED told us stands, and what
            # it sent to a master not in the map keeps waiting, instead of bouncing between the two at once.
            self._drain_pending()
            return
        masters = set(found.masters)
        before = set(self._nodes)
        if self._map is not None or before:
            log.info("redis cluster topology: %d masters (%s)%s", len(masters),
                     ", ".join(host_port(*a) for a in sorted(masters)),
                     "" if masters == before else " (was " + ", ".join(host_port(*a) for a in sorted(before)) + ")",
                     extra={"event": "topology"})
        else:
            log.info("redis cluster topology: %d masters (%s)", len(masters),
                     ", ".join(host_port(*a) for a in sorted(masters)), extra={"event": "topology"})
        self._answered = found
        self._map = found = found.copy()
        handed: list[tuple[bytes, int, bool]] = []
        dropped = False  # announcements lost with a link (volatile): the hub makes them again
        late: list[_Held] = []  # commands routed while their slot waited for a master retired now
        for address in sorted(before - masters):
            for slot in sorted(self._moving):
                old, redirected, routed = self._moving[slot]
                if old == address:  # what it redirected, then what it still owes, then what came since
                    del self._moving[slot]
                    handed += [(cmd, ticket, resend) for cmd, ticket, resend, _ in redirected]
                    late += routed
            retired = self._nodes[address]
            handed += self._retire(retired)
            dropped |= retired.cmd.dropped  # its link dropped them, and it will not come back to say so
        for address in sorted(masters - before):
            self._open_node(address, now)
        for node in self._nodes.values():
            self._moved_away(node)
        self._pattern_home = found.owner(0)
        for node in self._nodes.values():  # classic: the patterns live with slot 0's master alone
            for pattern in node.sub.subscribed_patterns():
                if node.address != self._pattern_home:
                    node.sub.unwant_pattern(pattern)
            if node.address == self._pattern_home:
                for pattern in sorted(self._patterns):
                    node.sub.want_pattern(pattern)
        for channel in sorted(self._needed):
            self._place(channel)
        first: deque[tuple[bytes, int, bool, bytes]] = deque()
        for cmd, ticket, resend in handed:  # before what waits: they were sent first
            if not resend:
                dropped = True
                self._answer_lost(ticket)
                continue
            first.append((cmd, ticket, resend, _channel_of(cmd)))
        first.extend(self._pending)
        first.extend(late)
        self._pending = first
        self._drain_pending()
        if dropped:
            self._on_publisher_back()

    def _open_node(self, address: Address, now: float) -> None:
        config = self._config
        self._next_seed += 2
        probe = Probe(prefix=config.channel_prefix.encode(), interval=config.redis_probe_interval)
        probe.start(seed=self._seed + self._next_seed, now=now)
        node = _Node(address,
                     SubscriberSession(backoff=self._backoff(self._next_seed), username=config.redis_username,
                                       password=config.redis_password, healthy_after=config.reconnect_max,
                                       sharded=self._sharded),
                     CommandSession(backoff=self._backoff(self._next_seed + 1), username=config.redis_username,
                                    password=config.redis_password, db=0, healthy_after=config.reconnect_max),
                     probe)
        node.cmd.redirected = []
        self._nodes[address] = node
        self._dial(node, "subscriber", now)
        self._dial(node, "commands", now)

    def _retire(self, node: _Node) -> list[tuple[bytes, int, bool]]:
        """A master that left the topology: close its links; its unanswered commands, for their new masters."""
        del self._nodes[node.address]
        for kind, link in node.links.items():
            del self._link_of[link]
            self._sink.append(CloseLink(link=link))
            self._timers.cancel((node.address, kind))
        self._timers.cancel((node.address, "probe"))
        node.links.clear()
        for channel in node.channels:
            if self._home.get(channel) == node.address:
                del self._home[channel]
        self._acknowledged(node)
        return node.cmd.take_outstanding()

    def _answer_lost(self, ticket: int) -> None:
        if ticket >= _HISTORY_TICKETS:
            self._history_reply(ticket, "link lost", None)
        elif ticket < 0:
            self._presence_reply(ticket, "link lost", None)
        elif ticket > 0 and self._on_published is not None:
            self._on_published(ticket, "link lost", "")

    def _drop_topology(self, now: float, why: str, *, close: bool) -> None:
        if close:
            self._sink.append(CloseLink(link=self._topology_link))
        self._topology_link = 0
        self._asking = False
        self._topology.take_outstanding()
        self._topology.acknowledged = []
        self._topology.lost(now)
        self._link_errors[_TOPOLOGY] = f"{host_port(*self._topology_at)}: {why}"
        if self._tried < len(self._candidates()):  # the next candidate at once; the backoff spaces whole rounds
            self._topology.connect_at = now
        else:
            self._tried = 0
            log.warning("redis cluster: no node answered CLUSTER SHARDS (last: %s); retrying in %.2fs",
                        self._link_errors[_TOPOLOGY], self._topology.connect_at - now,
                        extra={"event": "link_down", "link": _TOPOLOGY, "reason": why})
        self._timers.schedule(_TOPOLOGY, self._topology.connect_at)

    def _topology_timer(self, now: float) -> None:
        session = self._topology
        if session.state is RedisState.DOWN:
            if now >= session.connect_at:
                self._dial_topology(now)
            else:
                self._timers.schedule(_TOPOLOGY, session.connect_at)
            return
        if why := session.timed_out(now, self._timeout):
            self._drop_topology(now, why, close=True)
            return
        if session.state is RedisState.READY and session.waiting_since is None:
            self._refresh(now)
        self._timers.schedule(_TOPOLOGY, self._topology_next(now))

    # -- the masters' links ---------------------------------------------------------------

    def _dial(self, node: _Node, kind: Kind, now: float) -> None:
        session = node.session(kind)
        session.connecting(now)
        self._last_link += 1
        link = self._last_link
        node.links[kind] = link
        self._link_of[link] = (node, kind)
        self._sink.append(OpenLink(link=link, host=node.address[0], port=node.address[1],
                                   tls=self._config.redis_tls))
        self._timers.schedule((node.address, kind), session.deadline(self._timeout))

    def _drop(self, node: _Node, kind: Kind, now: float, why: str, *, close: bool) -> None:
        link = node.links.pop(kind)
        del self._link_of[link]
        session = node.session(kind)
        was_ready = session.state is RedisState.READY
        if close:
            self._sink.append(CloseLink(link=link))
        session.lost(now)
        if was_ready:
            self.reconnects += 1
        if kind == "subscriber":
            node.probe.link_down()
            self._timers.cancel((node.address, "probe"))
        else:
            node.probe.abandon()
            self._acknowledged(node)
            self._release_moved(node)  # a lost link drops what it must not resend
        self._link_errors[_name(kind, node.address)] = why
        log.warning("redis %s link to %s: %s; retrying in %.2fs", kind, host_port(*node.address), why,
                    session.connect_at - now, extra={"event": "link_down", "link": kind, "reason": why})
        self._timers.schedule((node.address, kind), session.connect_at)
        self._refresh(now)  # a failover, perhaps: the topology says whether the master is still one

    def _link_timer(self, node: _Node, kind: Kind, now: float) -> None:
        session = node.session(kind)
        timeout = self._timeout
        if session.state is RedisState.DOWN:
            if now >= session.connect_at:
                self._dial(node, kind, now)
                return
        elif why := session.timed_out(now, timeout):
            self._drop(node, kind, now, why, close=True)
            return
        elif session.ping_due(now, timeout):
            if kind == "commands":
                node.cmd.ping(now)
                return  # flush() sends it and re-arms this link's timer
            self._sink.append(SendToLink(link=node.links[kind], data=node.sub.ping(now)))
        self._timers.schedule((node.address, kind), session.deadline(timeout))

    def _refused(self, error: str) -> None:
        self.publish_errors += 1
        log.warning("redis refused a PUBLISH: %s", error, extra={"event": "publish_refused", "reason": error})

    def _acknowledged(self, node: _Node) -> None:
        """Each answered (or dropped) ticket to its owner: the library's and reads', the probe's, the hub's."""
        if not node.cmd.acknowledged:
            return
        acknowledged = node.cmd.acknowledged
        node.cmd.acknowledged = []
        for ticket, error, reply in acknowledged:
            if ticket == _LOAD:
                if error.startswith("READONLY"):
                    # A replica our map still calls a master (a failover it has not caught up with): not a
                    # refusal of history; the master loads the library when its command link comes up.
                    self._refresh(self.now)
                elif error and error != "link lost" and not self._history_error:
                    self._history_error = f"Redis refused FUNCTION LOAD on {host_port(*node.address)}: {error}"
                    log.warning("history is off: %s (group messages are delivered, but not kept, repaired or "
                                "replayed)", self._history_error, extra={"event": "history_off", "reason": error})
            elif ticket > _HISTORY_TICKETS:
                if "Function not found" in error and self._library:
                    node.cmd.command(b"FUNCTION", b"LOAD", b"REPLACE", self._library, resend=False, ticket=_LOAD)
                self._history_reply(ticket, error, reply)
            elif node.probe.owns(ticket):
                if not (reply is None and error == "link lost"):
                    node.probe.acknowledged(ticket)
            elif ticket < 0:
                self._presence_reply(ticket, error, reply)
            elif self._on_published is not None and ticket > 0:
                if error and error != "link lost":
                    self._refused(error)
                self._on_published(ticket, error, reply.decode("ascii", "replace") if isinstance(reply, bytes) else "")

    def _presence_reply(self, ticket: int, error: str, reply: object) -> None:
        if self._presence is not None and self._presence.owns(ticket):
            if reply is None and error == "link lost":
                self._presence.dropped(ticket)
            else:
                self._presence.reply(ticket, error, reply)

    def _history_reply(self, ticket: int, error: str, reply: object) -> None:
        caller = self._history_reads.pop(ticket, 0)
        if self._on_history is not None and caller:
            answer_read(self._on_history, caller, error, reply)

    # -- probes -------------------------------------------------------------------------------

    def _probe_up(self, node: _Node, link: int, now: float) -> None:
        """Subscribe the node's probe on a channel in one of its slots."""
        old = node.probe.channel
        if old:
            node.sub.unwant(old)
        tag = b""
        if self._sharded and self._map is not None:
            for i in range(4096):  # a few tries find a slot of this master (1 in masters on average)
                if self._map.owner(key_slot(b"%d" % i)) == node.address:
                    tag = b"{%d}" % i
                    break
        node.sub.want(node.probe.link_up(link, now, tag))

    def _arm_probe(self, node: _Node, now: float) -> None:
        probe = node.probe
        if not (probe.channel and probe.confirmed and node.sub.state is RedisState.READY
                and node.cmd.state is RedisState.READY):
            return
        if probe.sent_at is None and now >= probe.next_at:
            payload, ticket = probe.send(now)
            node.cmd.command(self._publish_verb, probe.channel, payload, resend=False, ticket=ticket)
        self._timers.schedule((node.address, "probe"), probe.deadline())

    def _probe_timer(self, node: _Node, now: float) -> None:
        probe = node.probe
        sent_at = probe.sent_at
        if sent_at is None or now < sent_at + probe.interval or node.cmd.state is not RedisState.READY:
            self._arm_probe(node, now)
            return
        self.stalls += 1
        why = (f"stalled: the probe published {now - sent_at:g}s ago did not come back"
               + ("" if probe.answered else " (nor did the answer to its PUBLISH)"))
        self._drop(node, "subscriber", now, why, close=True)


def _name(kind: str, address: Address) -> str:
    return f"{kind} {host_port(*address)}"


def _why(state: RedisState, error: str) -> str:
    if state is RedisState.CONNECTING:
        return f"connect failed: {error or 'refused'}"
    if state is RedisState.HANDSHAKE:
        return f"closed before answering the handshake{': ' + error if error else ''}"
    return f"connection lost: {error or 'closed by the server'}"


def _slots_of(commands: list[bytes]) -> set[int]:
    """The slots of the routed commands among ``commands``."""
    return {key_slot(channel) for cmd in commands if (channel := _channel_of(cmd))}


def _channel_of(cmd: bytes) -> bytes:
    """The channel (or stream key) a routed command is for, read back from its RESP."""
    reader = hiredis.Reader()
    reader.feed(cmd)
    args: object = reader.gets()
    if isinstance(args, list) and args and isinstance(args[0], bytes):
        at = _CHANNEL_AT.get(args[0].upper())
        value: object = args[at] if at is not None and len(args) > at else None
        if isinstance(value, bytes):
            return value
    return b""
