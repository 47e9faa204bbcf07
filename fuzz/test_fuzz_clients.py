"""Hostile client bytes, before and after the WebSocket handshake.

The invariant (h11's ``fuzz/afl-server.py``, websockets' ``fuzzing/``): the core
never raises, and every input is either accepted or answered with a documented
error --

- before the upgrade: a complete HTTP answer with a documented status, then
  ``CloseClient`` (or, for a head that never completes, an abort at the
  handshake deadline);
- after the upgrade: a close frame with a code in {1000, 1001, 1002, 1007,
  1008, 1009, 1011} (or the echo of a valid close the client sent), then
  ``CloseClient``.

After the upgrade, a reference parser (a wsproto server connection fed the
same bytes) says which messages the client really sent: the hub PUBLISHes
exactly those, in order, up to the point where it closed.
"""

from __future__ import annotations

from core.harness import (
    DOCUMENTED_CLOSE_CODES,
    DOCUMENTED_HTTP_STATUSES,
    WS_KEY,
    Client,
    Harness,
    chunked,
    fuzz_examples,
    make_config,
    mutated,
    upgrade_request,
    ws_frame,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType
from wsproto.connection import Connection, ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

FUZZ = settings(max_examples=fuzz_examples(400), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- strategies ---------------------------------------------------------------------


HEADER_NAMES = st.sampled_from([
    b"Host", b"Upgrade", b"Connection", b"Sec-WebSocket-Key", b"Sec-WebSocket-Version", b"Origin",
    b"Sec-WebSocket-Protocol", b"Sec-WebSocket-Extensions", b"Content-Length", b"Transfer-Encoding",
    b"Expect", b"X-Anything",
]) | st.binary(min_size=1, max_size=12)
HEADER_VALUES = st.sampled_from([
    b"websocket", b"Upgrade", b"upgrade, keep-alive", WS_KEY, b"13", b"8", b"chunked", b"gzip", b"0", b"5",
    b"100-continue", b"permessage-deflate; client_max_window_bits", b"chat, superchat", b"",
]) | st.binary(max_size=24)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """Request heads built from plausible and implausible parts."""
    method = draw(st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS", b"G\xffT"]) | st.binary(max_size=6))
    target = draw(st.sampled_from([b"/ws?session_key=k", b"/ws", b"/ws?session_key=", b"/healthz", b"/readyz",
                                   b"/metrics", b"*", b"http://x/ws?session_key=k", b"/ws?session_key=%ff%00"])
                  | st.binary(max_size=20))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 extra"]))
    base = [(k, v) for k, v in [
        (b"Host", b"hub.test"), (b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"),
        (b"Sec-WebSocket-Key", WS_KEY), (b"Sec-WebSocket-Version", b"13"),
    ] if draw(st.booleans())]
    extra = draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=5))
    head = method + b" " + target + b" " + version + b"\r\n"
    head += b"".join(k + b": " + v + b"\r\n" for k, v in [*base, *extra]) + b"\r\n"
    return head + draw(st.sampled_from([b"", b"hello", ws_frame(0x1, b"early")]))


FRAMES = st.builds(
    ws_frame,
    st.integers(0, 15),
    st.binary(max_size=40),
    fin=st.booleans(),
    mask=st.none() | st.binary(min_size=4, max_size=4),
    rsv=st.integers(0, 7),
    length=st.none() | st.integers(0, 200) | st.integers(126, 2**64 - 1),
)


@st.composite
def valid_frames(draw: st.DrawFn) -> bytes:
    """What a real client sends: messages, fragments, pings, a close; encoded by wsproto."""
    proto = Connection(ConnectionType.CLIENT)
    out = b""
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["text", "binary", "fragments", "ping", "pong", "close"]))
        if kind == "text":
            out += proto.send(TextMessage(data=draw(st.text(max_size=30))))
        elif kind == "binary":
            out += proto.send(BytesMessage(data=draw(st.binary(max_size=30))))
        elif kind == "fragments":
            parts = draw(st.lists(st.text(max_size=8), min_size=1, max_size=4))
            for i, part in enumerate(parts):
                out += proto.send(TextMessage(data=part, message_finished=i == len(parts) - 1))
        elif kind == "ping":
            out += proto.send(Ping(payload=draw(st.binary(max_size=20))))
        elif kind == "pong":
            out += proto.send(Ping(payload=b"").response())
        else:
            code = draw(st.sampled_from([1000, 1001, 1011, 3000, 4999]))
            out += proto.send(CloseConnection(code=code, reason=draw(st.text(max_size=10))))
            break
    return out


# -- checks ----------------------------------------------------------------------------


def assert_documented_http_outcome(h: Harness, client: Client) -> None:
    if client.status is None:
        # Nothing answered: still reading the head, or aborted at the handshake deadline.
        assert client.raw == b""
        assert not client.closed or client.abort is True
        return
    if client.status == 101:
        assert client.answer is not None or client.ws is not None
        if client.closed:
            assert client.close_code is not None, "closed after the upgrade without a close frame"
        return
    assert client.status in DOCUMENTED_HTTP_STATUSES, client.status
    assert client.answer is not None, "incomplete HTTP answer"
    assert client.closed and client.abort is False, "an HTTP answer must be followed by CloseClient"


def finish(h: Harness, client: Client) -> None:
    """Let the deadlines pass, then drop the socket: nothing may be left behind."""
    h.advance(h.config.handshake_timeout)
    assert_documented_http_outcome(h, client)
    if not client.closed:
        h.lose(client)
    assert h.hub.is_empty()


# -- before the handshake -------------------------------------------------------------------


class TestHttpHeadFuzz:
    @FUZZ
    @given(st.binary(max_size=400).flatmap(lambda b: chunked(b)))
    def test_random_bytes(self, chunks: list[bytes]) -> None:
        h = Harness(make_config(max_header_size=256))
        client = h.open()
        for chunk in chunks:
            client.send_raw(chunk)
            assert_documented_http_outcome(h, client)
        finish(h, client)

    @FUZZ
    @given(st.data())
    def test_mutated_valid_upgrade(self, data: st.DataObject) -> None:
        request = upgrade_request(extra=data.draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=2)))
        request += data.draw(st.sampled_from([b"", ws_frame(0x1, b"hi"), ws_frame(0x8, b"\x03\xe8")]))
        chunks = data.draw(chunked(data.draw(mutated(request))))
        h = Harness(make_config(max_header_size=512))
        client = h.open()
        client.sent_close = True  # a valid close behind the head is echoed with its own code
        for chunk in chunks:
            client.send_raw(chunk)
            assert_documented_http_outcome(h, client)
        finish(h, client)

    @FUZZ
    @given(st.data())
    def test_generated_requests(self, data: st.DataObject) -> None:
        request = data.draw(requests())
        method = request.split(b" ", 1)[0]
        h = Harness(make_config(allowed_origins=("https://ok.example",)) if data.draw(st.booleans())
                    else make_config())
        client = h.open(method=method if method in (b"GET", b"HEAD", b"POST") else b"GET")
        client.sent_close = True
        for chunk in data.draw(chunked(request)):
            client.send_raw(chunk)
            assert_documented_http_outcome(h, client)
        finish(h, client)


# -- after the handshake ---------------------------------------------------------------------


def feed_after_upgrade(h: Harness, client: Client, chunks: list[bytes]) -> None:
    """Feed the hub and a reference parser the same bytes; compare what each saw."""
    ref = Connection(ConnectionType.SERVER)
    messages: list[bytes] = []
    parts: list[bytes] = []
    ref_done = False
    for chunk in chunks:
        if client.closed:
            break
        if not ref_done:
            ref.receive_data(chunk)
            for event in ref.events():
                if isinstance(event, TextMessage | BytesMessage):
                    parts.append(event.data.encode() if isinstance(event.data, str) else bytes(event.data))
                    if event.message_finished:
                        messages.append(b"".join(parts))
                        parts = []
                elif isinstance(event, CloseConnection):
                    ref_done = True
                    if ref.state is ConnectionState.REMOTE_CLOSING:
                        client.sent_close = True  # a valid close: the hub echoes its code
                    break
        client.send_raw(chunk)
        if client.closed:
            assert client.close_code is not None
            assert client.close_code in DOCUMENTED_CLOSE_CODES or client.sent_close
    published = h.published(h.channel("client-data:k"))
    if client.closed:
        assert published == messages[: len(published)]
    else:
        assert published == messages
    assert all(len(m) <= h.config.max_message_size for m in published)
    h.advance(h.config.pong_wait)  # keepalive deadlines: auto pong answers, or 1011
    if not client.closed:
        h.lose(client)
    assert h.hub.is_empty()


class TestFrameFuzz:
    @FUZZ
    @given(st.binary(max_size=300).flatmap(lambda b: chunked(b)))
    def test_random_bytes(self, chunks: list[bytes]) -> None:
        h = Harness(make_config(max_message_size=64))
        client = h.connect("k", auto_pong=False)  # every byte the hub reads goes through the reference
        feed_after_upgrade(h, client, chunks)

    @FUZZ
    @given(st.lists(FRAMES, max_size=6).map(b"".join).flatmap(lambda b: chunked(b)))
    def test_generated_frames_and_huge_lengths(self, chunks: list[bytes]) -> None:
        h = Harness(make_config(max_message_size=64))
        client = h.connect("k", auto_pong=False)  # every byte the hub reads goes through the reference
        feed_after_upgrade(h, client, chunks)

    @FUZZ
    @given(st.data())
    def test_mutated_valid_frames(self, data: st.DataObject) -> None:
        frames = data.draw(mutated(data.draw(valid_frames())))
        h = Harness(make_config(max_message_size=64))
        client = h.connect("k", auto_pong=False)  # every byte the hub reads goes through the reference
        feed_after_upgrade(h, client, data.draw(chunked(frames)))

    @FUZZ
    @given(st.data())
    def test_head_and_frames_in_one_stream(self, data: st.DataObject) -> None:
        """The request head and hostile frames behind it, cut anywhere."""
        stream = upgrade_request(b"/ws?session_key=k") + data.draw(mutated(data.draw(valid_frames())))
        h = Harness(make_config(max_message_size=64))
        client = h.open()
        client.sent_close = True
        for chunk in data.draw(chunked(stream)):
            if client.closed:
                break
            client.send_raw(chunk)
            assert_documented_http_outcome(h, client)
        assert client.status == 101
        finish(h, client)
