"""The HTTP API in the core: when a call is answered, what it publishes, and the event stream's channels.

No sockets: raw HTTP bytes into the hub, a fake Redis behind it (or the memory
broker), a virtual clock. The process-level tests are tests/test_api.py.
"""

from __future__ import annotations

import json

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wshub_core import CloseClient

from .harness import CMD, SUB, Client, Harness, fuzz_examples, make_config

KEY = "k3y"


def api_config(broker: str = "redis", extra: str = ""):  # type: ignore[no-untyped-def]
    return make_config(f"broker: {broker}\napi:\n  key: {KEY}\n  maxBodySize: 64\n{extra}")


def api_request(method: bytes, target: bytes, body: bytes = b"", *, key: str | None = KEY,
                headers: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1", b"host: hub.test"]
    if key is not None:
        lines.append(b"authorization: Bearer " + key.encode())
    if body or method in (b"POST", b"PUT"):
        lines.append(b"content-length: %d" % len(body))
    lines += [k + b": " + v for k, v in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def answers(client: Client) -> list[tuple[int, bytes]]:
    """Every complete answer on the connection so far (keep-alive: several), parsed by h11."""
    parser = h11.Connection(h11.CLIENT)
    out: list[tuple[int, bytes]] = []
    if not client.raw:
        return out  # (receive_data(b"") would mean EOF)
    parser.receive_data(bytes(client.raw))
    status, body = 0, b""
    while True:
        parser.send(h11.Request(method="POST", target="/", headers=[("host", "x"), ("content-length", "0")]))
        parser.send(h11.EndOfMessage())
        while True:
            event = parser.next_event()
            if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                return out
            if isinstance(event, h11.Response):
                status, body = event.status_code, b""
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                out.append((status, body))
                break
        if parser.our_state is not h11.DONE or parser.their_state is not h11.DONE:
            return out
        parser.start_next_cycle()


class TestPublishIsAnsweredWhenTheBrokerTookIt:
    def test_redis_answers_the_publish_first(self) -> None:
        h = Harness(api_config(), auto_reply=False)
        api = h.open()
        api.send_raw(api_request(b"POST", b"/api/groups/news", b"hello"))
        assert h.commands(CMD)[-1] == [b"PUBLISH", h.channel("group-data:news"), b"hello"]
        assert answers(api) == []  # Redis has not answered the PUBLISH yet
        h.deliver(CMD)
        assert answers(api) == [(200, b'{"ok": true}\n')]
        assert not api.closed  # kept alive for the next call

    def test_a_publish_lost_in_a_reconnect_is_resent_then_answered(self) -> None:
        h = Harness(api_config(), auto_reply=False)
        api = h.open()
        api.send_raw(api_request(b"POST", b"/api/groups/news", b"once"))
        h.drop_redis(CMD, lost_in_transit=True)
        h.advance(1.0)
        assert answers(api) == []
        h.deliver(CMD)
        assert answers(api) == [(200, b'{"ok": true}\n')]
        assert h.published(h.channel("group-data:news")).count(b"once") >= 1

    def test_a_refused_publish_is_a_502_with_redis_words(self) -> None:
        h = Harness(api_config(), auto_reply=False)
        api = h.open()
        api.send_raw(api_request(b"POST", b"/api/groups/news", b"x"))
        fake = h.redis.links[CMD]
        fake.pending[-1].data = b"-ERR Readonly replica\r\n"
        h.deliver(CMD)
        [(status, body)] = answers(api)
        assert status == 502 and "Readonly replica" in json.loads(body)["error"]

    def test_the_memory_broker_answers_at_once(self) -> None:
        h = Harness(api_config("memory"))
        member = h.connect("alice")
        h.hub.broker.publish(h.channel("groups-new:alice"), b'["g"]')
        h.run()
        api = h.open()
        api.send_raw(api_request(b"POST", b"/api/groups/g", b"hi"))
        assert answers(api) == [(200, b'{"ok": true}\n')]
        assert member.messages == ["hi"]

    def test_keep_alive_serves_many_calls_on_one_connection(self) -> None:
        h = Harness(api_config("memory"))
        api = h.open()
        api.send_raw(b"".join(api_request(b"POST", b"/api/groups/g%d" % i, b"x") for i in range(5)))
        assert [status for status, _ in answers(api)] == [200] * 5
        assert not api.closed
        assert 'wshub_http_responses_total{status="200"} 5' in h.hub.metrics_text()  # each answer counted once
        h.lose(api)
        assert 'wshub_http_responses_total{status="200"} 5' in h.hub.metrics_text()


class TestBodies:
    @pytest.mark.parametrize("broker", ["memory", "redis"])
    def test_over_the_bound_is_413_and_nothing_is_published(self, broker: str) -> None:
        h = Harness(api_config(broker))
        api = h.open()
        api.send_raw(api_request(b"POST", b"/api/groups/g", b"x" * 65))
        [(status, body)] = answers(api)
        assert status == 413, body
        assert api.closed
        assert h.published(h.channel("group-data:g")) == []

    def test_a_slow_body_is_cut_at_the_handshake_timeout(self) -> None:
        h = Harness(api_config("memory", "webSocket:\n  handshakeTimeout: 2\n"))
        api = h.open()
        api.send_raw(api_request(b"POST", b"/api/groups/g", b"0123456789")[:-5])
        h.advance(2.5)
        assert api.closed

    @pytest.mark.parametrize(("body", "why"), [
        ('["news"]'.encode("utf-8-sig"), "the body is not JSON: Unexpected UTF-8 BOM"),
        ('["news"]'.encode("utf-16"), "the body is not UTF-8"),
        ('["news"]'.encode("utf-32-le"), "the body is not JSON"),
    ])
    def test_groups_must_be_utf8_json_as_the_hubs_read_it(self, body: bytes, why: str) -> None:
        h = Harness(api_config())
        api = h.open()
        api.send_raw(api_request(b"PUT", b"/api/keys/k/groups", body))
        [(status, answer)] = answers(api)
        assert status == 400 and json.loads(answer)["error"].startswith(why), answer
        assert h.published(h.channel("groups-new:k")) == []

    def test_groups_body_is_checked_before_it_is_published(self) -> None:
        h = Harness(api_config())
        api = h.open()
        api.send_raw(api_request(b"PUT", b"/api/keys/k/groups", b'"news"'))
        [(status, body)] = answers(api)
        assert status == 400 and json.loads(body) == {"error": "the body must be a JSON array of strings, got str"}
        assert h.published(h.channel("groups-new:k")) == []


class TestKeyChannels:
    def test_send_and_kick_reach_only_the_keys_connections(self) -> None:
        h = Harness(api_config())
        a1, a2, b = h.connect("a"), h.connect("a"), h.connect("b")
        h.redis.publish(h.channel("client-send:a"), b"to a")
        h.run()
        assert a1.messages == a2.messages == ["to a"] and b.messages == []
        h.redis.publish(h.channel("client-kick:a"), ("b" * 200 + "é").encode())
        h.run()
        assert (a1.close_code, a2.close_code, b.close_code) == (4000, 4000, None)
        assert a1.close_reason == "b" * 123

    def test_the_key_channels_are_released_with_the_last_connection(self) -> None:
        h = Harness(api_config())
        client = h.connect("a")
        assert {h.channel(f"{kind}:a") for kind in ("client-send", "client-kick")} <= h.redis.links[SUB].subscribed
        client.close()
        h.run()
        assert h.redis.links[SUB].subscribed == set()


class TestEventStream:
    def open_stream(self, h: Harness) -> Client:
        stream = h.open()
        stream.send_raw(api_request(b"GET", b"/api/events"))
        assert bytes(stream.raw).startswith(b"HTTP/1.1 200 OK\r\n"), bytes(stream.raw)
        assert b"content-type: text/event-stream" in bytes(stream.raw).lower()
        return stream

    @pytest.mark.parametrize("broker", ["memory", "redis"])
    def test_events_and_what_the_stream_needs(self, broker: str) -> None:
        h = Harness(api_config(broker))
        stream = self.open_stream(h)
        if broker == "redis":
            assert h.redis.links[SUB].patterns == {h.channel("client-data:*")}
            assert {h.channel("client-new"), h.channel("client-gone")} <= h.redis.links[SUB].subscribed
        member = h.connect("alice")
        member.text("hi")
        h.run()
        member.close()
        h.run()
        raw = bytes(stream.raw)
        for event in (b'event: client-new\ndata: {"key": "alice"}\n\n',
                      b'event: client-data\ndata: {"key": "alice", "data": "hi"}\n\n',
                      b'event: client-gone\ndata: {"key": "alice"}\n\n'):
            assert event in raw, raw
        h.lose(stream)
        if broker == "redis":
            assert h.redis.links[SUB].patterns == set() and h.redis.links[SUB].subscribed == set()
        assert h.hub.subscribed_channels() == set()

    def test_the_hub_is_not_ready_until_the_pattern_is_confirmed(self) -> None:
        h = Harness(api_config(), auto_reply=False)
        assert h.hub.ready
        stream = h.open()
        stream.send_raw(api_request(b"GET", b"/api/events"))
        assert not h.hub.ready  # SUBSCRIBE client-new/client-gone and PSUBSCRIBE sent, not confirmed
        replies = h.redis.links[SUB].pending
        assert [r.kind for r in replies] == ["subscribe", "subscribe", "psubscribe"]
        h.deliver(SUB, count=2)
        assert not h.hub.ready
        h.deliver(SUB)
        assert h.hub.ready

    def test_the_pattern_is_escaped_and_comes_back_after_a_reconnect(self) -> None:
        h = Harness(api_config(extra='redis:\n  channelPrefix: "a*[b]?:"\n'))
        self.open_stream(h)
        assert h.redis.links[SUB].patterns == {b"a\\*\\[b\\]\\?:client-data:*"}
        h.drop_redis(SUB)
        h.advance(1.0)
        assert h.redis.links[SUB].patterns == {b"a\\*\\[b\\]\\?:client-data:*"}

    def test_a_stream_that_does_not_read_is_closed_not_buffered(self) -> None:
        h = Harness(api_config("memory", "webSocket:\n  maxOutboundBuffer: 2000\n"))
        stream = self.open_stream(h)
        h.write_paused(stream)
        member = h.connect("m")
        for _ in range(100):
            member.text("x" * 50)
        h.run()
        assert stream.closed and stream.abort
        assert h.hub.slow_closes >= 1

    def test_shutdown_closes_streams(self) -> None:
        h = Harness(api_config("memory"))
        stream = self.open_stream(h)
        h.hub.shutdown(h.now)
        h.run()
        assert stream.closed
        assert any(isinstance(a, CloseClient) and a.conn == stream.conn for _, a in h.log)


@settings(max_examples=fuzz_examples(200), deadline=None)
@given(method=st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH"]),
       path=st.sampled_from([b"/api/events", b"/api/groups/", b"/api/keys/", b"/api/"]).flatmap(
           lambda p: st.binary(max_size=12).map(lambda tail: p + bytes(b for b in tail if 32 < b < 127))),
       body=st.binary(max_size=100), key=st.sampled_from([KEY, "nope", None]), broker=st.sampled_from(["memory",
                                                                                                    "redis"]))
def test_any_api_request_gets_an_answer_or_a_stream_and_never_raises(method: bytes, path: bytes, body: bytes,
                                                                     key: str | None, broker: str) -> None:
    h = Harness(api_config(broker))
    member = h.connect("m")
    api = h.open()
    api.send_raw(api_request(method, path, body, key=key))
    raw = bytes(api.raw)
    assert raw.startswith(b"HTTP/1.1 "), raw  # something was answered
    status = int(raw[9:12])
    assert status in (200, 400, 401, 404, 405, 413), raw
    h.lose(api)
    member.close()
    h.run()
    assert h.hub.is_empty()
