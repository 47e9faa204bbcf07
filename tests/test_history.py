"""Lossless group delivery, for real: history in a Redis stream, gap repair in the hub, and client resume.

Each test runs its own redis-server and a hub on both shells. Group messages
go through ``FCALL wshub_publish`` (the function library the hub loaded)
while the hub's subscription is cut (``CLIENT KILL TYPE pubsub``), killed by
Redis itself (``client-output-buffer-limit pubsub``) or frozen (SIGSTOP).
What is asserted, per member: every message, once, in publish order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import pytest
import redis.asyncio as aredis
import websockets
from websockets.asyncio.client import ClientConnection

from helpers import RedisProcess, Subscriber, hub_config, on_hub, running_hub, wait_for, within
from wshub_core._redis_history import library, parse_read

END = "end"


def metric(server: Any, name: str) -> float:
    text: str = on_hub(server, lambda s: s.core.metrics_text())
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    assert found is not None, name
    return float(found.group(1))


class Member:
    """A WebSocket client in some groups, and everything it received (envelopes parsed)."""

    def __init__(self, ws: ClientConnection, envelopes: bool) -> None:
        self.ws = ws
        self.envelopes = envelopes
        self.got: list[tuple[str, str | None, str]] = []  # (group, offset, data); resets as (group, None, "reset")

    async def until(self, data: str, timeout: float = 15.0, groups: tuple[str, ...] = ()) -> None:
        """Receive until ``data`` arrives (the publisher's last message), in each of ``groups`` if given.

        Groups are independent streams: one group's last message can arrive before another group's catch-up.
        """
        def done() -> bool:
            if groups:
                return all(any(g == group and d == data for g, _, d in self.got) for group in groups)
            return bool(self.got) and self.got[-1][2] == data

        while not done():
            message = await within(self.ws.recv(), timeout)
            assert isinstance(message, str)
            if self.envelopes:
                value = json.loads(message)
                if value.get("reset"):
                    self.got.append((value["group"], None, "reset"))
                else:
                    self.got.append((value["group"], value.get("offset"), value["data"]))
            else:
                self.got.append(("", None, message))

    def data(self, group: str = "") -> list[str]:
        return [d for g, _, d in self.got if not group or g == group or not self.envelopes]


@contextlib.asynccontextmanager
async def hub_with_members(shell: str, own_redis: RedisProcess, prefix: str, *, raw: int = 3, wrapped: int = 3,
                           groups: tuple[str, ...] = ("g",), **config: Any,
                           ) -> AsyncIterator[tuple[Any, aredis.Redis, list[Member]]]:
    """A hub on ``own_redis`` with ``raw`` plain members and ``wrapped`` ones with recover=1, all in ``groups``."""
    r = own_redis.client()
    listener = Subscriber(r)
    await listener.subscribe(f"{prefix}client-new")
    members: list[Member] = []
    try:
        async with running_hub(hub_config(own_redis.port, prefix, **config), shell) as server:
            for i in range(raw + wrapped):
                envelopes = i >= raw
                url = f"ws://127.0.0.1:{server.port}/ws?session_key=m{i}" + ("&recover=1" if envelopes else "")
                ws = await websockets.connect(url, proxy=None)
                assert await listener.next() == (f"{prefix}client-new", f"m{i}".encode())
                await r.publish(f"{prefix}groups-new:m{i}", json.dumps(list(groups)))
                members.append(Member(ws, envelopes))
            channels = {f"{prefix}group-data:{g}".encode() for g in groups}
            await wait_for(lambda: on_hub(server, lambda s: s.core.ready and channels <= s.core.needed_channels()
                                          and all(len(s.core.groups_of(c)) == len(groups)
                                                  for c in s.core._members)), what="members in their groups")
            await listener.close()
            yield server, r, members
            for member in members:
                await member.ws.close()
    finally:
        await r.aclose()


async def fcall(r: aredis.Redis, prefix: str, group: str, data: str, message_id: str | None = None) -> str:
    args = [data] if message_id is None else [data, message_id]
    offset = await r.fcall("wshub_publish", 1, f"{prefix}group-data:{group}", *args)  # type: ignore[misc]
    return offset.decode() if isinstance(offset, bytes) else str(offset)


def assert_every_message_once_in_order(members: list[Member], expected: list[str]) -> None:
    for i, member in enumerate(members):
        assert member.data() == expected, f"member {i} (envelopes={member.envelopes}) got {member.data()}"
        if member.envelopes:
            offsets = [o for _, o, _ in member.got]
            assert all(o is not None for o in offsets) and offsets == sorted(offsets, key=_position)


def in_history_order(offsets: list[str], data: list[str]) -> list[str]:
    """``data`` published concurrently, in the order the history took them (their offsets')."""
    return [d for _, d in sorted(zip(offsets, data, strict=True), key=lambda pair: _position(pair[0]))]


def _position(offset: str | None) -> tuple[int, int]:
    ms, _, seq = (offset or "0-0").partition("-")
    return int(ms), int(seq)


def test_client_kill_pubsub_mid_stream_loses_and_duplicates_nothing(shell: str, own_redis: RedisProcess,
                                                                    prefix: str,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """The subscriber is cut five times while 500 messages flow: each member still gets all 500, once, in order."""
    async def scenario() -> None:
        async with hub_with_members(shell, own_redis, prefix) as (server, r, members):
            expected = [f"m{i}" for i in range(500)]
            reconnects = metric(server, "wshub_redis_reconnects_total")
            for i, data in enumerate(expected):
                await fcall(r, prefix, "g", data)
                if i % 100 == 50:
                    await wait_for(lambda: on_hub(server, lambda s: s.core.ready), what="subscriber back")
                    await r.client_kill_filter(_type="pubsub")
            await fcall(r, prefix, "g", END)
            for member in members:
                await member.until(END)
            assert_every_message_once_in_order(members, [*expected, END])
            assert metric(server, "wshub_redis_reconnects_total") - reconnects >= 5
            assert metric(server, "wshub_history_repaired_total") > 0  # some came from history, not live
            assert metric(server, "wshub_history_resets_total") == 0

    with caplog.at_level("WARNING", logger="wshub"):
        asyncio.run(scenario())
    failed = [r.getMessage() for r in caplog.records if getattr(r, "event", "") == "history_read_failed"]
    assert not failed, failed  # every read answered (a failing one would only be retried, and hide)


def test_redis_killing_the_subscriber_for_its_output_buffer_loses_nothing(shell: str, own_redis: RedisProcess,
                                                                         prefix: str) -> None:
    """``client-output-buffer-limit pubsub`` set tiny, then a burst: Redis drops the hub's subscriber; 0 lost."""
    async def scenario() -> None:
        async with hub_with_members(shell, own_redis, prefix) as (server, r, members):
            await r.config_set("client-output-buffer-limit", "pubsub 16kb 0 0")
            expected = [f"{i:04d}" + "x" * 2000 for i in range(300)]
            pipe = r.pipeline(transaction=False)
            for data in expected:
                pipe.fcall("wshub_publish", 1, f"{prefix}group-data:g", data)
            await pipe.execute()  # one burst: Redis queues far more than 16 KB for the subscriber at once
            await wait_for(lambda: metric(server, "wshub_redis_reconnects_total") >= 1, what="subscriber dropped")
            await r.config_set("client-output-buffer-limit", "pubsub 32mb 8mb 60")
            await fcall(r, prefix, "g", END)
            for member in members:
                await member.until(END)
            assert_every_message_once_in_order(members, [*expected, END])
            assert metric(server, "wshub_history_repaired_total") > 0

    asyncio.run(scenario())


def test_sigstop_mid_stream_is_repaired_after_sigcont(shell: str, own_redis: RedisProcess, prefix: str) -> None:
    """Redis frozen mid-stream: the probe drops the subscriber, and after SIGCONT every member has every message."""
    async def scenario() -> None:
        async with hub_with_members(shell, own_redis, prefix, redis_probeInterval=0.3) as (server, r, members):
            expected = [f"m{i}" for i in range(200)]
            for data in expected[:100]:
                await fcall(r, prefix, "g", data)
            # Concurrent publishes (several connections of the client's pool): the order is the history's.
            publisher = asyncio.ensure_future(asyncio.gather(*(fcall(r, prefix, "g", d) for d in expected[100:])))
            await asyncio.sleep(0)  # the publisher's commands are written before the freeze
            own_redis.pause()
            try:
                await wait_for(lambda: metric(server, "wshub_redis_stalls_total") >= 1, timeout=10,
                               what="the probe finds the frozen Redis")
            finally:
                own_redis.resume()
            offsets = await within(publisher, 10)
            expected[100:] = in_history_order(offsets, expected[100:])
            await fcall(r, prefix, "g", END)
            for member in members:
                await member.until(END)
            assert_every_message_once_in_order(members, [*expected, END])

    asyncio.run(scenario())


async def reconnect(port: int, key: str, since: dict[str, str]) -> Member:
    url = f"ws://127.0.0.1:{port}/ws?session_key={key}&recover=1&since=" + quote(json.dumps(since))
    return Member(await websockets.connect(url, proxy=None), True)


def test_a_client_resumes_several_groups_while_messages_keep_coming(shell: str, own_redis: RedisProcess,
                                                                    prefix: str) -> None:
    """Disconnect, messages in two groups, reconnect with since= while more are published: all, once, in order."""
    async def scenario() -> None:
        async with hub_with_members(shell, own_redis, prefix, raw=0, wrapped=1, groups=("g", "h")) as (
                server, r, members):
            first = members[0]
            for i in range(5):
                await fcall(r, prefix, "g", f"g{i}")
                await fcall(r, prefix, "h", f"h{i}")
            await fcall(r, prefix, "h", END)
            await first.until(END)
            since = {g: [o for gg, o, _ in first.got if gg == g][-1] for g in ("g", "h")}
            assert all(since.values())
            await first.ws.close()
            for i in range(5, 10):  # while it is away
                await fcall(r, prefix, "g", f"g{i}")
                await fcall(r, prefix, "h", f"h{i}")
            # The same key reconnects; the listener (this test) answers its groups while messages keep coming.
            listener = Subscriber(r)
            await listener.subscribe(f"{prefix}client-new")
            again = await reconnect(server.port, "m0", since)  # type: ignore[arg-type]
            assert await listener.next() == (f"{prefix}client-new", b"m0")
            await listener.close()
            sent = {g: [f"{g}{i}" for i in range(10, 40)] for g in ("g", "h")}
            racing = asyncio.ensure_future(asyncio.gather(*(asyncio.gather(*(fcall(r, prefix, g, d) for d in sent[g]))
                                                            for g in ("g", "h"))))
            await r.publish(f"{prefix}groups-new:m0", '["g", "h"]')
            offsets = await within(racing)
            await fcall(r, prefix, "g", END)
            await fcall(r, prefix, "h", END)
            await again.until(END, groups=("g", "h"))
            for group, group_offsets in zip(("g", "h"), offsets, strict=True):
                tail = [*in_history_order(group_offsets, sent[group]), END]
                assert again.data(group) == [f"{group}{i}" for i in range(5, 10)] + tail
            assert metric(server, "wshub_history_resumes_total") == 2
            await again.ws.close()

    asyncio.run(scenario())


def test_an_offset_the_history_no_longer_holds_gets_reset_then_what_it_holds(shell: str, prefix: str) -> None:
    """history.size 5 (stream nodes of 2 entries, so MAXLEN ~ trims closely): the old offset is told reset."""
    own = RedisProcess(extra=("--stream-node-max-entries", "2"))
    own.start()

    async def scenario() -> None:
        async with hub_with_members(shell, own, prefix, raw=0, wrapped=1, history={"size": 5}) as (
                server, r, members):
            old = await fcall(r, prefix, "g", "old")
            for i in range(20):
                await fcall(r, prefix, "g", f"m{i}")
            retained = await r.xlen(f"{prefix}group-data:g")
            assert 5 <= retained < 20
            listener = Subscriber(r)
            await listener.subscribe(f"{prefix}client-new")
            again = await reconnect(server.port, "late", {"g": old})  # type: ignore[arg-type]
            assert await listener.next() == (f"{prefix}client-new", b"late")
            await listener.close()
            await r.publish(f"{prefix}groups-new:late", '["g"]')
            await fcall(r, prefix, "g", END)
            await again.until(END)
            assert again.got[0] == ("g", None, "reset")
            assert again.data()[1:] == [f"m{i}" for i in range(20 - retained, 20)] + [END]
            await again.ws.close()
            await members[0].until(END)  # read what it was sent: a client that stops reading cannot close

    try:
        asyncio.run(scenario())
    finally:
        own.kill()


def test_a_redis_that_refuses_functions_is_said_once_and_the_hub_runs_without_history(
        own_redis: RedisProcess, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    """An ACL without FUNCTION: one warning naming the refusal; plain PUBLISH delivers; a resume is told reset."""
    async def scenario() -> None:
        admin = own_redis.client()
        await admin.execute_command("ACL", "SETUSER", "hub", "on", ">pw", "~*", "&*", "+@all", "-function")
        async with hub_with_members("asyncio", own_redis, prefix, raw=1, wrapped=0,
                                    redis_username="hub", redis_password="pw") as (server, r, members):
            await wait_for(lambda: server.core.broker.history_error != "", what="history off")
            await r.publish(f"{prefix}group-data:g", END)
            await members[0].until(END)
            again = await reconnect(server.port, "m0", {"g": "1-0"})
            await r.publish(f"{prefix}groups-new:m0", '["g"]')
            message = json.loads(await within(again.ws.recv()))
            assert message == {"group": "g", "reset": True}
            await again.ws.close()
        await admin.aclose()

    with caplog.at_level("WARNING", logger="wshub"):
        asyncio.run(scenario())
    refusals = [r.getMessage() for r in caplog.records if "history is off" in r.getMessage()]
    assert len(refusals) == 1 and "NOPERM" in refusals[0], refusals


def test_the_library_answers_where_a_history_ends_without_entries(own_redis: RedisProcess) -> None:
    """``wshub_read`` with count 0 (a group's first read): the last id and nothing more, not an error.

    (``XRANGE ... COUNT 0`` answers nil in Redis 7.0; the first read of every group failed on it, and was
    hidden by the live entries that came meanwhile.)
    """
    async def scenario() -> None:
        r = own_redis.client()
        await r.function_load(library(size=10, ttl=60).decode(), replace=True)  # type: ignore[misc]
        assert parse_read(await r.fcall_ro("wshub_read", 1, "ch", "0-0", 0)) == ("", [])  # type: ignore[misc]
        first = (await r.fcall("wshub_publish", 1, "ch", "a")).decode()  # type: ignore[misc]
        assert parse_read(await r.fcall_ro("wshub_read", 1, "ch", "0-0", 0)) == (first, [])  # type: ignore[misc]
        assert parse_read(await r.fcall_ro("wshub_read", 1, "ch", "0-0", 5)) == (  # type: ignore[misc]
            first, [(first, "0-0", b"a")])
        await r.aclose()

    asyncio.run(scenario())
