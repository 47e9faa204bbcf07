"""Presence on this hub: how many local connections each key has in each group, told to the broker.

The hub calls ``add``/``remove`` as a connection joins or leaves a group; the
broker stores this hub's counts where every hub can read them and publishes
``join``/``leave`` (``Broker.presence_set``). A drop to zero is held back for
``presence.grace``: a page reload closes and reopens within it, and nobody
hears the key leave and come back.

Rules:
1. Every change is told to the broker at once, except a drop to zero, which
   waits out the grace; a connection back within it cancels the drop.
2. At shutdown there is no grace: the hub tells every drop now, so a stopped
   hub leaves no entry behind.
"""

from __future__ import annotations

from ._broker import Broker
from ._timers import Timers

__all__ = ["Presence"]


class Presence:
    """Local presence counts and their grace timers."""

    __slots__ = ("_broker", "_grace", "_counts", "_timers")

    def __init__(self, *, broker: Broker, grace: float) -> None:
        self._broker = broker
        self._grace = grace
        self._counts: dict[tuple[str, str], int] = {}  # (group, key) -> local connections (0: leaving)
        self._timers = Timers()  # (group, key) -> when its drop to zero is told

    def add(self, group: str, key: str) -> None:
        """A connection of ``key`` joined ``group``."""
        entry = (group, key)
        count = self._counts.get(entry, 0) + 1
        self._counts[entry] = count
        self._timers.cancel(entry)
        self._broker.presence_set(group, key, count)

    def remove(self, group: str, key: str, now: float) -> None:
        """A connection of ``key`` left ``group`` (closed, or its groups changed)."""
        entry = (group, key)
        count = self._counts.get(entry, 0) - 1
        if count > 0:
            self._counts[entry] = count
            self._broker.presence_set(group, key, count)
        elif count == 0:
            self._counts[entry] = 0
            if self._grace:
                self._timers.schedule(entry, now + self._grace)
            else:
                self._leave(entry)

    def handle_timer(self, now: float) -> None:
        """Drops whose grace passed with no connection back."""
        for entry in self._timers.pop_due(now):
            assert isinstance(entry, tuple)
            if self._counts.get(entry) == 0:
                self._leave(entry)

    def next_deadline(self) -> float | None:
        """The earliest grace that ends."""
        return self._timers.next_deadline()

    def shutdown(self) -> None:
        """No grace from now on (rule 2): drops waiting are told now, later ones at once."""
        self._grace = 0.0
        for entry, count in list(self._counts.items()):
            if count == 0:
                self._timers.cancel(entry)
                self._leave(entry)

    def is_empty(self) -> bool:
        return not self._counts

    def _leave(self, entry: tuple[str, str]) -> None:
        del self._counts[entry]
        self._broker.presence_set(entry[0], entry[1], 0)
