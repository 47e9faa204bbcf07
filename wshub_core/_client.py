"""One client socket: HTTP request head, then WebSocket frames, then close.

Rules:
1. Nothing a peer sends raises out of this module: a bad request becomes an
   HTTP answer, a bad frame becomes a close frame with wsproto's code.
2. This module knows nothing of Redis, keys' groups or other clients; it
   reports what happened (``feed`` returns outcomes) and queues bytes in
   ``out``, which the hub flushes once per input (one write per socket).
3. State changes happen inside the method that was called, before it returns.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from http import HTTPStatus

import h11
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    TextMessage,
)
from wsproto.events import Request as WsRequest
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError as WsRemoteProtocolError

__all__ = [
    "ClientConnection",
    "ClientState",
    "CloseCode",
    "HttpRequest",
    "MessageReceived",
    "Outcome",
]


class ClientState(enum.Enum):
    HTTP = "http"  # reading the request head
    OPEN = "open"  # WebSocket established
    CLOSED = "closed"  # close frame or HTTP answer queued; the socket is being closed


class CloseCode(enum.IntEnum):
    """The close codes the hub closes with (RFC 6455 section 7.4.1).

    A slow consumer's 1008 is logged and counted but not delivered: its socket
    is full, so the connection is aborted and the client sees 1006.
    """

    NORMAL = 1000
    GOING_AWAY = 1001  # shutdown
    PROTOCOL_ERROR = 1002
    INVALID_DATA = 1007  # invalid UTF-8 in a text message
    POLICY = 1008  # slow consumer, no groups assigned in time
    TOO_BIG = 1009
    INTERNAL = 1011  # keepalive timeout (as the websockets library does)


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpRequest:
    """A complete request head; the hub answers it or upgrades it."""

    method: bytes
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...]

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageReceived:
    """A complete message; ``binary`` says which opcode it came with (an echo must keep it)."""

    data: bytes
    binary: bool = False


Outcome = HttpRequest | MessageReceived

_HEADER_STATUS = {400: "malformed request", 431: "request head too large", 501: "not implemented"}


class ClientConnection:
    """The protocol state of one client; owned by the hub, keyed by ``conn``."""

    __slots__ = (
        "conn",
        "state",
        "out",
        "out_bytes",
        "write_paused_since",
        "opened_at",
        "last_seen",
        "last_ping",
        "close_code",
        "close_reason",
        "http_status",
        "abort",
        "_close_at",
        "_h11",
        "_ws",
        "_parts",
        "_size",
        "_max_message_size",
        "_head",
        "_max_header_size",
        "_head_request",
    )

    def __init__(self, *, conn: int, now: float, max_header_size: int, max_message_size: int) -> None:
        self.conn = conn
        self.state = ClientState.HTTP
        self.out: list[bytes] = []
        self.out_bytes = 0
        self.write_paused_since: float | None = None
        self.opened_at = now
        self.last_seen = now
        self.last_ping = now
        self.close_code = 0
        self.close_reason = ""
        self.http_status = 0  # the status of our HTTP answer, if we gave one
        self.abort = False
        # Index in ``out`` of the close frame queued by the current input, until it is taken.
        self._close_at: int | None = None
        self._h11: h11.Connection | None = h11.Connection(
            h11.SERVER, max_incomplete_event_size=max_header_size
        )
        self._ws: Connection | None = None
        self._parts: list[bytes] = []
        self._size = 0
        self._max_message_size = max_message_size
        # Bytes fed while reading the request head: wsproto re-reads exactly these on
        # accept, which costs half of handing it the parsed headers (it would
        # serialise them and parse them again). Dropped once the head is answered.
        self._head = bytearray()
        self._max_header_size = max_header_size
        self._head_request = False  # HEAD: answer without a body

    # -- input ---------------------------------------------------------------

    def feed(self, data: bytes, now: float) -> list[Outcome]:
        """Take bytes from the socket; return what the hub must act on."""
        self.last_seen = now
        if self.state is ClientState.OPEN:
            assert self._ws is not None
            self._ws.receive_data(data)
            return self._ws_events()
        if self.state is ClientState.HTTP:
            assert self._h11 is not None
            self._head += data
            self._h11.receive_data(data)
            return self._http_event()
        return []  # late bytes after we decided to close

    def feed_eof(self) -> None:
        """The peer half-closed: nothing more will come, so we close too."""
        if self.state is not ClientState.CLOSED:
            self._set_closed(1006, "connection closed without a close frame")

    def _http_event(self) -> list[Outcome]:
        assert self._h11 is not None
        try:
            event = self._h11.next_event()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            self.answer(status, f"{_HEADER_STATUS.get(status, 'bad request')}: {exc}\n")
            return []
        if isinstance(event, h11.Request):
            # h11 bounds only an incomplete head; one that arrived whole is measured here.
            head = len(self._head) - len(self._h11.trailing_data[0])
            if head > self._max_header_size:
                self.answer(431, f"request head too large: {head} bytes, limit {self._max_header_size}\n")
                return []
            self._head_request = event.method == b"HEAD"
            return [
                HttpRequest(
                    method=event.method,
                    target=event.target,
                    headers=tuple((k, v) for k, v in event.headers),
                )
            ]
        return []  # NEED_DATA: the hub answers or upgrades a request in the call that parsed it

    def _ws_events(self) -> list[Outcome]:
        ws = self._ws
        assert ws is not None
        outcomes: list[Outcome] = []
        for event in ws.events():
            if isinstance(event, TextMessage | BytesMessage):
                chunk = event.data.encode() if isinstance(event.data, str) else bytes(event.data)
                self._size += len(chunk)
                if self._size > self._max_message_size:
                    self.close(CloseCode.TOO_BIG, f"message over {self._max_message_size} bytes")
                    break
                self._parts.append(chunk)
                if event.message_finished:
                    parts = self._parts
                    outcomes.append(MessageReceived(data=parts[0] if len(parts) == 1 else b"".join(parts),
                                                    binary=isinstance(event, BytesMessage)))
                    self._parts = []
                    self._size = 0
            elif isinstance(event, Ping):
                self._write(ws.send(event.response()))
            elif isinstance(event, Pong):
                pass  # last_seen was already refreshed by feed()
            elif isinstance(event, CloseConnection):
                if ws.state is ConnectionState.REMOTE_CLOSING:
                    # The peer closed: echo its code (RFC 6455 5.5.1), then close TCP.
                    self._close_at = len(self.out)
                    self._write(ws.send(event.response()))
                    self._set_closed(event.code, event.reason or "closed by client")
                else:
                    # wsproto found a protocol error and hands us the code to send.
                    self.close(event.code, event.reason or "protocol error")
                break
        return outcomes

    # -- decisions the hub takes ----------------------------------------------

    def accept(self, request: HttpRequest) -> bool:
        """Upgrade to WebSocket; on a bad handshake answer with wsproto's status."""
        assert self.state is ClientState.HTTP and self._h11 is not None
        handshake = H11Handshake(ConnectionType.SERVER)
        trailing, _closed = self._h11.trailing_data
        try:
            handshake.receive_data(bytes(self._head[: len(self._head) - len(trailing)]))
            for event in handshake.events():
                if isinstance(event, WsRequest):
                    self._write(handshake.send(AcceptConnection()))
        except WsRemoteProtocolError as exc:
            hint = exc.event_hint
            if isinstance(hint, RejectConnection):
                # e.g. 426 with Sec-WebSocket-Version: 13 (RFC 6455 4.4)
                headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in hint.headers)
                self.answer(hint.status_code, f"bad WebSocket handshake: {exc}\n", headers=headers)
            else:
                self.answer(400, f"bad WebSocket handshake: {exc}\n")
            return False
        except UnicodeError as exc:  # wsproto decodes some header values as ASCII
            self.answer(400, f"bad WebSocket handshake: header is not ASCII: {exc}\n")
            return False
        ws = handshake.connection
        assert ws is not None
        self._h11 = None
        self._head = bytearray()
        self._ws = ws
        self.state = ClientState.OPEN
        if trailing:
            ws.receive_data(bytes(trailing))
        return True

    def pending_after_accept(self) -> list[Outcome]:
        """Frames that arrived in the same packet as the request head."""
        return self._ws_events() if self.state is ClientState.OPEN else []

    def answer(self, status: int, body: str, *, headers: tuple[tuple[str, str], ...] = (),
               content_type: str = "text/plain; charset=utf-8") -> None:
        """Send a complete HTTP answer and close: the hub never keeps HTTP alive."""
        assert self._h11 is not None
        payload = body.encode()
        conn = self._h11
        phrase = HTTPStatus(status).phrase.encode()  # every status the hub and h11's hints use is standard
        response = h11.Response(
            status_code=status,
            reason=phrase,
            headers=[
                ("content-type", content_type),
                ("content-length", str(len(payload))),
                ("connection", "close"),
                *headers,
            ],
        )
        self._write(conn.send(response) or b"")
        if not self._head_request:
            self._write(conn.send(h11.Data(data=payload)) or b"")
        self._write(conn.send(h11.EndOfMessage()) or b"")
        self.http_status = status
        self._set_closed(0, f"HTTP {status}")

    def send_frame(self, frame: bytes) -> None:
        """Queue an already-encoded frame (encoded once for every member).

        A reply to a message that arrived in the same input as the peer's close,
        or as the frame that broke the protocol, still goes out, in front of our
        close frame: the peer sent that message first, and RFC 6455 (5.5.1)
        lets us send data until we send Close.
        """
        if self.state is ClientState.OPEN:
            self._write(frame)
        elif self._close_at is not None:
            self.out.insert(self._close_at, frame)
            self.out_bytes += len(frame)
            self._close_at += 1

    def ping(self, now: float) -> None:
        assert self._ws is not None
        self._write(self._ws.send(Ping(payload=b"")))
        self.last_ping = now

    def close(self, code: int, reason: str, *, abort: bool = False) -> None:
        """Close from our side: a close frame if the WebSocket is open, then TCP."""
        if self.state is ClientState.OPEN:
            assert self._ws is not None
            if self._ws.state is ConnectionState.OPEN:
                self._close_at = len(self.out)
                self._write(self._ws.send(CloseConnection(code=code, reason=reason)))
        self._set_closed(code, reason)
        self.abort = abort

    def take_output(self) -> bytes:
        out = self.out
        data = out[0] if len(out) == 1 else b"".join(out)
        self.out = []
        self.out_bytes = 0
        self._close_at = None
        return data

    def _write(self, data: bytes) -> None:
        self.out.append(data)
        self.out_bytes += len(data)

    def _set_closed(self, code: int, reason: str) -> None:
        self.state = ClientState.CLOSED
        self.close_code = code
        self.close_reason = reason
        self._ws = None
        self._h11 = None
        self._head = bytearray()
        self._parts = []

