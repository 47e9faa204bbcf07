"""EchoHub: every WebSocket message goes back to its sender, text as text, binary as binary.

It exists so that a conformance suite (Autobahn|Testsuite) can exercise the
real ``ClientConnection`` -- HTTP head, upgrade, ping/pong, fragmentation,
UTF-8, close handshake, size limit -- through the real asyncio shell, without
Redis. It owns a ``ClientTable`` and nothing else, and exposes the same
shell API as ``Hub`` (the ``Core`` protocol), so one shell server class drives
either. It never opens a link, so its link inputs have nothing to act on.

Rules:
1. Like ``Hub``: every method takes ``now`` and changes state; ``actions()``
   builds the output, one ``SendToClient`` per socket.
2. Nothing a client sends raises out of here.
3. It sends no ping of its own: a conformance client records unsolicited
   pings as received frames, and an echo client is there to be tested, not
   kept alive.
"""

from __future__ import annotations

import logging

from wsproto.frame_protocol import FrameProtocol

from ._actions import Action, StopListening, Stopped
from ._client import ClientConnection, CloseCode, HttpRequest, MessageReceived, Outcome
from ._clients import ClientTable
from ._deflate import Compressor

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


class EchoHub:
    """The echo state machine: a client table plus an echo for each message."""

    def __init__(
        self,
        *,
        path: str = "/",
        max_message_size: int = 16 * MiB,
        max_outbound_buffer: int = 32 * MiB,
        max_header_size: int = 16384,
        handshake_timeout: float = 10.0,
        write_wait: float = 30.0,
        compression: bool = False,
    ) -> None:
        """``compression``: accept permessage-deflate when offered, and echo compressed (Autobahn 12, 13)."""
        # Bytes held in the core while the socket's buffer is full. Reading is
        # paused meanwhile, so this only has to hold the echoes of one read
        # (up to one whole message).
        self._actions: list[Action] = []
        self._clients = ClientTable(sink=self._actions, on_outcomes=self._handle_outcomes, on_left=self._log_left,
                                    max_header_size=max_header_size,
                                    max_message_size=max_message_size, max_outbound_buffer=max_outbound_buffer,
                                    handshake_timeout=handshake_timeout, write_wait=write_wait, pong_wait=None,
                                    compression=compression)
        self._compressor = Compressor(threshold=0)
        self.path = path
        self.client_opened = self._clients.opened
        self.client_data = self._clients.data
        self.client_eof = self._clients.eof
        self.client_lost = self._clients.lost
        self.client_write_paused = self._clients.write_paused
        self.client_write_resumed = self._clients.write_resumed
        self.handle_timer = self._clients.handle_timer
        self.next_deadline = self._clients.next_deadline
        self._stopping = False
        self._stopped = False

    # -- shell API (the Core protocol): the client inputs, timer and deadline are the table's -----

    def start(self, now: float) -> None:
        """Nothing to open: the echo needs no link."""

    def clock(self, now: float, wall: float) -> None:
        """Ignored: the echo checks no token."""

    def link_opened(self, link: int, now: float) -> None:
        """Ignored: the echo emits no ``OpenLink``, so every link id is stale to it (as to ``Hub``)."""

    def link_data(self, link: int, data: bytes, now: float) -> None:
        """Ignored, as ``link_opened``."""

    def link_lost(self, link: int, now: float, error: str = "") -> None:
        """Ignored, as ``link_opened``."""

    def loop_lag(self, lag: float) -> None:
        """Ignored: the echo keeps no metrics."""

    def shutdown(self, now: float) -> None:
        """Stop accepting and close every client with 1001; ``Stopped`` once they are gone."""
        if self._stopping:
            return
        self._stopping = True
        self._actions.append(StopListening())
        self._clients.close_all(CloseCode.GOING_AWAY, "server shutting down")

    def actions(self) -> list[Action]:
        """Everything to do since the last call, in order; output is built here, once."""
        self._clients.flush(self._clients.now)
        if self._stopping and not self._stopped and self._clients.is_idle():
            self._stopped = True
            self._actions.append(Stopped())
        actions = self._actions[:]
        self._actions.clear()  # the table appends to this same list
        self._clients.pause_pending = False
        return actions

    def client_count(self) -> int:
        """Sockets in HTTP or WebSocket (closing ones are not counted)."""
        return self._clients.count()

    @property
    def pause_pending(self) -> bool:
        """Never set: the echo pauses reading only when a socket is full, from inside a write."""
        return self._clients.pause_pending

    # -- internals -----------------------------------------------------------------------

    def _handle_outcomes(self, client: ClientConnection, outcomes: list[Outcome], now: float) -> None:
        for outcome in outcomes:
            if isinstance(outcome, MessageReceived):
                # If this input also closed the connection, ClientConnection puts
                # the echo in front of its close frame.
                bits = client.deflate_bits
                frame = encode_echo(outcome.data, binary=outcome.binary) if bits is None else \
                    self._compressor.frame(outcome.data if outcome.binary else outcome.data.decode("utf-8"), bits)
                self._clients.send_frame(client.conn, frame)
            elif isinstance(outcome, HttpRequest):
                self._on_request(client, outcome, now)

    def _on_request(self, client: ClientConnection, request: HttpRequest, now: float) -> None:
        conn = client.conn
        path = request.target.decode("latin-1").partition("?")[0]
        if path != self.path:
            self._clients.answer(conn, 404, f"not found: {path}\n")
            return
        if b"websocket" not in (request.header(b"upgrade") or b"").lower():
            self._clients.answer(conn, 426, "this endpoint speaks WebSocket only\n",
                                 headers=(("upgrade", "websocket"),))
            return
        if self._stopping:
            self._clients.answer(conn, 503, "server shutting down\n")
            return
        if not self._clients.accept(conn, request, now):
            return
        # Frames that came in the same packet as the request head.
        self._handle_outcomes(client, client.pending_after_accept(), now)

    def _log_left(self, client: ClientConnection) -> None:
        if client.close_code:
            log.debug("client %d closed: code=%d reason=%s", client.conn, client.close_code,
                      client.close_reason, extra={"event": "close", "conn": client.conn,
                                                  "code": client.close_code, "reason": client.close_reason})
