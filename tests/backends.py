"""A backend for the protocol tests, on either broker: the listener and services, as the hub sees them.

On the Redis broker the backend PUBLISHes and SUBSCRIBEs on the test's
redis-server, as a listener with a Redis client does. On the memory broker
there is no Redis at all, and it goes through the hub's HTTP API instead
(``PUT /api/keys/KEY/groups``, ``POST /api/groups/GROUP``, ``GET /api/events``),
as a backend without a Redis client does. One test body then runs on both
brokers (docs/protocol.md, Channels and HTTP API: the same channels, the
same meaning).

Rules:
1. Real sockets only: a redis.asyncio client, or HTTP/1.1 to the hub's port.
   The hub is only looked into to wait for it (``key_ready``), never to
   decide what a test asserts.
2. A call returns once the broker took the message (Redis answered the
   PUBLISH; the API answered 200), and fails the test if it was not taken.
3. Events are what a subscriber to the same channels would hear: the API's
   stream carries every key's events, so it is filtered down to the channels
   ``listen`` named, as a Redis SUBSCRIBE to them would be.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import redis.asyncio as aredis

from helpers import TEST_API_KEY, EventStream, HttpClient, Subscriber, hub_config, running_hub, wait_key_confirmed

BROKERS = ["memory", "redis"]

Event = tuple[str, str, bytes | None]
"""(kind, key, data): kind is client-new, client-data or client-gone; data is a client-data's message, else None."""


def _bytes(payload: str | bytes) -> bytes:
    return payload.encode() if isinstance(payload, str) else payload


class Backend(abc.ABC):
    """What a listener and a service do, and what they hear."""

    def __init__(self, server: Any, prefix: str) -> None:
        self.server = server
        self.prefix = prefix
        self._closed = False

    @abc.abstractmethod
    async def listen(self, *channels: str) -> None:
        """Hear these channels from now on (names without the prefix: ``client-new``, ``client-data:KEY``, ...)."""

    @abc.abstractmethod
    async def next_event(self, timeout: float = 5.0) -> Event:
        """The next message on a channel ``listen`` named."""

    @abc.abstractmethod
    async def set_groups(self, key: str, payload: str | bytes) -> None:
        """Answer with the groups of ``key``; the hub must have heard it (Redis: one receiver; API: 200)."""

    @abc.abstractmethod
    async def invalid_groups(self, key: str, payload: bytes) -> None:
        """An answer that must change nothing: Redis publishes it raw (the hub hears it and must ignore it);
        the API refuses it with 400 (it never reaches the broker)."""

    @abc.abstractmethod
    async def group_data(self, group: str, payload: str | bytes) -> int | None:
        """Publish to ``group``: the receivers Redis counted, or None (the API answers 200 either way)."""

    @property
    def hub_sockets(self) -> int:
        """How many of the hub's sockets (``client_count``) are the backend's own: none on Redis."""
        return 0

    async def key_ready(self, key: str) -> None:
        """Until an answer for ``key`` would be heard: the hub's subscription to its groups channel is confirmed.

        On Redis, client-new is only published after that; on the memory broker a need is in effect at once.
        """
        await wait_key_confirmed(self.server, self.prefix, key)

    async def close(self) -> None:
        """Close the backend's sockets (once; again is a no-op), e.g. before checking that the hub holds nothing."""
        if not self._closed:
            self._closed = True
            await self._close()

    @abc.abstractmethod
    async def _close(self) -> None: ...


class RedisBackend(Backend):
    """A listener with a Redis client: PUBLISH, and a subscriber for the hub's announcements and client data."""

    def __init__(self, server: Any, prefix: str, redis: aredis.Redis) -> None:
        super().__init__(server, prefix)
        self.redis = redis
        self._sub = Subscriber(redis)

    async def listen(self, *channels: str) -> None:
        await self._sub.subscribe(*(self.prefix + c for c in channels))

    async def next_event(self, timeout: float = 5.0) -> Event:
        channel, data = await self._sub.next(timeout)
        assert channel.startswith(self.prefix), channel
        name = channel[len(self.prefix):]
        kind, _, key = name.partition(":")
        if kind == "client-data":
            return kind, key, data
        assert not key, name
        return name, data.decode(), None

    async def set_groups(self, key: str, payload: str | bytes) -> None:
        assert await self.redis.publish(f"{self.prefix}groups-new:{key}", payload) == 1, \
            "the hub is not subscribed to the key"

    async def invalid_groups(self, key: str, payload: bytes) -> None:
        await self.set_groups(key, payload)

    async def group_data(self, group: str, payload: str | bytes) -> int | None:
        receivers: int = await self.redis.publish(f"{self.prefix}group-data:{group}", payload)
        return receivers

    async def _close(self) -> None:
        await self._sub.close()
        await self.redis.aclose()


class ApiBackend(Backend):
    """A backend without a Redis client: the hub's HTTP API, on one keep-alive connection, and its event stream."""

    def __init__(self, server: Any, prefix: str, api: HttpClient) -> None:
        super().__init__(server, prefix)
        self.api = api
        self._events: EventStream | None = None
        self._channels: set[str] = set()

    @property
    def hub_sockets(self) -> int:
        return 0 if self._closed else 1 + int(self._events is not None)

    async def listen(self, *channels: str) -> None:
        if self._events is None:
            self._events = await EventStream.open(self.server.port)
            assert self._events.status == 200, self._events.status
        self._channels.update(channels)

    async def next_event(self, timeout: float = 5.0) -> Event:
        assert self._events is not None, "listen() first"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            kind, data = await self._events.next(max(deadline - loop.time(), 0.001))
            key = data["key"]
            if kind == "client-data":
                assert set(data) <= {"key", "data", "binary"}, data
                message = base64.b64decode(data["data"]) if data.get("binary") else data["data"].encode()
                if f"client-data:{key}" in self._channels:
                    return kind, key, message
            else:
                assert set(data) == {"key"}, data
                if kind in self._channels:
                    return kind, key, None

    async def _call(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        status, _, answer = await self.api.request(method, path, body)
        return status, json.loads(answer)

    async def set_groups(self, key: str, payload: str | bytes) -> None:
        status, answer = await self._call("PUT", f"/api/keys/{quote(key, safe='')}/groups", _bytes(payload))
        assert (status, answer) == (200, {"ok": True}), (status, answer)

    async def invalid_groups(self, key: str, payload: bytes) -> None:
        status, answer = await self._call("PUT", f"/api/keys/{quote(key, safe='')}/groups", payload)
        assert status == 400 and set(answer) == {"error"}, (status, answer, payload)

    async def group_data(self, group: str, payload: str | bytes) -> int | None:
        status, answer = await self._call("POST", f"/api/groups/{quote(group, safe='')}", _bytes(payload))
        # With history (the default) the answer also carries the message's offset in the group's history.
        assert status == 200 and answer.get("ok") is True and set(answer) <= {"ok", "offset"}, (status, answer)
        return None

    async def _close(self) -> None:
        if self._events is not None:
            await self._events.close()
        await self.api.close()


@contextlib.asynccontextmanager
async def hub_and_backend(broker: str, redis_port: int, prefix: str, shell: str = "asyncio",
                          **overrides: Any) -> AsyncIterator[tuple[Any, Backend]]:
    """An in-process hub on ``broker`` and ``shell``, and a backend for it: Redis on ``redis_port``, or the
    hub's HTTP API."""
    config = hub_config(redis_port, prefix, broker=broker, api_key=TEST_API_KEY, **overrides)
    assert config.broker == broker
    async with running_hub(config, shell) as server:
        backend: Backend
        if broker == "redis":
            backend = RedisBackend(server, prefix, aredis.Redis(host="127.0.0.1", port=redis_port))
        else:
            backend = ApiBackend(server, prefix, await HttpClient.open(server.port))
        try:
            yield server, backend
        finally:
            await backend.close()
