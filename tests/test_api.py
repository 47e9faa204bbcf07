"""The HTTP API (docs/protocol.md, HTTP API) on both brokers: real HTTP clients, WebSocket clients and Redis.

Every test that is about behaviour both brokers share runs twice, once on the
memory broker (no Redis anywhere) and once on a real redis-server; what only
Redis can show (a ``redis-cli`` publisher mixing with the API, the PSUBSCRIBE
the event stream needs) has tests of its own.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import websockets

from helpers import (
    TEST_API_KEY,
    EventStream,
    HttpClient,
    RedisProcess,
    hub_config,
    running_hub,
    wait_for,
    within,
    ws_url,
)
from wshub_asyncio import Server
from wshub_core import Hub

BROKERS = ["memory", "redis"]


@contextlib.asynccontextmanager
async def api_hub(shell: str, broker: str, redis_server: RedisProcess, prefix: str,
                  **overrides: Any) -> AsyncIterator[Any]:
    config = hub_config(redis_server.port, prefix, broker=broker, api_key=TEST_API_KEY, **overrides)
    assert config.broker == broker
    async with running_hub(config, shell) as server:
        yield server


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


async def connect(server: Server[Hub], key: str) -> websockets.ClientConnection:
    return await websockets.connect(ws_url(server.port, key), proxy=None, compression=None)


@pytest.mark.parametrize("broker", BROKERS)
def test_an_api_backend_drives_the_whole_protocol(shell: str,
                                                  broker: str, redis_server: RedisProcess, prefix: str) -> None:
    """Events in, groups out, group data, a message to one key, client data back, a kick: all through /api/."""

    async def scenario() -> None:
        async with api_hub(shell, broker, redis_server, prefix) as server:
            events = await EventStream.open(server.port)
            assert events.status == 200 and events.headers["content-type"] == "text/event-stream"
            await wait_for(lambda: server.core.ready, what="the stream's subscriptions confirmed")
            api = await HttpClient.open(server.port)
            ws = await connect(server, "alice")
            assert await events.next() == ("client-new", {"key": "alice"})
            status, headers, body = await api.request("PUT", "/api/keys/alice/groups", b'["news", "room/7"]')
            assert (status, json.loads(body)) == (200, {"ok": True}), body
            assert headers["content-type"] == "application/json"
            await wait_for(lambda: server.core.groups_of(next(iter(server.core._members))) == {"news", "room/7"},
                           what="groups set")
            assert (await api.request("POST", "/api/groups/news", b"hello"))[0] == 200
            assert await within(ws.recv()) == "hello"
            assert (await api.request("POST", "/api/groups/room%2F7", b"\x00\xff"))[0] == 200  # binary
            assert await within(ws.recv()) == b"\x00\xff"
            assert (await api.request("POST", "/api/keys/alice", b"just you"))[0] == 200
            assert await within(ws.recv()) == "just you"
            await ws.send("hi")
            assert await events.next() == ("client-data", {"key": "alice", "data": "hi"})
            await ws.send(b"\x01\x02\xff")
            assert await events.next() == ("client-data", {"key": "alice", "data": base64.b64encode(
                b"\x01\x02\xff").decode(), "binary": True})
            assert (await api.request("DELETE", "/api/keys/alice", b"logged out"))[0] == 200
            with pytest.raises(websockets.ConnectionClosed):
                await within(ws.recv())
            assert ws.close_code == 4000 and ws.close_reason == "logged out"
            assert await events.next() == ("client-gone", {"key": "alice"})
            await api.close()
            await events.close()

    run(scenario)


@pytest.mark.parametrize("broker", BROKERS)
def test_every_connection_of_a_key_gets_a_send_and_a_kick(shell: str, broker: str, redis_server: RedisProcess,
                                                         prefix: str) -> None:
    async def scenario() -> None:
        async with api_hub(shell, broker, redis_server, prefix) as server:
            api = await HttpClient.open(server.port)
            one, two, other = await connect(server, "k"), await connect(server, "k"), await connect(server, "o")
            await wait_for(lambda: server.core.ready, what="subscriptions confirmed")
            assert (await api.request("POST", "/api/keys/k", b"both"))[0] == 200
            assert [await within(one.recv()), await within(two.recv())] == ["both", "both"]
            assert (await api.request("DELETE", "/api/keys/k"))[0] == 200  # no body: the default reason
            for ws in (one, two):
                with pytest.raises(websockets.ConnectionClosed):
                    await within(ws.recv())
                assert (ws.close_code, ws.close_reason) == (4000, "closed by the backend")
            await other.send("still here")  # the other key is untouched
            assert other.close_code is None
            await other.close()
            await api.close()

    run(scenario)


@pytest.mark.parametrize("broker", BROKERS)
def test_bad_requests_get_their_status_and_a_reason(shell: str,
                                                    broker: str, redis_server: RedisProcess, prefix: str) -> None:
    async def scenario() -> None:
        async with api_hub(shell, broker, redis_server, prefix, api_maxBodySize=100) as server:
            api = await HttpClient.open(server.port)
            status, headers, body = await api.request("POST", "/api/groups/g", b"x", key=None)
            assert status == 401 and headers["www-authenticate"] == 'Bearer realm="wshub"', body
            assert json.loads(body) == {"error": "missing Authorization: Bearer <api.key>"}
            assert headers["connection"] == "close"  # its body was never read: the connection cannot go on
            api = await HttpClient.open(server.port)
            assert (await api.request("DELETE", "/api/keys/k", key="wrong"))[0] == 401  # no body: kept alive
            assert (await api.request("GET", "/api/nothing"))[0] == 404
            status, headers, _ = await api.request("GET", "/api/keys/k")
            assert (status, headers["allow"]) == (405, "POST, DELETE")
            status, _, body = await api.request("PUT", "/api/keys/k/groups", b"{not json")
            assert status == 400 and json.loads(body)["error"].startswith("the body is not JSON"), body
            status, _, body = await api.request("PUT", "/api/keys/k/groups", b'{"a": 1}')
            assert status == 400 and "JSON array of strings" in json.loads(body)["error"], body
            status, _, body = await api.request("PUT", "/api/keys/k/groups", b'["a", 1]')
            assert status == 400 and "got an item 1" in json.loads(body)["error"], body
            # every answer so far was on the one keep-alive connection
            status, _, _ = await api.request("POST", "/api/groups/g", b"", chunks=[b"chun", b"ked"])
            assert status == 200
            status, headers, body = await api.request("POST", "/api/groups/g", b"x" * 101)
            assert status == 413 and headers.get("connection") == "close", (status, headers, body)
            big = await HttpClient.open(server.port)
            status, _, _ = await big.request("POST", "/api/groups/g", b"", chunks=[b"x" * 60, b"y" * 60])
            assert status == 413
            await big.close()
            await api.close()
            await wait_for(lambda: server.core.client_count() == 0, what="every API socket closed")

    run(scenario)


def test_a_publish_while_redis_is_down_is_refused_at_once(shell: str, own_redis: RedisProcess, prefix: str) -> None:
    """503 with the reason, and nothing is published later: the caller decides whether to retry."""

    async def scenario() -> None:
        async with api_hub(shell, "redis", own_redis, prefix) as server:
            api = await HttpClient.open(server.port)
            own_redis.kill()
            await wait_for(lambda: not server.core.ready, what="the hub saw Redis go")
            status, headers, body = await api.request("POST", "/api/groups/g", b"late")
            assert status == 503 and headers["retry-after"] == "1", body
            assert json.loads(body)["error"].startswith("not ready: redis"), body
            await api.close()

    run(scenario)


def test_redis_cli_and_the_api_mix(shell: str, redis_server: RedisProcess, prefix: str) -> None:
    """client-send and client-kick are plain channels: a PUBLISH from any Redis client works as the API does."""

    async def scenario() -> None:
        r = redis_server.client()
        async with api_hub(shell, "redis", redis_server, prefix) as server:
            events = await EventStream.open(server.port)
            ws = await connect(server, "bob")
            assert await events.next() == ("client-new", {"key": "bob"})
            await wait_for(lambda: server.core.ready, what="subscriptions confirmed")
            assert await r.publish(f"{prefix}client-send:bob", "from redis") == 1
            assert await within(ws.recv()) == "from redis"
            await r.publish(f"{prefix}client-data:someone-else", "seen by the stream")  # another hub's client
            assert await events.next() == ("client-data", {"key": "someone-else", "data": "seen by the stream"})
            channels = await r.execute_command("PUBSUB", "NUMPAT")
            assert channels >= 1  # the stream's PSUBSCRIBE
            await r.publish(f"{prefix}client-kick:bob", "")
            with pytest.raises(websockets.ConnectionClosed):
                await within(ws.recv())
            assert ws.close_code == 4000
            await events.close()
            await wait_for(lambda: not server.core._api.streaming, what="the stream forgotten")
            await wait_for(lambda: server.core.subscribed_channels() == set(), what="everything released")
        await r.aclose()

    run(scenario)


@pytest.mark.parametrize("broker", BROKERS)
def test_an_event_stream_that_stops_reading_is_closed_not_buffered(shell: str, broker: str, redis_server: RedisProcess,
                                                                    prefix: str) -> None:
    """Like a slow WebSocket client: over webSocket.maxOutboundBuffer the stream is aborted, the others go on."""

    async def scenario() -> None:
        async with api_hub(shell, broker, redis_server, prefix, webSocket_maxOutboundBuffer=65536,
                           webSocket_writeWait=2) as server:
            stalled = socket.socket()
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window, soon full
            stalled.setblocking(False)
            loop = asyncio.get_running_loop()
            await loop.sock_connect(stalled, ("127.0.0.1", server.port))
            await loop.sock_sendall(stalled, b"GET /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                                    + TEST_API_KEY.encode() + b"\r\n\r\n")
            await wait_for(lambda: server.core._api.stream_count() == 1, what="the stalled stream open")
            reader = await EventStream.open(server.port)  # a stream that reads
            await wait_for(lambda: server.core.ready, what="the streams' subscriptions confirmed")
            ws = await connect(server, "chatty")
            assert await reader.next() == ("client-new", {"key": "chatty"})
            message = "m" * 1000
            count = 6000  # 6 MB of events: more than the kernel's send buffer (4 MiB at most here) and the bound

            received = 0

            async def read_all() -> None:  # the reading stream gets every event, read as they come
                nonlocal received
                for _ in range(count):
                    assert await reader.next(timeout=15) == ("client-data", {"key": "chatty", "data": message})
                    received += 1

            reading = asyncio.ensure_future(read_all())
            for sent in range(1, count + 1):
                await ws.send(message)
                if sent % 20 == 0:  # a reader that keeps up: at most 20 events (~21 KB) behind
                    await wait_for(lambda n=sent: received >= n or reading.done(), what="the reader keeping up")
            await within(reading, 30)
            await wait_for(lambda: server.core.slow_closes >= 1, timeout=15, what="the stalled stream aborted")
            assert server.core._api.stream_count() == 1
            await ws.close()
            await reader.close()
            stalled.close()

    run(scenario)
