"""Command line: load the config, then serve on asyncio (uvloop when installed) until SIGINT/SIGTERM.

Everything but the event loop is ``_cli``'s, shared with ``python -m wshub_trio``.
"""

from __future__ import annotations

import asyncio
import sys

from wshub_core import Config

from . import _cli
from ._server import run

__all__ = ["main"]


def serve(config: Config, *, config_file: str | None, json_errors: bool, reuseport: bool = False) -> int:
    """One hub process; uvloop is used when installed (the 'fast' extra)."""
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    return _cli.serve_guarded(lambda sock: asyncio.run(run(config, config_file=config_file, sock=sock)), config,
                              json_errors=json_errors, reuseport=reuseport)


def main(argv: list[str] | None = None) -> int:
    return _cli.main(argv, serve=serve)


if __name__ == "__main__":
    sys.exit(main())
