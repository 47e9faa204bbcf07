"""Slow and hostile clients against the real hub: each is dealt with, everyone else is served.

Every test runs on both brokers (ids ``memory`` and ``redis``): how the hub
treats a client does not depend on the broker; the backend (tests/backends.py)
is a Redis listener on one and the HTTP API on the other.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import ClassVar

import pytest
import websockets

from backends import BROKERS, Backend, hub_and_backend
from helpers import (
    RawWebSocket,
    raw_websocket,
    upgrade_head,
    wait_confirmed,
    wait_for,
    within,
    ws_frame,
)
from wshub_asyncio import Server
from wshub_core import Hub

pytestmark = pytest.mark.parametrize("broker", BROKERS)


async def raw_upgrade(port: int, key: str, *, origin: str | None = None) -> RawWebSocket:
    extra = () if origin is None else (f"Origin: {origin}",)
    return await raw_websocket(port, None, head=upgrade_head(key, extra=extra))


async def assert_still_served(backend: Backend, ws: websockets.ClientConnection, text: str) -> None:
    """A well-behaved client keeps receiving its group's messages."""
    await backend.group_data("g", text)
    assert await within(ws.recv()) == text


async def good_client(server: Server[Hub], backend: Backend, key: str) -> websockets.ClientConnection:
    ws = await websockets.connect(f"ws://127.0.0.1:{server.port}/ws?session_key={key}")
    await backend.key_ready(key)
    await backend.set_groups(key, '["g"]')
    await wait_confirmed(server, f"{backend.prefix}group-data:g".encode(), what="group subscribed")
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

    def test_each_violation_gets_its_code(self, broker: str, redis_port: int, prefix: str) -> None:
        async def scenario() -> None:
            async with hub_and_backend(broker, redis_port, prefix, webSocket_maxMessageSize=4096) as (server,
                                                                                                     backend):
                ws = await good_client(server, backend, "good")
                for i, (what, data, code) in enumerate(self.CASES):
                    raw = await raw_upgrade(server.port, f"bad{i}")
                    assert raw.status_line == b"HTTP/1.1 101 Switching Protocols", what
                    raw.send(data)
                    close, _ = await raw.read_until_close()
                    assert close.close_code == code, what
                    assert await raw.at_eof(), what  # and the socket is closed
                    await raw.aclose()
                    await assert_still_served(backend, ws, f"after {what}")

        asyncio.run(scenario())


def test_slow_consumer_is_closed_and_does_not_delay_the_others(shell: str,
                                                               broker: str, redis_port: int, prefix: str) -> None:
    async def scenario() -> None:
        # 1 MiB: the stuck client (a 4 KiB window, at most 4 MiB in the hub's send buffer) is over it long
        # before the 9.6 MB end, and a reader in this process that the hub (on trio: in a thread of its own)
        # runs ahead of by a few messages is not.
        async with hub_and_backend(broker, redis_port, prefix, shell, webSocket_maxOutboundBuffer=1024 * 1024,
                                   webSocket_writeWait=30) as (server, backend):
            readers = [await good_client(server, backend, f"ok{i}") for i in range(5)]
            # A client that completes the upgrade, joins the group, and then never reads.
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(upgrade_head("stuck"))
            await backend.key_ready("stuck")
            await backend.set_groups("stuck", '["g"]')
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
                await backend.group_data("g", payload)
            await within(asyncio.gather(*drains), 20)
            assert received == [n] * len(readers)
            await wait_for(lambda: server.core.stats.closes[1008] == 1, what="slow consumer closed")
            assert "wshub_slow_consumer_closes_total 1" in server.core.metrics_text()
            sock.close()

    asyncio.run(scenario())


def test_slowloris_is_closed_after_handshake_timeout(shell: str, broker: str, redis_port: int, prefix: str) -> None:
    async def scenario() -> None:
        async with hub_and_backend(broker, redis_port, prefix, shell, webSocket_handshakeTimeout=0.3) as (server, _):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /ws?session_key=slow HTTP/1.1\r\nHost: x\r\n")  # and never the rest
            started = asyncio.get_running_loop().time()
            assert await within(reader.read(), 5) == b""
            assert asyncio.get_running_loop().time() - started >= 0.25
            writer.close()

    asyncio.run(scenario())


def test_connection_limit_answers_503(shell: str, broker: str, redis_port: int, prefix: str) -> None:
    async def scenario() -> None:
        async with hub_and_backend(broker, redis_port, prefix, shell, webSocket_maxConnections=2) as (server, backend):
            url = f"ws://127.0.0.1:{server.port}/ws?session_key="
            first, second = await websockets.connect(url + "a"), await websockets.connect(url + "b")
            raw = await raw_upgrade(server.port, "c")
            assert raw.status_line.startswith(b"HTTP/1.1 503")
            assert b"too many connections" in await within(raw.reader.read())
            await first.close()
            await wait_for(lambda: server.core.client_count() == 1 + backend.hub_sockets, what="first gone")
            third = await websockets.connect(url + "c")  # room again
            await third.close()
            await second.close()

    asyncio.run(scenario())


def test_allowed_origins_rejects_cross_site_with_403(shell: str, broker: str, redis_port: int, prefix: str) -> None:
    async def scenario() -> None:
        async with hub_and_backend(broker, redis_port, prefix, shell,
                                   webSocket_allowedOrigins=["https://app.example"]) as (server, _):
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


def test_groups_timeout_closes_an_unanswered_client_with_1008(shell: str,
                                                              broker: str, redis_port: int, prefix: str) -> None:
    async def scenario() -> None:
        async with hub_and_backend(broker, redis_port, prefix, shell, webSocket_groupsTimeout=0.3) as (server, backend):
            await backend.listen("client-new")
            url = f"ws://127.0.0.1:{server.port}/ws?session_key="
            ignored = await websockets.connect(url + "ignored")
            answered = await websockets.connect(url + "answered")
            announced = {await backend.next_event(), await backend.next_event()}
            assert announced == {("client-new", "ignored", None), ("client-new", "answered", None)}
            await backend.set_groups("answered", '["g"]')
            await within(ignored.wait_closed())
            assert ignored.close_code == 1008
            assert ignored.close_reason == "no groups assigned"
            await within(await answered.ping())  # the answered one stays
            await answered.close()

    asyncio.run(scenario())


def test_http10_upgrade_without_host_gets_400_not_an_exception(shell: str,
                                                               broker: str, redis_port: int, prefix: str) -> None:
    """An upgrade without Host (HTTP/1.0 allows it, WebSocket does not) gets 400, never an exception."""
    async def scenario() -> None:
        async with hub_and_backend(broker, redis_port, prefix, shell) as (server, backend):
            head = (b"GET /ws?session_key=k HTTP/1.0\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
            raw = await raw_websocket(server.port, None, head=head)
            assert raw.status_line.startswith(b"HTTP/1.1 400"), raw.head
            assert b"Host" in await within(raw.reader.read())  # the reason names the missing header, then EOF
            assert server.core.client_count() == backend.hub_sockets  # the 400's socket is gone

    asyncio.run(scenario())
