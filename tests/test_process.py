"""The hub as a real process on each shell: ``python -m wshub_<shell> --config FILE``, signals, exit status,
config errors."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import websockets
import yaml

from helpers import RedisProcess, Subscriber, free_port, hub_env, shell_module, wait_until, within, ws_url


def clean_env() -> dict[str, str]:
    """The test's environment without WSHUB_* overrides, so only the config file counts."""
    return hub_env()


def write_config(tmp_path: Path, tree: dict[str, object]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return path


def run_cli(*args: str, cwd: Path, shell: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", shell_module(shell), *args], cwd=cwd, env=clean_env(),
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_closes_every_client_with_1001_and_exits_0(shell: str, redis_server: RedisProcess, prefix: str,
                                                          tmp_path: Path, sig: signal.Signals) -> None:
    port = free_port()
    config = write_config(tmp_path, {"address": f"127.0.0.1:{port}",
                                     "redis": {"address": f"127.0.0.1:{redis_server.port}", "channelPrefix": prefix}})

    async def scenario() -> None:
        r = redis_server.client()
        sub = Subscriber(r)
        await sub.subscribe(f"{prefix}client-new", f"{prefix}client-gone", f"{prefix}client-data:a")
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", shell_module(shell), "--config", str(config),
                                                    cwd=tmp_path, env=clean_env(), stderr=asyncio.subprocess.PIPE)
        log: list[str] = []
        assert proc.stderr is not None
        stderr = proc.stderr

        async def read_log_until(text: str) -> None:
            while not any(text in line for line in log):
                line = await stderr.readline()
                assert line, f"the hub exited early: {log}"
                log.append(line.decode())

        async def read_log_to_the_end() -> None:  # keeps the pipe from filling up
            while line := await stderr.readline():
                log.append(line.decode())

        try:
            await within(read_log_until(f"listening on 127.0.0.1:{port}/ws"), 15)
            drain = asyncio.ensure_future(read_log_to_the_end())
            a = await websockets.connect(ws_url(port, "a"), proxy=None)
            b = await websockets.connect(ws_url(port, "b"), proxy=None)
            assert {(await sub.next())[1], (await sub.next())[1]} == {b"a", b"b"}  # both announced
            await r.publish(f"{prefix}groups-new:a", "g")

            async def group_live() -> bool:
                return bool(await r.publish(f"{prefix}group-data:g", "before the signal"))

            await wait_until(group_live, what="a in g")
            assert await within(a.recv()) == "before the signal"
            await a.send("last words")
            assert await sub.next() == (f"{prefix}client-data:a", b"last words")

            proc.send_signal(sig)
            for ws in (a, b):
                await within(ws.wait_closed())
                assert ws.close_code == 1001
                assert ws.close_reason == "server shutting down"
            # Every connection closed: client-gone for each key was flushed before the exit.
            assert {(await sub.next())[1], (await sub.next())[1]} == {b"a", b"b"}
            assert await within(proc.wait(), 10) == 0, log
            await within(drain)
            assert any("shutdown complete" in line for line in log), log
            with pytest.raises(OSError):  # nothing listens any more
                await websockets.connect(ws_url(port, "late"), proxy=None, open_timeout=2)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await sub.close()
            await r.aclose()

    asyncio.run(scenario())


def test_shutdown_without_clients_exits_0_at_once(shell: str,
                                                  redis_server: RedisProcess, prefix: str, tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, {"address": f"127.0.0.1:{port}", "shutdownTimeout": 30,
                                     "redis": {"address": f"127.0.0.1:{redis_server.port}", "channelPrefix": prefix}})
    proc = subprocess.Popen([sys.executable, "-m", shell_module(shell), "--config", str(config)], cwd=tmp_path,
                            env=clean_env(), stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "listening on" in line:
                break
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0  # not after shutdownTimeout (30 s): nothing to wait for
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(("tree", "key"), [
    ({"webSocket": {"pongWait": -1}}, "webSocket.pongWait"),
    ({"webSocket": {"maxMessageSize": "big"}}, "webSocket.maxMessageSize"),
    ({"redis": {"address": "127.0.0.1:notaport"}}, "redis.address"),
    ({"serverUrl": "ws"}, "serverUrl"),
    ({"webSocket": {"pongwait": 5}}, "webSocket.pongwait"),  # unknown key (wrong case)
], ids=["negative pongWait", "not a number", "bad redis port", "serverUrl without slash", "unknown key"])
def test_bad_config_exits_2_naming_the_key_and_the_file(shell: str,
                                                        tmp_path: Path, tree: dict[str, object], key: str) -> None:
    path = write_config(tmp_path, {"address": f"127.0.0.1:{free_port()}", **tree})
    result = run_cli("--config", str(path), cwd=tmp_path, shell=shell)
    assert result.returncode == 2, result
    assert key in result.stderr and str(path) in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_unreadable_config_exits_2(shell: str, tmp_path: Path) -> None:
    result = run_cli("--config", str(tmp_path / "missing.yaml"), cwd=tmp_path, shell=shell)
    assert result.returncode == 2 and "missing.yaml" in result.stderr, result
    broken = tmp_path / "broken.yaml"
    broken.write_text("webSocket: [unclosed\n", encoding="utf-8")
    result = run_cli("--config", str(broken), cwd=tmp_path, shell=shell)
    assert result.returncode == 2 and "broken.yaml" in result.stderr and "YAML" in result.stderr, result
    assert "Traceback" not in result.stderr


def test_check_config_prints_the_effective_config(shell: str, tmp_path: Path) -> None:
    port = free_port()
    path = write_config(tmp_path, {"address": f"127.0.0.1:{port}", "clientKey": "sid",
                                   "webSocket": {"pongWait": 7, "maxMessageSize": 4096}})
    result = run_cli("--config", str(path), "--check-config", cwd=tmp_path, shell=shell)
    assert result.returncode == 0, result
    effective = yaml.safe_load(result.stdout)
    assert effective["address"] == f"127.0.0.1:{port}"
    assert effective["clientKey"] == "sid"
    assert effective["webSocket"]["pongWait"] == 7
    assert effective["webSocket"]["maxMessageSize"] == 4096
    # Keys the file does not set show their defaults.
    assert effective["serverUrl"] == "/ws"
    assert effective["redis"]["channelPrefix"] == "ws-hub:"
    assert effective["webSocket"]["writeWait"] == 10
