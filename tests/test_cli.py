"""The command line as a user meets it: ``python -m wshub_asyncio`` and ``wshub_trio`` as real processes
(issue 8, items 5, 6, 12, 14)."""

from __future__ import annotations

import importlib.metadata
import json
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from helpers import TEST_API_KEY, closed_port, free_port, hub_env, self_signed, shell_module


def wshub(*args: str, cwd: Path, shell: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m wshub_<shell> ARGS``: both shells share the command line (``wshub_asyncio._cli``)."""
    return subprocess.run([sys.executable, "-m", shell_module(shell), *args], cwd=cwd, env=hub_env(**env),
                          capture_output=True, text=True, timeout=30)


def json_error(stderr: str) -> dict[str, str]:
    """The last stderr line, which must be a JSON log entry like the logger's."""
    lines = stderr.splitlines()
    entries = [json.loads(line) for line in lines]  # every line: a log shipper must not choke on any
    assert set(entries[-1]) == {"time", "level", "logger", "message"}, entries
    assert entries[-1]["level"] == "error"
    return entries[-1]  # type: ignore[no-any-return]


class TestUnreadableConfigFile:
    """Item 5: exit 2 and a message, never a traceback, never silently the defaults."""

    def test_a_file_that_is_not_utf8(self, shell: str, tmp_path: Path) -> None:
        path = tmp_path / "latin1.yaml"
        path.write_bytes("clientKey: caf\xe9\n".encode("latin-1"))
        result = wshub("--config", str(path), cwd=tmp_path, shell=shell)
        assert result.returncode == 2, result
        assert f"{path}: not UTF-8" in result.stderr and "Traceback" not in result.stderr, result.stderr

    def test_a_directory_given_as_config(self, shell: str, tmp_path: Path) -> None:
        result = wshub("--config", str(tmp_path), cwd=tmp_path, shell=shell)
        assert result.returncode == 2, result
        assert f"{tmp_path}: cannot read the config file: Is a directory" in result.stderr, result.stderr

    def test_a_directory_named_config_yaml_in_the_working_directory(self, shell: str, tmp_path: Path) -> None:
        (tmp_path / "config.yaml").mkdir()
        result = wshub("--check-config", cwd=tmp_path, shell=shell)
        assert result.returncode == 2, result
        assert "config.yaml: cannot read the config file: Is a directory" in result.stderr, result.stderr


class TestCheckConfig:
    """Item 6: a config that passes the check starts; the printout of a hidden secret says it is not usable."""

    def test_tls_files_that_cannot_be_loaded_fail_the_check(self, shell: str, tmp_path: Path) -> None:
        result = wshub("--check-config", cwd=tmp_path, shell=shell, WSHUB_TLS_CERT_FILE=str(tmp_path / "nope.pem"),
                       WSHUB_TLS_KEY_FILE=str(tmp_path / "nope.key"))
        assert result.returncode == 2, result
        assert "tls.certFile in environment variable WSHUB_TLS_CERT_FILE" in result.stderr, result.stderr
        assert "cannot load" in result.stderr

    def test_a_hidden_password_is_named_in_a_comment_on_top(self, shell: str, tmp_path: Path) -> None:
        result = wshub("--check-config", cwd=tmp_path, shell=shell, WSHUB_REDIS_ADDRESS="redis://:s3cret@h:1")
        assert result.returncode == 0, result
        first = result.stdout.splitlines()[0]
        assert first.startswith("# api.key, redis.address, redis.password: hidden as ***"), result.stdout
        assert "s3cret" not in result.stdout and TEST_API_KEY not in result.stdout
        assert yaml.safe_load(result.stdout)["redis"]["password"] == "***"
        plain = wshub("--check-config", cwd=tmp_path, shell=shell, WSHUB_API_KEY="")
        assert not plain.stdout.startswith("#"), plain.stdout  # nothing hidden: nothing to warn about

    def test_an_unknown_variable_fails_the_check_naming_it(self, shell: str, tmp_path: Path) -> None:
        result = wshub("--check-config", cwd=tmp_path, shell=shell, WSHUB_REDIS_ADRESS="h:1")
        assert result.returncode == 2, result
        assert "environment variable WSHUB_REDIS_ADRESS: unknown" in result.stderr, result.stderr


class TestSentinelConfig:
    """Issue 10: sentinel mode's keys through --check-config, as for every key; cluster is refused by name."""

    def test_sentinel_mode_from_the_environment(self, shell: str, tmp_path: Path) -> None:
        result = wshub("--check-config", cwd=tmp_path, shell=shell, WSHUB_REDIS_MODE="sentinel",
                       WSHUB_REDIS_ADDRESS="10.0.0.1:26379, 10.0.0.2", WSHUB_REDIS_MASTER_NAME="mymaster",
                       WSHUB_REDIS_SENTINEL_PASSWORD="s3ntinel", WSHUB_REDIS_PROBE_INTERVAL="2")
        assert result.returncode == 0, result
        redis = yaml.safe_load(result.stdout)["redis"]
        assert (redis["mode"], redis["masterName"], redis["probeInterval"]) == ("sentinel", "mymaster", 2.0)
        assert redis["sentinelPassword"] == "***" and "s3ntinel" not in result.stdout
        assert "redis.sentinelPassword" in result.stdout.splitlines()[0]

    def test_cluster_mode_takes_presence_but_refuses_a_database(self, shell: str, tmp_path: Path) -> None:
        (tmp_path / "config.yaml").write_text("redis:\n  mode: cluster\npresence:\n  enabled: true\n")
        result = wshub("--check-config", cwd=tmp_path, shell=shell)
        assert result.returncode == 0, result
        assert yaml.safe_load(result.stdout)["presence"]["enabled"] is True
        result = wshub("--check-config", cwd=tmp_path, shell=shell, WSHUB_REDIS_DB="2")
        assert result.returncode == 2, result
        assert "redis.db in environment variable WSHUB_REDIS_DB: must be 0 with redis.mode in config.yaml" \
            in result.stderr, result.stderr

    def test_sentinel_mode_without_a_master_name(self, shell: str, tmp_path: Path) -> None:
        result = wshub("--check-config", cwd=tmp_path, shell=shell, WSHUB_REDIS_MODE="sentinel")
        assert result.returncode == 2, result
        assert "redis.masterName (default '')" in result.stderr, result.stderr
        assert "environment variable WSHUB_REDIS_MODE" in result.stderr, result.stderr


class TestHelpAndVersion:
    """Item 14."""

    def test_help_lists_every_option_on_one_line_the_env_rule_and_the_docs(self, shell: str, tmp_path: Path) -> None:
        result = wshub("--help", cwd=tmp_path, shell=shell, COLUMNS="80")
        assert result.returncode == 0, result
        lines = result.stdout.splitlines()
        options = lines[lines.index("options:") + 1:]
        options = options[:options.index("")]
        names = [line.split()[0].rstrip(",") for line in options]
        assert names == ["-h", "--version", "--config", "--check-config", "--log-json", "--debug"], options
        assert all(len(line.split(maxsplit=2)) >= 2 and not line.startswith("   ") for line in options), options
        assert "WSHUB_<SECTION>_<KEY>" in result.stdout
        assert "docs/configuration.md" in result.stdout

    def test_version_is_the_package_version(self, shell: str, tmp_path: Path) -> None:
        result = wshub("--version", cwd=tmp_path, shell=shell)
        assert (result.returncode, result.stdout) == (0, f"wshub {importlib.metadata.version('wshub')}\n"), result


class TestStartUpErrorsAsJson:
    """Item 12: under --log-json or logFormat: json, what main() prints is one JSON line; exit codes as before."""

    def test_bad_config_with_log_json(self, shell: str, tmp_path: Path) -> None:
        result = wshub("--log-json", cwd=tmp_path, shell=shell, WSHUB_CLIENT_KEY="")
        assert result.returncode == 2, result
        entry = json_error(result.stderr)
        assert entry["message"].startswith("bad config: clientKey in environment variable WSHUB_CLIENT_KEY"), entry
        assert entry["logger"] == "wshub"

    def test_bad_config_with_log_format_json_in_the_file(self, shell: str, tmp_path: Path) -> None:
        (tmp_path / "config.yaml").write_text("logFormat: json\nwebSocket: 5\n", encoding="utf-8")
        result = wshub(cwd=tmp_path, shell=shell)
        assert result.returncode == 2, result
        assert "webSocket in config.yaml: must be a mapping" in json_error(result.stderr)["message"]

    def test_unreadable_file_with_log_format_json_in_the_environment(self, shell: str, tmp_path: Path) -> None:
        result = wshub("--config", str(tmp_path), cwd=tmp_path, shell=shell, WSHUB_LOG_FORMAT="json")
        assert result.returncode == 2, result
        assert "Is a directory" in json_error(result.stderr)["message"]

    def test_cannot_start_with_log_json(self, shell: str, tmp_path: Path) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            result = wshub("--log-json", cwd=tmp_path, shell=shell, WSHUB_ADDRESS=f"127.0.0.1:{port}",
                           WSHUB_REDIS_ADDRESS=f"127.0.0.1:{free_port()}")
        assert result.returncode == 1, result
        assert json_error(result.stderr)["message"].startswith("cannot start:"), result.stderr


def start_line(args: list[str], cwd: Path, env: dict[str, str], shell: str) -> str:
    """Start the hub, return its ``listening on`` line, stop it with SIGTERM (exit 0)."""
    return stderr_lines(args, cwd, env, shell)[0]


def stderr_lines(args: list[str], cwd: Path, env: dict[str, str], shell: str) -> tuple[str, list[str]]:
    """Start the hub, stop it with SIGTERM once it listens (exit 0): its start line, and every stderr line."""
    proc = subprocess.Popen([sys.executable, "-m", shell_module(shell), *args], cwd=cwd, env=hub_env(**env),
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if "listening on" in line:
                proc.send_signal(signal.SIGTERM)
                _, rest = proc.communicate(timeout=10)
                assert proc.returncode == 0
                return line, seen + rest.splitlines()
        raise AssertionError(f"the hub exited without a start line: {seen}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class TestStartLine:
    """Item 12: the start line says which config file was loaded (or none) and whether TLS is on."""

    def test_file_tls_and_an_ipv6_host_in_brackets(self, shell: str, tmp_path: Path) -> None:
        cert, key = self_signed(tmp_path)
        port = free_port()
        path = tmp_path / "hub.yaml"
        redis_port = free_port()
        path.write_text(yaml.safe_dump({"address": f"[::1]:{port}", "tls": {"certFile": str(cert), "keyFile": str(key)},
                                        "redis": {"address": f"127.0.0.1:{redis_port}"}}), encoding="utf-8")
        line = start_line(["--config", "hub.yaml"], tmp_path, {}, shell)
        assert f"listening on [::1]:{port}/ws (" in line, line
        assert line.rstrip().endswith(f" event loop), TLS on (wss://), redis broker at 127.0.0.1:{redis_port}, "
                                      f"config file {path}"), line

    def test_no_file_and_no_tls(self, shell: str, tmp_path: Path) -> None:
        port = free_port()
        line = start_line([], tmp_path, {"WSHUB_ADDRESS": f"127.0.0.1:{port}"}, shell)
        assert f"listening on 127.0.0.1:{port}/ws (" in line, line
        assert line.rstrip().endswith(" event loop), TLS off (ws://), memory broker (in this process), "
                                      "no config file"), line


class TestApiKey:
    """The API is never open without a key: one configured, or one generated at start and logged once."""

    def test_without_a_key_one_is_generated_and_logged_once_before_the_start_line(self, shell: str,
                                                                                  tmp_path: Path) -> None:
        _, lines = stderr_lines([], tmp_path, {"WSHUB_ADDRESS": f"127.0.0.1:{free_port()}", "WSHUB_API_KEY": ""},
                                shell)
        generated = [line for line in lines if "HTTP API key" in line]
        assert len(generated) == 1, lines
        assert lines.index(generated[0]) < next(i for i, line in enumerate(lines) if "listening on" in line)
        assert re.search(r"WARNING wshub: HTTP API key \(generated at start; set api.key or WSHUB_API_KEY to keep "
                         r"one\): [A-Za-z0-9_-]{24}$", generated[0].rstrip()), generated

    def test_a_configured_key_is_never_logged(self, shell: str, tmp_path: Path) -> None:
        line = start_line([], tmp_path, {"WSHUB_ADDRESS": f"127.0.0.1:{free_port()}",
                                         "WSHUB_API_KEY": "configured-secret"}, shell)
        assert "configured-secret" not in line
        checked = wshub("--check-config", cwd=tmp_path, shell=shell, WSHUB_API_KEY="configured-secret")
        assert "configured-secret" not in checked.stdout and "key: '***'" in checked.stdout, checked.stdout


class TestGarbageCollector:
    """The start tunes CPython's collector before the shell serves (and before workers fork)."""

    def test_the_thresholds_are_raised_and_the_start_is_frozen_when_serving_begins(self, tmp_path: Path) -> None:
        # The real command line with a ``serve`` that reports the collector's state instead of serving.
        # One write(2) per worker: print's two writes (text, newline) of two workers could interleave.
        probe = ("import gc, os, sys\n"
                 "from wshub_asyncio import _cli\n"
                 "def serve(config, **kw):\n"
                 "    os.write(1, f'{list(gc.get_threshold())} {gc.get_freeze_count() > 1000}\\n'.encode())\n"
                 "    return 0\n"
                 "sys.exit(_cli.main(sys.argv[1:], serve=serve))\n")
        for workers in ("1", "2"):
            done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                                  timeout=30, env=hub_env(WSHUB_ADDRESS=f"127.0.0.1:{free_port()}",
                                                          WSHUB_WORKERS=workers,  # (nothing dials it)
                                                          WSHUB_REDIS_ADDRESS=f"127.0.0.1:{closed_port()}"))
            assert done.returncode == 0, done.stderr
            lines = done.stdout.splitlines()
            assert lines == ["[50000, 20, 10] True"] * int(workers), (workers, done.stdout, done.stderr)
