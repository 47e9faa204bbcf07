"""Shared test plumbing: real redis-server processes, an in-process hub, clients.

Nothing here mocks Redis or the network: every helper starts or talks to a
real process over TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aredis

from wshub_asyncio import HubServer
from wshub_core import Config, load_config

T = TypeVar("T")

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


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
async def running_hub(config: Config) -> AsyncIterator[HubServer]:
    server = HubServer(config, seed=1)
    await server.start()
    try:
        await wait_for(lambda: server.hub.ready, what="hub ready")
        yield server
    finally:
        await server.close()


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
