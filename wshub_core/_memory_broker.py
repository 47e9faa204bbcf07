"""The memory broker: channels inside this process, nothing to install or dial.

It gives the hub the same channel semantics Redis pub/sub does (a message on a
needed channel is delivered, one on a channel nobody needs is dropped), so the
first run of the hub needs no server at all, and tests of everything above
the broker run without one. It is one process's broker: with ``workers > 1``
each worker would be an island, which the config refuses.

Rules:
1. No links: it emits no action, and the link inputs are never called.
2. Delivery is synchronous but never re-entrant: a publish made while a
   delivery is being handled (a kick that closes a socket whose last close
   publishes ``client-gone``) is queued and delivered, in order, after it.
3. A need is in effect at once (``is_confirmed``), so no confirmation
   callback is ever made: the hub announces a key right after it needs the
   key's answer channel, and would announce twice if one were.
4. History (``history.enabled``) is kept as Redis keeps it: per channel the
   last ``history.size`` entries, with positions ``ms-seq`` from the wall
   clock (never going back), each naming the one before; gone
   ``history.ttl`` seconds after its last entry. Reads are answered at once.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable

from ._broker import OnEntry, OnHistory, OnMessage, OnPresence, OnPublished
from ._channels import Channels
from ._metrics import Sample

__all__ = ["MemoryBroker"]


class _Stream:
    """One channel's history: entries (position, prev, payload), the last position, when it expires."""

    __slots__ = ("entries", "last", "last_text", "expires", "ids")

    def __init__(self, size: int) -> None:
        self.entries: deque[tuple[tuple[int, int], str, str, bytes]] = deque(maxlen=size)
        self.last = (0, 0)
        self.last_text = "0-0"
        self.expires = 0.0
        self.ids: dict[bytes, tuple[str, float]] = {}  # message id -> (its position, when it was published)


class MemoryBroker:
    """``Broker`` in one process."""

    def __init__(self, *, on_message: OnMessage, on_published: OnPublished | None = None,
                 channels: Channels | None = None, on_presence: OnPresence | None = None,
                 on_entry: OnEntry | None = None, on_history: OnHistory | None = None,
                 history: tuple[int, float] | None = None, wall: Callable[[], float] = lambda: 0.0) -> None:
        """``on_message`` is the hub's delivery callback; ``on_published`` hears of ticketed publishes;
        ``channels`` names presence events, ``on_presence`` answers presence queries; ``history`` is
        (history.size, history.ttl), ``on_entry`` delivers its entries, ``on_history`` answers its reads,
        ``wall`` is the wall-clock time now (positions are wall-clock milliseconds, as Redis's)."""
        self._on_message = on_message
        self._on_entry = on_entry
        self._on_history = on_history
        self._history = history
        self._wall = wall
        self._streams: dict[bytes, _Stream] = {}
        self._on_published = on_published
        self._channels = channels or Channels("")
        self._on_presence = on_presence
        self._presence: dict[str, dict[str, int]] = {}  # group -> key -> connections (one hub: this one)
        self._needed: set[bytes] = set()
        self._prefixes: set[bytes] = set()  # pattern needs: every channel starting with one of them
        self._queue: deque[tuple[bytes, bytes, tuple[str, str] | None]] = deque()  # entries: (position, prev)
        self._delivering = False
        self.now = 0.0  # no input of its own: never later than the hub's
        self.published = 0
        self.delivered = 0

    def start(self, now: float) -> None:
        """Nothing to open."""

    def need(self, channel: bytes) -> None:
        """Deliver ``channel`` from now on."""
        self._needed.add(channel)

    def release(self, channel: bytes) -> None:
        """Stop delivering ``channel``."""
        self._needed.discard(channel)

    def need_prefix(self, prefix: bytes) -> None:
        """Deliver every channel that starts with ``prefix`` (what a PSUBSCRIBE ``prefix*`` does)."""
        self._prefixes.add(prefix)

    def release_prefix(self, prefix: bytes) -> None:
        """Stop delivering the channels under ``prefix`` (those needed by name stay)."""
        self._prefixes.discard(prefix)

    def is_confirmed(self, channel: bytes) -> bool:
        """A need is in effect as soon as it is made."""
        return channel in self._needed

    def publish(self, channel: bytes, payload: bytes, *, resend: bool = True, ticket: int = 0) -> None:
        """Deliver now if ``channel`` is needed (after any delivery in progress); else drop it, as Redis does.

        A ticket is confirmed once the message is queued: it is as taken as it will ever be.
        """
        self._deliver(channel, payload, None, ticket)

    def publish_history(self, channel: bytes, payload: bytes, *, message_id: bytes = b"", ticket: int = 0) -> None:
        """Append to the channel's history, then deliver it as an entry (a plain publish without history)."""
        if self._history is None:
            self._deliver(channel, payload, None, ticket)
            return
        size, ttl = self._history
        wall = self._wall()
        stream = self._streams.get(channel)
        if stream is None or wall >= stream.expires:
            stream = self._streams[channel] = _Stream(size)
        if message_id:
            for old in [m for m, (_, at) in stream.ids.items() if at < wall - ttl]:
                del stream.ids[old]
            seen = stream.ids.get(message_id)
            if seen is not None:
                if ticket and self._on_published is not None:
                    self._on_published(ticket, "", seen[0])
                return
        ms = max(int(wall * 1000), stream.last[0])
        key = (ms, stream.last[1] + 1 if ms == stream.last[0] else 0)
        text, prev = f"{key[0]}-{key[1]}", stream.last_text
        stream.entries.append((key, text, prev, payload))
        stream.last, stream.last_text = key, text
        stream.expires = wall + ttl
        if message_id:
            stream.ids[message_id] = (text, wall)
        self._deliver(channel, payload, (text, prev), ticket)

    def read_history(self, channel: bytes, after: str, count: int, ticket: int) -> None:
        """Answered at once, from this process's history."""
        if self._on_history is None:
            return
        stream = self._streams.get(channel)
        if stream is None or self._wall() >= stream.expires or not stream.entries:
            self._on_history(ticket, "", [], "")
            return
        ms, _, seq = after.partition("-")
        start = (int(ms), int(seq))
        entries = [(text, prev, payload) for key, text, prev, payload in stream.entries if key > start]
        self._on_history(ticket, stream.last_text, entries[:count], "")

    @property
    def history_error(self) -> str:
        """"" with ``history.enabled``."""
        return "" if self._history is not None else "history.enabled is false"

    def _deliver(self, channel: bytes, payload: bytes, entry: tuple[str, str] | None, ticket: int) -> None:
        self.published += 1
        self._queue.append((channel, payload, entry))
        if ticket and self._on_published is not None:
            self._on_published(ticket, "", entry[0] if entry is not None else "")
        if self._delivering:
            return
        self._delivering = True
        try:
            while self._queue:
                channel, payload, entry = self._queue.popleft()
                if channel in self._needed or (self._prefixes and channel.startswith(tuple(self._prefixes))):
                    self.delivered += 1
                    if entry is not None and self._on_entry is not None:
                        self._on_entry(channel, entry[0], entry[1], payload)
                    else:
                        self._on_message(channel, payload)
        finally:
            self._delivering = False

    def presence_set(self, group: str, key: str, count: int) -> None:
        """Keep the count; a key's first connection publishes ``join``, its last ``leave``."""
        keys = self._presence.setdefault(group, {})
        before = keys.get(key, 0)
        if count:
            keys[key] = count
        else:
            keys.pop(key, None)
            if not keys:
                del self._presence[group]
        if (before == 0) != (count == 0):
            event = json.dumps({"event": "join" if count else "leave", "group": group, "key": key})
            self.publish(self._channels.presence(group), event.encode())

    def presence_query(self, group: str, ticket: int) -> None:
        """Answered at once."""
        if self._on_presence is not None:
            self._on_presence(ticket, dict(self._presence.get(group, {})), "")

    def link_opened(self, link: int, now: float) -> None:
        """Never called: this broker opens no link."""

    def link_data(self, link: int, data: bytes, now: float) -> None:
        """Never called: this broker opens no link."""

    def link_lost(self, link: int, now: float, error: str = "") -> None:
        """Never called: this broker opens no link."""

    def handle_timer(self, now: float) -> None:
        """No deadlines."""

    def next_deadline(self) -> float | None:
        """No deadlines."""
        return None

    def flush(self, now: float) -> None:
        """Nothing is owed to anyone: deliveries happened in ``publish``."""

    @property
    def ready(self) -> bool:
        """Always: there is nothing to wait for."""
        return True

    @property
    def can_publish(self) -> bool:
        """Always."""
        return True

    def not_ready_reason(self) -> str:
        """Never asked while ready; empty."""
        return ""

    @property
    def idle(self) -> bool:
        """Nothing is ever held."""
        return True

    @property
    def buffered_bytes(self) -> int:
        """Nothing is ever held, so senders are never paused for the broker."""
        return 0

    def pending_count(self) -> int:
        """Nothing is ever held."""
        return 0

    def subscribed_channels(self) -> set[bytes]:
        """The channels needed by name."""
        return set(self._needed)

    def samples(self) -> list[Sample]:
        """The memory broker's metrics."""
        return [
            ("wshub_subscriptions", "gauge", "Channels the broker delivers.", [("", len(self._needed))]),
            ("wshub_broker_published_total", "counter", "Messages published to the memory broker.",
             [("", self.published)]),
            ("wshub_broker_delivered_total", "counter", "Of those, messages on a needed channel.",
             [("", self.delivered)]),
        ]
