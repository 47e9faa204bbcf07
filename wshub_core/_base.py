"""The client half of a hub: sockets in, one ``ClientConnection`` each, actions out.

``Hub`` (Redis routing) and ``EchoHub`` (conformance target) both build on it,
so what a socket may do -- handshake deadline, write stall, outbound bound,
close -- is decided in one place.

Rules:
1. Every public method takes ``now`` and appends actions; the shell drains
   them with ``actions()`` and arms one timer at ``next_deadline()``.
2. Output is coalesced: inputs only change state; ``actions()`` builds the
   output, so all bytes for one socket since the last ``actions()`` go out as
   one ``SendToClient``, and all commands for a Redis link as one write.
3. A client that reached ``CLOSED`` takes no more input, and is forgotten at
   the next ``actions()``, which also hands the shell its ``CloseClient``.
4. A graceful ``CloseClient`` (the transport flushes, then closes) is not the
   end of the socket: a peer that does not read would keep it open forever.
   Until the shell reports ``client_lost`` the socket is *closing*, and at its
   abort deadline (``writeWait`` after the close, or after the write pause that
   was already running) the core sends ``CloseClient(abort=True)``. Closing
   sockets are not clients (``client_count()``), but ``is_empty()`` and
   ``Stopped`` wait for them.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable

from ._actions import Action, CloseClient, PauseClient, ResumeClient, SendToClient, StopListening, Stopped
from ._client import ClientConnection, ClientState, CloseCode, Outcome
from ._timers import Timers

__all__ = ["BaseHub"]

log = logging.getLogger("wshub")


class BaseHub:
    """Client bookkeeping shared by every core; subclasses fill in the hooks."""

    def __init__(self, *, max_header_size: int, max_message_size: int, max_outbound_buffer: int,
                 handshake_timeout: float, write_wait: float) -> None:
        self._max_header_size = max_header_size
        self._max_message_size = max_message_size
        self._max_outbound_buffer = max_outbound_buffer
        self._handshake_timeout = handshake_timeout
        self._write_wait = write_wait
        self._actions: list[Action] = []
        self._clients: dict[int, ClientConnection] = {}
        self._dirty: dict[int, ClientConnection] = {}
        self._closing: dict[int, float] = {}  # conn -> abort deadline: closed gracefully, socket not gone yet
        self._next_conn = 0
        self._now = 0.0  # time of the latest input: output is built at that time
        self._timers = Timers()
        self._stopping = False
        self._stopped = False
        self.slow_closes = 0  # clients closed for not reading (write stall or outbound bound)
        # A PauseClient waits in actions(): the shell should drain before it reads another socket
        # (redis.maxBufferedBytes holds only if pauses take effect within the loop iteration).
        self.pause_pending = False

    # -- hooks -----------------------------------------------------------------------

    def _handle_outcomes(self, client: ClientConnection, outcomes: list[Outcome], now: float) -> None:
        raise NotImplementedError

    def _open_client_timer(self, client: ClientConnection, now: float) -> list[float]:
        """Act on an open client's own deadlines; return the ones still ahead."""
        return []

    def _other_timer(self, owner: Hashable, now: float) -> None:
        """A deadline that is not a client's (Redis links, shutdown)."""

    def _on_forget(self, client: ClientConnection) -> None:
        """The client left for good: drop whatever else refers to it."""

    def _may_resume(self, client: ClientConnection) -> bool:
        """Whether reading the client may resume now that its socket drained."""
        return True

    def _flush_more(self, now: float) -> None:
        """Output other than the clients' (Redis commands), after the clients'."""

    def _drained(self) -> bool:
        """Nothing left to flush, so a shutdown may finish."""
        return True

    # -- shell API ---------------------------------------------------------------------

    def actions(self) -> list[Action]:
        """Everything to do since the last call, in order; output is built here, once.

        Inputs only change state. Bytes for a socket (and commands for Redis)
        are assembled when the shell asks, so a shell that feeds all of one
        loop iteration's input before asking gets one write per socket.
        """
        self._flush(self._now)
        actions = self._actions
        self._actions = []
        self.pause_pending = False
        return actions

    def next_deadline(self) -> float | None:
        return self._timers.next_deadline()

    def client_count(self) -> int:
        """Sockets in HTTP or WebSocket; closing ones (a graceful close still flushing) are not counted."""
        return len(self._clients)

    def closing_count(self) -> int:
        """Sockets closed gracefully whose transport has not reported ``client_lost`` yet."""
        return len(self._closing)

    def shutdown(self, now: float) -> None:
        """Stop accepting and close every client with 1001; ``Stopped`` once drained."""
        if self._stopping:
            return
        self._stopping = True
        self._actions.append(StopListening())
        for client in self._clients.values():
            client.close(CloseCode.GOING_AWAY, "server shutting down")
            self._dirty[client.conn] = client
        self._now = now

    def client_opened(self, now: float) -> int:
        """A TCP client was accepted; returns the id used in every action about it."""
        self._next_conn += 1
        conn = self._next_conn
        self._clients[conn] = ClientConnection(
            conn=conn, now=now, max_header_size=self._max_header_size, max_message_size=self._max_message_size,
        )
        self._timers.schedule(conn, now + self._handshake_timeout)
        return conn

    def client_data(self, conn: int, data: bytes, now: float) -> None:
        client = self._clients.get(conn)
        if client is None:
            return
        self._dirty[conn] = client
        self._handle_outcomes(client, client.feed(data, now), now)
        self._now = now

    def client_eof(self, conn: int, now: float) -> None:
        """The peer half-closed (idempotent): we close too."""
        client = self._clients.get(conn)
        if client is None:
            return
        client.feed_eof()
        self._dirty[conn] = client
        self._now = now

    def client_lost(self, conn: int, now: float) -> None:
        """The transport is gone (idempotent): forget the client without writing."""
        client = self._clients.get(conn)
        if client is None:
            if self._closing.pop(conn, None) is not None:  # the graceful close flushed
                self._timers.cancel(conn)
                self._now = now
            return
        if client.state is not ClientState.CLOSED:
            client.feed_eof()
        client.out = []
        self._forget(client)
        self._now = now

    def client_write_paused(self, conn: int, now: float) -> None:
        client = self._clients.get(conn)
        if client is not None and client.write_paused_since is None:
            client.write_paused_since = now
            self._timers.schedule(conn, now + self._write_wait)
            # Stop reading it too: a peer that does not read what we send must not
            # make us hold what it sends (an echo, an upgrade answer, pongs).
            self._actions.append(PauseClient(conn=conn))

    def client_write_resumed(self, conn: int, now: float) -> None:
        client = self._clients.get(conn)
        if client is not None and client.write_paused_since is not None:
            client.write_paused_since = None
            if client.state is ClientState.OPEN and self._may_resume(client):
                client.last_seen = now  # it could not be heard while we did not read it
                self._actions.append(ResumeClient(conn=conn))
            self._dirty[conn] = client
            self._now = now

    def handle_timer(self, now: float) -> None:
        for owner in self._timers.pop_due(now):
            if not isinstance(owner, int):
                self._other_timer(owner, now)
                continue
            client = self._clients.get(owner)
            if client is not None:
                self._client_timer(client, now)
            elif owner in self._closing:
                deadline = self._closing[owner]
                if now >= deadline:
                    # The flushing close could not flush (the peer does not read): drop its bytes.
                    del self._closing[owner]
                    self._actions.append(CloseClient(conn=owner, abort=True))
                else:
                    self._timers.schedule(owner, deadline)
        self._now = now

    # -- internals ---------------------------------------------------------------------

    def _client_timer(self, client: ClientConnection, now: float) -> None:
        conn = client.conn
        if client.state is ClientState.HTTP:
            deadline = client.opened_at + self._handshake_timeout
            if now >= deadline:
                client.close(0, "handshake timeout", abort=True)
                self._dirty[conn] = client
            else:
                self._timers.schedule(conn, deadline)
            return
        if client.state is not ClientState.OPEN:
            return
        deadlines = []
        if client.write_paused_since is not None:
            stalled = client.write_paused_since + self._write_wait
            if now >= stalled:
                self._close_slow(client, f"could not write for {self._write_wait:g}s")
                return
            deadlines.append(stalled)
        deadlines += self._open_client_timer(client, now)
        if deadlines and client.state is ClientState.OPEN:
            self._timers.schedule(conn, min(deadlines))

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
        self._timers.cancel(conn)
        self._on_forget(client)

    def _flush(self, now: float) -> None:
        actions = self._actions
        if self._dirty:
            limit = self._max_outbound_buffer
            dirty = self._dirty
            self._dirty = {}
            for conn, client in dirty.items():
                if client.out:
                    if client.write_paused_since is None:
                        actions.append(SendToClient(conn=conn, data=client.take_output()))
                    elif client.out_bytes > limit and client.state is ClientState.OPEN:
                        self._close_slow(client, f"over {limit} bytes queued")
                        self._dirty.pop(conn, None)
                if client.state is ClientState.CLOSED and conn in self._clients:
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
        self._flush_more(now)
        if self._stopping and not self._stopped and not self._clients and not self._closing and self._drained():
            self._stopped = True
            log.info("shutdown complete", extra={"event": "shutdown_complete"})
            actions.append(Stopped())
