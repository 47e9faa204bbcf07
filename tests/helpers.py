"""Shared test plumbing: real redis-server processes, an in-process hub on either shell, clients.

Nothing here mocks Redis or the network: every helper starts or talks to a
real process over TCP.

A test that exercises the shell runs once per shell (the ``shell`` fixture,
``SHELLS``): ``running_hub(config, shell)`` gives the asyncio ``Server`` itself
(on the test's own loop), or a ``TrioHub``: the trio ``Server`` running
``trio.run`` in a thread of its own, whose every attribute read (``.core.ready``,
``.core.client_count()``, ``.links``) runs on the trio thread and comes back
as a copy (``OnTrio``). So a test asserts the same things on both shells, and
never reads the trio hub's state while the trio thread changes it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import os
import random
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis.asyncio as aredis

from wshub_asyncio import Server
from wshub_core import Config, Core, Hub, load_config

T = TypeVar("T")

SHELLS = ["asyncio", "trio"]
"""The shells a shell-exercising test runs on (``python -m wshub_<shell>``)."""

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


TEST_API_KEY = "test-api-key"


def shell_module(shell: str) -> str:
    """The module a shell runs as: ``python -m wshub_asyncio`` or ``python -m wshub_trio``."""
    assert shell in SHELLS, shell
    return f"wshub_{shell}"


def hub_env(**overrides: str) -> dict[str, str]:
    """The test's environment without its own WSHUB_* variables (a hub refuses unknown ones), plus ``overrides``.

    The API key is ``TEST_API_KEY`` unless overridden (``WSHUB_API_KEY=""``: the hub generates one).
    """
    return {**{k: v for k, v in os.environ.items() if not k.startswith("WSHUB_")}, "WSHUB_API_KEY": TEST_API_KEY,
            **overrides}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def closed_port() -> int:
    """A port nothing listens on, below the ephemeral range (32768-60999 here).

    A ``free_port()`` is an ephemeral port: the hub's own connect to it can be
    given that same port as its source, and loopback TCP then connects to
    itself. The connect succeeds, and "nothing listens there" is not true.
    """
    for port in random.sample(range(20000, 32000), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no closed port below the ephemeral range")


class RedisProcess:
    """A redis-server of the test's own, on a free port, that a test may kill or pause."""

    def __init__(self, *, port: int | None = None, extra: tuple[str, ...] = ()) -> None:
        self.port = port or free_port()
        self.extra = extra
        self.dir = tempfile.mkdtemp(prefix="wshub-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir, "--logfile", os.path.join(self.dir, "redis.log"), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith((b"+PONG", b"-NOAUTH")):  # up (maybe with a password)
                        return
            except OSError:
                time.sleep(0.02)  # polling a process we just spawned: no event to await
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def kill(self) -> None:
        """SIGKILL: the way a crashed or OOM-killed Redis disappears."""
        if self.proc is not None:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def restart(self) -> None:
        self.kill()
        self.start()

    def client(self) -> aredis.Redis:
        return aredis.Redis(host="127.0.0.1", port=self.port)


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for ``localhost`` and its key, made by openssl in ``folder``: (cert.pem, key.pem)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def hub_config(redis_port: int, prefix: str, **overrides: Any) -> Config:
    """A config for an in-process hub on a free port; overrides use YAML key paths with '_' for '.'."""
    tree: dict[str, Any] = {
        "address": "127.0.0.1:0",
        "redis": {"address": f"127.0.0.1:{redis_port}", "channelPrefix": prefix,
                  "reconnectMin": 0.02, "reconnectMax": 0.2, "timeout": 5},
        "webSocket": {},
    }
    for name, value in overrides.items():
        section, _, key = name.partition("_")
        if key:
            tree.setdefault(section, {})[key] = value
        else:
            tree[section] = value
    import yaml

    return load_config(yaml.safe_dump(tree), source="test")


@contextlib.asynccontextmanager
async def running_hub(config: Config, shell: str = "asyncio", *, ready: bool = True) -> AsyncIterator[Any]:
    """A hub on ``config`` (ready, unless ``ready=False``): the asyncio ``Server[Hub]`` on this loop, or a
    ``TrioHub`` (``shell="trio"``)."""
    if shell == "trio":
        async with trio_server(Hub(config=config, seed=1), config=config) as trio_hub:
            if ready:
                await wait_for(lambda: trio_hub.core.ready, what="hub ready")
            yield trio_hub
        return
    assert shell == "asyncio", shell
    server = Server(Hub(config=config, seed=1), config=config)
    await server.start()
    try:
        if ready:
            await wait_for(lambda: server.core.ready, what="hub ready")
        yield server
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def serving(core: Core, shell: str) -> AsyncIterator[Any]:
    """A shell's ``Server`` for ``core`` (e.g. an ``EchoHub``) on 127.0.0.1 and a free port; closed at the end."""
    if shell == "trio":
        async with trio_server(core) as trio_hub:
            yield trio_hub
        return
    server = Server(core)
    await server.start(host="127.0.0.1", port=0)
    try:
        yield server
    finally:
        await server.close()


_PLAIN = (int, float, str, bytes, bool, type(None), Enum)


class OnTrio:
    """An object of the trio thread's, seen from the test's thread: every read and call runs on the trio thread.

    What comes back is a copy when it is plain data (numbers, strings, bytes,
    enums, and lists, tuples, dicts and sets of them), else another ``OnTrio``.
    """

    __slots__ = ("_obj", "_server")

    def __init__(self, obj: Any, server: Any) -> None:
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_server", server)

    def _on_trio(self, fn: Callable[[Any], Any]) -> Any:
        obj, server = self._obj, self._server
        return server.call_from_thread(lambda: _export(fn(obj), server))

    def __getattr__(self, name: str) -> Any:
        return self._on_trio(lambda obj: getattr(obj, name))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._on_trio(lambda obj: obj(*args, **kwargs))

    def __getitem__(self, key: Any) -> Any:
        return self._on_trio(lambda obj: obj[key])

    def __iter__(self) -> Iterator[Any]:
        return iter(self._on_trio(list))

    def __len__(self) -> int:
        length: int = self._on_trio(len)
        return length

    def __bool__(self) -> bool:
        truth: bool = self._on_trio(bool)
        return truth

    def __contains__(self, item: Any) -> bool:
        found: bool = self._on_trio(lambda obj: item in obj)
        return found


def _export(value: Any, server: Any) -> Any:
    """``value`` as the test's thread may hold it (called on the trio thread)."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, list | tuple):
        return type(value)(_export(v, server) for v in value) if type(value) in (list, tuple) else OnTrio(value, server)
    if isinstance(value, dict):
        return {k: _export(v, server) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return type(value)(value)
    return OnTrio(value, server)


class TrioHub(OnTrio):
    """A trio ``Server`` in its own thread, for a test on asyncio: ``port`` and ``stopped`` are the test's own;
    everything else (``core``, ``links``, ``shutdown()``) is read or called on the trio thread."""

    __slots__ = ("port", "stopped")


@contextlib.asynccontextmanager
async def trio_server(core: Core, *, config: Config | None = None, host: str = "127.0.0.1",
                      port: int = 0) -> AsyncIterator[TrioHub]:
    """``wshub_trio.Server(core)`` served by ``trio.run`` in a thread; closed (every task cancelled) at the end.

    An exception in the trio thread fails the test at the end of the block.
    """
    import trio

    from wshub_trio import Server as TrioServer

    loop = asyncio.get_running_loop()
    started: asyncio.Future[None] = loop.create_future()
    stopped = asyncio.Event()
    server = TrioServer(core, config=config)
    failure: list[BaseException] = []

    everything = trio.CancelScope()

    async def relay_stopped() -> None:
        await server.stopped.wait()
        loop.call_soon_threadsafe(stopped.set)

    async def main() -> None:
        await server.listen(host=host, port=port)
        with everything:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(relay_stopped)
                await nursery.start(server.serve)
                loop.call_soon_threadsafe(started.set_result, None)

    def close() -> None:
        server.close()
        everything.cancel()

    def thread() -> None:
        try:
            trio.run(main)
        except BaseException as exc:
            failure.append(exc)
            loop.call_soon_threadsafe(lambda: started.done() or started.set_exception(failure[0]))

    runner = threading.Thread(target=thread, name="trio hub", daemon=True)
    runner.start()
    try:
        await within(asyncio.shield(started), 10)
        handle = TrioHub(server, server)
        object.__setattr__(handle, "port", server.call_from_thread(lambda: server.port))
        object.__setattr__(handle, "stopped", stopped)
        yield handle
    finally:
        if not failure:
            with contextlib.suppress(trio.RunFinishedError):
                server.call_from_thread(close)
        await asyncio.to_thread(runner.join, 15)
        assert not runner.is_alive(), "the trio hub did not stop"
    if failure:
        raise failure[0]


def hub_now(server: Any) -> float:
    """The hub's clock (the ``now`` its core is given): the asyncio loop's, or trio's on the trio thread."""
    if isinstance(server, TrioHub):
        import trio

        return on_hub(server, lambda _: trio.current_time())
    now: float = server.loop.time()
    return now


def on_hub(server: Any, fn: Callable[[Any], T]) -> T:
    """``fn(server)`` where the hub runs: at once on asyncio, on the trio thread for a ``TrioHub``,
    so that several reads see one state."""
    if isinstance(server, TrioHub):
        inner = server._obj
        result: T = inner.call_from_thread(lambda: fn(inner))
        return result
    return fn(server)


async def wait_for(predicate: Callable[[], bool], *, timeout: float = 5.0, what: str = "condition") -> None:
    """Await a condition that another task or process makes true (polls the loop, not a sleep-guess)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def within(aw: Awaitable[T], timeout: float = 5.0) -> T:
    return await asyncio.wait_for(aw, timeout)


class Subscriber:
    """A Redis subscriber that collects messages on channels, for assertions."""

    def __init__(self, client: aredis.Redis) -> None:
        self.pubsub = client.pubsub()

    async def subscribe(self, *channels: str) -> None:
        await self.pubsub.subscribe(*channels)
        for _ in channels:
            msg = await within(self.pubsub.get_message(timeout=5))
            assert msg is not None and msg["type"] == "subscribe"

    async def next(self, timeout: float = 5.0) -> tuple[str, bytes]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError("no message arrived")
            msg = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
            if msg is not None:
                return msg["channel"].decode(), msg["data"]

    async def close(self) -> None:
        await self.pubsub.aclose()


# -- Added for the protocol tests: raw HTTP/WebSocket clients and routing probes ----------------------------


async def wait_until(predicate: Callable[[], Awaitable[bool]], *, timeout: float = 5.0,
                     what: str = "condition") -> None:
    """Like ``wait_for``, for a condition that must be asked over the network (e.g. a Redis query)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def glob_escape(text: str) -> str:
    """Quote Redis glob characters, so a test's prefix can be used in PUBSUB CHANNELS patterns."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


async def hub_channels_in_redis(r: aredis.Redis, prefix: str) -> set[str]:
    """The hub's channels Redis reports as subscribed (groups-new:* and group-data:*), prefix removed."""
    channels = await r.pubsub_channels(glob_escape(prefix) + "group*")
    return {(c.decode() if isinstance(c, bytes) else c)[len(prefix):] for c in channels}


def group_names(server: Any, prefix: str) -> set[str]:
    """Groups the hub needs (has a local member in), from its needed-channel set."""
    head = f"{prefix}group-data:".encode()
    return {ch[len(head):].decode() for ch in server.core.needed_channels() if ch.startswith(head)}


async def wait_groups(server: Any, prefix: str, groups: set[str], *, timeout: float = 5.0) -> None:
    """Until exactly ``groups`` are needed and every needed subscription is confirmed by Redis."""
    await wait_for(lambda: on_hub(server, lambda s: s.core.ready and group_names(s, prefix) == groups),
                   timeout=timeout, what=f"groups {sorted(groups)} live (have {sorted(group_names(server, prefix))})")


async def wait_key_confirmed(server: Any, prefix: str, key: str) -> None:
    await wait_confirmed(server, f"{prefix}groups-new:{key}".encode(), what=f"groups-new:{key} confirmed")


async def wait_confirmed(server: Any, channel: bytes, *, what: str) -> None:
    """Until ``channel`` is subscribed and Redis confirmed it (the hub is ready: every needed channel is).

    Both read in one step where the hub runs (``on_hub``): on trio, read one after the other from this
    thread, ``ready`` could be from before the SUBSCRIBE and the channel from after it.
    """
    await wait_for(lambda: on_hub(server, lambda s: s.core.ready and channel in s.core.subscribed_channels()),
                   what=what)


def ws_url(port: int, key: str | None, *, path: str = "/ws") -> str:
    return f"ws://127.0.0.1:{port}{path}" + ("" if key is None else f"?session_key={key}")


def ws_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, masked: bool = True) -> bytes:
    """An RFC 6455 section 5.2 frame, built by hand so that it can be wrong on purpose."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    length = len(payload)
    mask_bit = 0x80 if masked else 0
    if length < 126:
        header = struct.pack("!BB", first, mask_bit | length)
    elif length < 65536:
        header = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, length)
    if not masked:
        return header + payload
    mask = os.urandom(4)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@dataclasses.dataclass(frozen=True)
class Frame:
    fin: bool
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int:
        assert self.opcode == 0x8 and len(self.payload) >= 2, self
        code: int = struct.unpack("!H", self.payload[:2])[0]
        return code


def upgrade_head(key: str | None, *, path: str = "/ws", version: str = "13",
                 extra: tuple[str, ...] = ()) -> bytes:
    """A valid WebSocket upgrade request head (RFC 6455 4.1), with optional extra header lines."""
    target = path if key is None else f"{path}?session_key={key}"
    nonce = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {target} HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {nonce}", f"Sec-WebSocket-Version: {version}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class RawWebSocket:
    """A hand-driven WebSocket client over asyncio streams: sends exact bytes, reads frames one by one."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        self.reader = reader
        self.writer = writer
        self.head = head

    @property
    def status_line(self) -> bytes:
        return self.head.split(b"\r\n", 1)[0]

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def read_frame(self, timeout: float = 5.0) -> Frame:
        async def read() -> Frame:
            first, second = await self.reader.readexactly(2)
            assert not second & 0x80, "server frames are never masked"
            length = second & 0x7F
            if length == 126:
                length = struct.unpack("!H", await self.reader.readexactly(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", await self.reader.readexactly(8))[0]
            return Frame(fin=bool(first & 0x80), opcode=first & 0x0F, payload=await self.reader.readexactly(length))

        return await within(read(), timeout)

    async def read_until_close(self, timeout: float = 5.0) -> tuple[Frame, list[Frame]]:
        """Frames up to and including the close frame: (close frame, the frames before it)."""
        before: list[Frame] = []
        while True:
            frame = await self.read_frame(timeout)
            if frame.opcode == 0x8:
                return frame, before
            before.append(frame)

    async def at_eof(self, timeout: float = 5.0) -> bool:
        """True once the server has closed the TCP connection (read returns b'')."""
        return await within(self.reader.read(), timeout) == b""

    async def flood_until_close(self, frame: bytes, *, times: int, timeout: float = 10.0) -> tuple[Frame, bool]:
        """Write ``frame`` ``times`` times, reading meanwhile; (the server's close frame, EOF rather than reset).

        The writes go on after the server closed (a client that has not read
        the close yet), until the EOF after the close frame is read: False
        there means a reset (the server closed with bytes of ours unread).
        """
        async def write() -> None:
            with contextlib.suppress(ConnectionError):
                for _ in range(times):
                    self.writer.write(frame)
                    await self.writer.drain()

        writing = asyncio.ensure_future(write())
        try:
            close, _ = await self.read_until_close(timeout)
            try:
                eof = await self.at_eof(timeout)
            except ConnectionResetError:
                eof = False
            return close, eof
        finally:
            writing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writing

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def raw_websocket(port: int, key: str | None, *, head: bytes | None = None, trailing: bytes = b"",
                        tls: ssl.SSLContext | None = None) -> RawWebSocket:
    """Open a TCP connection (TLS to ``localhost`` with ``tls``), send an upgrade head (plus ``trailing`` bytes
    in the same write), read the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls,
                                                   server_hostname="localhost" if tls else None)
    writer.write((head if head is not None else upgrade_head(key)) + trailing)
    answer = await within(reader.readuntil(b"\r\n\r\n"))
    return RawWebSocket(reader, writer, answer)


@dataclasses.dataclass(frozen=True)
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: bytes
    raw: bytes


async def http_exchange(port: int, request: bytes, *, timeout: float = 5.0) -> HttpAnswer:
    """Send exact bytes, read until the server closes the socket (times out if it never does)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        raw = await within(reader.read(), timeout)  # read() returns only at EOF: proves the close
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 "), raw[:200]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return HttpAnswer(status=int(lines[0].split()[1]), headers=headers, body=body, raw=raw)


class DelayingProxy:
    """A TCP proxy in front of Redis that holds back, in order, every chunk matching ``hold``.

    Used to widen a race on purpose: e.g. delaying the hub's SUBSCRIBE commands
    shows whether anything the hub publishes waits for the subscription's
    confirmation or merely follows it on the wire.
    """

    def __init__(self, target_port: int, *, hold: Callable[[bytes], bool], delay: float) -> None:
        self.target_port = target_port
        self.hold = hold
        self.delay = delay
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, hold: bool) -> None:
            try:
                while data := await src.read(65536):
                    if hold and self.hold(data):
                        await asyncio.sleep(self.delay)  # the delay is the point: a slow network path
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        for task in (asyncio.ensure_future(pump(client_r, upstream_w, True)),
                     asyncio.ensure_future(pump(upstream_r, client_w, False))):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# -- HTTP API clients: real HTTP/1.1 over TCP, parsed by h11 (the client side of the same library) ----------------


class HttpClient:
    """One keep-alive HTTP/1.1 connection to the hub; ``request`` sends a request and reads its whole answer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import h11

        self._h11 = h11
        self.reader = reader
        self.writer = writer
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, port: int) -> HttpClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def request(self, method: str, path: str, body: bytes = b"", *, key: str | None = TEST_API_KEY,
                      headers: tuple[tuple[str, str], ...] = (), chunks: list[bytes] | None = None,
                      ) -> tuple[int, dict[str, str], bytes]:
        """Status, headers (lower-case names) and body; ``chunks`` sends the body chunked, in those pieces."""
        h11 = self._h11
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        all_headers = [("host", "hub.test"), *headers]
        if key is not None:
            all_headers.append(("authorization", f"Bearer {key}"))
        if chunks is not None:
            all_headers.append(("transfer-encoding", "chunked"))
        elif body or method in ("POST", "PUT"):
            all_headers.append(("content-length", str(len(body))))
        data = self.conn.send(h11.Request(method=method, target=path, headers=all_headers)) or b""
        for piece in chunks if chunks is not None else ([body] if body else []):
            data += self.conn.send(h11.Data(data=piece)) or b""
        data += self.conn.send(h11.EndOfMessage()) or b""
        self.writer.write(data)
        return await within(self._answer())

    async def _answer(self) -> tuple[int, dict[str, str], bytes]:
        h11 = self._h11
        status, headers, body = 0, {}, bytearray()
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.reader.read(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return status, headers, bytes(body)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


class EventStream:
    """``GET /api/events`` read as a browser's EventSource would: one (event, data) per blank-line-ended block."""

    def __init__(self, client: HttpClient) -> None:
        self.client = client
        self.status = 0
        self.headers: dict[str, str] = {}
        self._buffer = b""

    @classmethod
    async def open(cls, port: int, *, key: str = TEST_API_KEY) -> EventStream:
        import h11

        stream = cls(await HttpClient.open(port))
        conn = stream.client.conn
        stream.client.writer.write(conn.send(h11.Request(method="GET", target="/api/events", headers=[
            ("host", "hub.test"), ("authorization", f"Bearer {key}"), ("accept", "text/event-stream")])) or b"")
        stream.client.writer.write(conn.send(h11.EndOfMessage()) or b"")
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await within(stream.client.reader.read(65536)))
            elif isinstance(event, h11.Response):
                stream.status = event.status_code
                stream.headers = {k.decode(): v.decode() for k, v in event.headers}
                return stream
            else:
                raise AssertionError(f"unexpected {event!r} before the event stream's head")

    async def next(self, timeout: float = 5.0) -> tuple[str, dict[str, Any]]:
        """The next event (comments skipped): its name and its JSON data."""
        import json

        import h11

        conn = self.client.conn
        while True:
            block, sep, rest = self._buffer.partition(b"\n\n")
            if sep:
                self._buffer = rest
                fields = dict(line.split(b": ", 1) for line in block.split(b"\n") if line and not line.startswith(b":"))
                if fields:
                    return fields[b"event"].decode(), json.loads(fields[b"data"])
                continue
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await within(self.client.reader.read(65536), timeout)
                if not data:
                    raise EOFError("the event stream ended")
                conn.receive_data(data)
            elif isinstance(event, h11.Data):
                self._buffer += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                raise EOFError("the event stream ended")

    async def close(self) -> None:
        await self.client.close()


# -- Headless Chromium over its DevTools protocol (a WebSocket), for the pages' tests ---------------------------
#
# Skipped where Chromium is not installed (Debian: apt-get install chromium).

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")


class ChromiumPage:
    """One page of a headless Chromium: ``call`` sends a DevTools command, ``evaluate`` runs JavaScript."""

    def __init__(self, cdp: Any) -> None:
        self._cdp = cdp
        self._ids = iter(range(1, 1 << 30))

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        import json

        n = next(self._ids)
        await self._cdp.send(json.dumps({"id": n, "method": method, "params": params}))
        while True:
            answer: dict[str, Any] = json.loads(await within(self._cdp.recv()))
            if answer.get("id") == n:
                return answer

    async def evaluate(self, expression: str) -> Any:
        """The value of ``expression`` in the page (awaited if it is a promise); raises if it threw."""
        answer = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        result = answer["result"]
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")


@contextlib.asynccontextmanager
async def chromium_page(url: str) -> AsyncIterator[ChromiumPage]:
    """A headless Chromium of the test's own (a fresh profile) with one page navigated to ``url``."""
    import json
    import re
    import urllib.request

    import websockets

    assert CHROMIUM is not None
    profile = tempfile.mkdtemp(prefix="wshub-chromium-")
    browser = await asyncio.create_subprocess_exec(
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
        f"--user-data-dir={profile}", "about:blank", stderr=asyncio.subprocess.PIPE)
    drain: asyncio.Future[bytes] | None = None
    try:
        assert browser.stderr is not None
        while not (found := re.search(rb"DevTools listening on ws://[^:]+:(\d+)/", await within(
                browser.stderr.readline(), 20))):
            pass
        drain = asyncio.ensure_future(browser.stderr.read())  # keeps the pipe from filling up
        targets = await asyncio.to_thread(
            lambda: json.loads(urllib.request.urlopen(f"http://127.0.0.1:{found.group(1).decode()}/json/list",
                                                      timeout=10).read()))
        target = next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"]
        async with websockets.connect(target, proxy=None, max_size=None) as cdp:
            page = ChromiumPage(cdp)
            await page.call("Page.navigate", url=url)
            yield page
    finally:
        browser.kill()
        await browser.wait()
        if drain is not None:
            drain.cancel()
        shutil.rmtree(profile, ignore_errors=True)

# -- Processes as their users run them: the hub (``python -m wshub_asyncio``) and the example listeners --------


class HubProcess:
    """``python -m wshub_asyncio`` (or ``wshub_trio``) configured by WSHUB_* variables; its stderr read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port
        self.log: list[str] = []

    async def line_matching(self, pattern: str, *, timeout: float = 10.0) -> re.Match[str]:
        """The first line (read so far or next) matching ``pattern``."""
        return (await self.lines_matching(pattern, 1, timeout=timeout))[0]

    async def lines_matching(self, pattern: str, count: int, *, timeout: float = 10.0) -> list[re.Match[str]]:
        """The first ``count`` lines matching ``pattern``, read within ``timeout`` in all."""
        regex = re.compile(pattern)

        async def scan() -> list[re.Match[str]]:
            while True:
                found = [m for line in self.log if (m := regex.search(line)) is not None]
                if len(found) >= count:
                    return found[:count]
                assert self.proc.stderr is not None
                line = await self.proc.stderr.readline()
                assert line, f"the hub exited: {self.log}"
                self.log.append(line.decode(errors="replace"))

        return await within(scan(), timeout)


@contextlib.asynccontextmanager
async def hub_process(*, port: int | None = None, shell: str = "asyncio", **env: str) -> AsyncIterator[HubProcess]:
    """``python -m wshub_<shell>`` on ``port`` (default: a free one), up once it logged ``listening on``;
    SIGTERM at the end.

    It runs in an empty folder of its own, configured by WSHUB_* variables
    alone: the checkout's ./config.yaml names the Redis at localhost:6379.
    """
    port = port or free_port()
    environ = hub_env(WSHUB_ADDRESS=f"127.0.0.1:{port}", **env)
    with tempfile.TemporaryDirectory(prefix="wshub-hub-") as cwd:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", shell_module(shell), env=environ, cwd=cwd,
                                                    stdin=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.PIPE)
        hub = HubProcess(proc, port)
        try:
            await hub.line_matching(r"listening on")
            yield hub
        finally:
            if proc.returncode is None:
                proc.terminate()
            assert proc.stderr is not None
            await within(proc.stderr.read(), 15)  # drain, so the process is not blocked on a full pipe
            await within(proc.wait(), 15)


async def next_line(proc: asyncio.subprocess.Process, timeout: float = 5.0) -> str:
    """The next line a process printed on stdout (fails if it exits first)."""
    assert proc.stdout is not None
    line = await within(proc.stdout.readline(), timeout)
    assert line, f"the process exited ({await proc.wait()})"
    return line.decode().rstrip("\n")


async def stop_process(proc: asyncio.subprocess.Process) -> int:
    """SIGTERM (unless it already exited) and its exit status."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    return await within(proc.wait(), 10)
