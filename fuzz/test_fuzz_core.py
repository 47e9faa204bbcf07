"""Hostile bytes on every input of the core (h11's fuzz/afl-server.py invariant).

Any input is either accepted or answered with a documented error: an HTTP
answer with a documented status and a close, a close frame with a documented
code, or a dropped-and-redialled Redis link. Never an exception.

``WSHUB_FUZZ_EXAMPLES`` sets the examples per test (default 150; a long
campaign: ``WSHUB_FUZZ_EXAMPLES=20000 pytest fuzz/``).
"""

from __future__ import annotations

import os
import struct

import hiredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection
from wsproto.events import AcceptConnection, CloseConnection, Request

from wshub_core import (
    Action,
    CloseClient,
    CloseLink,
    ConfigError,
    Hub,
    OpenLink,
    RedisLink,
    SendToClient,
    SendToClients,
    SendToLink,
    load_config,
)

EXAMPLES = int(os.environ.get("WSHUB_FUZZ_EXAMPLES", "150"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

HTTP_STATUSES = {101, 200, 400, 403, 404, 405, 426, 431, 501, 503}  # docs/protocol.md
CLOSE_CODES = {1000, 1001, 1002, 1007, 1008, 1009, 1011}  # CloseCode; a client's own code is echoed
CONFIG = load_config("broker: redis\nwebSocket:\n  maxMessageSize: 300\n  maxHeaderSize: 1024\n", source="fuzz")


def resp(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def new_hub() -> Hub:
    """A hub with both Redis links up and a subscriber that has confirmed nothing yet."""
    hub = Hub(config=CONFIG, seed=7)
    hub.start(0.0)
    for action in hub.actions():
        assert isinstance(action, OpenLink)
        hub.link_opened(action.link, 0.0)
        hub.link_data(action.link, b"+PONG\r\n", 0.0)  # the handshake: without AUTH/SELECT, a PING
    hub.actions()
    return hub


def upgrade(hub: Hub, key: str = "k") -> tuple[int, Connection]:
    """A real wsproto client's handshake; returns the conn id and the client's frame codec."""
    client = WSConnection(ConnectionType.CLIENT)
    conn = hub.client_opened(1.0)
    hub.client_data(conn, client.send(Request(host="h", target=f"/ws?session_key={key}")), 1.0)
    for action in hub.actions():
        if isinstance(action, SendToClient):
            client.receive_data(action.data)
    assert any(isinstance(e, AcceptConnection) for e in client.events())
    return conn, Connection(ConnectionType.CLIENT)


def client_bytes(actions: list[Action], conn: int) -> bytes:
    return b"".join(a.data for a in actions if (isinstance(a, SendToClient) and a.conn == conn)
                    or (isinstance(a, SendToClients) and conn in a.conns))


def closed(actions: list[Action], conn: int) -> bool:
    return any(isinstance(a, CloseClient) and a.conn == conn for a in actions)


# -- client bytes ------------------------------------------------------------------

http_like = st.one_of(
    st.binary(max_size=2000),
    st.builds(
        lambda method, target, headers, tail: b"%s %s HTTP/1.1\r\n%s\r\n%s" % (method, target, headers, tail),
        st.sampled_from([b"GET", b"POST", b"HEAD", b"GE T", b""]),
        st.sampled_from([b"/ws?session_key=a", b"/ws", b"/ws?session_key=", b"/healthz", b"/readyz",
                         b"/metrics", b"/x", b"*", b"/ws?session_key=%ff"]),
        st.lists(st.sampled_from([b"Host: h\r\n", b"Upgrade: websocket\r\n", b"Connection: Upgrade\r\n",
                                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
                                  b"Sec-WebSocket-Version: 13\r\n", b"Sec-WebSocket-Version: 8\r\n",
                                  b"Origin: \xff\r\n", b"X: " + b"y" * 1100 + b"\r\n", b"Bad header\r\n",
                                  b"Content-Length: 5\r\n", b"Transfer-Encoding: chunked\r\n"]),
                 max_size=8).map(b"".join),
        st.binary(max_size=50),
    ),
)


@fuzz
@given(data=http_like, split=st.integers(1, 64))
def test_request_bytes_get_101_or_a_documented_answer(data: bytes, split: int) -> None:
    hub = new_hub()
    conn = hub.client_opened(1.0)
    for i in range(0, len(data), split):
        hub.client_data(conn, data[i:i + split], 1.0)
    hub.client_eof(conn, 2.0)
    actions = hub.actions()
    out = client_bytes(actions, conn)
    if out:
        status = int(out.split(b" ", 2)[1])
        assert status in HTTP_STATUSES, out[:80]
    hub.handle_timer(100.0)  # handshake timeout, keepalive: whatever is due
    hub.actions()
    hub.client_lost(conn, 100.0)
    hub.actions()
    assert hub.is_empty()


def frame(opcode: int, payload: bytes, fin: bool, rsv: int, masked: bool, mask: bytes) -> bytes:
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    bit = 0x80 if masked else 0
    head = (struct.pack("!BB", first, bit | n) if n < 126 else struct.pack("!BBH", first, bit | 126, n))
    if not masked:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


frames = st.lists(
    st.one_of(
        st.builds(frame, st.integers(0, 15), st.binary(max_size=400), st.booleans(), st.integers(0, 7),
                  st.booleans(), st.binary(min_size=4, max_size=4)),
        st.builds(frame, st.sampled_from([0x1, 0x2, 0x0, 0x8, 0x9, 0xA]), st.binary(max_size=140),
                  st.booleans(), st.just(0), st.just(True), st.binary(min_size=4, max_size=4)),
        st.binary(max_size=40),  # garbage between frames
        st.just(b"\x81\xff" + b"\x7f" * 8),  # a length header claiming 2**63 bytes
    ),
    max_size=12,
).map(b"".join)


@fuzz
@given(data=frames, split=st.integers(1, 128))
def test_frame_bytes_are_accepted_or_closed_with_a_documented_code(data: bytes, split: int) -> None:
    hub = new_hub()
    conn, codec = upgrade(hub)
    other, _ = upgrade(hub, "other")
    sent_codes: set[int] = set()
    for i in range(0, len(data), split):
        hub.client_data(conn, data[i:i + split], 2.0)
    actions = hub.actions()
    codec.receive_data(client_bytes(actions, conn))
    for event in codec.events():
        if isinstance(event, CloseConnection):
            sent_codes.add(event.code)
    for code in sent_codes:
        # 3000-4999: the client's own code echoed; 1005: the echo of a close frame without a code
        assert code in CLOSE_CODES or code == 1005 or 3000 <= code <= 4999, code
    if sent_codes:
        assert closed(actions, conn)
    # Whatever it did, the other client is untouched and the hub keeps working.
    assert not closed(actions, other)
    hub.client_lost(conn, 3.0)
    hub.client_lost(other, 3.0)
    hub.actions()
    assert hub.is_empty()


# -- Redis bytes -------------------------------------------------------------------

def _reply(kind: bytes, channel: bytes, tail: bytes) -> bytes:
    return resp(kind, channel, tail)


resp_like = st.lists(
    st.one_of(
        st.binary(max_size=60),
        st.builds(_reply, st.sampled_from([b"message", b"subscribe", b"unsubscribe", b"pong", b"pmessage"]),
                  st.sampled_from([b"ws-hub:group-data:g", b"ws-hub:groups-new:k", b"x"]),
                  st.one_of(st.binary(max_size=40), st.sampled_from([b"1", b'["g"]', b"g,h", b'{"a":1}']))),
        st.sampled_from([b"+OK\r\n", b"-ERR no\r\n", b":1\r\n", b"$-1\r\n", b"*-1\r\n", b"+PONG\r\n",
                         b"*2\r\n:1\r\n*1\r\n$1\r\nx\r\n", b"%1\r\n+a\r\n+b\r\n", b"_\r\n", b"$5\r\nab"]),
    ),
    max_size=10,
).map(b"".join)


@fuzz
@given(sub_data=resp_like, cmd_data=resp_like, split=st.integers(1, 64))
def test_redis_bytes_are_accepted_or_the_link_is_redialled(sub_data: bytes, cmd_data: bytes, split: int) -> None:
    hub = new_hub()
    conn, _ = upgrade(hub)
    hub.client_data(conn, frame(0x1, b"hello", True, 0, True, b"abcd"), 2.0)  # a PUBLISH to answer
    hub.actions()
    links = hub.broker.current_links()  # each role's link, up since new_hub()
    dropped: set[RedisLink] = set()
    for role, data in ((RedisLink.SUBSCRIBER, sub_data), (RedisLink.COMMANDS, cmd_data)):
        for i in range(0, len(data), split):
            hub.link_data(links[role], data[i:i + split], 3.0)  # after a drop: a stale id, ignored
            for action in hub.actions():
                if isinstance(action, CloseLink):
                    assert action.link == links[role]
                    dropped.add(role)
    # A dropped link is dialled again once its backoff (at most reconnectMax, 10 s) has
    # passed, and the hub recovers; 15 s is still well inside pongWait (60 s).
    hub.handle_timer(15.0)
    dials = {a.link for a in hub.actions() if isinstance(a, OpenLink)}
    redialled = {role: link for role, link in hub.broker.current_links().items() if link in dials}
    assert dropped <= redialled.keys()
    assert not dials & set(links.values())  # a redial is a new link id
    actions = []
    for link in redialled.values():
        hub.link_opened(link, 15.0)
        actions += hub.actions()
        hub.link_data(link, b"+PONG\r\n", 15.0)
    actions += hub.actions()
    if RedisLink.SUBSCRIBER in redialled:
        resubscribed = b"".join(a.data for a in actions if isinstance(a, SendToLink)
                                and a.link == redialled[RedisLink.SUBSCRIBER])
        assert b"ws-hub:groups-new:k" in resubscribed  # the client's key is subscribed again
    assert closed(actions, conn) is False  # Redis trouble never closes a client
    reader = hiredis.Reader()
    for a in actions:
        if isinstance(a, SendToLink):
            reader.feed(a.data)  # what the hub sends is well-formed RESP
    while reader.gets() is not False:
        pass


# -- config text -------------------------------------------------------------------

yaml_like = st.one_of(
    st.text(max_size=200),
    st.builds(lambda key, value: f"{key}: {value}\n", st.sampled_from(
        ["address", "clientKey", "serverUrl", "workers", "redis", "webSocket", "tls", "nope"]),
        st.sampled_from(["", "1", "-1", "x", "[]", "{}", "1e9", "':'", "null", "true", "{a: 1}"])),
    st.builds(lambda section, key, value: f"{section}:\n  {key}: {value}\n",
              st.sampled_from(["redis", "webSocket", "tls"]),
              st.sampled_from(["address", "timeout", "pongWait", "maxMessageSize", "allowedOrigins", "certFile",
                               "db", "reconnectMax", "x"]),
              st.sampled_from(["0", "-5", "abc", "[a, 1]", "redis://u:p@h:1/x", "redis://:0", "1.5", "''"])),
)


@fuzz
@given(text=yaml_like, env=st.dictionaries(st.sampled_from(["WSHUB_ADDRESS", "WSHUB_WORKERS",
                                                            "WSHUB_WEBSOCKET_PONG_WAIT", "WSHUB_REDIS_ADDRESS"]),
                                           st.text(max_size=20), max_size=2))
def test_config_text_loads_or_raises_config_error_naming_the_source(text: str, env: dict[str, str]) -> None:
    try:
        load_config(text, source="fuzz.yaml", environ=env)
    except ConfigError as exc:
        assert "fuzz.yaml" in str(exc) or "environment variable" in str(exc), exc
