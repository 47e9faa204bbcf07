"""``GET /api/status``: the hub's state as one JSON object, built by a pure function over plain values.

The hub hands in what it already keeps (counters, the broker's readiness and
link states, routing's group sizes, the last closes); this module decides the
shape of the answer (docs/protocol.md, "GET /api/status") and nothing else.

Rules:
1. ``status`` is pure: no clock (the caller passes ``now``), no state, no
   part of the hub; the same input gives the same dict.
2. A key is a credential (README): a close names its key by the fingerprint
   the logs use (``sha256:xxxxxxxx``), never by the key.
3. Everything is bounded: the ``top`` largest groups (not every group), the
   closes the caller's ring buffer holds (``LAST_CLOSES``).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["LAST_CLOSES", "TOP_GROUPS", "Close", "status"]

TOP_GROUPS = 10  # groups listed, by local members
LAST_CLOSES = 20  # closes the hub remembers (a ring buffer: the oldest goes first)


@dataclass(frozen=True, slots=True, kw_only=True)
class Close:
    """A WebSocket connection that closed: when (the core's time), whose key (fingerprint), code, reason."""

    at: float
    key: str  # "sha256:" + fingerprint(key)
    code: int
    reason: str


def status(*, now: float, broker: str, ready: bool, not_ready_reason: str, links: Mapping[str, str],
           connections: int, sockets: int, counters: Mapping[str, int], groups: Iterable[tuple[str, int]],
           closes: Iterable[Close], top: int = TOP_GROUPS) -> dict[str, object]:
    """The status object: ``groups`` is (name, local members) for every group; ``closes`` oldest first."""
    count = 0

    def counted() -> Iterable[tuple[str, int]]:
        nonlocal count
        for group in groups:
            count += 1
            yield group

    # Most members first, then by name: a stable order for groups of the same size.
    largest = heapq.nsmallest(top, counted(), key=lambda g: (-g[1], g[0]))
    return {
        "now": now,
        "broker": {"kind": broker, "ready": ready, "reason": None if ready else not_ready_reason,
                   "links": dict(links)},
        "connections": connections,
        "sockets": sockets,
        "counters": dict(counters),
        "groups": {"count": count, "top": [{"name": name, "members": members} for name, members in largest]},
        "closes": [{"ago": round(max(0.0, now - c.at), 3), "key": c.key, "code": c.code, "reason": c.reason}
                   for c in reversed(list(closes))],
    }
