"""A no-I/O driver for ``ClientTable`` alone: a virtual clock, a scripted owner, raw bytes in, actions checked.

What it is responsible for:
- the clock: ``now`` moves only when a test calls ``advance``, and every
  deadline the table asks for fires in order (as ``harness.Harness`` does for a hub);
- the owner: ``Owner`` plays the part a hub plays, deciding on each request
  by its path (read the body and answer it, defer the answer, stream, upgrade,
  answer at once), so a test says what it sends, not how the hub reacts;
- the checks: every action is checked against the table's contract (no bytes
  after ``CloseClient``, one write per socket per flush: a ``SendToClient``, or its place in a
  ``SendToClients``).

What it must never do: open a socket, read a clock, or reach into the table's
private state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import h11

from wshub_core import CloseClient, PauseClient, ResumeClient, SendToClient, SendToClients
from wshub_core._actions import Action
from wshub_core._client import ClientConnection, HttpBody, HttpRequest, MessageReceived, Outcome
from wshub_core._clients import ClientTable

from .harness import ContractError

# Every status the table (and the owner below) may answer with on its own.
TABLE_STATUSES = frozenset({100, 200, 400, 408, 413, 431, 501})


def request(method: bytes = b"GET", target: bytes = b"/get", *, body: bytes | None = None,
            chunks: list[bytes] | None = None, version: bytes = b"HTTP/1.1",
            headers: list[tuple[bytes, bytes]] | None = None) -> bytes:
    """One raw request: a Content-Length ``body``, or ``chunks`` sent chunked (RFC 9112 7.1)."""
    lines = [method + b" " + target + b" " + version, b"Host: hub.test", *(k + b": " + v for k, v in headers or [])]
    payload = b""
    if body is not None:
        lines.append(b"Content-Length: %d" % len(body))
        payload = body
    elif chunks is not None:
        lines.append(b"Transfer-Encoding: chunked")
        payload = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c) + b"0\r\n\r\n"
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload


@dataclass
class Response:
    status: int
    headers: dict[bytes, bytes]
    body: bytes = b""
    complete: bool = False  # the whole body arrived (a stream that was not ended is incomplete)


def parse_responses(data: bytes, methods: list[bytes] | None = None, *, eof: bool = False) -> list[Response]:
    """What a real HTTP/1.1 client (h11) reads from ``data``, one response per request it sent.

    ``methods``: the request methods in order (HEAD answers have no body);
    ``eof``: the server closed, which ends a close-delimited body.
    """
    client = h11.Connection(h11.CLIENT)
    methods = list(methods or [b"GET"] * 64)
    client.send(h11.Request(method=methods.pop(0), target="/", headers=[("host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(data)
    if eof:
        client.receive_data(b"")
    out: list[Response] = []
    while True:
        try:
            event = client.next_event()
        except h11.RemoteProtocolError:
            return out  # the connection closed inside a head or a framed body
        if isinstance(event, h11.InformationalResponse):
            out.append(Response(status=event.status_code, headers=dict(event.headers), complete=True))
        elif isinstance(event, h11.Response):
            out.append(Response(status=event.status_code, headers=dict(event.headers)))
        elif isinstance(event, h11.Data):
            out[-1].body += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            out[-1].complete = True
            if client.our_state is not h11.DONE or client.their_state is not h11.DONE or not methods:
                return out
            client.start_next_cycle()
            client.send(h11.Request(method=methods.pop(0), target="/", headers=[("host", "x")]))
            client.send(h11.EndOfMessage())
        else:
            return out  # NEED_DATA, PAUSED, ConnectionClosed


@dataclass
class Sock:
    """One client socket as the driver sees it: what the table wrote and whether it closed."""

    conn: int
    raw: bytearray = field(default_factory=bytearray)
    writes: int = 0
    closed: bool = False
    abort: bool | None = None
    paused: bool = False
    left: ClientConnection | None = None  # the ClientConnection on_left handed over

    def responses(self, methods: list[bytes] | None = None) -> list[Response]:
        return parse_responses(bytes(self.raw), methods, eof=self.closed)


class Owner:
    """The owner's decisions, by path (what a hub would route):

    ``/get``: answer 200 at once (no body read); ``/echo``: read the body, answer
    it back; ``/defer``: read the body, answer when the test calls ``answer_deferred``;
    ``/stream``: start a text/event-stream; ``/ws``: upgrade; ``/undecided``: nothing.
    """

    def __init__(self, *, limit: int = 64, keep_alive: bool = True) -> None:
        self.limit = limit
        self.keep_alive = keep_alive
        self.table: ClientTable | None = None
        self.seen: list[tuple[int, Outcome]] = []
        self.deferred: list[tuple[int, bytes]] = []  # (conn, body) waiting for the test to answer
        self._targets: dict[int, bytes] = {}

    def on_outcomes(self, client: ClientConnection, outcomes: list[Outcome], now: float) -> None:
        table = self.table
        assert table is not None
        conn = client.conn
        for outcome in outcomes:
            self.seen.append((conn, outcome))
            if isinstance(outcome, HttpRequest):
                path = outcome.target.partition(b"?")[0]
                self._targets[conn] = path
                if path == b"/get":
                    table.answer(conn, 200, f"got {outcome.target.decode('latin-1')}\n", keep_alive=self.keep_alive)
                elif path in (b"/echo", b"/defer"):
                    table.read_body(conn, self.limit)
                elif path == b"/stream":
                    table.start_stream(conn, content_type="text/event-stream")
                elif path == b"/ws":
                    table.accept(conn, outcome, now)
                    self.on_outcomes(client, client.pending_after_accept(), now)
                elif path != b"/undecided":
                    table.answer(conn, 404, "not found\n", keep_alive=self.keep_alive)
            elif isinstance(outcome, HttpBody):
                if self._targets[conn] == b"/defer":
                    self.deferred.append((conn, outcome.data))
                else:
                    table.answer(conn, 200, outcome.data, content_type="application/octet-stream",
                                 keep_alive=self.keep_alive)
            elif isinstance(outcome, MessageReceived):
                pass

    def bodies(self, conn: int | None = None) -> list[bytes]:
        return [o.data for c, o in self.seen if isinstance(o, HttpBody) and conn in (None, c)]

    def requests(self, conn: int | None = None) -> list[HttpRequest]:
        return [o for c, o in self.seen if isinstance(o, HttpRequest) and conn in (None, c)]


class Driver:
    """A ``ClientTable`` with its owner, clock and sockets; every input is followed by a flush."""

    def __init__(self, *, owner: Owner | None = None, max_header_size: int = 1024, max_message_size: int = 1024,
                 max_outbound_buffer: int = 4096, handshake_timeout: float = 10.0, write_wait: float = 5.0,
                 pong_wait: float | None = 20.0) -> None:
        self.owner = owner or Owner()
        self.sink: list[Action] = []
        self.kept_alive: list[tuple[int, int]] = []
        self.table = ClientTable(
            sink=self.sink, on_outcomes=self.owner.on_outcomes, on_left=self._on_left,
            on_kept_alive=lambda client, status: self.kept_alive.append((client.conn, status)),
            max_header_size=max_header_size, max_message_size=max_message_size,
            max_outbound_buffer=max_outbound_buffer, handshake_timeout=handshake_timeout,
            write_wait=write_wait, pong_wait=pong_wait,
        )
        self.owner.table = self.table
        self.now = 0.0
        self.socks: dict[int, Sock] = {}
        self.log: list[tuple[float, Action]] = []

    # -- inputs ------------------------------------------------------------------------

    def open(self) -> Sock:
        conn = self.table.opened(self.now)
        sock = self.socks[conn] = Sock(conn)
        self.flush()
        return sock

    def send(self, sock: Sock, data: bytes, *, bytewise: bool = False) -> None:
        """``data`` from the peer: one read, or one read per byte."""
        for piece in ([data[i:i + 1] for i in range(len(data))] if bytewise else [data]):
            self.table.data(sock.conn, piece, self.now)
            self.flush()

    def eof(self, sock: Sock) -> None:
        self._event(self.table.eof, sock)

    def lose(self, sock: Sock) -> None:
        self._event(self.table.lost, sock)

    def write_paused(self, sock: Sock) -> None:
        self._event(self.table.write_paused, sock)

    def write_resumed(self, sock: Sock) -> None:
        self._event(self.table.write_resumed, sock)

    def _event(self, table_input: Callable[[int, float], None], sock: Sock) -> None:
        """A connection event from the shell, then the drain that must follow it."""
        table_input(sock.conn, self.now)
        self.flush()

    def answer_deferred(self, *, status: int = 200, keep_alive: bool | None = None) -> None:
        """Answer the oldest deferred request, as a hub would from a broker callback (no client input)."""
        conn, body = self.owner.deferred.pop(0)
        self.table.answer(conn, status, b"done: " + body,
                          keep_alive=self.owner.keep_alive if keep_alive is None else keep_alive)
        self.flush()

    def advance(self, dt: float) -> None:
        """Move the clock, firing every deadline due on the way, in order."""
        end = self.now + dt
        while (deadline := self.table.next_deadline()) is not None and deadline <= end:
            self.now = max(self.now, deadline)
            self.table.handle_timer(self.now)
            self.flush()
        self.now = end

    def flush(self) -> list[Action]:
        self.table.flush(self.now)
        actions = self.sink[:]
        self.sink.clear()
        self.table.pause_pending = False
        written: set[int] = set()
        for action in actions:
            self.log.append((self.now, action))
            if isinstance(action, SendToClients):
                if len(set(action.conns)) != len(action.conns) or len(action.conns) < 2:
                    raise ContractError(f"SendToClients needs two distinct conns or more: {action!r}")
                for conn in action.conns:
                    self._write(conn, action.data, action, written)
                continue
            sock = self.socks.get(getattr(action, "conn", -1))
            if sock is None:
                raise ContractError(f"action for an unknown socket: {action!r}")
            if isinstance(action, SendToClient):
                self._write(sock.conn, action.data, action, written)
            elif isinstance(action, CloseClient):
                if sock.closed and not action.abort:
                    raise ContractError(f"CloseClient twice: {action!r}")
                sock.closed = True
                sock.abort = action.abort if sock.abort is None else sock.abort or action.abort
            elif isinstance(action, PauseClient):
                sock.paused = True
            elif isinstance(action, ResumeClient):
                sock.paused = False
        return actions

    def _write(self, conn: int, data: bytes, action: Action, written: set[int]) -> None:
        sock = self.socks.get(conn)
        if sock is None:
            raise ContractError(f"action for an unknown socket: {action!r}")
        if sock.closed:
            raise ContractError(f"bytes after CloseClient: {action!r}")
        if conn in written:
            raise ContractError(f"two writes to one socket in one flush: {action!r}")
        written.add(conn)
        sock.raw += data
        sock.writes += 1

    def actions_of(self, sock: Sock, since: float = 0.0) -> list[Action]:
        return [a for t, a in self.log if (getattr(a, "conn", None) == sock.conn
                                           or sock.conn in getattr(a, "conns", ())) and t >= since]

    def _on_left(self, client: ClientConnection) -> None:
        sock = self.socks[client.conn]
        if sock.left is not None:
            raise ContractError(f"on_left twice for {client.conn}")
        sock.left = client
