"""The echo application: ``python -m wshub_asyncio.echo --address 127.0.0.1:9001``.

A conformance target (Autobahn|Testsuite, see docs/conformance.md): the real
core's ``ClientConnection`` behind an ``EchoHub``, driven by the very ``Server``
that drives a ``Hub`` -- ``asyncio.Protocol`` callbacks, actions executed in
order, one loop timer at the core's next deadline. It decides nothing itself.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from wshub_core import EchoHub
from wshub_core._echo import MiB

from ._server import Server

__all__ = ["echo_options", "main", "parse_address", "serve"]

log = logging.getLogger("wshub.echo")


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6, ``:PORT`` for every interface)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--address must be HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


async def serve(host: str, port: int, hub: EchoHub) -> int:
    """Serve until SIGINT/SIGTERM; the exit status."""
    server = Server(hub)
    await server.start(host=host, port=port)
    for sig in (signal.SIGINT, signal.SIGTERM):
        server.loop.add_signal_handler(sig, server.shutdown)
    # Printed, not only logged: a parent that asked for port 0 reads the real one here.
    print(f"echo server listening on {host or '*'}:{server.port}", flush=True)
    await server.stopped.wait()
    await server.close()
    return 0


def echo_options(argv: list[str] | None, *, prog: str) -> tuple[str, int, EchoHub]:
    """The echo's command line (every shell's echo takes the same flags): where to listen, and the core to drive."""
    parser = argparse.ArgumentParser(prog=prog,
                                     description="WebSocket echo server on the WS-Hub core (conformance target)")
    parser.add_argument("--address", default="127.0.0.1:9001", help="HOST:PORT to listen on (default %(default)s)")
    parser.add_argument("--path", default="/", help="the WebSocket path (default %(default)s)")
    parser.add_argument("--max-message-size", type=int, default=16 * MiB,
                        help="bytes; a larger message is closed with 1009 (default %(default)s)")
    parser.add_argument("--max-outbound-buffer", type=int, default=32 * MiB,
                        help="bytes held for a client that does not read (default %(default)s)")
    parser.add_argument("--compression", action="store_true",
                        help="accept permessage-deflate (RFC 7692) when offered: Autobahn sections 12 and 13")
    parser.add_argument("--debug", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    try:
        host, port = parse_address(args.address)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    hub = EchoHub(path=args.path, max_message_size=args.max_message_size,
                  max_outbound_buffer=args.max_outbound_buffer, compression=args.compression)
    return host, port, hub


def main(argv: list[str] | None = None) -> int:
    host, port, hub = echo_options(argv, prog="python -m wshub_asyncio.echo")
    try:
        return asyncio.run(serve(host, port, hub))
    except OSError as exc:  # e.g. the address is in use
        print(f"echo: cannot start: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
