"""WS-Hub's asyncio shell: ``python -m wshub_asyncio [--config PATH]``."""

from __future__ import annotations

from ._server import Server, run

__all__ = ["Server", "run"]
