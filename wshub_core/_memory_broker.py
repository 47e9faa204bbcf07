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
"""

from __future__ import annotations

import json
from collections import deque

from ._broker import OnMessage, OnPresence, OnPublished
from ._channels import Channels
from ._metrics import Sample

__all__ = ["MemoryBroker"]


class MemoryBroker:
    """``Broker`` in one process."""

    def __init__(self, *, on_message: OnMessage, on_published: OnPublished | None = None,
                 channels: Channels | None = None, on_presence: OnPresence | None = None) -> None:
        """``on_message`` is the hub's delivery callback; ``on_published`` hears of ticketed publishes;
        ``channels`` names presence events, ``on_presence`` answers presence queries."""
        self._on_message = on_message
        self._on_published = on_published
        self._channels = channels or Channels("")
        self._on_presence = on_presence
        self._presence: dict[str, dict[str, int]] = {}  # group -> key -> connections (one hub: this one)
        self._needed: set[bytes] = set()
        self._prefixes: set[bytes] = set()  # pattern needs: every channel starting with one of them
        self._queue: deque[tuple[bytes, bytes]] = deque()
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
        self.published += 1
        self._queue.append((channel, payload))
        if ticket and self._on_published is not None:
            self._on_published(ticket, "")
        if self._delivering:
            return
        self._delivering = True
        try:
            while self._queue:
                channel, payload = self._queue.popleft()
                if channel in self._needed or (self._prefixes and channel.startswith(tuple(self._prefixes))):
                    self.delivered += 1
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
