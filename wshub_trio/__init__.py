"""WS-Hub's trio shell: ``python -m wshub_trio [--config PATH]``, the same hub as ``python -m wshub_asyncio``."""

from __future__ import annotations

from ._server import Server, run

__all__ = ["Server", "run"]
