"""A no-I/O harness for the Sans-IO core: a Hub, a virtual clock, a fake Redis, wsproto clients.

What it is responsible for:
- the clock: ``now`` only moves when a test calls ``advance``; every timer the
  hub asks for fires in deadline order (aioquic's virtual clock);
- the Redis server: ``FakeRedis`` parses the RESP the hub sends (hiredis),
  answers AUTH/SELECT/SUBSCRIBE/UNSUBSCRIBE/PUBLISH/PING like Redis 7 does on a
  RESP2 connection, keeps its own view of what is subscribed and lets a test
  publish to it (the listener's side). Replies may be held and delivered later,
  whole or in pieces, to interleave them with other inputs;
- the clients: each connection is driven by a real WebSocket client state
  machine (wsproto) or by raw bytes, and decodes what the hub sent it.

What it must never do: open a socket, read a clock, or let a hub action go
unchecked. Every action is checked against the contract in
docs/architecture.md (no bytes after CloseClient, no bytes to a Redis link that
is down, no link id used twice, close codes from the documented set, ...); a
violation raises ``ContractError`` in the test that caused it.

Sentinel mode: ``SentinelDriver`` drives a ``RedisBroker`` alone (no hub, no
clients) and lets a test play the sentinels and the Redis servers by writing
their RESP replies by hand (tests/core/test_sentinel.py, fuzz/test_fuzz_sentinel.py).

Links: the hub names each dial by a new id (``OpenLink``). Tests talk about
roles (``SUB``, ``CMD``); the harness learns which role each new id plays from
``hub.broker.current_links()`` when it executes the ``OpenLink``, and keeps the
role's latest id (``h.link(role)``) to report that link's input.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import h11
import hiredis
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from wshub_core import (
    Action,
    CloseClient,
    CloseLink,
    Config,
    Hub,
    OpenLink,
    PauseClient,
    RedisLink,
    RedisState,
    ResumeClient,
    SendToClient,
    SendToClients,
    SendToLink,
    StopListening,
    Stopped,
    load_config,
)
from wshub_core._redis_broker import RedisBroker

SUB = RedisLink.SUBSCRIBER
CMD = RedisLink.COMMANDS

# RFC 6455 section 7.4.1 codes the hub documents (CloseCode), and the HTTP
# statuses it documents (architecture.md), plus h11's own hint for a
# Transfer-Encoding it cannot parse.
DOCUMENTED_CLOSE_CODES = frozenset({1000, 1001, 1002, 1007, 1008, 1009, 1011, 4000, 4001})
DOCUMENTED_HTTP_STATUSES = frozenset({200, 400, 401, 403, 404, 405, 408, 413, 426, 431, 501, 502, 503})

WS_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 section 1.3 sample nonce


def fuzz_examples(default: int) -> int:
    """max_examples of a fuzz test; ``WSHUB_FUZZ_EXAMPLES`` overrides it for a longer run."""
    return int(os.environ.get("WSHUB_FUZZ_EXAMPLES", default))


# -- hostile-input strategies (shared by the fuzz tests) -------------------------


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut at random places (the socket decides, not the peer)."""
    if not data:
        return []
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(data) - 1)), max_size=8)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """Byte flips, insertions, deletions, duplications and truncation of valid input."""
    out = bytearray(data)
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "duplicate", "truncate"]))
        pos = draw(st.integers(0, max(0, len(out))))
        if kind == "flip" and out:
            out[min(pos, len(out) - 1)] = draw(st.integers(0, 255))
        elif kind == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=8) | st.sampled_from(
                [b"\r\n", b"\r\n\r\n", b":", b" ", b"\x00", b"\xff", b"\n", b"\t", b",", b"%"]))
        elif kind == "delete":
            del out[pos:pos + draw(st.integers(1, 8))]
        elif kind == "duplicate":
            piece = out[pos:pos + draw(st.integers(1, 40))]
            out[pos:pos] = piece
        else:
            del out[pos:]
    return bytes(out)


class ContractError(AssertionError):
    """The hub emitted an action the architecture forbids at that point."""


# -- configuration --------------------------------------------------------------


def make_config(text: str | None = None, **overrides: object) -> Config:
    """A config from YAML text (through the real loader), then attribute overrides; the Redis broker by default."""
    config = load_config(text)
    if "broker" not in (text or "") and "broker" not in overrides:
        overrides["broker"] = "redis"  # the harness drives the Redis broker's links
    if "probeInterval" not in (text or ""):
        # The stall probe's SUBSCRIBE and PUBLISHes would be in every command list a test checks: off unless
        # a test asks for it (tests/core/test_probe.py, the fuzz and the simulation do).
        overrides.setdefault("redis_probe_interval", 0.0)
    if "history" not in (text or ""):
        # History's FUNCTION LOAD and reads would be in every command list too: off unless a test asks for it
        # (tests/core/test_history.py does).
        overrides.setdefault("history", False)
    return dataclasses.replace(config, **overrides)  # type: ignore[arg-type]


# -- RESP, written by hand (what Redis sends) -----------------------------------


def resp_bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def resp_int(value: int) -> bytes:
    return b":%d\r\n" % value


def resp_simple(value: bytes) -> bytes:
    return b"+%s\r\n" % value


def resp_error(value: bytes) -> bytes:
    return b"-%s\r\n" % value


def resp_array(*items: bytes) -> bytes:
    """``items`` are already RESP-encoded."""
    return b"*%d\r\n" % len(items) + b"".join(items)


def resp_value(value: object) -> bytes:
    """A nested reply (bytes: bulk, int: integer, list: array) as RESP2."""
    if isinstance(value, bytes):
        return resp_bulk(value)
    if isinstance(value, int):
        return resp_int(value)
    assert isinstance(value, list), value
    return resp_array(*(resp_value(v) for v in value))


def resp_push(kind: bytes, channel: bytes, count: int) -> bytes:
    """A (un)subscribe confirmation: ``*3 $kind $channel :count``."""
    return resp_array(resp_bulk(kind), resp_bulk(channel), resp_int(count))


def resp_message(channel: bytes, payload: bytes) -> bytes:
    return resp_array(resp_bulk(b"message"), resp_bulk(channel), resp_bulk(payload))


def resp_pmessage(pattern: bytes, channel: bytes, payload: bytes) -> bytes:
    return resp_array(resp_bulk(b"pmessage"), resp_bulk(pattern), resp_bulk(channel), resp_bulk(payload))


def glob_matches(pattern: bytes, channel: bytes) -> bool:
    """Redis' glob, as far as the hub uses it: backslash escapes and ``*`` (its only pattern is ``PREFIX*``)."""
    literal, star = bytearray(), False
    i = 0
    while i < len(pattern):
        if pattern[i] == ord("\\") and i + 1 < len(pattern):
            literal.append(pattern[i + 1])
            i += 2
        elif pattern[i] == ord("*") and i == len(pattern) - 1:
            star = True
            i += 1
        else:
            literal.append(pattern[i])
            i += 1
    return channel.startswith(bytes(literal)) if star else channel == bytes(literal)


# -- frames and HTTP, written by hand (what hostile clients send) --------------


def ws_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes | None = b"\x01\x02\x03\x04",
             rsv: int = 0, length: int | None = None) -> bytes:
    """One RFC 6455 section 5.2 frame; ``length`` overrides the declared payload length."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    mask_bit = 0x80 if mask is not None else 0
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 1 << 16:
        head += bytes([mask_bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([mask_bit | 127]) + n.to_bytes(8, "big")
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def upgrade_request(target: bytes = b"/ws?session_key=k", *, method: bytes = b"GET",
                    headers: Iterable[tuple[bytes, bytes]] | None = None,
                    extra: Iterable[tuple[bytes, bytes]] = ()) -> bytes:
    """A raw HTTP/1.1 upgrade request head (RFC 6455 section 4.1)."""
    if headers is None:
        headers = [
            (b"Host", b"hub.test"),
            (b"Upgrade", b"websocket"),
            (b"Connection", b"Upgrade"),
            (b"Sec-WebSocket-Key", WS_KEY),
            (b"Sec-WebSocket-Version", b"13"),
        ]
    lines = [method + b" " + target + b" HTTP/1.1"]
    lines += [k + b": " + v for k, v in [*headers, *extra]]
    return b"\r\n".join(lines) + b"\r\n\r\n"


@dataclass
class HttpAnswer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes
    rest: bytes  # bytes after the head of a 101 (WebSocket frames)


def parse_http_answer(data: bytes, *, method: bytes = b"GET") -> HttpAnswer | None:
    """Parse what the hub answered with a real HTTP client parser; None if incomplete."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[
        ("host", "x"), ("connection", "upgrade"), ("upgrade", "websocket")]))
    client.send(h11.EndOfMessage())
    client.receive_data(bytes(data))
    answer: HttpAnswer | None = None
    while True:
        event = client.next_event()
        if isinstance(event, h11.InformationalResponse):
            if event.status_code == 100:
                continue  # "100 Continue" to an Expect: 100-continue; the answer follows
            assert event.status_code == 101, event
            return HttpAnswer(status=101, headers=dict(event.headers), body=b"",
                              rest=bytes(client.trailing_data[0]))
        if isinstance(event, h11.Response):
            answer = HttpAnswer(status=event.status_code, headers=dict(event.headers), body=b"", rest=b"")
        elif isinstance(event, h11.Data):
            assert answer is not None
            answer.body += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            return answer
        else:
            return None  # NEED_DATA: not all of it yet


# -- the fake Redis server ------------------------------------------------------


@dataclass
class Reply:
    """One reply queued on a link: its bytes and what it means (for models)."""

    data: bytes
    kind: str  # "message", "subscribe", "unsubscribe", "pong", "ok", "int", "error", "raw"
    channel: bytes = b""
    payload: bytes = b""
    published: int | None = None  # index in FakeRedis.published of the PUBLISH this answers


@dataclass
class FakeLink:
    """The server side of one of the hub's two connections (by role: each reconnect is a new link id)."""

    link: RedisLink
    up: bool = False
    dialing: bool = False  # OpenLink seen, not answered yet (only when auto_connect is off)
    subscribed: set[bytes] = field(default_factory=set)  # server-side view (subscriber link)
    patterns: set[bytes] = field(default_factory=set)  # PSUBSCRIBEd globs (subscriber link)
    pending: list[Reply] = field(default_factory=list)  # replies not yet delivered to the hub
    partial: int = 0  # bytes of pending[0] already delivered
    # The prelude (AUTH/SELECT, or PING) each connection opened with: kept apart from ``commands``.
    handshakes: list[list[list[bytes]]] = field(default_factory=list)
    commands: list[list[bytes]] = field(default_factory=list)  # every command received, all sessions
    session_commands: list[list[bytes]] = field(default_factory=list)  # since the last connect
    sessions: list[list[list[bytes]]] = field(default_factory=list)  # commands of each connection, in order
    connects: int = 0  # OpenLink actions seen for this role
    closes: int = 0  # CloseLink actions seen for this role
    db: int = 0
    authed: bool = False
    _reader: hiredis.Reader = field(default_factory=hiredis.Reader)

    def reset(self) -> None:
        self.up = False
        self.dialing = False
        self.subscribed.clear()
        self.patterns.clear()
        self.pending.clear()
        self.partial = 0
        self.session_commands = []
        self.db = 0
        self.authed = False
        self._reader = hiredis.Reader()


class FakeRedis:
    """Redis as the hub sees it through its two links; commands run when they arrive."""

    def __init__(self, *, password: str = "", username: str = "") -> None:
        self.links = {SUB: FakeLink(SUB), CMD: FakeLink(CMD)}
        self.password = password
        self.username = username
        self.published: list[tuple[bytes, bytes]] = []  # every PUBLISH run, in order (with resends)
        self.on_publish: list[object] = []  # hooks: callables(channel, payload)

    def connect(self, link: RedisLink) -> None:
        fake = self.links[link]
        fake.reset()
        fake.up = True
        fake.sessions.append(fake.session_commands)

    def drop(self, link: RedisLink, *, lost_in_transit: bool = False) -> None:
        """The connection is gone: its subscriptions and undelivered replies with it.

        With ``lost_in_transit`` the PUBLISHes whose replies the hub never got
        are forgotten too, as if their bytes died on the way: the hub cannot
        tell the difference, so it must send them again.
        """
        fake = self.links[link]
        if lost_in_transit:
            undo = sorted((r.published for r in fake.pending if r.published is not None), reverse=True)
            for index in undo:
                del self.published[index]
        fake.reset()

    def receive(self, link: RedisLink, data: bytes, *, handshake: bool = False) -> None:
        """Commands from the hub; ``handshake``: sent while the hub's link waited for its prelude replies."""
        fake = self.links[link]
        if not fake.up:
            raise ContractError(f"SendToLink on {link.value} while that link is down")
        fake._reader.feed(data)
        if handshake:
            fake.handshakes.append([])
        while (cmd := fake._reader.gets()) is not False:
            if not isinstance(cmd, list) or not all(isinstance(a, bytes) for a in cmd):
                raise ContractError(f"hub sent something that is not a command: {cmd!r}")
            if handshake:
                if cmd[0] not in (b"AUTH", b"SELECT", b"PING"):
                    raise ContractError(f"{cmd[0]!r} sent before the link's prelude was answered")
                fake.handshakes[-1].append(cmd)
                self._run(fake, cmd)
                continue
            fake.commands.append(cmd)
            fake.session_commands.append(cmd)
            self._run(fake, cmd)

    def _run(self, fake: FakeLink, cmd: list[bytes]) -> None:
        verb = cmd[0].upper()
        args = cmd[1:]
        out = fake.pending
        if self.password and not fake.authed and verb != b"AUTH":
            out.append(Reply(resp_error(b"NOAUTH Authentication required."), "error"))
            return
        if verb == b"AUTH":
            user, password = (args[0], args[1]) if len(args) == 2 else (b"default", args[0])
            if self.password and password == self.password.encode() and user == (
                self.username or "default"
            ).encode():
                fake.authed = True
                out.append(Reply(resp_simple(b"OK"), "ok"))
            else:
                out.append(Reply(resp_error(b"WRONGPASS invalid username-password pair or user is disabled."),
                                 "error"))
        elif verb == b"SELECT":
            fake.db = int(args[0])
            out.append(Reply(resp_simple(b"OK"), "ok"))
        elif verb == b"SUBSCRIBE":
            for channel in args:
                fake.subscribed.add(channel)
                out.append(Reply(resp_push(b"subscribe", channel, len(fake.subscribed)), "subscribe", channel))
        elif verb == b"UNSUBSCRIBE":
            for channel in args:
                fake.subscribed.discard(channel)
                out.append(Reply(resp_push(b"unsubscribe", channel, len(fake.subscribed)), "unsubscribe",
                                 channel))
        elif verb in (b"PSUBSCRIBE", b"PUNSUBSCRIBE"):
            for pattern in args:
                (fake.patterns.add if verb == b"PSUBSCRIBE" else fake.patterns.discard)(pattern)
                kind = verb.lower()
                out.append(Reply(resp_push(kind, pattern, len(fake.subscribed) + len(fake.patterns)),
                                 kind.decode(), pattern))
        elif verb == b"PING":
            if fake.subscribed:  # RESP2 subscribed context answers with a push
                out.append(Reply(resp_array(resp_bulk(b"pong"), resp_bulk(b"")), "pong"))
            else:
                out.append(Reply(resp_simple(b"PONG"), "pong"))
        elif verb == b"PUBLISH":
            if fake.link is SUB:
                raise ContractError("PUBLISH on the subscriber link")
            channel, payload = args
            self.published.append((channel, payload))
            for hook in self.on_publish:
                hook(channel, payload)  # type: ignore[operator]
            out.append(Reply(resp_int(self.publish(channel, payload)), "int", channel, payload,
                             published=len(self.published) - 1))
        else:
            out.append(Reply(resp_error(b"ERR unknown command '" + verb + b"'"), "error"))

    def publish(self, channel: bytes, payload: bytes) -> int:
        """Another Redis client publishes: the hub's subscriber gets it if subscribed now."""
        fake = self.links[SUB]
        if not fake.up:
            return 0
        receivers = 0
        if channel in fake.subscribed:
            fake.pending.append(Reply(resp_message(channel, payload), "message", channel, payload))
            receivers = 1
        for pattern in sorted(fake.patterns):
            if glob_matches(pattern, channel):
                fake.pending.append(Reply(resp_pmessage(pattern, channel, payload), "message", channel, payload))
                receivers = 1
        return receivers


# -- clients --------------------------------------------------------------------


class Client:
    """One client socket, as the hub's peer sees it."""

    def __init__(self, harness: Harness, conn: int, *, auto_pong: bool = True, method: bytes = b"GET") -> None:
        self.h = harness
        self.conn = conn
        self.auto_pong = auto_pong
        self.method = method
        self.ws: WSConnection | None = None  # set when the handshake is driven by wsproto
        self.frames: Connection | None = None  # raw mode, after a 101
        self.raw = bytearray()  # every byte the hub sent
        self.sends: list[bytes] = []  # each SendToClient, in order
        self.events: list[Event] = []
        self.messages: list[str | bytes] = []
        self._parts: list[str | bytes] = []
        self.status: int | None = None  # 101, or the HTTP status of the answer
        self.answer: HttpAnswer | None = None
        self.close_code: int | None = None  # from the hub's close frame
        self.close_reason = ""
        self.pings = 0
        self.closed = False  # CloseClient seen (or we reported the socket lost)
        self.abort: bool | None = None
        self.reading_paused = False
        self.write_full = False  # between write_paused and write_resumed: a graceful close cannot flush
        self.closing = False  # a graceful CloseClient that has not flushed: only an abort may follow
        self.lost = False
        self.sent_close = False  # we started the close handshake (the hub echoes our code)

    # -- what the hub sends us ------------------------------------------------

    def receive(self, data: bytes) -> None:
        self.raw += data
        self.sends.append(data)
        if self.ws is not None:
            self.ws.receive_data(data)
            self._events(self.ws.events())
            return
        if self.frames is not None:
            self.frames.receive_data(data)
            self._events(self.frames.events())
            return
        answer = parse_http_answer(bytes(self.raw), method=self.method)
        if answer is None:
            return
        self.answer = answer
        self.status = answer.status
        if answer.status == 101:
            self.frames = Connection(ConnectionType.CLIENT)
            if answer.rest:
                self.frames.receive_data(answer.rest)
                self._events(self.frames.events())

    def _events(self, events: Iterable[Event]) -> None:
        for event in events:
            self.events.append(event)
            if isinstance(event, AcceptConnection):
                self.status = 101
            elif isinstance(event, RejectConnection):
                self.status = event.status_code
            elif isinstance(event, RejectData):
                pass
            elif isinstance(event, TextMessage | BytesMessage):
                self._parts.append(event.data)
                if event.message_finished:
                    if isinstance(event, TextMessage):
                        self.messages.append("".join(p for p in self._parts if isinstance(p, str)))
                    else:
                        self.messages.append(b"".join(p for p in self._parts if isinstance(p, bytes | bytearray)))
                    self._parts = []
            elif isinstance(event, Ping):
                self.pings += 1
                if self.auto_pong and not self.closed:
                    self.h.pending_inputs.append((self, self._proto.send(event.response())))
            elif isinstance(event, CloseConnection):
                if self.close_code is not None:
                    raise ContractError(f"conn {self.conn}: second close frame")
                if not self.sent_close and event.code not in DOCUMENTED_CLOSE_CODES:
                    raise ContractError(f"conn {self.conn}: undocumented close code {event.code}")
                self.close_code = event.code
                self.close_reason = event.reason or ""

    @property
    def _proto(self) -> WSConnection | Connection:
        proto = self.ws if self.ws is not None else self.frames
        assert proto is not None, "not upgraded"
        return proto

    @property
    def open(self) -> bool:
        """Upgraded, and neither side has closed."""
        return self.status == 101 and not self.closed and self.close_code is None

    # -- what we send the hub -------------------------------------------------

    def send_event(self, event: Event) -> bytes:
        data = self._proto.send(event)
        self.send_raw(data)
        return data

    def send_raw(self, data: bytes, *, chunk: int | None = None) -> None:
        self.h.client_data(self.conn, data, chunk=chunk)

    def text(self, text: str) -> None:
        self.send_event(TextMessage(data=text))

    def binary(self, data: bytes) -> None:
        self.send_event(BytesMessage(data=data))

    def ping(self, payload: bytes = b"") -> None:
        self.send_event(Ping(payload=payload))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the close handshake from the client side (RFC 6455 section 7.1.2)."""
        self.sent_close = True
        self.send_event(CloseConnection(code=code, reason=reason))


# -- the harness -----------------------------------------------------------------


class Harness:
    """A hub with a virtual clock, a fake Redis and clients. No sockets, no real time."""

    def __init__(self, config: Config | None = None, *, auto_connect: bool = True, auto_reply: bool = True,
                 auto_handshake: bool = True, redis: FakeRedis | None = None, start: bool = True,
                 now: float = 1000.0, seed: int = 0) -> None:
        self.config = config or make_config()
        self.hub = Hub(config=self.config, seed=seed)
        self.now = now
        self.redis = redis or FakeRedis(password=self.config.redis_password, username=self.config.redis_username)
        self.auto_connect = auto_connect
        self.auto_reply = auto_reply
        # Without auto_reply, still answer the prelude (AUTH/SELECT/PING) of each new connection at once,
        # as a real Redis does, so a test holds back only the replies it is about.
        self.auto_handshake = auto_handshake
        self.refuse: set[RedisLink] = set()  # links whose dials fail (connection refused)
        self.link_ids: dict[RedisLink, int] = {}  # each role's latest link id (current while up or dialling)
        self.link_roles: dict[int, RedisLink] = {}  # every link id the hub ever dialled, and its role
        self.clients: dict[int, Client] = {}
        self.log: list[tuple[float, Action]] = []  # every action, with the time it was emitted
        self.pending_inputs: list[tuple[Client, bytes]] = []  # auto pongs, fed after the current batch
        self.pending_lost: list[Client] = []  # graceful closes that flushed: client_lost after the batch
        self.listening = True
        self.stopped = False
        if start:
            self.hub.start(self.now)
            self.run()

    # -- driving the hub --------------------------------------------------------

    def run(self) -> list[Action]:
        """Execute the hub's actions like a shell, until it has nothing more to say."""
        done: list[Action] = []
        for _ in range(10_000):
            actions = self.hub.actions()
            if not actions:
                if self.pending_lost:
                    client = self.pending_lost.pop(0)
                    if client.closing:
                        client.closing = False
                        self.hub.client_lost(client.conn, self.now)
                    continue
                if self.pending_inputs:
                    client, data = self.pending_inputs.pop(0)
                    if not client.closed:
                        self.hub.client_data(client.conn, data, self.now)
                    continue
                if self.auto_reply and self._deliver_one_batch():
                    continue
                if self.auto_handshake and self._deliver_handshakes():
                    continue
                return done
            written: set[int] = set()  # one write per socket per drain, alone or in a SendToClients
            for action in actions:
                self.log.append((self.now, action))
                done.append(action)
                self._execute(action, written)
        raise AssertionError("the hub never went quiet")

    def _execute(self, action: Action, written: set[int]) -> None:
        if isinstance(action, SendToClient):
            self._write(action.conn, action.data, action, written)
        elif isinstance(action, SendToClients):
            if len(set(action.conns)) != len(action.conns) or len(action.conns) < 2:
                raise ContractError(f"SendToClients needs two distinct conns or more: {action.conns!r}")
            for conn in action.conns:
                self._write(conn, action.data, action, written)
        elif isinstance(action, CloseClient):
            client = self.clients.get(action.conn)
            if client is not None and client.closing and action.abort:
                client.closing = False  # the flushing close that could not flush, aborted
                client.abort = True
                return
            client = self._live_client(action.conn, action)
            client.closed = True
            client.abort = action.abort
            if not action.abort:
                # The transport flushes, then reports connection_lost (at once unless the socket is full).
                client.closing = True
                if not client.write_full:
                    self.pending_lost.append(client)
        elif isinstance(action, PauseClient):
            client = self._live_client(action.conn, action)
            if client.reading_paused:
                raise ContractError(f"conn {action.conn} paused twice")
            client.reading_paused = True
        elif isinstance(action, ResumeClient):
            client = self._live_client(action.conn, action)
            if not client.reading_paused:
                raise ContractError(f"conn {action.conn} resumed without a pause")
            client.reading_paused = False
        elif isinstance(action, OpenLink):
            if action.link in self.link_roles:
                raise ContractError(f"OpenLink reuses link id {action.link}")
            role = self._role_of_dial(action.link)
            fake = self.redis.links[role]
            if fake.up or fake.dialing:
                raise ContractError(f"OpenLink on {role.value} while a connection exists")
            fake.connects += 1
            if (action.host, action.port) != (self.config.redis_host, self.config.redis_port):
                raise ContractError(f"OpenLink to {action.host}:{action.port}")
            if action.tls is not self.config.redis_tls:
                raise ContractError(f"OpenLink with tls={action.tls}, the config says {self.config.redis_tls}")
            self.link_roles[action.link] = role
            self.link_ids[role] = action.link
            fake.dialing = True
            if self.auto_connect:
                self.answer_dial(role)
        elif isinstance(action, SendToLink):
            role = self._current_role(action)
            self.redis.receive(role, action.data, handshake=self.hub.link_states()[role] is RedisState.HANDSHAKE)
        elif isinstance(action, CloseLink):
            role = self._current_role(action)
            fake = self.redis.links[role]
            if not (fake.up or fake.dialing):
                raise ContractError(f"CloseLink on {role.value} while it is down")
            self.redis.drop(role)
            fake.closes += 1
        elif isinstance(action, StopListening):
            self.listening = False
        elif isinstance(action, Stopped):
            if self.stopped:
                raise ContractError("Stopped twice")
            self.stopped = True
        else:  # pragma: no cover - a new action type must be taught to the harness
            raise ContractError(f"unknown action {action!r}")

    def _write(self, conn: int, data: bytes, action: Action, written: set[int]) -> None:
        client = self._live_client(conn, action)
        if not data:
            raise ContractError(f"empty write for conn {conn}: {action!r}")
        if conn in written:
            raise ContractError(f"two writes to conn {conn} in one drain: {action!r}")
        written.add(conn)
        client.receive(data)

    def _live_client(self, conn: int, action: Action) -> Client:
        client = self.clients.get(conn)
        if client is None:
            raise ContractError(f"{action!r} for an unknown conn")
        if client.closed:
            raise ContractError(f"{type(action).__name__} for conn {conn} after CloseClient/client_lost")
        return client

    def _role_of_dial(self, link: int) -> RedisLink:
        """The role a new link id plays: the hub holds it as that role's current link."""
        for role, current in self.hub.broker.current_links().items():
            if current == link:
                return role
        raise ContractError(f"OpenLink for link {link}, which the hub does not hold as any role's link")

    def _current_role(self, action: SendToLink | CloseLink) -> RedisLink:
        """The role of the link an action names; only the role's latest link may be named."""
        role = self.link_roles.get(action.link)
        if role is None:
            raise ContractError(f"{action!r} names a link id never opened")
        if self.link_ids[role] != action.link:
            raise ContractError(f"{action!r} names an old {role.value} link (the latest is {self.link_ids[role]})")
        return role

    def link(self, role: RedisLink) -> int:
        """The id of the role's latest dial: the one its input is reported for."""
        return self.link_ids[role]

    def role_of(self, link: int) -> RedisLink:
        """The role a link id (current or old) was dialled for."""
        return self.link_roles[link]

    def answer_dial(self, link: RedisLink) -> None:
        """Report the outcome of an OpenLink: up, or refused if the link is in ``refuse``."""
        fake = self.redis.links[link]
        assert fake.dialing
        fake.dialing = False
        if link in self.refuse:
            self.hub.link_lost(self.link(link), self.now)
        else:
            self.redis.connect(link)
            self.hub.link_opened(self.link(link), self.now)

    # -- clock --------------------------------------------------------------------

    def advance(self, seconds: float) -> list[Action]:
        """Let virtual time pass, firing every deadline on the way, in order."""
        target = self.now + seconds
        done: list[Action] = []
        for _ in range(100_000):
            deadline = self.hub.next_deadline()
            if deadline is None or deadline > target:
                break
            self.now = max(self.now, deadline)
            self.hub.handle_timer(self.now)
            done += self.run()
            after = self.hub.next_deadline()
            if after is not None and after <= self.now:
                # The shell would arm a timer that fires at once, forever: a busy loop.
                raise ContractError(f"next_deadline() {after} is not after the handle_timer({self.now}) just done")
        else:
            raise AssertionError("timers never settled")
        self.now = target
        return done

    # -- Redis --------------------------------------------------------------------

    def _deliver_handshakes(self) -> bool:
        """Answer the prelude of links still in their handshake (nothing else is pending on them)."""
        delivered = False
        for link, state in self.hub.link_states().items():
            if state is RedisState.HANDSHAKE and self.redis.links[link].pending:
                self.deliver(link, run=False)
                delivered = True
        return delivered

    def _deliver_one_batch(self) -> bool:
        """Deliver every pending reply of every up link (auto_reply mode)."""
        delivered = False
        for link in (SUB, CMD):
            if self.redis.links[link].pending:
                self.deliver(link, run=False)
                delivered = True
        return delivered

    def deliver(self, link: RedisLink, count: int | None = None, *, chunk: int | None = None,
                run: bool = True) -> list[Reply]:
        """Feed the hub ``count`` pending replies (all by default), ``chunk`` bytes per call."""
        fake = self.redis.links[link]
        replies = fake.pending[: len(fake.pending) if count is None else count]
        del fake.pending[: len(replies)]
        data = b"".join(r.data for r in replies)[fake.partial:]
        fake.partial = 0
        self.redis_data(link, data, chunk=chunk, run=run)
        return replies

    def deliver_bytes(self, link: RedisLink, nbytes: int) -> list[Reply]:
        """Feed the first ``nbytes`` of the pending stream; returns the replies completed."""
        fake = self.redis.links[link]
        done: list[Reply] = []
        data = b""
        while nbytes > 0 and fake.pending:
            head = fake.pending[0]
            left = len(head.data) - fake.partial
            take = min(left, nbytes)
            data += head.data[fake.partial: fake.partial + take]
            nbytes -= take
            if take == left:
                done.append(fake.pending.pop(0))
                fake.partial = 0
            else:
                fake.partial += take
        self.redis_data(fake.link, data)
        return done

    def redis_data(self, link: RedisLink, data: bytes, *, chunk: int | None = None, run: bool = True) -> None:
        if not data:
            return
        step = chunk or len(data)
        for i in range(0, len(data), step):
            self.hub.link_data(self.link(link), data[i: i + step], self.now)
            if run:
                self.run()

    def drop_redis(self, link: RedisLink, *, lost_in_transit: bool = False) -> list[Action]:
        """The Redis connection died under the hub."""
        self.redis.drop(link, lost_in_transit=lost_in_transit)
        self.hub.link_lost(self.link(link), self.now)
        return self.run()

    def commands(self, link: RedisLink) -> list[list[bytes]]:
        return self.redis.links[link].commands

    def published(self, channel: bytes | None = None) -> list[bytes]:
        return [p for c, p in self.redis.published if channel is None or c == channel]

    def channel(self, name: str) -> bytes:
        return (self.config.channel_prefix + name).encode()

    def set_groups(self, key: str, groups: Iterable[str] | bytes) -> int:
        """The listener answers: PUBLISH groups-new:KEY with a JSON array."""
        payload = groups if isinstance(groups, bytes) else ("[" + ",".join(f'"{g}"' for g in groups) + "]").encode()
        receivers = self.redis.publish(self.channel(f"groups-new:{key}"), payload)
        self.run()
        return receivers

    def group_data(self, group: str, payload: bytes) -> int:
        receivers = self.redis.publish(self.channel(f"group-data:{group}"), payload)
        self.run()
        return receivers

    # -- clients ------------------------------------------------------------------

    def open(self, *, auto_pong: bool = True, method: bytes = b"GET") -> Client:
        """A raw TCP client: accepted, nothing sent yet."""
        conn = self.hub.client_opened(self.now)
        if conn in self.clients:
            raise ContractError(f"conn id {conn} reused")
        client = Client(self, conn, auto_pong=auto_pong, method=method)
        self.clients[conn] = client
        self.run()
        return client

    def connect(self, key: str = "k", *, target: str | None = None, auto_pong: bool = True,
                extra_headers: Iterable[tuple[str, str]] = (), chunk: int | None = None) -> Client:
        """A wsproto client performing the opening handshake (RFC 6455 section 4.1)."""
        client = self.open(auto_pong=auto_pong)
        client.ws = WSConnection(ConnectionType.CLIENT)
        path = target if target is not None else f"{self.config.server_url}?{self.config.client_key}={key}"
        data = client.ws.send(Request(host="hub.test", target=path, extra_headers=list(extra_headers)))
        self.client_data(client.conn, data, chunk=chunk)
        return client

    def client_data(self, conn: int, data: bytes, *, chunk: int | None = None) -> None:
        step = chunk or max(1, len(data))
        for i in range(0, max(1, len(data)), step):
            if self.clients[conn].closed:
                return  # the shell stops reading a socket it closed
            self.hub.client_data(conn, data[i: i + step], self.now)
            self.run()

    def eof(self, client: Client) -> None:
        self.hub.client_eof(client.conn, self.now)
        self.run()

    def lose(self, client: Client) -> None:
        """The transport is gone (RST): no more actions may name this conn."""
        self.hub.client_lost(client.conn, self.now)
        client.closed = True
        client.lost = True
        self.run()

    def write_paused(self, client: Client) -> None:
        client.write_full = True
        self.hub.client_write_paused(client.conn, self.now)
        self.run()

    def write_resumed(self, client: Client) -> None:
        client.write_full = False
        if client.closing:
            self.pending_lost.append(client)  # the flushing close completes
        self.hub.client_write_resumed(client.conn, self.now)
        self.run()

    def shutdown(self) -> None:
        self.hub.shutdown(self.now)
        self.run()

    # -- queries ------------------------------------------------------------------

    def actions_since(self, index: int) -> list[Action]:
        return [a for _, a in self.log[index:]]

    def mark(self) -> int:
        return len(self.log)

    def ws_state(self, client: Client) -> ConnectionState:
        return client._proto.state


# -- sentinel mode: the broker alone, a test playing the sentinels and the Redis servers -------------------------

SENTINELS = ["127.0.0.1:26379", "127.0.0.1:26380", "127.0.0.1:26381"]
SENTINEL_CONFIG = (
    "redis:\n  mode: sentinel\n  masterName: mymaster\n"
    f"  address: [{', '.join(SENTINELS)}]\n  reconnectMin: 0.1\n  reconnectMax: 1\n  timeout: 5\n"
)
ROLE_MASTER = resp_array(resp_bulk(b"master"), resp_int(0), resp_array())
ROLE_SLAVE = resp_array(resp_bulk(b"slave"), resp_bulk(b"127.0.0.1"), resp_int(6380), resp_bulk(b"connected"),
                        resp_int(0))
SENTINEL = RedisLink.SENTINEL


def address_reply(port: int) -> bytes:
    return resp_array(resp_bulk(b"127.0.0.1"), resp_bulk(b"%d" % port))


def switch_master(old: int, new: int, name: bytes = b"mymaster") -> bytes:
    return resp_message(b"+switch-master", b"%s 127.0.0.1 %d 127.0.0.1 %d" % (name, old, new))


@dataclass
class Dialled:
    """One link the broker dialled: where to, and every command it was sent."""

    link: int
    address: str
    open: bool = False
    closed: bool = False
    commands: list[list[bytes]] = field(default_factory=list)
    answered: int = 0  # SUBSCRIBEs confirmed so far (subscriber links)
    reader: hiredis.Reader = field(default_factory=hiredis.Reader)


class SentinelDriver:
    """The broker in sentinel mode, with a virtual clock; a test plays the sentinels and the Redis servers."""

    def __init__(self, text: str = SENTINEL_CONFIG, **overrides: object) -> None:
        self.config = make_config(text, **overrides)
        self.actions: list[Action] = []
        self.messages: list[tuple[bytes, bytes]] = []
        self.confirmed: list[bytes] = []
        self.broker = RedisBroker(config=self.config, seed=0, sink=self.actions, on_message=self._message,
                                  on_confirmed=self.confirmed.append, on_publisher_back=lambda: None)
        self.now = 1000.0
        self.links: dict[int, Dialled] = {}
        self.broker.start(self.now)
        self.run()

    def _message(self, channel: bytes, payload: bytes) -> None:
        self.messages.append((channel, payload))

    def run(self) -> None:
        """Execute the broker's actions as a shell would (each id once; nothing sent on a closed link)."""
        self.broker.flush(self.now)
        for action in self.actions:
            if isinstance(action, OpenLink):
                assert action.link not in self.links, "a link id used twice"
                self.links[action.link] = Dialled(action.link, f"{action.host}:{action.port}")
            elif isinstance(action, SendToLink):
                dialled = self.links[action.link]
                assert dialled.open and not dialled.closed, f"bytes to link {action.link}, which is not open"
                dialled.reader.feed(action.data)
                while (cmd := dialled.reader.gets()) is not False:
                    dialled.commands.append(cmd)
            elif isinstance(action, CloseLink):
                self.links[action.link].closed = True
        self.actions.clear()

    def current(self, role: RedisLink) -> Dialled:
        """The role's current link (dialling or open)."""
        return self.links[self.broker.current_links()[role]]

    def opened(self, role: RedisLink) -> Dialled:
        dialled = self.current(role)
        dialled.open = True
        self.broker.link_opened(dialled.link, self.now)
        self.run()
        return dialled

    def reply(self, role: RedisLink, data: bytes) -> None:
        self.broker.link_data(self.current(role).link, data, self.now)
        self.run()

    def lost(self, role: RedisLink, error: str = "") -> None:
        self.broker.link_lost(self.current(role).link, self.now, error)
        self.run()

    def advance(self, seconds: float) -> None:
        target = self.now + seconds
        while (deadline := self.broker.next_deadline()) is not None and deadline <= target:
            self.now = max(self.now, deadline)
            self.broker.handle_timer(self.now)
            self.run()
        self.now = target

    def sentinel_answers(self, port: int) -> None:
        """The current sentinel link comes up, answers the prelude and names the master at ``port``."""
        dialled = self.opened(SENTINEL)
        assert dialled.commands[-1] == [b"PING"]
        self.reply(SENTINEL, resp_simple(b"PONG"))
        assert dialled.commands[-2:] == [[b"SENTINEL", b"get-master-addr-by-name", b"mymaster"],
                                         [b"SUBSCRIBE", b"+switch-master"]]
        self.reply(SENTINEL, address_reply(port) + resp_push(b"subscribe", b"+switch-master", 1))

    def data_links_up(self, port: int) -> None:
        """Both data links dialled ``port``, sent ROLE in their prelude, and were answered by a master."""
        for role in (SUB, CMD):
            dialled = self.opened(role)
            assert dialled.address == f"127.0.0.1:{port}"
            assert dialled.commands[-1] == [b"ROLE"]
            self.reply(role, ROLE_MASTER)
            self.answer_subscribes()

    def answer_subscribes(self) -> None:
        """Confirm every SUBSCRIBE the subscriber link was sent and not yet answered."""
        if SUB not in self.broker.current_links():
            return
        dialled = self.current(SUB)
        if not dialled.open or self.broker.link_states()[SUB] is not RedisState.READY:
            return
        owed = [ch for cmd in dialled.commands if cmd[0] == b"SUBSCRIBE" for ch in cmd[1:]]
        for channel in owed[dialled.answered:]:
            self.reply(SUB, resp_push(b"subscribe", channel, 1))
        dialled.answered = len(owed)

    def answer_sentinel(self, port: int) -> None:
        """Answer, as a sentinel naming the master at ``port``, every command the current sentinel link was sent."""
        dialled = self.current(SENTINEL)
        if not dialled.open:
            return
        replies = {b"PING": resp_simple(b"PONG"), b"SENTINEL": address_reply(port),
                   b"SUBSCRIBE": resp_push(b"subscribe", b"+switch-master", 1),
                   b"UNSUBSCRIBE": resp_push(b"unsubscribe", b"+switch-master", 0)}
        owed = dialled.commands[dialled.answered:]
        dialled.answered = len(dialled.commands)
        subscribed = any(c[0] == b"SUBSCRIBE" for c in dialled.commands[:len(dialled.commands) - len(owed)])
        for cmd in owed:
            reply = replies[cmd[0]]
            if cmd[0] == b"PING" and subscribed:
                reply = resp_array(resp_bulk(b"pong"), resp_bulk(b""))
            subscribed = {b"SUBSCRIBE": True, b"UNSUBSCRIBE": False}.get(cmd[0], subscribed)
            self.reply(SENTINEL, reply)
            if self.broker.current_links().get(SENTINEL) != dialled.link:
                return  # dropped on the way

    def dials(self) -> list[str]:
        """Addresses dialled so far, in order."""
        return [d.address for d in self.links.values()]


