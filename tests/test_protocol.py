"""The WS-Hub protocol (docs/protocol.md) end to end: real WebSocket clients, real sockets, on both brokers.

Each test drives the hub the way a listener, a backend service and browsers do,
and observes only what they can observe: what the backend hears, WebSocket
frames and, on Redis, what Redis reports about subscriptions. A test whose
behaviour the docs give both brokers runs twice (ids ``memory`` and ``redis``)
through a ``Backend`` (tests/backends.py): on Redis a listener's PUBLISH and
SUBSCRIBE on a real redis-server, on the memory broker (no Redis anywhere) the
hub's HTTP API. What only Redis can show is a Redis-only test, or a branch
that says why.
"""

from __future__ import annotations

import asyncio

import pytest
import websockets

from backends import BROKERS, RedisBackend, hub_and_backend
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
    wait_until,
    within,
    ws_frame,
    ws_url,
)
from wshub_asyncio import Server
from wshub_core import Hub

both_brokers = pytest.mark.parametrize("broker", BROKERS)


async def connect(server: Server[Hub], key: str) -> websockets.ClientConnection:
    return await websockets.connect(ws_url(server.port, key), proxy=None, compression=None)


async def redis_released(backend: RedisBackend, channel: str) -> None:
    """Until Redis itself no longer counts the hub as a subscriber of ``channel`` (PUBSUB CHANNELS)."""

    async def released() -> bool:
        return channel not in await hub_channels_in_redis(backend.redis, backend.prefix)

    await wait_until(released, what=f"{channel} unsubscribed")


# -- step 2: subscribe, then announce ----------------------------------------------------------------------


def test_client_new_is_published_only_after_the_key_subscription_is_confirmed(shell: str, redis_server: RedisProcess,
                                                                              prefix: str) -> None:
    """A listener that answers the instant it sees client-new must never answer into the void.

    The hub talks to Redis through a proxy that holds every SUBSCRIBE back for
    0.2 s: a hub that published client-new before Redis confirmed
    groups-new:KEY would have its announcement reach Redis first, and the
    listener's immediate answer would find no subscriber.

    Redis-only: the race is between a SUBSCRIBE and its confirmation; on the
    memory broker a need is in effect at once, and there is no link to delay.
    """

    async def scenario() -> None:
        r = redis_server.client()
        sub = Subscriber(r)
        await sub.subscribe(f"{prefix}client-new")
        proxy = DelayingProxy(redis_server.port, hold=lambda chunk: b"SUBSCRIBE" in chunk, delay=0.2)
        await proxy.start()
        async with running_hub(hub_config(proxy.port, prefix), shell) as server:
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


@both_brokers
def test_the_key_is_url_decoded_and_the_first_value_counts(shell: str,
                                                           broker: str, redis_port: int, prefix: str) -> None:
    async def scenario() -> None:
        async with hub_and_backend(broker, redis_port, prefix, shell) as (server, backend):
            await backend.listen("client-new")
            url = f"ws://127.0.0.1:{server.port}/ws?x=1&session_key=%41b+c%2Fd&session_key=second"
            ws = await websockets.connect(url, proxy=None)
            assert await backend.next_event() == ("client-new", "Ab c/d", None)
            await backend.key_ready("Ab c/d")
            await ws.close()

    asyncio.run(scenario())


# -- step 3: the groups answer -------------------------------------------------------------------------------


@both_brokers
def test_groups_answer_as_json_array_and_as_comma_list(shell: str, broker: str, redis_port: int, prefix: str) -> None:
    async def scenario() -> None:
        async with hub_and_backend(broker, redis_port, prefix, shell) as (server, backend):
            a, b = await connect(server, "a"), await connect(server, "b")
            await backend.key_ready("a")
            await backend.key_ready("b")
            await backend.set_groups("a", '  ["news", "room-7", ""]  ')
            comma_list = b" news , ,room-7,extra, "
            if broker == "redis":
                await backend.set_groups("b", comma_list)
            else:  # the API takes a JSON array only, so the comma list reaches a hub only through Redis
                await backend.invalid_groups("b", comma_list)
                await backend.set_groups("b", '["news", "room-7", "extra"]')
            await wait_groups(server, prefix, {"news", "room-7", "extra"})
            for group, text in (("news", "n1"), ("room-7", "r1"), ("extra", "x1"), ("news", "n2")):
                await backend.group_data(group, text)
            assert [await within(a.recv()) for _ in range(3)] == ["n1", "r1", "n2"]  # a is not in "extra"
            assert [await within(b.recv()) for _ in range(4)] == ["n1", "r1", "x1", "n2"]
            await a.close()
            await b.close()

    asyncio.run(scenario())


@both_brokers
def test_keys_sharing_groups_each_receive_exactly_their_groups(shell: str,
                                                               broker: str, redis_port: int, prefix: str) -> None:
    async def scenario() -> None:
        async with hub_and_backend(broker, redis_port, prefix, shell) as (server, backend):
            a, b, c = [await connect(server, k) for k in ("a", "b", "c")]
            for key in ("a", "b", "c"):
                await backend.key_ready(key)
            await backend.set_groups("a", '["g1","g2"]')
            await backend.set_groups("b", '["g2","g3"]')
            await backend.set_groups("c", '["g1","g2","g3"]')
            await wait_groups(server, prefix, {"g1", "g2", "g3"})
            receivers = [await backend.group_data(g, text) for g, text in (("g1", "one"), ("g2", "two"),
                                                                           ("g3", "three"))]
            if broker == "redis":  # only a Redis PUBLISH counts its receivers
                assert receivers == [1, 1, 1]  # one hub subscription per group
            assert [await within(a.recv()) for _ in range(2)] == ["one", "two"]
            assert [await within(b.recv()) for _ in range(2)] == ["two", "three"]
            assert [await within(c.recv()) for _ in range(3)] == ["one", "two", "three"]
            for ws in (a, b, c):
                await ws.close()

    asyncio.run(scenario())


@both_brokers
def test_a_new_answer_replaces_the_groups(shell: str, broker: str, redis_port: int, prefix: str) -> None:
    """Joins the new groups, leaves the old: a message to an old group no longer arrives."""

    async def scenario() -> None:
        async with hub_and_backend(broker, redis_port, prefix, shell) as (server, backend):
            ws, other = await connect(server, "k"), await connect(server, "other")
            await backend.key_ready("k")
            await backend.key_ready("other")
            await backend.set_groups("k", '["old","kept","gone"]')
            await backend.set_groups("other", '["old"]')
            await wait_groups(server, prefix, {"old", "kept", "gone"})
            await backend.group_data("old", "old-1")
            assert await within(ws.recv()) == "old-1"
            assert await within(other.recv()) == "old-1"

            await backend.set_groups("k", '["kept","new"]')
            await wait_groups(server, prefix, {"old", "kept", "new"})  # "old" still has "other"
            await backend.group_data("old", "old-2")
            await backend.group_data("gone", "gone-2")
            await backend.group_data("kept", "kept-2")
            await backend.group_data("new", "new-2")
            assert await within(ws.recv()) == "kept-2"  # not old-2, not gone-2
            assert await within(ws.recv()) == "new-2"
            assert await within(other.recv()) == "old-2"  # the other member of "old" is unaffected
            if isinstance(backend, RedisBackend):  # only Redis can be asked whom it counts (PUBSUB CHANNELS)
                await redis_released(backend, "group-data:gone")
            await ws.close()
            await other.close()

    asyncio.run(scenario())


@both_brokers
def test_invalid_groups_answers_are_ignored_and_the_groups_kept(shell: str,
                                                                broker: str, redis_port: int, prefix: str) -> None:
    """On Redis the hub hears each invalid answer and ignores it; the API refuses each with 400."""
    invalid = [
        b'{"a":1}',  # a JSON object
        b'"news"',  # a JSON string
        b"\xff\xfenews",  # not UTF-8
        b'["news", 1]',  # a non-string in the array
        b'["news", null]',
        b'["news"',  # broken JSON
    ]

    async def scenario() -> None:
        async with hub_and_backend(broker, redis_port, prefix, shell) as (server, backend):
            ws = await connect(server, "k")
            await backend.key_ready("k")
            await backend.set_groups("k", '["g"]')
            await wait_groups(server, prefix, {"g"})
            for payload in invalid:
                await backend.invalid_groups("k", payload)
                # The hub reads its subscriber link in order: the bad answer is handled before this message.
                # Had it changed the groups, the message would be dropped (or "news" would be joined).
                await backend.group_data("g", f"after {payload!r}")
                assert await within(ws.recv()) == f"after {payload!r}", payload
                assert group_names(server, prefix) == {"g"}
            # An empty answer is valid: the connection leaves every group.
            await backend.set_groups("k", "[]")
            await wait_groups(server, prefix, set())
            if isinstance(backend, RedisBackend):  # only Redis can be asked whom it counts (PUBSUB CHANNELS)
                await redis_released(backend, "group-data:g")
            await ws.close()

    asyncio.run(scenario())


# -- step 4: group data to clients -------------------------------------------------------------------------------


@both_brokers
def test_group_data_arrives_as_text_when_utf8_else_binary(shell: str,
                                                          broker: str, redis_port: int, prefix: str) -> None:
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
        async with hub_and_backend(broker, redis_port, prefix, shell) as (server, backend):
            ws = await websockets.connect(ws_url(server.port, "k"), proxy=None, max_size=None)
            raw = await raw_websocket(server.port, "raw")
            await backend.key_ready("k")
            await backend.key_ready("raw")
            await backend.set_groups("k", '["g"]')
            await backend.set_groups("raw", '["g"]')
            await wait_groups(server, prefix, {"g"})
            receivers = [await backend.group_data("g", payload) for payload, _ in payloads]
            if broker == "redis":  # only a Redis PUBLISH counts its receivers
                assert receivers == [1] * len(payloads)
            for payload, expected in payloads:
                got = await within(ws.recv())
                assert type(got) is type(expected) and got == expected, payload[:20]
                # On the wire: one unfragmented frame, opcode 1 (text) or 2 (binary), the bytes unchanged.
                frame = await raw.read_frame()
                assert (frame.fin, frame.opcode, frame.payload) == (True, 1 if isinstance(expected, str) else 2,
                                                                    payload)
            await ws.close()
            await raw.aclose()

    asyncio.run(scenario())


# -- step 5: client messages to the backend ------------------------------------------------------------------------


@both_brokers
def test_client_messages_are_published_raw_and_in_order(shell: str, broker: str, redis_port: int, prefix: str) -> None:
    async def scenario() -> None:
        async with hub_and_backend(broker, redis_port, prefix, shell) as (server, backend):
            await backend.listen("client-data:k")
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
            got = [await backend.next_event() for _ in sent]
            assert got == [("client-data", "k", m) for m in sent]
            await ws.close()

    asyncio.run(scenario())


@both_brokers
def test_fragments_controls_and_early_frames_from_a_raw_client(shell: str,
                                                               broker: str, redis_port: int, prefix: str) -> None:
    """Frames sent with the request head, a ping between fragments, a character split across fragments."""

    async def scenario() -> None:
        async with hub_and_backend(broker, redis_port, prefix, shell) as (server, backend):
            await backend.listen("client-data:raw")
            early = ws_frame(0x1, b"in the same packet as the head")
            raw = await raw_websocket(server.port, "raw", head=upgrade_head("raw"), trailing=early)
            assert raw.status_line == b"HTTP/1.1 101 Switching Protocols"
            assert await backend.next_event() == ("client-data", "raw", b"in the same packet as the head")
            raw.send(ws_frame(0x1, b"caf\xc3", fin=False)  # "é" is split between two fragments
                     + ws_frame(0x9, b"are you there")  # a control frame may come between fragments
                     + ws_frame(0x0, b"\xa9 ", fin=False)
                     + ws_frame(0x0, b"au lait", fin=True))
            pong = await raw.read_frame()
            assert (pong.opcode, pong.payload) == (0xA, b"are you there")
            assert await backend.next_event() == ("client-data", "raw", "café au lait".encode())
            raw.send(ws_frame(0x2, b"\xff", fin=False) + ws_frame(0x0, b"\x00", fin=True))
            assert await backend.next_event() == ("client-data", "raw", b"\xff\x00")
            raw.send(ws_frame(0x8, (1000).to_bytes(2, "big") + b"bye"))
            close, _ = await raw.read_until_close()
            assert close.close_code == 1000  # the hub echoes the client's code
            assert await raw.at_eof()
            await raw.aclose()

    asyncio.run(scenario())


# -- a key with several connections; client-gone ---------------------------------------------------------------


@both_brokers
def test_two_connections_of_one_key(shell: str, broker: str, redis_port: int, prefix: str) -> None:
    async def scenario() -> None:
        async with hub_and_backend(broker, redis_port, prefix, shell) as (server, backend):
            await backend.listen("client-new", "client-gone", "client-data:k")
            first = await connect(server, "k")
            assert await backend.next_event() == ("client-new", "k", None)
            await backend.set_groups("k", '["g1"]')  # client-new came: the hub hears the answer
            await wait_groups(server, prefix, {"g1"})
            second = await connect(server, "k")
            assert await backend.next_event() == ("client-new", "k", None)  # once per connection
            # The second starts with the key's groups, before any new answer.
            await backend.group_data("g1", "early")
            assert await within(first.recv()) == "early"
            assert await within(second.recv()) == "early"
            # The listener's next answer replaces the groups of both connections.
            await backend.set_groups("k", '["g2"]')
            await wait_groups(server, prefix, {"g2"})
            await backend.group_data("g2", "both")
            assert await within(first.recv()) == "both"
            assert await within(second.recv()) == "both"
            await first.send("from first")  # two sockets: one at a time, their order is not defined
            assert await backend.next_event() == ("client-data", "k", b"from first")
            await second.send(b"from second")
            assert await backend.next_event() == ("client-data", "k", b"from second")

            await first.close()
            await wait_for(lambda: server.core.client_count() == 1 + backend.hub_sockets,
                           what="first connection forgotten")
            # Had the first close published client-gone, it would come before this (one publisher, in order).
            await second.send("still here")
            assert await backend.next_event() == ("client-data", "k", b"still here")
            await backend.group_data("g2", "only second")
            assert await within(second.recv()) == "only second"
            await second.close()
            assert await backend.next_event() == ("client-gone", "k", None)
            await backend.close()  # the API backend's own sockets are clients of the hub too
            await wait_for(lambda: server.core.is_empty(), what="hub empty")

    asyncio.run(scenario())


@both_brokers
def test_client_gone_for_every_way_a_connection_ends(shell: str, broker: str, redis_port: int, prefix: str) -> None:
    """A clean close, a dropped TCP connection and a protocol error each publish client-gone once."""

    async def scenario() -> None:
        async with hub_and_backend(broker, redis_port, prefix, shell) as (server, backend):
            await backend.listen("client-gone")
            clean = await connect(server, "clean")
            dropped = await raw_websocket(server.port, "dropped")
            broken = await raw_websocket(server.port, "broken")
            await clean.close()
            assert await backend.next_event() == ("client-gone", "clean", None)
            dropped.writer.transport.abort()  # no close frame: TCP reset
            assert await backend.next_event() == ("client-gone", "dropped", None)
            broken.send(ws_frame(0x1, b"x", masked=False))
            assert await backend.next_event() == ("client-gone", "broken", None)
            await broken.aclose()
            await backend.close()  # the API backend's own sockets are clients of the hub too
            await wait_for(lambda: server.core.is_empty(), what="hub empty")

    asyncio.run(scenario())


# -- subscriptions follow need ------------------------------------------------------------------------------


def test_subscriptions_follow_need(shell: str, redis_server: RedisProcess, prefix: str) -> None:
    """Redis-only: what Redis itself reports (PUBSUB CHANNELS) is the point; the memory broker has no server."""

    async def scenario() -> None:
        async with hub_and_backend("redis", redis_server.port, prefix, shell) as (server, backend):
            assert isinstance(backend, RedisBackend)

            async def redis_sees(expected: set[str]) -> None:
                async def check() -> bool:
                    return await hub_channels_in_redis(backend.redis, prefix) == expected

                await wait_until(check, what=f"PUBSUB CHANNELS == {sorted(expected)}")

            await redis_sees(set())  # a hub without clients subscribes to nothing
            a, b = await connect(server, "a"), await connect(server, "b")
            await redis_sees({"groups-new:a", "groups-new:b"})
            await backend.set_groups("a", "g1,g2")
            await backend.set_groups("b", "g2")
            await redis_sees({"groups-new:a", "groups-new:b", "group-data:g1", "group-data:g2"})
            await a.close()
            await redis_sees({"groups-new:b", "group-data:g2"})
            await backend.set_groups("b", "g3")
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

    asyncio.run(scenario())
