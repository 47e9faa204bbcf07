"""Several worker processes on one port (SO_REUSEPORT), each with its own Redis links."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import websockets

from helpers import RedisProcess, free_port, hub_env, shell_module, within


def test_two_workers_share_the_port_serve_everyone_and_stop_together(shell: str,
                                                                     redis_server: RedisProcess, prefix: str,
                                                                     tmp_path: Path) -> None:
    port = free_port()
    env = hub_env(WSHUB_ADDRESS=f"127.0.0.1:{port}", WSHUB_WORKERS="2",
               WSHUB_REDIS_ADDRESS=f"127.0.0.1:{redis_server.port}", WSHUB_REDIS_CHANNEL_PREFIX=prefix)
    proc = subprocess.Popen([sys.executable, "-m", shell_module(shell)], cwd=tmp_path, env=env,
                            stderr=subprocess.DEVNULL)

    async def scenario() -> None:
        r = redis_server.client()

        async def connect(key: str) -> websockets.ClientConnection:
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                try:
                    return await websockets.connect(f"ws://127.0.0.1:{port}/ws?session_key={key}")
                except OSError:
                    if asyncio.get_running_loop().time() > deadline:
                        raise
                    await asyncio.sleep(0.05)  # the workers are still starting: nothing to await

        clients = [await connect(f"k{i}") for i in range(40)]
        keys = [f"{prefix}groups-new:k{i}" for i in range(40)]

        async def numsub(*channels: str) -> list[int]:
            return [n for _, n in await r.pubsub_numsub(*channels)]

        async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
            deadline = asyncio.get_running_loop().time() + 10
            while not await check():
                assert asyncio.get_running_loop().time() < deadline, what
                await asyncio.sleep(0.02)  # polling Redis' view: it sends no event for this

        async def keys_subscribed() -> bool:
            return await numsub(*keys) == [1] * 40

        await until(keys_subscribed, "every key subscribed once")
        # Both workers hold some of the 40 keys: two subscriber links with subscriptions.
        subscribers = [c for c in await r.client_list(_type="pubsub") if int(c["sub"]) > 0]
        assert len(subscribers) == 2, subscribers
        for i in range(40):
            await r.publish(f"{prefix}groups-new:k{i}", '["all"]')

        async def group_on_both() -> bool:
            return await numsub(f"{prefix}group-data:all") == [2]

        await until(group_on_both, "both workers subscribed to the group")
        await r.publish(f"{prefix}group-data:all", "to-everyone")
        assert [await within(ws.recv()) for ws in clients] == ["to-everyone"] * 40
        proc.send_signal(signal.SIGTERM)
        for ws in clients:
            await within(ws.wait_closed())
            assert ws.close_code == 1001
        await r.aclose()

    try:
        asyncio.run(scenario())
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_hub_runs_on_uvloop_when_it_is_installed(redis_server: RedisProcess, prefix: str,
                                                     tmp_path: Path) -> None:
    """The 'fast' extra: uvloop is used when importable (the test extra installs it)."""
    port = free_port()
    env = hub_env(WSHUB_ADDRESS=f"127.0.0.1:{port}", WSHUB_REDIS_ADDRESS=f"127.0.0.1:{redis_server.port}",
               WSHUB_REDIS_CHANNEL_PREFIX=prefix)
    proc = subprocess.Popen([sys.executable, "-m", "wshub_asyncio"], cwd=tmp_path, env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        assert "listening on" in first and "(uvloop event loop)" in first, first

        async def scenario() -> None:
            ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws?session_key=uv")
            await within(await ws.ping())
            await ws.close()

        asyncio.run(scenario())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_workers_shut_down_when_their_supervisor_is_killed(shell: str, redis_server: RedisProcess, prefix: str,
                                                           tmp_path: Path) -> None:
    """SIGKILL of the supervisor relays nothing: each worker is told by the kernel (SIGTERM) and closes its
    clients with 1001 as on a normal stop, instead of serving on beside the next start's workers."""
    port = free_port()
    env = hub_env(WSHUB_ADDRESS=f"127.0.0.1:{port}", WSHUB_WORKERS="2",
                  WSHUB_REDIS_ADDRESS=f"127.0.0.1:{redis_server.port}", WSHUB_REDIS_CHANNEL_PREFIX=prefix)
    proc = subprocess.Popen([sys.executable, "-m", shell_module(shell)], cwd=tmp_path, env=env,
                            stderr=subprocess.DEVNULL)

    pids: list[int] = []

    def workers() -> list[int]:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        return [int(p) for p in children.read_text().split()] if children.exists() else []

    async def scenario() -> None:
        deadline = asyncio.get_running_loop().time() + 10
        clients: list[websockets.ClientConnection] = []
        while len(clients) < 10:
            try:
                clients.append(await websockets.connect(f"ws://127.0.0.1:{port}/ws?session_key=k{len(clients)}"))
            except OSError:
                assert asyncio.get_running_loop().time() < deadline, "the workers did not start"
                await asyncio.sleep(0.05)  # the workers are still starting: nothing to await
        pids.extend(workers())
        assert len(pids) == 2, pids
        proc.kill()
        proc.wait(timeout=5)
        for ws in clients:
            await within(ws.wait_closed(), 15)
            assert ws.close_code == 1001, ws.close_code
        for pid in pids:  # gone, not just quiet (reaped by init once the supervisor is)
            deadline = asyncio.get_running_loop().time() + 15
            while Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid):
                assert asyncio.get_running_loop().time() < deadline, f"worker {pid} still runs"
                await asyncio.sleep(0.05)  # a process's exit has no event another process can await

    try:
        asyncio.run(scenario())
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in pids:  # a failed run must not leave workers serving
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:", 1)[1].split("\n", 1)[0]
    except (OSError, IndexError):
        return "zombie"
