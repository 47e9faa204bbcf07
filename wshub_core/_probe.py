"""Stall detection: the subscriber link must deliver a probe the command link published to it.

A link can answer PING and still deliver nothing (a proxy that answers but
does not forward pub/sub, subscriptions a server dropped, a wedged path), so
every ``interval`` the broker PUBLISHes a probe on a channel only this
subscriber link is subscribed to — ``<prefix>probe:<hub id>:<link id>``, a new
one per link — and expects it back before the next probe is due. One that
does not come back in time is a stall: the broker drops the subscriber link
and redials it. A stall is therefore found within ``2 x interval`` of its
start.

Rules:
1. No clock or randomness: the hub id is drawn from the seed and the start
   time the broker passes, so a replay names the same channels.
2. A probe is judged only while both links are READY and the probe's
   subscription is confirmed; a link going down abandons the probe in flight
   (its PUBLISH is dropped, not resent, on a reconnect).
"""

from __future__ import annotations

import random

__all__ = ["Probe"]

# The probe's PUBLISH tickets: negative like presence's (``_redis_presence.py``, from -1 down), far below them.
_TICKETS = -(1 << 62)


class Probe:
    """The probe of one broker: its channel for the current subscriber link, and the probe in flight."""

    __slots__ = ("interval", "channel", "confirmed", "sent_at", "answered", "next_at", "_head", "_seq")

    def __init__(self, *, prefix: bytes, interval: float) -> None:
        self.interval = interval  # 0: no probe at all
        self.channel = b""  # the current subscriber link's probe channel (b"": none)
        self.confirmed = False  # its SUBSCRIBE was confirmed
        self.sent_at: float | None = None  # when the probe in flight was published
        self.answered = False  # Redis answered the probe's PUBLISH (the command link works)
        self.next_at = 0.0  # when the next probe is due
        self._head = prefix + b"probe:"
        self._seq = 0  # the probe in flight is b"%d" % _seq

    @property
    def enabled(self) -> bool:
        """``redis.probeInterval`` is not 0."""
        return self.interval > 0

    def start(self, *, seed: int, now: float) -> None:
        """Draw the hub id (channels of two hubs on one Redis never meet)."""
        hub_id = random.Random(f"{seed}:{now!r}").getrandbits(48)
        self._head += b"%012x:" % hub_id

    def link_up(self, link: int, now: float, tag: bytes = b"") -> bytes:
        """The subscriber link ``link`` is READY: the channel it must subscribe; the first probe is due now.

        ``tag`` ends the name (a Cluster's ``{hash tag}``, which puts the channel in a slot of the link's node).
        """
        self.channel = self._head + b"%d" % link + tag
        self.confirmed = False
        self.sent_at = None
        self.next_at = now
        return self.channel

    def link_down(self) -> None:
        """The subscriber link is gone: its channel with it."""
        self.channel = b""
        self.confirmed = False
        self.sent_at = None

    def abandon(self) -> None:
        """The command link is gone: the probe in flight will never be published; send another when it is back."""
        self.sent_at = None

    def send(self, now: float) -> tuple[bytes, int]:
        """The probe to publish now: its payload and the ticket its PUBLISH reply comes back with."""
        self._seq += 1
        self.sent_at = now
        self.answered = False
        return b"%d" % self._seq, _TICKETS - self._seq

    @staticmethod
    def owns(ticket: int) -> bool:
        """``ticket`` is a probe's (``send``), not the API's or presence's."""
        return ticket < _TICKETS

    def acknowledged(self, ticket: int) -> None:
        """Redis answered a probe's PUBLISH (``ticket`` as ``send`` gave it)."""
        if ticket == _TICKETS - self._seq:
            self.answered = True

    def received(self, payload: bytes) -> bool:
        """A probe came back on the subscriber link; True if it is the one in flight (the link delivers)."""
        if self.sent_at is None or payload != b"%d" % self._seq:
            return False  # an older probe, delivered late: not proof the newest one will be
        self.next_at = self.sent_at + self.interval
        self.sent_at = None
        return True

    def deadline(self) -> float:
        """When the probe in flight is overdue, or when the next one is due."""
        return self.next_at if self.sent_at is None else self.sent_at + self.interval
