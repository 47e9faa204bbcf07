"""example/listener.py, run as its users run it (a process), against the real hub and Redis."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
import websockets

from helpers import RedisProcess, hub_config, next_line, running_hub, stop_process, wait_groups, within, ws_url

LISTENER = Path(__file__).resolve().parent.parent / "example" / "listener.py"


async def start_listener(*args: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(sys.executable, str(LISTENER), *args,
                                                stdout=asyncio.subprocess.PIPE)
    assert await next_line(proc, 15) == "ready"  # subscribed: nothing announced from now on is missed
    return proc


@pytest.mark.parametrize("address_form", ["host:port", "url"])
def test_listener_answers_each_client_with_its_groups(shell: str, redis_server: RedisProcess, prefix: str,
                                                      address_form: str) -> None:
    address = (f"127.0.0.1:{redis_server.port}" if address_form == "host:port"
               else f"redis://127.0.0.1:{redis_server.port}/0")

    async def scenario() -> None:
        r = redis_server.client()
        listener = await start_listener("--redis", address, "--prefix", prefix, "--groups", "all, news")
        try:
            async with running_hub(hub_config(redis_server.port, prefix), shell) as server:
                alice = await websockets.connect(ws_url(server.port, "alice"), proxy=None)
                assert await next_line(listener) == "new alice -> all,news,user-alice"
                await wait_groups(server, prefix, {"all", "news", "user-alice"})
                bob = await websockets.connect(ws_url(server.port, "bob"), proxy=None)
                assert await next_line(listener) == "new bob -> all,news,user-bob"
                await wait_groups(server, prefix, {"all", "news", "user-alice", "user-bob"})

                await r.publish(f"{prefix}group-data:user-alice", "for alice only")
                await r.publish(f"{prefix}group-data:all", "for everyone")
                assert await within(alice.recv()) == "for alice only"
                assert await within(alice.recv()) == "for everyone"
                assert await within(bob.recv()) == "for everyone"  # not alice's message

                await alice.close()
                assert await next_line(listener) == "gone alice"
                await bob.close()
                assert await next_line(listener) == "gone bob"
            assert await stop_process(listener) == 0
            assert await next_line(listener) == "stopped"
        finally:
            if listener.returncode is None:
                listener.kill()
                await listener.wait()
        await r.aclose()

    asyncio.run(scenario())


def test_listener_key_group_templates(shell: str, redis_server: RedisProcess, prefix: str) -> None:
    async def scenario() -> None:
        r = redis_server.client()
        listener = await start_listener("--redis", f"127.0.0.1:{redis_server.port}", "--prefix", prefix,
                                        "--groups", "", "--key-group", "room-{key}", "--key-group", "audit")
        try:
            async with running_hub(hub_config(redis_server.port, prefix), shell) as server:
                ws = await websockets.connect(ws_url(server.port, "7"), proxy=None)
                assert await next_line(listener) == "new 7 -> room-7,audit"
                await wait_groups(server, prefix, {"room-7", "audit"})
                assert await r.publish(f"{prefix}group-data:room-7", "hi room 7") == 1
                assert await within(ws.recv()) == "hi room 7"
                await ws.close()
            assert await stop_process(listener) == 0
        finally:
            if listener.returncode is None:
                listener.kill()
                await listener.wait()
        await r.aclose()

    asyncio.run(scenario())
