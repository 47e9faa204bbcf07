"""``Core``: what a shell drives, whichever core it is (``Hub``, ``EchoHub``).

A shell moves bytes, connection events and time into these methods, executes
``actions()`` in order after its inputs, and arms one timer at
``next_deadline()``. It is a typing protocol, not a base class: each core
composes a ``ClientTable`` and forwards to it, so no behaviour is inherited.

The protocol is the whole shell API, links included, so one shell server
executes every action kind for any core; a core that opens no link (never
emits ``OpenLink``) still takes the link inputs, and ignores them as it would
any stale link id.
"""

from __future__ import annotations

from typing import Protocol

from ._actions import Action

__all__ = ["Core"]


class Core(Protocol):
    """The shell API shared by every core: lifecycle, clients, links, time and output."""

    def start(self, now: float) -> None: ...

    def clock(self, now: float, wall: float) -> None:
        """The wall-clock time at ``now``: right before ``start``, and before each ``handle_timer``."""

    def client_opened(self, now: float) -> int: ...

    def client_data(self, conn: int, data: bytes, now: float) -> None: ...

    def client_eof(self, conn: int, now: float) -> None: ...

    def client_lost(self, conn: int, now: float) -> None: ...

    def client_write_paused(self, conn: int, now: float) -> None: ...

    def client_write_resumed(self, conn: int, now: float) -> None: ...

    def link_opened(self, link: int, now: float) -> None: ...

    def link_data(self, link: int, data: bytes, now: float) -> None: ...

    def link_lost(self, link: int, now: float, error: str = "") -> None: ...

    def handle_timer(self, now: float) -> None: ...

    def loop_lag(self, lag: float) -> None: ...

    def next_deadline(self) -> float | None: ...

    def shutdown(self, now: float) -> None: ...

    def actions(self) -> list[Action]: ...

    def client_count(self) -> int: ...

    @property
    def pause_pending(self) -> bool: ...
