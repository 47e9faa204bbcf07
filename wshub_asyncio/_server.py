"""The asyncio shell: moves bytes and time between the OS and a core.

One ``Server`` class drives any core (``Hub``, ``EchoHub``: the ``Core``
protocol) and executes every action kind; what a link is for (a Redis role, a
shard) is the core's business, not the shell's.

Rules:
1. It decides nothing. Every byte and every connection event goes to the
   core; every action the core returns is executed here, in order.
2. No task and no timer per client: clients are ``asyncio.Protocol`` callbacks
   and the whole core has one ``TimerHandle``, armed at its next deadline. The
   only tasks are dials, one per ``OpenLink``.
3. A link is known by the id of the ``OpenLink`` that dialled it, and its
   callbacks count only while that id is open here: ``CloseLink`` detaches
   the link (or cancels its dial) first, and the core never reuses an id, so a
   late callback can never be taken for a newer link's.
4. A flushing close lingers (nginx's lingering_close): everything queued is
   written, then only the write side is shut (``write_eof``), and what the
   client still sends is read and discarded until its EOF; only then is the
   socket closed. Closing a socket with unread bytes makes the kernel send a
   reset, which can overtake the close frame (the client would see 1006).
   The core's abort at ``writeWait`` bounds the linger, as it bounds a flush.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl
import time
from typing import Any, Generic, TypeVar, cast

from wshub_core import (
    Action,
    CloseClient,
    CloseLink,
    Config,
    Core,
    Hub,
    OpenLink,
    PauseClient,
    ResumeClient,
    SendToClient,
    SendToClients,
    SendToLink,
    StopListening,
    Stopped,
)

from ._logging import worker_name
from ._neutral import execute_actions, log_listening, os_reason, reuseport_socket, server_tls_context

__all__ = ["ClientProtocol", "Server", "reuseport_socket", "run", "server_tls_context"]

log = logging.getLogger("wshub")

# Above this many unsent bytes asyncio calls pause_writing and the core holds
# further frames itself (bounded by webSocket.maxOutboundBuffer).
WRITE_HIGH_WATER = 64 * 1024

CoreT = TypeVar("CoreT", bound=Core)


class ClientProtocol(asyncio.Protocol):
    __slots__ = ("_server", "_core", "_loop", "conn", "eof")

    def __init__(self, server: Server[Any]) -> None:
        self._server = server
        self._core: Core = server.core
        self._loop = server.loop
        self.conn = 0
        self.eof = False  # the client half-closed: nothing is left unread, a close needs no linger

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.conn = self._core.client_opened(self._loop.time())
        self._server.transports[self.conn] = transport
        self._server.drain_soon()  # re-arms the timer: the handshake deadline may be the next one

    def data_received(self, data: bytes) -> None:
        core = self._core
        core.client_data(self.conn, data, self._loop.time())
        if core.pause_pending:
            # The Redis buffer is full: pause the clients now, before the loop reads the next socket
            # (uvloop reads on in this iteration until told to stop).
            self._server.drain()
        else:
            self._server.drain_soon()

    def eof_received(self) -> bool:
        self.eof = True
        self._core.client_eof(self.conn, self._loop.time())
        self._server.drain()
        return True  # the core decides when to close

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.client_gone(self.conn)

    def pause_writing(self) -> None:
        self._core.client_write_paused(self.conn, self._loop.time())
        self._server.drain()

    def resume_writing(self) -> None:
        self._core.client_write_resumed(self.conn, self._loop.time())
        self._server.drain()


class _Lingering(asyncio.Protocol):
    """A client socket after a flushing close, its write side shut: what it still sends is discarded.

    The core has forgotten the client (it ignores input for it), so nothing
    here reaches the core but the end: the client's EOF closes the socket, and
    its loss is ``client_lost``, which ends the core's abort deadline.
    """

    __slots__ = ("_server", "_conn", "_transport")

    def __init__(self, server: Server[Any], conn: int, transport: asyncio.Transport) -> None:
        self._server = server
        self._conn = conn
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        pass  # read only so that no byte is left unread at the close

    def eof_received(self) -> bool:
        self._transport.close()  # nothing unread any more: a FIN, no reset
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.client_gone(self._conn)


class _LinkProtocol(asyncio.Protocol):
    """One link's connection; its callbacks reach the core only while it is the shell's link ``link``."""

    def __init__(self, server: Server[Any], link: int) -> None:
        self._server = server
        self._core: Core = server.core
        self._link = link
        self.transport: asyncio.Transport | None = None

    def _current(self) -> bool:
        return self._server.links.get(self._link) is self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def data_received(self, data: bytes) -> None:
        if self._current():
            self._core.link_data(self._link, data, self._server.loop.time())
            self._server.drain_soon()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._current():
            del self._server.links[self._link]
            self._core.link_lost(self._link, self._server.loop.time(), os_reason(exc) if exc else "")
            self._server.drain()


class Server(Generic[CoreT]):
    """A listening socket, a core, and the glue between them: every action kind is executed here.

    ``config`` (a hub's) gives the listening address and the wss:// context;
    without it ``start`` takes them as arguments (the echo).
    """

    def __init__(self, core: CoreT, *, config: Config | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.core = core
        self.config = config
        self.transports: dict[int, asyncio.Transport] = {}  # client sockets by conn id
        self.links: dict[int, _LinkProtocol] = {}  # open links by link id
        self._dials: dict[int, asyncio.Task[None]] = {}  # dials in progress by link id
        self._server: asyncio.Server | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._drain_pending = False
        self.stopped = asyncio.Event()

    async def start(self, *, host: str | None = None, port: int = 0, sock: socket.socket | None = None) -> None:
        """Listen (on ``config``'s address and TLS if there is one), then start the core and execute its actions."""
        cfg = self.config
        if cfg is not None:
            await self.listen(host=cfg.host, port=cfg.port, sock=sock, tls=server_tls_context(cfg))
        else:
            await self.listen(host=host, port=port, sock=sock)
        now = self.loop.time()
        self.core.clock(now, time.time())
        self.core.start(now)
        self.drain()

    async def listen(self, *, host: str | None = None, port: int = 0, sock: socket.socket | None = None,
                     tls: ssl.SSLContext | None = None) -> None:
        if sock is not None:
            self._server = await self.loop.create_server(
                lambda: ClientProtocol(self), sock=sock, backlog=4096, ssl=tls,
            )
        else:
            self._server = await self.loop.create_server(
                lambda: ClientProtocol(self), host=host or None, port=port, backlog=4096,
                reuse_address=True, ssl=tls,
            )

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.loop.add_signal_handler(sig, self.shutdown)

    def shutdown(self) -> None:
        self.core.shutdown(self.loop.time())
        self.drain()

    def client_gone(self, conn: int) -> None:
        """A client's transport reported its loss (a reset, our abort, or the end of a close)."""
        self.transports.pop(conn, None)
        self.core.client_lost(conn, self.loop.time())
        self.drain()

    def drain_soon(self) -> None:
        """Drain once, after every socket that is ready in this loop iteration was read.

        Reads are fed to the core as they come; the core builds its output only
        when drained, so a client that gets ten group messages from one
        iteration's Redis reads gets one write, and ten client messages go to
        Redis in one write.
        """
        if not self._drain_pending:
            self._drain_pending = True
            self.loop.call_soon(self.drain)

    def drain(self) -> None:
        """Execute what the core asked for, then re-arm the single timer."""
        self._drain_pending = False
        deadline = execute_actions(self.core, self._execute)
        if deadline != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = None if deadline is None else self.loop.call_at(deadline, self._on_timer, deadline)
            self._timer_at = deadline

    def _on_timer(self, deadline: float) -> None:
        self._timer = None
        self._timer_at = None
        now = self.loop.time()
        self.core.loop_lag(max(0.0, now - deadline))  # how late the loop ran the timer
        self.core.clock(now, time.time())  # follows a wall clock that was stepped: tokens expire on time
        self.core.handle_timer(now)
        self.drain()

    def _execute(self, action: Action) -> None:
        kind = type(action)
        if kind is SendToClients:  # a group message: the same bytes to every member, one write each
            assert isinstance(action, SendToClients)
            data = action.data
            get = self.transports.get
            for conn in action.conns:
                transport = get(conn)
                if transport is not None:
                    transport.write(data)
        elif kind is SendToClient:
            assert isinstance(action, SendToClient)
            transport = self.transports.get(action.conn)
            if transport is not None:
                transport.write(action.data)
        elif kind is SendToLink:
            assert isinstance(action, SendToLink)
            proto = self.links.get(action.link)
            if proto is not None and proto.transport is not None:
                proto.transport.write(action.data)
        elif kind is CloseClient:
            assert isinstance(action, CloseClient)
            if action.abort:
                transport = self.transports.pop(action.conn, None)
                if transport is not None:
                    transport.abort()
            else:
                # Kept until connection_lost (the flush and the linger are done): if the peer never
                # reads, or never stops sending, the core sends CloseClient(abort=True) at writeWait.
                transport = self.transports.get(action.conn)
                if transport is not None:
                    self._close_gracefully(action.conn, transport)
        elif kind is PauseClient:
            assert isinstance(action, PauseClient)
            transport = self.transports.get(action.conn)
            if transport is not None:
                transport.pause_reading()
        elif kind is ResumeClient:
            assert isinstance(action, ResumeClient)
            transport = self.transports.get(action.conn)
            if transport is not None and not transport.is_closing():
                transport.resume_reading()
        elif kind is OpenLink:
            assert isinstance(action, OpenLink)
            self._dials[action.link] = self.loop.create_task(self._open_link(action))
        elif kind is CloseLink:
            assert isinstance(action, CloseLink)
            task = self._dials.pop(action.link, None)
            if task is not None:
                task.cancel()
            proto = self.links.pop(action.link, None)  # detached first: its connection_lost reaches nobody
            if proto is not None and proto.transport is not None:
                proto.transport.abort()
        elif kind is StopListening:
            if self._server is not None:
                self._server.close()
        elif kind is Stopped:
            self.stopped.set()
        else:
            raise AssertionError(f"{type(self).__name__} cannot execute {action!r}")

    def _close_gracefully(self, conn: int, transport: asyncio.Transport) -> None:
        """Flush, then close without a reset: shut the write side and discard what the client sends until its EOF.

        A client that already half-closed left nothing unread, and a TLS
        transport cannot half-close (``can_write_eof()`` is False): both are
        closed at once. The TLS close sends close_notify and reads on until the
        client's; a record of the client's arriving after our close_notify is
        an SSL error (OpenSSL 3: APPLICATION_DATA_AFTER_CLOSE_NOTIFY) on the
        standard loop, which then aborts: the close frame has gone out, a reset
        follows it. uvloop's TLS close ended with EOF instead (docs/protocol.md).
        """
        proto = transport.get_protocol()
        if (isinstance(proto, ClientProtocol) and proto.eof) or not transport.can_write_eof():
            transport.close()
            return
        transport.set_protocol(_Lingering(self, conn, transport))
        transport.resume_reading()  # a paused socket too: its unread bytes are what makes the reset
        try:
            transport.write_eof()  # after the queued bytes; asyncio shuts the socket's write side then
        except OSError:  # ENOTCONN: the peer is gone already; nothing to linger for, and no drain may stop here
            transport.abort()  # connection_lost follows: client_gone

    async def _open_link(self, action: OpenLink) -> None:
        """Dial one link: the only coroutine in the shell, one per dial."""
        link = action.link
        context = ssl.create_default_context() if action.tls else None
        try:
            _, proto = await self.loop.create_connection(
                lambda: _LinkProtocol(self, link), action.host, action.port, ssl=context,
                server_hostname=action.host if context else None,
            )
        except asyncio.CancelledError:
            return  # CloseLink: the core gave up on this dial
        except OSError as exc:
            self._dials.pop(link, None)
            self.core.link_lost(link, self.loop.time(), os_reason(exc))
            self.drain()
            return
        self._dials.pop(link, None)
        self.links[link] = proto
        self.core.link_opened(link, self.loop.time())
        self.drain()

    async def close(self) -> None:
        """Tear down without the shutdown protocol (tests, errors)."""
        if self._timer is not None:
            self._timer.cancel()
        if self._server is not None:
            self._server.close()
        for task in self._dials.values():
            task.cancel()
        self._dials.clear()
        for proto in self.links.values():
            if proto.transport is not None:
                proto.transport.abort()
        self.links.clear()
        for transport in list(self.transports.values()):
            transport.abort()
        self.transports.clear()


async def run(config: Config, *, config_file: str | None, sock: socket.socket | None = None) -> int:
    """Serve until SIGINT/SIGTERM has closed every client; the exit status.

    ``config_file`` is the file the config came from (None: defaults and
    environment only): the start line says so, and whether TLS is on, so a
    log answers "which settings is this running with".
    """
    hub = Hub(config=config, seed=int.from_bytes(os.urandom(4), "big"), log_name=worker_name())
    server = Server(hub, config=config)
    await server.start(sock=sock)
    server.install_signal_handlers()
    log_listening(config, port=server.port, loop=type(server.loop).__module__.split(".")[0], config_file=config_file)
    await server.stopped.wait()
    await server.close()
    return 0
