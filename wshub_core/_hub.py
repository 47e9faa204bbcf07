"""The hub: where the client table, routing and the broker meet, and little else.

A client message goes to the broker (``publish``); a broker delivery goes to
routing (who are the members?), then the encoder (once), then the client
table; a join or leave changes routing, and routing's change of the needed
set goes to the broker (``need`` / ``release``).

Rules:
1. Every public method takes ``now`` and changes state; the shell then calls
   ``actions()`` and arms one timer at ``next_deadline()``.
2. Output is coalesced (see ``ClientTable``): bytes for one socket since the
   last ``actions()`` go out as one ``SendToClient``, Redis commands as one
   ``SendToLink`` per link (pipelined).
3. A group message is encoded into a frame once; the same bytes object is
   queued to every member.
4. Nothing a client or Redis sends raises out of here.
"""

from __future__ import annotations

import base64
import json
import logging
from collections import deque
from collections.abc import Collection

from wsproto.frame_protocol import FrameProtocol

from ._actions import (
    Action,
    StopListening,
    Stopped,
)
from ._api import Api
from ._auth import token_verifier
from ._broker import Broker
from ._channels import Channels
from ._client import ClientConnection, ClientState, CloseCode, HttpBody, HttpRequest, MessageReceived, Outcome
from ._clients import ClientTable, Pause
from ._cluster_broker import ClusterBroker
from ._config import Config
from ._deflate import Compressor
from ._history import History
from ._http import Admin, Answer, ApiCall, RouteContext, admin_answer, route
from ._logs import fingerprint
from ._memory_broker import MemoryBroker
from ._metrics import Sample, Stats, render
from ._presence import Presence
from ._redis import RedisState
from ._redis_broker import RedisBroker, RedisLink
from ._redis_history import READ_PAGE
from ._routing import Routing, parse_groups
from ._status import LAST_CLOSES, Close
from ._status import status as build_status
from ._timers import Timers

__all__ = ["Hub"]

log = logging.getLogger("wshub")

_ENCODER = FrameProtocol(client=False, extensions=[])  # server frames are unmasked: same bytes for all
_SHUTDOWN = "shutdown"  # timer owner for the shutdown deadline
_EXPIRY = "exp"  # (_EXPIRY, conn): timer owner for the token expiry of a connection


def _envelope(group: str | None, offset: str | None, payload: bytes) -> bytes:
    """The JSON a member with recover=1 gets for a message (docs/protocol.md, "Resume"): built once per message."""
    fields: dict[str, object] = {} if group is None else {"group": group}
    if offset is not None:
        fields["offset"] = offset
    try:
        fields["data"], fields["binary"] = payload.decode("utf-8"), False
    except UnicodeDecodeError:
        fields["data"], fields["binary"] = base64.b64encode(payload).decode(), True
    return json.dumps(fields, ensure_ascii=False).encode()


def encode_message(payload: bytes) -> bytes:
    """One WebSocket frame: text if the payload is valid UTF-8, else binary."""
    try:
        return bytes(_ENCODER.send_data(payload.decode("utf-8"), fin=True))
    except UnicodeDecodeError:
        return bytes(_ENCODER.send_data(payload, fin=True))


class _Member:
    """Hub-side facts about an upgraded connection."""

    __slots__ = ("key", "data_channel", "joined_at", "has_groups", "announced", "fp", "messages", "bytes",
                 "filled_at", "deflate", "envelopes", "since")

    def __init__(self, key: str, data_channel: bytes, joined_at: float) -> None:
        self.key = key
        self.data_channel = data_channel
        self.joined_at = joined_at  # upgrade time: webSocket.groupsTimeout counts from here
        self.has_groups = False
        self.announced = False  # client-new went out for it (a token's groups do not make it unnecessary)
        self.fp: str | None = None  # the key's fingerprint, computed the first time a line names it
        # Token buckets of webSocket.maxMessagesPerSecond / maxBytesPerSecond: what is left, refilled from filled_at.
        self.messages = 0.0
        self.bytes = 0.0
        self.filled_at = joined_at
        self.deflate: int | None = None  # permessage-deflate's server window, if negotiated
        self.envelopes = False  # recover=1: group messages as JSON envelopes with their offsets
        self.since: dict[str, str] = {}  # since=: group -> offset, until the group is joined and caught up from


class Hub:
    """The WS-Hub state machine. Construct once per process (or per worker)."""

    def __init__(self, *, config: Config, seed: int = 0, log_name: str = "") -> None:
        """``log_name`` (a worker's name, e.g. ``w2``) labels client ids in logs: ``w2-17``."""
        self._actions: list[Action] = []
        self._clients = ClientTable(
            sink=self._actions,
            on_outcomes=self._handle_outcomes,
            on_left=self._on_left,
            on_kept_alive=self._on_kept_alive,
            max_header_size=config.max_header_size,
            max_message_size=config.max_message_size,
            max_outbound_buffer=config.max_outbound_buffer,
            handshake_timeout=config.handshake_timeout,
            write_wait=config.write_wait,
            pong_wait=config.pong_wait,
            compression=config.compression,
        )
        self._compressor = Compressor(threshold=config.compression_threshold) if config.compression else None
        self._timers = Timers()  # the hub's own deadlines: Redis links, groups timeouts, shutdown
        self._now = 0.0  # time of the latest Redis or shutdown input (the table keeps the clients')
        self._wall_offset = 0.0  # wall-clock time minus now (``clock``): token exp and nbf are wall-clock times
        self._verifier = token_verifier(config)
        self._limits = bool(config.max_messages_per_second or config.max_bytes_per_second)
        # The shell's client inputs go straight to the table (docs/architecture.md, "Inputs").
        self.client_opened = self._clients.opened
        self.client_data = self._clients.data
        self.client_eof = self._clients.eof
        self.client_lost = self._clients.lost
        self.client_write_paused = self._clients.write_paused
        self.client_write_resumed = self._clients.write_resumed
        self._stopping = False
        self._stopped = False
        self.config = config
        self.stats = Stats()
        self._debug = log.isEnabledFor(logging.DEBUG)  # per-message logs cost nothing unless asked for
        self._info = log.isEnabledFor(logging.INFO)  # nor per-connect ones (a fingerprint is a SHA-256)
        self._conn_prefix = f"{log_name}-" if log_name else ""
        self._members: dict[int, _Member] = {}
        self._closes: deque[Close] = deque(maxlen=LAST_CLOSES)  # the last WebSocket closes, for /api/status
        self._broker_full = False  # over redis.maxBufferedBytes: every member is paused (Pause.BROKER_FULL)
        self._channels = Channels(config.channel_prefix)
        self._routing = Routing(channels=self._channels)
        self.broker: Broker
        self._enveloped = 0  # members with recover=1: while none, a group message needs no envelope
        if config.broker == "memory":
            self.broker = MemoryBroker(on_message=self._on_pubsub, on_published=self._on_published,
                                       channels=self._channels, on_presence=self._on_presence,
                                       on_entry=self._on_entry, on_history=self._on_history,
                                       history=(config.history_size, config.history_ttl) if config.history else None,
                                       wall=lambda: self._latest() + self._wall_offset)
        elif config.redis_mode == "cluster":
            self.broker = ClusterBroker(config=config, seed=seed, sink=self._actions, on_message=self._on_pubsub,
                                        on_confirmed=self._on_confirmed, on_publisher_back=self._announce_again,
                                        on_published=self._on_published, on_presence=self._on_presence,
                                        on_entry=self._on_entry, on_history=self._on_history)
        else:
            self.broker = RedisBroker(config=config, seed=seed, sink=self._actions, on_message=self._on_pubsub,
                                      on_confirmed=self._on_confirmed, on_publisher_back=self._announce_again,
                                      on_published=self._on_published, channels=self._channels,
                                      on_presence=self._on_presence, on_entry=self._on_entry,
                                      on_history=self._on_history)
        self._history = History(broker=self.broker, page=READ_PAGE, on_deliver=self._history_deliver,
                                on_replay=self._history_replay, on_reset=self._history_reset,
                                clock=self._latest, group_name=self._channels.group_name) if config.history else None
        self._presence = Presence(broker=self.broker, grace=config.presence_grace) if config.presence else None
        self._api = Api(config=config, clients=self._clients, broker=self.broker, channels=self._channels,
                        not_ready_reason=self._not_ready_reason, status=self.status)
        # The shell's link inputs go straight to the broker (links are the ids of its OpenLink actions).
        self.link_opened = self.broker.link_opened
        self.link_data = self.broker.link_data
        self.link_lost = self.broker.link_lost

    # -- shell API: lifecycle ---------------------------------------------------

    def start(self, now: float) -> None:
        """Once, before any other input: the broker opens its links."""
        self.broker.start(now)
        self._now = now

    def clock(self, now: float, wall: float) -> None:
        """The wall-clock time (seconds since the epoch) at ``now``: before ``start``, and now and then after.

        ``now`` is the shell's monotonic time, which timers need; a token's
        ``exp`` and ``nbf`` are wall-clock times. The hub keeps the offset, so
        it reads no clock itself; calling this again follows a clock that was
        stepped (the asyncio shell does with each timer).
        """
        self._wall_offset = wall - now

    def shutdown(self, now: float) -> None:
        """Stop accepting, close every client with 1001, flush client messages, then Stopped."""
        if self._stopping:
            return
        log.info("shutting down: closing %d clients", self._clients.count(), extra={"event": "shutdown"})
        self._timers.schedule(_SHUTDOWN, now + self.config.shutdown_timeout)
        self._stopping = True
        if self._presence is not None:
            self._presence.shutdown()  # no grace: a stopped hub leaves no presence entry
        self._actions.append(StopListening())
        self._clients.close_all(CloseCode.GOING_AWAY, "server shutting down")
        self._now = now

    # -- shell API: clients (the inputs themselves are the table's, bound in __init__) ------

    def client_count(self) -> int:
        """Sockets in HTTP or WebSocket (closing ones are not counted)."""
        return self._clients.count()

    def closing_count(self) -> int:
        """Sockets closed gracefully whose transport has not reported ``client_lost`` yet."""
        return self._clients.closing_count()

    @property
    def pause_pending(self) -> bool:
        """A PauseClient is queued that the shell should execute before it reads another socket."""
        return self._clients.pause_pending

    @property
    def slow_closes(self) -> int:
        return self._clients.slow_closes

    # -- shell API: time and output --------------------------------------------------

    def handle_timer(self, now: float) -> None:
        """The deadline returned by ``next_deadline()`` has passed."""
        self._clients.handle_timer(now)
        self.broker.handle_timer(now)
        if self._presence is not None:
            self._presence.handle_timer(now)
        if self._history is not None:
            self._history.handle_timer(now)
        for owner in self._timers.pop_due(now):
            if isinstance(owner, int):
                self._groups_deadline(owner)
            elif isinstance(owner, tuple):
                self._clients.close(owner[1], CloseCode.TOKEN_EXPIRED, "token expired")
            elif owner == _SHUTDOWN and not self._stopped:
                log.warning("shutdown timeout: %d client messages not flushed to Redis", self.broker.pending_count(),
                            extra={"event": "shutdown_timeout", "count": self.broker.pending_count()})
                self._stopped = True
                self._actions.append(Stopped())
        self._now = now

    def loop_lag(self, lag: float) -> None:
        """How late the shell's timer fired: wshub_event_loop_lag_seconds."""
        self.stats.loop_lag = lag

    def next_deadline(self) -> float | None:
        """The earliest deadline of the client table, the broker and the hub's own (groups, shutdown)."""
        deadlines = [d for d in (self._timers.next_deadline(), self._clients.next_deadline(),
                                 self.broker.next_deadline(),
                                 self._presence.next_deadline() if self._presence is not None else None,
                                 self._history.next_deadline() if self._history is not None else None)
                     if d is not None]
        return min(deadlines) if deadlines else None

    def actions(self) -> list[Action]:
        """Everything to do since the last call, in order; output is built here, once.

        Inputs only change state. Bytes for a socket (and commands for Redis)
        are assembled when the shell asks, so a shell that feeds all of one
        loop iteration's input before asking gets one write per socket.
        """
        now = self._latest()
        self._clients.flush(now)
        self.broker.flush(now)
        self._resume_if_drained(now)
        if self._stopping and not self._stopped and self._clients.is_idle() and self.broker.idle:
            self._stopped = True
            log.info("shutdown complete", extra={"event": "shutdown_complete"})
            self._actions.append(Stopped())
        actions = self._actions[:]
        self._actions.clear()  # the table appends to this same list
        self._clients.pause_pending = False
        return actions

    # -- queries ------------------------------------------------------------------

    def _latest(self) -> float:
        """The time of the latest input, whichever part took it."""
        return max(self._now, self._clients.now, self.broker.now)

    @property
    def ready(self) -> bool:
        """The broker is ready (links up, every needed channel confirmed) and no shutdown began."""
        return self.broker.ready and not self._stopping

    def link_states(self) -> dict[RedisLink, RedisState]:
        """Where each Redis link is in its lifecycle (READY means the prelude was answered)."""
        return self.broker.link_states() if isinstance(self.broker, RedisBroker) else {}

    def link_names(self) -> dict[str, str]:
        """Every Redis link's state by its name (a Cluster's: ``subscriber HOST:PORT``...), for /api/status."""
        if isinstance(self.broker, ClusterBroker):
            return {name: state.value for name, state in self.broker.link_names().items()}
        return {role.value: state.value for role, state in self.link_states().items()}

    def subscribed_channels(self) -> set[bytes]:
        """Channels the broker has asked the server for."""
        return self.broker.subscribed_channels()

    def needed_channels(self) -> set[bytes]:
        return self._routing.needed()

    def is_empty(self) -> bool:
        """No client, no closing socket and no routing entry left (for leak checks)."""
        return self._clients.is_empty() and not self._members and self._routing.is_empty()

    def groups_of(self, conn: int) -> set[str]:
        return {self._routing.group_name(ch) for ch in self._routing.groups_of(conn)}

    # -- internals: clients ------------------------------------------------------------

    def _handle_outcomes(self, client: ClientConnection, outcomes: list[Outcome], now: float) -> None:
        for outcome in outcomes:
            if isinstance(outcome, MessageReceived):
                member = self._members[client.conn]  # messages come only after the upgrade registered it
                if self._limits:
                    if client.state is ClientState.CLOSED:
                        break  # closed for its rate by an earlier message of this read: the rest is dropped
                    if not self._within_limits(client.conn, member, len(outcome.data), now):
                        continue
                self.stats.messages_in += 1
                if self._debug:
                    log.debug("client %s%d (%s) sent %d bytes", self._conn_prefix, client.conn, member.key,
                              len(outcome.data), extra={"event": "message", "conn": client.conn})
                self.broker.publish(member.data_channel, outcome.data)
                if self.broker.buffered_bytes > self.config.max_buffered_bytes and not self._broker_full:
                    self._pause_members()
            elif isinstance(outcome, HttpRequest):
                self._on_request(client, outcome, now)
            elif isinstance(outcome, HttpBody):
                self._api.body(client.conn, outcome.data)
        if self._broker_full and client.conn in self._members and client.state is ClientState.OPEN:
            # Over the bound: a connection upgraded now starts paused too (its first frames, read
            # with its request head, were published above: at most one read).
            self._clients.pause(client.conn, Pause.BROKER_FULL)

    def _within_limits(self, conn: int, member: _Member, size: int, now: float) -> bool:
        """Take one message of ``size`` bytes from the member's buckets; over a limit: close it with 1008.

        Each bucket holds one second's worth and refills continuously, so a
        client may burst up to its per-second rate and then keep to it.
        """
        cfg = self.config
        elapsed = now - member.filled_at
        member.filled_at = now
        if cfg.max_messages_per_second:
            member.messages = min(cfg.max_messages_per_second, member.messages + elapsed * cfg.max_messages_per_second)
            if member.messages < 1:
                return self._over_limit(conn, f"message rate limit: {cfg.max_messages_per_second:g} per second")
            member.messages -= 1
        if cfg.max_bytes_per_second:
            member.bytes = min(cfg.max_bytes_per_second, member.bytes + elapsed * cfg.max_bytes_per_second)
            if member.bytes < size:
                return self._over_limit(conn, f"byte rate limit: {cfg.max_bytes_per_second} per second")
            member.bytes -= size
        return True

    def _over_limit(self, conn: int, reason: str) -> bool:
        self.stats.rate_limited += 1
        self._clients.close(conn, CloseCode.POLICY, reason)
        return False

    def _pause_members(self) -> None:
        """The Redis buffer crossed redis.maxBufferedBytes: stop reading every member, not just this sender.

        Every open connection may send, and each read adds up to one socket read of messages, so
        pausing only the one that crossed lets the others overshoot in the same loop iteration.
        The table's ``pause_pending`` tells the shell to execute the pauses before it reads another socket.
        """
        self._broker_full = True
        for conn in self._members:
            self._clients.pause(conn, Pause.BROKER_FULL)

    def _on_request(self, client: ClientConnection, request: HttpRequest, now: float) -> None:
        conn = client.conn
        cfg = self.config
        decision = route(request, RouteContext(
            server_url=cfg.server_url, client_key=cfg.client_key, allowed_origins=cfg.allowed_origins,
            stopping=self._stopping, full=bool(cfg.max_connections) and len(self._members) >= cfg.max_connections,
            api_key=cfg.api_key, verifier=self._verifier, wall=now + self._wall_offset,
        ))
        if isinstance(decision, ApiCall):
            self._api.request(conn, decision)
            return
        if isinstance(decision, Admin):
            decision = admin_answer(request, decision, ready=self.ready, not_ready_reason=self._not_ready_reason,
                                    metrics=self.metrics_text)
        if isinstance(decision, Answer):
            self._clients.answer(conn, decision.status, decision.body, headers=decision.headers,
                                 content_type=decision.content_type, keep_alive=decision.keep_alive)
            if decision.origin_refused and self._info:
                origin = request.header(b"origin")
                log.info("client %s%d refused: 403 origin not allowed: %s", self._conn_prefix, conn,
                         "(no Origin header)" if origin is None else origin,
                         extra={"event": "refused", "conn": conn, "status": 403, "origin": origin})
            return
        key = decision.key
        if not self._clients.accept(conn, request, now):
            return
        self.stats.connects += 1
        member = _Member(key, self._channels.client_data(key), now)
        member.messages = cfg.max_messages_per_second  # full buckets: a client may start with a burst
        member.bytes = cfg.max_bytes_per_second
        member.deflate = client.deflate_bits
        if decision.envelopes:
            member.envelopes = True
            self._enveloped += 1
            member.since = dict(decision.since)
        self._members[conn] = member
        key_channel = self._routing.key_channel(key)
        siblings = self._routing.conns_of_key(key_channel)
        if decision.groups is not None:
            # The token's groups: this connection is served at once; client-new still goes out (below),
            # so a listener may replace them.
            self._set_groups(conn, member, frozenset(self._routing.group_channel(g) for g in decision.groups))
        elif siblings:
            # Same key: start with the groups the key already has; the listener's answer replaces them.
            first = next(iter(siblings))
            if self._members[first].has_groups:
                self._set_groups(conn, member, self._routing.groups_of(first))
        for channel in self._routing.add(conn, key):
            self.broker.need(channel)
        if self._info:
            fp = self._fp(member)
            extra = {"event": "connect", "conn": conn, "key": fp}
            if self._debug:  # the whole key, a credential, only when asked for
                log.info("client %s%d connected: %s sha256:%s (%s)", self._conn_prefix, conn, cfg.client_key, fp,
                         key, extra=extra)
            else:
                log.info("client %s%d connected: %s sha256:%s", self._conn_prefix, conn, cfg.client_key, fp,
                         extra=extra)
        if self.broker.is_confirmed(key_channel):
            member.announced = True
            self.broker.publish(self._channels.client_new, key.encode(), resend=False)
        if cfg.groups_timeout and not member.has_groups:
            self._timers.schedule(conn, now + cfg.groups_timeout)
        if decision.expires is not None:
            self._timers.schedule((_EXPIRY, conn), now + (decision.expires - (now + self._wall_offset)))
        self._handle_outcomes(client, client.pending_after_accept(), now)

    def _not_ready_reason(self) -> str:
        return "shutting down" if self._stopping else self.broker.not_ready_reason()

    def _groups_deadline(self, conn: int) -> None:
        """webSocket.groupsTimeout passed since the upgrade: close the member if no groups came."""
        member = self._members.get(conn)
        if member is not None and not member.has_groups:
            self._clients.close(conn, CloseCode.POLICY, "no groups assigned")

    def _on_kept_alive(self, client: ClientConnection, status: int) -> None:
        """An answer that kept its connection (the API's): counted as the closing answer is in ``_on_left``."""
        self.stats.http_answers[status] += 1

    def _on_left(self, client: ClientConnection) -> None:
        """The table forgot a client: drop what refers to it (membership, routing, deadlines)."""
        conn = client.conn
        self.stats.closes[client.close_code] += 1
        if client.http_status:
            self.stats.http_answers[client.http_status] += 1
        member = self._members.pop(conn, None)
        if member is None:
            self._api.forget(conn)
            return
        self._timers.cancel(conn)
        self._timers.cancel((_EXPIRY, conn))
        self._closes.append(Close(at=self._latest(), key=f"sha256:{self._fp(member)}", code=client.close_code,
                                  reason=client.close_reason))
        if self._presence is not None:
            now = self._latest()
            for channel in self._routing.groups_of(conn):
                self._presence.remove(self._routing.group_name(channel), member.key, now)
        if member.envelopes:
            self._enveloped -= 1
        if self._history is not None:
            for channel in self._routing.groups_of(conn):
                self._history.leave(conn, channel)
        removed, last = self._routing.remove(conn)
        for channel in removed:
            self._release(channel)
        if last:
            self.broker.publish(self._channels.client_gone, member.key.encode())
        if self._info:
            log.info("client %s%d closed: code=%d reason=%s", self._conn_prefix, conn, client.close_code,
                     client.close_reason, extra={"event": "close", "conn": conn, "key": self._fp(member),
                                                 "code": client.close_code, "reason": client.close_reason})

    @staticmethod
    def _fp(member: _Member) -> str:
        """The fingerprint a log line names the member's key by; hashed once per member, and only if logged."""
        if member.fp is None:
            member.fp = fingerprint(member.key)
        return member.fp

    def _set_groups(self, conn: int, member: _Member, channels: frozenset[bytes]) -> None:
        member.has_groups = True
        if self._presence is not None:
            old = self._routing.groups_of(conn)
            now = self._latest()
            for channel in channels - old:
                self._presence.add(self._routing.group_name(channel), member.key)
            for channel in old - channels:
                self._presence.remove(self._routing.group_name(channel), member.key, now)
        history = self._history
        old_groups = self._routing.groups_of(conn) if history is not None else frozenset()
        added, removed = self._routing.set_groups(conn, channels)
        for channel in added:
            self.broker.need(channel)
        for channel in removed:
            self._release(channel)
        if history is not None:
            for channel in old_groups - channels:
                history.leave(conn, channel)
            if member.since:
                for channel in sorted(channels - old_groups):  # resumes in an order the hash seed does not pick
                    offset = member.since.pop(self._routing.group_name(channel), None)
                    if offset is not None:
                        history.resume(conn, channel, offset)
        elif member.since:
            for channel in channels:
                if member.since.pop(self._routing.group_name(channel), None) is not None:
                    self._history_reset(channel, conn)  # no history here: nothing to resume from

    def _release(self, channel: bytes) -> None:
        """A channel nobody here needs any more: the broker stops delivering it, history forgets its cursor."""
        self.broker.release(channel)
        if self._history is not None:
            self._history.release(channel)

    # -- internals: Redis -----------------------------------------------------------

    def _on_pubsub(self, channel: bytes, payload: bytes) -> None:
        members = self._routing.members(channel)
        if members is not None:
            self.stats.group_messages += 1
            self._deliver_group(channel, members, payload, None)
            if self._debug:
                log.debug("group %s: %d bytes to %d members", self._routing.group_name(channel), len(payload),
                          len(members), extra={"event": "group_message", "count": len(members)})
            return
        conns = self._routing.conns_of_key(channel)
        if conns is None:
            if not self._key_message(channel, payload) and self._api.streaming:
                self._api.event(channel, payload)
            return  # else a message that crossed our UNSUBSCRIBE
        groups = parse_groups(payload)
        if groups is None:
            fp = self._fp(self._members[next(iter(conns))])
            log.warning("ignored groups for %s sha256:%s: neither a JSON array of strings nor a comma list: %s",
                        self.config.client_key, fp, payload, extra={"event": "groups_ignored", "key": fp})
            return
        channels = frozenset(self._routing.group_channel(g) for g in groups)
        for conn in list(conns):
            self._set_groups(conn, self._members[conn], channels)
        if self._info:
            # The formatter shows the first few groups (sorted) and how many more: 10,000 groups make one short line.
            fp = self._fp(self._members[next(iter(conns))])
            log.info("groups of %s sha256:%s set to %d group(s) %s for %d connection(s)", self.config.client_key,
                     fp, len(groups), groups, len(conns),
                     extra={"event": "groups", "key": fp, "groups": groups, "count": len(groups)})

    def _deliver_group(self, channel: bytes, conns: Collection[int], payload: bytes, offset: str | None) -> None:
        """A group message to ``conns``: the payload as it is, or to members with recover=1 an envelope.

        ``channel`` b"": a message for a key (``client-send``), whose envelope names no group.
        """
        if not self._enveloped:
            self._deliver(conns, payload)
            return
        members = self._members
        wrapped: list[int] = []
        raw: list[int] = []
        for conn in conns:  # one pass: who gets the envelope, who the payload
            (wrapped if members[conn].envelopes else raw).append(conn)
        if wrapped:
            self._deliver(wrapped, _envelope(self._routing.group_name(channel) if channel else None, offset, payload))
        self._deliver(raw, payload)

    def _on_entry(self, channel: bytes, offset: str, prev: str, payload: bytes) -> None:
        """A message with history: the history part decides whether it is new (and who catches up)."""
        members = self._routing.members(channel)
        if members is None:
            self._on_pubsub(channel, payload)  # not a group's channel (someone's FCALL on another channel)
            return
        self.stats.group_messages += 1
        if self._history is None:
            self._deliver_group(channel, members, payload, offset)
        else:
            self._history.live(channel, offset, prev, payload)

    def _on_history(self, ticket: int, last: str, entries: list[tuple[str, str, bytes]] | None, error: str) -> None:
        if self._history is not None:
            self._history.answer(ticket, last, entries, error)

    def _history_deliver(self, channel: bytes, offset: str, payload: bytes, leave_out: Collection[int]) -> None:
        """A new entry of a group: to every member but those still catching up from history."""
        members = self._routing.members(channel)
        if members is None:
            return
        if leave_out:
            self._deliver_group(channel, [conn for conn in members if conn not in leave_out], payload, offset)
        else:
            self._deliver_group(channel, members, payload, offset)

    def _history_replay(self, conn: int, channel: bytes, offset: str, payload: bytes) -> None:
        """An entry from history for one connection catching up."""
        if conn in self._members:
            self._deliver_group(channel, (conn,), payload, offset)

    def _history_reset(self, channel: bytes, conn: int | None, leave_out: Collection[int] = ()) -> None:
        """Entries were lost between what a member got and what follows: ``{"group", "reset": true}`` says so."""
        members = self._routing.members(channel) if conn is None else (conn,)
        if not members or not self._enveloped:
            return
        wrapped = [c for c in members if c in self._members and self._members[c].envelopes and c not in leave_out]
        if wrapped:
            frame = json.dumps({"group": self._routing.group_name(channel), "reset": True}).encode()
            self._deliver(wrapped, frame)

    def _deliver(self, conns: Collection[int], payload: bytes) -> None:
        """One message to every one of ``conns``: encoded once, the same frame queued to each.

        With compression, once per window size among them (``_deflate.py``): the members are split by
        the window they negotiated, and each part gets its own frame, built once.
        """
        compressor = self._compressor
        if compressor is None or len(payload) < compressor.threshold:
            frame = encode_message(payload)
            self._clients.broadcast(conns, frame)
            self.stats.messages_out += len(conns)
            self.stats.bytes_out += len(frame) * len(conns)
            return
        members = self._members
        by_window: dict[int | None, list[int]] = {}
        for conn in conns:
            by_window.setdefault(members[conn].deflate, []).append(conn)
        message: str | bytes
        try:
            message = payload.decode("utf-8")  # once for every frame below: text if it is UTF-8, as encode_message
        except UnicodeDecodeError:
            message = payload
        for bits, part in by_window.items():
            frame = bytes(_ENCODER.send_data(message, fin=True)) if bits is None else compressor.frame(message, bits)
            self._clients.broadcast(part, frame)
            self.stats.bytes_out += len(frame) * len(part)
        self.stats.messages_out += len(conns)

    def _key_message(self, channel: bytes, payload: bytes) -> bool:
        """``client-send:KEY`` (a message for each connection of KEY) or ``client-kick:KEY`` (close them)."""
        conns = self._routing.conns_for_key_channel(channel)
        if conns is None:
            return False
        if channel.startswith(self._channels.client_send_prefix):
            self._deliver_group(b"", conns, payload, None)  # no group: an envelope without one
            return True
        reason = payload[:123].decode("utf-8", "ignore") or "closed by the backend"  # a close reason's bound
        for conn in list(conns):
            self._clients.close(conn, CloseCode.KICKED, reason)
        if self._info:
            fp = self._fp(self._members[next(iter(conns))])
            log.info("%s sha256:%s kicked: %d connection(s) closed with %d", self.config.client_key, fp, len(conns),
                     CloseCode.KICKED, extra={"event": "kick", "key": fp, "count": len(conns)})
        return True

    def _on_published(self, ticket: int, error: str, offset: str) -> None:
        self._api.published(ticket, error, offset)

    def _on_presence(self, ticket: int, counts: dict[str, int] | None, error: str) -> None:
        self._api.presence(ticket, counts, error)

    def _announce_again(self) -> None:
        """The command link is back: client-new for every connection still waiting for its groups.

        Unanswered client-new PUBLISHes are not resent (``resend=False``): the
        connection may have closed meanwhile, and a stale client-new would reach
        the listener while nobody is subscribed to its answer. Instead each
        connection that still needs its groups, and whose answer channel is
        confirmed, is announced again, once per key.
        """
        announced: set[str] = set()
        for member in self._members.values():
            if member.has_groups or member.key in announced:
                continue
            if self.broker.is_confirmed(self._routing.key_channel(member.key)):
                announced.add(member.key)
                self.broker.publish(self._channels.client_new, member.key.encode(), resend=False)

    def _on_confirmed(self, channel: bytes) -> None:
        if self._history is not None and self._routing.members(channel) is not None:
            self._history.confirmed(channel)  # a group's (again): repair what an interruption cost
            return
        conns = self._routing.conns_of_key(channel)
        if not conns:
            return
        # First subscription, or a resubscribe after a reconnect: connections still
        # waiting for groups (the answer may have been lost while down) ask again.
        for conn in conns:
            member = self._members[conn]
            if not member.has_groups or not member.announced:
                member.announced = True
                self.broker.publish(self._channels.client_new, member.key.encode(), resend=False)

    # -- output ----------------------------------------------------------------------

    def _resume_if_drained(self, now: float) -> None:
        """Below half of redis.maxBufferedBytes again: read every member again."""
        if self._broker_full and self.broker.buffered_bytes <= self.config.max_buffered_bytes // 2:
            self._broker_full = False
            for conn in self._members:  # one whose socket is full too resumes when it drains
                self._clients.resume(conn, Pause.BROKER_FULL, now)

    # -- metrics and status ---------------------------------------------------------------

    def status(self) -> dict[str, object]:
        """The ``GET /api/status`` object (docs/protocol.md): readiness, links, counts, top groups, last closes."""
        s = self.stats
        return build_status(
            now=self._latest(), broker=self.config.broker, ready=self.ready, not_ready_reason=self._not_ready_reason(),
            links=self.link_names(),
            connections=len(self._members), sockets=self._clients.count() + self._clients.closing_count(),
            counters={"connects": s.connects, "messages_in": s.messages_in, "messages_out": s.messages_out,
                      "group_messages": s.group_messages, "bytes_out": s.bytes_out,
                      "slow_closes": self._clients.slow_closes, "api_calls": self._api.calls},
            groups=self._routing.group_sizes(), closes=self._closes,
        )

    def _history_samples(self) -> list[Sample]:
        history = self._history
        if history is None:
            return []
        return [
            ("wshub_history_duplicates_total", "counter", "Group messages dropped because they were delivered already.",
             [("", history.duplicates)]),
            ("wshub_history_repairs_total", "counter",
             "History reads for a gap or an interrupted subscription.", [("", history.repairs)]),
            ("wshub_history_repaired_total", "counter",
             "Group messages delivered from history by a repair (they had not come live).", [("", history.repaired)]),
            ("wshub_history_resets_total", "counter",
             "Gaps the history no longer held (a group's, or a resuming connection's).", [("", history.resets)]),
            ("wshub_history_resumes_total", "counter", "Connections that caught up from history.",
             [("", history.resumes)]),
            ("wshub_history_catching_up", "gauge", "Connections catching up from history now.",
             [("", history.catching_up())]),
            ("wshub_history_up", "gauge", "1 if the broker keeps history now.",
             [("", int(not self.broker.history_error))]),
        ]

    def metrics_text(self) -> str:
        """The Prometheus text of the hub's counters, the client table's and the broker's gauges."""
        s = self.stats
        return render([
            ("wshub_connections_open", "gauge", "Open WebSocket connections.", [("", len(self._members))]),
            ("wshub_connects_total", "counter", "WebSocket upgrades accepted.", [("", s.connects)]),
            ("wshub_disconnects_total", "counter", "Closed sockets by close code (0: HTTP answer).",
             [(f'{{code="{code}"}}', n) for code, n in sorted(s.closes.items())]),
            ("wshub_http_responses_total", "counter", "Plain HTTP answers by status.",
             [(f'{{status="{st}"}}', n) for st, n in sorted(s.http_answers.items())]),
            ("wshub_groups", "gauge", "Groups with at least one local member.",
             [("", sum(1 for ch in self._routing.needed() if self._routing.members(ch) is not None))]),
            ("wshub_messages_in_total", "counter", "Messages received from clients.", [("", s.messages_in)]),
            ("wshub_group_messages_total", "counter", "Group messages received from Redis.",
             [("", s.group_messages)]),
            ("wshub_messages_out_total", "counter", "Messages delivered to clients.", [("", s.messages_out)]),
            ("wshub_bytes_out_total", "counter", "Frame bytes queued to clients.", [("", s.bytes_out)]),
            ("wshub_oversize_closes_total", "counter", "Clients closed for an oversize message.",
             [("", s.closes[CloseCode.TOO_BIG])]),
            ("wshub_rate_limited_total", "counter",
             "Clients closed for sending over webSocket.maxMessagesPerSecond or maxBytesPerSecond.",
             [("", s.rate_limited)]),
            *self._clients.samples(),
            *self.broker.samples(),
            *self._history_samples(),
            *self._api.samples(),
            ("wshub_event_loop_lag_seconds", "gauge", "Lateness of the last timer, measured by the shell.",
             [("", s.loop_lag)]),
        ])
