"""The server's opening handshake (RFC 6455 4.2) on the head h11 parsed, against wsproto's ``H11Handshake``.

``ClientConnection.accept`` runs wsproto's checks and builds its 101 from the
``HttpRequest`` h11 already parsed instead of handing wsproto the same bytes
to parse again. These tests feed the same request head to both and require
the same outcome: accepted with byte-identical 101 (accept token, negotiated
extension header) and the same permessage-deflate window, or rejected with
the same status, headers and reason. Heads are generated (valid and invalid:
missing, duplicate and empty headers, other versions, odd name casing,
extension offers with parameters, non-ASCII bytes).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import h11
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from wsproto import WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import AcceptConnection, RejectConnection
from wsproto.events import Request as WsRequest
from wsproto.extensions import Extension
from wsproto.frame_protocol import FrameProtocol
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError

from wshub_core import ClientState
from wshub_core._client import ClientConnection, HttpRequest, MessageReceived
from wshub_core._deflate import BoundedDeflate

MAX_MESSAGE = 1 << 16
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 1.3's example


@dataclass(frozen=True, slots=True, kw_only=True)
class Accepted:
    response: bytes  # the whole 101, bytes as sent
    bits: int | None  # permessage-deflate's server window, when negotiated


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejected:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]  # what the hint adds (426's Sec-WebSocket-Version), lower-cased
    reason: str | None  # wsproto's message, or the UnicodeError's; None: a HEAD's answer has no body


def deflate(compression: bool) -> list[Extension]:
    return [BoundedDeflate(max_message_size=MAX_MESSAGE)] if compression else []


def bits_of(extensions: list[Extension]) -> int | None:
    for extension in extensions:
        if isinstance(extension, BoundedDeflate) and extension.enabled():
            return extension.server_max_window_bits
    return None


def wsproto_outcome(head: bytes, compression: bool) -> Accepted | Rejected | None:
    """What ``H11Handshake`` does with ``head``; None: its h11 refused the head (no request to decide on)."""
    handshake = H11Handshake(ConnectionType.SERVER)
    try:
        handshake.receive_data(head)
    except RemoteProtocolError as exc:
        hint = exc.event_hint
        assert isinstance(hint, RejectConnection)
        if str(exc) == "Bad HTTP message":
            return None
        return Rejected(status=hint.status_code, headers=tuple((k.lower(), v) for k, v in hint.headers),
                        reason=str(exc))
    except UnicodeError as exc:
        return Rejected(status=400, headers=(), reason=f"header is not ASCII: {exc}")
    events = list(handshake.events())
    assert len(events) == 1 and isinstance(events[0], WsRequest)
    extensions = deflate(compression)
    try:
        response = handshake.send(AcceptConnection(extensions=extensions))
    except UnicodeError:
        raise AssertionError("wsproto decodes nothing after it accepted the request") from None
    except ValueError:
        # PerMessageDeflate.accept on a window size that is not a number: wsproto raises out of send().
        # The hub declines the offer instead (RFC 7692 7), so expect wsproto's answer without the extension.
        return wsproto_outcome(head, compression=False)
    return Accepted(response=response, bits=bits_of(extensions))


def response_of(data: bytes) -> h11.Response:
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    client.receive_data(data)
    answer = client.next_event()
    assert isinstance(answer, h11.Response), answer
    return answer


def hub_outcome(head: bytes, compression: bool, *, step: int = 0) -> Accepted | Rejected | None:
    """What ``ClientConnection`` does with ``head`` (fed whole, or ``step`` bytes at a time); None: h11 refused it."""
    client = ClientConnection(conn=1, now=0.0, max_header_size=1 << 16, max_message_size=MAX_MESSAGE)
    outcomes = []
    for i in range(0, len(head), step or len(head) or 1):
        outcomes += client.feed(head[i:i + (step or len(head))], 0.0)
    if not outcomes:
        assert client.state is ClientState.CLOSED
        return None
    [request] = outcomes
    assert isinstance(request, HttpRequest)
    accepted = client.accept(request, compression=compression)
    out = client.take_output()
    assert client.state is (ClientState.OPEN if accepted else ClientState.CLOSED)
    if accepted:
        return Accepted(response=out, bits=client.deflate_bits)
    response = response_of(out)
    added = tuple((k, v) for k, v in response.headers
                  if k not in (b"content-type", b"content-length", b"connection"))
    body = out.split(b"\r\n\r\n", 1)[1]
    if request.method == b"HEAD":
        assert body == b""
        return Rejected(status=response.status_code, headers=added, reason=None)
    prefix = b"bad WebSocket handshake: "
    assert body.startswith(prefix) and body.endswith(b"\n")
    return Rejected(status=response.status_code, headers=added, reason=body[len(prefix):-1].decode())


# -- generated heads ----------------------------------------------------------------------------

NON_ASCII = [b"\xc3\xa9", b"\x80", b"\xff", b"caf\xe9"]


@st.composite
def text(draw: st.DrawFn, choices: list[bytes]) -> bytes:
    """Mostly the valid value (``choices[0]``), else another of ``choices``, now and then any bytes a line can hold."""
    kind = draw(st.integers(0, 19))
    if kind < 15:
        return choices[0]
    if kind < 19:
        return draw(st.sampled_from(choices))
    return draw(st.binary(max_size=24)).replace(b"\r", b"").replace(b"\n", b"").replace(b"\0", b"")


@st.composite
def casing(draw: st.DrawFn, name: bytes) -> bytes:
    style = draw(st.sampled_from(["canonical", "lower", "upper", "mixed"]))
    if style == "lower":
        return name.lower()
    if style == "upper":
        return name.upper()
    if style == "mixed":
        flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
        return bytes(c ^ 0x20 if flip and chr(c).isalpha() else c for c, flip in zip(name, flips, strict=True))
    return name


PARAMETERS = [
    b"", b"client_max_window_bits", b"server_max_window_bits=10", b"server_no_context_takeover",
    b"client_no_context_takeover", b"client_max_window_bits=8", b"server_max_window_bits=15",
    b"server_max_window_bits=16", b"server_max_window_bits=7", b"client_max_window_bits=x",
    b"server_max_window_bits=", b"server_max_window_bits = 9", b"server_max_window_bits=\"12\"", b"foo=bar",
]


@st.composite
def offer(draw: st.DrawFn) -> bytes:
    others = [b"x-webkit-deflate-frame", b"PerMessage-Deflate", b"foo"]
    name = draw(st.sampled_from([b"permessage-deflate"] * 5 + others))
    params = draw(st.lists(st.sampled_from(PARAMETERS), max_size=3))
    return b"; ".join([name, *(p for p in params if p)])


def extensions_value() -> st.SearchStrategy[bytes]:
    offers = st.lists(offer(), min_size=1, max_size=3).map(b", ".join)
    return st.one_of(offers, offers, offers, text([b"permessage-deflate", *NON_ASCII]))


VALUES: dict[bytes, st.SearchStrategy[bytes]] = {
    b"Host": text([b"hub.test", b"hub.test:8080", b"", b"xn--nxasmq6b", b"xn--a", b"xn--", b"h\xc3\xa9.test"]),
    b"Upgrade": text([b"websocket", b"WebSocket", b"WEBSOCKET", b"h2c", b"websocket, h2c", b"websocket/13"]),
    b"Connection": text([b"Upgrade", b"upgrade", b"keep-alive, Upgrade", b"keep-alive,upgrade ,", b"close",
                         b"UPGRADE", b"upgrade\xe9", b"Upgrade, close"]),
    b"Sec-WebSocket-Key": text([KEY, b"", b"x", b"AAAAAAAAAAAAAAAAAAAAAA=="]),
    b"Sec-WebSocket-Version": text([b"13", b"8", b"", b"13, 8", b"abc", b"013", b"\xe9"]),
    b"Sec-WebSocket-Extensions": extensions_value(),
    b"Sec-WebSocket-Protocol": text([b"chat", b"chat, superchat", b"ch\xe4t", b""]),
    b"Origin": text([b"https://example.com"]),
    b"Content-Length": text([b"0", b"5", b"abc"]),
    b"Transfer-Encoding": text([b"chunked", b"gzip"]),
}
VALID = (b"Host", b"Upgrade", b"Connection", b"Sec-WebSocket-Key", b"Sec-WebSocket-Version")


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from([b"GET"] * 27 + [b"POST", b"get", b"HEAD"]))
    target = draw(st.sampled_from([b"/ws?clientKey=k", b"/", b"*"]))
    version = draw(st.sampled_from([b"HTTP/1.1"] * 4 + [b"HTTP/1.0"]))
    lines: list[tuple[bytes, bytes]] = []
    for name, values in VALUES.items():
        # The valid handshake's headers are there most of the time, the others now and then; any of them twice.
        copies = draw(st.sampled_from([1] * 20 + [0, 2] if name in VALID else
                                      [1, 1, 0, 2] if name == b"Sec-WebSocket-Extensions" else [0] * 6 + [1, 2]))
        lines += [(draw(casing(name)), draw(values)) for _ in range(copies)]
    order = draw(st.permutations(range(len(lines))))
    fields = b"".join(b"%s: %s\r\n" % lines[i] for i in order)
    return b"%s %s %s\r\n%s\r\n" % (method, target, version, fields)


def upgrade_head(*extra: bytes) -> bytes:
    return (b"GET /ws?clientKey=k HTTP/1.1\r\nHost: hub.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n" + b"".join(x + b"\r\n" for x in extra)
            + b"\r\n")


def assert_same(head: bytes, compression: bool, *, step: int = 0) -> Accepted | Rejected | None:
    want = wsproto_outcome(head, compression)
    got = hub_outcome(head, compression, step=step)
    if want is None:
        assert got is None or isinstance(got, Rejected)  # h11 refused what wsproto's h11 refused
    elif isinstance(got, Rejected) and got.reason is None:
        assert isinstance(want, Rejected) and got == replace(want, reason=None)
    else:
        assert got == want
    return got


class TestOpeningHandshake_RFC6455_4_2:
    """4.2.1 (what the server reads) and 4.2.2 (its 101) decided as wsproto's ``H11Handshake`` decides them."""

    @settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(head=heads(), compression=st.booleans(), step=st.sampled_from([0, 0, 1, 7]))
    @example(head=upgrade_head(), compression=False, step=0)
    @example(head=upgrade_head(b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"),
             compression=True, step=0)
    @example(head=upgrade_head(b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=x"),
             compression=True, step=0)
    @example(head=upgrade_head(b"Sec-WebSocket-Key: " + KEY), compression=False, step=0)
    @example(head=upgrade_head(b"Sec-WebSocket-Version: 8"), compression=False, step=0)
    @example(head=upgrade_head(b"Host: xn--a"), compression=False, step=1)
    def test_same_outcome_as_wsproto(self, head: bytes, compression: bool, step: int) -> None:
        """``step``: the head fed whole (0) or in pieces of that many bytes, as reads may cut it."""
        got = assert_same(head, compression, step=step)
        # --hypothesis-show-statistics: how the examples split
        if isinstance(got, Accepted):
            event(f"accepted, deflate {got.bits}")
        else:
            event("refused by h11" if got is None else f"rejected {got.status}")

    @pytest.mark.parametrize("head, status, headers", [
        (upgrade_head().replace(b"GET", b"POST", 1), 400, ()),
        (upgrade_head().replace(b"Connection: Upgrade", b"Connection: keep-alive"), 400, ()),
        (upgrade_head().replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8"), 426,
         ((b"sec-websocket-version", b"13"),)),
        (upgrade_head().replace(b"Sec-WebSocket-Version: 13\r\n", b""), 400, ((b"sec-websocket-version", b"13"),)),
        (upgrade_head().replace(b"Sec-WebSocket-Key: " + KEY + b"\r\n", b""), 400, ()),
        (upgrade_head().replace(b"Upgrade: websocket", b"Upgrade: h2c"), 400, ()),
        (upgrade_head().replace(b"HTTP/1.1\r\nHost: hub.test", b"HTTP/1.0"), 400, ()),
        (upgrade_head(b"Sec-WebSocket-Protocol: ch\xe4t"), 400, ()),
    ])
    def test_rejections_keep_wsproto_status(self, head: bytes, status: int,
                                            headers: tuple[tuple[bytes, bytes], ...]) -> None:
        got = assert_same(head, compression=False)
        assert isinstance(got, Rejected) and (got.status, got.headers) == (status, headers)

    def test_accept_token_of_rfc_example(self) -> None:
        got = assert_same(upgrade_head(), compression=False)
        assert isinstance(got, Accepted)
        assert b"\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in got.response  # RFC 6455 1.3


class TestPermessageDeflate_RFC7692_7:
    """The extension is negotiated by wsproto's ``server_extensions_handshake`` through ``BoundedDeflate``."""

    @pytest.mark.parametrize("offer, header, bits", [
        (b"permessage-deflate", b"permessage-deflate; client_no_context_takeover; server_no_context_takeover", 15),
        (b"permessage-deflate; server_max_window_bits=10",
         b"permessage-deflate; client_no_context_takeover; server_no_context_takeover; server_max_window_bits=10",
         10),
        (b"permessage-deflate; server_max_window_bits=16", None, None),  # out of range: wsproto declines
        (b"permessage-deflate; client_max_window_bits=x", None, None),  # not a number: declined too
        (b"x-webkit-deflate-frame", None, None),
    ])
    def test_negotiated_header(self, offer: bytes, header: bytes | None, bits: int | None) -> None:
        got = assert_same(upgrade_head(b"Sec-WebSocket-Extensions: " + offer), compression=True)
        assert isinstance(got, Accepted) and got.bits == bits
        assert response_header(got.response, b"sec-websocket-extensions") == header

    def test_not_offered_when_compression_is_off(self) -> None:
        got = assert_same(upgrade_head(b"Sec-WebSocket-Extensions: permessage-deflate"), compression=False)
        assert isinstance(got, Accepted) and got.bits is None
        assert response_header(got.response, b"sec-websocket-extensions") is None


def response_header(response: bytes, name: bytes) -> bytes | None:
    for line in response.split(b"\r\n")[1:]:
        key, _, value = line.partition(b": ")
        if key.lower() == name:
            return value
    return None


class TestHeadInPieces:
    """The head fed one byte at a time, and with frames behind it in the same read."""

    def test_one_byte_at_a_time(self) -> None:
        head = upgrade_head(b"Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=9")
        assert hub_outcome(head, True, step=1) == wsproto_outcome(head, True)

    def test_frames_behind_the_head(self) -> None:
        ws = WSConnection(ConnectionType.CLIENT)
        head = ws.send(WsRequest(host="hub.test", target="/ws?clientKey=k"))
        frame = bytes(FrameProtocol(client=True, extensions=[]).send_data("hi", fin=True))  # before the 101
        client = ClientConnection(conn=1, now=0.0, max_header_size=8192, max_message_size=MAX_MESSAGE)
        [request] = client.feed(head + frame, 0.0)
        assert isinstance(request, HttpRequest)
        assert client.accept(request)
        assert client.pending_after_accept() == [MessageReceived(data=b"hi")]
        ws.receive_data(client.take_output())
        assert [type(e) for e in ws.events()] == [AcceptConnection]
