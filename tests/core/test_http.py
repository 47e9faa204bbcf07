"""HTTP decisions of the hub (``Hub._on_request``): upgrade, or one answer then close.

RFC 6455 section 4.2.1 (reading the client's opening handshake) and 4.2.2
(sending the server's opening handshake); RFC 9110 for the plain answers.
Every non-101 answer is a complete response with ``Connection: close``,
followed in the same batch by ``CloseClient`` (flush, not abort).
"""

from __future__ import annotations

import pytest

from wshub_core import CloseClient, SendToClient

from .harness import (
    SUB,
    WS_KEY,
    Client,
    Harness,
    make_config,
    parse_http_answer,
    upgrade_request,
)

GOOD = [
    (b"Host", b"hub.test"),
    (b"Upgrade", b"websocket"),
    (b"Connection", b"Upgrade"),
    (b"Sec-WebSocket-Key", WS_KEY),
    (b"Sec-WebSocket-Version", b"13"),
]


def without(name: bytes) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in GOOD if k != name]


def replaced(name: bytes, value: bytes) -> list[tuple[bytes, bytes]]:
    return [(k, value if k == name else v) for k, v in GOOD]


def ask(h: Harness, request: bytes, *, method: bytes = b"GET") -> Client:
    client = h.open(method=method)
    client.send_raw(request)
    return client


def assert_answered(h: Harness, client: Client, status: int) -> bytes:
    """One complete answer with ``status``, then CloseClient(abort=False), and the conn forgotten."""
    mine = [a for _, a in h.log if getattr(a, "conn", None) == client.conn]
    assert [type(a) for a in mine] == [SendToClient, CloseClient], mine
    assert mine[1] == CloseClient(conn=client.conn, abort=False)
    answer = parse_http_answer(bytes(client.raw), method=client.method)
    assert answer is not None, bytes(client.raw)
    assert answer.status == status, (answer, bytes(client.raw))
    assert answer.headers[b"connection"] == b"close"
    assert answer.headers[b"content-length"] == str(len(answer.body)).encode() or client.method == b"HEAD"
    # The answered socket is forgotten at once; any others are untouched.
    assert h.hub.client_count() == sum(not c.closed for c in h.clients.values())
    return answer.body


class TestUpgrade_RFC6455_4_2_2:
    def test_valid_upgrade_is_101_and_stays_open(self) -> None:
        h = Harness()
        client = ask(h, upgrade_request())
        assert client.status == 101
        assert not client.closed
        assert h.hub.client_count() == 1

    def test_wsproto_client_handshake_is_accepted(self) -> None:
        h = Harness()
        client = h.connect("alice")
        assert client.status == 101 and client.open

    def test_custom_server_url_and_client_key(self) -> None:
        h = Harness(make_config("serverUrl: /hub/socket\nclientKey: token\n"))
        ok = ask(h, upgrade_request(b"/hub/socket?token=abc"))
        assert ok.status == 101
        assert h.commands(SUB)[-1][:2] == [b"SUBSCRIBE", h.channel("groups-new:abc")]
        assert_answered(h, ask(h, upgrade_request(b"/ws?token=abc")), 404)
        h2 = Harness(make_config("serverUrl: /hub/socket\nclientKey: token\n"))
        assert_answered(h2, ask(h2, upgrade_request(b"/hub/socket?session_key=abc")), 400)

    def test_percent_encoded_key(self) -> None:
        h = Harness()
        client = ask(h, upgrade_request(b"/ws?session_key=a%20b%2Fc&x=1"))
        assert client.status == 101
        assert h.commands(SUB)[-1][:2] == [b"SUBSCRIBE", h.channel("groups-new:a b/c")]


class TestKeysAreUtf8:
    """A key is percent-decoded to bytes, then read as UTF-8 strictly (docs/protocol.md)."""

    @pytest.mark.parametrize("target", [b"/ws?session_key=%FF%FE", b"/ws?session_key=%FE%FF",
                                        b"/ws?session_key=a%C3", b"/ws?session_key=%ED%A0%80"])
    def test_a_key_that_is_not_utf8_is_refused_with_400(self, target: bytes) -> None:
        # Before, both %FF%FE and %FE%FF became U+FFFD U+FFFD: one key, shared groups and client-data.
        h = Harness()
        client = ask(h, upgrade_request(target))
        assert b"session_key is not valid UTF-8" in assert_answered(h, client, 400)
        assert h.commands(SUB) == []

    def test_a_utf8_key_is_taken_as_written(self) -> None:
        h = Harness()
        assert ask(h, upgrade_request(b"/ws?session_key=%C3%A9t%C3%A9")).status == 101
        assert h.commands(SUB)[-1][:2] == [b"SUBSCRIBE", h.channel("groups-new:\u00e9t\u00e9")]


class TestRejections_RFC6455_4_2_1:
    @pytest.mark.parametrize(
        ("request_bytes", "status"),
        [
            (upgrade_request(b"/ws"), 400),  # no key at all
            (upgrade_request(b"/ws?session_key="), 400),  # empty key
            (upgrade_request(b"/ws?other=1"), 400),  # another parameter only
            (upgrade_request(b"/ws?session_key=k", headers=without(b"Sec-WebSocket-Key")), 400),
            (upgrade_request(b"/ws?session_key=k", headers=without(b"Connection")), 400),
            (upgrade_request(b"/ws?session_key=k", headers=without(b"Host")), 400),  # h11: HTTP/1.1 needs Host
            (upgrade_request(b"/nope?session_key=k"), 404),
            (upgrade_request(b"/ws/extra?session_key=k"), 404),
            (upgrade_request(b"/ws?session_key=k", method=b"POST",
                             extra=[(b"Content-Length", b"0")]), 405),
            (upgrade_request(b"/ws?session_key=k", method=b"PUT",
                             extra=[(b"Content-Length", b"0")]), 405),
            (upgrade_request(b"/ws?session_key=k", headers=without(b"Upgrade")), 426),
            (upgrade_request(b"/ws?session_key=k", headers=replaced(b"Upgrade", b"h2c")), 426),
            (upgrade_request(b"/ws?session_key=k", headers=replaced(b"Sec-WebSocket-Version", b"8")), 426),
            (b"NOT HTTP AT ALL\r\n\r\n", 400),
        ],
        ids=["no-key", "empty-key", "other-param", "no-ws-key", "no-connection", "no-host", "404", "404-sub",
             "405-post", "405-put", "426-no-upgrade", "426-h2c", "426-version", "garbage"],
    )
    def test_answer_then_close(self, request_bytes: bytes, status: int) -> None:
        h = Harness()
        assert_answered(h, ask(h, request_bytes), status)

    def test_405_names_the_allowed_method(self) -> None:
        h = Harness()
        client = ask(h, upgrade_request(method=b"POST", extra=[(b"Content-Length", b"0")]))
        assert_answered(h, client, 405)
        answer = parse_http_answer(bytes(client.raw))
        assert answer is not None and answer.headers[b"allow"] == b"GET"

    def test_426_names_the_protocol(self) -> None:
        h = Harness()
        client = ask(h, upgrade_request(headers=without(b"Upgrade")))
        assert_answered(h, client, 426)
        answer = parse_http_answer(bytes(client.raw))
        assert answer is not None and answer.headers[b"upgrade"] == b"websocket"

    def test_431_request_head_too_large(self) -> None:
        h = Harness(make_config(max_header_size=512))
        request = upgrade_request(extra=[(b"Cookie", b"c" * 1024)])
        client = h.open()
        client.send_raw(request, chunk=100)
        assert_answered(h, client, 431)

    def test_rejected_handshake_subscribes_nothing(self) -> None:
        h = Harness()
        before = list(h.commands(SUB))
        assert_answered(h, ask(h, upgrade_request(b"/ws")), 400)
        assert h.hub.is_empty()
        assert h.commands(SUB) == before and h.redis.published == []

    @pytest.mark.parametrize(
        "header",
        [
            (b"Connection", b"Upgrade\xff"),
            (b"Host", b"h\xe9te"),
            (b"Sec-WebSocket-Protocol", b"chat\xe9"),
            (b"Sec-WebSocket-Extensions", b"permessage-deflate\xff"),
        ],
        ids=["connection", "host", "protocol", "extensions"],
    )
    def test_non_ascii_handshake_header_is_400_not_an_exception(self, header: tuple[bytes, bytes]) -> None:
        """obs-text (RFC 9110 section 5.5) is legal HTTP that h11 passes on; the handshake must reject it."""
        h = Harness()
        headers = [(k, v) for k, v in GOOD if k != header[0]] + [header]
        assert_answered(h, ask(h, upgrade_request(headers=headers)), 400)


class TestOrigin_RFC6455_10_2:
    def make(self) -> Harness:
        return Harness(make_config(allowed_origins=("https://app.example", "https://admin.example")))

    def test_allowed_origin_upgrades(self) -> None:
        h = self.make()
        assert ask(h, upgrade_request(extra=[(b"Origin", b"https://admin.example")])).status == 101

    @pytest.mark.parametrize("origin", [b"https://evil.example", b"https://app.example.evil", b"null"])
    def test_other_origin_is_403(self, origin: bytes) -> None:
        h = self.make()
        assert_answered(h, ask(h, upgrade_request(extra=[(b"Origin", origin)])), 403)

    def test_missing_origin_is_403_when_a_list_is_configured(self) -> None:
        h = self.make()
        assert_answered(h, ask(h, upgrade_request()), 403)

    def test_any_origin_when_the_list_is_empty(self) -> None:
        h = Harness()
        assert ask(h, upgrade_request(extra=[(b"Origin", b"https://anything")])).status == 101


class TestServiceUnavailable:
    def test_503_over_max_connections(self) -> None:
        h = Harness(make_config(max_connections=2))
        first, second = h.connect("a"), h.connect("b")
        assert first.open and second.open
        third = ask(h, upgrade_request(b"/ws?session_key=c"))
        assert_answered(h, third, 503)
        answer = parse_http_answer(bytes(third.raw))
        assert answer is not None and answer.headers[b"retry-after"] == b"5"
        first.close()
        assert ask(h, upgrade_request(b"/ws?session_key=c")).status == 101  # a slot freed up

    def test_sockets_still_in_http_do_not_count(self) -> None:
        h = Harness(make_config(max_connections=1))
        idle = h.open()  # connected, says nothing
        assert ask(h, upgrade_request()).status == 101
        assert not idle.closed

    def test_503_during_shutdown(self) -> None:
        h = Harness()
        h.shutdown()
        assert not h.listening
        late = ask(h, upgrade_request())  # accepted by the shell before StopListening took effect
        assert_answered(h, late, 503)
        assert h.hub.is_empty()


class TestAdminEndpoints:
    def test_healthz(self) -> None:
        h = Harness(auto_connect=False)  # alive even with Redis down
        client = ask(h, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert assert_answered(h, client, 200) == b"ok\n"

    def test_readyz_ready(self) -> None:
        h = Harness()
        h.connect("a")
        client = ask(h, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert_answered(h, client, 200)

    def test_readyz_503_while_redis_is_down(self) -> None:
        h = Harness(auto_connect=False)
        client = ask(h, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"redis" in assert_answered(h, client, 503)

    def test_readyz_503_until_subscriptions_are_confirmed(self) -> None:
        h = Harness(auto_reply=False)
        h.connect("a")
        client = ask(h, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert_answered(h, client, 503)
        assert b"subscriptions not confirmed" in bytes(client.raw)
        h.deliver(SUB)
        client = ask(h, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert_answered(h, client, 200)

    def test_readyz_503_during_shutdown(self) -> None:
        h = Harness()
        h.shutdown()
        client = ask(h, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"shutting down" in assert_answered(h, client, 503)

    def test_metrics(self) -> None:
        h = Harness()
        h.connect("a").text("hello")
        client = ask(h, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert_answered(h, client, 200)
        answer = parse_http_answer(bytes(client.raw))
        assert answer is not None
        assert answer.headers[b"content-type"] == b"text/plain; version=0.0.4"
        text = answer.body.decode()
        assert "wshub_connections_open 1\n" in text
        assert "wshub_messages_in_total 1\n" in text
        assert 'wshub_redis_up{link="subscriber"} 1\n' in text

    def test_admin_paths_refuse_post(self) -> None:
        h = Harness()
        client = ask(h, b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        assert_answered(h, client, 405)

    def test_head_healthz_is_200_without_a_body(self) -> None:
        """RFC 9110 section 9.3.2: HEAD is GET without the content; the hub allows HEAD here."""
        h = Harness()
        client = ask(h, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n", method=b"HEAD")
        assert assert_answered(h, client, 200) == b""

    def test_server_url_wins_over_an_admin_path(self) -> None:
        h = Harness(make_config(server_url="/healthz"))
        assert ask(h, upgrade_request(b"/healthz?session_key=k")).status == 101


class TestHandshakeTimeout:
    def test_silent_socket_is_aborted_after_handshake_timeout(self) -> None:
        h = Harness(make_config(handshake_timeout=5.0))
        client = h.open()
        client.send_raw(upgrade_request()[:20])
        h.advance(4.999)
        assert not client.closed
        h.advance(0.001)
        assert client.closed and client.abort is True
        assert client.raw == b""  # no answer to a request that never completed
        assert h.hub.is_empty()

    def test_upgraded_socket_is_not_closed_by_the_handshake_timer(self) -> None:
        h = Harness(make_config(handshake_timeout=5.0, pong_wait=100.0))
        client = h.connect("k")
        h.advance(50)
        assert client.open
