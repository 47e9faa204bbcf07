"""redis.maxBufferedBytes holds on both event loops: with Redis frozen, never more than twice the bound is held.

Many clients send 16 KB messages while Redis is stopped (SIGSTOP). The hub
must stop reading them once the bound is crossed; what it holds is read from
its own high-water gauge ``wshub_redis_buffered_bytes_max``. Run on plain
asyncio and on uvloop (libuv keeps reading a socket in the same iteration
until told to stop, which is where a late pause overshoots most).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import pytest

from helpers import RedisProcess, hub_config, raw_websocket, running_hub, wait_for, within, ws_frame

BOUND = 1024 * 1024
CLIENTS = 20
MESSAGE = 16 * 1024


def loops() -> list[object]:
    params: list[object] = [pytest.param(asyncio.new_event_loop, id="asyncio")]
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]
    except ImportError:  # pragma: no cover - the test extra installs it
        params.append(pytest.param(None, id="uvloop", marks=pytest.mark.skip(reason="uvloop not installed")))
    else:
        params.append(pytest.param(uvloop.new_event_loop, id="uvloop"))
    return params


def gauge(text: str, name: str) -> int:
    found = re.search(rf"^{name} (\S+)$", text, flags=re.M)
    assert found, name
    return int(float(found.group(1)))


@pytest.mark.parametrize("new_loop", loops())
def test_held_bytes_never_exceed_twice_the_bound(shell: str, own_redis: RedisProcess, prefix: str,
                                                 new_loop: Callable[[], asyncio.AbstractEventLoop]) -> None:
    async def scenario() -> int:
        config = hub_config(own_redis.port, prefix, redis_timeout=60, redis_maxBufferedBytes=BOUND)
        async with running_hub(config, shell) as server:
            clients = [await raw_websocket(server.port, f"k{i}") for i in range(CLIENTS)]
            frame = ws_frame(0x2, b"m" * MESSAGE)
            own_redis.pause()
            try:
                # Each client has 1 MiB of messages: 20x the bound in all, far more than the socket buffers.
                writers = [asyncio.ensure_future(_send(c.writer, frame, BOUND // MESSAGE)) for c in clients]
                await wait_for(lambda: gauge(server.core.metrics_text(), "wshub_clients_reading_paused") == CLIENTS,
                               timeout=10, what="every client paused")
                peak = gauge(server.core.metrics_text(), "wshub_redis_buffered_bytes_max")
                held = gauge(server.core.metrics_text(), "wshub_redis_buffered_bytes")
                assert held > BOUND  # it did fill up to the bound
            finally:
                own_redis.resume()
            for w in writers:
                await within(w, 30)  # nothing was dropped: every client's messages get read
            for c in clients:
                await c.aclose()
            return peak

    loop = new_loop()
    try:
        peak = loop.run_until_complete(scenario())
    finally:
        loop.close()
    print(f"peak held {peak} bytes, bound {BOUND} ({peak / BOUND:.2f}x)")
    assert peak <= 2 * BOUND, f"held {peak} bytes, {peak / BOUND:.2f}x redis.maxBufferedBytes"


async def _send(writer: asyncio.StreamWriter, frame: bytes, count: int) -> None:
    for _ in range(count):
        writer.write(frame)
        await writer.drain()
