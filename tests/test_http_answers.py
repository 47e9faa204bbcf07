"""HTTP answers of the hub (docs/protocol.md, "HTTP"), over raw TCP sockets with exact bytes.

Every answer but 101 is a complete HTTP/1.1 response followed by the server
closing the socket: ``http_exchange`` reads until EOF and times out otherwise.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from helpers import (
    RedisProcess,
    Subscriber,
    chromium_page,
    free_port,
    http_exchange,
    hub_config,
    needs_chromium,
    on_hub,
    raw_websocket,
    running_hub,
    upgrade_head,
    wait_for,
    wait_until,
    within,
)

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
PADDING = "X-Padding: " + "p" * 2000


def _head(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


UPGRADE = ("Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
           "Sec-WebSocket-Version: 13")

# (what, request bytes, status, a fragment the body must contain, headers the answer must carry)
CASES: list[tuple[str, bytes, int, bytes, dict[str, str]]] = [
    ("missing key", _head("GET /ws HTTP/1.1", "Host: x", *UPGRADE), 400, b"session_key", {}),
    ("empty key", _head("GET /ws?session_key= HTTP/1.1", "Host: x", *UPGRADE), 400, b"session_key", {}),
    ("other parameter only", _head("GET /ws?other=k HTTP/1.1", "Host: x", *UPGRADE), 400, b"session_key", {}),
    ("another path", _head("GET /elsewhere?session_key=k HTTP/1.1", "Host: x", *UPGRADE), 404, b"/elsewhere",
     {}),
    ("a path below serverUrl", _head("GET /ws/x?session_key=k HTTP/1.1", "Host: x", *UPGRADE), 404, b"not found",
     {}),
    ("GET without Upgrade", _head("GET /ws?session_key=k HTTP/1.1", "Host: x"), 426, b"WebSocket",
     {"upgrade": "websocket"}),
    # A plain GET is checked like an upgrade: the key first (a page's fetch() learns why its WebSocket failed).
    ("GET without Upgrade or key", _head("GET /ws HTTP/1.1", "Host: x"), 400, b"session_key", {}),
    ("POST on serverUrl", _head("POST /ws?session_key=k HTTP/1.1", "Host: x", "Content-Length: 0", *UPGRADE),
     405, b"GET", {"allow": "GET"}),
    ("malformed request line", b"GARBAGE\r\n\r\n", 400, b"malformed", {}),
    ("request line without a version", b"GET /ws?session_key=k\r\n\r\n", 400, b"malformed", {}),
    ("HTTP/1.1 without Host", _head("GET /ws?session_key=k HTTP/1.1", *UPGRADE), 400, b"Host", {}),
    ("header line without a colon", _head("GET /ws?session_key=k HTTP/1.1", "Host: x", "nonsense", *UPGRADE),
     400, b"", {}),
    ("no Sec-WebSocket-Key", _head("GET /ws?session_key=k HTTP/1.1", "Host: x", "Upgrade: websocket",
                                   "Connection: Upgrade", "Sec-WebSocket-Version: 13"), 400, b"handshake", {}),
    ("no Connection: Upgrade", _head("GET /ws?session_key=k HTTP/1.1", "Host: x", "Upgrade: websocket",
                                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"),
     400, b"handshake", {}),
    # RFC 6455 4.2.2: a server that does not speak the version MUST send the versions it does speak.
    ("Sec-WebSocket-Version 8", upgrade_head("k", version="8"), 426, b"handshake", {"sec-websocket-version": "13"}),
    ("no Sec-WebSocket-Version", _head("GET /ws?session_key=k HTTP/1.1", "Host: x", "Upgrade: websocket",
                                       "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="),
     400, b"handshake", {}),
    # obs-text (RFC 9110 5.5) passes h11 but not the handshake: an answer, not an exception in data_received.
    ("non-ASCII Connection value", _head("GET /ws?session_key=k HTTP/1.1", "Host: x", "Upgrade: websocket",
                                         "Connection: Upgrade\xe9", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                                         "Sec-WebSocket-Version: 13").replace(b"\xc3\xa9", b"\xe9"),
     400, b"", {}),
    ("healthz", _head("GET /healthz HTTP/1.1", "Host: x"), 200, b"ok", {}),
    ("POST healthz", _head("POST /healthz HTTP/1.1", "Host: x", "Content-Length: 0"), 405, b"GET",
     {"allow": "GET"}),
]


@pytest.mark.parametrize(("what", "request_bytes", "status", "body", "headers"), CASES,
                         ids=[c[0] for c in CASES])
def test_answer_and_close(shell: str,
                          redis_server: RedisProcess, prefix: str, what: str, request_bytes: bytes, status: int,
                          body: bytes, headers: dict[str, str]) -> None:
    async def scenario() -> None:
        async with running_hub(hub_config(redis_server.port, prefix), shell) as server:
            answer = await http_exchange(server.port, request_bytes)  # returns only once the hub closed
            assert answer.status == status, answer.raw
            assert body in answer.body, answer.raw
            assert answer.headers.get("connection") == "close"
            assert int(answer.headers["content-length"]) == len(answer.body)
            for name, value in headers.items():
                assert answer.headers.get(name) == value, (name, answer.raw)
            await wait_for(lambda: server.core.client_count() == 0, what="socket forgotten")
            # Closing (lingering) until the hub reads our EOF, which http_exchange sent after the answer's.
            await wait_for(server.core.is_empty, what="the lingering close ended")

    asyncio.run(scenario())


def test_upgrade_answers_101_with_the_accept_key_and_no_extension(shell: str,
                                                                  redis_server: RedisProcess, prefix: str) -> None:
    async def scenario() -> None:
        async with running_hub(hub_config(redis_server.port, prefix), shell) as server:
            head = upgrade_head("k", extra=("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
                                            "Sec-WebSocket-Protocol: chat"))
            raw = await raw_websocket(server.port, "k", head=head)
            assert raw.status_line == b"HTTP/1.1 101 Switching Protocols"
            fields = {k.strip().lower(): v.strip() for k, _, v in
                      (line.partition(":") for line in raw.head.decode().split("\r\n")[1:] if line)}
            nonce = next(line.split(b": ", 1)[1] for line in head.split(b"\r\n")
                         if line.startswith(b"Sec-WebSocket-Key"))
            assert fields["sec-websocket-accept"] == base64.b64encode(hashlib.sha1(nonce + WS_GUID).digest()).decode()
            assert fields["upgrade"].lower() == "websocket"
            assert "upgrade" in fields["connection"].lower()
            assert "sec-websocket-extensions" not in fields  # no permessage-deflate
            assert "sec-websocket-protocol" not in fields  # no subprotocol
            await raw.aclose()

    asyncio.run(scenario())


def test_a_request_head_sent_one_byte_at_a_time_is_upgraded(shell: str,
                                                            redis_server: RedisProcess, prefix: str) -> None:
    async def scenario() -> None:
        async with running_hub(hub_config(redis_server.port, prefix), shell) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            for byte in upgrade_head("slowly"):
                writer.write(bytes([byte]))
                await writer.drain()
            answer = await within(reader.readuntil(b"\r\n\r\n"))
            assert answer.startswith(b"HTTP/1.1 101 ")
            writer.close()

    asyncio.run(scenario())


def test_request_head_growing_past_max_header_size_gets_431(shell: str,
                                                            redis_server: RedisProcess, prefix: str) -> None:
    async def scenario() -> None:
        async with running_hub(hub_config(redis_server.port, prefix, webSocket_maxHeaderSize=1024), shell) as server:
            # A head that is still incomplete when it passes the limit.
            unfinished = _head("GET /ws?session_key=k HTTP/1.1", "Host: x", *UPGRADE, PADDING)[:-4] + b"\r\n"
            answer = await http_exchange(server.port, unfinished)
            assert answer.status == 431 and b"too large" in answer.body, answer.raw
            # Under the limit is fine.
            raw = await raw_websocket(server.port, "k", head=upgrade_head("k", extra=("X-Padding: " + "p" * 500,)))
            assert raw.status_line.startswith(b"HTTP/1.1 101")
            await raw.aclose()

    asyncio.run(scenario())


def test_complete_request_head_over_max_header_size_gets_431(shell: str,
                                                             redis_server: RedisProcess, prefix: str) -> None:
    """webSocket.maxHeaderSize is "the largest HTTP request head; larger is answered 431" (_config.py).

    A complete head that arrives in one read must not slip past the limit just
    because the parser never saw it incomplete.
    """

    async def scenario() -> None:
        async with running_hub(hub_config(redis_server.port, prefix, webSocket_maxHeaderSize=1024), shell) as server:
            complete = _head("GET /ws?session_key=k HTTP/1.1", "Host: x", *UPGRADE, PADDING)
            assert len(complete) > 2 * 1024
            answer = await http_exchange(server.port, complete, timeout=2)
            assert answer.status == 431, answer.raw

    asyncio.run(scenario())


def test_one_answer_per_connection_even_if_requests_are_pipelined(shell: str,
                                                                  redis_server: RedisProcess, prefix: str) -> None:
    async def scenario() -> None:
        async with running_hub(hub_config(redis_server.port, prefix), shell) as server:
            two = _head("GET /healthz HTTP/1.1", "Host: x") + _head("GET /ws?session_key=k HTTP/1.1", "Host: x",
                                                                     *UPGRADE)
            answer = await http_exchange(server.port, two)
            assert answer.status == 200
            assert answer.raw.count(b"HTTP/1.1 ") == 1
            assert server.core.stats.connects == 0

    asyncio.run(scenario())


def test_an_empty_first_key_value_is_refused(shell: str, redis_server: RedisProcess, prefix: str) -> None:
    """docs/protocol.md: the first value counts; an empty key is refused with 400."""

    async def scenario() -> None:
        async with running_hub(hub_config(redis_server.port, prefix), shell) as server:
            answer = await http_exchange(server.port, _head("GET /ws?session_key=&session_key=k HTTP/1.1",
                                                            "Host: x", *UPGRADE), timeout=2)
            assert answer.status == 400, answer.raw

    asyncio.run(scenario())


def test_metrics_count_each_answer_under_its_own_status(shell: str, redis_server: RedisProcess, prefix: str) -> None:
    async def scenario() -> None:
        async with running_hub(hub_config(redis_server.port, prefix), shell) as server:
            assert (await http_exchange(server.port, upgrade_head("k", version="8"))).status == 426
            assert (await http_exchange(server.port, _head("GET /nope HTTP/1.1", "Host: x"))).status == 404
            no_key = _head("GET /ws?session_key=k HTTP/1.1", "Host: x", "Upgrade: websocket",
                           "Connection: Upgrade", "Sec-WebSocket-Version: 13")
            assert (await http_exchange(server.port, no_key)).status == 400
            metrics = server.core.metrics_text()
            assert 'wshub_http_responses_total{status="404"} 1' in metrics
            assert 'wshub_http_responses_total{status="426"} 1' in metrics, metrics
            assert 'wshub_http_responses_total{status="400"} 1' in metrics, metrics

    asyncio.run(scenario())


# -- A page's fetch() after a failed WebSocket: the same answer as the upgrade, readable cross-origin ------------

PAGE = "http://page.example:8000"


def _plain_get(target: str, *extra: str) -> bytes:
    """What a browser's fetch() of the WebSocket URL sends: a GET without Upgrade, with the page's Origin."""
    return _head(f"GET {target} HTTP/1.1", "Host: x", *extra)


# (what, allowedOrigins, request, status, body fragment, headers that must be there, headers that must not)
FETCH_CASES: list[tuple[str, list[str], bytes, int, bytes, dict[str, str], tuple[str, ...]]] = [
    ("no key, any origin allowed", [], _plain_get("/ws", f"Origin: {PAGE}"), 400, b"session_key",
     {"access-control-allow-origin": "*"}, ()),
    ("good key, any origin allowed", [], _plain_get("/ws?session_key=k", f"Origin: {PAGE}"), 426, b"WebSocket",
     {"access-control-allow-origin": "*", "upgrade": "websocket"}, ()),
    ("a page opened from disk", [], _plain_get("/ws?session_key=k", "Origin: null"), 426, b"WebSocket",
     {"access-control-allow-origin": "*"}, ()),
    ("origin not listed", [PAGE], _plain_get("/ws?session_key=k", "Origin: http://evil.example"), 403,
     b"origin not allowed", {"vary": "origin"}, ("access-control-allow-origin",)),
    ("no origin, origins listed", [PAGE], _plain_get("/ws?session_key=k"), 403, b"origin not allowed",
     {"vary": "origin"}, ("access-control-allow-origin",)),
    ("listed origin, no key", [PAGE], _plain_get("/ws", f"Origin: {PAGE}"), 400, b"session_key",
     {"access-control-allow-origin": PAGE, "vary": "origin"}, ()),
    ("listed origin, good key", [PAGE], _plain_get("/ws?session_key=k", f"Origin: {PAGE}"), 426, b"WebSocket",
     {"access-control-allow-origin": PAGE, "vary": "origin"}, ()),
    ("unlisted origin, no key", [PAGE], _plain_get("/ws", "Origin: http://evil.example"), 400, b"session_key",
     {"vary": "origin"}, ("access-control-allow-origin",)),
    # An upgrade refused for its origin tells the page nothing either: same answer as before.
    ("upgrade from an unlisted origin", [PAGE], upgrade_head("k", extra=("Origin: http://evil.example",)), 403,
     b"origin not allowed", {}, ("access-control-allow-origin",)),
]


@pytest.mark.parametrize(("what", "origins", "request_bytes", "status", "body", "present", "absent"), FETCH_CASES,
                         ids=[c[0] for c in FETCH_CASES])
def test_a_plain_get_gets_the_upgrades_answer_with_cors_for_allowed_origins(shell: str,
        redis_server: RedisProcess, prefix: str, what: str, origins: list[str], request_bytes: bytes, status: int,
        body: bytes, present: dict[str, str], absent: tuple[str, ...]) -> None:
    async def scenario() -> None:
        config = hub_config(redis_server.port, prefix, webSocket_allowedOrigins=origins)
        async with running_hub(config, shell) as server:
            answer = await http_exchange(server.port, request_bytes)
            assert answer.status == status, answer.raw
            assert body in answer.body, answer.raw
            for name, value in present.items():
                assert answer.headers.get(name) == value, (name, answer.raw)
            for name in absent:
                assert name not in answer.headers, (name, answer.raw)

    asyncio.run(scenario())


def test_a_plain_get_to_a_full_hub_gets_503_readable_by_the_page(shell: str,
                                                                 redis_server: RedisProcess, prefix: str) -> None:
    async def scenario() -> None:
        async with running_hub(hub_config(redis_server.port, prefix, webSocket_maxConnections=1), shell) as server:
            first = await raw_websocket(server.port, "first")
            assert first.status_line.startswith(b"HTTP/1.1 101")
            answer = await http_exchange(server.port, _plain_get("/ws?session_key=k", f"Origin: {PAGE}"))
            assert answer.status == 503 and b"too many connections" in answer.body, answer.raw
            assert answer.headers.get("retry-after") == "5"
            assert answer.headers.get("access-control-allow-origin") == "*"
            await first.aclose()

    asyncio.run(scenario())


# -- example/index.html in a real browser: what the page makes of those answers ----------------------------------
#
# Headless Chromium, driven over its DevTools protocol (a WebSocket); skipped where Chromium is not installed
# (Debian: apt-get install chromium). The page is opened from disk, so its origin is "null".

PAGE_FILE = Path(__file__).resolve().parent.parent / "example" / "index.html"


@contextlib.asynccontextmanager
async def example_page(hub_url: str) -> AsyncIterator[Callable[[Callable[[str], bool]], Awaitable[str]]]:
    """Open the example page on ``hub_url`` with key alice; yields ``until(done)``: the page's log text once
    ``done(text)`` holds (polled; fails after 20 s)."""
    async with chromium_page(f"{PAGE_FILE.as_uri()}?url={hub_url}&key=alice") as page:

        async def until(done: Callable[[str], bool]) -> str:
            text = ""

            async def log_done() -> bool:
                nonlocal text
                text = str(await page.evaluate("document.getElementById('log')?.innerText ?? ''") or "")
                return done(text)

            try:
                await wait_until(log_done, timeout=20, what="the page's log")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; the page's log: {text!r}") from None
            return text

        yield until


@needs_chromium
def test_the_page_says_the_hub_is_unreachable_and_backs_off() -> None:
    async def scenario() -> None:
        async with example_page(f"ws://127.0.0.1:{free_port()}/ws") as until:
            text = await until(lambda t: t.count("Reconnecting in") >= 3)
        assert "hub unreachable at 127.0.0.1:" in text, text
        delays = [float(d) for d in re.findall(r"Reconnecting in (\d+\.\d) s", text)]
        # 1 s, 2 s, 4 s, ... each +-20 %, never under 1 s
        assert 1.0 <= delays[0] <= 1.2 and 1.6 <= delays[1] <= 2.4 and 3.2 <= delays[2] <= 4.8, delays

    asyncio.run(scenario())


@needs_chromium
def test_the_page_shows_an_origin_refusal(shell: str, redis_server: RedisProcess, prefix: str) -> None:
    async def scenario() -> None:
        config = hub_config(redis_server.port, prefix, webSocket_allowedOrigins=["http://app.example"])
        async with running_hub(config, shell) as server:
            async with example_page(f"ws://127.0.0.1:{server.port}/ws") as until:
                text = await until(lambda t: "Reconnecting in" in t)
            assert "does not let this page (origin null (a page opened from disk)) read why" in text, text
            assert "HTTP 403" in text, text

    asyncio.run(scenario())


@needs_chromium
def test_the_page_shows_a_full_hub_and_then_connects(shell: str, redis_server: RedisProcess, prefix: str) -> None:
    async def scenario() -> None:
        async with running_hub(hub_config(redis_server.port, prefix, webSocket_maxConnections=1), shell) as server:
            first = await raw_websocket(server.port, "first")
            async with example_page(f"ws://127.0.0.1:{server.port}/ws") as until:
                text = await until(lambda t: "Reconnecting in" in t)
                assert 'refused by the hub: HTTP 503 "too many connections"' in text, text
                await first.aclose()  # room again: a later attempt of the same page gets in
                await until(lambda t: "Connected to" in t)

    asyncio.run(scenario())


def test_a_key_that_is_not_utf8_is_refused(shell: str, redis_server: RedisProcess, prefix: str) -> None:
    """docs/protocol.md: %FF%FE and %FE%FF are two byte strings, not one key of two U+FFFD."""

    async def scenario() -> None:
        async with running_hub(hub_config(redis_server.port, prefix), shell) as server:
            for raw in ("%FF%FE", "%FE%FF"):
                answer = await http_exchange(server.port, _head(f"GET /ws?session_key={raw} HTTP/1.1",
                                                                "Host: x", *UPGRADE), timeout=2)
                assert answer.status == 400, answer.raw
                assert answer.body == b"query parameter session_key is not valid UTF-8\n"
            assert server.core.stats.connects == 0

    asyncio.run(scenario())


@needs_chromium
def test_the_page_resumes_after_a_dropped_socket_and_shows_every_message_once(
        shell: str, own_redis: RedisProcess, prefix: str) -> None:
    """The page connects with recover=1; its socket is kicked; messages are published while it is away; it
    reconnects with since= and shows each of them exactly once (issue 11)."""
    async def scenario() -> None:
        r = own_redis.client()
        listener = Subscriber(r)
        await listener.subscribe(f"{prefix}client-new")
        channel = f"{prefix}group-data:news"
        async with running_hub(hub_config(own_redis.port, prefix), shell) as server:
            async with example_page(f"ws://127.0.0.1:{server.port}/ws") as until:
                assert await listener.next() == (f"{prefix}client-new", b"alice")
                await r.publish(f"{prefix}groups-new:alice", '["news"]')
                await wait_for(lambda: on_hub(server, lambda s: s.core.ready and channel.encode()
                                              in s.core.needed_channels()), what="alice in news")
                await r.fcall("wshub_publish", 1, channel, "before the drop")  # type: ignore[misc]
                await until(lambda t: "before the drop" in t)
                await r.publish(f"{prefix}client-kick:alice", "dropped by the test")
                await until(lambda t: "Reconnecting in" in t)
                for i in range(5):
                    await r.fcall("wshub_publish", 1, channel, f"while away {i}")  # type: ignore[misc]
                assert await listener.next(timeout=10) == (f"{prefix}client-new", b"alice")  # it is back
                await r.publish(f"{prefix}groups-new:alice", '["news"]')
                await r.fcall("wshub_publish", 1, channel, "after the return")  # type: ignore[misc]
                text = await until(lambda t: "after the return" in t)
            for line in ["before the drop", *(f"while away {i}" for i in range(5)), "after the return"]:
                assert text.count(line) == 1, (line, text)
            assert text.index("while away 4") < text.index("after the return"), text
        await listener.close()
        await r.aclose()

    asyncio.run(scenario())
