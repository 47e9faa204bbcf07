"""The four protocol steps against a real Redis and a real WebSocket client."""

from __future__ import annotations

import asyncio

import websockets

from helpers import RedisProcess, Subscriber, hub_config, running_hub, wait_confirmed, within


def test_four_steps(shell: str, redis_server: RedisProcess, prefix: str) -> None:
    async def scenario() -> None:
        r = redis_server.client()
        sub = Subscriber(r)
        await sub.subscribe(f"{prefix}client-new", f"{prefix}client-data:k1")
        async with running_hub(hub_config(redis_server.port, prefix), shell) as server:
            ws = await websockets.connect(f"ws://127.0.0.1:{server.port}/ws?session_key=k1")
            assert await sub.next() == (f"{prefix}client-new", b"k1")
            await r.publish(f"{prefix}groups-new:k1", '["g1"]')
            # The listener's answer makes the hub SUBSCRIBE group-data:g1; wait until Redis confirmed it.
            await wait_confirmed(server, f"{prefix}group-data:g1".encode(), what="group subscribed")
            assert await r.publish(f"{prefix}group-data:g1", "hello") == 1
            assert await within(ws.recv()) == "hello"
            await ws.send(b"\x00\xff")
            assert await sub.next() == (f"{prefix}client-data:k1", b"\x00\xff")
            await ws.close()
        await sub.close()
        await r.aclose()

    asyncio.run(scenario())
