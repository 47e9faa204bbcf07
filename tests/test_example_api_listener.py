"""example/api_listener.py, run as its users run it (a process), against a real hub process.

On the memory broker nothing but the hub and the listener runs: no Redis
anywhere. One test runs the same listener against a hub on the Redis broker.
The listener's event-stream parser and its reading of events are tested on
their own too (whole, one byte at a time, with trailing data), and a small
HTTP server of the test's own shows what no hub sends: malformed events, a
keep-alive connection closed under the listener, a silent stream.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import quote

import pytest
import websockets

from helpers import (
    HttpClient,
    RedisProcess,
    free_port,
    hub_env,
    hub_process,
    next_line,
    stop_process,
    wait_until,
    within,
    ws_url,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "example"
LISTENER = EXAMPLE / "api_listener.py"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


api_listener: Any = load("api_listener")


async def spawn(port: int, *args: str, stderr: int | None = None, **env: str) -> asyncio.subprocess.Process:
    """The listener pointed at ``127.0.0.1:port``; its key comes from WSHUB_API_KEY (``hub_env``) unless overridden."""
    return await asyncio.create_subprocess_exec(sys.executable, str(LISTENER), "--url", f"http://127.0.0.1:{port}",
                                                *args, env=hub_env(**env), stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=stderr)


@contextlib.asynccontextmanager
async def listener_process(port: int, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """The listener, killed at the end if still running."""
    proc = await spawn(port, *args)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def running_listener(port: int, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """The listener once its event stream is open (it printed ``ready``)."""
    async with listener_process(port, *args) as proc:
        assert await next_line(proc, 15) == "ready"
        yield proc


async def connect(port: int, key: str) -> websockets.ClientConnection:
    return await websockets.connect(ws_url(port, quote(key, safe="")), proxy=None)


async def publish(api: HttpClient, group: str, body: bytes) -> None:
    status, _, answer = await api.request("POST", f"/api/groups/{quote(group, safe='')}", body)
    assert status == 200, answer


async def lines_until(proc: asyncio.subprocess.Process, last: str, timeout: float = 15.0) -> list[str]:
    """The lines before the first ``last`` (which must come within ``timeout`` in all)."""
    async def read() -> list[str]:
        seen = []
        while (line := await next_line(proc, timeout)) != last:
            seen.append(line)
        return seen

    return await within(read(), timeout)


# -- against a real hub ------------------------------------------------------------------------------------


class TestOnTheMemoryBroker:
    """Nothing but the hub and this file: the whole protocol through /api/."""

    def test_each_client_gets_its_groups_and_the_events_are_printed(self) -> None:
        async def scenario() -> None:
            async with hub_process() as hub, running_listener(hub.port, "--print-data") as listener:
                assert "memory broker (in this process)" in hub.log[-1], hub.log
                api = await HttpClient.open(hub.port)
                alice = await connect(hub.port, "alice")
                assert await next_line(listener) == "new alice -> all,user-alice"
                odd = "room 7/ü"  # percent-encoded (UTF-8) in the PUT's path
                other = await connect(hub.port, odd)
                assert await next_line(listener) == f"new {odd} -> all,user-{odd}"

                await publish(api, "user-alice", b"for alice only")
                await publish(api, "all", b"for everyone")
                await publish(api, f"user-{odd}", b"for the odd key")
                assert await within(alice.recv()) == "for alice only"
                assert await within(alice.recv()) == "for everyone"
                assert await within(other.recv()) == "for everyone"  # not alice's message
                assert await within(other.recv()) == "for the odd key"

                await alice.send("two\nlines")
                assert await next_line(listener) == "data alice: two\\nlines"  # still one line
                await alice.send(b"\x00\xff")
                assert await next_line(listener) == "binary alice: AP8="
                await alice.close()
                assert await next_line(listener) == "gone alice"
                await other.close()
                assert await next_line(listener) == f"gone {odd}"
                await api.close()

                assert await stop_process(listener) == 0
                assert await next_line(listener) == "stopped"

        asyncio.run(scenario())

    def test_a_hub_that_starts_later_or_restarts_is_followed(self) -> None:
        async def scenario() -> None:
            port = free_port()
            async with listener_process(port) as listener:  # before the hub: nothing listens yet
                async with hub_process(port=port):
                    gap = await lines_until(listener, "ready")
                    assert all(line == "reconnecting: connection refused" for line in gap), gap
                    ws = await connect(port, "before")
                    assert await next_line(listener) == "new before -> all,user-before"
                    await ws.close()
                    assert await next_line(listener) == "gone before"
                async with hub_process(port=port):  # the same port, a new process
                    gap = await lines_until(listener, "ready")
                    assert gap and all(line.startswith("reconnecting: ") for line in gap), gap
                    api = await HttpClient.open(port)
                    ws = await connect(port, "after")
                    # answered on a new keep-alive connection: the one to the old hub is dead
                    assert await next_line(listener) == "new after -> all,user-after"
                    await publish(api, "user-after", b"welcome back")
                    assert await within(ws.recv()) == "welcome back"
                    await ws.close()
                    await api.close()
                    assert await next_line(listener) == "gone after"
                    assert await stop_process(listener) == 0
                    assert await next_line(listener) == "stopped"

        asyncio.run(scenario())

    @pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
    @pytest.mark.parametrize("while_", ["streaming", "waiting to reconnect"])
    def test_a_signal_prints_stopped_and_exits_0(self, sig: signal.Signals, while_: str) -> None:
        async def scenario() -> None:
            async with contextlib.AsyncExitStack() as hub_running:
                hub = await hub_running.enter_async_context(hub_process())
                async with running_listener(hub.port) as listener:
                    if while_ == "waiting to reconnect":
                        await hub_running.aclose()  # the hub stops; the listener stays, retrying
                        assert (await next_line(listener)).startswith("reconnecting: ")
                    listener.send_signal(sig)
                    assert await within(listener.wait(), 10) == 0
                    before = await lines_until(listener, "stopped")
                    assert all(line.startswith("reconnecting: ") for line in before), before

        asyncio.run(scenario())

    def test_a_wrong_key_or_none_exits_2_naming_api_key(self) -> None:
        async def scenario() -> None:
            async with hub_process() as hub:
                for args, env in ((["--api-key", "wrong"], {}), ([], {"WSHUB_API_KEY": ""})):
                    proc = await spawn(hub.port, *args, stderr=asyncio.subprocess.PIPE, **env)
                    stdout, stderr = await within(proc.communicate(), 10)
                    assert proc.returncode == 2, (args, stdout, stderr)
                    assert stdout == b"", stdout  # never ready
                    assert b"api.key" in stderr and b"WSHUB_API_KEY" in stderr, stderr
                    assert (b"HTTP 401" in stderr) == bool(args), stderr

        asyncio.run(scenario())


def test_on_the_redis_broker_it_works_as_well(shell: str, redis_server: RedisProcess, prefix: str) -> None:
    async def scenario() -> None:
        r = redis_server.client()
        async with hub_process(shell=shell, WSHUB_REDIS_ADDRESS=f"127.0.0.1:{redis_server.port}",
                               WSHUB_REDIS_CHANNEL_PREFIX=prefix) as hub:
            assert "redis broker at" in hub.log[-1], hub.log
            await hub.lines_matching(r"link up", 2)  # so that the stream's subscriptions go out now, in order
            async with running_listener(hub.port, "--groups", "", "--key-group", "room-{key}",
                                        "--key-group", "audit", "--print-data") as listener:
                api = await HttpClient.open(hub.port)
                ws = await connect(hub.port, "7")
                assert await next_line(listener) == "new 7 -> room-7,audit"

                async def room_live() -> bool:  # the hub subscribes the group once the answer came back
                    return bool((await r.pubsub_numsub(f"{prefix}group-data:room-7"))[0][1])

                await wait_until(room_live, what="group-data:room-7 subscribed")
                await publish(api, "room-7", b"hi room 7")
                assert await within(ws.recv()) == "hi room 7"
                await ws.send("from 7")
                assert await next_line(listener) == "data 7: from 7"
                await ws.close()
                assert await next_line(listener) == "gone 7"
                await api.close()
                assert await stop_process(listener) == 0
                assert await next_line(listener) == "stopped"
        await r.aclose()

    asyncio.run(scenario())


# -- against a server of the test's own: what no hub sends -------------------------------------------------


class FakeHub:
    """An HTTP server that streams what the test queues and answers each PUT as the test says.

    ``puts`` records (connection number, path, body); ``answers`` gives the
    status and body of each PUT in turn (200 once it is empty), and
    ``close_after_put`` closes that connection after answering, keep-alive
    notwithstanding, as a hub does with an idle one.
    """

    def __init__(self) -> None:
        self.port = 0
        self.events: asyncio.Queue[bytes | None] = asyncio.Queue()  # None: end the stream
        self.streams = 0
        self.puts: list[tuple[int, str, bytes]] = []
        self.answers: list[tuple[int, bytes]] = []
        self.close_after_put = False
        self._connections = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections += 1
        conn = self._connections
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
                if method == "GET":
                    await self._stream(writer)
                    return
                length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                self.puts.append((conn, target, await reader.readexactly(length)))
                status, body = self.answers.pop(0) if self.answers else (200, b'{"ok": true}\n')
                writer.write(b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                             % (status, len(body), body))
                await writer.drain()
                if self.close_after_put:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _stream(self, writer: asyncio.StreamWriter) -> None:
        self.streams += 1
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        while (data := await self.events.get()) is not None:
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()


def test_malformed_events_are_skipped_and_lost_connections_come_back() -> None:
    async def scenario() -> None:
        fake = FakeHub()
        await fake.start()
        try:
            async with running_listener(fake.port, "--idle-timeout", "0.5") as listener:
                for data, line in [
                    (b"event: client-new\ndata: \xff\xfe\n\n", "skipped: client-new: data that is not UTF-8"),
                    (b"event: client-new\ndata: {nope\n\n", "skipped: client-new: data that is not JSON ("),
                    (b'event: client-gone\ndata: ["k"]\n\n', 'skipped: client-gone: no string "key" in ["k"]'),
                    (b'event: client-data\r\ndata: {"key": "k", "data": "!!", "binary": true}\r\n\r\n',
                     "skipped: client-data of k: binary data that is not base64"),
                ]:
                    fake.events.put_nowait(data)
                    assert (await next_line(listener)).startswith(line)
                fake.events.put_nowait(b"event: \xff\ndata: {}\n\n: a comment\n\nevent: client-ne")  # ignored
                fake.events.put_nowait(b'w\ndata: {"key": "k1"}\n\n')
                fake.close_after_put = True  # as a hub closes an idle keep-alive connection
                assert await next_line(listener) == "new k1 -> all,user-k1"
                fake.close_after_put = False
                fake.events.put_nowait(b'event: client-new\ndata: {"key": "k2"}\n\n')
                assert await next_line(listener) == "new k2 -> all,user-k2"  # sent again on a new connection
                assert [(path, body) for _, path, body in fake.puts] == [
                    ("/api/keys/k1/groups", b'["all", "user-k1"]'), ("/api/keys/k2/groups", b'["all", "user-k2"]')]
                assert fake.puts[0][0] != fake.puts[1][0]
                fake.answers.append((503, b'{"error": "not ready: shutting down"}'))
                fake.events.put_nowait(b'event: client-new\ndata: {"key": "k3"}\n\n')
                assert await next_line(listener) == 'failed k3: HTTP 503 {"error": "not ready: shutting down"}'

                fake.events.put_nowait(None)
                assert await lines_until(listener, "ready") == ["reconnecting: the event stream ended"]
                # the new stream stays silent: no keepalive within --idle-timeout
                assert await lines_until(listener, "ready") == ["reconnecting: no data for 0.5s"]
                assert fake.streams == 3
                assert await stop_process(listener) == 0
                assert await next_line(listener) == "stopped"
        finally:
            await fake.close()

    asyncio.run(scenario())


# -- the parts, on their own ---------------------------------------------------------------------------------

STREAM = (b": wshub event stream\n\n"
          b'event: client-new\ndata: {"key": "alice"}\n\n'
          b": ping\n\n"
          b'event: client-data\r\ndata: {"key": "alice",\r\ndata: "data": "hi"}\r\n\r\n'
          b'event: client-gone\rdata: {"key": "alice"}\r\r'
          b"id: 7\nretry: 10\n\n"  # no data: no event
          b"data:no space\n\n")
EVENTS = [(b"client-new", b'{"key": "alice"}'), (b"client-data", b'{"key": "alice",\n"data": "hi"}'),
          (b"client-gone", b'{"key": "alice"}'), (b"message", b"no space")]


def raw(items: list[Any]) -> list[tuple[bytes, bytes]]:
    assert all(isinstance(item, api_listener.RawEvent) for item in items), items
    return [(item.name, item.data) for item in items]


class TestEventParser:
    """Server-Sent Events as the WHATWG HTML standard parses them, on the bytes however they arrive."""

    @pytest.mark.parametrize("split", [None, 1, 7], ids=["whole", "byte-by-byte", "7-byte-pieces"])
    def test_every_line_ending_field_and_comment(self, split: int | None) -> None:
        parser = api_listener.EventParser()
        pieces = [STREAM] if split is None else [STREAM[i:i + split] for i in range(0, len(STREAM), split)]
        assert raw([item for piece in pieces for item in parser.feed(piece)]) == EVENTS

    def test_an_unfinished_event_waits_for_its_blank_line(self) -> None:
        parser = api_listener.EventParser()
        assert parser.feed(b'event: client-new\ndata: {"key": "a"}\n') == []
        assert parser.feed(b"\r") == []  # a CR: the LF of a CRLF may follow
        assert raw(parser.feed(b"\nevent: client-gone")) == [(b"client-new", b'{"key": "a"}')]

    def test_an_event_over_the_bound_is_one_skipped_event_and_the_stream_goes_on(self) -> None:
        parser = api_listener.EventParser(max_size=20)
        too_big = api_listener.Skipped(reason="an event over 20 bytes")
        assert parser.feed(b"event: client-new\ndata: " + b"x" * 30) == []  # one long line
        assert parser.feed(b"x" * 30) == []
        assert len(parser._buffer) <= 20  # nothing of it is held
        assert parser.feed(b"xx\n\n") == [too_big]
        assert raw(parser.feed(b"data: ok\n\n")) == [(b"message", b"ok")]
        assert parser.feed(b"data: 12345\n" * 3) == []  # many short lines
        assert parser._data is None
        just_fits = b": comments do not count\ndata: " + b"y" * 14 + b"\n\n"
        assert parser.feed(b"\n" + just_fits) == [too_big, api_listener.RawEvent(name=b"message", data=b"y" * 14)]


def event(name: bytes, data: bytes) -> Any:
    return api_listener.interpret(api_listener.RawEvent(name=name, data=data))


class TestInterpret:
    def test_the_hubs_three_events(self) -> None:
        assert event(b"client-new", b'{"key": "a b/\xc3\xbc"}') == api_listener.ClientNew(key="a b/ü")
        assert event(b"client-gone", b'{"key": "a"}') == api_listener.ClientGone(key="a")
        assert event(b"client-data", b'{"key": "a", "data": "hi"}') == api_listener.ClientData(key="a", data="hi")
        assert event(b"client-data", b'{"key": "a", "data": "AP8=", "binary": true}') == api_listener.ClientData(
            key="a", data=b"\x00\xff")

    def test_another_event_name_is_ignored(self) -> None:
        assert event(b"message", b'{"key": "a"}') is None
        assert event(b"\xff", b"{}") is None

    @pytest.mark.parametrize(("name", "data", "reason"), [
        (b"client-new", b"\xff", "client-new: data that is not UTF-8"),
        (b"client-new", b"", "client-new: data that is not JSON (Expecting value: line 1 column 1 (char 0))"),
        (b"client-new", b"[" * 100_000, "client-new: JSON nested too deep"),
        (b"client-new", b'{"key": 7}', 'client-new: no string "key" in {"key": 7}'),
        (b"client-gone", b'"a"', 'client-gone: no string "key" in "a"'),
        (b"client-new", b'{"key": "\\ud800"}', "client-new: a key with a lone surrogate, which no hub announces"),
        (b"client-data", b'{"key": "a\\n"}', 'client-data of a\\n: no string "data"'),
        (b"client-data", b'{"key": "a", "data": "A", "binary": true}', "client-data of a: binary data that is not "
                                                                        "base64"),
    ])
    def test_anything_else_is_skipped_with_the_reason(self, name: bytes, data: bytes, reason: str) -> None:
        assert event(name, data) == api_listener.Skipped(reason=reason)

    def test_printable_keeps_one_line(self) -> None:
        assert api_listener.printable("a\nb\r\tc\x1b\x7f\x85 ü") == "a\\nb\\r\\tc\\x1b\\x7f\\x85 ü"


@pytest.mark.parametrize("argv", [[], ["--groups", "all, news"], ["--groups", "", "--key-group", "room-{key}",
                                                                  "--key-group", "audit"],
                                  ["--key-group", ""], ["--groups", "a,,user-{key},a", "--key-group", "user-{key}"]])
def test_the_groups_are_those_listener_py_gives(argv: list[str]) -> None:
    """Same options, same defaults, same groups: the two listeners are interchangeable."""
    listener = load("listener")
    theirs: argparse.Namespace = listener.parse_args(argv)
    ours = api_listener.parse_args([*argv, "--api-key", "k"])
    fixed = [g.strip() for g in theirs.groups.split(",") if g.strip()]  # as listener.serve splits them
    their_groups: Callable[[str], list[str]] = lambda key: listener.groups_for(key, fixed, theirs.key_groups)  # noqa: E731
    for key in ("alice", "a"):
        assert api_listener.GroupRule.from_args(ours).groups_for(key) == their_groups(key)
