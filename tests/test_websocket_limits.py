"""WebSocket limits on the real hub: keepalive, message size, protocol errors (RFC 6455, docs/protocol.md).

Each misbehaving client gets its documented close code and then a TCP close;
the well-behaved clients next to it keep being served in both directions.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aredis
import websockets

from helpers import (
    Frame,
    RawWebSocket,
    RedisProcess,
    Subscriber,
    hub_config,
    raw_websocket,
    running_hub,
    wait_for,
    wait_groups,
    wait_key_confirmed,
    within,
    ws_frame,
    ws_url,
)
from wshub_asyncio import Server
from wshub_core import Hub


async def member(server: Server[Hub], r: aredis.Redis, prefix: str, key: str,
                 **kw: Any) -> websockets.ClientConnection:
    """A websockets client of ``key`` in group "g"."""
    ws = await websockets.connect(ws_url(server.port, key), proxy=None, **kw)
    await wait_key_confirmed(server, prefix, key)
    assert await r.publish(f"{prefix}groups-new:{key}", '["g"]') == 1
    await wait_groups(server, prefix, {"g"})
    return ws


async def still_served(r: aredis.Redis, sub: Subscriber, prefix: str, ws: websockets.ClientConnection,
                       key: str, text: str) -> None:
    """Both directions still work for a good client."""
    await r.publish(f"{prefix}group-data:g", text)
    assert await within(ws.recv()) == text
    await ws.send(text)
    assert await sub.next() == (f"{prefix}client-data:{key}", text.encode())


# -- keepalive (webSocket.pongWait) ------------------------------------------------------------------------------


def test_keepalive_keeps_answering_clients_and_closes_silent_ones_with_1011(shell: str, redis_server: RedisProcess,
                                                                            prefix: str) -> None:
    pong_wait = 1.0  # pings every 0.9 s; a client has 0.1 s to answer (generous even on a busy CPU)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        r = redis_server.client()
        sub = Subscriber(r)
        await sub.subscribe(f"{prefix}client-data:answering", f"{prefix}client-data:chatty", f"{prefix}client-gone")
        async with running_hub(hub_config(redis_server.port, prefix, webSocket_pongWait=pong_wait), shell) as server:
            # websockets answers pings by itself; ping_interval=None: it sends nothing of its own.
            good = await member(server, r, prefix, "good", ping_interval=None)
            started = loop.time()
            silent = await raw_websocket(server.port, "silent")
            answering = await raw_websocket(server.port, "answering")

            async def answer_pings(count: int) -> list[float]:
                """Answer ``count`` pings of the hub, like a browser would; when each came."""
                times = []
                while len(times) < count:
                    frame = await answering.read_frame(timeout=3 * pong_wait)
                    assert frame.opcode == 0x9, frame  # nothing but pings
                    answering.send(ws_frame(0xA, frame.payload))
                    times.append(loop.time() - started)
                return times

            chatty = await raw_websocket(server.port, "chatty")
            stop_chatting = asyncio.Event()

            async def chat() -> list[Frame]:
                """Never answers a ping, but sends its own every 0.3 x pongWait: that is life too."""
                got = []
                while not stop_chatting.is_set():
                    chatty.send(ws_frame(0x9, b"mine"))
                    got.append(await chatty.read_frame(timeout=3 * pong_wait))
                    await asyncio.sleep(0.3 * pong_wait)  # pacing a client's traffic, not waiting for anything
                return got

            pinger = asyncio.ensure_future(answer_pings(3))
            chatter = asyncio.ensure_future(chat())
            # The silent one: a ping after 0.9 x pongWait, then close 1011 at pongWait, then TCP close.
            close, before = await silent.read_until_close(timeout=3 * pong_wait)
            closed_after = loop.time() - started
            assert all(f.opcode == 0x9 for f in before)  # a ping at 0.9 x pongWait (unless the loop lagged)
            assert close.close_code == 1011
            assert 0.85 * pong_wait <= closed_after <= 2.5 * pong_wait, closed_after
            assert await silent.at_eof()
            assert await sub.next() == (f"{prefix}client-gone", b"silent")

            ping_times = await within(pinger, 6 * pong_wait)
            assert ping_times[-1] >= 2.5 * pong_wait  # alive well past several pongWaits
            stop_chatting.set()
            chatted = await within(chatter, 3 * pong_wait)
            # The hub answered each of its pings and never needed to ping it.
            assert [(f.opcode, f.payload) for f in chatted] == [(0xA, b"mine")] * len(chatted)
            chatty.send(ws_frame(0x1, b"chatty too"))
            assert await sub.next() == (f"{prefix}client-data:chatty", b"chatty too")
            answering.send(ws_frame(0x1, b"still here"))
            assert await sub.next() == (f"{prefix}client-data:answering", b"still here")
            # The websockets client was pinged and answered the whole time: still open and served.
            assert good.state is websockets.State.OPEN
            await r.publish(f"{prefix}group-data:g", "after the pings")
            assert await within(good.recv()) == "after the pings"
            await within(await good.ping(b"hub answers pings too"))
            assert server.core.stats.closes[1011] == 1
            await good.close()
            await answering.aclose()
            await chatty.aclose()
        await sub.close()
        await r.aclose()

    asyncio.run(scenario())


# -- webSocket.maxMessageSize --------------------------------------------------------------------------------------


def test_oversize_messages_are_closed_with_1009_and_others_are_served(shell: str, redis_server: RedisProcess,
                                                                      prefix: str) -> None:
    limit = 1024

    async def scenario() -> None:
        r = redis_server.client()
        sub = Subscriber(r)
        await sub.subscribe(f"{prefix}client-data:good", f"{prefix}client-data:big")
        async with running_hub(hub_config(redis_server.port, prefix, webSocket_maxMessageSize=limit), shell) as server:
            good = await member(server, r, prefix, "good")
            big = await websockets.connect(ws_url(server.port, "big"), proxy=None, compression=None)
            # Exactly the limit passes, counted in bytes (512 two-byte characters are 1024 bytes).
            await big.send(b"b" * limit)
            assert await sub.next() == (f"{prefix}client-data:big", b"b" * limit)
            await big.send("é" * (limit // 2))
            assert await sub.next() == (f"{prefix}client-data:big", ("é" * (limit // 2)).encode())
            await big.send("é" * (limit // 2) + "x")  # 1025 bytes
            await within(big.wait_closed())
            assert big.close_code == 1009
            await still_served(r, sub, prefix, good, "good", "after one big message")

            # Fragments each under the limit, together over it: checked as they arrive.
            frag = await raw_websocket(server.port, "big")
            frag.send(ws_frame(0x2, b"f" * 400, fin=False) + ws_frame(0x0, b"f" * 400, fin=False)
                      + ws_frame(0x0, b"f" * 400, fin=False))
            close, _ = await frag.read_until_close()
            assert close.close_code == 1009
            assert await frag.at_eof()
            await still_served(r, sub, prefix, good, "good", "after fragments")  # and nothing of "big" came
            assert server.core.stats.closes[1009] == 2
            await good.close()
            await frag.aclose()
        await sub.close()
        await r.aclose()

    asyncio.run(scenario())


# -- protocol errors (RFC 6455 sections 5.1, 5.6, 8.1) ----------------------------------------------------------------


async def _violate(server: Server[Hub], key: str, data: bytes) -> int:
    raw: RawWebSocket = await raw_websocket(server.port, key)
    assert raw.status_line == b"HTTP/1.1 101 Switching Protocols"
    raw.send(data)
    close, _ = await raw.read_until_close()
    assert await raw.at_eof()  # then the hub closes TCP
    await raw.aclose()
    return close.close_code


def test_protocol_errors_get_their_close_code_and_others_are_unaffected(shell: str, redis_server: RedisProcess,
                                                                        prefix: str) -> None:
    cases = [
        ("unmasked client frame (5.1)", ws_frame(0x1, b"hi", masked=False), 1002),
        ("unmasked binary frame (5.1)", ws_frame(0x2, b"\x00", masked=False), 1002),
        ("invalid UTF-8 in a text frame (8.1)", ws_frame(0x1, b"ok \xff\xfe"), 1007),
        ("encoded surrogate in a text frame (8.1)", ws_frame(0x1, b"\xed\xa0\x80"), 1007),
        ("invalid UTF-8 in a later fragment (8.1)",
         ws_frame(0x1, b"valid", fin=False) + ws_frame(0x0, b"\xc3\x28", fin=True), 1007),
        ("text ending inside a character (8.1)", ws_frame(0x1, b"caf\xc3"), 1007),
        ("new message inside a fragmented one (5.4)",
         ws_frame(0x1, b"a", fin=False) + ws_frame(0x1, b"b"), 1002),
    ]

    async def scenario() -> None:
        r = redis_server.client()
        sub = Subscriber(r)
        channels = [f"{prefix}client-data:bad{i}" for i in range(len(cases))]
        await sub.subscribe(f"{prefix}client-data:good", *channels)
        async with running_hub(hub_config(redis_server.port, prefix), shell) as server:
            good = await member(server, r, prefix, "good")
            for i, (what, data, code) in enumerate(cases):
                assert await _violate(server, f"bad{i}", data) == code, what
                # Nothing of the broken message was published: the next message on the subscriber is the good one.
                await still_served(r, sub, prefix, good, "good", f"after {what}")
            await wait_for(lambda: server.core.client_count() == 1, what="bad clients forgotten")
            assert server.core.stats.closes[1002] == 3 and server.core.stats.closes[1007] == 4
            await good.close()
        await sub.close()
        await r.aclose()

    asyncio.run(scenario())
