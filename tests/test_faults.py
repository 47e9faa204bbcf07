"""Redis faults injected for real: SIGKILL, restart, SIGSTOP/SIGCONT, CLIENT KILL.

Each test runs its own redis-server (``own_redis``) and keeps real WebSocket
clients connected through the fault. What is asserted is what users of such
hubs report losing: connections, subscriptions, client messages.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aredis
import websockets
from websockets.asyncio.client import ClientConnection

from helpers import RedisProcess, Subscriber, http_exchange, hub_config, running_hub, wait_confirmed, wait_for, within
from wshub_asyncio import Server
from wshub_core import Hub

T = TypeVar("T")


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await scenario()

    return asyncio.run(main())


async def join(server: Server[Hub], r: aredis.Redis, sub: Subscriber, prefix: str, key: str,
               groups: list[str]) -> ClientConnection:
    """Connect a client, answer its client-new like a listener, wait until its groups are live."""
    ws = await websockets.connect(f"ws://127.0.0.1:{server.port}/ws?session_key={key}")
    assert await sub.next() == (f"{prefix}client-new", key.encode())
    await r.publish(f"{prefix}groups-new:{key}", str(groups).replace("'", '"'))
    channels = {f"{prefix}group-data:{g}".encode() for g in groups}
    await wait_for(lambda: channels <= server.core.needed_channels() and server.core.ready, what="groups live")
    return ws


@contextlib.asynccontextmanager
async def client_a_in_group_g(shell: str, own_redis: RedisProcess, prefix: str,
                              **config: Any) -> AsyncIterator[tuple[Server[Hub], Subscriber, ClientConnection]]:
    """A hub on ``own_redis``, client "a" in group "g", and a subscriber to client-data:a."""
    r = own_redis.client()
    sub = Subscriber(r)
    await sub.subscribe(f"{prefix}client-new", f"{prefix}client-data:a")
    try:
        async with running_hub(hub_config(own_redis.port, prefix, **config), shell) as server:
            yield server, sub, await join(server, r, sub, prefix, "a", ["g"])
    finally:
        await sub.close()
        await r.aclose()


async def redis_channels(r: aredis.Redis, prefix: str) -> set[bytes]:
    """The hub's channels subscribed in Redis, but for its stall probe's own (``PREFIX probe:...``)."""
    return {ch for ch in await r.pubsub_channels(f"{prefix}*") if not ch.startswith(f"{prefix}probe:".encode())}


def test_sigkill_and_restart_loses_no_client_message_and_no_subscription(shell: str, own_redis: RedisProcess,
                                                                        prefix: str) -> None:
    """Clients stay connected through a Redis crash; messages sent meanwhile arrive in order.

    The restarted Redis first requires another password, so the test's observer can
    subscribe before the hub's reconnect succeeds: no race, no sleep.
    """
    own_redis.extra = ("--requirepass", "pw")
    own_redis.restart()

    async def scenario() -> None:
        r = aredis.Redis(port=own_redis.port, password="pw")
        sub = Subscriber(r)
        await sub.subscribe(f"{prefix}client-new", f"{prefix}client-data:a")
        config = hub_config(own_redis.port, prefix, redis_password="pw")
        async with running_hub(config, shell) as server:
            a = await join(server, r, sub, prefix, "a", ["g1", "g2"])
            b = await join(server, r, sub, prefix, "b", ["g2", "g3"])
            needed = server.core.needed_channels()
            await sub.close()
            await r.aclose()

            own_redis.kill()
            await wait_for(lambda: not server.core.ready, what="hub notices the crash")
            for i in range(50):
                await a.send(f"during-outage-{i}")
            # Still connected: a ping round-trip succeeds through the hub.
            await within(await a.ping())
            await within(await b.ping())

            own_redis.extra = ("--requirepass", "gate")
            own_redis.start()
            gate = aredis.Redis(port=own_redis.port, password="gate")
            observer = Subscriber(gate)
            await observer.subscribe(f"{prefix}client-data:a")
            await gate.config_set("requirepass", "pw")  # now the hub's AUTH succeeds

            await wait_for(lambda: server.core.ready, timeout=10, what="hub resubscribed")
            # Regression (Centrifuge had this bug): every needed channel is subscribed again.
            observed = {f"{prefix}client-data:a".encode()}  # the observer's own subscription
            assert await redis_channels(gate, prefix) - observed == needed
            got = [await observer.next() for _ in range(50)]
            assert got == [(f"{prefix}client-data:a", f"during-outage-{i}".encode()) for i in range(50)]
            # Published after the resubscribe is confirmed: 0 loss, to the right members.
            for i in range(20):
                await gate.publish(f"{prefix}group-data:g2", f"m{i}")
            assert [await within(a.recv()) for _ in range(20)] == [f"m{i}" for i in range(20)]
            assert [await within(b.recv()) for _ in range(20)] == [f"m{i}" for i in range(20)]
            await observer.close()
            await gate.aclose()

    run(scenario)


def test_client_kill_pubsub_recovers_every_subscription(shell: str, own_redis: RedisProcess, prefix: str) -> None:
    """What Redis does to a pub/sub reader over client-output-buffer-limit: the hub recovers."""
    async def scenario() -> None:
        r = own_redis.client()
        sub = Subscriber(r)
        await sub.subscribe(f"{prefix}client-new")
        async with running_hub(hub_config(own_redis.port, prefix), shell) as server:
            clients = [await join(server, r, sub, prefix, f"k{i}", [f"g{i % 3}", "all"]) for i in range(6)]
            await sub.close()
            needed = server.core.needed_channels()
            reconnects = server.core.broker.reconnects
            assert await r.execute_command("CLIENT", "KILL", "TYPE", "pubsub") == 1  # only the hub's link
            await wait_for(lambda: server.core.broker.reconnects > reconnects, what="hub saw the kill")
            await wait_for(lambda: server.core.ready, what="resubscribed")
            assert await redis_channels(r, prefix) == needed
            await r.publish(f"{prefix}group-data:all", "after-kill")
            for ws in clients:
                assert await within(ws.recv()) == "after-kill"
        await r.aclose()

    run(scenario)


def test_sigstop_buffers_client_messages_and_delivers_them_in_order(shell: str, own_redis: RedisProcess,
                                                                   prefix: str) -> None:
    async def scenario() -> None:
        async with client_a_in_group_g(shell, own_redis, prefix, redis_timeout=30) as (server, sub, a):
            own_redis.pause()
            try:
                for i in range(200):
                    await a.send(f"m{i}")
                await wait_for(lambda: server.core.stats.messages_in == 200, what="hub read all 200")
                assert "wshub_redis_buffered_commands 200" in server.core.metrics_text()
            finally:
                own_redis.resume()
            got = [await sub.next() for _ in range(200)]
            assert got == [(f"{prefix}client-data:a", f"m{i}".encode()) for i in range(200)]
            assert "wshub_redis_buffered_commands 0" in server.core.metrics_text()
            await within(await a.ping())  # never disconnected

    run(scenario)


def test_full_buffer_pauses_the_sender_instead_of_dropping(shell: str, own_redis: RedisProcess, prefix: str) -> None:
    """Above redis.maxBufferedBytes the hub stops reading the sender; TCP pushes back; nothing is lost."""
    async def scenario() -> None:
        async with client_a_in_group_g(shell, own_redis, prefix, redis_timeout=30,
                                       redis_maxBufferedBytes=4096) as (server, sub, a):
            payload = "x" * 1000
            own_redis.pause()
            try:
                sender = asyncio.ensure_future(_send_all(a, payload, 300))
                await wait_for(lambda: "wshub_clients_reading_paused 1" in server.core.metrics_text(),
                               what="sender paused")
                assert server.core.stats.messages_in < 300  # the hub stopped reading
            finally:
                own_redis.resume()
            await within(sender, 20)
            got = [await sub.next(10) for _ in range(300)]
            assert got == [(f"{prefix}client-data:a", f"{i}:{payload}".encode()) for i in range(300)]
            await wait_for(lambda: "wshub_clients_reading_paused 0" in server.core.metrics_text(),
                           what="sender resumed")

    run(scenario)


async def _send_all(ws: ClientConnection, payload: str, n: int) -> None:
    for i in range(n):
        await ws.send(f"{i}:{payload}")


def test_clients_that_connect_while_redis_is_down_are_served_when_it_returns(shell: str, own_redis: RedisProcess,
                                                                            prefix: str) -> None:
    async def scenario() -> None:
        async with running_hub(hub_config(own_redis.port, prefix), shell) as server:
            own_redis.kill()
            await wait_for(lambda: not server.core.ready, what="hub notices")
            ws = await websockets.connect(f"ws://127.0.0.1:{server.port}/ws?session_key=late")
            own_redis.extra = ("--requirepass", "gate")
            own_redis.start()
            gate = aredis.Redis(port=own_redis.port, password="gate")
            sub = Subscriber(gate)
            await sub.subscribe(f"{prefix}client-new")
            await gate.config_set("requirepass", "")
            # The hub reconnects, subscribes groups-new:late, and only then announces the client.
            assert await sub.next(10) == (f"{prefix}client-new", b"late")
            await gate.publish(f"{prefix}groups-new:late", '["g"]')
            await wait_confirmed(server, f"{prefix}group-data:g".encode(), what="group live")
            await gate.publish(f"{prefix}group-data:g", "welcome back")
            assert await within(ws.recv()) == "welcome back"
            await sub.close()
            await gate.aclose()

    run(scenario)


def test_shutdown_flushes_buffered_client_messages(shell: str, own_redis: RedisProcess, prefix: str) -> None:
    async def scenario() -> None:
        async with client_a_in_group_g(shell, own_redis, prefix, redis_timeout=30) as (server, sub, a):
            own_redis.pause()
            try:
                for i in range(20):
                    await a.send(f"last-words-{i}")
                await wait_for(lambda: server.core.stats.messages_in == 20, what="read")
                server.shutdown()
                await within(a.wait_closed())
                assert a.close_code == 1001
                assert not server.stopped.is_set()  # still flushing
            finally:
                own_redis.resume()
            await within(server.stopped.wait())
            got = [await sub.next() for _ in range(20)]
            assert got == [(f"{prefix}client-data:a", f"last-words-{i}".encode()) for i in range(20)]

    run(scenario)


def test_shutdown_gives_up_after_shutdown_timeout_when_redis_never_answers(shell: str, own_redis: RedisProcess,
                                                                          prefix: str) -> None:
    async def scenario() -> None:
        async with client_a_in_group_g(shell, own_redis, prefix, redis_timeout=30,
                                       shutdownTimeout=0.5) as (server, _, a):
            own_redis.pause()
            try:
                await a.send("stuck")
                await wait_for(lambda: server.core.stats.messages_in == 1, what="read")
                started = asyncio.get_running_loop().time()
                server.shutdown()
                await within(server.stopped.wait(), 5)
                assert 0.4 <= asyncio.get_running_loop().time() - started < 3
            finally:
                own_redis.resume()

    run(scenario)


def test_heavy_fanout_never_trips_redis_pubsub_output_buffer_limit(shell: str,
                                                                   own_redis: RedisProcess, prefix: str) -> None:
    """Redis kills a pub/sub reader whose output buffer passes the limit; the hub reads fast enough."""
    async def scenario() -> None:
        r = own_redis.client()
        await r.config_set("client-output-buffer-limit", "pubsub 512kb 256kb 5")
        sub = Subscriber(r)
        await sub.subscribe(f"{prefix}client-new")
        # Each client is sent 3 MB: the outbound bound above that keeps the slow-consumer policy (tested in
        # test_hostile_clients) out of a test of the Redis link. 20 Python clients in this process fall behind a
        # hub that runs in a thread of its own (trio) as they do behind one on another machine.
        config = hub_config(own_redis.port, prefix, webSocket_maxOutboundBuffer=4 * 1024 * 1024)
        async with running_hub(config, shell) as server:
            clients = [await join(server, r, sub, prefix, f"k{i}", ["hot"]) for i in range(20)]
            await sub.close()
            payload = "p" * 1024
            n = 3000  # 3 MB through the subscriber link, far over the 512 KiB limit if it lagged
            pipe = r.pipeline(transaction=False)
            for i in range(n):
                pipe.publish(f"{prefix}group-data:hot", f"{i}:{payload}")
            counts = [0] * len(clients)

            async def drain(j: int, ws: ClientConnection) -> None:
                for i in range(n):
                    assert await within(ws.recv(), 20) == f"{i}:{payload}"
                    counts[j] += 1

            drains = [asyncio.ensure_future(drain(j, ws)) for j, ws in enumerate(clients)]
            await pipe.execute()
            await within(asyncio.gather(*drains), 60)
            assert counts == [n] * len(clients)
            assert server.core.broker.reconnects == 0
        await r.aclose()

    run(scenario)


def test_sigstop_is_found_by_the_probe_and_the_hub_delivers_again_after_sigcont(shell: str, own_redis: RedisProcess,
                                                                                prefix: str) -> None:
    """A stopped Redis keeps its TCP connections: only the probe can tell, long before redis.timeout."""
    async def scenario() -> None:
        async with client_a_in_group_g(shell, own_redis, prefix, redis_timeout=60,
                                       redis_probeInterval=0.5) as (server, sub, a):
            r = own_redis.client()
            own_redis.pause()
            try:
                await wait_for(lambda: server.core.broker.stalls >= 1, timeout=10, what="the probe finds the stall")
                assert not server.core.ready
                status, body = await _get(server, b"/readyz")
                assert status == 503 and b"redis subscriber link" in body and b"stalled: the probe" in body, body
                _, metrics = await _get(server, b"/metrics")
                assert b"wshub_redis_stalls_total 1" in metrics
                assert b'wshub_redis_up{link="subscriber"} 0' in metrics
                await a.send("during the stall")
                await wait_for(lambda: server.core.stats.messages_in == 1, what="read")
                await within(await a.ping())  # the client never notices
            finally:
                own_redis.resume()
            await wait_for(lambda: server.core.ready, timeout=20, what="the hub back after SIGCONT")
            assert (await _get(server, b"/readyz"))[0] == 200
            assert await sub.next(10) == (f"{prefix}client-data:a", b"during the stall")
            await r.publish(f"{prefix}group-data:g", "after the stall")
            assert await within(a.recv(), 10) == "after the stall"
            await r.aclose()

    run(scenario)


async def _get(server: Server[Hub], path: bytes) -> tuple[int, bytes]:
    answer = await http_exchange(server.port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    return answer.status, answer.body
