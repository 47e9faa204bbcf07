"""The broker seam: what the hub asks of a message broker, and what it hears back.

The hub says which channels it needs and releases, and publishes; a broker
delivers messages on needed channels, confirms when a need is in effect (so
an announcement whose answer comes on that channel cannot be missed), and
tells the hub when its publisher came back after an outage (announcements
that were dropped instead of resent must be made again). It reports its
readiness with a reason, and how much it holds for an absent server.

Rules:
1. The hub never touches a wire format (no RESP); a broker never knows
   WebSocket clients: channels and payloads are bytes, and the group and key
   names of presence are opaque strings it stores and counts.
2. A broker owns its links (dial, prelude, reply deadline, idle ping,
   backoff) and their deadlines; the hub's next deadline is the minimum of
   the broker's, the client table's and its own.
3. A link is an opaque id the broker picks for each dial (``OpenLink``) and
   never reuses. Link input for an id that is not one of its current links
   (a dial it abandoned, a link it closed) is stale and ignored.
4. Events reach the hub through the callbacks it gave at construction, in the
   call that caused them; actions go to the hub's action list (``sink``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ._metrics import Sample

__all__ = ["Broker", "OnConfirmed", "OnEntry", "OnHistory", "OnMessage", "OnPresence", "OnPublished",
           "OnPublisherBack", "Sample"]

OnMessage = Callable[[bytes, bytes], None]  # (channel, payload) on a needed channel
OnConfirmed = Callable[[bytes], None]  # the latest need() of a channel is in effect
OnPublisherBack = Callable[[], None]  # publishing works again after an outage
OnPublished = Callable[[int, str, str], None]  # (ticket, error, position): taken (error "") or refused
OnEntry = Callable[[bytes, str, str, bytes], None]  # (channel, position, previous position, payload): with history
# (ticket, the history's last position or "", entries (position, previous, payload) or None on error, error)
OnHistory = Callable[[int, str, "list[tuple[str, str, bytes]] | None", str], None]
OnPresence = Callable[[int, "dict[str, int] | None", str], None]  # (ticket, key -> connections, error)


class Broker(Protocol):
    """A message broker as the hub sees it."""

    now: float  # time of the latest link input (the hub builds its output at the latest input's time)

    def start(self, now: float) -> None:
        """Open what the broker needs (its links)."""

    def need(self, channel: bytes) -> None:
        """Deliver ``channel`` from now on (the hub calls it once per channel, on 0 -> 1 users)."""

    def release(self, channel: bytes) -> None:
        """``channel`` is no longer needed (on 1 -> 0 users)."""

    def need_prefix(self, prefix: bytes) -> None:
        """Deliver every channel that starts with ``prefix`` (the event stream's ``client-data:*``)."""

    def release_prefix(self, prefix: bytes) -> None:
        """``prefix`` is no longer needed (channels needed by name stay)."""

    def is_confirmed(self, channel: bytes) -> bool:
        """The latest need of ``channel`` is in effect at the server."""

    def publish(self, channel: bytes, payload: bytes, *, resend: bool = True, ticket: int = 0) -> None:
        """Send ``payload`` on ``channel``; ``resend=False``: drop it, not resend it, after an outage.

        A nonzero ``ticket`` asks for ``on_published(ticket, error)`` once the server took it (or refused it).
        """

    def publish_history(self, channel: bytes, payload: bytes, *, message_id: bytes = b"", ticket: int = 0) -> None:
        """Append ``payload`` to ``channel``'s history and publish it as an entry (``on_entry`` on every hub).

        ``on_published(ticket, error, position)`` gives its position; a
        ``message_id`` seen within ``history.ttl`` is not published again (its
        first position is answered). Without history (``history_error``) it is
        a plain ``publish``.
        """

    def read_history(self, channel: bytes, after: str, count: int, ticket: int) -> None:
        """Up to ``count`` entries of ``channel``'s history after position ``after``: ``on_history(ticket, ...)``.

        ``count`` 0 asks only where the history ends.
        """

    @property
    def history_error(self) -> str:
        """Why this broker has no history now ("" when it has)."""

    def presence_set(self, group: str, key: str, count: int) -> None:
        """This hub has ``count`` connections of ``key`` in ``group`` now (0: none).

        The broker keeps every hub's counts where each can read them (with
        ``presence.enabled``) and publishes ``join`` when a key's first
        connection anywhere comes, ``leave`` when its last one goes, on
        ``Channels.presence(group)``. Groups and keys are opaque names to it.
        """

    def presence_query(self, group: str, ticket: int) -> None:
        """Every hub's keys in ``group`` with their connection counts: ``on_presence(ticket, ...)`` later."""

    def link_opened(self, link: int, now: float) -> None:
        """The shell opened the link the broker asked for (``OpenLink``)."""

    def link_data(self, link: int, data: bytes, now: float) -> None:
        """Bytes arrived on a link."""

    def link_lost(self, link: int, now: float, error: str = "") -> None:
        """A link dropped or could not be opened (idempotent); ``error`` in the OS's words."""

    def handle_timer(self, now: float) -> None:
        """Act on the broker's due deadlines."""

    def next_deadline(self) -> float | None:
        """The broker's earliest deadline."""

    def flush(self, now: float) -> None:
        """Queue what is owed to the links (pipelined: one write per link)."""

    @property
    def ready(self) -> bool:
        """Every link up and every needed channel confirmed."""

    @property
    def can_publish(self) -> bool:
        """A publish made now is taken at once (the HTTP API refuses calls with 503 otherwise)."""

    def not_ready_reason(self) -> str:
        """Why ``ready`` is false, for /readyz."""

    @property
    def idle(self) -> bool:
        """Nothing published is still waiting for the server (a shutdown may finish)."""

    @property
    def buffered_bytes(self) -> int:
        """Bytes of published messages not yet acknowledged (the hub pauses senders above its bound)."""

    def pending_count(self) -> int:
        """Published messages not yet acknowledged."""

    def subscribed_channels(self) -> set[bytes]:
        """Channels the broker has asked the server for."""

    def samples(self) -> list[Sample]:
        """The broker's metrics."""
