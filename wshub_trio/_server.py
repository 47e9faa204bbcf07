"""The trio shell: moves bytes and time between trio and a core, the same core the asyncio shell drives.

One ``Server`` drives any core (``Hub``, ``EchoHub``: the ``Core`` protocol) and
executes every action kind. It is docs/architecture.md's "Driving the core
from another event loop" recipe written the trio way.

Rules:
1. It decides nothing. Every byte and every connection event goes to the
   core; every action the core returns is executed here, in order.
2. One deadline for the whole hub: one timer task sleeps in one cancel scope
   whose ``deadline`` is moved to the core's next deadline on every drain.
   Tasks are how trio reads and writes a socket, so a client has two (its
   reader, and a sender draining a bounded outgoing buffer) and a link two;
   neither holds a timer of its own.
3. Every input is followed by a drain: at once when the core needs it
   (``pause_pending``, EOF, a loss, a write pause), else by the drain task,
   which runs after every task woken in the same scheduler batch was fed, so
   one batch's reads leave in one write per socket.
4. A link is known by the id of the ``OpenLink`` that dialled it, and its
   events count only while that id is open here: ``CloseLink`` forgets the
   id first, then cancels the link's scope (dial or connection), so a late
   event can never be taken for a newer link's.
5. Flow control without ``pause_reading``: a paused client's reader simply
   does not call ``receive_some`` until ``ResumeClient``. The sender writes
   with ``socket.send`` and learns from a partial send that the kernel's
   buffer is full; from then on the core hears ``client_write_paused`` when
   the client's unsent bytes exceed ``WRITE_HIGH_WATER`` and
   ``client_write_resumed`` when they fall to ``WRITE_LOW_WATER`` (asyncio's
   default of a quarter) -- what asyncio's transports report. Bytes merely
   waiting for the sender to be scheduled are not backpressure. (TLS: the
   kernel is not visible under ``SSLStream``, so a send in progress counts.)
6. A flushing close lingers (nginx's lingering_close), as in the asyncio
   shell: the sender writes everything queued and shuts the write side
   (``send_eof``); the reader reads and discards what the client still sends
   until its EOF; only then is the socket closed, so no unread byte makes the
   kernel send a reset ahead of the close frame. The core's abort at
   ``writeWait`` cancels a linger that does not end, as it cancels a flush.
   On TLS too: accepted sockets are a ``TLSStream`` (``_tls.py``), whose
   ``send_eof`` is close_notify then FIN and whose reads go on until the
   client's close_notify or EOF (``trio.SSLStream`` cannot: its ``aclose``
   closes right after close_notify, and its ``unwrap`` fails on the client's
   records that follow ours, APPLICATION_DATA_AFTER_CLOSE_NOTIFY in OpenSSL 3).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar, Generic, TypeVar

import trio

from wshub_asyncio._logging import worker_name
from wshub_asyncio._neutral import execute_actions, log_listening, os_reason, server_tls_context
from wshub_core import Action, Config, Core, Hub
from wshub_core import _actions as act
from wshub_trio._tls import TLSStream

__all__ = ["WRITE_HIGH_WATER", "WRITE_LOW_WATER", "Server", "dial_reason", "run"]

CoreT = TypeVar("CoreT", bound=Core)
T = TypeVar("T")

# The asyncio shell's transport limits: above this many unsent bytes the core holds further frames itself
# (bounded by webSocket.maxOutboundBuffer) and watches the write stall (writeWait).
WRITE_HIGH_WATER = 64 * 1024
WRITE_LOW_WATER = WRITE_HIGH_WATER // 4
# Small reads: trio hands a read's bytes over after one more scheduler pass, in which a PauseClient
# (redis.maxBufferedBytes crossed by another client's read) may come; each paused client can still
# feed one read, so the bound's overshoot is at most this per client (asyncio feeds in the same step).
READ_SIZE = 16 * 1024

_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)  # a stream that can carry nothing more


def dial_reason(exc: BaseException) -> str:
    """What failed, in the OS's words, through trio's wrappers.

    ``open_tcp_stream`` raises an ``OSError`` without errno whose cause groups
    one error per address tried; a TLS failure is a ``BrokenResourceError``
    caused by the ``SSLError``. The first real error is what the asyncio
    shell would have reported.
    """
    while True:
        cause = exc.__cause__
        group = getattr(cause, "exceptions", None)  # an exception group (a backport on Python 3.10)
        if isinstance(exc, trio.BrokenResourceError) and cause is not None:
            exc = cause
        elif isinstance(exc, OSError) and not exc.errno and group:
            exc = group[0]
        else:
            return os_reason(exc)


class _Client:
    """One accepted socket: its stream, the bytes queued for its sender, and what the core asked of it."""

    __slots__ = ("stream", "conn", "out", "unsent", "lot", "scope", "paused", "closing", "blocked", "write_paused",
                 "read_done")

    def __init__(self, stream: trio.abc.HalfCloseableStream) -> None:
        self.stream = stream
        self.conn = 0
        self.out: list[bytes] = []  # handed to the sender, not yet written
        self.unsent = 0  # bytes in ``out`` plus those in the send in progress
        self.lot = trio.lowlevel.ParkingLot()  # where the sender waits for bytes and a paused reader for resume
        self.scope = trio.CancelScope()  # the connection's two tasks: cancelled by an abort or a broken stream
        self.paused = False
        self.closing = False
        self.blocked = False  # the kernel refused part of the last send: what is unsent now is backpressure
        self.write_paused = False
        self.read_done = trio.Event()  # the client's EOF was read: nothing is left unread


class _Link:
    """One open link: its stream, the bytes queued for it, and the scope of its tasks."""

    __slots__ = ("stream", "out", "lot", "scope", "error")

    def __init__(self, stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
        self.stream = stream
        self.out: list[bytes] = []
        self.lot = trio.lowlevel.ParkingLot()
        self.scope = scope
        self.error = ""


class Server(Generic[CoreT]):
    """Listening sockets, a core, and the glue between them: every action kind is executed here.

    ``config`` (a hub's) gives the listening address and the wss:// context;
    without it ``listen`` takes them as arguments (the echo). ``listen`` first
    (its errors are the caller's: address in use, a bad TLS key), then
    ``serve`` in a nursery until ``close``.
    """

    def __init__(self, core: CoreT, *, config: Config | None = None) -> None:
        self.core = core
        self.config = config
        self.clients: dict[int, _Client] = {}  # client sockets by conn id, kept until their tasks end
        self.links: dict[int, _Link] = {}  # open links by link id
        self._dials: dict[int, trio.CancelScope] = {}  # dials in progress by link id
        self._listeners: list[trio.SocketListener] = []
        self._tls: ssl.SSLContext | None = None  # wss://: each accepted socket becomes a TLSStream
        self._accepting = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._timer_scope: trio.CancelScope | None = None
        self._timer_at: float | None = None
        self._drain_pending = False
        self._drain_lot = trio.lowlevel.ParkingLot()
        self._closed = False
        self.stopped = trio.Event()

    async def listen(self, *, host: str | None = None, port: int = 0, sock: socket.socket | None = None) -> None:
        """Bind (``config``'s address and TLS if there is one, else ``host``/``port``; or adopt ``sock``)."""
        if self.config is not None:
            host, port, self._tls = self.config.host, self.config.port, server_tls_context(self.config)
        if sock is not None:
            self._listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(sock))]
        else:
            self._listeners = list(await trio.open_tcp_listeners(port, host=host or None, backlog=4096))

    @property
    def port(self) -> int:
        port: int = self._listeners[0].socket.getsockname()[1]
        return port

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the core and run every task of the hub until ``close``; started once the core's start is done."""
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._drain_loop)
            nursery.start_soon(self._timer_loop)
            nursery.start_soon(self._accept_all)
            now = trio.current_time()
            self.core.clock(now, time.time())
            self.core.start(now)
            self.drain()
            task_status.started()

    def close(self) -> None:
        """Tear down without the shutdown protocol (after ``Stopped``, tests, errors): every task is cancelled."""
        self._closed = True  # the tasks' endings are not the core's business any more
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def shutdown(self) -> None:
        self.core.shutdown(trio.current_time())
        self.drain()

    async def serve_until_stopped(self, started: Callable[[], None]) -> None:
        """``serve`` in the main thread, SIGINT/SIGTERM starting the core's shutdown; return once it has stopped.

        ``started`` runs once the core has started (the start line).
        """
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.serve)
                nursery.start_soon(self._shutdown_on, signals)
                started()
                await self.stopped.wait()
                self.close()
                nursery.cancel_scope.cancel()

    async def _shutdown_on(self, signals: AsyncIterator[int]) -> None:
        async for _ in signals:
            self.shutdown()

    def call_from_thread(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on this server's trio thread and return its result: how another thread looks at the core."""
        assert self._token is not None, "serve() first"
        return trio.from_thread.run_sync(fn, trio_token=self._token)

    # -- the drain and the single timer -------------------------------------------------------------------

    def drain_soon(self) -> None:
        """Drain once, after every task woken in this scheduler batch has fed the core its reads."""
        if not self._drain_pending:
            self._drain_pending = True
            self._drain_lot.unpark()

    async def _drain_loop(self) -> None:
        while True:
            while not self._drain_pending:
                await self._drain_lot.park()
            self.drain()

    def drain(self) -> None:
        """Execute what the core asked for, then move the single timer to the core's next deadline."""
        self._drain_pending = False
        deadline = execute_actions(self.core, self._execute)
        if deadline != self._timer_at:
            self._timer_at = deadline
            if self._timer_scope is not None:
                self._timer_scope.deadline = math.inf if deadline is None else deadline

    async def _timer_loop(self) -> None:
        """The hub's one timer: a sleep in a cancel scope whose deadline ``drain`` keeps at the core's."""
        while True:
            with trio.CancelScope(deadline=math.inf if self._timer_at is None else self._timer_at) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None
            deadline, now = self._timer_at, trio.current_time()
            if deadline is None or now < deadline:
                continue  # moved later between the expiry and this task running
            self._timer_at = None
            self.core.loop_lag(now - deadline)  # how late the loop ran the timer
            self.core.clock(now, time.time())  # follows a wall clock that was stepped: tokens expire on time
            self.core.handle_timer(now)
            self.drain()

    # -- clients --------------------------------------------------------------------------------------------

    async def _accept_all(self) -> None:
        with self._accepting:  # StopListening cancels it
            async with trio.open_nursery() as nursery:
                for listener in self._listeners:
                    nursery.start_soon(self._accept_loop, listener)

    async def _accept_loop(self, listener: trio.SocketListener) -> None:
        try:
            while True:
                stream: trio.abc.HalfCloseableStream
                try:
                    stream = await listener.accept()
                except OSError:  # out of file descriptors: let connections end, as asyncio's accept does
                    await trio.sleep(0.1)
                    continue
                if self._tls is not None:  # the handshake is the reader's first read, as with trio.SSLListener
                    stream = TLSStream(stream, self._tls, read_size=READ_SIZE)
                assert self._nursery is not None
                self._nursery.start_soon(self._serve_client, stream)
        finally:
            await trio.aclose_forcefully(listener)

    async def _serve_client(self, stream: trio.abc.HalfCloseableStream) -> None:
        """One client's whole life: its reader here, its sender beside it, and ``client_lost`` at the end."""
        client = _Client(stream)
        conn = client.conn = self.core.client_opened(trio.current_time())
        self.clients[conn] = client
        self.drain_soon()  # re-arms the timer: the handshake deadline may be the next one
        try:
            with client.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._send_loop, client)
                    await self._read_loop(client)
        finally:
            if self.clients.get(conn) is client:
                del self.clients[conn]
            await trio.aclose_forcefully(stream)
            if not self._closed:
                self.core.client_lost(conn, trio.current_time())
                self.drain()

    async def _read_loop(self, client: _Client) -> None:
        core, stream, conn = self.core, client.stream, client.conn
        sock = stream.socket if isinstance(stream, trio.SocketStream) else None  # None: TLS
        while True:
            while client.paused and not client.closing:  # PauseClient: TCP pushes back while nothing is read
                await client.lot.park()
            try:
                if sock is not None:
                    # Wait first, read after: a pause executed while this task waited (another client's
                    # read filled the Redis buffer) stops this read, as pause_reading() stops asyncio's.
                    await trio.lowlevel.wait_readable(sock)
                    if client.paused and not client.closing:
                        continue
                data = await stream.receive_some(READ_SIZE)
            except _GONE:  # a reset, a failed TLS handshake, an EOF without close_notify, our own close
                client.scope.cancel()
                return
            if not data:  # TLS: the client's close_notify
                client.read_done.set()
                if not client.closing:
                    core.client_eof(conn, trio.current_time())
                    self.drain()
                return  # the core decides when to close; the sender stays
            if client.closing:
                continue  # the linger: read only so that nothing is left unread; the core forgot this socket
            core.client_data(conn, data if isinstance(data, bytes) else bytes(data), trio.current_time())
            if core.pause_pending:
                self.drain()  # the Redis buffer is full: pause every client before another one is read
            else:
                self.drain_soon()

    async def _send_loop(self, client: _Client) -> None:
        """Write what the core queued; ``blocked`` while the kernel has refused bytes (asyncio's buffer)."""
        stream, out = client.stream, client.out
        sock = stream.socket if isinstance(stream, trio.SocketStream) else None  # None: TLS
        while True:
            while not out:
                if client.closing:  # a flushing close: everything queued has been written
                    with contextlib.suppress(*_GONE):
                        # The linger: our FIN (TLS: close_notify, then FIN) after the close frame, then the
                        # reader discards what the client sends until its EOF (TLS: its close_notify, or an
                        # EOF, which ends the reader with an error); the core's abort at writeWait cancels it.
                        await stream.send_eof()
                        await client.read_done.wait()
                        await stream.aclose()
                    client.scope.cancel()
                    return
                await client.lot.park()
            view = memoryview(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
            try:
                while view:
                    if sock is not None:
                        # A partial send means the kernel's buffer is full: from now on the bytes
                        # held here are the transport's unsent bytes, as in asyncio's write buffer.
                        sent = await sock.send(view)
                        client.blocked = sent < len(view)
                    else:  # TLS: how much the kernel took is not visible; a send in progress counts
                        client.blocked = True
                        await stream.send_all(view)
                        sent, client.blocked = len(view), False
                    view = view[sent:]
                    client.unsent -= sent
                    self._check_write_pause(client)
            except _GONE:
                client.scope.cancel()
                return

    def _check_write_pause(self, client: _Client) -> None:
        """``client_write_paused`` above the high-water mark of refused bytes, ``client_write_resumed`` at the low."""
        if client.write_paused:
            if client.unsent <= WRITE_LOW_WATER:
                client.write_paused = False
                self.core.client_write_resumed(client.conn, trio.current_time())
                self.drain()
        elif client.blocked and client.unsent > WRITE_HIGH_WATER:
            client.write_paused = True
            self.core.client_write_paused(client.conn, trio.current_time())
            self.drain()

    def _send_to_client(self, action: act.SendToClient) -> None:
        self._write(action.conn, action.data)

    def _send_to_clients(self, action: act.SendToClients) -> None:
        data = action.data
        for conn in action.conns:
            self._write(conn, data)

    def _write(self, conn: int, data: bytes) -> None:
        """Hand ``data`` to the socket's sender; over the high-water mark of refused bytes, a write pause."""
        client = self.clients.get(conn)
        if client is None or client.closing:
            return
        client.out.append(data)
        client.unsent += len(data)
        client.lot.unpark_all()
        if client.blocked and not client.write_paused and client.unsent > WRITE_HIGH_WATER:
            client.write_paused = True
            self.core.client_write_paused(conn, trio.current_time())  # drain() takes the actions it makes

    def _close_client(self, action: act.CloseClient) -> None:
        conn = action.conn
        if action.abort:
            client = self.clients.pop(conn, None)
            if client is not None:
                client.scope.cancel()
            return
        # Kept until its tasks end (the flush is done): if the peer never reads,
        # the core sends CloseClient(abort=True) for it at writeWait.
        client = self.clients.get(conn)
        if client is not None:
            client.closing = True  # a paused reader reads again: to discard, until the client's EOF
            client.lot.unpark_all()

    # -- links ---------------------------------------------------------------------------------------------

    async def _run_link(self, action: act.OpenLink, scope: trio.CancelScope) -> None:
        """Dial one link, then read it (a sender beside); its events count while ``links`` maps the id to it."""
        link = action.link
        conn: _Link | None = None
        with scope:  # CloseLink cancels it, dialling or connected
            try:
                stream = await self._dial(action)
            except _GONE as exc:
                if self._dials.pop(link, None) is scope:
                    self.core.link_lost(link, trio.current_time(), dial_reason(exc))
                    self.drain()
                return
            self._dials.pop(link, None)
            conn = self.links[link] = _Link(stream, scope)
            try:
                self.core.link_opened(link, trio.current_time())
                self.drain()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._link_send_loop, conn, nursery.cancel_scope)
                    await self._link_read_loop(link, conn)
                    nursery.cancel_scope.cancel()
            finally:
                await trio.aclose_forcefully(stream)
        if conn is not None and self.links.get(link) is conn and not self._closed:
            del self.links[link]
            self.core.link_lost(link, trio.current_time(), conn.error)
            self.drain()

    async def _dial(self, action: act.OpenLink) -> trio.abc.Stream:
        tcp = await trio.open_tcp_stream(action.host, action.port)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if not action.tls:
            return tcp
        stream = trio.SSLStream(tcp, ssl.create_default_context(), server_hostname=action.host)
        try:
            await stream.do_handshake()  # open only once TLS is up, as asyncio's create_connection reports it
        except BaseException:
            await trio.aclose_forcefully(tcp)
            raise
        return stream

    async def _link_read_loop(self, link: int, conn: _Link) -> None:
        while True:
            try:
                data = await conn.stream.receive_some(READ_SIZE)
            except _GONE as exc:
                conn.error = conn.error or dial_reason(exc)
                return
            if not data or self.links.get(link) is not conn:
                return
            self.core.link_data(link, data if isinstance(data, bytes) else bytes(data), trio.current_time())
            self.drain_soon()

    async def _link_send_loop(self, conn: _Link, io: trio.CancelScope) -> None:
        while True:
            while not conn.out:
                await conn.lot.park()
            data = conn.out[0] if len(conn.out) == 1 else b"".join(conn.out)
            conn.out.clear()
            try:
                await conn.stream.send_all(data)
            except _GONE as exc:
                conn.error = dial_reason(exc)
                io.cancel()
                return

    # -- actions: one method per kind, looked up by the action's type --------------------------------------

    def _execute(self, action: Action) -> None:
        execute = self._executors.get(type(action))
        if execute is None:
            raise AssertionError(f"{type(self).__name__} cannot execute {action!r}")
        execute(self, action)

    def _send_to_link(self, action: act.SendToLink) -> None:
        conn = self.links.get(action.link)
        if conn is not None:
            conn.out.append(action.data)
            conn.lot.unpark_all()

    def _pause(self, action: act.PauseClient) -> None:
        client = self.clients.get(action.conn)
        if client is not None:
            client.paused = True

    def _resume(self, action: act.ResumeClient) -> None:
        client = self.clients.get(action.conn)
        if client is not None and not client.closing:
            client.paused = False
            client.lot.unpark_all()

    def _open_link(self, action: act.OpenLink) -> None:
        assert self._nursery is not None
        dial = self._dials[action.link] = trio.CancelScope()
        self._nursery.start_soon(self._run_link, action, dial)

    def _close_link(self, action: act.CloseLink) -> None:
        dial = self._dials.pop(action.link, None)  # forgotten first: its late events reach nobody
        if dial is not None:
            dial.cancel()
        conn = self.links.pop(action.link, None)
        if conn is not None:
            conn.scope.cancel()

    def _stop_listening(self, action: act.StopListening) -> None:
        self._accepting.cancel()

    def _stopped(self, action: act.Stopped) -> None:
        self.stopped.set()

    _executors: ClassVar[dict[type[Any], Callable[[Any, Any], None]]] = {
        act.SendToClient: _send_to_client,
        act.SendToClients: _send_to_clients,
        act.SendToLink: _send_to_link,
        act.CloseClient: _close_client,
        act.PauseClient: _pause,
        act.ResumeClient: _resume,
        act.OpenLink: _open_link,
        act.CloseLink: _close_link,
        act.StopListening: _stop_listening,
        act.Stopped: _stopped,
    }

async def run(config: Config, *, config_file: str | None, sock: socket.socket | None = None) -> int:
    """Serve until SIGINT/SIGTERM has closed every client; the exit status (``trio.run(run, ...)``).

    ``listen`` runs before any nursery, so an address in use or a bad TLS key
    reaches the command line as itself, not inside an exception group.
    """
    hub = Hub(config=config, seed=int.from_bytes(os.urandom(4), "big"), log_name=worker_name())
    server = Server(hub, config=config)
    await server.listen(sock=sock)
    await server.serve_until_stopped(
        lambda: log_listening(config, port=server.port, loop="trio", config_file=config_file))
    return 0
