"""Signed connection tokens and per-client limits (docs/protocol.md, Tokens; Limits), over real sockets.

Tokens are made with PyJWT, as a backend would; the hub runs in this process
(the memory broker, or a real redis-server where the listener's channels
matter) or as a process (where a key file is read at start).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import redis.asyncio as aredis
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from helpers import (
    TEST_API_KEY,
    HttpClient,
    RedisProcess,
    Subscriber,
    http_exchange,
    hub_config,
    hub_env,
    hub_process,
    raw_websocket,
    running_hub,
    upgrade_head,
    wait_groups,
    wait_key_confirmed,
    within,
    ws_frame,
    ws_url,
)

SECRET = "s3cret-for-tests-only-0123456789abcdef"
OLD_SECRET = "the-previous-secret-0123456789abcdef"


def token(claims: dict[str, Any], *, key: Any = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def claims(sub: str = "alice", **more: Any) -> dict[str, Any]:
    return {"sub": sub, "exp": int(time.time()) + 600, **more}


@contextlib.asynccontextmanager
async def token_hub(shell: str, redis_port: int, prefix: str, *, broker: str = "memory",
                    jwt_keys: dict[str, Any] | None = None, **overrides: Any) -> AsyncIterator[Any]:
    auth = {"jwt": jwt_keys or {"secret": SECRET, "previousSecret": OLD_SECRET, "audience": "hub"}}
    config = hub_config(redis_port, prefix, broker=broker, auth=auth, api=({"key": TEST_API_KEY}), **overrides)
    async with running_hub(config, shell) as server:
        yield server


async def publish(server: Any, group: str, body: bytes) -> None:
    client = await HttpClient.open(server.port)
    try:
        status, _, answer = await client.request("POST", f"/api/groups/{group}", body)
        assert status == 200, answer
    finally:
        await client.close()


def run(coro: Any) -> None:
    asyncio.run(coro)


@contextlib.asynccontextmanager
async def subscribed(r: aredis.Redis, *channels: str) -> AsyncIterator[Subscriber]:
    sub = Subscriber(r)
    await sub.subscribe(*channels)
    try:
        yield sub
    finally:
        await sub.close()


class TestTokensAdmit:
    def test_a_valid_token_connects_as_its_sub_with_its_groups_claim(self, shell: str, redis_server: RedisProcess,
                                                                     prefix: str) -> None:
        """``sub`` is the key (its client-data channel), ``groups`` are served at once: no listener runs."""

        async def scenario() -> None:
            async with token_hub(shell, redis_server.port, prefix, broker="redis") as server:
                r = redis_server.client()
                async with subscribed(r, f"{prefix}client-new", f"{prefix}client-data:alice") as sub:
                    t = token(claims(aud="hub", groups=["room1", "room2"]))
                    async with websockets.connect(ws_url(server.port, t), proxy=None) as ws:
                        announced = await sub.next()
                        assert announced == (f"{prefix}client-new", b"alice")  # still announced
                        await wait_groups(server, prefix, {"room1", "room2"})
                        assert await r.publish(f"{prefix}group-data:room2", b"hello") == 1
                        assert await within(ws.recv()) == "hello"
                        await ws.send("from alice")
                        assert await sub.next() == (f"{prefix}client-data:alice", b"from alice")
                await r.aclose()

        run(scenario())

    def test_a_listener_still_replaces_the_token_s_groups(self, shell: str, redis_server: RedisProcess,
                                                          prefix: str) -> None:
        async def scenario() -> None:
            async with token_hub(shell, redis_server.port, prefix, broker="redis") as server:
                r = redis_server.client()
                async with websockets.connect(ws_url(server.port, token(claims(aud="hub", groups=["a"]))),
                                              proxy=None) as ws:
                    await wait_groups(server, prefix, {"a"})
                    await wait_key_confirmed(server, prefix, "alice")
                    assert await r.publish(f"{prefix}groups-new:alice", b'["b"]') == 1
                    await wait_groups(server, prefix, {"b"})
                    await r.publish(f"{prefix}group-data:a", b"not for alice any more")
                    await r.publish(f"{prefix}group-data:b", b"for b")
                    assert await within(ws.recv()) == "for b"
                await r.aclose()

        run(scenario())

    def test_a_token_signed_with_the_previous_secret_passes(self, shell: str, prefix: str) -> None:
        """Rotation: clients holding tokens of the old secret keep connecting while new ones are issued."""

        async def scenario() -> None:
            async with token_hub(shell, 0, prefix) as server:
                for secret in (SECRET, OLD_SECRET):
                    t = token(claims(aud="hub", groups=["g"]), key=secret)
                    async with websockets.connect(ws_url(server.port, t), proxy=None) as ws:
                        await wait_groups(server, prefix, {"g"})
                        await publish(server, "g", b"rotated")
                        assert await within(ws.recv()) == "rotated"

        run(scenario())

    @pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
    def test_a_public_key_file_verifies_rs256_and_es256(self, shell: str, algorithm: str, tmp_path: Path) -> None:
        """``auth.jwt.publicKey`` names a PEM file the hub process reads at start."""
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048) if algorithm == "RS256" \
            else ec.generate_private_key(ec.SECP256R1())
        pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
        (tmp_path / "pub.pem").write_bytes(pem)

        async def scenario() -> None:
            async with hub_process(shell=shell, WSHUB_BROKER="memory",
                                   WSHUB_AUTH_JWT_PUBLIC_KEY=str(tmp_path / "pub.pem")) as hub:
                good = token(claims(groups=["g"]), key=private, algorithm=algorithm)
                async with websockets.connect(ws_url(hub.port, good), proxy=None) as ws:
                    await ws.ping()
                forged = token(claims(), key=SECRET)  # HS256 with a guessed secret: algorithm not allowed
                answer = await http_exchange(hub.port, upgrade_head(forged))
                assert answer.status == 401
                assert answer.body == f"algorithm not allowed (this hub takes {algorithm})\n".encode()

        run(scenario())


def _expired() -> dict[str, Any]:
    return claims(aud="hub", exp=int(time.time()) - 5)


REFUSALS: list[tuple[str, str | None, str]] = [
    ("expired", token(_expired()), "token expired"),
    ("not yet valid", token(claims(aud="hub", nbf=int(time.time()) + 600)), "token not valid yet (nbf)"),
    ("wrong signature", token(claims(aud="hub"), key="not-the-secret-0123456789abcdefgh"), "bad signature"),
    ("wrong audience", token(claims(aud="another-service")), "wrong audience"),
    ("no audience", token(claims()), "no aud claim"),
    ("no sub", token({"aud": "hub", "exp": int(time.time()) + 600}), "no sub claim"),
    ("malformed", "not.a.token", "malformed token"),
    ("unsigned", jwt.encode(claims(aud="hub"), None, algorithm="none"), "algorithm not allowed (this hub takes HS256)"),
    ("groups not an array", token(claims(aud="hub", groups="room1")), "groups must be an array of strings"),
    ("missing", None, "missing token: query parameter session_key"),
]


@pytest.mark.parametrize(("case", "value", "reason"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_a_bad_token_gets_401_with_its_reason_before_the_upgrade(shell: str, case: str, value: str | None, reason: str,
                                                                 prefix: str) -> None:
    async def scenario() -> None:
        async with token_hub(shell, 0, prefix) as server:
            answer = await http_exchange(server.port, upgrade_head(value))
            assert answer.status == 401, answer.raw
            assert answer.body == f"{reason}\n".encode()
            assert answer.headers["www-authenticate"].startswith('Bearer realm="wshub", error="invalid_token"')
            with pytest.raises(websockets.InvalidStatus) as refused:  # a real client sees the same
                await websockets.connect(ws_url(server.port, value), proxy=None)
            assert refused.value.response.status_code == 401
            assert server.core.client_count() == 0

    run(scenario())


def test_a_connection_is_closed_with_4001_when_its_token_expires(shell: str, prefix: str) -> None:
    """At ``exp`` (the hub's own clock), code 4001: the client reconnects with a fresh token."""

    async def scenario() -> None:
        async with token_hub(shell, 0, prefix) as server:
            short = token({"sub": "bob", "aud": "hub", "exp": time.time() + 1.0, "groups": ["g"]})
            long = token(claims("carol", aud="hub", groups=["g"]))
            async with websockets.connect(ws_url(server.port, short), proxy=None) as bob, \
                    websockets.connect(ws_url(server.port, long), proxy=None) as carol:
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await within(bob.recv(), 10)
                assert closed.value.rcvd is not None
                assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "token expired")
                await publish(server, "g", b"carol stays")
                assert await within(carol.recv()) == "carol stays"

    run(scenario())


class TestLimits:
    @pytest.mark.parametrize(("limit", "reason"), [
        ({"maxMessagesPerSecond": 20}, "message rate limit: 20 per second"),
        ({"maxBytesPerSecond": 65536}, "byte rate limit: 65536 per second"),
    ])
    def test_a_flooding_client_is_closed_with_1008_and_its_neighbour_is_not(
            self, limit: dict[str, int], reason: str, shell: str, redis_server: RedisProcess, prefix: str) -> None:
        """The flooding client goes on writing after the hub closed it: it reads the 1008 close frame and
        then the hub's EOF all the same, on both shells, because they close lingering (they read and discard
        until the client's EOF, so no unread byte of its makes the kernel reset the connection)."""
        async def scenario() -> None:
            config_limits = {"webSocket": limit}
            async with token_hub(shell, redis_server.port, prefix, broker="redis", **config_limits) as server:
                r = redis_server.client()
                async with subscribed(r, f"{prefix}client-data:calm") as calm_data, \
                        websockets.connect(ws_url(server.port, token(claims("calm", aud="hub", groups=["g"]))),
                                           proxy=None) as calm:
                    flood = await raw_websocket(server.port, token(claims("flood", aud="hub", groups=["g"])))
                    assert flood.status_line == b"HTTP/1.1 101 Switching Protocols"
                    await wait_groups(server, prefix, {"g"})
                    # 4 MB in one burst: over either limit (a client message is masked; one mask will do)
                    close, eof = await flood.flood_until_close(ws_frame(0x1, b"x" * 4096), times=1000)
                    assert (close.close_code, close.payload[2:].decode()) == (1008, reason)
                    assert eof, "a reset after the close frame, not the hub's EOF"
                    await flood.aclose()
                    await calm.send("still here")
                    assert await calm_data.next() == (f"{prefix}client-data:calm", b"still here")
                    assert await r.publish(f"{prefix}group-data:g", b"to calm") == 1
                    assert await within(calm.recv()) == "to calm"
                    metrics = server.core.metrics_text()
                    assert "wshub_rate_limited_total 1\n" in metrics
                await r.aclose()

        run(scenario())


def test_a_bad_public_key_file_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    import subprocess
    import sys

    (tmp_path / "not-a-key.pem").write_text("-----BEGIN NONSENSE-----\nAAAA\n-----END NONSENSE-----\n")
    for value, says in ((str(tmp_path / "missing.pem"), "cannot read"), (str(tmp_path / "not-a-key.pem"),
                                                                         "not a PEM public key")):
        proc = subprocess.run([sys.executable, "-m", "wshub_asyncio", "--check-config"], cwd=tmp_path,
                              env=hub_env(WSHUB_AUTH_JWT_PUBLIC_KEY=value), capture_output=True, text=True,
                              timeout=30)
        assert proc.returncode == 2, proc.stderr
        assert "auth.jwt.publicKey in environment variable WSHUB_AUTH_JWT_PUBLIC_KEY" in proc.stderr
        assert says in proc.stderr
