"""The WebSocket side of a client connection (``_client.py`` through ``Hub``), RFC 6455.

Each class names the section of RFC 6455 it checks. Time is virtual: the
keepalive, handshake and write-stall deadlines are reached with ``advance``.
"""

from __future__ import annotations

import pytest
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection, Pong, TextMessage

from wshub_core import CloseClient, SendToClient, StopListening, Stopped

from .harness import CMD, SUB, Client, Harness, make_config, ws_frame


def connected(**overrides: object) -> tuple[Harness, Client]:
    h = Harness(make_config(**overrides))
    return h, h.connect("k")


def data_published(h: Harness) -> list[bytes]:
    return h.published(h.channel("client-data:k"))


def mine(h: Harness, client: Client, mark: int = 0) -> list[object]:
    """The actions about ``client`` since ``mark``."""
    return [a for a in h.actions_since(mark) if getattr(a, "conn", None) == client.conn]


def assert_closed_with(h: Harness, client: Client, code: int, *, abort: bool = False) -> None:
    assert client.close_code == code, (client.close_code, client.close_reason)
    assert client.closed and client.abort is abort
    last = mine(h, client)[-1]
    assert last == CloseClient(conn=client.conn, abort=abort)
    assert h.hub.client_count() == sum(not c.closed for c in h.clients.values())


class TestPingPong_RFC6455_5_5_2:
    def test_ping_is_answered_with_a_pong_carrying_its_payload(self) -> None:
        _h, client = connected()
        client.ping(b"are you there")
        pongs = [e for e in client.events if isinstance(e, Pong)]
        assert pongs == [Pong(payload=b"are you there")]
        assert client.open

    def test_unsolicited_pong_is_ignored(self) -> None:
        h, client = connected()
        mark = h.mark()
        client.send_raw(ws_frame(0xA, b"hi"))
        assert h.actions_since(mark) == [] and client.open

    def test_ping_between_fragments_is_answered_and_the_message_still_joins(self) -> None:
        """RFC 6455 section 5.4: control frames MAY be injected in the middle of a fragmented message."""
        h, client = connected()
        client.send_raw(ws_frame(0x1, b"frag", fin=False) + ws_frame(0x9, b"!") + ws_frame(0x0, b"ment"))
        assert data_published(h) == [b"fragment"]
        assert client.sends[-1] == ws_frame(0xA, b"!", mask=None)


class TestCloseHandshake_RFC6455_5_5_1:
    def test_client_close_is_echoed_then_the_socket_closed(self) -> None:
        h, client = connected()
        mark = h.mark()
        client.close(1000, "bye")
        actions = mine(h, client, mark)
        assert [type(a) for a in actions] == [SendToClient, CloseClient]
        assert actions[1] == CloseClient(conn=client.conn, abort=False)
        assert client.close_code == 1000
        assert h.ws_state(client) is ConnectionState.CLOSED  # the handshake completed on the client side
        assert h.hub.is_empty()

    @pytest.mark.parametrize("code", [1001, 3000, 4999])
    def test_close_code_is_echoed(self, code: int) -> None:
        _h, client = connected()
        client.close(code)
        assert client.close_code == code and client.closed

    def test_close_without_status_is_echoed_without_status(self) -> None:
        _h, client = connected()
        client.sent_close = True
        client.send_raw(ws_frame(0x8, b""))
        assert client.sends[-1] == ws_frame(0x8, b"", mask=None)
        assert client.closed

    def test_nothing_after_the_close_frame_is_processed(self) -> None:
        h, client = connected()
        client.sent_close = True
        client.send_raw(ws_frame(0x8, b"\x03\xe8") + ws_frame(0x1, b"too late"))
        assert data_published(h) == []
        mark = h.mark()
        h.hub.client_data(client.conn, ws_frame(0x1, b"later still"), h.now)  # a shell racing its close
        h.hub.client_eof(client.conn, h.now)
        h.hub.client_lost(client.conn, h.now)
        assert h.run() == [] and h.actions_since(mark) == []

    def test_eof_closes_without_a_close_frame(self) -> None:
        h, client = connected()
        mark = h.mark()
        h.eof(client)
        assert mine(h, client, mark) == [CloseClient(conn=client.conn, abort=False)]
        assert h.hub.is_empty()
        assert h.published(h.channel("client-gone")) == [b"k"]

    def test_client_lost_is_silent_and_idempotent(self) -> None:
        h, client = connected()
        mark = h.mark()
        h.lose(client)
        h.hub.client_lost(client.conn, h.now)
        assert [a for a in h.actions_since(mark) if getattr(a, "conn", None) == client.conn] == []
        assert h.hub.is_empty()


class TestFragmentation_RFC6455_5_4:
    def test_fragmented_message_is_joined_and_published_once(self) -> None:
        h, client = connected()
        client.send_event(TextMessage(data="Hel", message_finished=False))
        client.send_event(TextMessage(data="lo, ", message_finished=False))
        assert data_published(h) == []
        client.send_event(TextMessage(data="World", message_finished=True))
        assert data_published(h) == [b"Hello, World"]

    def test_utf8_sequence_split_across_fragments(self) -> None:
        h, client = connected()
        client.send_raw(ws_frame(0x1, b"caf\xc3", fin=False) + ws_frame(0x0, b"\xa9"))
        assert data_published(h) == ["café".encode()]

    def test_binary_fragments(self) -> None:
        h, client = connected()
        client.send_raw(ws_frame(0x2, b"\x00\xff", fin=False) + ws_frame(0x0, b"\x01", fin=False)
                        + ws_frame(0x0, b"\x02"))
        assert data_published(h) == [b"\x00\xff\x01\x02"]


class TestMessageSize_RFC6455_10_4:
    def test_message_at_the_limit_is_published(self) -> None:
        h, client = connected(max_message_size=16)
        client.text("x" * 16)
        assert data_published(h) == [b"x" * 16] and client.open

    def test_message_over_the_limit_closes_1009(self) -> None:
        h, client = connected(max_message_size=16)
        client.text("x" * 17)
        assert data_published(h) == []
        assert_closed_with(h, client, 1009)

    def test_fragments_adding_up_over_the_limit_close_1009(self) -> None:
        h, client = connected(max_message_size=16)
        client.send_raw(ws_frame(0x2, b"a" * 10, fin=False) + ws_frame(0x0, b"b" * 10))
        assert data_published(h) == []
        assert_closed_with(h, client, 1009)

    def test_limit_counts_utf8_bytes_not_characters(self) -> None:
        h, client = connected(max_message_size=16)
        client.text("é" * 9)  # 9 characters, 18 bytes
        assert_closed_with(h, client, 1009)

    def test_huge_declared_length_is_refused_as_the_bytes_come(self) -> None:
        h, client = connected(max_message_size=1024)
        header = ws_frame(0x2, b"", length=1 << 62)[:-4]
        mask = b"\x01\x02\x03\x04"
        client.send_raw(header + mask)
        assert client.open  # nothing to judge yet: a length alone is not an error
        client.send_raw(b"\x00" * 1025)
        assert_closed_with(h, client, 1009)

    def test_length_with_the_most_significant_bit_set_closes_1002(self) -> None:
        """RFC 6455 section 5.2: the most significant bit of a 64-bit length MUST be 0."""
        h, client = connected()
        client.send_raw(b"\x82\xff" + (1 << 63).to_bytes(8, "big") + b"\x01\x02\x03\x04")
        assert_closed_with(h, client, 1002)


class TestFraming_RFC6455_5_2_and_5_3:
    @pytest.mark.parametrize(
        "frame",
        [
            ws_frame(0x1, b"hi", mask=None),  # 5.3: client frames MUST be masked
            ws_frame(0x1, b"hi", rsv=4),  # RSV1 without a negotiated extension
            ws_frame(0x3, b"hi"),  # reserved data opcode
            ws_frame(0xB, b"hi"),  # reserved control opcode
            ws_frame(0x0, b"hi"),  # continuation with nothing to continue
            ws_frame(0x9, b"p", fin=False),  # 5.5: control frames MUST NOT be fragmented
            ws_frame(0x9, b"p" * 126),  # 5.5: control payload <= 125
            ws_frame(0x1, b"a", fin=False) + ws_frame(0x1, b"b"),  # new message inside a fragmented one
            ws_frame(0x8, b"\x03"),  # 5.5.1: a close body is empty or at least 2 bytes
            ws_frame(0x8, (999).to_bytes(2, "big")),  # 7.4.2: codes below 1000 are not used
            ws_frame(0x8, (1005).to_bytes(2, "big")),  # 7.4.1: 1005 MUST NOT be sent in a frame
        ],
        ids=["unmasked", "rsv1", "opcode-3", "opcode-11", "orphan-continuation", "fragmented-ping",
             "long-ping", "interleaved-data", "close-1-byte", "close-999", "close-1005"],
    )
    def test_protocol_error_closes_1002(self, frame: bytes) -> None:
        h, client = connected()
        client.send_raw(frame)
        assert data_published(h) == []
        assert_closed_with(h, client, 1002)


class TestUtf8_RFC6455_8_1:
    @pytest.mark.parametrize("payload", [b"\xff", b"\xc3", b"\xed\xa0\x80", b"ok\xc0\xaf"],
                             ids=["ff", "truncated", "surrogate", "overlong"])
    def test_invalid_utf8_text_closes_1007(self, payload: bytes) -> None:
        h, client = connected()
        client.send_raw(ws_frame(0x1, payload))
        assert data_published(h) == []
        assert_closed_with(h, client, 1007)

    def test_invalid_utf8_close_reason_closes_1007(self) -> None:
        h, client = connected()
        client.send_raw(ws_frame(0x8, b"\x03\xe8\xff"))
        assert_closed_with(h, client, 1007)

    def test_binary_message_may_hold_any_bytes(self) -> None:
        h, client = connected()
        client.binary(b"\xff\xfe")
        assert data_published(h) == [b"\xff\xfe"] and client.open


class TestKeepalive:
    """webSocket.pongWait: a ping every 0.9 x pongWait; silence for pongWait closes 1011."""

    def test_ping_at_nine_tenths_of_pong_wait_then_close_1011(self) -> None:
        h = Harness(make_config(pong_wait=10.0))
        client = h.connect("k", auto_pong=False)
        h.advance(8.99)
        assert client.pings == 0
        h.advance(0.01)
        assert client.pings == 1
        h.advance(0.99)
        assert client.open
        h.advance(0.01)
        assert_closed_with(h, client, 1011)
        assert h.published(h.channel("client-gone")) == [b"k"]

    def test_a_client_that_answers_pings_stays(self) -> None:
        h = Harness(make_config(pong_wait=10.0))
        client = h.connect("k", auto_pong=True)
        h.advance(1000)
        assert client.open
        assert 100 <= client.pings <= 112

    def test_any_data_counts_as_a_sign_of_life(self) -> None:
        h = Harness(make_config(pong_wait=10.0))
        client = h.connect("k", auto_pong=False)
        for _ in range(5):
            h.advance(8)
            client.text("still here")
        assert client.open and client.pings == 0
        h.advance(10)
        assert_closed_with(h, client, 1011)

    def test_one_timer_for_many_clients(self) -> None:
        h = Harness(make_config(pong_wait=10.0))
        clients = [h.connect(f"k{i}", auto_pong=False) for i in range(50)]
        h.advance(9.5)
        assert all(c.pings == 1 for c in clients)
        h.advance(0.5)
        assert all(c.close_code == 1011 for c in clients)
        assert h.hub.is_empty()


class TestSlowConsumer:
    """webSocket.writeWait and maxOutboundBuffer: the core's slow-consumer policy."""

    def member(self, **overrides: object) -> tuple[Harness, Client]:
        h, client = connected(**overrides)
        h.set_groups("k", ["g"])
        return h, client

    def test_frames_held_while_paused_are_flushed_on_resume(self) -> None:
        h, client = self.member()
        h.write_paused(client)
        mark = h.mark()
        for i in range(3):
            h.group_data("g", b"m%d" % i)
        assert [a for a in h.actions_since(mark) if isinstance(a, SendToClient)] == []
        h.write_resumed(client)
        sends = [a for a in h.actions_since(mark) if isinstance(a, SendToClient)]
        assert len(sends) == 1  # one write for everything held
        assert client.messages == ["m0", "m1", "m2"]

    def test_pong_and_close_echo_are_held_too(self) -> None:
        h, client = self.member()
        h.write_paused(client)
        client.ping(b"x")
        assert not any(isinstance(e, Pong) for e in client.events)
        h.write_resumed(client)
        assert [e for e in client.events if isinstance(e, Pong)] == [Pong(payload=b"x")]

    def test_paused_for_write_wait_is_aborted(self) -> None:
        h, client = self.member(write_wait=3.0, pong_wait=100.0)
        h.write_paused(client)
        h.advance(2.99)
        assert not client.closed
        mark = h.mark()
        h.advance(0.01)
        assert mine(h, client, mark) == [CloseClient(conn=client.conn, abort=True)]
        assert client.closed and client.abort is True
        assert h.hub.is_empty()
        assert "wshub_slow_consumer_closes_total 1\n" in h.hub.metrics_text()

    def test_resumed_in_time_is_not_closed(self) -> None:
        h, client = self.member(write_wait=3.0, pong_wait=100.0)
        h.write_paused(client)
        h.advance(2)
        h.write_resumed(client)
        h.advance(10)
        assert client.open

    def test_a_second_pause_restarts_the_clock(self) -> None:
        h, client = self.member(write_wait=3.0, pong_wait=100.0)
        h.write_paused(client)
        h.advance(2)
        h.write_resumed(client)
        h.advance(2)
        h.write_paused(client)
        h.advance(2.5)
        assert client.open
        h.advance(0.5)
        assert client.closed and client.abort

    def test_held_bytes_over_max_outbound_buffer_close(self) -> None:
        h, client = self.member(max_outbound_buffer=100)
        h.write_paused(client)
        h.group_data("g", b"a" * 60)
        assert not client.closed
        mark = h.mark()
        h.group_data("g", b"b" * 60)
        assert mine(h, client, mark) == [CloseClient(conn=client.conn, abort=True)]
        assert client.messages == [] and client.abort is True
        assert h.hub.is_empty()
        assert h.redis.links[SUB].subscribed == set()

    def test_other_members_are_not_held_back(self) -> None:
        h, slow = self.member(max_outbound_buffer=100)
        fast = h.connect("k")
        h.write_paused(slow)
        for i in range(5):
            h.group_data("g", b"%d" % i + b"." * 40)
        assert slow.closed and fast.open
        assert len(fast.messages) == 5


class TestGroupsTimeout:
    def test_no_groups_in_time_closes_1008(self) -> None:
        h = Harness(make_config(groups_timeout=5.0, pong_wait=100.0))
        client = h.connect("k")
        h.advance(4.9)
        assert client.open
        h.advance(0.1)
        assert_closed_with(h, client, 1008)

    def test_groups_in_time_keep_the_connection(self) -> None:
        h = Harness(make_config(groups_timeout=5.0, pong_wait=100.0))
        client = h.connect("k")
        h.set_groups("k", [])  # an empty list is an answer too
        h.advance(50)
        assert client.open


class TestShutdown_RFC6455_7_4_1_going_away:
    def test_shutdown_closes_every_client_with_1001_then_stops(self) -> None:
        h = Harness()
        clients = [h.connect("a"), h.connect("b")]
        idle = h.open()
        mark = h.mark()
        h.shutdown()
        actions = h.actions_since(mark)
        assert actions[0] == StopListening()
        assert all(c.close_code == 1001 and c.closed for c in clients)
        assert idle.closed
        assert actions[-1] == Stopped()
        assert h.hub.is_empty()

    def test_stopped_waits_for_client_messages_to_reach_redis(self) -> None:
        h = Harness(auto_reply=False)
        client = h.connect("a")
        client.text("last words")
        h.shutdown()
        assert not h.stopped
        h.deliver(CMD)
        assert h.stopped
        assert b"last words" in h.published(h.channel("client-data:a"))

    def test_shutdown_timeout_stops_anyway(self) -> None:
        h = Harness(make_config(shutdown_timeout=2.0), auto_reply=False)
        client = h.connect("a")
        client.text("never acknowledged")
        h.shutdown()
        h.advance(1.9)
        assert not h.stopped
        h.advance(0.1)
        assert h.stopped

    def test_shutdown_is_idempotent(self) -> None:
        h = Harness()
        h.connect("a")
        h.shutdown()
        mark = h.mark()
        h.shutdown()
        assert h.actions_since(mark) == []


def test_close_connection_event_type_is_what_wsproto_reports() -> None:
    """Guard for the harness itself: close frames are decoded by wsproto, not by hand."""
    _h, client = connected()
    client.close(1000)
    assert any(isinstance(e, CloseConnection) for e in client.events)
