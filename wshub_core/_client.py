"""One client socket: HTTP requests (h11), then WebSocket frames or a stream, then close.

Rules:
1. Nothing a peer sends raises out of this module: a bad request becomes an
   HTTP answer, a bad frame becomes a close frame with wsproto's code.
2. This module knows nothing of Redis, keys' groups or other clients; it
   reports what happened (``feed`` and ``pending`` return outcomes) and queues
   bytes in ``out``, which the table flushes once per input (one write per socket).
3. State changes happen inside the method that was called, before it returns;
   what a decision lets the buffered bytes complete is parsed only when the
   table asks (``pending``), after the hub's callback returned: no re-entrancy.

States (``ClientState``) and what each input does in each:

======== ============================================= =========================================
state    peer input (``feed`` / ``feed_eof``)          hub decision / table deadline
======== ============================================= =========================================
HTTP     bytes to h11; a whole head: REQUEST +          deadline (handshakeTimeout since the
         ``HttpRequest``; a bad head: 400/431/501,      cycle began): abort the first head,
         CLOSED. EOF: CLOSED                            close quietly after a keep-alive answer
REQUEST  bytes held for h11 (maxHeaderSize; more:       ``accept``: OPEN (or wsproto's 4xx);
         abort). EOF: CLOSED                            ``answer``: CLOSED, or HTTP if kept alive;
                                                        ``read_body``: BODY (413 at once: CLOSED);
                                                        ``start_stream``: STREAM; deadline: abort
BODY     bytes to h11; the whole body: WAITING +        ``answer``: CLOSED (body unread);
         ``HttpBody``; over the limit: 413, bad         deadline: 408, CLOSED
         chunks: 400 (CLOSED). EOF: CLOSED
WAITING  pipelined bytes held (maxHeaderSize; more:     ``answer``: HTTP if kept alive, else
         dropped, no keep-alive). EOF: CLOSED           CLOSED; ``start_stream``: STREAM;
                                                        no deadline of the table's own
OPEN     bytes to wsproto: ``MessageReceived``;         ``close``: close frame, CLOSED;
         a close or bad frame: CLOSED. EOF: CLOSED      keepalive, write stall, outbound bound
STREAM   bytes ignored (but seen). EOF: CLOSED          ``send_chunk``; ``close``: last chunk,
                                                        CLOSED; comment keepalive, write stall,
                                                        outbound bound (abort)
CLOSED   ignored (late bytes after we decided)          ignored; the table forgets it at flush
======== ============================================= =========================================
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from http import HTTPStatus

import h11
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    TextMessage,
)
from wsproto.extensions import Extension
from wsproto.handshake import WEBSOCKET_UPGRADE, WEBSOCKET_VERSION, server_extensions_handshake
from wsproto.utilities import RemoteProtocolError as WsRemoteProtocolError
from wsproto.utilities import generate_accept_token, split_comma_header

from ._deflate import BoundedDeflate

__all__ = [
    "ClientConnection",
    "ClientState",
    "CloseCode",
    "HttpBody",
    "HttpRequest",
    "MessageReceived",
    "Outcome",
]


class ClientState(enum.Enum):
    """Where a socket is; the module docstring says what each input does in each."""

    HTTP = "http"  # reading a request head (the first, or the next on a kept-alive connection)
    REQUEST = "request"  # a head was delivered; the hub decides (accept, answer, read_body, start_stream)
    BODY = "body"  # reading the request body the hub asked for
    WAITING = "waiting"  # the body was delivered; the hub answers when it can
    OPEN = "open"  # WebSocket established
    STREAM = "stream"  # a 200 whose body is open-ended chunks (Server-Sent Events)
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
    KICKED = 4000  # a backend closed the key's connections (DELETE /api/keys/KEY, client-kick:KEY)
    TOKEN_EXPIRED = 4001  # the connection's token (auth.jwt.*) reached its exp: reconnect with a fresh one


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpRequest:
    """A complete request head; the hub answers it or upgrades it."""

    method: bytes
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...]

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower case, as h11 gives names), or None."""
        for k, v in self.headers:
            if k == name:
                return v
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageReceived:
    """A complete message; ``binary`` says which opcode it came with (an echo must keep it)."""

    data: bytes
    binary: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpBody:
    """The whole body of the request the hub called ``read_body`` for (h11 decoded any chunking)."""

    data: bytes


Outcome = HttpRequest | MessageReceived | HttpBody

_HEADER_STATUS = {400: "malformed request", 431: "request head too large", 501: "not implemented"}
_OPEN = ClientState.OPEN  # feed() per read: a module global is a cheap load, a class attribute (3.11) is not
_LAST_CHUNK = b"0\r\n\r\n"  # RFC 9112 7.1: ends a chunked body (no trailers)


class ClientConnection:
    """The protocol state of one client; owned by the table, keyed by ``conn``."""

    __slots__ = (
        "conn",
        "state",
        "out",
        "out_bytes",
        "write_paused_since",
        "opened_at",
        "head_since",
        "last_seen",
        "last_ping",
        "close_code",
        "close_reason",
        "http_status",
        "kept_alive",
        "streaming",
        "abort",
        "_close_at",
        "_h11",
        "_ws",
        "_parts",
        "_size",
        "_max_message_size",
        "_head_bytes",
        "_max_header_size",
        "_head_request",
        "_content_length",
        "_request_keeps_alive",
        "_body_limit",
        "_held",
        "_refuse_keep_alive",
        "_chunked",
        "deflate_bits",
    )

    def __init__(self, *, conn: int, now: float, max_header_size: int, max_message_size: int) -> None:
        self.conn = conn
        self.state = ClientState.HTTP
        self.out: list[bytes] = []
        self.out_bytes = 0
        self.write_paused_since: float | None = None
        self.opened_at = now
        self.head_since = now  # when the wait for the current head began (the handshake deadline counts from it)
        self.last_seen = now
        self.last_ping = now  # OPEN: our last ping; STREAM: our last output (a comment is a ping)
        self.close_code = 0
        self.close_reason = ""
        self.http_status = 0  # the status of the HTTP answer that ended the connection, if one did
        self.kept_alive = 0  # answers after which the connection stayed open for another request
        self.streaming = False  # start_stream answered it (stays set after the close, for on_left)
        self.abort = False
        # Index in ``out`` of the close frame queued by the current input, until it is taken.
        self._close_at: int | None = None
        self._h11: h11.Connection | None = h11.Connection(
            h11.SERVER, max_incomplete_event_size=max_header_size
        )
        self._ws: Connection | None = None
        self._parts: list[bytes] = []  # a WebSocket message's fragments, or a request body's pieces
        self._size = 0  # their total size
        self._max_message_size = max_message_size
        # Bytes fed while reading the request head: what the head's size check measures
        # (h11 bounds only a head that is still incomplete).
        self._head_bytes = 0
        self._max_header_size = max_header_size
        self._head_request = False  # HEAD: answer without a body
        self._content_length: int | None = None  # the request's, when it is not chunked
        self._request_keeps_alive = False  # HTTP/1.1 and no ``Connection: close`` (h11's rule)
        self._body_limit = 0
        # Bytes waiting in h11's buffer behind a request (REQUEST, WAITING); OPEN: those handed
        # to wsproto with the head, until ``pending_after_accept`` reads them.
        self._held = 0
        self._refuse_keep_alive = False  # pipelined bytes were dropped: close after the answer
        self._chunked = False  # a stream's framing: chunked (HTTP/1.1) or close-delimited (HTTP/1.0)
        self.deflate_bits: int | None = None  # permessage-deflate negotiated: the server window (9-15)

    # -- input ---------------------------------------------------------------

    def feed(self, data: bytes, now: float) -> list[Outcome]:
        """Take bytes from the socket; return what the hub must act on."""
        self.last_seen = now
        state = self.state
        if state is _OPEN:
            assert self._ws is not None
            self._ws.receive_data(data)
            return self._ws_events()
        if not data:
            return []  # h11 would take b"" for EOF, which has its own input (feed_eof)
        if state is ClientState.HTTP:
            assert self._h11 is not None
            self._head_bytes += len(data)
            self._h11.receive_data(data)
            return self._http_event()
        if state is ClientState.BODY:
            assert self._h11 is not None
            self._h11.receive_data(data)
            return self._body_events()
        if state is ClientState.REQUEST or state is ClientState.WAITING:
            self._hold(data)
        return []  # STREAM: a stream's reader has nothing to say; CLOSED: late bytes after we decided

    def feed_eof(self) -> None:
        """The peer half-closed: nothing more will come, so we close too (a stream ends its body)."""
        if self.state is ClientState.STREAM:
            self._end_stream()
        if self.state is not ClientState.CLOSED:
            self._set_closed(1006, "connection closed without a close frame")

    def pending(self) -> list[Outcome]:
        """What the bytes already buffered complete now that the hub decided (read_body, a kept-alive answer).

        The table calls it after the hub's callback returned, until it returns nothing,
        so a body or pipelined request read with its head is delivered in the same input.
        """
        state = self.state
        if state is ClientState.BODY:
            return self._body_events()
        if state is ClientState.HTTP:
            return self._http_event()
        return []

    def _hold(self, data: bytes) -> None:
        """Bytes behind a request the hub has not answered: h11 parses them once the cycle ends.

        At most one head's worth (maxHeaderSize) is held. Before the hub decided,
        more is a flood: abort. While an answer is pending, more is dropped and
        the connection closes after that answer (RFC 9112 9.3.2 lets a client
        retry unanswered pipelined requests on a new connection).
        """
        if self._refuse_keep_alive:
            return
        if self._held + len(data) > self._max_header_size:
            if self.state is ClientState.REQUEST:
                self.close(0, f"over {self._max_header_size} bytes behind an undecided request", abort=True)
            else:
                self._refuse_keep_alive = True
            return
        assert self._h11 is not None
        self._h11.receive_data(data)
        self._held += len(data)

    def _http_event(self) -> list[Outcome]:
        conn = self._h11
        assert conn is not None
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            self.answer(status, f"{_HEADER_STATUS.get(status, 'bad request')}: {exc}\n")
            return []
        if isinstance(event, h11.Request):
            # h11 bounds only an incomplete head; one that arrived whole is measured here.
            held = len(conn.trailing_data[0])
            head = self._head_bytes - held
            if head > self._max_header_size:
                self.answer(431, f"request head too large: {head} bytes, limit {self._max_header_size}\n")
                return []
            self._held = held
            self._head_request = event.method == b"HEAD"
            headers = tuple(event.headers)  # one pass over h11's Headers (a Python __getitem__ per item)
            self._read_framing(event.http_version, headers)
            self.state = ClientState.REQUEST
            return [HttpRequest(method=event.method, target=event.target, headers=headers)]
        return []  # NEED_DATA: the hub decides on a request in the call that parsed it

    def _read_framing(self, http_version: bytes, headers: tuple[tuple[bytes, bytes], ...]) -> None:
        """What ``read_body`` and a keep-alive answer need from the head (h11 validated it)."""
        length: int | None = None
        chunked = False
        close = http_version < b"1.1"  # h11 keeps no HTTP/1.0 connection alive
        for name, value in headers:
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = True  # h11 accepts only chunked; it beats Content-Length (RFC 9112 6.3)
            elif name == b"connection" and b"close" in (t.strip() for t in value.lower().split(b",")):
                close = True
        self._content_length = None if chunked else length
        self._request_keeps_alive = not close

    def _body_events(self) -> list[Outcome]:
        conn = self._h11
        assert conn is not None
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                self.answer(exc.error_status_hint, f"malformed request body: {exc}\n")
                return []
            if isinstance(event, h11.Data):
                self._size += len(event.data)
                if self._size > self._body_limit:
                    self.answer(413, f"request body too large: {self._size} bytes, limit {self._body_limit}\n")
                    return []
                self._parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                parts = self._parts
                body = parts[0] if len(parts) == 1 else b"".join(parts)
                self._parts = []
                self._size = 0
                self._held = len(conn.trailing_data[0])
                self.state = ClientState.WAITING
                return [HttpBody(data=body)]
            else:
                return []  # NEED_DATA

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
                elif event.code == CloseCode.TOO_BIG:  # permessage-deflate inflated past the limit
                    self.close(CloseCode.TOO_BIG, f"message over {self._max_message_size} bytes")
                else:
                    # wsproto found a protocol error and hands us the code to send.
                    self.close(event.code, event.reason or "protocol error")
                break
        return outcomes

    # -- decisions the hub takes ----------------------------------------------

    def accept(self, request: HttpRequest, *, compression: bool = False) -> bool:
        """Upgrade to WebSocket; on a bad handshake answer with wsproto's status.

        ``request`` is the head h11 parsed: wsproto's checks and its 101 are run on
        it (``_upgrade_headers``) rather than on a second parse of the same bytes.
        ``compression``: accept permessage-deflate if the client offers it (``_deflate.py``).
        """
        conn = self._h11
        assert self.state is ClientState.REQUEST and conn is not None
        deflate = BoundedDeflate(max_message_size=self._max_message_size) if compression else None
        extensions: list[Extension] = [deflate] if deflate is not None else []
        try:
            headers = _upgrade_headers(request, extensions)
        except WsRemoteProtocolError as exc:
            hint = exc.event_hint
            assert isinstance(hint, RejectConnection)
            # e.g. 426 with Sec-WebSocket-Version: 13 (RFC 6455 4.4)
            self.answer(hint.status_code, f"bad WebSocket handshake: {exc}\n",
                        headers=tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in hint.headers))
            return False
        except UnicodeError as exc:  # wsproto decodes some header values as ASCII (Host as IDNA)
            self.answer(400, f"bad WebSocket handshake: header is not ASCII: {exc}\n")
            return False
        except ValueError:
            # wsproto's PerMessageDeflate.accept raises on a window size that is not a number (it declines
            # one out of range): decline it too, as RFC 7692 7 says for an invalid value.
            deflate = None
            extensions = []
            headers = _upgrade_headers(request, extensions)
        # h11 saw the Upgrade header (a switch proposal): its 101 hands the bytes after the head over.
        self._write(conn.send(h11.InformationalResponse(status_code=101, headers=headers,
                                                        reason=b"Switching Protocols")) or b"")
        if deflate is not None and deflate.enabled():
            self.deflate_bits = deflate.server_max_window_bits
        trailing = conn.trailing_data[0]
        self._held = len(trailing)
        self._h11 = None
        self._ws = Connection(ConnectionType.SERVER, extensions=extensions, trailing_data=trailing)
        self.state = ClientState.OPEN
        return True

    def pending_after_accept(self) -> list[Outcome]:
        """Frames that arrived in the same packet as the request head.

        Almost every connect has none: then wsproto's event generators are not started at all.
        """
        if self.state is not ClientState.OPEN or not self._held:
            return []
        self._held = 0
        return self._ws_events()

    def read_body(self, limit: int) -> None:
        """Read the request's body (at most ``limit`` bytes); ``pending`` delivers it as ``HttpBody``.

        A Content-Length over the limit is answered 413 at once, before any body
        byte is awaited; a client waiting for ``100 Continue`` gets it here.
        """
        assert self.state is ClientState.REQUEST and self._h11 is not None, "read_body answers a request head"
        length = self._content_length
        if length is not None and length > limit:
            self.answer(413, f"request body too large: {length} bytes, limit {limit}\n")
            return
        if self._h11.they_are_waiting_for_100_continue:
            proceed = h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
            self._write(self._h11.send(proceed) or b"")
        self._body_limit = limit
        self.state = ClientState.BODY

    def answer(self, status: int, body: str | bytes, *, headers: tuple[tuple[str, str], ...] = (),
               content_type: str = "text/plain; charset=utf-8", keep_alive: bool = False) -> bool:
        """Send a complete HTTP answer; True if the connection stays open for the next request.

        It stays open only if asked (``keep_alive``) and h11 allows it: HTTP/1.1,
        no ``Connection: close`` from the client, the request body read whole (or
        none), no pipelined bytes dropped. Otherwise the answer says
        ``connection: close`` and the socket closes. On a connection already
        CLOSED (the peer left first) it does nothing.
        """
        if self.state is ClientState.CLOSED:
            return False
        conn = self._h11
        assert conn is not None, f"no HTTP request to answer in state {self.state.value}"
        keep = keep_alive and self._may_keep_alive(conn)
        payload = body.encode() if isinstance(body, str) else body
        phrase = HTTPStatus(status).phrase.encode()  # every status the hub and h11's hints use is standard
        response = h11.Response(
            status_code=status,
            reason=phrase,
            headers=[
                ("content-type", content_type),
                ("content-length", str(len(payload))),
                *(() if keep else (("connection", "close"),)),
                *headers,
            ],
        )
        self._write(conn.send(response) or b"")
        if not self._head_request:
            self._write(conn.send(h11.Data(data=payload)) or b"")
        self._write(conn.send(h11.EndOfMessage()) or b"")
        if keep:
            conn.start_next_cycle()
            self.kept_alive += 1
            self._head_bytes = len(conn.trailing_data[0])  # pipelined bytes start the next head
            self._head_request = False  # an error answer to the next head has a body
            self.state = ClientState.HTTP
            return True
        self.http_status = status
        self._set_closed(0, f"HTTP {status}")
        return False

    def _may_keep_alive(self, conn: h11.Connection) -> bool:
        if self.state is not ClientState.REQUEST and self.state is not ClientState.WAITING:
            return False  # still reading the head or the body
        if not self._request_keeps_alive or self._refuse_keep_alive:
            return False
        if conn.their_state is h11.SEND_BODY:
            # The hub answered without reading the body: fine if there is none.
            try:
                return isinstance(conn.next_event(), h11.EndOfMessage)
            except h11.RemoteProtocolError:
                return False
        return conn.their_state is h11.DONE

    def start_stream(self, *, content_type: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        """Answer 200 with an open-ended body (chunked, or close-delimited for HTTP/1.0): STREAM.

        A HEAD request gets the head alone and the connection closes.
        """
        conn = self._h11
        assert self.state in (ClientState.REQUEST, ClientState.BODY, ClientState.WAITING) and conn is not None
        response = h11.Response(status_code=200, reason=b"OK", headers=[
            ("content-type", content_type), ("connection", "close"), *headers])
        self._write(conn.send(response) or b"")
        self.http_status = 200
        self.streaming = True
        if self._head_request:
            self._write(conn.send(h11.EndOfMessage()) or b"")
            self._set_closed(0, "HTTP 200")
            return
        # h11 chose the framing from the client's version; the chunks are framed here,
        # without copying their bytes (a broadcast chunk is one object for every stream).
        version = conn.their_http_version
        assert version is not None  # a request head was read
        self._chunked = version >= b"1.1"
        self._h11 = None
        self._parts = []
        self.state = ClientState.STREAM

    def send_chunk(self, data: bytes) -> None:
        """Queue one chunk of a stream's body; nothing in another state, nor an empty chunk (it would end it)."""
        if self.state is not ClientState.STREAM or not data:
            return
        if self._chunked:
            self._write(b"%x\r\n" % len(data))
            self._write(data)
            self._write(b"\r\n")
        else:
            self._write(data)

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
        """Queue a WebSocket ping (OPEN) for the keepalive."""
        assert self._ws is not None
        self._write(self._ws.send(Ping(payload=b"")))
        self.last_ping = now

    def close(self, code: int, reason: str, *, abort: bool = False) -> None:
        """Close from our side: a close frame if the WebSocket is open, a stream's last chunk; then TCP."""
        if self.state is ClientState.OPEN:
            assert self._ws is not None
            if self._ws.state is ConnectionState.OPEN:
                self._close_at = len(self.out)
                self._write(self._ws.send(CloseConnection(code=code, reason=reason)))
        elif self.state is ClientState.STREAM and not abort:
            self._end_stream()
        self._set_closed(code, reason)
        self.abort = abort

    def take_output(self) -> bytes:
        """Everything queued since the last call, as one write."""
        out = self.out
        data = out[0] if len(out) == 1 else b"".join(out)
        self.out = []
        self.out_bytes = 0
        self._close_at = None
        return data

    def _end_stream(self) -> None:
        if self._chunked:
            self._write(_LAST_CHUNK)  # a close-delimited body ends with the close itself

    def _write(self, data: bytes) -> None:
        self.out.append(data)
        self.out_bytes += len(data)

    def _set_closed(self, code: int, reason: str) -> None:
        self.state = ClientState.CLOSED
        self.close_code = code
        self.close_reason = reason
        self._ws = None
        self._h11 = None
        self._parts = []


def _upgrade_headers(request: HttpRequest, extensions: list[Extension]) -> list[tuple[bytes, bytes]]:
    """The 101's headers, or wsproto's ``RemoteProtocolError`` (its hint, its message) for a bad upgrade.

    This is wsproto's ``H11Handshake._process_connection_request`` and ``_accept``
    on the head h11 already parsed, in the same order with the same outcomes
    (tests/core/test_handshake.py compares them on generated heads): parsing the
    same bytes a second time was 29 % of a connect's instructions in
    bench/core.py (docs/benchmarks.md, issue 13). The rules
    are wsproto's, reproduced here rather than changed: a header given twice
    counts by its last value (Connection, Upgrade, Sec-WebSocket-Version), the
    accept token is computed from every Sec-WebSocket-Key joined by ", " (wsproto's
    ``normed_header_dict``), and a value wsproto decodes (Connection, the
    extension and subprotocol lists as ASCII, Host as IDNA) raises ``UnicodeError``.
    The target needs no check: h11 takes only visible ASCII there. ``ValueError``
    comes from an extension's ``accept`` (wsproto's ``server_extensions_handshake``).
    The 101 itself is written by h11, as wsproto's ``_accept`` has it written.
    """
    if request.method != b"GET":
        raise WsRemoteProtocolError("Request method must be GET", event_hint=RejectConnection())
    connection_tokens: list[str] | None = None
    offers: list[str] = []
    host = False
    keys: list[bytes] = []
    upgrade = b""
    version: bytes | None = None
    for name, value in request.headers:  # names are lower case (h11)
        if name == b"connection":
            connection_tokens = split_comma_header(value)
        elif name == b"host":
            value.decode("idna")
            host = True
        elif name == b"sec-websocket-extensions":
            offers.extend(split_comma_header(value))
        elif name == b"sec-websocket-key":
            keys.append(value)
        elif name == b"sec-websocket-protocol":
            split_comma_header(value)  # no subprotocol is chosen, but wsproto refuses a list that is not ASCII
        elif name == b"sec-websocket-version":
            version = value
        elif name == b"upgrade":
            upgrade = value
    if connection_tokens is None or not any(token.lower() == "upgrade" for token in connection_tokens):
        raise WsRemoteProtocolError("Missing header, 'Connection: Upgrade'", event_hint=RejectConnection())
    if version != WEBSOCKET_VERSION:
        raise WsRemoteProtocolError("Missing header, 'Sec-WebSocket-Version'", event_hint=RejectConnection(
            headers=[(b"Sec-WebSocket-Version", WEBSOCKET_VERSION)], status_code=426 if version else 400))
    if not keys:
        raise WsRemoteProtocolError("Missing header, 'Sec-WebSocket-Key'", event_hint=RejectConnection())
    if upgrade.lower() != WEBSOCKET_UPGRADE:
        raise WsRemoteProtocolError(f"Missing header, 'Upgrade: {WEBSOCKET_UPGRADE.decode()}'",
                                    event_hint=RejectConnection())
    if not host:
        raise WsRemoteProtocolError("Missing header, 'Host'", event_hint=RejectConnection())
    headers = [(b"Upgrade", WEBSOCKET_UPGRADE), (b"Connection", b"Upgrade"),
               (b"Sec-WebSocket-Accept", generate_accept_token(keys[0] if len(keys) == 1 else b", ".join(keys)))]
    accepts = server_extensions_handshake(offers, extensions) if extensions else None
    if accepts:
        headers.append((b"Sec-WebSocket-Extensions", accepts))
    return headers
