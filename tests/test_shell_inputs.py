"""Every shell input that can move the core's next deadline re-arms the shell's single timer, on both shells.

Each shell arms one timer at ``hub.next_deadline()`` (asyncio: a loop timer;
trio: the deadline of one cancel scope), and only when it drains. So an input
fed to the core without a drain afterwards leaves the timer where it was: the
deadline that input created (a handshake timeout, a ping, a write stall, a
reconnect, the shutdown timeout) is missed until something else wakes the loop.
Each test performs one input with every other timer far away (redis.timeout
60 s: the idle pings are 30 s off; pongWait 60 s unless the test needs a ping)
and checks both the effect and the invariant: once no drain is pending, the
armed timer is the core's next deadline.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml

from helpers import (
    RedisProcess,
    free_port,
    hub_config,
    hub_now,
    on_hub,
    raw_websocket,
    running_hub,
    shell_module,
    upgrade_head,
    wait_confirmed,
    wait_for,
    within,
    ws_frame,
)
from wshub_core import RedisLink

ROOT = Path(__file__).resolve().parent.parent
FAR = {"redis_timeout": 60}  # link keepalive timers 30 s away: they never wake the loop during a test


async def assert_armed(server: Any) -> None:
    """Once the shell has nothing left to drain, its timer is armed at the core's next deadline.

    The three are read in one step where the hub runs (``on_hub``): on trio, in its thread.
    """
    seen: list[tuple[bool, float | None, float | None]] = []

    def drained() -> bool:
        seen.append(on_hub(server, lambda s: (s._drain_pending, s._timer_at, s.core.next_deadline())))
        return not seen[-1][0]

    await wait_for(drained, what="the shell drained")
    _, armed, deadline = seen[-1]
    assert armed == deadline, f"timer armed at {armed}, the core's next deadline is {deadline}"


@asynccontextmanager
async def hub(shell: str, redis: RedisProcess, prefix: str, **overrides: Any) -> AsyncIterator[Any]:
    async with running_hub(hub_config(redis.port, prefix, **{**FAR, **overrides}), shell) as server:
        await assert_armed(server)
        yield server


async def silent_tcp(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


def test_accept_arms_the_handshake_deadline(shell: str, redis_server: RedisProcess, prefix: str) -> None:
    """connection_made: a socket that sends nothing is closed at webSocket.handshakeTimeout."""
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        async with hub(shell, redis_server, prefix, webSocket_handshakeTimeout=1) as server:
            started = loop.time()
            reader, writer = await silent_tcp(server.port)
            await wait_for(lambda: server.core.client_count() == 1, what="accepted")
            await assert_armed(server)
            assert await within(reader.read(), 1 + 1.0) == b""  # closed within handshakeTimeout + 1 s
            assert loop.time() - started >= 1 - 0.05  # and not before its deadline
            writer.close()

    asyncio.run(scenario())


def test_client_data_arms_the_ping_deadline(shell: str, redis_server: RedisProcess, prefix: str) -> None:
    """data_received: the upgrade schedules the first ping at 0.9 x pongWait, earlier than anything else."""
    async def scenario() -> None:
        async with hub(shell, redis_server, prefix, webSocket_pongWait=1, webSocket_handshakeTimeout=60) as server:
            ws = await raw_websocket(server.port, "k")
            assert ws.status_line == b"HTTP/1.1 101 Switching Protocols"
            await assert_armed(server)
            frame = await ws.read_frame(timeout=0.9 + 1.0)
            assert frame.opcode == 0x9  # the hub's ping, on time
            await ws.aclose()

    asyncio.run(scenario())


def test_timer_re_arms_for_the_next_deadline(shell: str, redis_server: RedisProcess, prefix: str) -> None:
    """_on_timer: after a ping the next one is armed (the client answers, so it stays)."""
    async def scenario() -> None:
        async with hub(shell, redis_server, prefix, webSocket_pongWait=1) as server:
            ws = await raw_websocket(server.port, "k")
            for _ in range(2):
                frame = await ws.read_frame(timeout=0.9 + 1.0)
                assert frame.opcode == 0x9
                ws.send(ws_frame(0xA, frame.payload))
                await assert_armed(server)
            await ws.aclose()

    asyncio.run(scenario())


def test_eof_and_connection_lost_re_arm(shell: str, redis_server: RedisProcess, prefix: str) -> None:
    """eof_received / connection_lost: the client and its deadlines go; the timer follows the core.

    handshakeTimeout 60 s and pings 18 s away: only the input itself can close the socket in time,
    and a timer left at the forgotten client's deadline is not the core's next deadline (the links' 30 s).
    """
    async def scenario() -> None:
        async with hub(shell, redis_server, prefix, webSocket_handshakeTimeout=60, webSocket_pongWait=20) as server:
            reader, writer = await silent_tcp(server.port)
            await wait_for(lambda: server.core.client_count() == 1, what="accepted")
            await assert_armed(server)
            writer.write_eof()
            assert await within(reader.read()) == b""  # the hub closes too
            await wait_for(lambda: server.core.client_count() == 0, what="forgotten")
            await assert_armed(server)
            writer.close()
            lost = await raw_websocket(server.port, "k")
            await wait_for(lambda: server.core.client_count() == 1, what="upgraded")
            await assert_armed(server)
            sock = lost.writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            lost.writer.transport.abort()  # a reset (RST, not FIN): connection_lost without eof_received
            await wait_for(lambda: server.core.client_count() == 0, what="forgotten")
            await assert_armed(server)

    asyncio.run(scenario())


def test_pause_and_resume_writing_re_arm(shell: str, redis_server: RedisProcess, prefix: str) -> None:
    """pause_writing arms the write stall (writeWait); a client that never reads is aborted then."""
    async def scenario() -> None:
        r = redis_server.client()
        async with hub(shell, redis_server, prefix, webSocket_writeWait=1) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port,
                                                           limit=1 << 30)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            writer.write(upgrade_head("k"))
            await within(reader.readuntil(b"\r\n\r\n"))
            writer.transport.pause_reading()  # a client that stops reading
            channel = f"{prefix}groups-new:k".encode()
            await wait_confirmed(server, channel, what="key confirmed")
            await r.publish(f"{prefix}groups-new:k", '["g"]')
            await wait_for(lambda: server.core.ready and len(server.core.needed_channels()) == 4, what="in g")
            payload = "x" * 60_000
            paused = asyncio.get_running_loop().create_future()
            while not paused.done():
                await r.publish(f"{prefix}group-data:g", payload)
                conn = next(iter(server.transports if shell == "asyncio" else server.clients))
                client = server.core._clients.get(conn)
                if client is not None and client.write_paused_since is not None:
                    paused.set_result(asyncio.get_running_loop().time())
            await assert_armed(server)
            started = paused.result()
            await wait_for(lambda: server.core.client_count() == 0, timeout=1 + 1.0, what="aborted at writeWait")
            assert asyncio.get_running_loop().time() - started >= 1 - 0.05
            await assert_armed(server)
            writer.close()
        await r.aclose()

    asyncio.run(scenario())


def test_link_lost_arms_the_reconnect_under_a_new_link_id(shell: str, own_redis: RedisProcess, prefix: str) -> None:
    """_LinkProtocol.connection_lost: the reconnect (reconnectMin 0.02 s) is armed; each role is redialled
    under a new link id, the dead links are gone from the shell, and the hub is ready again."""
    async def scenario() -> None:
        r = own_redis.client()
        async with hub(shell, own_redis, prefix) as server:
            before = server.core.broker.current_links()
            assert sorted(server.links) == sorted(before.values()) and not server._dials
            # Both hub links: the commands link (type normal) and the subscriber link (subscribed to its stall
            # probe's channel only, no client: type pubsub).
            killed = await r.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
            killed += await r.execute_command("CLIENT", "KILL", "TYPE", "pubsub", "SKIPME", "yes")
            assert killed == 2
            await wait_for(lambda: not server.core.ready, what="link lost")
            await assert_armed(server)
            await wait_for(lambda: server.core.ready, timeout=0.2 + 1.0, what="reconnected within reconnectMax")
            await assert_armed(server)
            after = server.core.broker.current_links()
            assert after.keys() == before.keys()
            assert min(after.values()) > max(before.values())  # a new id per dial, never one reused
            assert sorted(server.links) == sorted(after.values()) and not server._dials
        await r.aclose()

    asyncio.run(scenario())


def test_link_data_arms_the_next_idle_ping(shell: str, redis_server: RedisProcess, prefix: str) -> None:
    """_LinkProtocol.data_received: a PING reply moves the link's deadline from the reply timeout
    (sent + redis.timeout) to the next idle PING (reply + timeout / 2), which is earlier."""
    async def scenario() -> None:
        async with hub(shell, redis_server, prefix, redis_timeout=2) as server:
            cmd = server.core.broker._sessions[RedisLink.COMMANDS]
            first = cmd.last_rx
            await wait_for(lambda: cmd.last_rx > first and not cmd.waiting_since, timeout=1 + 1.0,
                           what="an idle PING answered")
            await assert_armed(server)
            second = cmd.last_rx
            await wait_for(lambda: cmd.last_rx > second, timeout=1 + 1.0, what="the next idle PING on time")
            assert hub_now(server) - second < 1 + 1.0  # the core's times are the hub's clock

    asyncio.run(scenario())


def test_shutdown_arms_the_shutdown_timeout(shell: str, own_redis: RedisProcess, prefix: str) -> None:
    """signal shutdown: with Redis frozen a client message cannot flush; Stopped at shutdownTimeout."""
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        async with hub(shell, own_redis, prefix, shutdownTimeout=1) as server:
            ws = await raw_websocket(server.port, "k")
            await wait_for(lambda: server.core.ready, what="ready")
            own_redis.pause()
            try:
                ws.send(ws_frame(0x1, b"stuck behind a frozen Redis"))
                await wait_for(lambda: server.core.stats.messages_in == 1, what="message read")
                started = loop.time()
                server.shutdown()
                await assert_armed(server)
                await within(server.stopped.wait(), 1 + 1.0)
                assert loop.time() - started >= 1 - 0.05
            finally:
                own_redis.resume()
            await ws.aclose()

    asyncio.run(scenario())


def test_a_silent_tcp_client_is_closed_within_handshake_timeout_by_the_process(shell: str,
                                                                                redis_server: RedisProcess,
                                                                                prefix: str,
                                                                                tmp_path: Path) -> None:
    """``python -m wshub_<shell>`` with WSHUB_WEBSOCKET_HANDSHAKE_TIMEOUT=1: closed within 1 + 1 s."""
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"address": f"127.0.0.1:{port}",
                                      "redis": {"address": f"127.0.0.1:{redis_server.port}",
                                                "channelPrefix": prefix}}), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSHUB_")}
    env["WSHUB_WEBSOCKET_HANDSHAKE_TIMEOUT"] = "1"

    async def scenario() -> None:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", shell_module(shell), "--config", str(config),
                                                    cwd=ROOT, env=env, stderr=asyncio.subprocess.PIPE)
        assert proc.stderr is not None
        stderr = proc.stderr
        try:
            async def listening() -> None:
                while b"listening on" not in (line := await stderr.readline()):
                    assert line, "the hub exited early"

            await within(listening(), 15)
            drain = asyncio.ensure_future(stderr.read())  # keeps the pipe from filling up
            loop = asyncio.get_running_loop()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            started = loop.time()
            assert await within(reader.read(), 1 + 1.0) == b""
            assert loop.time() - started >= 1 - 0.1
            writer.close()
            proc.send_signal(signal.SIGTERM)
            assert await within(proc.wait(), 10) == 0
            await drain
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    asyncio.run(scenario())
