"""Every parser of the core, fed whole, one byte at a time, and with trailing data.

The h11 ``tests/test_io.py`` discipline: a resumable parser must give the same
answer whatever the chunking, and must not lose what follows a complete unit.
Parsers covered: the HTTP request head (h11 inside ``_client.py``), WebSocket
frames (wsproto inside ``_client.py``) and RESP (hiredis inside ``_redis.py``).
"""

from __future__ import annotations

import base64
import hashlib

import pytest
from wsproto.events import TextMessage

from wshub_core import CloseClient, SendToClient

from .harness import (
    CMD,
    SUB,
    WS_KEY,
    Harness,
    make_config,
    parse_http_answer,
    resp_int,
    resp_message,
    resp_push,
    upgrade_request,
    ws_frame,
)

ACCEPT = base64.b64encode(hashlib.sha1(WS_KEY + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())


def _answer_bytes(h: Harness, chunks: list[bytes]) -> tuple[bytes, list[object]]:
    client = h.open()
    start = h.mark()
    for chunk in chunks:
        client.send_raw(chunk)
    actions = h.actions_since(start)
    data = b"".join(a.data for a in actions if isinstance(a, SendToClient) and a.conn == client.conn)
    return data, actions


class TestHttpRequestHead_RFC7230_3:
    """The request head: whole, byte by byte, split anywhere, and with frames behind it."""

    def test_whole_head_upgrades_with_101(self) -> None:
        h = Harness()
        data, actions = _answer_bytes(h, [upgrade_request()])
        answer = parse_http_answer(data)
        assert answer is not None and answer.status == 101
        assert answer.headers[b"sec-websocket-accept"] == ACCEPT  # RFC 6455 section 4.2.2
        assert not any(isinstance(a, CloseClient) for a in actions)

    def test_byte_by_byte_gives_the_same_101(self) -> None:
        whole, _ = _answer_bytes(Harness(), [upgrade_request()])
        request = upgrade_request()
        bytewise, actions = _answer_bytes(Harness(), [request[i:i + 1] for i in range(len(request))])
        assert bytewise == whole
        assert sum(isinstance(a, SendToClient) for a in actions) == 1  # one write, at the last byte

    def test_every_two_way_split_gives_the_same_101(self) -> None:
        request = upgrade_request()
        whole, _ = _answer_bytes(Harness(), [request])
        for i in range(1, len(request)):
            data, _ = _answer_bytes(Harness(), [request[:i], request[i:]])
            assert data == whole, f"split at {i}"

    def test_nothing_is_answered_before_the_head_is_complete(self) -> None:
        h = Harness()
        request = upgrade_request()
        data, actions = _answer_bytes(h, [request[:-1]])
        assert data == b"" and actions == []

    def test_frame_in_the_same_bytes_as_the_head_is_processed(self) -> None:
        h = Harness()
        client = h.open()
        client.send_raw(upgrade_request(b"/ws?session_key=k") + ws_frame(0x1, b"early bird"))
        assert client.status == 101
        assert h.published(h.channel("client-data:k")) == [b"early bird"]

    def test_two_frames_and_a_close_behind_the_head(self) -> None:
        h = Harness()
        client = h.open()
        tail = ws_frame(0x1, b"one") + ws_frame(0x2, b"two") + ws_frame(0x8, b"\x03\xe8")
        client.send_raw(upgrade_request(b"/ws?session_key=k") + tail)
        assert h.published(h.channel("client-data:k")) == [b"one", b"two"]
        assert client.close_code == 1000 and client.closed

    def test_head_and_frame_in_one_chunk_then_fed_byte_by_byte(self) -> None:
        h = Harness()
        client = h.open()
        data = upgrade_request(b"/ws?session_key=k") + ws_frame(0x1, b"early bird")
        client.send_raw(data, chunk=1)
        assert client.status == 101
        assert h.published(h.channel("client-data:k")) == [b"early bird"]

    @pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "byte-by-byte"])
    def test_head_over_max_header_size_is_431_however_it_arrives(self, bytewise: bool) -> None:
        """webSocket.maxHeaderSize: "largest HTTP request head; larger is answered 431"."""
        h = Harness(make_config(max_header_size=1024))
        request = upgrade_request(extra=[(b"X-Padding", b"a" * 2000)])
        chunks = [request[i:i + 1] for i in range(len(request))] if bytewise else [request]
        data, actions = _answer_bytes(h, chunks)
        answer = parse_http_answer(data)
        assert answer is not None and answer.status == 431
        assert isinstance(actions[-1], CloseClient)


class TestWebSocketFrames_RFC6455_5_2:
    """Frames: a message is PUBLISHed once, whatever the chunking."""

    def test_message_fed_byte_by_byte_is_published_once(self) -> None:
        h = Harness()
        client = h.connect("k")
        data = client._proto.send(TextMessage(data="hello, hub"))
        client.send_raw(data, chunk=1)
        assert h.published(h.channel("client-data:k")) == [b"hello, hub"]

    def test_64_bit_length_message_byte_by_byte(self) -> None:
        payload = "x" * 70_000
        h = Harness(make_config(max_message_size=100_000))
        client = h.connect("k")
        data = client._proto.send(TextMessage(data=payload))
        assert data[1] & 0x7F == 127  # 64-bit extended payload length
        client.send_raw(data, chunk=997)
        assert h.published(h.channel("client-data:k")) == [payload.encode()]

    def test_two_messages_in_one_chunk_are_published_in_order(self) -> None:
        h = Harness()
        client = h.connect("k")
        client.send_raw(client._proto.send(TextMessage(data="a")) + client._proto.send(TextMessage(data="b")))
        assert h.published(h.channel("client-data:k")) == [b"a", b"b"]

    def test_message_and_ping_in_one_chunk(self) -> None:
        h = Harness()
        client = h.connect("k")
        client.send_raw(ws_frame(0x1, b"m") + ws_frame(0x9, b"p?"))
        assert h.published(h.channel("client-data:k")) == [b"m"]
        assert client.sends[-1] == ws_frame(0xA, b"p?", mask=None)

    def test_frame_split_inside_the_mask_key(self) -> None:
        h = Harness()
        client = h.connect("k")
        frame = ws_frame(0x1, b"split", mask=b"\xaa\xbb\xcc\xdd")
        client.send_raw(frame[:4])
        client.send_raw(frame[4:])
        assert h.published(h.channel("client-data:k")) == [b"split"]


def _resp_scenario(chunk: int | None) -> tuple[list[list[str | bytes]], list[tuple[bytes, bytes]], set[bytes]]:
    """Two clients, their groups and group data, with every Redis reply delivered in ``chunk``-byte pieces."""
    h = Harness(auto_reply=False)
    a = h.connect("a")
    b = h.connect("b")
    h.deliver(SUB, chunk=chunk)  # subscribe confirmations
    h.deliver(CMD, chunk=chunk)  # :0 for client-new
    h.redis.publish(h.channel("groups-new:a"), b'["g1","g2"]')
    h.redis.publish(h.channel("groups-new:b"), b"g2")
    h.deliver(SUB, chunk=chunk)
    for i in range(3):
        h.redis.publish(h.channel("group-data:g1"), b"one %d" % i)
        h.redis.publish(h.channel("group-data:g2"), b"two %d" % i)
    h.deliver(SUB, chunk=chunk)
    a.text("from a")
    h.deliver(CMD, chunk=chunk)
    return [a.messages, b.messages], list(h.redis.published), set(h.redis.links[SUB].subscribed)


class TestResp:
    """RESP from Redis: byte by byte gives the same result as whole; many replies per chunk."""

    def test_reply_stream_byte_by_byte_equals_whole(self) -> None:
        whole = _resp_scenario(None)
        assert whole[0] == [
            ["one 0", "two 0", "one 1", "two 1", "one 2", "two 2"],
            ["two 0", "two 1", "two 2"],
        ]
        assert _resp_scenario(1) == whole
        assert _resp_scenario(7) == whole

    def test_many_replies_in_one_chunk(self) -> None:
        h = Harness(auto_reply=False)
        client = h.connect("a")
        channel = h.channel("groups-new:a")
        data = (
            resp_push(b"subscribe", channel, 1)
            + resp_message(channel, b"g")
        )
        h.redis.links[SUB].pending.clear()
        h.redis_data(SUB, data)
        assert h.hub.groups_of(client.conn) == {"g"}
        assert h.published(h.channel("client-new")) == [b"a"]
        # The SUBSCRIBE for g went out; its confirmation and two messages come in one chunk.
        g = h.channel("group-data:g")
        h.redis.links[SUB].pending.clear()
        h.redis_data(SUB, resp_push(b"subscribe", g, 2) + resp_message(g, b"1") + resp_message(g, b"2"))
        assert client.messages == ["1", "2"]

    def test_reply_with_trailing_partial_reply(self) -> None:
        h = Harness(auto_reply=False)
        client = h.connect("a")
        h.deliver(SUB)
        h.set_groups("a", ["g"])
        h.deliver(SUB)
        h.deliver(SUB)
        g = h.channel("group-data:g")
        second = resp_message(g, b"second")
        h.redis_data(SUB, resp_message(g, b"first") + second[:5])
        assert client.messages == ["first"]
        h.redis_data(SUB, second[5:])
        assert client.messages == ["first", "second"]

    def test_integer_replies_byte_by_byte_drain_the_command_buffer(self) -> None:
        h = Harness(auto_reply=False)
        client = h.connect("a")
        h.deliver(SUB)
        for i in range(3):
            client.text(f"m{i}")
        h.redis.links[CMD].pending.clear()
        h.redis_data(CMD, resp_int(0) * 4, chunk=1)  # client-new + three messages
        assert "wshub_redis_buffered_commands 0\n" in h.hub.metrics_text()
        assert "wshub_redis_buffered_bytes 0\n" in h.hub.metrics_text()
