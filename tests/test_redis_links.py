"""The Redis links' lifecycle, seen from outside a real hub process.

A link is up only once Redis has answered its prelude; a server that accepts
TCP and then refuses (a wrong password, not Redis at all) is redialled ever
more slowly, /readyz says why, and every failure is logged once, with the
address and the reason.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import pytest
import redis.asyncio as aredis

from helpers import RedisProcess, closed_port, http_exchange, hub_process


async def readyz(port: int) -> tuple[int, bytes]:
    answer = await http_exchange(port, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    return answer.status, answer.body


def retry_delays(matches: list[re.Match[str]]) -> list[float]:
    return [float(m.group("delay")) for m in matches]


def assert_backing_off(delays: list[float], minimum: float) -> None:
    """Each delay is within the jittered exponential window of its attempt: [ceiling/2, ceiling]."""
    for attempt, delay in enumerate(delays):
        ceiling = minimum * 2**attempt
        assert ceiling / 2 - 0.011 <= delay <= ceiling + 0.011, (attempt, delays)


@pytest.fixture
def redis_with_password() -> Iterator[RedisProcess]:
    server = RedisProcess(extra=("--requirepass", "right"))
    server.start()
    yield server
    server.kill()


def test_a_wrong_password_is_not_a_reconnect_storm(shell: str, redis_with_password: RedisProcess) -> None:
    asyncio.run(_wrong_password(shell, redis_with_password))


async def _wrong_password(shell: str, redis_with_password: RedisProcess) -> None:
    # Before: the TCP accept reset the backoff and logged "link up": ~100 dials in 5 s, /readyz 200.
    address = f"redis://:wrongpw@127.0.0.1:{redis_with_password.port}"
    async with hub_process(shell=shell, WSHUB_REDIS_ADDRESS=address) as hub:
        pattern = (rf"redis commands link to 127\.0\.0\.1:{redis_with_password.port}: AUTH failed: WRONGPASS"
                   r".*; retrying in (?P<delay>[0-9.]+)s")
        failures = await hub.lines_matching(pattern, 6)
        assert_backing_off(retry_delays(failures), 0.1)
        status, body = await readyz(hub.port)
        assert status == 503
        assert b"AUTH failed: WRONGPASS" in body, body
        metrics = await http_exchange(hub.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b'wshub_redis_up{link="commands"} 0' in metrics.body
        assert not any("link up" in line for line in hub.log), hub.log
        assert not any("connection lost" in line for line in hub.log), hub.log
    info = aredis.Redis(host="127.0.0.1", port=redis_with_password.port, password="right")
    received = int((await info.info("stats"))["total_connections_received"])
    await info.aclose()
    assert received <= 2 * 8 + 1  # both links, about 6 to 7 attempts each in the time 6 lines took


def test_a_port_that_is_not_redis_is_never_called_up(shell: str) -> None:
    asyncio.run(_a_port_that_is_not_redis_is_never_called_up(shell))


async def _a_port_that_is_not_redis_is_never_called_up(shell: str) -> None:
    async def not_redis(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(not_redis, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with hub_process(shell=shell, WSHUB_REDIS_ADDRESS=f"127.0.0.1:{port}") as hub:
            await hub.line_matching(rf"redis subscriber link to 127\.0\.0\.1:{port}: protocol error")
            status, body = await readyz(hub.port)
            assert status == 503 and b"protocol error" in body, body
            assert not any("link up" in line for line in hub.log), hub.log
    finally:
        server.close()
        await server.wait_closed()


def test_a_refused_connect_names_the_address_and_the_reason(shell: str) -> None:
    asyncio.run(_a_refused_connect_names_the_address_and_the_reason(shell))


async def _a_refused_connect_names_the_address_and_the_reason(shell: str) -> None:
    port = closed_port()  # nothing listens there
    async with hub_process(shell=shell, WSHUB_REDIS_ADDRESS=f"127.0.0.1:{port}") as hub:
        failures = await hub.lines_matching(
            rf"redis commands link to 127\.0\.0\.1:{port}: connect failed: Connection refused"
            r"; retrying in (?P<delay>[0-9.]+)s", 3)
        assert_backing_off(retry_delays(failures), 0.1)
        status, body = await readyz(hub.port)
        assert status == 503 and b"connect failed: Connection refused" in body, body


def test_a_name_that_does_not_resolve_names_the_host(shell: str) -> None:
    asyncio.run(_a_name_that_does_not_resolve_names_the_host(shell))


async def _a_name_that_does_not_resolve_names_the_host(shell: str) -> None:
    async with hub_process(shell=shell, WSHUB_REDIS_ADDRESS="no-such-host.invalid:6379") as hub:
        line = await hub.line_matching(r"redis \w+ link to no-such-host\.invalid:6379: connect failed: (?P<why>.+);")
        assert "refused" not in line.group("why")  # the resolver's own words, not a made-up reason


def test_a_link_lost_after_it_was_up_says_so_and_comes_back(shell: str, own_redis: RedisProcess) -> None:
    asyncio.run(_lost_after_up(shell, own_redis))


async def _lost_after_up(shell: str, redis: RedisProcess) -> None:
    async with hub_process(shell=shell, WSHUB_REDIS_ADDRESS=f"127.0.0.1:{redis.port}",
                           WSHUB_REDIS_RECONNECT_MAX="0.5") as hub:
        await hub.lines_matching(r"link up", 2)
        redis.kill()
        await hub.line_matching(rf"redis subscriber link to 127\.0\.0\.1:{redis.port}: connection lost")
        redis.start()
        await hub.lines_matching(r"link up", 4)
        status, _ = await readyz(hub.port)
        assert status == 200


def test_sentinel_mode_with_no_sentinel_answering_tries_each_in_turn_and_says_so(shell: str) -> None:
    asyncio.run(_no_sentinel_answers(shell))


async def _no_sentinel_answers(shell: str) -> None:
    ports = two_closed_ports()  # nothing listens there
    async with hub_process(shell=shell, WSHUB_REDIS_MODE="sentinel", WSHUB_REDIS_MASTER_NAME="mymaster",
                           WSHUB_REDIS_ADDRESS=",".join(f"127.0.0.1:{p}" for p in ports)) as hub:
        start = next(line for line in hub.log if "listening on" in line)
        assert f"redis broker at master 'mymaster' of sentinels 127.0.0.1:{ports[0]}, 127.0.0.1:{ports[1]}" in start
        await hub.line_matching(rf"redis sentinel link to 127\.0\.0\.1:{ports[0]}: connect failed: Connection "
                                rf"refused; trying the next sentinel, 127\.0\.0\.1:{ports[1]}")
        await hub.line_matching(rf"redis sentinel link to 127\.0\.0\.1:{ports[1]}: connect failed: Connection "
                                r"refused; retrying in [0-9.]+s")
        status, body = await readyz(hub.port)
        assert status == 503 and body.startswith(b"no sentinel answered (last error: 127.0.0.1:"), body
        metrics = await http_exchange(hub.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b'wshub_redis_up{link="sentinel"} 0' in metrics.body
        assert not any("redis subscriber link" in line or "redis commands link" in line for line in hub.log)


def test_cluster_mode_with_no_node_answering_tries_each_seed_and_says_so(shell: str) -> None:
    asyncio.run(_no_cluster_node_answers(shell))


async def _no_cluster_node_answers(shell: str) -> None:
    ports = two_closed_ports()  # nothing listens there
    async with hub_process(shell=shell, WSHUB_REDIS_MODE="cluster",
                           WSHUB_REDIS_ADDRESS=",".join(f"127.0.0.1:{p}" for p in ports)) as hub:
        start = next(line for line in hub.log if "listening on" in line)
        assert f"redis cluster (sharded pub/sub) from seed nodes 127.0.0.1:{ports[0]}, 127.0.0.1:{ports[1]}" in start
        await hub.line_matching(rf"redis cluster: no node answered CLUSTER SHARDS \(last: 127\.0\.0\.1:{ports[1]}: "
                                r"connect failed: Connection refused\); retrying in [0-9.]+s")
        status, body = await readyz(hub.port)
        assert status == 503 and body.startswith(b"no cluster topology yet (last error: 127.0.0.1:"), body


def two_closed_ports() -> list[int]:
    first = closed_port()
    while (second := closed_port()) == first:
        pass
    return [first, second]
