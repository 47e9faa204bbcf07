"""Request bodies, keep-alive, pipelining and streams in the client table (``_clients.py``, ``_client.py``).

Driven at the table alone with raw bytes (``table_driver``): RFC 9112 section 6
(message body: Content-Length, chunked), 9.3 (persistence, pipelining), 9.6
(tear-down), RFC 9110 15.5.9 / 15.5.14 (408, 413), 10.1.1 (Expect: 100-continue);
Server-Sent Events (WHATWG HTML 9.2) for the streams. Every parser test runs on
the whole input, one byte at a time, and with data behind it.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wshub_core import ClientState, CloseClient
from wshub_core._client import HttpBody, HttpRequest, MessageReceived

from .harness import ws_frame
from .table_driver import TABLE_STATUSES, Driver, Owner, Sock, parse_responses, request

BYTEWISE = pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])


def driver(*, limit: int = 64, keep_alive: bool = True, max_header_size: int = 1024, max_outbound_buffer: int = 4096,
           handshake_timeout: float = 10.0, write_wait: float = 5.0,
           pong_wait: float | None = 20.0) -> tuple[Driver, Sock]:
    """A fresh table whose owner reads bodies up to ``limit`` and answers with ``keep_alive``, and one socket."""
    d = Driver(owner=Owner(limit=limit, keep_alive=keep_alive), max_header_size=max_header_size,
               max_outbound_buffer=max_outbound_buffer, handshake_timeout=handshake_timeout, write_wait=write_wait,
               pong_wait=pong_wait)
    return d, d.open()


def state(d: Driver, sock: Sock) -> ClientState | None:
    client = d.table.get(sock.conn)
    return None if client is None else client.state


def assert_closed_after_answer(d: Driver, sock: Sock, status: int) -> bytes:
    """The last answer is ``status`` with ``connection: close``, then a flushing CloseClient."""
    responses = sock.responses()
    assert responses and responses[-1].status == status, (responses, bytes(sock.raw))
    assert responses[-1].headers[b"connection"] == b"close"
    assert sock.closed and sock.abort is False
    assert sock.left is not None and sock.left.http_status == status
    return responses[-1].body


# -- RFC 9112 6: the body ---------------------------------------------------------------------------------------


class TestBody_RFC9112_6:
    @BYTEWISE
    def test_content_length_body_is_delivered_whole(self, bytewise: bool) -> None:
        d, sock = driver()
        d.send(sock, request(b"POST", b"/echo", body=b"hello world"), bytewise=bytewise)
        assert d.owner.bodies() == [b"hello world"]
        assert [r.body for r in sock.responses()] == [b"hello world"]

    @BYTEWISE
    def test_chunked_body_is_decoded(self, bytewise: bool) -> None:
        d, sock = driver()
        d.send(sock, request(b"POST", b"/echo", chunks=[b"hel", b"lo ", b"world"]), bytewise=bytewise)
        assert d.owner.bodies() == [b"hello world"]

    def test_chunk_extensions_and_trailers_are_accepted(self) -> None:
        d, sock = driver()
        raw = (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5;name=value\r\nhello\r\n0\r\nX-Trailer: yes\r\n\r\n")
        d.send(sock, raw)
        assert d.owner.bodies() == [b"hello"]

    def test_a_body_read_with_its_head_is_delivered_in_the_same_data_call(self) -> None:
        d, sock = driver()
        d.table.data(sock.conn, request(b"POST", b"/echo", body=b"abc"), d.now)
        # No flush yet: the head, read_body, the body and the answer all happened inside data().
        assert [type(o) for _, o in d.owner.seen] == [HttpRequest, HttpBody]
        d.flush()
        assert sock.writes == 1

    @BYTEWISE
    def test_no_body_gives_an_empty_body(self, bytewise: bool) -> None:
        d, sock = driver()
        d.send(sock, request(b"GET", b"/echo"), bytewise=bytewise)
        assert d.owner.bodies() == [b""]

    def test_empty_chunked_body(self) -> None:
        d, sock = driver()
        d.send(sock, request(b"POST", b"/echo", chunks=[]))
        assert d.owner.bodies() == [b""]

    @BYTEWISE
    def test_trailing_bytes_wait_for_the_next_cycle(self, bytewise: bool) -> None:
        d, sock = driver(keep_alive=False)
        d.send(sock, request(b"POST", b"/echo", body=b"abc") + b"GET /get HTTP/1.1\r\n", bytewise=bytewise)
        assert d.owner.bodies() == [b"abc"]
        assert len(d.owner.requests()) == 1  # not kept alive: the rest is never parsed
        assert_closed_after_answer(d, sock, 200)

    def test_body_at_the_limit_is_read(self) -> None:
        d, sock = driver(limit=5)
        d.send(sock, request(b"POST", b"/echo", body=b"12345"))
        assert d.owner.bodies() == [b"12345"]


class TestBodyLimit_RFC9110_15_5_14:
    def test_content_length_over_the_limit_is_refused_before_any_body_byte(self) -> None:
        d, sock = driver(limit=10)
        head = request(b"POST", b"/echo", body=b"x" * 11)[:-11]
        d.send(sock, head)
        body = assert_closed_after_answer(d, sock, 413)
        assert body == b"request body too large: 11 bytes, limit 10\n"
        assert d.owner.bodies() == []

    def test_expect_100_continue_over_the_limit_gets_413_not_100(self) -> None:
        d, sock = driver(limit=10)
        d.send(sock, request(b"POST", b"/echo", body=b"x" * 11, headers=[(b"Expect", b"100-continue")])[:-11])
        assert [r.status for r in sock.responses()] == [413]

    @BYTEWISE
    def test_chunked_body_is_cut_as_soon_as_it_crosses_the_limit(self, bytewise: bool) -> None:
        d, sock = driver(limit=10)
        d.send(sock, request(b"POST", b"/echo", chunks=[b"123456", b"7890", b"!"])[:-5], bytewise=bytewise)
        body = assert_closed_after_answer(d, sock, 413)
        assert body == b"request body too large: 11 bytes, limit 10\n"
        assert d.owner.bodies() == []

    def test_one_huge_chunk_is_cut_before_it_arrives_whole(self) -> None:
        d, sock = driver(limit=10)
        d.send(sock, b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffff\r\n" + b"x" * 11)
        assert_closed_after_answer(d, sock, 413)


class TestMalformedBody_RFC9112_7_1:
    @pytest.mark.parametrize("chunk", [b"zz\r\nhello\r\n0\r\n\r\n", b"5\r\nhelloXX0\r\n\r\n", b"-1\r\n"])
    def test_bad_chunk_encoding_gets_400_with_the_reason(self, chunk: bytes) -> None:
        d, sock = driver()
        d.send(sock, b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk)
        body = assert_closed_after_answer(d, sock, 400)
        assert body.startswith(b"malformed request body: ")
        assert d.owner.bodies() == []

    def test_eof_inside_a_body_closes_without_an_answer(self) -> None:
        d, sock = driver()
        d.send(sock, request(b"POST", b"/echo", body=b"hello")[:-2])
        assert state(d, sock) is ClientState.BODY
        d.eof(sock)
        assert sock.closed and sock.raw == b"" and sock.left is not None


class TestExpectContinue_RFC9110_10_1_1:
    def test_100_continue_is_sent_when_the_body_is_read(self) -> None:
        d, sock = driver()
        raw = request(b"POST", b"/echo", body=b"abc", headers=[(b"Expect", b"100-continue")])
        d.send(sock, raw[:-3])
        assert bytes(sock.raw) == b"HTTP/1.1 100 Continue\r\n\r\n"
        d.send(sock, b"abc")
        assert [r.status for r in sock.responses()] == [100, 200]
        assert d.owner.bodies() == [b"abc"]


class TestSlowBody_RFC9110_15_5_9:
    def test_a_body_not_complete_at_the_handshake_deadline_gets_408(self) -> None:
        d, sock = driver(handshake_timeout=10.0)
        d.advance(4.0)
        d.send(sock, request(b"POST", b"/echo", body=b"hello")[:-2])
        d.advance(5.9)  # the deadline counts from the connection's head wait, not from the body
        assert not sock.closed
        d.advance(0.1)
        body = assert_closed_after_answer(d, sock, 408)
        assert body == b"request body not complete within 10s\n"

    def test_an_undecided_request_is_aborted_at_the_deadline(self) -> None:
        d, sock = driver(handshake_timeout=10.0)
        d.send(sock, request(b"GET", b"/undecided"))
        assert state(d, sock) is ClientState.REQUEST
        d.advance(10.0)
        assert sock.closed and sock.abort is True and sock.raw == b""

    def test_a_flood_behind_an_undecided_request_is_aborted(self) -> None:
        d, sock = driver(max_header_size=100)
        d.send(sock, request(b"GET", b"/undecided"))
        d.send(sock, b"x" * 60)
        assert not sock.closed
        d.send(sock, b"x" * 60)
        assert sock.closed and sock.abort is True


# -- deferred answers ------------------------------------------------------------------------------------------


class TestDeferredAnswer:
    def test_no_deadline_while_the_owner_owes_the_answer(self) -> None:
        d, sock = driver(handshake_timeout=10.0)
        d.send(sock, request(b"POST", b"/defer", body=b"pub"))
        assert state(d, sock) is ClientState.WAITING
        d.advance(1000.0)
        assert not sock.closed and sock.raw == b""
        d.answer_deferred()
        assert [(r.status, r.body) for r in sock.responses()] == [(200, b"done: pub")]

    def test_eof_while_waiting_ends_the_connection(self) -> None:
        d, sock = driver()
        d.send(sock, request(b"POST", b"/defer", body=b"pub"))
        d.eof(sock)
        assert sock.closed and sock.left is not None and sock.left.close_code == 1006
        d.answer_deferred()  # the owner answers a client that left: ignored
        assert sock.raw == b""

    def test_lost_while_waiting_ends_the_connection(self) -> None:
        d, sock = driver()
        d.send(sock, request(b"POST", b"/defer", body=b"pub"))
        d.lose(sock)
        assert sock.left is not None and d.table.count() == 0
        d.answer_deferred()
        assert sock.raw == b""

    def test_the_idle_wait_after_a_deferred_answer_counts_from_the_answer(self) -> None:
        """The table saw no client input since the request: the answer's time is the flush's."""
        d, sock = driver(handshake_timeout=10.0)
        d.send(sock, request(b"POST", b"/defer", body=b"pub"))
        d.advance(50.0)
        d.answer_deferred()
        d.advance(9.9)
        assert not sock.closed
        d.advance(0.1)
        assert sock.closed and sock.abort is False
        assert sock.left is not None and sock.left.close_reason == "keep-alive idle timeout"


class TestDecisionsOutsideTheCallback:
    """The owner acts from another input (a broker callback, its own timer), or before the flush."""

    def test_read_body_later_delivers_the_held_body_at_the_flush(self) -> None:
        d, sock = driver()
        d.send(sock, request(b"POST", b"/undecided", body=b"held"))
        assert state(d, sock) is ClientState.REQUEST
        d.table.read_body(sock.conn, 64)
        assert d.owner.bodies() == []  # not from inside the owner's own call
        d.flush()
        assert d.owner.bodies() == [b"held"]

    def test_an_answer_while_the_body_is_still_coming_closes(self) -> None:
        d, sock = driver()
        d.send(sock, request(b"POST", b"/defer", body=b"abcdef")[:-3])
        assert state(d, sock) is ClientState.BODY
        d.table.answer(sock.conn, 503, "shutting down\n", keep_alive=True)
        d.flush()
        assert_closed_after_answer(d, sock, 503)

    def test_an_answer_after_eof_in_the_same_iteration_is_ignored(self) -> None:
        d, sock = driver()
        d.send(sock, request(b"POST", b"/defer", body=b"x"))
        d.table.eof(sock.conn, d.now)
        d.table.answer(sock.conn, 200, "late\n", keep_alive=True)
        d.flush()
        assert sock.closed and sock.raw == b""

    def test_a_timer_before_the_flush_starts_the_idle_wait_at_its_own_time(self) -> None:
        d, sock = driver(handshake_timeout=10.0)
        d.send(sock, request(b"POST", b"/defer", body=b"x"))
        d.now = 50.0  # no client input meanwhile: the table's own time is still 0
        d.table.answer(sock.conn, 200, "ok\n", keep_alive=True)
        d.table.handle_timer(d.now)  # the answer's early wake-up fires before the shell drains
        d.flush()
        assert not sock.closed
        d.advance(9.9)
        assert not sock.closed
        d.advance(0.1)
        assert sock.closed and sock.abort is False


# -- RFC 9112 9.3: persistence and pipelining ------------------------------------------------------------------


class TestKeepAlive_RFC9112_9_3:
    def test_requests_one_after_another_on_one_connection(self) -> None:
        d, sock = driver()
        for i in range(3):
            d.send(sock, request(b"POST", b"/echo", body=b"n%d" % i))
            assert state(d, sock) is ClientState.HTTP
        responses = sock.responses()
        assert [r.body for r in responses] == [b"n0", b"n1", b"n2"]
        assert all(b"connection" not in r.headers for r in responses)
        assert d.kept_alive == [(sock.conn, 200)] * 3
        assert not sock.closed

    def test_an_idle_kept_alive_connection_is_closed_quietly_at_the_handshake_timeout(self) -> None:
        d, sock = driver(handshake_timeout=10.0)
        d.advance(3.0)
        d.send(sock, request())
        d.advance(9.9)
        assert not sock.closed
        d.advance(0.1)
        assert [type(a) for a in d.actions_of(sock, since=3.1)] == [CloseClient]
        assert sock.closed and sock.abort is False
        assert sock.left is not None and sock.left.http_status == 0  # its one answer went to on_kept_alive
        assert sock.left.kept_alive == 1

    def test_every_answer_is_reported_once(self) -> None:
        d, sock = driver()
        last = request(b"GET", b"/get", headers=[(b"Connection", b"close")])
        d.send(sock, request() + request(b"GET", b"/echo") + last)
        assert d.kept_alive == [(sock.conn, 200), (sock.conn, 200)]
        assert sock.left is not None and sock.left.http_status == 200  # the third closed it

    @pytest.mark.parametrize("headers", [[(b"Connection", b"close")], [(b"Connection", b"keep-alive, Close")]])
    def test_connection_close_from_the_client_closes(self, headers: list[tuple[bytes, bytes]]) -> None:
        d, sock = driver()
        d.send(sock, request(b"POST", b"/echo", body=b"x", headers=headers) + request())
        assert_closed_after_answer(d, sock, 200)
        assert d.kept_alive == [] and len(d.owner.requests()) == 1

    @pytest.mark.parametrize("headers", [[], [(b"Connection", b"keep-alive")]])
    def test_http_1_0_is_never_kept_alive(self, headers: list[tuple[bytes, bytes]]) -> None:
        """h11 keeps no HTTP/1.0 connection alive, ``Connection: keep-alive`` or not."""
        d, sock = driver()
        d.send(sock, request(b"POST", b"/echo", body=b"x", version=b"HTTP/1.0", headers=headers))
        assert_closed_after_answer(d, sock, 200)

    def test_keep_alive_false_closes_as_today(self) -> None:
        d, sock = driver(keep_alive=False)
        d.send(sock, request(b"POST", b"/echo", body=b"x"))
        assert_closed_after_answer(d, sock, 200)

    def test_an_answer_with_the_body_unread_closes(self) -> None:
        d, sock = driver()
        d.send(sock, request(b"POST", b"/get", body=b"unread") + request())
        assert_closed_after_answer(d, sock, 200)
        assert len(d.owner.requests()) == 1

    def test_an_answer_without_read_body_keeps_alive_when_there_is_no_body(self) -> None:
        d, sock = driver()
        d.send(sock, request(b"POST", b"/get", body=b"") + request(b"POST", b"/get", chunks=[]) + request())
        assert [r.status for r in sock.responses()] == [200, 200, 200] and not sock.closed

    def test_an_answer_without_read_body_closes_when_the_body_is_malformed(self) -> None:
        d, sock = driver()
        d.send(sock, b"POST /get HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n" + request())
        assert_closed_after_answer(d, sock, 200)

    def test_a_malformed_pipelined_request_after_head_gets_a_whole_400(self) -> None:
        """The HEAD flag of one request must not strip the body of the next cycle's error answer."""
        d, sock = driver()
        bad = b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 0\r\n\r\n"
        d.send(sock, request(b"HEAD", b"/get") + bad)
        responses = sock.responses([b"HEAD", b"POST"])
        assert [r.status for r in responses] == [200, 400] and responses[1].complete
        assert responses[1].body.startswith(b"malformed request: ")

    def test_head_answers_carry_no_body(self) -> None:
        d, sock = driver()
        d.send(sock, request(b"HEAD", b"/get") + request(b"GET", b"/get"))
        responses = sock.responses([b"HEAD", b"GET"])
        assert [(r.status, r.body) for r in responses] == [(200, b""), (200, b"got /get\n")]
        assert responses[0].headers[b"content-length"] == responses[1].headers[b"content-length"]

    def test_a_websocket_upgrade_after_a_kept_alive_answer(self) -> None:
        d, sock = driver()
        upgrade = (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        d.send(sock, request() + upgrade + ws_frame(0x1, b"hi"))
        assert state(d, sock) is ClientState.OPEN
        assert b"HTTP/1.1 101 " in sock.raw
        assert [o for _, o in d.owner.seen if isinstance(o, MessageReceived)] == [MessageReceived(data=b"hi")]

    def test_a_kept_alive_socket_whose_writes_stall_is_read_again_when_it_drains(self) -> None:
        d, sock = driver()
        d.send(sock, request())
        d.write_paused(sock)
        assert sock.paused
        d.write_resumed(sock)
        assert not sock.paused
        d.send(sock, request())
        assert len(sock.responses()) == 2

    def test_a_pipelining_reader_that_stops_reading_is_bounded(self) -> None:
        d, sock = driver(max_outbound_buffer=300)
        d.send(sock, request())
        d.write_paused(sock)
        d.send(sock, request() * 10)
        assert sock.closed and sock.abort is True and d.table.slow_closes == 1


UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


class TestDeadlinesAfterTheUpgrade:
    """The handshake deadline ends with the upgrade: a new connection is not woken at it for nothing."""

    def test_the_next_wake_up_is_the_first_ping(self) -> None:
        d, sock = driver(handshake_timeout=10.0, pong_wait=20.0)
        d.now = 1.0
        d.send(sock, UPGRADE)
        assert state(d, sock) is ClientState.OPEN
        assert d.table.next_deadline() == pytest.approx(1.0 + 18.0)  # 0.9 x pongWait, not the handshake's 10.0

    def test_without_keepalive_nothing_is_due(self) -> None:
        d, sock = driver(handshake_timeout=10.0, pong_wait=None)
        d.send(sock, UPGRADE)
        assert state(d, sock) is ClientState.OPEN and d.table.next_deadline() is None

    def test_a_write_stall_that_began_before_the_upgrade_keeps_its_deadline(self) -> None:
        d, sock = driver(handshake_timeout=10.0, write_wait=5.0, pong_wait=20.0)
        d.write_paused(sock)  # at 0.0
        d.now = 1.0
        d.send(sock, UPGRADE)
        assert d.table.next_deadline() == pytest.approx(5.0)
        d.advance(5.0)
        assert sock.closed and sock.abort is True and d.table.slow_closes == 1


class TestPipelining_RFC9112_9_3_2:
    @BYTEWISE
    def test_pipelined_requests_are_answered_in_order_in_one_write(self, bytewise: bool) -> None:
        d, sock = driver()
        raw = (request(b"POST", b"/echo", body=b"one") + request(b"POST", b"/echo", chunks=[b"tw", b"o"])
               + request(b"GET", b"/get?3"))
        d.send(sock, raw, bytewise=bytewise)
        assert [r.body for r in sock.responses()] == [b"one", b"two", b"got /get?3\n"]
        if not bytewise:
            assert sock.writes == 1
        assert state(d, sock) is ClientState.HTTP

    def test_a_pipelined_request_behind_a_deferred_answer_is_parsed_when_it_is_answered(self) -> None:
        d, sock = driver()
        d.send(sock, request(b"POST", b"/defer", body=b"first") + request(b"POST", b"/echo", body=b"second"))
        assert d.owner.bodies() == [b"first"]  # h11 finishes one cycle before it reads the next
        d.advance(30.0)
        d.answer_deferred()
        assert d.owner.bodies() == [b"first", b"second"]
        assert [r.body for r in sock.responses()] == [b"done: first", b"second"]
        assert sock.writes == 1  # the second answer went out in the same flush as the first

    def test_two_deferred_answers_in_a_row(self) -> None:
        d, sock = driver()
        d.send(sock, request(b"POST", b"/defer", body=b"a") + request(b"POST", b"/defer", body=b"b"))
        d.answer_deferred()
        assert d.owner.bodies() == [b"a", b"b"]
        d.answer_deferred()
        assert [r.body for r in sock.responses()] == [b"done: a", b"done: b"]
        assert not sock.closed

    def test_too_many_pipelined_bytes_behind_a_deferred_answer_end_keep_alive(self) -> None:
        d, sock = driver(max_header_size=200)
        d.send(sock, request(b"POST", b"/defer", body=b"a"))
        d.send(sock, request() * 10)  # more than one head's worth: dropped
        d.answer_deferred()
        assert_closed_after_answer(d, sock, 200)
        assert len(d.owner.requests()) == 1

    def test_a_pipelined_bad_request_gets_400_after_the_good_ones(self) -> None:
        d, sock = driver()
        d.send(sock, request() + b"BAD\x00 / HTTP/1.1\r\n\r\n")
        assert [r.status for r in sock.responses()] == [200, 400]
        assert sock.closed


# -- Server-Sent Events streams -----------------------------------------------------------------------------------


def stream(*, max_outbound_buffer: int = 4096, write_wait: float = 5.0,
           pong_wait: float | None = 20.0) -> tuple[Driver, Sock]:
    d, sock = driver(max_outbound_buffer=max_outbound_buffer, write_wait=write_wait, pong_wait=pong_wait)
    d.send(sock, request(b"GET", b"/stream"))
    assert state(d, sock) is ClientState.STREAM
    return d, sock


class TestStream:
    def test_chunks_are_coalesced_and_the_close_ends_the_body(self) -> None:
        d, sock = stream()
        d.table.send_chunk(sock.conn, b"data: 1\n\n")
        d.table.send_chunk(sock.conn, b"data: 2\n\n")
        d.flush()
        assert sock.writes == 2  # the head, then both chunks in one write
        d.table.close(sock.conn, 1000, "done")
        d.flush()
        assert sock.raw.endswith(b"\r\n0\r\n\r\n")
        (response,) = sock.responses()
        assert response.status == 200 and response.complete
        assert response.headers[b"transfer-encoding"] == b"chunked"
        assert response.headers[b"content-type"] == b"text/event-stream"
        assert response.body == b"data: 1\n\ndata: 2\n\n"
        assert sock.abort is False
        assert sock.left is not None and sock.left.streaming and sock.left.http_status == 200

    def test_an_empty_chunk_is_not_the_last_chunk(self) -> None:
        d, sock = stream()
        d.table.send_chunk(sock.conn, b"")
        d.flush()
        assert not sock.responses()[0].complete

    def test_http_1_0_stream_is_close_delimited(self) -> None:
        d, sock = driver()
        d.send(sock, request(b"GET", b"/stream", version=b"HTTP/1.0"))
        d.table.send_chunk(sock.conn, b"data: x\n\n")
        d.table.close(sock.conn, 1000, "done")
        d.flush()
        (response,) = sock.responses()
        assert b"transfer-encoding" not in response.headers and b"content-length" not in response.headers
        assert response.body == b"data: x\n\n" and response.complete

    def test_head_gets_the_stream_head_and_a_close(self) -> None:
        d, sock = driver()
        d.send(sock, request(b"HEAD", b"/stream"))
        (response,) = sock.responses([b"HEAD"])
        assert response.status == 200 and response.body == b""
        assert sock.closed and sock.left is not None and sock.left.streaming

    def test_bytes_from_the_reader_are_ignored_but_seen(self) -> None:
        d, sock = stream()
        d.advance(3.0)
        d.send(sock, b"anything at all\r\n\r\n" + request())
        client = d.table.get(sock.conn)
        assert client is not None and client.state is ClientState.STREAM and client.last_seen == 3.0
        assert len(d.owner.requests()) == 1

    def test_a_comment_after_half_of_pong_wait_without_output(self) -> None:
        d, sock = stream(pong_wait=20.0)
        d.advance(6.0)
        d.table.send_chunk(sock.conn, b"data: 1\n\n")
        d.flush()
        mark = len(sock.raw)
        d.advance(9.9)
        assert len(sock.raw) == mark  # output at 6 moved the comment to 16
        d.advance(0.1)
        assert bytes(sock.raw[mark:]) == b"8\r\n: ping\n\n\r\n"
        d.advance(10.0)
        assert sock.raw.count(b": ping") == 2
        assert not sock.closed  # a silent reader is not closed: SSE readers never speak

    def test_no_comment_without_pong_wait(self) -> None:
        d, sock = stream(pong_wait=None)
        d.advance(1000.0)
        assert b": ping" not in sock.raw and not sock.closed

    def test_a_chunk_from_a_broker_callback_counts_at_the_flush(self) -> None:
        """No client input for long: the chunk's time is the flush's, not the table's last input."""
        d, sock = stream(pong_wait=20.0)
        d.now = 9.0  # time passed without any table input or deadline
        d.table.send_chunk(sock.conn, b"data: late\n\n")
        d.flush()
        d.advance(9.9)
        assert b": ping" not in sock.raw
        d.advance(0.2)
        assert b": ping" in sock.raw

    def test_over_the_outbound_bound_is_aborted_and_counted_slow(self) -> None:
        d, sock = stream(max_outbound_buffer=100)
        d.write_paused(sock)
        for _ in range(20):
            d.table.send_chunk(sock.conn, b"data: 0123456789\n\n")
        d.flush()
        assert sock.closed and sock.abort is True and d.table.slow_closes == 1
        assert not sock.raw.endswith(b"0\r\n\r\n")

    def test_a_write_stall_is_aborted_at_write_wait(self) -> None:
        d, sock = stream(write_wait=5.0, pong_wait=20.0)
        d.write_paused(sock)
        d.advance(4.9)
        assert not sock.closed
        d.advance(0.1)
        assert sock.closed and sock.abort is True and d.table.slow_closes == 1
        assert b": ping" not in sock.raw  # no comment into a full socket

    def test_eof_ends_the_body_and_closes(self) -> None:
        d, sock = stream()
        d.eof(sock)
        assert sock.raw.endswith(b"0\r\n\r\n") and sock.closed and sock.abort is False

    def test_shutdown_ends_every_stream(self) -> None:
        d, sock = stream()
        d.table.close_all(1001, "server shutting down")
        d.flush()
        assert sock.responses()[0].complete and sock.closed

    def test_a_stream_after_a_deferred_body(self) -> None:
        d, sock = driver()
        d.send(sock, request(b"POST", b"/defer", body=b"sub"))
        conn, _ = d.owner.deferred.pop()
        d.table.start_stream(conn, content_type="text/event-stream", headers=(("cache-control", "no-cache"),))
        d.flush()
        assert sock.responses()[0].headers[b"cache-control"] == b"no-cache"

    def test_commands_for_a_stream_that_left_are_ignored(self) -> None:
        d, sock = stream()
        d.lose(sock)
        d.table.send_chunk(sock.conn, b"data: x\n\n")
        d.table.start_stream(sock.conn, content_type="text/event-stream")
        d.table.close(sock.conn, 1000, "x")
        d.flush()
        assert sock.left is not None and sock.left.streaming


# -- EOF in every state ---------------------------------------------------------------------------------------------


class TestEof:
    @pytest.mark.parametrize("prefix, expected", [
        (b"", ClientState.HTTP),
        (b"GET /get HTTP/1.1\r\nHost", ClientState.HTTP),
        (request(b"GET", b"/undecided"), ClientState.REQUEST),
        (request(b"POST", b"/echo", body=b"abcdef")[:-3], ClientState.BODY),
        (request(b"POST", b"/defer", body=b"x"), ClientState.WAITING),
        (request(), ClientState.HTTP),  # kept alive
        (request(b"GET", b"/stream"), ClientState.STREAM),
        (request(b"GET", b"/ws", headers=[(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"),
                                          (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
                                          (b"Sec-WebSocket-Version", b"13")]), ClientState.OPEN),
    ])
    def test_eof_ends_the_connection_once(self, prefix: bytes, expected: ClientState) -> None:
        d, sock = driver()
        d.send(sock, prefix)
        assert state(d, sock) is expected
        d.eof(sock)
        d.eof(sock)  # idempotent
        assert sock.closed and sock.abort is False and sock.left is not None
        d.lose(sock)  # the graceful close flushed
        assert d.table.is_empty()


# -- hypothesis: any bytes in any state ---------------------------------------------------------------------------

PREFIXES = {
    "http": b"",
    "request": request(b"GET", b"/undecided"),
    "body": request(b"POST", b"/echo", body=b"x" * 40)[:-20],
    "chunked body": request(b"POST", b"/echo", chunks=[b"abc"])[:-5],
    "waiting": request(b"POST", b"/defer", body=b"x"),
    "kept alive": request(b"POST", b"/echo", body=b"x"),
    "stream": request(b"GET", b"/stream"),
    "open": (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"),
}
PIECES = st.sampled_from([
    request(), request(b"POST", b"/echo", body=b"hi"), request(b"POST", b"/echo", chunks=[b"a", b"b"]),
    request(b"POST", b"/defer", body=b"d"), request(b"GET", b"/stream"), request(b"POST", b"/echo", body=b"x" * 99),
    b"\r\n", b"0\r\n\r\n", b"Transfer-Encoding: chunked\r\n", b"Content-Length: 3\r\n", b"zz\r\n", b"\x00\xff",
]) | st.binary(max_size=40)


class TestAnyBytesInAnyState:
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.sampled_from(sorted(PREFIXES)), st.lists(st.lists(PIECES, max_size=3).map(b"".join), max_size=6),
           st.lists(st.sampled_from(["answer", "chunk", "eof", "timer", "pause", "resume"]), max_size=3))
    def test_a_documented_answer_or_close_or_a_valid_state(self, start: str, reads: list[bytes],
                                                           steps: list[str]) -> None:
        d, sock = driver(max_header_size=256, max_outbound_buffer=2048)
        d.send(sock, PREFIXES[start])
        for data, step in zip(reads, [*steps, *[""] * len(reads)], strict=False):
            d.send(sock, data)
            if step == "answer" and d.owner.deferred:
                d.answer_deferred()
            elif step == "chunk":
                d.table.send_chunk(sock.conn, b"data: x\n\n")
                d.flush()
            elif step == "eof":
                d.eof(sock)
            elif step == "timer":
                d.advance(6.0)
            elif step == "pause":
                d.write_paused(sock)
            elif step == "resume":
                d.write_resumed(sock)
            current = state(d, sock)
            assert current is None or isinstance(current, ClientState)
            assert (current is None) == (sock.left is not None) == sock.closed
        d.advance(1000.0)
        d.lose(sock)
        assert d.table.is_empty()
        head = bytes(sock.raw).split(b"HTTP/1.1 101 ", 1)[0]  # before an upgrade, HTTP; after it, frames
        for response in parse_responses(head, eof=True):
            assert response.status in TABLE_STATUSES, response
