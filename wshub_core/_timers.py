"""Deadlines: one heap for the whole hub, so the shell arms a single loop timer.

Rule: an owner may be woken *early* but never late. ``schedule`` only moves an
owner's deadline earlier; when an entry fires the owner recomputes what is due
and schedules again. So a busy client does not touch the heap on every frame.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable

__all__ = ["Timers"]


class Timers:
    __slots__ = ("_heap", "_current", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Hashable]] = []
        # owner -> (deadline, seq) of its live entry; other heap entries are stale.
        self._current: dict[Hashable, tuple[float, int]] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._current)

    def schedule(self, owner: Hashable, deadline: float) -> None:
        """Wake ``owner`` at ``deadline`` or earlier."""
        live = self._current.get(owner)
        if live is not None and live[0] <= deadline:
            return
        self._seq += 1
        self._current[owner] = (deadline, self._seq)
        heapq.heappush(self._heap, (deadline, self._seq, owner))

    def cancel(self, owner: Hashable) -> None:
        self._current.pop(owner, None)

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap:
            deadline, seq, owner = heap[0]
            if self._current.get(owner) == (deadline, seq):
                return deadline
            heapq.heappop(heap)
        return None

    def pop_due(self, now: float) -> list[Hashable]:
        """Owners whose deadline is at or before ``now``; their entries are consumed."""
        due = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, seq, owner = heapq.heappop(heap)
            if self._current.get(owner) == (deadline, seq):
                del self._current[owner]
                due.append(owner)
        return due
