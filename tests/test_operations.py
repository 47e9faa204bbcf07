"""Operations: probes, metrics, environment overrides, TLS, logs, the console command."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import websockets
import yaml

from helpers import (
    RedisProcess,
    free_port,
    hub_config,
    hub_env,
    running_hub,
    self_signed,
    shell_module,
    wait_confirmed,
    wait_for,
    within,
)
from wshub_asyncio import Server
from wshub_core import KEYS, Hub, env_name, load_config


async def http_get(port: int, path: str, *, tls: ssl.SSLContext | None = None) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls,
                                                   server_hostname="localhost" if tls else None)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    raw = await within(reader.read())
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def parse_metrics(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_readyz_follows_redis_and_healthz_does_not(shell: str, own_redis: RedisProcess, prefix: str) -> None:
    async def scenario() -> None:
        async with running_hub(hub_config(own_redis.port, prefix), shell) as server:
            assert await http_get(server.port, "/readyz") == (200, "ready\n")
            own_redis.kill()
            await wait_for(lambda: not server.core.ready, what="hub saw Redis go")
            status, body = await http_get(server.port, "/readyz")
            assert status == 503 and "redis" in body
            assert await http_get(server.port, "/healthz") == (200, "ok\n")  # the process is alive
            own_redis.start()
            await wait_for(lambda: server.core.ready, timeout=10, what="hub back")
            assert await http_get(server.port, "/readyz") == (200, "ready\n")

    asyncio.run(scenario())


def test_metrics_count_what_happened(shell: str, redis_server: RedisProcess, prefix: str) -> None:
    async def scenario() -> None:
        r = redis_server.client()
        async with running_hub(hub_config(redis_server.port, prefix, webSocket_maxMessageSize=100), shell) as server:
            url = f"ws://127.0.0.1:{server.port}/ws?session_key="
            a, b = await websockets.connect(url + "a"), await websockets.connect(url + "b")
            for key in ("a", "b"):
                await wait_confirmed(server, f"{prefix}groups-new:{key}".encode(), what="subscribed")
                await r.publish(f"{prefix}groups-new:{key}", '["g"]')
            await wait_confirmed(server, f"{prefix}group-data:g".encode(), what="group live")
            await r.publish(f"{prefix}group-data:g", "hello")
            assert await within(a.recv()) == await within(b.recv()) == "hello"
            await a.send("up")
            await b.send("x" * 200)  # over the limit: closed with 1009
            await within(b.wait_closed())
            await wait_for(lambda: server.core.client_count() == 1, what="b gone")
            status, text = await http_get(server.port, "/metrics")
            assert status == 200
            m = parse_metrics(text)
            assert m["wshub_connections_open"] == 1
            assert m["wshub_connects_total"] == 2
            assert m['wshub_disconnects_total{code="1009"}'] == 1
            assert m["wshub_oversize_closes_total"] == 1
            assert m["wshub_messages_out_total"] == 2
            assert m["wshub_group_messages_total"] == 1
            assert m["wshub_messages_in_total"] == 1
            assert m['wshub_redis_up{link="subscriber"}'] == 1
            assert m["wshub_groups"] == 1
            assert m["wshub_bytes_out_total"] > 0
            await a.close()
        await r.aclose()

    asyncio.run(scenario())


def _non_default(key: Any) -> str:
    """A valid value different from the key's default, as an environment string."""
    special = {"address": "127.0.0.1:9999", "redis.address": "redis://10.0.0.1:7000/2", "logFormat": "json",
               "logLevel": "warning", "serverUrl": "/socket", "tls.certFile": "/c.pem", "tls.keyFile": "/k.pem",
               "webSocket.allowedOrigins": "https://a.example,https://b.example", "broker": "redis",
               "auth.jwt.secret": "x" * 32, "auth.jwt.previousSecret": "y" * 32,
               "webSocket.maxBytesPerSecond": "1000000", "redis.pubsub": "classic"}
    if key.path in special:
        return special[key.path]
    if key.kind == "bool":
        return "false" if key.default else "true"
    if key.kind == "str":
        return "changed"
    if key.kind in ("int", "bytes"):
        return str(int(key.default) + 7)
    return str(float(key.default) + 2.5)


@pytest.mark.parametrize("key", KEYS, ids=[k.path for k in KEYS])
def test_every_key_can_be_overridden_from_the_environment(key: Any) -> None:
    environ = {env_name(key.path): _non_default(key)}
    if key.path == "workers":
        environ[env_name("broker")] = "redis"  # more than one worker share a Redis, never a memory broker
    if key.path == "auth.jwt.previousSecret":
        environ[env_name("auth.jwt.secret")] = "x" * 32  # the previous secret only adds to a current one
    if key.path.startswith("tls."):
        environ = {env_name("tls.certFile"): "/c.pem", env_name("tls.keyFile"): "/k.pem"}
    if key.path == "redis.mode":  # sentinel mode names the master and takes the sentinels' addresses
        environ = {env_name("redis.mode"): "sentinel", env_name("redis.masterName"): "mymaster",
                   env_name("redis.address"): "s1:26379,s2:26379"}
    base = load_config("")
    changed = load_config("", environ=environ)
    assert getattr(changed, key.attr) != getattr(base, key.attr), env_name(key.path)


def test_environment_wins_over_the_file_and_errors_name_the_variable(tmp_path: Path) -> None:
    text = "webSocket:\n  pongWait: 30\n"
    assert load_config(text, environ={"WSHUB_WEBSOCKET_PONG_WAIT": "5"}).pong_wait == 5
    with pytest.raises(ValueError, match="WSHUB_WEBSOCKET_PONG_WAIT"):
        load_config(text, environ={"WSHUB_WEBSOCKET_PONG_WAIT": "soon"})


def _console_script() -> str:
    script = Path(sys.executable).parent / "wshub"
    assert script.exists(), "pip install should provide the wshub command"
    return str(script)


def test_wshub_command_check_config_shows_env_overrides(tmp_path: Path) -> None:
    env = hub_env(WSHUB_REDIS_ADDRESS="redis://:pw-4711@127.0.0.1:7001/3", WSHUB_WEBSOCKET_PONG_WAIT="7")
    out = subprocess.run([_console_script(), "--check-config"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=30, check=True).stdout
    effective = yaml.safe_load(out)
    assert effective["webSocket"]["pongWait"] == 7
    assert effective["redis"]["address"] == "redis://***@127.0.0.1:7001/3"
    assert effective["redis"]["password"] == "***"
    assert "pw-4711" not in out  # never printed


def test_json_logs_one_object_per_line(shell: str, redis_server: RedisProcess, prefix: str, tmp_path: Path) -> None:
    port = free_port()
    env = hub_env(WSHUB_ADDRESS=f"127.0.0.1:{port}", WSHUB_REDIS_ADDRESS=f"127.0.0.1:{redis_server.port}",
               WSHUB_REDIS_CHANNEL_PREFIX=prefix)
    proc = subprocess.Popen([sys.executable, "-m", shell_module(shell), "--log-json"], cwd=tmp_path, env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:
            lines.append(json.loads(line))
            if "link up" in lines[-1]["message"] and sum("link up" in x["message"] for x in lines) == 2:
                break
        assert all({"time", "level", "logger", "message"} <= set(x) for x in lines)
        assert any(x["message"].startswith("listening on") for x in lines)
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()


def test_wss_with_certificate_from_config(shell: str, redis_server: RedisProcess, prefix: str, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    client_tls = ssl.create_default_context(cafile=str(cert))

    async def scenario() -> None:
        config = hub_config(redis_server.port, prefix, tls={"certFile": str(cert), "keyFile": str(key)})
        async with running_hub(config, shell) as server:
            ws = await websockets.connect(f"wss://localhost:{server.port}/ws?session_key=tls", ssl=client_tls)
            await within(await ws.ping())
            await ws.close()
            assert await http_get(server.port, "/healthz", tls=client_tls) == (200, "ok\n")

    asyncio.run(scenario())


def test_unreadable_tls_key_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    config = load_config(yaml.safe_dump({"address": "127.0.0.1:0",
                                         "tls": {"certFile": str(tmp_path / "nope.pem"), "keyFile": "x"}}))

    async def scenario() -> None:
        with pytest.raises(ValueError, match=r"tls\.certFile"):
            await Server(Hub(config=config), config=config).start()

    asyncio.run(scenario())


def test_bare_port_and_exponent_numbers_are_read_as_a_user_means_them() -> None:
    config = load_config("address: 8081\n")
    assert (config.host, config.port) == ("", 8081)
    assert load_config("", environ={"WSHUB_REDIS_MAX_BUFFERED_BYTES": "1e6"}).max_buffered_bytes == 1_000_000
    with pytest.raises(ValueError, match="WSHUB_WEBSOCKET_MAX_CONNECTIONS"):
        load_config("", environ={"WSHUB_WEBSOCKET_MAX_CONNECTIONS": "1.5"})


def test_debug_logs_each_message_only_when_asked(shell: str, redis_server: RedisProcess, prefix: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with running_hub(hub_config(redis_server.port, prefix), shell) as server:
            ws = await websockets.connect(f"ws://127.0.0.1:{server.port}/ws?session_key=dbg")
            await ws.send("hi")
            await wait_for(lambda: server.core.stats.messages_in == 1, what="message read")
            await ws.close()

    with caplog.at_level(logging.INFO, logger="wshub"):
        asyncio.run(scenario())
    assert not any("sent 2 bytes" in r.message for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="wshub"):
        asyncio.run(scenario())
    assert any(r.message == "client 1 (dbg) sent 2 bytes" for r in caplog.records)
