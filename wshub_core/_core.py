"""``Core``: what a shell drives, whichever core it is (``Hub``, ``EchoHub``).

A shell moves bytes, connection events and time into these methods, executes
``actions()`` in order after its inputs, and arms one timer at
``next_deadline()``. It is a typing protocol, not a base class: each core
composes a ``ClientTable`` and forwards to it, so no behaviour is inherited.
"""

from __future__ import annotations

from typing import Protocol

from ._actions import Action

__all__ = ["Core"]


class Core(Protocol):
    """The client half of the shell API, shared by every core."""

    def client_opened(self, now: float) -> int: ...

    def client_data(self, conn: int, data: bytes, now: float) -> None: ...

    def client_eof(self, conn: int, now: float) -> None: ...

    def client_lost(self, conn: int, now: float) -> None: ...

    def client_write_paused(self, conn: int, now: float) -> None: ...

    def client_write_resumed(self, conn: int, now: float) -> None: ...

    def handle_timer(self, now: float) -> None: ...

    def next_deadline(self) -> float | None: ...

    def shutdown(self, now: float) -> None: ...

    def actions(self) -> list[Action]: ...

    def client_count(self) -> int: ...

    @property
    def pause_pending(self) -> bool: ...
