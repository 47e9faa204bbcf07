"""A minimal interactive WebSocket client: ``python -m wshub_asyncio.client ws://HOST:PORT/ws?session_key=KEY``.

For trying the hub from a terminal with nothing but the hub's own dependencies
(wsproto and the standard library). Every message received is printed on
stdout as one line, ``< TEXT`` (binary messages as ``< binary, N bytes: HEX``);
every line typed on stdin is sent as one text message. Connection events go to
stderr. End of input (Ctrl-D) closes the connection with 1000; the program
exits 0 after a normal close and 1 when the hub refuses the handshake, cannot
be reached or the connection ends abnormally.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl
import sys
import threading
from typing import Any
from urllib.parse import urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

__all__ = ["main", "run"]


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _show(text: str) -> None:
    print("< " + text, flush=True)


def _describe_binary(data: bytes) -> str:
    shown = data[:32].hex(" ")
    return f"binary, {len(data)} bytes: {shown}" + (" ..." if len(data) > 32 else "")


def _stdin_lines(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None]) -> None:
    """Read stdin in a daemon thread (portable, unlike a pipe reader); ``None`` marks end of input."""
    try:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line.rstrip("\r\n"))
    finally:
        loop.call_soon_threadsafe(queue.put_nowait, None)


class _Session:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.open = False
        self.closed_code: int | None = None
        self.refused = False
        self.closing = False  # we sent a close frame (end of input)
        self._parts: list[bytes] = []
        self._reject_body = bytearray()
        self._reject_status = 0

    def send(self, event: Event) -> None:
        self.writer.write(self.ws.send(event))

    def handle(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, AcceptConnection):
                self.open = True
            elif isinstance(event, RejectConnection):
                self.refused = True
                self._reject_status = event.status_code
                if not event.has_body:
                    self._report_refusal()
            elif isinstance(event, RejectData):
                self._reject_body += event.data
                if event.body_finished:
                    self._report_refusal()
            elif isinstance(event, TextMessage):
                self._collect(event.data.encode(), event.message_finished, text=True)
            elif isinstance(event, BytesMessage):
                self._collect(bytes(event.data), event.message_finished, text=False)
            elif isinstance(event, Ping):
                self.send(event.response())
            elif isinstance(event, CloseConnection):
                self.closed_code = event.code
                reason = f" {event.reason!r}" if event.reason else ""
                _say(f"closed: code {event.code}{reason}")
                if not self.closing:
                    with contextlib.suppress(LocalProtocolError):
                        self.send(event.response())

    def _collect(self, chunk: bytes, finished: bool, *, text: bool) -> None:
        self._parts.append(chunk)
        if finished:
            data = b"".join(self._parts)
            self._parts = []
            _show(data.decode() if text else _describe_binary(data))

    def _report_refusal(self) -> None:
        body = bytes(self._reject_body).decode("utf-8", "replace").strip()
        _say(f"refused by the hub: HTTP {self._reject_status}" + (f" {body}" if body else ""))


async def run(url: str) -> int:
    """Connect to ``url``, print what arrives, send what stdin says; the exit status of the program."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        _say(f"not a ws:// or wss:// URL: {url}")
        return 2
    tls = parts.scheme == "wss"
    port = parts.port or (443 if tls else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        reader, writer = await asyncio.open_connection(parts.hostname, port,
                                                       ssl=ssl.create_default_context() if tls else None)
    except OSError as exc:
        _say(f"cannot reach {parts.hostname}:{port}: {exc}")
        return 1
    session = _Session(reader, writer)
    session.send(Request(host=parts.netloc.rpartition("@")[2], target=target))
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    reading = asyncio.ensure_future(reader.read(65536))
    typed: asyncio.Future[str | None] | None = None
    try:
        while True:
            waiting: set[asyncio.Future[Any]] = {reading}
            if typed is not None:
                waiting.add(typed)
            await writer.drain()
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if typed is not None and typed in done:
                line = typed.result()
                typed = None
                if line is None:  # end of input: close, then wait for the hub's close frame
                    session.send(CloseConnection(code=1000))
                    session.closing = True
                else:
                    session.send(TextMessage(data=line))
                    typed = asyncio.ensure_future(lines.get())
            if reading in done:
                data = reading.result()
                session.ws.receive_data(data or None)
                was_open = session.open
                try:
                    session.handle(list(session.ws.events()))
                except RemoteProtocolError as exc:
                    _say(f"protocol error from the hub: {exc}")
                    return 1
                if session.open and not was_open:
                    _say(f"connected to {url}; type a line to send it, Ctrl-D to close")
                    threading.Thread(target=_stdin_lines, args=(loop, lines), daemon=True).start()
                    typed = asyncio.ensure_future(lines.get())
                if session.refused and not data:
                    return 1
                if session.closed_code is not None or not data:
                    await writer.drain()
                    break
                reading = asyncio.ensure_future(reader.read(65536))
    except OSError as exc:
        _say(f"connection lost: {exc}")
        return 1
    finally:
        for task in (reading, typed):
            if task is not None:
                task.cancel()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    if session.refused:
        return 1
    if session.closed_code is None:
        _say("connection lost without a close frame")
        return 1
    return 0 if session.closed_code in (1000, 1001) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wshub_asyncio.client", description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="e.g. ws://127.0.0.1:8080/ws?session_key=alice")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(run(args.url))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
