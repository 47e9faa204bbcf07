"""Three hub processes on one standalone Redis: each subscribes what its own clients need and nothing more.

The check is made from outside, as an operator would: ``PUBSUB NUMSUB`` on
every channel of the protocol. A group is subscribed once per hub holding a
member of it, a key's channels once (on its hub), and every group message
reaches every member on every hub, in order. Cluster mode has the same test
with SHARDNUMSUB (tests/test_cluster.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import websockets
from websockets.asyncio.client import ClientConnection

from helpers import RedisProcess, Subscriber, hub_process, wait_until, within


def test_three_hub_processes_on_one_redis_subscribe_only_their_clients_needs(own_redis: RedisProcess,
                                                                              prefix: str) -> None:
    async def scenario() -> None:
        r = own_redis.client()
        listener = Subscriber(r)
        await listener.subscribe(f"{prefix}client-new")
        env = {"WSHUB_REDIS_ADDRESS": f"127.0.0.1:{own_redis.port}", "WSHUB_REDIS_CHANNEL_PREFIX": prefix,
               "WSHUB_HISTORY_ENABLED": "false"}
        groups = ["shared", "a1", "a2"]  # hub h's clients are in "shared" and in groups[h] (hub 0: shared only)
        clients: dict[str, tuple[int, ClientConnection]] = {}
        try:
            async with contextlib.AsyncExitStack() as stack:
                hubs = [await stack.enter_async_context(hub_process(shell=shell, **env))
                        for shell in ("asyncio", "trio", "asyncio")]
                for h, hub in enumerate(hubs):
                    for i in range(2):
                        key = f"h{h}k{i}"
                        clients[key] = (h, await websockets.connect(
                            f"ws://127.0.0.1:{hub.port}/ws?session_key={key}", proxy=None))
                        assert await listener.next() == (f"{prefix}client-new", key.encode())
                        await r.publish(f"{prefix}groups-new:{key}", json.dumps(sorted({"shared", groups[h]})))

                async def numsub(channel: str) -> int:
                    reply = await r.pubsub_numsub(channel)
                    return int(reply[0][1])

                expected = {"shared": 3, "a1": 1, "a2": 1}

                async def subscribed() -> bool:
                    return all([await numsub(f"{prefix}group-data:{g}") == n for g, n in expected.items()])

                await wait_until(subscribed, timeout=10, what="every hub subscribed its groups")
                for key in clients:
                    for kind in ("groups-new", "client-send", "client-kick"):
                        assert await numsub(f"{prefix}{kind}:{key}") == 1, (kind, key)
                for i in range(10):
                    for group in groups:
                        await r.publish(f"{prefix}group-data:{group}", f"{group}:{i}")
                for key, (h, ws) in clients.items():
                    mine = sorted({"shared", groups[h]})
                    got = [await within(ws.recv(), 10) for _ in range(10 * len(mine))]
                    for group in mine:
                        assert [m for m in got if str(m).startswith(f"{group}:")] == [f"{group}:{i}" for i in range(10)]
                    assert all(str(m).split(":")[0] in mine for m in got), (key, got)
                    await ws.close()
        finally:
            await listener.close()
            await r.aclose()

    asyncio.run(scenario())
