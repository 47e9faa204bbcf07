"""Slow and hostile clients against the real hub: each is dealt with, everyone else is served."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import ClassVar

import websockets

from helpers import (
    RawWebSocket,
    RedisProcess,
    Subscriber,
    hub_config,
    raw_websocket,
    running_hub,
    upgrade_head,
    wait_for,
    within,
    ws_frame,
)
from wshub_asyncio import Server
from wshub_core import Hub


async def raw_upgrade(port: int, key: str, *, origin: str | None = None) -> RawWebSocket:
    extra = () if origin is None else (f"Origin: {origin}",)
    return await raw_websocket(port, None, head=upgrade_head(key, extra=extra))


async def assert_still_served(server: Server[Hub], r: object, prefix: str, ws: websockets.ClientConnection,
                              text: str) -> None:
    """A well-behaved client keeps receiving its group's messages."""
    import redis.asyncio as aredis

    assert isinstance(r, aredis.Redis)
    await r.publish(f"{prefix}group-data:g", text)
    assert await within(ws.recv()) == text


async def good_client(server: Server[Hub], r: object, prefix: str, key: str) -> websockets.ClientConnection:
    import redis.asyncio as aredis

    assert isinstance(r, aredis.Redis)
    ws = await websockets.connect(f"ws://127.0.0.1:{server.port}/ws?session_key={key}")
    await wait_for(lambda: server.core.ready and f"{prefix}groups-new:{key}".encode()
                   in server.core.subscribed_channels(), what="key subscribed")
    await r.publish(f"{prefix}groups-new:{key}", '["g"]')
    await wait_for(lambda: server.core.ready and f"{prefix}group-data:g".encode()
                   in server.core.subscribed_channels(), what="group subscribed")
    return ws


class TestRFC6455Section7ClosingCodes:
    """Frame-level violations each get the right close code; the hub keeps serving others."""

    CASES: ClassVar[list[tuple[str, bytes, int]]] = [
        ("unmasked frame (5.1)", ws_frame(0x1, b"hi", masked=False), 1002),
        ("reserved opcode 0x3 (5.2)", ws_frame(0x3, b"x"), 1002),
        ("reserved bits without extension (5.2)", ws_frame(0x1, b"x", rsv=0b100), 1002),
        ("control frame over 125 bytes (5.5)", ws_frame(0x9, b"p" * 126), 1002),
        ("fragmented control frame (5.5)", ws_frame(0x9, b"p", fin=False), 1002),
        ("continuation without a start (5.4)", ws_frame(0x0, b"x"), 1002),
        ("invalid UTF-8 in text (8.1)", ws_frame(0x1, b"\xff\xfe"), 1007),
        ("close code 1005 is not sendable (7.4.1)", ws_frame(0x8, struct.pack("!H", 1005)), 1002),
        ("close code 999 (7.4.2)", ws_frame(0x8, struct.pack("!H", 999)), 1002),
        ("one-byte close payload (5.5.1)", ws_frame(0x8, b"\x03"), 1002),
        ("message over maxMessageSize", ws_frame(0x2, b"z" * 5000), 1009),
    ]

    def test_each_violation_gets_its_code(self, redis_server: RedisProcess, prefix: str) -> None:
        async def scenario() -> None:
            r = redis_server.client()
            async with running_hub(hub_config(redis_server.port, prefix, webSocket_maxMessageSize=4096)) as server:
                ws = await good_client(server, r, prefix, "good")
                for i, (what, data, code) in enumerate(self.CASES):
                    raw = await raw_upgrade(server.port, f"bad{i}")
                    assert raw.status_line == b"HTTP/1.1 101 Switching Protocols", what
                    raw.send(data)
                    close, _ = await raw.read_until_close()
                    assert close.close_code == code, what
                    assert await raw.at_eof(), what  # and the socket is closed
                    await raw.aclose()
                    await assert_still_served(server, r, prefix, ws, f"after {what}")
            await r.aclose()

        asyncio.run(scenario())


def test_slow_consumer_is_closed_and_does_not_delay_the_others(redis_server: RedisProcess, prefix: str) -> None:
    async def scenario() -> None:
        r = redis_server.client()
        config = hub_config(redis_server.port, prefix, webSocket_maxOutboundBuffer=256 * 1024,
                            webSocket_writeWait=30)
        async with running_hub(config) as server:
            readers = [await good_client(server, r, prefix, f"ok{i}") for i in range(5)]
            # A client that completes the upgrade, joins the group, and then never reads.
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(upgrade_head("stuck"))
            await wait_for(lambda: f"{prefix}groups-new:stuck".encode() in server.core.subscribed_channels()
                           and server.core.ready, what="stuck subscribed")
            await r.publish(f"{prefix}groups-new:stuck", '["g"]')
            await wait_for(lambda: server.core.ready, what="ready")
            payload = "y" * 32768
            n = 300  # 9.6 MB: more than the kernel's socket buffers and the 256 KiB bound together
            received = [0] * len(readers)

            async def drain(i: int, ws: websockets.ClientConnection) -> None:
                for _ in range(n):
                    assert await within(ws.recv()) == payload
                    received[i] += 1

            drains = [asyncio.ensure_future(drain(i, ws)) for i, ws in enumerate(readers)]
            for _ in range(n):
                await r.publish(f"{prefix}group-data:g", payload)
            await within(asyncio.gather(*drains), 20)
            assert received == [n] * len(readers)
            await wait_for(lambda: server.core.stats.closes[1008] == 1, what="slow consumer closed")
            assert "wshub_slow_consumer_closes_total 1" in server.core.metrics_text()
            sock.close()
        await r.aclose()

    asyncio.run(scenario())


def test_slowloris_is_closed_after_handshake_timeout(redis_server: RedisProcess, prefix: str) -> None:
    async def scenario() -> None:
        async with running_hub(hub_config(redis_server.port, prefix, webSocket_handshakeTimeout=0.3)) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /ws?session_key=slow HTTP/1.1\r\nHost: x\r\n")  # and never the rest
            started = asyncio.get_running_loop().time()
            assert await within(reader.read(), 5) == b""
            assert asyncio.get_running_loop().time() - started >= 0.25
            writer.close()

    asyncio.run(scenario())


def test_connection_limit_answers_503(redis_server: RedisProcess, prefix: str) -> None:
    async def scenario() -> None:
        async with running_hub(hub_config(redis_server.port, prefix, webSocket_maxConnections=2)) as server:
            url = f"ws://127.0.0.1:{server.port}/ws?session_key="
            first, second = await websockets.connect(url + "a"), await websockets.connect(url + "b")
            raw = await raw_upgrade(server.port, "c")
            assert raw.status_line.startswith(b"HTTP/1.1 503")
            assert b"too many connections" in await within(raw.reader.read())
            await first.close()
            await wait_for(lambda: server.core.client_count() == 1, what="first gone")
            third = await websockets.connect(url + "c")  # room again
            await third.close()
            await second.close()

    asyncio.run(scenario())


def test_allowed_origins_rejects_cross_site_with_403(redis_server: RedisProcess, prefix: str) -> None:
    async def scenario() -> None:
        config = hub_config(redis_server.port, prefix, webSocket_allowedOrigins=["https://app.example"])
        async with running_hub(config) as server:
            raw = await raw_upgrade(server.port, "a", origin="https://evil.example")
            assert raw.status_line.startswith(b"HTTP/1.1 403")
            await raw.aclose()
            raw = await raw_upgrade(server.port, "a")  # no Origin at all: not a browser we allow
            assert raw.status_line.startswith(b"HTTP/1.1 403")
            await raw.aclose()
            raw = await raw_upgrade(server.port, "a", origin="https://app.example")
            assert raw.status_line == b"HTTP/1.1 101 Switching Protocols"
            await raw.aclose()

    asyncio.run(scenario())


def test_groups_timeout_closes_an_unanswered_client_with_1008(redis_server: RedisProcess, prefix: str) -> None:
    async def scenario() -> None:
        r = redis_server.client()
        sub = Subscriber(r)
        await sub.subscribe(f"{prefix}client-new")
        async with running_hub(hub_config(redis_server.port, prefix, webSocket_groupsTimeout=0.3)) as server:
            url = f"ws://127.0.0.1:{server.port}/ws?session_key="
            ignored = await websockets.connect(url + "ignored")
            answered = await websockets.connect(url + "answered")
            announced = {(await sub.next())[1], (await sub.next())[1]}
            assert announced == {b"ignored", b"answered"}
            await r.publish(f"{prefix}groups-new:answered", "g")
            await within(ignored.wait_closed())
            assert ignored.close_code == 1008
            assert ignored.close_reason == "no groups assigned"
            await within(await answered.ping())  # the answered one stays
            await answered.close()
            await sub.close()
        await r.aclose()

    asyncio.run(scenario())


def test_http10_upgrade_without_host_gets_400_not_an_exception(redis_server: RedisProcess, prefix: str) -> None:
    """An upgrade without Host (HTTP/1.0 allows it, WebSocket does not) gets 400, never an exception."""
    async def scenario() -> None:
        async with running_hub(hub_config(redis_server.port, prefix)) as server:
            head = (b"GET /ws?session_key=k HTTP/1.0\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
            raw = await raw_websocket(server.port, None, head=head)
            assert raw.status_line.startswith(b"HTTP/1.1 400"), raw.head
            assert b"Host" in await within(raw.reader.read())  # the reason names the missing header, then EOF
            assert server.core.client_count() == 0

    asyncio.run(scenario())
