"""The docs stay true to the code: every key, env var, close code and metric is documented.

Most of these tests read the code's own tables (``KEYS``, ``CloseCode``, ``Hub.metrics_text``)
and the Markdown files and start nothing; the README's "Try it" steps are run for real, against
a redis-server and a hub process of the test's own (at the end of this file).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_http_answers import example_page, needs_chromium

from helpers import RedisProcess, Subscriber, free_port, wait_until, within
from wshub_core import KEYS, CloseCode, Hub, env_name, load_config

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION = ROOT / "docs" / "configuration.md"
PROTOCOL = ROOT / "docs" / "protocol.md"
OPERATIONS = ROOT / "docs" / "operations.md"


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def leaf_paths(tree: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the leaves of a YAML mapping (``webSocket.pongWait``)."""
    if not isinstance(tree, dict):
        return [prefix.rstrip(".")]
    out: list[str] = []
    for name, value in tree.items():
        out += leaf_paths(value, f"{prefix}{name}.")
    return out


class TestConfigurationDoc:
    @pytest.mark.parametrize("key", KEYS, ids=lambda k: k.path)
    def test_every_key_is_documented_with_its_env_name(self, key: Any) -> None:
        text = read(CONFIGURATION)
        assert f"`{key.path}`" in text, f"{key.path} is missing from docs/configuration.md"
        assert f"`{env_name(key.path)}`" in text, f"{env_name(key.path)} is missing from docs/configuration.md"

    def test_every_env_name_mentioned_anywhere_is_real(self) -> None:
        real = {env_name(k.path) for k in KEYS}
        files = [CONFIGURATION, PROTOCOL, OPERATIONS, ROOT / "README.md", ROOT / "Dockerfile",
                 ROOT / "docker-compose.yml", ROOT / "config.yaml"]
        for path in files:
            if not path.exists():
                continue
            for name in re.findall(r"\bWSHUB_[A-Z0-9_]*[A-Z0-9]\b", read(path)):
                assert name in real, f"{path.name} mentions {name}, which is not a config key's variable"

    def test_the_full_example_is_every_key_with_its_default(self) -> None:
        blocks = re.findall(r"```yaml\n(.*?)```", read(CONFIGURATION), flags=re.S)
        full = [b for b in blocks if all(k.path.rsplit(".", 1)[-1] + ":" in b for k in KEYS)]
        assert full, "docs/configuration.md has no YAML block listing every key"
        example = full[-1]
        assert sorted(leaf_paths(yaml.safe_load(example))) == sorted(k.path for k in KEYS)
        assert load_config(example, source="docs") == load_config(None, source="defaults")


class TestConfigYaml:
    def test_every_key_in_config_yaml_is_a_real_key(self) -> None:
        known = {k.path for k in KEYS}
        tree = yaml.safe_load(read(ROOT / "config.yaml"))
        for path in leaf_paths(tree):
            assert path in known, f"config.yaml sets {path}, which is not in KEYS"

    def test_config_yaml_loads(self) -> None:
        config = load_config(read(ROOT / "config.yaml"), source="config.yaml", environ={})
        assert config.broker == "memory"  # the Quick start runs with nothing else installed


class TestProtocolDoc:
    @pytest.mark.parametrize("code", list(CloseCode), ids=lambda c: f"{c.value}-{c.name}")
    def test_every_close_code_is_documented(self, code: CloseCode) -> None:
        text = read(PROTOCOL)
        assert re.search(rf"^\| {code.value} \| `{code.name}` \|", text, flags=re.M), (
            f"close code {code.value} ({code.name}) has no row in docs/protocol.md's close-code table"
        )

    def test_every_http_status_the_hub_answers_is_documented(self) -> None:
        router_source = read(ROOT / "wshub_core" / "_http.py")
        statuses = set(re.findall(r"\bAnswer\(status=(\d{3})\b", router_source))
        assert statuses, "found no HTTP answer in wshub_core/_http.py: update this test"
        # Statuses h11 hints at for a bad request head (_client.py's _HEADER_STATUS).
        header_table = re.findall(r"^_HEADER_STATUS = .*$", read(ROOT / "wshub_core" / "_client.py"), flags=re.M)
        statuses |= set(re.findall(r"\b(\d{3}):", "".join(header_table)))
        text = read(PROTOCOL)
        for status in sorted(statuses):
            assert re.search(rf"\| {status}\b", text), f"HTTP {status} is missing from docs/protocol.md"

    @pytest.mark.parametrize("channel", ["client-new", "groups-new:KEY", "group-data:GROUP", "client-data:KEY",
                                         "client-gone"])
    def test_every_channel_is_documented(self, channel: str) -> None:
        assert f"`ws-hub:{channel}`" in read(PROTOCOL)


class TestOperationsDoc:
    @staticmethod
    def metric_names() -> set[str]:
        """Every metric either broker's hub exposes (with presence on: it adds one)."""
        return {name for broker in ("memory", "redis")
                for name in re.findall(r"^# TYPE (\S+) ", Hub(config=load_config(
                    f"broker: {broker}\npresence:\n  enabled: true\n")).metrics_text(), flags=re.M)}

    def test_every_metric_is_documented(self) -> None:
        names = self.metric_names()
        assert names, "Hub.metrics_text() exposes no metric"
        text = read(OPERATIONS)
        for name in names:
            assert re.search(rf"`{name}[`{{]", text), f"metric {name} is missing from docs/operations.md"

    def test_no_documented_metric_is_gone(self) -> None:
        names = self.metric_names()
        for name in re.findall(r"^\| `(wshub_[a-z_]+)", read(OPERATIONS), flags=re.M):
            assert name in names, f"docs/operations.md lists {name}, which Hub.metrics_text() does not expose"


# -- README "Try it with redis-cli": the steps, run as written ----------------------------------------------------
#
# Unlike the tests above, these start processes: a redis-server of their own (not the one on 6379) and the
# hub by the Quick start's own command, on a free port. The commands are the README's, with three
# substitutions a test needs: `redis-cli` talks to the test's Redis, the prefix `ws-hub:` becomes the
# test's own, and `127.0.0.1:8080` the hub's port. Each runs through a shell, as a user would paste it.


def readme_section(title: str) -> str:
    text = read(ROOT / "README.md")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def sh_blocks(section: str, *, comments: bool = False) -> list[list[str]]:
    """The ```sh blocks of a README section, each as its lines (comment lines dropped unless ``comments``)."""
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    return [[line for line in block.splitlines() if line.strip() and (comments or not line.lstrip().startswith("#"))]
            for block in blocks]


def quick_start_hub_command() -> str:
    """The part of the Quick start's first command that runs the hub (after the install)."""
    first = sh_blocks(readme_section("Quick start"))[0]
    assert len(first) == 1, first
    command = first[0].split("&&")[-1].strip()
    assert "-m wshub_asyncio" in command, command
    return command


def try_it_steps() -> list[list[str]]:
    steps = sh_blocks(readme_section("Try it with redis-cli"))
    assert len(steps) == 4, steps
    return steps


def python_module_of(command: str) -> tuple[str, list[str]]:
    """``.venv/bin/python -m MODULE ARGS`` -> (MODULE, ARGS)."""
    words = shlex.split(command)
    assert words[0].endswith("/python") and words[1] == "-m", command
    return words[2], words[3:]


def base_distributions() -> set[str]:
    """The distributions ``pip install -e .`` installs: wshub and its dependencies, without any extra."""
    seen: set[str] = set()
    todo = ["wshub"]
    while todo:
        name = todo.pop()
        canonical = re.sub(r"[-_.]+", "-", name).lower()
        if canonical in seen:
            continue
        seen.add(canonical)
        for requirement in importlib.metadata.requires(name) or []:
            if "extra ==" in requirement.replace("extra==", "extra =="):
                continue
            todo.append(re.match(r"[A-Za-z0-9._-]+", requirement).group())  # type: ignore[union-attr]
    return seen


def test_the_try_it_client_needs_only_what_the_quick_start_installs() -> None:
    """Step 2 must work after the Quick start's first command (``pip install -e .``) alone."""
    module, _ = python_module_of(try_it_steps()[1][0])
    probe = (
        "import importlib, importlib.metadata, json, sys\n"
        "before = set(sys.modules)\n"  # what site startup loaded (e.g. setuptools' .pth hook) does not count
        f"importlib.import_module({module!r})\n"
        "owners = importlib.metadata.packages_distributions()\n"
        "tops = {m.partition('.')[0] for m in set(sys.modules) - before} - set(sys.stdlib_module_names)\n"
        "print(json.dumps(sorted({d for t in tops for d in owners.get(t, [])})))\n"
    )
    loaded = json.loads(subprocess.run([sys.executable, "-c", probe], cwd=ROOT, check=True, capture_output=True,
                                       text=True, timeout=30).stdout)
    needed = {re.sub(r"[-_.]+", "-", d).lower() for d in loaded}
    assert needed <= base_distributions(), (
        f"step 2 of README 'Try it' ({module}) loads {sorted(needed - base_distributions())}, "
        "which the Quick start's first command does not install"
    )


class _Lines:
    """The output of a process, line by line, read as the test needs it."""

    def __init__(self, stream: asyncio.StreamReader, name: str) -> None:
        self.stream = stream
        self.name = name
        self.seen: list[str] = []

    async def until(self, wanted: str, timeout: float = 10.0, *, partial: bool = False) -> None:
        async def read() -> None:
            while True:
                line = await self.stream.readline()
                assert line, f"{self.name} ended without printing {wanted!r}; it printed {self.seen}"
                self.seen.append(line.decode().rstrip("\r\n"))
                if self.seen[-1] == wanted or (partial and wanted in self.seen[-1]):
                    return

        await within(read(), timeout)

    async def until_contains(self, wanted: str, timeout: float = 15.0) -> None:
        await self.until(wanted, timeout, partial=True)


def test_the_try_it_steps_work_as_written(own_redis: RedisProcess, tmp_path: Path) -> None:
    prefix = "readme-try-it:"
    hub_port = free_port()
    steps = try_it_steps()

    def adapt(command: str) -> str:
        command = command.replace("redis-cli ", f"redis-cli -p {own_redis.port} ")
        command = command.replace("ws-hub:", prefix).replace("127.0.0.1:8080", f"127.0.0.1:{hub_port}")
        return command.replace(".venv/bin/python", shlex.quote(sys.executable))

    env = {k: v for k, v in os.environ.items() if not k.startswith("WSHUB_")}
    env.update(WSHUB_ADDRESS=f"127.0.0.1:{hub_port}", WSHUB_REDIS_ADDRESS=f"127.0.0.1:{own_redis.port}",
               WSHUB_REDIS_CHANNEL_PREFIX=prefix)
    procs: list[asyncio.subprocess.Process] = []

    async def start(command: str, **kwargs: Any) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_shell(
            "exec " + command, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, **kwargs)
        procs.append(proc)
        return proc

    async def run(command: str) -> str:
        proc = await start(command)
        out, _ = await within(proc.communicate(), 10)
        assert proc.returncode == 0, (command, out)
        return out.decode().strip()

    def expected_output(line: str, terminal: int) -> str:
        """What a step's comment says a terminal prints: ``terminal 2 prints: < hello``."""
        found = re.search(rf'terminal {terminal} prints:? "?(.*?)"?\.?$', line)
        assert found, (terminal, line)
        return found.group(1)

    async def scenario() -> None:
        try:
            await steps_as_written()
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()

    async def steps_as_written() -> None:
        r = own_redis.client()
        gone = Subscriber(r)
        await gone.subscribe(f"{prefix}client-gone")
        hub = await start(quick_start_hub_command(), stderr=asyncio.subprocess.PIPE)
        assert hub.stderr is not None
        await _Lines(hub.stderr, "the hub").until_contains(f"listening on 127.0.0.1:{hub_port}/ws")
        drain = asyncio.ensure_future(hub.stderr.read())  # keeps the log pipe from filling up

        # 1. redis-cli SUBSCRIBE client-new; without a terminal it prints the raw reply, one field a line.
        (step1,) = steps[0]
        listener = await start(adapt(step1))
        assert listener.stdout is not None
        terminal1 = _Lines(listener.stdout, "terminal 1")
        await terminal1.until("1")  # subscribe <channel> 1: subscribed

        # 2. the client; terminal 1 prints the key.
        (step2,) = steps[1]
        client = await start(adapt(step2), stdin=asyncio.subprocess.PIPE)
        assert client.stdout is not None and client.stdin is not None
        terminal2 = _Lines(client.stdout, "terminal 2")
        step2_comment = sh_blocks(readme_section("Try it with redis-cli"), comments=True)[1][0]
        await terminal1.until(expected_output(step2_comment, 1))

        # 3. the groups answer, then group data. A person is slower than the hub's SUBSCRIBE to the
        # group; the test waits for that SUBSCRIBE instead.
        answer, publish, kept = steps[2]
        await run(adapt(answer))

        async def subscribed() -> bool:
            return dict(await r.pubsub_numsub(f"{prefix}group-data:news")).get(
                f"{prefix}group-data:news".encode(), 0) == 1

        await wait_until(subscribed, what="the hub subscribed to group-data:news")
        command, _, comment = publish.partition("#")
        assert await run(adapt(command)) == "1"
        await terminal2.until(expected_output(comment.strip(), 2))
        command, _, comment = kept.partition("#")  # through wshub_publish: it prints the offset
        assert re.fullmatch(r"\d+-\d+", await run(adapt(command))), command
        await terminal2.until(expected_output(comment.strip(), 2))

        # 4. what alice types shows up in a SUBSCRIBE to client-data:alice.
        (step4,) = steps[3]
        watcher = await start(adapt(step4))
        assert watcher.stdout is not None
        terminal4 = _Lines(watcher.stdout, "terminal 4")
        await terminal4.until("1")
        client.stdin.write(b"hi from alice\n")
        await terminal4.until("hi from alice")

        # Ctrl-D closes the client; the hub announces alice on client-gone.
        client.stdin.close()
        assert await within(client.wait(), 10) == 0
        assert await gone.next() == (f"{prefix}client-gone", b"alice")
        await gone.close()
        await r.aclose()
        hub.terminate()
        assert await within(hub.wait(), 15) == 0
        await drain

    asyncio.run(scenario())


# -- README without Redis: the Quick start's curl line and "Try it with curl", run as written --------------------


def tcp_peers_of(pid: int) -> list[tuple[int, int]]:
    """(local port, remote port) of every TCP socket process ``pid`` holds, from /proc (remote 0: listening)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    peers = []
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    peers.append((int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)))
    return peers


@contextlib.asynccontextmanager
async def readme_hub() -> AsyncIterator[tuple[int, str, asyncio.subprocess.Process]]:
    """The Quick start's hub command, run as written in the repository (its config.yaml): port, API key, process."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSHUB_")}
    env["WSHUB_ADDRESS"] = f"127.0.0.1:{port}"  # the one change: a free port
    command = quick_start_hub_command().replace(".venv/bin/python", shlex.quote(sys.executable))
    hub = await asyncio.create_subprocess_shell("exec " + command, cwd=ROOT, env=env, stderr=asyncio.subprocess.PIPE)
    assert hub.stderr is not None
    lines = _Lines(hub.stderr, "the hub")
    try:
        await lines.until_contains("listening on")
        found = [re.search(r"HTTP API key \(generated at start.*\): (\S+)$", line) for line in lines.seen]
        keys = [m.group(1) for m in found if m]
        assert len(keys) == 1, lines.seen
        assert "memory broker (in this process)" in lines.seen[-1], lines.seen
        drain = asyncio.ensure_future(hub.stderr.read())
        yield port, keys[0], hub
        hub.terminate()
        assert await within(hub.wait(), 15) == 0
        drain.cancel()
    finally:
        if hub.returncode is None:
            hub.kill()
            await hub.wait()


async def shell(command: str, **env: str) -> str:
    proc = await asyncio.create_subprocess_shell(command, cwd=ROOT, env={**os.environ, **env},
                                                 stdout=asyncio.subprocess.PIPE)
    out, _ = await within(proc.communicate(), 10)
    assert proc.returncode == 0, (command, out)
    return out.decode().strip()


@needs_chromium
def test_the_quick_start_runs_without_redis_and_its_curl_line_reaches_the_example_page() -> None:
    """Issue 9's "done when": the first command, no Redis anywhere, the curl line, the page shows the message."""
    (curl,) = sh_blocks(readme_section("Quick start"))[1]
    assert curl.startswith("curl ") and "/api/keys/alice" in curl, curl
    message = re.search(r"-d '([^']*)'", curl).group(1)  # type: ignore[union-attr]

    async def scenario() -> None:
        async with readme_hub() as (port, key, hub):
            async with example_page(f"ws://127.0.0.1:{port}/ws") as until:  # the page, with ?key=alice
                await until(lambda t: "Connected to" in t)
                assert await shell(curl.replace("Bearer KEY", f"Bearer {key}").replace(
                    "127.0.0.1:8080", f"127.0.0.1:{port}")) == '{"ok": true}'
                await until(lambda t: message in t)
            # no connection to any Redis (nor anything else): every TCP socket is the hub's port's
            assert all(local == port for local, _ in tcp_peers_of(hub.pid)), tcp_peers_of(hub.pid)

    asyncio.run(scenario())


def test_the_try_it_with_curl_steps_work_as_written() -> None:
    steps = sh_blocks(readme_section("Try it with curl"))
    comments = sh_blocks(readme_section("Try it with curl"), comments=True)
    assert [len(s) for s in steps] == [1, 1, 3], steps

    async def scenario() -> None:
        async with readme_hub() as (port, key, hub):
            procs: list[asyncio.subprocess.Process] = []

            def adapt(command: str) -> str:
                return command.replace("127.0.0.1:8080", f"127.0.0.1:{port}").replace(
                    ".venv/bin/python", shlex.quote(sys.executable))

            async def start(command: str, **kwargs: Any) -> asyncio.subprocess.Process:
                proc = await asyncio.create_subprocess_shell("exec " + adapt(command), cwd=ROOT,
                                                             env={**os.environ, "KEY": key},
                                                             stdout=asyncio.subprocess.PIPE, **kwargs)
                procs.append(proc)
                return proc

            try:
                events = await start(steps[0][0])
                assert events.stdout is not None
                terminal1 = _Lines(events.stdout, "terminal 1")
                await terminal1.until_contains("wshub event stream")  # the stream is open
                client = await start(steps[1][0], stdin=asyncio.subprocess.PIPE)
                assert client.stdout is not None and client.stdin is not None
                terminal2 = _Lines(client.stdout, "terminal 2")
                await terminal1.until(comments[1][0].split("terminal 1 prints ", 1)[1])
                for command in steps[2]:
                    line, _, comment = command.partition("#")
                    answer = json.loads(await shell(adapt(line), KEY=key))
                    assert answer["ok"] is True and set(answer) <= {"ok", "offset"}, (line, answer)
                    if "prints:" in comment:
                        await terminal2.until(comment.split("prints: ", 1)[1].strip())
                client.stdin.write(b"typed by alice\n")
                await terminal1.until('data: {"key": "alice", "data": "typed by alice"}')
                client.stdin.close()
                assert await within(client.wait(), 10) == 0
                await terminal1.until("event: client-gone")
                # no Redis involved: every TCP socket the hub holds is on its own port
                assert all(local == port for local, _ in tcp_peers_of(hub.pid)), tcp_peers_of(hub.pid)
            finally:
                for proc in procs:
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()

    asyncio.run(scenario())
