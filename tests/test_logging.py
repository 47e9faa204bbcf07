"""What the hub process writes to stderr (issue 8 items 3, 12, 13), read from a real ``python -m wshub_asyncio``.

Clients and Redis here send what an attacker would: CR/LF/NUL in keys and close
reasons, 10 KB keys, 10,000 groups, bytes that are not UTF-8.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import websockets

from helpers import (
    RedisProcess,
    closed_port,
    free_port,
    hub_env,
    raw_websocket,
    shell_module,
    upgrade_head,
    within,
    ws_frame,
)

FORGED = "x\r\n2026-01-01 12:00:00,000 WARNING wshub: fake\x00"
RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) [\w.]+: ")


def sha8(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:8]


class HubLog:
    """The hub's stderr, line by line, as it comes."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.stream = stream
        self.lines: list[str] = []

    async def until(self, match: Callable[[str], bool], timeout: float = 15) -> str:
        """The first line (seen before or read now) that matches."""
        async def read() -> str:
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    if match(line):
                        return line
                seen = len(self.lines)
                raw = await self.stream.readline()
                assert raw, f"the hub exited: {self.lines}"
                self.lines.append(raw.decode("utf-8").rstrip("\n"))

        return await within(read(), timeout)


@contextlib.asynccontextmanager
async def hub_process(shell: str, redis: RedisProcess, prefix: str, tmp_path: Path, *args: str,
                      **env: str) -> AsyncIterator[tuple[int, HubLog]]:
    port = free_port()
    environ = hub_env(WSHUB_ADDRESS=f"127.0.0.1:{port}", WSHUB_REDIS_ADDRESS=f"127.0.0.1:{redis.port}",
                      WSHUB_REDIS_CHANNEL_PREFIX=prefix, **env)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", shell_module(shell), *args, cwd=tmp_path,
                                                env=environ, stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    log = HubLog(proc.stderr)
    try:
        ready = 0
        while ready < int(env.get("WSHUB_WORKERS", "1")) * 2:  # every process: both Redis links up
            await log.until(lambda line, n=ready: sum("link up" in x for x in log.lines) > n)
            ready += 1
        yield port, log
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.communicate(), 10)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def wait_subscribed(redis: RedisProcess, channel: str) -> None:
    r = redis.client()
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while (await r.pubsub_numsub(channel))[0][1] == 0:
            assert asyncio.get_running_loop().time() < deadline, channel
            await asyncio.sleep(0.01)  # polling Redis' view: it sends no event for a subscription
    finally:
        await r.aclose()


async def publish(redis: RedisProcess, channel: str, payload: bytes | str) -> None:
    r = redis.client()
    try:
        await r.publish(channel, payload)
    finally:
        await r.aclose()


def test_a_client_cannot_forge_a_log_line(shell: str, redis_server: RedisProcess, prefix: str, tmp_path: Path) -> None:
    """Item 3: CR/LF/NUL in a key and in a close reason are escaped; every line is a real record."""
    async def scenario() -> None:
        async with hub_process(shell, redis_server, prefix, tmp_path, "--debug") as (port, log):
            ws = await raw_websocket(port, quote(FORGED))
            assert ws.status_line.endswith(b"101 Switching Protocols")
            await log.until(lambda line: "connected:" in line)
            reason = "bye\n2026-01-01 12:00:00,000 WARNING wshub: fake too"
            ws.send(ws_frame(0x8, (1000).to_bytes(2, "big") + reason.encode()))
            await ws.read_until_close()
            closed = await log.until(lambda line: "closed:" in line)
            await ws.aclose()
            assert closed.endswith(r"reason=bye\n2026-01-01 12:00:00,000 WARNING wshub: fake too")
            connected = next(line for line in log.lines if "connected:" in line)
            assert connected.endswith(r"(x\r\n2026-01-01 12:00:00,000 WARNING wshub: fake\x00)")
            assert all(RECORD.match(line) for line in log.lines), log.lines
            assert [line for line in log.lines if "fake" in line] == [connected, closed], log.lines

    asyncio.run(scenario())


def test_long_keys_and_many_groups_make_bounded_lines(shell: str, redis_server: RedisProcess, prefix: str,
                                                      tmp_path: Path) -> None:
    """Item 3: a 10 KB key and a 10,000-group answer each make one short line."""
    key = "k" * 10240
    groups = [f"group-{i:05d}" for i in range(10000)]

    async def scenario() -> None:
        async with hub_process(shell, redis_server, prefix, tmp_path, "--debug") as (port, log):
            ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws?session_key={key}", proxy=None)
            connected = await log.until(lambda line: "connected:" in line)
            assert len(connected) < 500 and connected.endswith("k...(+9984 chars))"), connected[:600]
            await wait_subscribed(redis_server, f"{prefix}groups-new:{key}")
            await publish(redis_server, f"{prefix}groups-new:{key}", json.dumps(groups))
            line = await log.until(lambda line: "groups of" in line)
            assert len(line) < 300, (len(line), line[:400])
            assert (f"groups of session_key sha256:{sha8(key)} set to 10000 group(s) [group-00000, group-00001, "
                    "group-00002, group-00003, group-00004, ...(+9995 more)] for 1 connection(s)") in line
            await ws.close()

    asyncio.run(scenario())


def test_redis_bytes_are_text_not_python_reprs(shell: str,
                                               redis_server: RedisProcess, prefix: str, tmp_path: Path) -> None:
    """Item 12: a malformed groups answer is logged as escaped text, without b'...'."""
    async def scenario() -> None:
        async with hub_process(shell, redis_server, prefix, tmp_path) as (port, log):
            ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws?session_key=k", proxy=None)
            await wait_subscribed(redis_server, f"{prefix}groups-new:k")
            await publish(redis_server, f"{prefix}groups-new:k", b"{\xff\n\x00}")
            line = await log.until(lambda line: "ignored groups" in line)
            assert "b'" not in line and 'b"' not in line, line
            assert line.endswith(f"ignored groups for session_key sha256:{sha8('k')}: neither a JSON array of "
                                 r"strings nor a comma list: {\xff\n\x00}"), line
            await ws.close()

    asyncio.run(scenario())


def test_keys_are_fingerprinted_at_info_and_whole_only_with_debug(shell: str, redis_server: RedisProcess, prefix: str,
                                                                  tmp_path: Path) -> None:
    """Item 13: a session key is a credential; INFO shows a stable fingerprint, --debug the key too."""
    key = "secret-session-key-1234"

    async def connect_and_read(*args: str) -> tuple[str, list[str]]:
        async with hub_process(shell, redis_server, prefix, tmp_path, *args) as (port, log):
            ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws?session_key={key}", proxy=None)
            await ws.close()
            await log.until(lambda line: "closed:" in line)
            connected = next(line for line in log.lines if "connected:" in line)
            return connected, log.lines

    async def scenario() -> None:
        connected, lines = await connect_and_read()
        assert connected.endswith(f"INFO wshub: client 1 connected: session_key sha256:{sha8(key)}"), connected
        assert not any(key in line for line in lines), lines
        again, _ = await connect_and_read()  # another process, after a restart: the same fingerprint
        assert again.split(" INFO ", 1)[1] == connected.split(" INFO ", 1)[1]
        debug, _ = await connect_and_read("--debug")
        assert debug.endswith(f"client 1 connected: session_key sha256:{sha8(key)} ({key})"), debug

    asyncio.run(scenario())


def test_disallowed_origin_is_logged_with_the_origin(shell: str, redis_server: RedisProcess, prefix: str,
                                                     tmp_path: Path) -> None:
    """Item 12: a 403 for an origin names the origin (escaped), so a misconfigured page can be found."""
    async def scenario() -> None:
        async with hub_process(shell, redis_server, prefix, tmp_path,
                               WSHUB_WEBSOCKET_ALLOWED_ORIGINS="https://good.example") as (port, log):
            ws = await raw_websocket(port, "k", head=upgrade_head("k", extra=("Origin: https://evil.example\x7f",)))
            assert ws.status_line.endswith(b"403 Forbidden")
            await ws.aclose()
            line = await log.until(lambda line: "403" in line)
            assert line.endswith(r"INFO wshub: client 1 refused: 403 origin not allowed: https://evil.example\x7f")

    asyncio.run(scenario())


def test_json_lines_carry_structured_fields(shell: str,
                                            redis_server: RedisProcess, prefix: str, tmp_path: Path) -> None:
    """Item 12: event, conn, key, code, reason (and origin, status) are fields, not only text in message."""
    async def scenario() -> None:
        async with hub_process(shell, redis_server, prefix, tmp_path, "--log-json",
                               WSHUB_WEBSOCKET_ALLOWED_ORIGINS="https://good.example") as (port, log):
            ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws?session_key={quote('k' + FORGED)}",
                                          proxy=None, origin=websockets.Origin("https://good.example"))
            await ws.close(1000, "bye\nnow")
            bad = await raw_websocket(port, "k", head=upgrade_head("k", extra=("Origin: https://evil.example",)))
            await bad.aclose()
            entries: list[dict[str, Any]] = []

            def entry(event: str) -> Callable[[str], bool]:
                return lambda line: json.loads(line).get("event") == event

            for event in ("connect", "close", "refused"):
                entries.append(json.loads(await log.until(entry(event))))
            connect, close, refused = entries
            fp = sha8(f"k{FORGED}")
            assert {k: connect[k] for k in ("event", "conn", "key")} == {"event": "connect", "conn": 1, "key": fp}
            assert {k: close[k] for k in ("event", "conn", "key", "code", "reason")} == {
                "event": "close", "conn": 1, "key": fp, "code": 1000, "reason": "bye\nnow"}
            assert {k: refused[k] for k in ("event", "conn", "status", "origin")} == {
                "event": "refused", "conn": 2, "status": 403, "origin": "https://evil.example"}
            assert all(set(json.loads(line)) >= {"time", "level", "logger", "message"} for line in log.lines)

    asyncio.run(scenario())


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_with_workers_every_line_names_its_worker_and_client_ids_are_unique(shell: str,
        redis_server: RedisProcess, prefix: str, tmp_path: Path, fmt: str) -> None:
    """Item 12: with workers: 2, lines say w1/w2 and client ids are w1-N / w2-N, never the same twice."""
    args = ("--log-json",) if fmt == "json" else ()

    def worker_of(line: str) -> str:
        if fmt == "json":
            return str(json.loads(line).get("worker", ""))
        found = re.match(r"^\S+ \S+ \S+ wshub\[(w\d)\]: ", line)
        return found.group(1) if found else ""

    def client_of(line: str) -> str | None:
        if fmt == "json":
            entry = json.loads(line)
            return f"{entry['worker']}-{entry['conn']}" if entry.get("event") == "connect" else None
        found = re.search(r": client (\S+) connected:", line)
        return found.group(1) if found else None

    async def scenario() -> None:
        async with hub_process(shell, redis_server, prefix, tmp_path, *args, WSHUB_WORKERS="2") as (port, log):
            clients = []
            # The kernel spreads connects over the two workers by a hash: connect until both have some.
            while len({worker_of(line) for line in log.lines if client_of(line)}) < 2:
                assert len(clients) < 200, log.lines
                clients.append(await websockets.connect(f"ws://127.0.0.1:{port}/ws?session_key=k", proxy=None))
                want = len(clients)
                await log.until(lambda _line, n=want: sum(1 for x in log.lines if client_of(x)) >= n)
            ids = [c for c in map(client_of, log.lines) if c]
            assert len(ids) == len(set(ids)) == len(clients), ids
            assert all(c.split("-")[0] in ("w1", "w2") for c in ids), ids
            if fmt == "text":
                assert all(c.startswith(worker_of(line) + "-") for line in log.lines if (c := client_of(line)))
            assert all(worker_of(line) in ("w1", "w2") for line in log.lines), log.lines
            for ws in clients:
                await ws.close()

    asyncio.run(scenario())


def test_log_level_warning_writes_no_line_per_connection(shell: str, tmp_path: Path) -> None:
    """logLevel: warning (for many connections): clients are served, and no connect/close line is formatted;
    warnings still are. A bad value is a config error naming the key and where it came from."""
    async def scenario() -> None:
        port = free_port()
        dead = closed_port()  # no Redis here: the hub warns about its links
        environ = hub_env(WSHUB_ADDRESS=f"127.0.0.1:{port}", WSHUB_REDIS_ADDRESS=f"127.0.0.1:{dead}",
                          WSHUB_REDIS_RECONNECT_MAX="0.2", WSHUB_LOG_LEVEL="warning", WSHUB_SHUTDOWN_TIMEOUT="0.5")
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", shell_module(shell), cwd=tmp_path,
                                                    env=environ, stderr=asyncio.subprocess.PIPE)
        assert proc.stderr is not None
        log = HubLog(proc.stderr)
        try:
            await log.until(lambda line: "WARNING wshub: redis" in line)  # a warning: the level lets it through
            for i in range(3):  # served: upgraded (their announcements wait for Redis), and not logged
                status = (await raw_exchange(port, upgrade_head(f"k{i}"))).split(b" ", 2)[1]
                assert status == b"101", status
        finally:
            proc.send_signal(signal.SIGTERM)
            _, rest = await asyncio.wait_for(proc.communicate(), 10)
        lines = log.lines + rest.decode().splitlines()
        assert all(RECORD.match(line) and " INFO " not in line for line in lines), lines
        assert proc.returncode == 0

        check = await asyncio.create_subprocess_exec(
            sys.executable, "-m", shell_module(shell), "--check-config", cwd=tmp_path,
            env=hub_env(WSHUB_LOG_LEVEL="verbose"), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await check.communicate()
        assert check.returncode == 2
        assert ("logLevel in environment variable WSHUB_LOG_LEVEL: must be 'debug', 'info', 'warning' or 'error', "
                "got 'verbose'") in err.decode(), err

    asyncio.run(scenario())


async def raw_exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await within(reader.readuntil(b"\r\n\r\n"))
    finally:
        writer.close()
