"""Fuzzing request bodies, keep-alive and pipelining in the client table (``pytest fuzz/``).

Hostile streams of requests -- Content-Length and chunked bodies, HTTP/1.0,
``Connection: close``, bodies over the limit, all mutated and cut anywhere --
go to a ``ClientTable`` whose owner reads every ``/echo`` body and answers
with keep-alive. The invariant (h11's own fuzz invariant): every input is
either accepted or answered with a documented error, never an exception, and

- what the table delivered (request targets, and the bodies it read) is what
  a reference parser (a fresh h11 server fed the same bytes) reads, up to
  where the table stopped;
- a real HTTP client (h11) reads back one complete answer per request with a
  documented status, an ``/echo`` answer carrying the body the table delivered;
- nothing is left behind once the socket is gone.
"""

from __future__ import annotations

import h11
from core.harness import chunked, fuzz_examples, mutated
from core.table_driver import TABLE_STATUSES, Driver, Owner, request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wshub_core._client import HttpBody, HttpRequest

FUZZ = settings(max_examples=fuzz_examples(300), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LIMIT = 64
MAX_HEAD = 512


@st.composite
def one_request(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from([b"POST", b"PUT", b"GET", b"HEAD"]))
    target = draw(st.sampled_from([b"/echo", b"/echo?x=1", b"/get", b"/nowhere"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    headers = draw(st.lists(st.sampled_from([
        (b"Connection", b"close"), (b"Connection", b"keep-alive"), (b"Expect", b"100-continue"),
        (b"X-Pad", b"p" * 40), (b"Content-Length", b"3"),
    ]), max_size=2, unique=True))
    size = draw(st.sampled_from([0, 1, 5, LIMIT, LIMIT + 1]) | st.integers(0, 2 * LIMIT))
    body = draw(st.binary(min_size=size, max_size=size))
    framing = draw(st.sampled_from(["length", "chunked", "none"]))
    if framing == "chunked":
        cuts = sorted(draw(st.sets(st.integers(1, max(1, len(body))), max_size=4)))
        chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        return request(method, target, chunks=chunks, version=version, headers=headers)
    return request(method, target, body=body if framing == "length" else None, version=version, headers=headers)


def reference(stream: bytes) -> list[tuple[bytes, bytes | None]]:
    """(target, body) of every request head a fresh h11 server reads from ``stream``, cycling after each.

    The body is None when it did not arrive whole.
    """
    server = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    server.receive_data(stream)
    out: list[tuple[bytes, bytes | None]] = []
    body = b""
    while True:
        try:
            event = server.next_event()
        except h11.RemoteProtocolError:
            return out
        if isinstance(event, h11.Request):
            out.append((event.target, None))
            body = b""
        elif isinstance(event, h11.Data):
            body += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            out[-1] = (out[-1][0], body)
            server.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
            server.send(h11.EndOfMessage())
            if server.our_state is not h11.DONE:
                return out  # HTTP/1.0 or Connection: close: no next cycle
            server.start_next_cycle()
        else:
            return out


def check(stream: bytes, reads: list[bytes]) -> None:
    d = Driver(owner=Owner(limit=LIMIT, keep_alive=True), max_header_size=MAX_HEAD, max_outbound_buffer=1 << 20)
    sock = d.open()
    for piece in reads:
        d.send(sock, piece)
    seen = d.owner.seen
    targets = [o.target for _, o in seen if isinstance(o, HttpRequest)]
    expected = reference(stream)
    assert targets == [t for t, _ in expected][: len(targets)], (targets, expected)
    # Each body the table read is the reference's body of the same request.
    read = {}
    for i, (_, outcome) in enumerate(seen):
        if isinstance(outcome, HttpBody):
            previous = seen[i - 1][1]
            assert isinstance(previous, HttpRequest)
            read[len([o for _, o in seen[:i] if isinstance(o, HttpRequest)]) - 1] = outcome.data
    for index, body in read.items():
        assert len(body) <= LIMIT
        assert body == expected[index][1]
    d.advance(100.0)  # the idle keep-alive wait, a stalled body's 408
    delivered = d.owner.requests()
    responses = [r for r in sock.responses([*(r.method for r in delivered), b"GET"]) if r.status != 100]
    assert len(delivered) <= len(responses) <= len(delivered) + 1  # one answer each, and maybe an error's
    for i, response in enumerate(responses):
        assert response.status in TABLE_STATUSES | {404}, response
        assert response.complete, response
        if i < len(delivered) and i in read and response.status == 200 and delivered[i].method != b"HEAD":
            assert response.body == read[i]  # /echo answered with the body it read
    d.lose(sock)
    assert d.table.is_empty()


class TestBodyFuzz:
    @FUZZ
    @given(st.data())
    def test_valid_pipelined_requests_cut_anywhere(self, data: st.DataObject) -> None:
        stream = b"".join(data.draw(st.lists(one_request(), min_size=1, max_size=4)))
        check(stream, data.draw(chunked(stream)))

    @FUZZ
    @given(st.data())
    def test_mutated_requests(self, data: st.DataObject) -> None:
        stream = data.draw(mutated(b"".join(data.draw(st.lists(one_request(), min_size=1, max_size=3)))))
        check(stream, data.draw(chunked(stream)))

    @FUZZ
    @given(st.data())
    def test_requests_one_byte_at_a_time(self, data: st.DataObject) -> None:
        stream = data.draw(mutated(data.draw(one_request()))) + data.draw(one_request())
        check(stream, [stream[i:i + 1] for i in range(len(stream))])
