"""Redis sessions: one object per Redis connection.

Rules:
1. RESP is encoded with ``hiredis.pack_command`` and parsed with
   ``hiredis.Reader`` (own ``notEnoughData`` sentinel; a ``ReplyError`` is a
   value; a ``ProtocolError`` means: drop this connection and re-dial).
2. A session never raises on what Redis sends; it reports ``broken`` and the
   hub drops the link.
3. A session holds what must survive a reconnect: the subscriber re-SUBSCRIBEs
   every needed channel (the hub hands it the set), the command session resends
   unacknowledged PUBLISHes, in order (at-least-once across a reconnect).
"""

from __future__ import annotations

import enum
import random
from collections import deque
from dataclasses import dataclass

import hiredis

__all__ = [
    "Backoff",
    "CommandSession",
    "Confirmed",
    "PubMessage",
    "RedisSession",
    "RedisState",
    "SubscriberSession",
    "Unsubscribed",
]

_NOT_ENOUGH = object()  # hiredis returns this when a reply is incomplete


def pack(*args: bytes) -> bytes:
    """One RESP command (hiredis' stub types the tuple as one element, hence the ignore)."""
    return hiredis.pack_command(args)  # type: ignore[arg-type, no-any-return]


_PING = pack(b"PING")


class RedisState(enum.Enum):
    DOWN = "down"  # waiting for the reconnect deadline
    CONNECTING = "connecting"  # OpenLink issued, TCP not up yet
    HANDSHAKE = "handshake"  # TCP up, prelude (AUTH/SELECT/PING) sent, not every reply back yet
    READY = "ready"  # every prelude reply was a success: a Redis that takes our commands


@dataclass(frozen=True, slots=True, kw_only=True)
class PubMessage:
    channel: bytes
    payload: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Confirmed:
    """Redis acknowledged the latest SUBSCRIBE sent for ``channel``."""

    channel: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Unsubscribed:
    """Redis dropped a subscription we did not give up (sharded: its slot moved to another node)."""

    channel: bytes


class Backoff:
    """Exponential backoff with jitter; deterministic given its seed."""

    __slots__ = ("_min", "_max", "_attempt", "_rng")

    def __init__(self, *, minimum: float, maximum: float, seed: int) -> None:
        self._min = minimum
        self._max = maximum
        self._attempt = 0
        self._rng = random.Random(seed)

    def next_delay(self) -> float:
        ceiling: float = min(self._max, self._min * 2.0 ** min(self._attempt, 30))
        self._attempt += 1
        jitter: float = self._rng.uniform(0, ceiling / 2)
        return ceiling / 2 + jitter

    def reset(self) -> None:
        self._attempt = 0


class RedisSession:
    """What both links share: dialling state, parser, prelude, reply deadline.

    A link is READY only once Redis has answered every prelude command with a
    success: a TCP accept proves nothing (a wrong password, ``maxclients``, or
    a port that is not Redis at all accept TCP too). The backoff starts over
    only after a link has stayed READY for ``healthy_after`` seconds, so a
    server that accepts and then refuses is redialled ever more slowly.
    """

    __slots__ = (
        "state",
        "connect_at",
        "connecting_since",
        "ready_since",
        "waiting_since",
        "last_rx",
        "broken",
        "_reader",
        "_prelude",
        "_handshake",
        "_prelude_pending",
        "_backoff",
        "_healthy_after",
    )

    def __init__(self, *, backoff: Backoff, username: str, password: str, healthy_after: float) -> None:
        self.state = RedisState.DOWN
        self.connect_at = 0.0
        self.connecting_since = 0.0
        self.ready_since = 0.0
        # Oldest moment since which a reply is owed and none has come.
        self.waiting_since: float | None = None
        self.last_rx = 0.0
        self.broken = ""  # set to a reason when the link must be dropped
        self._reader = hiredis.Reader(notEnoughData=_NOT_ENOUGH)
        self._prelude: list[tuple[bytes, ...]] = []
        if password:
            auth = (b"AUTH", username.encode(), password.encode()) if username else (b"AUTH", password.encode())
            self._prelude.append(auth)
        self._handshake = self._prelude  # what connected() sent: the prelude, or a PING in its place
        self._prelude_pending = 0
        self._backoff = backoff
        self._healthy_after = healthy_after

    def require_master(self) -> None:
        """Add ROLE to the prelude: READY only on a master (an address a sentinel gave may be stale)."""
        self._prelude.append((b"ROLE",))

    def connecting(self, now: float) -> None:
        self.state = RedisState.CONNECTING
        self.connecting_since = now

    def connected(self, now: float) -> bytes:
        """TCP is up: the prelude to send; the link is READY when all of it is answered."""
        self.state = RedisState.HANDSHAKE
        self.broken = ""
        self.last_rx = now
        self._reader = hiredis.Reader(notEnoughData=_NOT_ENOUGH)
        # Something must be answered before we call the link up: with no AUTH/SELECT, a PING.
        self._handshake = self._prelude or [(b"PING",)]
        self._prelude_pending = len(self._handshake)
        self.waiting_since = now
        return b"".join(pack(*cmd) for cmd in self._handshake)

    def lost(self, now: float) -> None:
        if self.state is RedisState.READY and now - self.ready_since >= self._healthy_after:
            self._backoff.reset()
        self.state = RedisState.DOWN
        self.connect_at = now + self._backoff.next_delay()
        self.waiting_since = None

    def _replies(self, data: bytes, now: float) -> list[object]:
        """Parse replies; prelude replies are consumed here. Sets ``broken`` on bad input."""
        self.last_rx = now
        reader = self._reader
        reader.feed(data)
        replies: list[object] = []
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self.broken = f"protocol error: {exc}"
                return replies
            except (TypeError, ValueError) as exc:  # e.g. a RESP3 map keyed by an array: no dict can hold it
                self.broken = f"unreadable reply: {exc}"
                return replies
            if reply is _NOT_ENOUGH:
                return replies
            if self._prelude_pending:
                verb = self._handshake[len(self._handshake) - self._prelude_pending][0].decode()
                self._prelude_pending -= 1
                if isinstance(reply, hiredis.ReplyError):
                    self.broken = f"{verb} failed: {reply}"
                    return replies
                if verb == "PING" and reply != b"PONG":
                    self.broken = f"not a Redis server: PING answered {reply!r}"[:200]
                    return replies
                if verb == "ROLE" and not (isinstance(reply, list) and reply and reply[0] == b"master"):
                    role = reply[0] if isinstance(reply, list) and reply else reply
                    shown = role.decode(errors="replace") if isinstance(role, bytes) else repr(role)
                    self.broken = f"not a master (ROLE: {shown})"[:200]
                    return replies
                if not self._prelude_pending:
                    self.state = RedisState.READY
                    self.ready_since = now
                continue
            replies.append(reply)

    def timed_out(self, now: float, timeout: float) -> str:
        """Why the link must be dropped now (a connect or a reply overdue by ``timeout``), or ""."""
        if self.state is RedisState.CONNECTING:
            return f"connect timed out after {timeout:g}s" if now >= self.connecting_since + timeout else ""
        if self.state is not RedisState.DOWN and self.waiting_since is not None and now >= self.waiting_since + timeout:
            what = "no answer to the handshake" if self.state is RedisState.HANDSHAKE else "no reply"
            return f"{what} for {timeout:g}s"
        return ""

    def ping_due(self, now: float, timeout: float) -> bool:
        """Up, owed nothing, and silent for half of ``timeout``: an idle PING keeps the link proven."""
        return self.state in (RedisState.HANDSHAKE, RedisState.READY) and self.waiting_since is None \
            and now >= self.last_rx + timeout / 2

    def deadline(self, timeout: float) -> float:
        """When this link next needs attention (reconnect, connect timeout, reply timeout, idle ping)."""
        if self.state is RedisState.DOWN:
            return self.connect_at
        if self.state is RedisState.CONNECTING:
            return self.connecting_since + timeout
        if self.waiting_since is not None:
            return self.waiting_since + timeout
        return self.last_rx + timeout / 2


class SubscriberSession(RedisSession):
    """The pub/sub link: subscription bookkeeping and incoming messages.

    ``sharded`` (a Redis Cluster's shard channels): SSUBSCRIBE/SUNSUBSCRIBE, one
    channel per command (never two slots in one), ``smessage``; Redis dropping
    a channel itself (its slot moved) is an ``Unsubscribed`` event.
    """

    __slots__ = ("_last_op", "_pending_sub", "_ops", "_owed", "_patterns", "_pending_psub", "sharded", "_sub_verb",
                 "_unsub_verb", "_run")

    def __init__(self, *, backoff: Backoff, username: str, password: str, healthy_after: float,
                 sharded: bool = False) -> None:
        super().__init__(backoff=backoff, username=username, password=password, healthy_after=healthy_after)
        self.sharded = sharded
        self._sub_verb, self._unsub_verb = (b"SSUBSCRIBE", b"SUNSUBSCRIBE") if sharded else (b"SUBSCRIBE",
                                                                                             b"UNSUBSCRIBE")
        self._run = 1 if sharded else 1000  # channels per command
        self._last_op: dict[bytes, bool] = {}  # channel -> True if SUBSCRIBE was sent last
        self._pending_sub: dict[bytes, int] = {}  # SUBSCRIBE confirmations still owed
        self._ops: list[tuple[bytes, bytes]] = []  # queued (verb, channel or pattern), in order
        self._owed = 0  # replies owed (subscribe/unsubscribe confirmations, pong)
        # Patterns (PSUBSCRIBE), the same bookkeeping: few of them (the event stream's client-data:*).
        self._patterns: dict[bytes, bool] = {}
        self._pending_psub: dict[bytes, int] = {}

    def is_confirmed(self, channel: bytes) -> bool:
        return self._last_op.get(channel) is True and channel not in self._pending_sub

    def subscribed_channels(self) -> set[bytes]:
        """Channels for which SUBSCRIBE was the last command sent."""
        return {ch for ch, sub in self._last_op.items() if sub}

    def want(self, channel: bytes) -> None:
        if self._last_op.get(channel) is not True:
            self._last_op[channel] = True
            self._pending_sub[channel] = self._pending_sub.get(channel, 0) + 1
            self._ops.append((self._sub_verb, channel))

    def unwant(self, channel: bytes) -> None:
        if self._last_op.get(channel) is True:
            self._last_op[channel] = False
            self._ops.append((self._unsub_verb, channel))

    def want_pattern(self, pattern: bytes) -> None:
        """PSUBSCRIBE ``pattern`` (a glob: the caller escapes what must match literally)."""
        if self._patterns.get(pattern) is not True:
            self._patterns[pattern] = True
            self._pending_psub[pattern] = self._pending_psub.get(pattern, 0) + 1
            self._ops.append((b"PSUBSCRIBE", pattern))

    def unwant_pattern(self, pattern: bytes) -> None:
        if self._patterns.get(pattern) is True:
            self._patterns[pattern] = False
            self._ops.append((b"PUNSUBSCRIBE", pattern))

    def patterns_confirmed(self) -> bool:
        """Every PSUBSCRIBE sent was confirmed."""
        return not self._pending_psub

    def subscribed_patterns(self) -> set[bytes]:
        """Patterns for which PSUBSCRIBE was the last command sent."""
        return {p for p, sub in self._patterns.items() if sub}

    def connected(self, now: float) -> bytes:
        prelude = super().connected(now)
        self._last_op.clear()
        self._pending_sub.clear()
        self._patterns.clear()
        self._pending_psub.clear()
        self._ops.clear()
        self._owed = 0
        return prelude

    def lost(self, now: float) -> None:
        super().lost(now)
        self._last_op.clear()
        self._pending_sub.clear()
        self._patterns.clear()
        self._pending_psub.clear()
        self._ops.clear()
        self._owed = 0

    def take_commands(self, now: float) -> bytes:
        """SUBSCRIBE/UNSUBSCRIBE for the queued changes, runs of the same verb merged."""
        if not self._ops or self.state is not RedisState.READY:
            return b""
        chunks = []
        ops = self._ops
        i = 0
        while i < len(ops):
            verb = ops[i][0]
            j = i
            while j < len(ops) and ops[j][0] == verb and j - i < self._run:
                j += 1
            channels = [ch for _, ch in ops[i:j]]
            chunks.append(pack(verb, *channels))
            self._owed += len(channels)
            i = j
        ops.clear()
        if self.waiting_since is None:
            self.waiting_since = now
        return b"".join(chunks)

    def _pattern_reply(self, kind: bytes, pattern: bytes) -> bool:
        """Bookkeeping of a PSUBSCRIBE/PUNSUBSCRIBE confirmation; False (and ``broken``) if never asked for."""
        if kind == b"psubscribe":
            left = self._pending_psub.get(pattern, 0) - 1
            if left < 0:
                self.broken = f"confirmation of a PSUBSCRIBE never sent: {pattern!r}"[:200]
                return False
            if left:
                self._pending_psub[pattern] = left
            else:
                del self._pending_psub[pattern]
        elif pattern not in self._patterns:
            self.broken = f"confirmation of a PUNSUBSCRIBE never sent: {pattern!r}"[:200]
            return False
        elif self._patterns[pattern] is False and pattern not in self._pending_psub:
            del self._patterns[pattern]
        return True

    def ping(self, now: float) -> bytes:
        self._owed += 1
        if self.waiting_since is None:
            self.waiting_since = now
        return _PING

    def feed(self, data: bytes, now: float) -> list[PubMessage | Confirmed | Unsubscribed]:
        out: list[PubMessage | Confirmed | Unsubscribed] = []
        sharded = self.sharded
        for reply in self._replies(data, now):
            if reply == b"PONG":  # PING while subscribed to nothing
                self._owed = max(0, self._owed - 1)
                continue
            if not isinstance(reply, list) or len(reply) < 2:
                self.broken = f"unexpected reply on the subscriber link: {reply!r}"[:200]
                break
            kind, channel = reply[0], reply[1]
            if not isinstance(channel, bytes):
                self.broken = f"unexpected reply on the subscriber link: {reply!r}"[:200]
                break
            if kind == b"message" or (sharded and kind == b"smessage"):
                if len(reply) != 3 or not isinstance(reply[2], bytes):
                    self.broken = f"malformed message on the subscriber link: {reply!r}"[:200]
                    break
                out.append(PubMessage(channel=channel, payload=reply[2]))
                continue
            if kind == b"pmessage":  # [pmessage, pattern, channel, payload]
                if len(reply) != 4 or not isinstance(reply[2], bytes) or not isinstance(reply[3], bytes):
                    self.broken = f"malformed pmessage on the subscriber link: {reply!r}"[:200]
                    break
                out.append(PubMessage(channel=reply[2], payload=reply[3]))
                continue
            if sharded and isinstance(kind, bytes) and kind in _SHARDED_KINDS:
                kind = _SHARDED_KINDS[kind]
                if kind == b"unsubscribe" and self._last_op.get(channel) is True and channel not in self._pending_sub:
                    del self._last_op[channel]  # not ours: Redis gave the channel up (slot migrated, failover)
                    out.append(Unsubscribed(channel=channel))
                    continue
            self._owed = max(0, self._owed - 1)
            if kind == b"psubscribe" or kind == b"punsubscribe":
                if not self._pattern_reply(kind, channel):
                    break
                continue
            if kind == b"subscribe":
                if channel not in self._pending_sub:
                    # A confirmation we are not owed: our bookkeeping and Redis' disagree,
                    # and the only way back to agreement is a fresh link and a resubscribe.
                    self.broken = f"confirmation of a SUBSCRIBE never sent: {channel!r}"[:200]
                    break
                left = self._pending_sub[channel] - 1
                if left > 0:
                    self._pending_sub[channel] = left
                else:
                    del self._pending_sub[channel]
                    if self._last_op.get(channel) is True:
                        out.append(Confirmed(channel=channel))
            elif kind == b"unsubscribe":
                if channel not in self._last_op:
                    self.broken = f"confirmation of an UNSUBSCRIBE never sent: {channel!r}"[:200]
                    break
                if self._last_op[channel] is False and channel not in self._pending_sub:
                    del self._last_op[channel]
            elif kind != b"pong":
                self.broken = f"unexpected reply on the subscriber link: {kind!r}"[:200]
                break
        self.waiting_since = (now if self._owed else None) if not self._prelude_pending else self.waiting_since
        return out


_SHARDED_KINDS = {b"ssubscribe": b"subscribe", b"sunsubscribe": b"unsubscribe"}


class CommandSession(RedisSession):
    """The command link: an ordered outbox of PUBLISHes, resent after a reconnect."""

    __slots__ = ("_outbox", "_inflight", "_volatile", "_tickets", "acknowledged", "buffered_bytes", "dropped",
                 "redirected")

    def __init__(self, *, backoff: Backoff, username: str, password: str, db: int, healthy_after: float) -> None:
        super().__init__(backoff=backoff, username=username, password=password, healthy_after=healthy_after)
        if db:
            self._prelude.append((b"SELECT", str(db).encode()))
        self._outbox: deque[bytes] = deque()  # packed commands not yet written
        self._inflight: deque[bytes] = deque()  # written, reply not yet read
        self._volatile: set[int] = set()  # ids of queued commands a reconnect drops instead of resending
        self._tickets: dict[int, int] = {}  # id of a queued command -> the ticket its reply confirms
        # (ticket, error, reply) the last feeds answered, or a lost link dropped (error "link lost", reply None);
        # the caller empties it.
        self.acknowledged: list[tuple[int, str, object]] = []
        self.buffered_bytes = 0  # bytes in outbox + inflight
        self.dropped = False  # a lost link dropped volatile commands (announcements) since the caller last looked
        # A Cluster's node: commands answered -MOVED/-ASK, as (command, ticket, resend, error), for the caller to
        # send where Redis says (None: not a Cluster; such errors are errors like any other).
        self.redirected: list[tuple[bytes, int, bool, str]] | None = None

    @property
    def idle(self) -> bool:
        return not self._outbox and not self._inflight

    def __len__(self) -> int:
        return len(self._outbox) + len(self._inflight)

    def publish(self, channel: bytes, payload: bytes, *, resend: bool = True, ticket: int = 0) -> None:
        """Queue a PUBLISH. ``resend=False``: after a reconnect it is dropped, not resent.

        For announcements whose reason may be gone by the time the link is back
        (``client-new`` of a connection that has closed meanwhile): the hub
        decides afresh what to announce when the link is READY again.
        """
        self.command(b"PUBLISH", channel, payload, resend=resend, ticket=ticket)

    def command(self, *args: bytes, resend: bool = True, ticket: int = 0) -> None:
        """Queue any command; its reply goes to ``acknowledged`` with ``ticket`` (if nonzero).

        ``resend=False``: dropped at a lost link instead of resent, and its ticket answered ``link lost``.
        """
        self.put(pack(*args), resend=resend, ticket=ticket)

    def put(self, cmd: bytes, *, resend: bool = True, ticket: int = 0) -> None:
        """Queue a command already in RESP (``take_outstanding`` of another node's, say), as ``command`` does."""
        self._outbox.append(cmd)
        self.buffered_bytes += len(cmd)
        if not resend:
            self._volatile.add(id(cmd))
        if ticket:
            self._tickets[id(cmd)] = ticket

    def ping(self, now: float) -> None:
        self._outbox.append(_PING)

    def lost(self, now: float) -> None:
        super().lost(now)
        # Written but unanswered: Redis may or may not have run them. Resend
        # first, before anything queued later, so order holds (at-least-once).
        self._inflight.extend(self._outbox)
        self._outbox = self._inflight
        self._inflight = deque()
        if self._volatile:
            volatile = self._volatile
            kept: deque[bytes] = deque()
            for cmd in self._outbox:
                if id(cmd) in volatile:
                    self.dropped = True
                    self.buffered_bytes -= len(cmd)
                    ticket = self._tickets.pop(id(cmd), 0)
                    if ticket:
                        self.acknowledged.append((ticket, "link lost", None))
                else:
                    kept.append(cmd)
            self._outbox = kept
            volatile.clear()

    def outstanding(self) -> list[bytes]:
        """Every command not yet answered (written or not), in order, PINGs left out."""
        return [cmd for cmd in (*self._inflight, *self._outbox) if cmd is not _PING]

    def take_outstanding(self) -> list[tuple[bytes, int, bool]]:
        """Every command not yet answered, in order, as (command, ticket, resend), and forget them.

        For a Cluster whose slots moved to another node: the caller sends them there.
        """
        out = [(cmd, self._tickets.pop(id(cmd), 0), id(cmd) not in self._volatile)
               for cmd in (*self._inflight, *self._outbox) if cmd is not _PING]
        self._inflight.clear()
        self._outbox.clear()
        self._volatile.clear()
        self._tickets.clear()
        self.buffered_bytes = 0
        return out

    def take_commands(self, now: float) -> bytes:
        if not self._outbox or self.state is not RedisState.READY:
            return b""
        out = self._outbox
        self._inflight.extend(out)
        data = b"".join(out)
        self._outbox = deque()
        if self.waiting_since is None:
            self.waiting_since = now
        return data

    def feed(self, data: bytes, now: float) -> list[hiredis.ReplyError]:
        """Replies, in order; each ticket answered goes to ``acknowledged``, the errors of the others are returned."""
        errors: list[hiredis.ReplyError] = []
        for reply in self._replies(data, now):
            if not self._inflight:
                self.broken = f"unexpected reply on the command link: {reply!r}"[:200]
                break
            cmd = self._inflight.popleft()
            resend = True
            if cmd is not _PING:  # PING is not counted in buffered_bytes
                self.buffered_bytes -= len(cmd)
                if self._volatile and id(cmd) in self._volatile:
                    self._volatile.discard(id(cmd))
                    resend = False
            ticket = self._tickets.pop(id(cmd), 0) if self._tickets else 0
            if self.redirected is not None and isinstance(reply, hiredis.ReplyError) \
                    and str(reply).startswith(("MOVED ", "ASK ")):
                self.redirected.append((cmd, ticket, resend, str(reply)))
                continue
            if ticket:  # its owner hears of an error with the reply
                self.acknowledged.append((ticket, str(reply) if isinstance(reply, hiredis.ReplyError) else "",
                                          reply))
            elif isinstance(reply, hiredis.ReplyError):
                errors.append(reply)
        if not self._prelude_pending:
            self.waiting_since = now if self._inflight else None
        return errors
