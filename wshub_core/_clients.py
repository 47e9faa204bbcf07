"""The client table: every client socket of one core, from accept to the last byte.

A core (``Hub``, ``EchoHub``) owns one table and talks to it in commands
(answer, accept, read_body, start_stream, send, close, pause/resume reading
for a reason); the table reports what the sockets did (outcomes, and the
clients that left) and owns every per-socket deadline: handshake (and request
body, and a kept-alive connection's idle wait), keepalive, write stall, the
abort of a graceful close that cannot flush.

Rules:
1. The table never knows channels, groups or brokers; a core never reaches
   into its dictionaries. What a core needs to know it asks (``get``,
   counts) or is told through the callbacks it gave: ``on_outcomes``
   (a request head, a request body, messages), ``on_left`` (a client
   forgotten) and, optionally, ``on_kept_alive`` (an answer after which the
   connection stayed open).
   The shell's client inputs go straight to the table's methods (a core
   binds them as its own ``client_*`` methods), so no core repeats them.
2. Inputs only change state and queue the actions that must follow at once
   (pause, resume, abort); ``flush(now)`` builds the output: one
   ``SendToClient`` per socket with everything queued since the last flush.
3. A socket is read while its set of pause reasons is empty. The reasons are
   data (``Pause``), so "the socket is full" and "the broker is full" cannot
   resume each other's pause.
4. A client that reached ``CLOSED`` takes no more input, and leaves at the
   next flush, which also hands the shell its ``CloseClient``.
5. A graceful ``CloseClient`` (the transport flushes, then closes) is not the
   end of the socket: a peer that does not read would keep it open forever.
   Until the shell reports ``lost`` the socket is *closing*, and at its abort
   deadline (``writeWait`` after the close, or after the write pause that was
   already running) the table sends ``CloseClient(abort=True)``. Closing
   sockets are not clients (``count()``), but ``is_idle()`` waits for them.
6. A decision that lets buffered bytes parse further (``read_body``, an answer
   that keeps the connection alive) only changes state; the table parses on
   after the callback returns, in a loop (``ClientConnection.pending``), so a
   body or a pipelined request read with its head is delivered in the same
   ``data()`` call. A decision taken outside ``on_outcomes`` (a deferred
   answer) is parsed on at the start of the next ``flush``, before output is
   built: never from inside the owner's own call.
7. Times the table cannot see are taken at ``flush(now)`` (the owner's latest
   input of any part): the start of a kept-alive connection's idle wait and a
   stream's last output, so a deferred answer or a chunk from a broker
   callback does not count from a stale client input.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable

from ._actions import Action, CloseClient, PauseClient, ResumeClient, SendToClient, SendToClients
from ._client import ClientConnection, ClientState, CloseCode, HttpRequest, Outcome
from ._metrics import Sample
from ._timers import Timers

__all__ = ["ClientTable", "Pause"]

_OPEN = ClientState.OPEN  # per input: a module global is a cheap load, a class attribute (3.11) is not
_CLOSED = ClientState.CLOSED
_PING_CHUNK = b": ping\n\n"  # an SSE comment: readers ignore it; a proxy or a dead peer shows itself


class Pause(enum.Flag):
    """Why a socket is not being read."""

    NONE = 0
    SOCKET_FULL = enum.auto()  # the transport's write buffer is over its high-water mark
    BROKER_FULL = enum.auto()  # the broker holds more client messages than its bound


class ClientTable:
    """One ``ClientConnection`` per socket, its deadlines and its coalesced output."""

    def __init__(self, *, sink: list[Action], on_outcomes: Callable[[ClientConnection, list[Outcome], float], None],
                 on_left: Callable[[ClientConnection], None], max_header_size: int, max_message_size: int,
                 max_outbound_buffer: int, handshake_timeout: float, write_wait: float,
                 pong_wait: float | None,
                 on_kept_alive: Callable[[ClientConnection, int], None] | None = None,
                 compression: bool = False) -> None:
        """``sink``: the owner's action list, so the table's actions keep their order among the owner's.

        ``on_outcomes(client, outcomes, now)``: what a client's bytes completed;
        ``on_left(client)``: a client was forgotten (closed and flushed, or its transport lost);
        its ``http_status`` is the answer that ended it (0: none).
        ``on_kept_alive(client, status)``: an answer after which the connection stayed open
        for another request; with ``on_left``'s ``http_status`` that is every answer, once.

        ``pong_wait``: close a silent open client after this long, pinging at 0.9 of it, and
        send a stream a comment after half of it without output; None: no keepalive (a
        conformance target must not send unsolicited pings).
        ``compression``: accept permessage-deflate when a client offers it (``_deflate.py``).
        """
        self._sink = sink
        self._max_header_size = max_header_size
        self._max_message_size = max_message_size
        self._max_outbound_buffer = max_outbound_buffer
        self._handshake_timeout = handshake_timeout
        self._write_wait = write_wait
        self._pong_wait = pong_wait
        self._compression = compression  # accept permessage-deflate when offered
        self._ping_interval = None if pong_wait is None else pong_wait * 0.9  # as websockets pings
        self._clients: dict[int, ClientConnection] = {}
        self._dirty: dict[int, ClientConnection] = {}
        self._paused: dict[int, Pause] = {}  # conn -> the reasons it is not read (absent: read)
        self._closing: dict[int, float] = {}  # conn -> abort deadline: closed gracefully, socket not gone yet
        self._on_outcomes = on_outcomes
        self._on_left = on_left
        self._on_kept_alive = on_kept_alive
        self._feeding: ClientConnection | None = None  # the client whose data() is delivering outcomes
        self._reparse: dict[int, ClientConnection] = {}  # decided outside on_outcomes: parse on at flush
        self._stamp: dict[int, ClientConnection] = {}  # an idle wait or a stream's output starts at flush
        self.now = 0.0  # time of the latest input: the owner builds its output at that time
        self._timers = Timers()
        self._next_conn = 0
        self.slow_closes = 0  # clients closed for not reading (write stall or outbound bound)
        # A PauseClient waits in the sink: the shell should drain before it reads another socket
        # (a broker's bound holds only if pauses take effect within the loop iteration).
        self.pause_pending = False

    # -- inputs from the shell (through the owner) ------------------------------------

    def opened(self, now: float) -> int:
        """A TCP client was accepted; returns the id used in every action about it."""
        self.now = now
        self._next_conn += 1
        conn = self._next_conn
        self._clients[conn] = ClientConnection(
            conn=conn, now=now, max_header_size=self._max_header_size, max_message_size=self._max_message_size,
        )
        self._timers.schedule(conn, now + self._handshake_timeout)
        return conn

    def data(self, conn: int, data: bytes, now: float) -> None:
        """Bytes from the client; what they completed goes to ``on_outcomes``."""
        self.now = now
        client = self._clients.get(conn)
        if client is None:
            return
        self._dirty[conn] = client
        outcomes = client.feed(data, now)
        if outcomes:
            if client.state is _OPEN:
                self._on_outcomes(client, outcomes, now)  # messages: the hot path, as it always was
            else:
                self._deliver(client, outcomes, now)

    def eof(self, conn: int, now: float) -> None:
        """The peer half-closed (idempotent): we close too."""
        self.now = now
        client = self._clients.get(conn)
        if client is not None:
            client.feed_eof()
            self._dirty[conn] = client

    def lost(self, conn: int, now: float) -> None:
        """The transport is gone (idempotent): forget the client without writing."""
        self.now = now
        client = self._clients.get(conn)
        if client is None:
            if self._closing.pop(conn, None) is not None:  # the graceful close flushed
                self._timers.cancel(conn)
            return
        if client.state is not ClientState.CLOSED:
            client.feed_eof()
        client.out = []
        self._forget(client)

    def write_paused(self, conn: int, now: float) -> None:
        """The transport's write buffer crossed its high-water mark: stop reading it too."""
        client = self._clients.get(conn)
        if client is not None and client.write_paused_since is None:
            client.write_paused_since = now
            self._timers.schedule(conn, now + self._write_wait)
            # Stop reading it too: a peer that does not read what we send must not
            # make us hold what it sends (an echo, an upgrade answer, pongs).
            self._add_pause(conn, Pause.SOCKET_FULL, urgent=False)

    def write_resumed(self, conn: int, now: float) -> None:
        """The transport's write buffer drained: write what was held, read again if nothing else holds it."""
        self.now = now
        client = self._clients.get(conn)
        if client is not None and client.write_paused_since is not None:
            client.write_paused_since = None
            self._remove_pause(client, Pause.SOCKET_FULL, now)
            self._dirty[conn] = client

    def handle_timer(self, now: float) -> None:
        """Act on every client deadline that is due."""
        self.now = now
        if self._stamp:
            self._stamp_times(now)  # a deferred answer's idle wait starts no earlier than now
        for owner in self._timers.pop_due(now):
            assert isinstance(owner, int)
            client = self._clients.get(owner)
            if client is not None:
                self._client_timer(client, now)
            elif owner in self._closing:
                deadline = self._closing[owner]
                if now >= deadline:
                    # The flushing close could not flush (the peer does not read): drop its bytes.
                    del self._closing[owner]
                    self._sink.append(CloseClient(conn=owner, abort=True))
                else:
                    self._timers.schedule(owner, deadline)

    def next_deadline(self) -> float | None:
        """The earliest client deadline (None: none); the shell arms one timer at it."""
        return self._timers.next_deadline()

    # -- commands from the owner ------------------------------------------------------

    def get(self, conn: int) -> ClientConnection | None:
        """The connection of ``conn`` while the table has it (read it; command it through the table)."""
        return self._clients.get(conn)

    def answer(self, conn: int, status: int, body: str | bytes, *, headers: tuple[tuple[str, str], ...] = (),
               content_type: str = "text/plain; charset=utf-8", keep_alive: bool = False) -> None:
        """A complete HTTP answer; the socket closes after it unless kept alive.

        ``keep_alive``: if h11 allows it too (``ClientConnection.answer``), the
        connection goes back to reading a head (handshakeTimeout to send one,
        else it is closed quietly) and ``on_kept_alive`` hears of the answer.
        A ``conn`` that already left is ignored (a deferred answer may lose the race).
        """
        client = self._clients.get(conn)
        if client is None:
            return
        self._dirty[conn] = client
        if not client.answer(status, body, headers=headers, content_type=content_type, keep_alive=keep_alive):
            return
        client.head_since = self.now
        self._stamp[conn] = client
        self._timers.schedule(conn, self.now + self._handshake_timeout)
        if client is not self._feeding:
            self._reparse[conn] = client  # pipelined requests behind a deferred answer
        if self._on_kept_alive is not None:
            self._on_kept_alive(client, status)

    def read_body(self, conn: int, limit: int) -> None:
        """Read the body of the request just delivered; ``HttpBody`` follows through ``on_outcomes``.

        Call it from ``on_outcomes`` on an ``HttpRequest``; what is already buffered
        is parsed once the callback returns. A body over ``limit`` bytes is answered
        413 (at once for a Content-Length), a bad chunked encoding 400, one not
        complete within handshakeTimeout of its head's wait 408; each closes.
        """
        client = self._clients[conn]
        self._dirty[conn] = client
        client.read_body(limit)
        if client is not self._feeding:
            self._reparse[conn] = client

    def start_stream(self, conn: int, *, content_type: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        """Answer 200 with an open-ended body (e.g. ``text/event-stream``); ``send_chunk`` fills it.

        A stream has the outbound bound and write-stall deadline of a WebSocket,
        and a ``: ping`` comment after pongWait/2 without output. A ``conn`` that
        already left is ignored.
        """
        client = self._clients.get(conn)
        if client is None:
            return
        self._dirty[conn] = client
        client.start_stream(content_type=content_type, headers=headers)
        if client.state is ClientState.STREAM:
            client.last_ping = self.now
            self._stamp[conn] = client
            if self._pong_wait is not None:
                self._timers.schedule(conn, self.now + self._pong_wait / 2)

    def send_chunk(self, conn: int, data: bytes) -> None:
        """Queue one chunk of a stream (coalesced like frames); ignored once it left or closed."""
        client = self._clients.get(conn)
        if client is not None and client.state is ClientState.STREAM:
            client.send_chunk(data)
            self._dirty[conn] = client
            self._stamp[conn] = client

    def accept(self, conn: int, request: HttpRequest, now: float) -> bool:
        """Upgrade to WebSocket (False: wsproto refused the handshake and answered it)."""
        client = self._clients[conn]
        self._dirty[conn] = client
        if not client.accept(request, compression=self._compression):
            return False
        # The handshake's deadline is over: left in place (schedule only moves a deadline earlier) it
        # would wake every new connection once, handshakeTimeout after it opened, for nothing.
        self._timers.cancel(conn)
        if client.write_paused_since is not None:
            self._timers.schedule(conn, client.write_paused_since + self._write_wait)
        if self._ping_interval is not None:
            self._timers.schedule(conn, now + self._ping_interval)
        return True

    def send_frame(self, conn: int, frame: bytes) -> None:
        """Queue an encoded WebSocket frame to one client."""
        client = self._clients[conn]
        client.send_frame(frame)
        self._dirty[conn] = client

    def broadcast(self, conns: Iterable[int], frame: bytes) -> None:
        """The same frame bytes to each of ``conns`` (the hot path of a group message).

        Per member this only appends a reference to the one frame: an open
        connection's case of ``ClientConnection.send_frame`` is inlined (a call
        per member was a fifth of the core's work per delivery); any other state
        takes the method, which knows what a closing connection may still send.
        """
        clients = self._clients
        dirty = self._dirty
        size = len(frame)
        for conn in conns:
            client = clients[conn]
            if client.state is _OPEN:
                client.out.append(frame)
                client.out_bytes += size
            else:
                client.send_frame(frame)
            dirty[conn] = client

    def close(self, conn: int, code: int, reason: str) -> None:
        """Close from our side (a stream's body ends properly); ignored once it left."""
        client = self._clients.get(conn)
        if client is not None:
            client.close(code, reason)
            self._dirty[conn] = client

    def close_all(self, code: int, reason: str) -> None:
        """Close every socket (shutdown)."""
        for client in self._clients.values():
            client.close(code, reason)
            self._dirty[client.conn] = client

    def pause(self, conn: int, reason: Pause) -> None:
        """Stop reading an open client for ``reason`` (idempotent); the shell is asked to act at once."""
        client = self._clients.get(conn)
        if client is not None and client.state is ClientState.OPEN:
            self._add_pause(conn, reason, urgent=True)

    def resume(self, conn: int, reason: Pause, now: float) -> None:
        """``reason`` no longer holds; reading resumes once no other reason does."""
        client = self._clients.get(conn)
        if client is not None:
            self._remove_pause(client, reason, now)

    def is_paused(self, conn: int, reason: Pause) -> bool:
        """Whether ``reason`` is among the reasons ``conn`` is not read."""
        return bool(self._paused.get(conn, Pause.NONE) & reason)

    # -- queries -----------------------------------------------------------------------

    def count(self) -> int:
        """Sockets in any state but closing (a graceful close still flushing): HTTP, WebSocket, streams."""
        return len(self._clients)

    def closing_count(self) -> int:
        """Sockets closed gracefully whose transport has not reported ``lost`` yet."""
        return len(self._closing)

    def paused_count(self, reason: Pause) -> int:
        """Sockets not read for ``reason`` (among others)."""
        return sum(1 for reasons in self._paused.values() if reasons & reason)

    def is_idle(self) -> bool:
        """No socket left at all, closing ones included (a shutdown may finish)."""
        return not self._clients and not self._closing

    def is_empty(self) -> bool:
        """Idle, and nothing queued or paused left behind (for leak checks)."""
        return self.is_idle() and not self._dirty and not self._paused

    def samples(self) -> list[Sample]:
        """The table's metrics: sockets, slow consumers, paused reads, held bytes."""
        held = sum(c.out_bytes for c in self._clients.values() if c.write_paused_since is not None)
        return [
            ("wshub_sockets_open", "gauge", "Open sockets, including those still in HTTP and those closing.",
             [("", len(self._clients) + len(self._closing))]),
            ("wshub_sockets_closing", "gauge", "Sockets closed gracefully that are still flushing.",
             [("", len(self._closing))]),
            ("wshub_slow_consumer_closes_total", "counter", "Clients closed for not reading.",
             [("", self.slow_closes)]),
            ("wshub_clients_reading_paused", "gauge", "Clients not read because the broker's buffer is full.",
             [("", self.paused_count(Pause.BROKER_FULL))]),
            ("wshub_outbound_buffer_bytes", "gauge", "Bytes held for clients whose sockets are full.",
             [("", held)]),
        ]

    # -- output ------------------------------------------------------------------------

    def flush(self, now: float) -> None:
        """Queue one write per socket with what is owed to it, closes after; forget the closed.

        A socket owed exactly one piece of bytes, the same object as others are
        owed (a group message's frame), is not given an action of its own: those
        sockets share one ``SendToClients`` after the loop. Only open sockets
        share one (a closing one's write must come before its ``CloseClient``).
        """
        if not self._dirty:
            return  # a client to parse on or to stamp is always dirty too
        if self._reparse or self._stamp:
            self._decided_outside(now)
        actions = self._sink
        limit = self._max_outbound_buffer
        dirty = self._dirty
        self._dirty = {}
        # id(data) -> (data, conns owed exactly it); the tuple holds data, so no id is reused in this flush.
        shared: dict[int, tuple[bytes, list[int]]] = {}
        last: bytes | None = None  # the previous such socket's bytes: a broadcast's members come in a row
        last_conns: list[int] = []
        for conn, client in dirty.items():
            out = client.out
            if out:
                if client.write_paused_since is None:
                    if len(out) == 1 and client.state is not _CLOSED:
                        data = out[0]
                        if data is not last:
                            entry = shared.get(id(data))
                            if entry is None:
                                entry = shared[id(data)] = (data, [])
                            last, last_conns = data, entry[1]
                        last_conns.append(conn)
                        # take_output's work; _close_at is None here, as it is in every state but CLOSED.
                        client.out = []
                        client.out_bytes = 0
                        continue
                    actions.append(SendToClient(conn=conn, data=client.take_output()))
                elif client.out_bytes > limit and client.state is not _CLOSED:
                    self._close_slow(client, f"over {limit} bytes queued")
                    self._dirty.pop(conn, None)
            if client.state is _CLOSED and conn in self._clients:
                if client.out and not client.abort:
                    # Held while the socket was full: a graceful close flushes the
                    # transport first, so our last frames and the close frame still go.
                    actions.append(SendToClient(conn=conn, data=client.take_output()))
                actions.append(CloseClient(conn=conn, abort=client.abort))
                self._forget(client)
                if not client.abort:
                    since = client.write_paused_since
                    deadline = (now if since is None else min(since, now)) + self._write_wait
                    self._closing[conn] = deadline
                    self._timers.schedule(conn, deadline)
        for data, conns in shared.values():
            actions.append(SendToClient(conn=conns[0], data=data) if len(conns) == 1
                           else SendToClients(conns=tuple(conns), data=data))

    # -- internals ---------------------------------------------------------------------

    def _deliver(self, client: ClientConnection, outcomes: list[Outcome], now: float) -> None:
        """Hand ``outcomes`` to the owner, then what its decisions let the buffered bytes complete."""
        self._feeding = client
        try:
            while True:
                if outcomes:
                    self._on_outcomes(client, outcomes, now)
                    if client.state is ClientState.OPEN:
                        return  # frames: the owner reads those behind an upgrade itself
                outcomes = client.pending()
                if not outcomes:
                    return
        finally:
            self._feeding = None

    def _decided_outside(self, now: float) -> None:
        """Before output: parse on where a decision came outside ``on_outcomes``, then stamp the times."""
        while self._reparse:
            conn, client = self._reparse.popitem()
            self._dirty[conn] = client
            self._deliver(client, [], now)
        if self._stamp:
            self._stamp_times(now)

    def _stamp_times(self, now: float) -> None:
        """Start kept-alive idle waits and stream output clocks at the owner's latest input time."""
        for client in self._stamp.values():
            if client.state is ClientState.STREAM:
                client.last_ping = now
            elif client.state is ClientState.HTTP and client.head_since < now:
                client.head_since = now
                self._timers.schedule(client.conn, now + self._handshake_timeout)
        self._stamp.clear()

    def _add_pause(self, conn: int, reason: Pause, *, urgent: bool) -> None:
        reasons = self._paused.get(conn, Pause.NONE)
        if reasons & reason:
            return
        self._paused[conn] = reasons | reason
        if not reasons:
            self._sink.append(PauseClient(conn=conn))
            self.pause_pending = self.pause_pending or urgent

    def _remove_pause(self, client: ClientConnection, reason: Pause, now: float) -> None:
        conn = client.conn
        reasons = self._paused.get(conn, Pause.NONE)
        if not reasons & reason:
            return
        reasons &= ~reason
        if reasons:
            self._paused[conn] = reasons
            return
        del self._paused[conn]
        if client.state is not ClientState.CLOSED:  # a kept-alive HTTP connection is read again too
            client.last_seen = now  # it could not be heard while we did not read it
            self._sink.append(ResumeClient(conn=conn))
            self._dirty[conn] = client

    def _client_timer(self, client: ClientConnection, now: float) -> None:
        conn = client.conn
        state = client.state
        if state is ClientState.CLOSED:
            return
        deadlines = []
        if client.write_paused_since is not None:
            stalled = client.write_paused_since + self._write_wait
            if now >= stalled:
                self._close_slow(client, f"could not write for {self._write_wait:g}s")
                return
            deadlines.append(stalled)
        if state is ClientState.OPEN:
            if self._pong_wait is not None:
                keepalive = self._keepalive(client, self._pong_wait, now)
                if keepalive is None:
                    return
                deadlines.append(keepalive)
        elif state is ClientState.STREAM:
            if self._pong_wait is not None:
                deadlines.append(self._stream_keepalive(client, self._pong_wait / 2, now))
        elif state is not ClientState.WAITING:  # HTTP, REQUEST, BODY: the request's deadline
            deadline = client.head_since + self._handshake_timeout
            if now >= deadline:
                self._request_timeout(client)
                return
            deadlines.append(deadline)
        if deadlines:
            self._timers.schedule(conn, min(deadlines))

    def _request_timeout(self, client: ClientConnection) -> None:
        """handshakeTimeout passed: 408 for a slow body, a quiet close for an idle kept-alive connection."""
        timeout = self._handshake_timeout
        if client.state is ClientState.BODY:
            client.answer(408, f"request body not complete within {timeout:g}s\n")
        elif client.state is ClientState.HTTP and client.kept_alive:
            client.close(0, "keep-alive idle timeout")  # nothing owed: a FIN, which a client retries on
        else:
            client.close(0, "handshake timeout", abort=True)
        self._dirty[client.conn] = client

    def _stream_keepalive(self, client: ClientConnection, interval: float, now: float) -> float:
        """A comment chunk after ``interval`` without output; the next such deadline."""
        due = client.last_ping + interval
        if now < due:
            return due
        if client.write_paused_since is None:  # a full socket has its own deadline (writeWait)
            client.send_chunk(_PING_CHUNK)
            self._dirty[client.conn] = client
        client.last_ping = now
        return now + interval

    def _keepalive(self, client: ClientConnection, pong_wait: float, now: float) -> float | None:
        """Ping when due, close when silent too long; the next keepalive deadline (None: closed)."""
        interval = pong_wait * 0.9
        if client.conn in self._paused:
            # We stopped reading it (its socket is full, or the broker is): its pongs
            # wait in the socket. No ping, no silence close; the silence clock restarts
            # when we read it again. A full socket has its own deadline (writeWait).
            return now + interval
        silent = client.last_seen + pong_wait
        if now >= silent:
            client.close(CloseCode.INTERNAL, "keepalive timeout")
            self._dirty[client.conn] = client
            return None
        ping_due = max(client.last_seen, client.last_ping) + interval
        if now >= ping_due:
            client.ping(now)
            self._dirty[client.conn] = client
            ping_due = now + interval
        return min(silent, ping_due)

    def _close_slow(self, client: ClientConnection, why: str) -> None:
        """A client that does not read: drop what it has not taken, close, discard unsent bytes."""
        client.out = []
        client.out_bytes = 0
        self.slow_closes += 1
        client.close(CloseCode.POLICY, f"slow consumer: {why}", abort=True)
        self._dirty[client.conn] = client

    def _forget(self, client: ClientConnection) -> None:
        conn = client.conn
        del self._clients[conn]
        self._dirty.pop(conn, None)
        self._paused.pop(conn, None)
        self._reparse.pop(conn, None)
        self._stamp.pop(conn, None)
        self._timers.cancel(conn)
        self._on_left(client)
