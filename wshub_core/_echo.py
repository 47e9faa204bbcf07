"""EchoHub: every WebSocket message goes back to its sender, text as text, binary as binary.

It exists so that a conformance suite (Autobahn|Testsuite) can exercise the
real ``ClientConnection`` -- HTTP head, upgrade, ping/pong, fragmentation,
UTF-8, close handshake, size limit -- through the real asyncio shell, without
Redis. It exposes the client half of ``Hub``'s shell API, so one shell
protocol class can drive either.

Rules:
1. Like ``Hub``: every method takes ``now`` and appends actions; output for one
   socket produced by one call goes out as one ``SendToClient``.
2. Nothing a client sends raises out of here.
3. It sends no ping of its own: a conformance client records unsolicited
   pings as received frames, and an echo client is there to be tested, not
   kept alive.
"""

from __future__ import annotations

import logging

from wsproto.frame_protocol import FrameProtocol

from ._base import BaseHub
from ._client import ClientConnection, HttpRequest, MessageReceived, Outcome

__all__ = ["EchoHub"]

log = logging.getLogger("wshub.echo")

_ENCODER = FrameProtocol(client=False, extensions=[])  # server frames are unmasked; fin=True keeps it stateless

MiB = 1024 * 1024


def encode_echo(data: bytes, *, binary: bool) -> bytes:
    """One unfragmented frame of the same kind as the message received."""
    if binary:
        return bytes(_ENCODER.send_data(data, fin=True))
    # ClientConnection validated the UTF-8 (wsproto decoded it) before handing us bytes.
    return bytes(_ENCODER.send_data(data.decode("utf-8"), fin=True))


class EchoHub(BaseHub):
    """The echo state machine: ``BaseHub``'s client handling plus an echo for each message."""

    def __init__(
        self,
        *,
        path: str = "/",
        max_message_size: int = 16 * MiB,
        max_outbound_buffer: int = 32 * MiB,
        max_header_size: int = 16384,
        handshake_timeout: float = 10.0,
        write_wait: float = 30.0,
    ) -> None:
        # Bytes held in the core while the socket's buffer is full. Reading is
        # paused meanwhile, so this only has to hold the echoes of one read
        # (up to one whole message).
        super().__init__(max_header_size=max_header_size, max_message_size=max_message_size,
                         max_outbound_buffer=max_outbound_buffer, handshake_timeout=handshake_timeout,
                         write_wait=write_wait)
        self.path = path

    def _handle_outcomes(self, client: ClientConnection, outcomes: list[Outcome], now: float) -> None:
        for outcome in outcomes:
            if isinstance(outcome, MessageReceived):
                # If this input also closed the connection, ClientConnection puts
                # the echo in front of its close frame.
                client.send_frame(encode_echo(outcome.data, binary=outcome.binary))
            elif isinstance(outcome, HttpRequest):
                self._on_request(client, outcome, now)

    def _on_request(self, client: ClientConnection, request: HttpRequest, now: float) -> None:
        path = request.target.decode("latin-1").partition("?")[0]
        if path != self.path:
            client.answer(404, f"not found: {path}\n")
            return
        if b"websocket" not in (request.header(b"upgrade") or b"").lower():
            client.answer(426, "this endpoint speaks WebSocket only\n", headers=(("upgrade", "websocket"),))
            return
        if self._stopping:
            client.answer(503, "server shutting down\n")
            return
        if not client.accept(request):
            return
        self._timers.cancel(client.conn)  # no handshake deadline any more, and no keepalive
        # Frames that came in the same packet as the request head.
        self._handle_outcomes(client, client.pending_after_accept(), now)

    def _on_forget(self, client: ClientConnection) -> None:
        if client.close_code:
            log.debug("client %d closed: code=%d reason=%s", client.conn, client.close_code, client.close_reason,
                      extra={"event": "close", "conn": client.conn, "code": client.close_code,
                             "reason": client.close_reason})
