"""The WS-Hub protocol (docs/protocol.md) end to end: a real Redis, real WebSocket clients, real sockets.

Each test drives the hub the way a listener, a backend service and browsers do,
and observes only what they can observe: Redis messages, WebSocket frames and
what Redis reports about subscriptions.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aredis
import websockets

from helpers import (
    DelayingProxy,
    RedisProcess,
    Subscriber,
    group_names,
    hub_channels_in_redis,
    hub_config,
    raw_websocket,
    running_hub,
    upgrade_head,
    wait_for,
    wait_groups,
    wait_key_confirmed,
    wait_until,
    within,
    ws_frame,
    ws_url,
)
from wshub_asyncio import Server
from wshub_core import Hub


async def connect(server: Server[Hub], key: str) -> websockets.ClientConnection:
    return await websockets.connect(ws_url(server.port, key), proxy=None, compression=None)


async def publish_groups(r: aredis.Redis, prefix: str, key: str, payload: str | bytes) -> None:
    assert await r.publish(f"{prefix}groups-new:{key}", payload) == 1, "the hub is not subscribed to the key"


# -- step 2: subscribe, then announce ----------------------------------------------------------------------


def test_client_new_is_published_only_after_the_key_subscription_is_confirmed(redis_server: RedisProcess,
                                                                              prefix: str) -> None:
    """A listener that answers the instant it sees client-new must never answer into the void.

    The hub talks to Redis through a proxy that holds every SUBSCRIBE back for
    0.2 s: a hub that published client-new before Redis confirmed
    groups-new:KEY would have its announcement reach Redis first, and the
    listener's immediate answer would find no subscriber.
    """

    async def scenario() -> None:
        r = redis_server.client()
        sub = Subscriber(r)
        await sub.subscribe(f"{prefix}client-new")
        proxy = DelayingProxy(redis_server.port, hold=lambda chunk: b"SUBSCRIBE" in chunk, delay=0.2)
        await proxy.start()
        async with running_hub(hub_config(proxy.port, prefix)) as server:
            keys = [f"k{i}" for i in range(5)]
            clients = await asyncio.gather(*(connect(server, k) for k in keys))
            answered = []
            for _ in keys:
                channel, key = await sub.next()
                assert channel == f"{prefix}client-new"
                # Answer at once, like a fast listener: Redis must already count the hub as a subscriber.
                receivers = await r.publish(f"{prefix}groups-new:{key.decode()}", f'["g-{key.decode()}"]')
                assert receivers == 1, f"client-new for {key!r} was published before groups-new was subscribed"
                answered.append(key.decode())
            assert sorted(answered) == keys  # one announcement per connection, no more
            await wait_groups(server, prefix, {f"g-{k}" for k in keys})
            for key, ws in zip(keys, clients, strict=True):
                assert await r.publish(f"{prefix}group-data:g-{key}", f"to {key}") == 1
                assert await within(ws.recv()) == f"to {key}"
            for ws in clients:
                await ws.close()
        await proxy.close()
        await sub.close()
        await r.aclose()

    asyncio.run(scenario())


def test_the_key_is_url_decoded_and_the_first_value_counts(redis_server: RedisProcess, prefix: str) -> None:
    async def scenario() -> None:
        r = redis_server.client()
        sub = Subscriber(r)
        await sub.subscribe(f"{prefix}client-new")
        async with running_hub(hub_config(redis_server.port, prefix)) as server:
            url = f"ws://127.0.0.1:{server.port}/ws?x=1&session_key=%41b+c%2Fd&session_key=second"
            ws = await websockets.connect(url, proxy=None)
            assert await sub.next() == (f"{prefix}client-new", b"Ab c/d")
            await wait_key_confirmed(server, prefix, "Ab c/d")
            await ws.close()
        await sub.close()
        await r.aclose()

    asyncio.run(scenario())


# -- step 3: the groups answer -------------------------------------------------------------------------------


def test_groups_answer_as_json_array_and_as_comma_list(redis_server: RedisProcess, prefix: str) -> None:
    async def scenario() -> None:
        r = redis_server.client()
        async with running_hub(hub_config(redis_server.port, prefix)) as server:
            a, b = await connect(server, "a"), await connect(server, "b")
            await wait_key_confirmed(server, prefix, "a")
            await wait_key_confirmed(server, prefix, "b")
            await publish_groups(r, prefix, "a", '  ["news", "room-7", ""]  ')
            await publish_groups(r, prefix, "b", b" news , ,room-7,extra, ")
            await wait_groups(server, prefix, {"news", "room-7", "extra"})
            for group, text in (("news", "n1"), ("room-7", "r1"), ("extra", "x1"), ("news", "n2")):
                await r.publish(f"{prefix}group-data:{group}", text)
            assert [await within(a.recv()) for _ in range(3)] == ["n1", "r1", "n2"]  # a is not in "extra"
            assert [await within(b.recv()) for _ in range(4)] == ["n1", "r1", "x1", "n2"]
            await a.close()
            await b.close()
        await r.aclose()

    asyncio.run(scenario())


def test_keys_sharing_groups_each_receive_exactly_their_groups(redis_server: RedisProcess, prefix: str) -> None:
    async def scenario() -> None:
        r = redis_server.client()
        async with running_hub(hub_config(redis_server.port, prefix)) as server:
            a, b, c = [await connect(server, k) for k in ("a", "b", "c")]
            for key in ("a", "b", "c"):
                await wait_key_confirmed(server, prefix, key)
            await publish_groups(r, prefix, "a", '["g1","g2"]')
            await publish_groups(r, prefix, "b", "g2,g3")
            await publish_groups(r, prefix, "c", '["g1","g2","g3"]')
            await wait_groups(server, prefix, {"g1", "g2", "g3"})
            assert await r.publish(f"{prefix}group-data:g1", "one") == 1  # one hub subscription per group
            assert await r.publish(f"{prefix}group-data:g2", "two") == 1
            assert await r.publish(f"{prefix}group-data:g3", "three") == 1
            assert [await within(a.recv()) for _ in range(2)] == ["one", "two"]
            assert [await within(b.recv()) for _ in range(2)] == ["two", "three"]
            assert [await within(c.recv()) for _ in range(3)] == ["one", "two", "three"]
            for ws in (a, b, c):
                await ws.close()
        await r.aclose()

    asyncio.run(scenario())


def test_a_new_answer_replaces_the_groups(redis_server: RedisProcess, prefix: str) -> None:
    """Joins the new groups, leaves the old: a message to an old group no longer arrives."""

    async def scenario() -> None:
        r = redis_server.client()
        async with running_hub(hub_config(redis_server.port, prefix)) as server:
            ws, other = await connect(server, "k"), await connect(server, "other")
            await wait_key_confirmed(server, prefix, "k")
            await wait_key_confirmed(server, prefix, "other")
            await publish_groups(r, prefix, "k", '["old","kept","gone"]')
            await publish_groups(r, prefix, "other", '["old"]')
            await wait_groups(server, prefix, {"old", "kept", "gone"})
            await r.publish(f"{prefix}group-data:old", "old-1")
            assert await within(ws.recv()) == "old-1"
            assert await within(other.recv()) == "old-1"

            await publish_groups(r, prefix, "k", '["kept","new"]')
            await wait_groups(server, prefix, {"old", "kept", "new"})  # "old" still has "other"
            await r.publish(f"{prefix}group-data:old", "old-2")
            await r.publish(f"{prefix}group-data:gone", "gone-2")
            await r.publish(f"{prefix}group-data:kept", "kept-2")
            await r.publish(f"{prefix}group-data:new", "new-2")
            assert await within(ws.recv()) == "kept-2"  # not old-2, not gone-2
            assert await within(ws.recv()) == "new-2"
            assert await within(other.recv()) == "old-2"  # the other member of "old" is unaffected
            # Redis itself no longer counts the hub on the group nobody holds any more.
            await wait_until(lambda: _redis_has_not(r, prefix, "group-data:gone"), what="gone unsubscribed")
            await ws.close()
            await other.close()
        await r.aclose()

    asyncio.run(scenario())


async def _redis_has_not(r: aredis.Redis, prefix: str, channel: str) -> bool:
    return channel not in await hub_channels_in_redis(r, prefix)


def test_invalid_groups_answers_are_ignored_and_the_groups_kept(redis_server: RedisProcess, prefix: str) -> None:
    invalid = [
        b'{"a":1}',  # a JSON object
        b'"news"',  # a JSON string
        b"\xff\xfenews",  # not UTF-8
        b'["news", 1]',  # a non-string in the array
        b'["news", null]',
        b'["news"',  # broken JSON
    ]

    async def scenario() -> None:
        r = redis_server.client()
        async with running_hub(hub_config(redis_server.port, prefix)) as server:
            ws = await connect(server, "k")
            await wait_key_confirmed(server, prefix, "k")
            await publish_groups(r, prefix, "k", '["g"]')
            await wait_groups(server, prefix, {"g"})
            for payload in invalid:
                await publish_groups(r, prefix, "k", payload)
                # The hub reads its subscriber link in order: the bad answer is handled before this message.
                # Had it changed the groups, the message would be dropped (or "news" would be joined).
                await r.publish(f"{prefix}group-data:g", f"after {payload!r}")
                assert await within(ws.recv()) == f"after {payload!r}", payload
                assert group_names(server, prefix) == {"g"}
            # An empty answer is valid: the connection leaves every group.
            await publish_groups(r, prefix, "k", "[]")
            await wait_groups(server, prefix, set())
            await wait_until(lambda: _redis_has_not(r, prefix, "group-data:g"), what="g unsubscribed")
            await ws.close()
        await r.aclose()

    asyncio.run(scenario())


# -- step 4: group data to clients -------------------------------------------------------------------------------


def test_group_data_arrives_as_text_when_utf8_else_binary(redis_server: RedisProcess, prefix: str) -> None:
    payloads: list[tuple[bytes, str | bytes]] = [
        ("héllo ✓ 🙂".encode(), "héllo ✓ 🙂"),
        (b'{"json": [1, 2]}', '{"json": [1, 2]}'),
        (b"", ""),  # empty is valid UTF-8
        (b"\xff\x00\xfe", b"\xff\x00\xfe"),
        (b"caf\xc3", b"caf\xc3"),  # truncated UTF-8 sequence
        (b"\xed\xa0\x80", b"\xed\xa0\x80"),  # an encoded surrogate is not UTF-8
        (bytes(range(256)) * 400, bytes(range(256)) * 400),  # 100 KiB, binary
        (("x" * 70000).encode(), "x" * 70000),
    ]

    async def scenario() -> None:
        r = redis_server.client()
        async with running_hub(hub_config(redis_server.port, prefix)) as server:
            ws = await websockets.connect(ws_url(server.port, "k"), proxy=None, max_size=None)
            raw = await raw_websocket(server.port, "raw")
            await wait_key_confirmed(server, prefix, "k")
            await wait_key_confirmed(server, prefix, "raw")
            await publish_groups(r, prefix, "k", "g")
            await publish_groups(r, prefix, "raw", "g")
            await wait_groups(server, prefix, {"g"})
            for payload, _ in payloads:
                assert await r.publish(f"{prefix}group-data:g", payload) == 1
            for payload, expected in payloads:
                got = await within(ws.recv())
                assert type(got) is type(expected) and got == expected, payload[:20]
                # On the wire: one unfragmented frame, opcode 1 (text) or 2 (binary), the bytes unchanged.
                frame = await raw.read_frame()
                assert (frame.fin, frame.opcode, frame.payload) == (True, 1 if isinstance(expected, str) else 2,
                                                                    payload)
            await ws.close()
            await raw.aclose()
        await r.aclose()

    asyncio.run(scenario())


# -- step 5: client messages to Redis ------------------------------------------------------------------------------


def test_client_messages_are_published_raw_and_in_order(redis_server: RedisProcess, prefix: str) -> None:
    async def scenario() -> None:
        r = redis_server.client()
        sub = Subscriber(r)
        await sub.subscribe(f"{prefix}client-data:k")
        async with running_hub(hub_config(redis_server.port, prefix)) as server:
            ws = await connect(server, "k")
            sent: list[bytes] = []
            await ws.send("héllo ✓")
            sent.append("héllo ✓".encode())
            await ws.send(b"\x00\xff\x80binary")
            sent.append(b"\x00\xff\x80binary")
            await ws.send(["frag", "ment", "ed ✓"])  # one text message in three frames
            sent.append("fragmented ✓".encode())
            await ws.send([b"\x01", b"\x02\xff", b"\x03"])  # one binary message in three frames
            sent.append(b"\x01\x02\xff\x03")
            await ws.send("")
            sent.append(b"")
            await ws.send(b"")
            sent.append(b"")
            await ws.send("z" * 60000)
            sent.append(b"z" * 60000)
            for i in range(200):
                await ws.send(f"m{i}")
                sent.append(f"m{i}".encode())
            got = [await sub.next() for _ in sent]
            assert got == [(f"{prefix}client-data:k", m) for m in sent]
            await ws.close()
        await sub.close()
        await r.aclose()

    asyncio.run(scenario())


def test_fragments_controls_and_early_frames_from_a_raw_client(redis_server: RedisProcess, prefix: str) -> None:
    """Frames sent with the request head, a ping between fragments, a character split across fragments."""

    async def scenario() -> None:
        r = redis_server.client()
        sub = Subscriber(r)
        await sub.subscribe(f"{prefix}client-data:raw")
        async with running_hub(hub_config(redis_server.port, prefix)) as server:
            early = ws_frame(0x1, b"in the same packet as the head")
            raw = await raw_websocket(server.port, "raw", head=upgrade_head("raw"), trailing=early)
            assert raw.status_line == b"HTTP/1.1 101 Switching Protocols"
            assert await sub.next() == (f"{prefix}client-data:raw", b"in the same packet as the head")
            raw.send(ws_frame(0x1, b"caf\xc3", fin=False)  # "é" is split between two fragments
                     + ws_frame(0x9, b"are you there")  # a control frame may come between fragments
                     + ws_frame(0x0, b"\xa9 ", fin=False)
                     + ws_frame(0x0, b"au lait", fin=True))
            pong = await raw.read_frame()
            assert (pong.opcode, pong.payload) == (0xA, b"are you there")
            assert await sub.next() == (f"{prefix}client-data:raw", "café au lait".encode())
            raw.send(ws_frame(0x2, b"\xff", fin=False) + ws_frame(0x0, b"\x00", fin=True))
            assert await sub.next() == (f"{prefix}client-data:raw", b"\xff\x00")
            raw.send(ws_frame(0x8, (1000).to_bytes(2, "big") + b"bye"))
            close, _ = await raw.read_until_close()
            assert close.close_code == 1000  # the hub echoes the client's code
            assert await raw.at_eof()
            await raw.aclose()
        await sub.close()
        await r.aclose()

    asyncio.run(scenario())


# -- a key with several connections; client-gone ---------------------------------------------------------------


def test_two_connections_of_one_key(redis_server: RedisProcess, prefix: str) -> None:
    async def scenario() -> None:
        r = redis_server.client()
        sub = Subscriber(r)
        await sub.subscribe(f"{prefix}client-new", f"{prefix}client-gone", f"{prefix}client-data:k")
        async with running_hub(hub_config(redis_server.port, prefix)) as server:
            first = await connect(server, "k")
            assert await sub.next() == (f"{prefix}client-new", b"k")
            await publish_groups(r, prefix, "k", '["g1"]')
            await wait_groups(server, prefix, {"g1"})
            second = await connect(server, "k")
            assert await sub.next() == (f"{prefix}client-new", b"k")  # once per connection
            # The second starts with the key's groups, before any new answer.
            await r.publish(f"{prefix}group-data:g1", "early")
            assert await within(first.recv()) == "early"
            assert await within(second.recv()) == "early"
            # The listener's next answer replaces the groups of both connections.
            await publish_groups(r, prefix, "k", '["g2"]')
            await wait_groups(server, prefix, {"g2"})
            await r.publish(f"{prefix}group-data:g2", "both")
            assert await within(first.recv()) == "both"
            assert await within(second.recv()) == "both"
            await first.send("from first")  # two sockets: one at a time, their order is not defined
            assert await sub.next() == (f"{prefix}client-data:k", b"from first")
            await second.send(b"from second")
            assert await sub.next() == (f"{prefix}client-data:k", b"from second")

            await first.close()
            await wait_for(lambda: server.core.client_count() == 1, what="first connection forgotten")
            # Had the first close published client-gone, it would come before this (one command link, in order).
            await second.send("still here")
            assert await sub.next() == (f"{prefix}client-data:k", b"still here")
            await r.publish(f"{prefix}group-data:g2", "only second")
            assert await within(second.recv()) == "only second"
            await second.close()
            assert await sub.next() == (f"{prefix}client-gone", b"k")
            await wait_for(lambda: server.core.is_empty(), what="hub empty")
        await sub.close()
        await r.aclose()

    asyncio.run(scenario())


def test_client_gone_for_every_way_a_connection_ends(redis_server: RedisProcess, prefix: str) -> None:
    """A clean close, a dropped TCP connection and a protocol error each publish client-gone once."""

    async def scenario() -> None:
        r = redis_server.client()
        sub = Subscriber(r)
        await sub.subscribe(f"{prefix}client-gone")
        async with running_hub(hub_config(redis_server.port, prefix)) as server:
            clean = await connect(server, "clean")
            dropped = await raw_websocket(server.port, "dropped")
            broken = await raw_websocket(server.port, "broken")
            await clean.close()
            assert await sub.next() == (f"{prefix}client-gone", b"clean")
            dropped.writer.transport.abort()  # no close frame: TCP reset
            assert await sub.next() == (f"{prefix}client-gone", b"dropped")
            broken.send(ws_frame(0x1, b"x", masked=False))
            assert await sub.next() == (f"{prefix}client-gone", b"broken")
            await broken.aclose()
            await wait_for(lambda: server.core.is_empty(), what="hub empty")
        await sub.close()
        await r.aclose()

    asyncio.run(scenario())


# -- subscriptions follow need ------------------------------------------------------------------------------


def test_subscriptions_follow_need(redis_server: RedisProcess, prefix: str) -> None:
    async def scenario() -> None:
        r = redis_server.client()

        async def redis_sees(expected: set[str]) -> None:
            async def check() -> bool:
                return await hub_channels_in_redis(r, prefix) == expected

            await wait_until(check, what=f"PUBSUB CHANNELS == {sorted(expected)}")

        async with running_hub(hub_config(redis_server.port, prefix)) as server:
            await redis_sees(set())  # a hub without clients subscribes to nothing
            a, b = await connect(server, "a"), await connect(server, "b")
            await redis_sees({"groups-new:a", "groups-new:b"})
            await publish_groups(r, prefix, "a", "g1,g2")
            await publish_groups(r, prefix, "b", "g2")
            await redis_sees({"groups-new:a", "groups-new:b", "group-data:g1", "group-data:g2"})
            await a.close()
            await redis_sees({"groups-new:b", "group-data:g2"})
            await publish_groups(r, prefix, "b", "g3")
            await redis_sees({"groups-new:b", "group-data:g3"})
            await b.close()
            await redis_sees(set())
            await wait_for(lambda: not server.core.subscribed_channels() and server.core.is_empty(),
                           what="hub holds nothing")
            # And it comes back: a new connection subscribes again.
            c = await connect(server, "a")
            await redis_sees({"groups-new:a"})
            await c.close()
            await redis_sees(set())
        await r.aclose()

    asyncio.run(scenario())
