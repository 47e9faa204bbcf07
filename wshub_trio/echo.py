"""The echo application on trio: ``python -m wshub_trio.echo --address 127.0.0.1:9001``.

The Autobahn conformance target (docs/conformance.md) driven by the trio
``Server`` that drives a ``Hub``; the flags are ``wshub_asyncio.echo``'s. It
decides nothing itself.
"""

from __future__ import annotations

import sys

import trio

from wshub_asyncio.echo import echo_options
from wshub_core import EchoHub

from ._server import Server

__all__ = ["main", "serve"]


async def serve(host: str, port: int, hub: EchoHub) -> int:
    """Serve until SIGINT/SIGTERM; the exit status."""
    server = Server(hub)
    await server.listen(host=host, port=port)
    # Printed, not only logged: a parent that asked for port 0 reads the real one here.
    await server.serve_until_stopped(lambda: print(f"echo server listening on {host or '*'}:{server.port}",
                                                   flush=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    host, port, hub = echo_options(argv, prog="python -m wshub_trio.echo")
    try:
        return trio.run(serve, host, port, hub)
    except OSError as exc:  # e.g. the address is in use
        print(f"echo: cannot start: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
