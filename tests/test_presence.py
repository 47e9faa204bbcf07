"""Presence across hubs (docs/protocol.md, Presence): real hub processes on one real redis-server.

Clients connect with tokens whose ``groups`` claim puts them in a group at
once (no listener to run); the answer is read from ``GET
/api/groups/GROUP/presence`` on either hub, events from a Redis SUBSCRIBE to
``presence:GROUP`` and from ``GET /api/events``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
import websockets

from helpers import (
    TEST_API_KEY,
    EventStream,
    HttpClient,
    HubProcess,
    RedisProcess,
    Subscriber,
    hub_config,
    hub_process,
    running_hub,
    wait_until,
    within,
    ws_url,
)

SECRET = "presence-test-secret-0123456789abcdef"
TIMEOUT = 2.0  # presence.timeout: a killed hub's entries leave the answers within it
GRACE = 0.5


def token(key: str, *groups: str) -> str:
    return jwt.encode({"sub": key, "groups": list(groups), "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")


def presence_env(redis: RedisProcess, prefix: str, **more: str) -> dict[str, str]:
    return {"WSHUB_REDIS_ADDRESS": f"127.0.0.1:{redis.port}", "WSHUB_REDIS_CHANNEL_PREFIX": prefix,
            "WSHUB_AUTH_JWT_SECRET": SECRET, "WSHUB_PRESENCE_ENABLED": "true",
            "WSHUB_PRESENCE_TIMEOUT": str(TIMEOUT), "WSHUB_PRESENCE_GRACE": str(GRACE), **more}


async def presence_of(port: int, group: str) -> dict[str, Any]:
    client = await HttpClient.open(port)
    try:
        status, _, body = await client.request("GET", f"/api/groups/{group}/presence")
        assert status == 200, body
        answer: dict[str, Any] = json.loads(body)
        return answer
    finally:
        await client.close()


async def keys_of(port: int, group: str) -> dict[str, int]:
    keys: dict[str, int] = (await presence_of(port, group))["keys"]
    return keys


@contextlib.asynccontextmanager
async def events(redis: RedisProcess, prefix: str, group: str) -> AsyncIterator[Subscriber]:
    sub = Subscriber(redis.client())
    await sub.subscribe(f"{prefix}presence:{group}")
    try:
        yield sub
    finally:
        await sub.close()


async def next_event(sub: Subscriber, timeout: float = 5.0) -> dict[str, Any]:
    _, data = await sub.next(timeout)
    event: dict[str, Any] = json.loads(data)
    return event


async def connect(hub: HubProcess, key: str, *groups: str) -> websockets.ClientConnection:
    return await websockets.connect(ws_url(hub.port, token(key, *groups)), proxy=None)


def run(coro: Any) -> None:
    asyncio.run(coro)


@pytest.fixture
def redis() -> Any:
    server = RedisProcess()
    server.start()
    yield server
    server.kill()


def test_two_hubs_answer_the_same_presence_and_a_killed_hub_s_keys_leave(shell: str, redis: RedisProcess) -> None:
    prefix = "p2:"

    async def scenario() -> None:
        async with hub_process(shell=shell, **presence_env(redis, prefix)) as a, \
                hub_process(shell=shell, **presence_env(redis, prefix)) as b, \
                events(redis, prefix, "room") as heard:
            alice1 = await connect(a, "alice", "room")
            assert await next_event(heard) == {"event": "join", "group": "room", "key": "alice"}
            alice2 = await connect(b, "alice", "room")  # a second hub, the same key: no second join
            bob = await connect(b, "bob", "room", "other")
            assert await next_event(heard) == {"event": "join", "group": "room", "key": "bob"}
            for hub in (a, b):  # each hub's writes go on its own link: wait until both are in
                await wait_until(lambda h=hub: _equals(keys_of(h.port, "room"), {"alice": 2, "bob": 1}),
                                 what=f"both hubs' entries in hub {hub.port}'s answer")
                answer = await presence_of(hub.port, "room")
                assert answer == {"group": "room", "keys": {"alice": 2, "bob": 1}, "connections": 3}
            assert await keys_of(a.port, "other") == {"bob": 1}
            # SIGKILL hub b: no goodbye. Its entries leave every answer within presence.timeout, and a
            # survivor publishes leave for bob (alice is still on a).
            b.proc.send_signal(signal.SIGKILL)
            await wait_until(lambda: _equals(keys_of(a.port, "room"), {"alice": 1}), timeout=TIMEOUT + 3,
                             what="b's entries gone from a's answer")
            left = await next_event(heard, timeout=TIMEOUT * 2 + 3)
            assert left == {"event": "leave", "group": "room", "key": "bob"}
            assert await keys_of(a.port, "other") == {}
            for ws in (alice1, alice2, bob):
                await ws.close()

    run(scenario())


async def _equals(answer: Any, expected: dict[str, int]) -> bool:
    return bool(await answer == expected)


def test_a_reload_within_the_grace_does_not_flap_and_a_real_leave_comes_after_it(shell: str,
                                                                                 redis: RedisProcess) -> None:
    prefix = "pg:"

    async def scenario() -> None:
        async with hub_process(shell=shell, **presence_env(redis, prefix)) as hub, events(redis, prefix, "g") as heard:
            first = await connect(hub, "carol", "g")
            assert await next_event(heard) == {"event": "join", "group": "g", "key": "carol"}
            await first.close()
            again = await connect(hub, "carol", "g")  # a page reload: back well within the grace
            with pytest.raises(AssertionError, match="no message arrived"):
                await next_event(heard, timeout=GRACE * 3)  # neither leave nor join
            assert await keys_of(hub.port, "g") == {"carol": 1}
            closed_at = asyncio.get_running_loop().time()
            await again.close()
            assert await next_event(heard) == {"event": "leave", "group": "g", "key": "carol"}
            assert asyncio.get_running_loop().time() - closed_at >= GRACE * 0.9
            assert await keys_of(hub.port, "g") == {}

    run(scenario())


def test_presence_survives_a_redis_restart_and_a_script_flush(shell: str, redis: RedisProcess) -> None:
    """Counts are written again whole when the command link comes back (rule 2 of _redis_presence.py)."""
    prefix = "pr:"

    async def scenario() -> None:
        async with hub_process(shell=shell, **presence_env(redis, prefix)) as hub:
            ws = await connect(hub, "dave", "g")
            # _safe_equals: a 503 while the hub's Redis links are still coming up (just started) means "not yet".
            await wait_until(lambda: _safe_equals(hub.port, "g", {"dave": 1}), what="dave present")
            r = redis.client()
            await r.script_flush()
            await r.aclose()
            other = await connect(hub, "erin", "g")  # its write fails NOSCRIPT: loaded again, written again
            await wait_until(lambda: _equals(keys_of(hub.port, "g"), {"dave": 1, "erin": 1}), what="after flush")
            redis.restart()  # an empty Redis (no persistence): the hub writes its entries again
            await wait_until(lambda: _safe_equals(hub.port, "g", {"dave": 1, "erin": 1}), timeout=10,
                             what="after restart")
            await ws.close()
            await other.close()

    run(scenario())


async def _safe_equals(port: int, group: str, expected: dict[str, int]) -> bool:
    client = await HttpClient.open(port)
    try:
        status, _, body = await client.request("GET", f"/api/groups/{group}/presence")
        return status == 200 and json.loads(body)["keys"] == expected
    finally:
        await client.close()


@pytest.mark.parametrize("broker", ["memory", "redis"])
def test_join_and_leave_reach_the_event_stream(shell: str,
                                               broker: str, redis_server: RedisProcess, prefix: str) -> None:
    async def scenario() -> None:
        config = hub_config(redis_server.port, prefix, broker=broker, api={"key": TEST_API_KEY},
                            auth={"jwt": {"secret": SECRET}}, presence={"enabled": True, "grace": 0})
        async with running_hub(config, shell) as server:
            stream = await EventStream.open(server.port)
            try:
                if broker == "redis":  # the stream's PSUBSCRIBE presence:* must be in effect first
                    await wait_until(lambda: _ready(server), what="stream subscriptions")
                ws = await websockets.connect(ws_url(server.port, token("frank", "g")), proxy=None)
                assert await within(_next_named(stream, "join")) == {"group": "g", "key": "frank"}
                assert (await presence_of(server.port, "g"))["keys"] == {"frank": 1}
                await ws.close()
                assert await within(_next_named(stream, "leave")) == {"group": "g", "key": "frank"}
            finally:
                await stream.close()

    run(scenario())


async def _ready(server: Any) -> bool:
    return bool(server.core.ready)


async def _next_named(stream: EventStream, name: str) -> dict[str, Any]:
    while True:
        event, data = await stream.next()
        if event == name:
            return data


def test_presence_off_answers_404_with_the_key_to_set(shell: str, redis_server: RedisProcess, prefix: str) -> None:
    async def scenario() -> None:
        config = hub_config(redis_server.port, prefix, broker="memory", api={"key": TEST_API_KEY})
        async with running_hub(config, shell) as server:
            client = await HttpClient.open(server.port)
            status, _, body = await client.request("GET", "/api/groups/g/presence")
            await client.close()
            assert (status, json.loads(body)) == (404, {"error": "presence is off: set presence.enabled to true"})

    run(scenario())
