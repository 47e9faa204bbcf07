"""Command line: load the config, then serve on trio until SIGINT/SIGTERM.

The command line, config, logging, open-file limit, workers and exit codes
are ``wshub_asyncio._cli``'s, shared with ``python -m wshub_asyncio``; only the
event loop differs. ``workers > 1`` works as there: the supervisor forks
before any loop exists, and each worker runs ``trio.run`` on its own
``SO_REUSEPORT`` socket.
"""

from __future__ import annotations

import sys

import trio

from wshub_asyncio import _cli
from wshub_core import Config

from ._server import run

__all__ = ["main"]


def serve(config: Config, *, config_file: str | None, json_errors: bool, reuseport: bool = False) -> int:
    """One hub process on trio."""
    return _cli.serve_guarded(lambda sock: trio.run(lambda: run(config, config_file=config_file, sock=sock)),
                              config, json_errors=json_errors, reuseport=reuseport)


def main(argv: list[str] | None = None) -> int:
    return _cli.main(argv, serve=serve)


if __name__ == "__main__":
    sys.exit(main())
