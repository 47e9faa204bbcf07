"""A seeded, deterministic discrete-event simulation of a whole WS-Hub.

The core (``wshub_core.Hub``) does no I/O, so it runs here unchanged, driven the
way ``wshub_asyncio/_server.py`` drives it, against simulated peers and a
virtual clock. Everything random comes from one ``random.Random(seed)`` and the
simulation never iterates over a hash-ordered set, so a seed replays the same
run in any process, whatever ``PYTHONHASHSEED`` (``python -m tests.sim --seed N``;
``--fingerprint`` prints a checksum of the event sequence to compare replays).

What is simulated
-----------------
* **Clock, events, shell.** A heap of ``(time, seq, callback)``. After every hub
  input the actions are executed in order (as ``Server.drain``), then the
  single timer is re-armed at ``hub.next_deadline()``; ``hub.handle_timer(now)``
  runs exactly at that time (at once if the deadline is already past).
* **Links.** Every TCP direction is a ``Pipe``: in order, base latency (0 for
  some links: same-instant events) plus jitter, every write split into random
  chunks (sometimes one byte at a time). A closed pipe drops what is in flight.
* **Redis.** ``SimRedis`` parses what the hub sends with ``hiredis.Reader`` and
  implements AUTH (password and ACL user), SELECT, PING (both RESP2 replies),
  SUBSCRIBE, UNSUBSCRIBE and PUBLISH (integer reply = receivers; ``message``
  pushes to every subscribed connection); FUNCTION LOAD and FCALL for history
  (below). The *listener* (answers
  ``client-new`` with random groups after a delay, as a JSON array or a comma
  list; re-groups keys on its own; sometimes sends an answer that is neither
  form, which must be ignored) and the *observer* (every ``client-data:*`` and
  ``client-gone`` publish) live inside Redis, so they miss nothing. Backend
  publishers PUBLISH ``group-data:G`` payloads ``G|seq|padding`` (text, or
  binary when not UTF-8).
* **Redis faults.** Drop the subscriber link, the command link or both (Redis
  forgets the connection at once; the hub hears ``link_lost`` up to 50 ms
  later); a restart (both dropped, connects refused for a while); a stall
  (Redis answers nothing for up to twice ``redis.timeout``; what the hub sent
  meanwhile is executed afterwards unless the hub closed that connection: a
  closed connection's unread bytes are discarded, as with a RST); a black hole
  (connects hang until the hub's own connect timeout); and "lose the reply":
  Redis dies right after executing a PUBLISH, before answering it (this is
  what makes the hub's at-least-once resends visible).
* **History** (seeds ``N % 3 == 1``; ``history.size`` 3, 8, 30 or 1000). Redis
  also implements ``FUNCTION LOAD`` and the ``wshub`` library's two functions as
  the Lua in ``wshub_core/_redis_history.py`` does them: ``wshub_publish`` appends
  to a stream keyed by the channel (ids ``ms-seq`` from the virtual clock, the
  previous id kept with each entry, ``MAXLEN ~``: trimmed to ``history.size``
  now and then, so a stream holds that many entries or some more) and
  PUBLISHes the envelope; ``wshub_read`` answers the last id and the entries
  after an offset. Backend publishers publish ``G|hSEQ|padding`` through
  ``wshub_publish`` (some seeds also ``G|SEQ|padding`` by plain PUBLISH); a
  *burst* fault publishes up to 120 at once, and Redis drops a subscriber
  whose unread output exceeds ``client-output-buffer-limit pubsub`` (some
  seeds). Clients ask for envelopes (``recover=1``), and some reconnect with
  ``since=`` the offsets a finished client received (sometimes an older one,
  which the history may no longer hold). The hub's read page is sometimes 2
  or 5 entries (``History._page``), so repairs and resumes take several reads.
* **Sentinel** (seeds ``N % 4 == 3``). Two simulated sentinels name the master
  (``SENTINEL get-master-addr-by-name``, ``SUBSCRIBE +switch-master``); the
  master has two names (``redis-a.sim``, ``redis-b.sim``) for the one
  ``SimRedis``, and ``ROLE`` answers ``master`` only on the current one. More
  faults: a failover (the master's name moves, the connections to the old
  name are cut as the promotion's CLIENT KILL does, and the watched sentinel
  pushes ``+switch-master``), the same unannounced, and a sentinel that dies
  and refuses for a while. What is *not* simulated: two data sets (what the
  old master accepted and did not replicate), which is Sentinel's contract.
* **Redis Cluster** (seeds ``N % 7 == 4`` that are not Sentinel's): ``cluster.py``
  (``ClusterWorld``, ``SimCluster``) replaces the one Redis with three shards of
  nodes, the shell's links by role with links by id, and the faults with a
  Cluster's; its module docstring says what it simulates and checks.
* **Clients** speak real WebSocket through ``wsproto``'s client ``WSConnection``:
  numbered messages ``cid|seq|padding`` (text or binary, sometimes fragmented,
  sometimes followed by a ping, sometimes over ``maxMessageSize``), pongs,
  and they leave by a close handshake, a TCP half-close (``client_eof``), a reset
  (``client_lost``) or by vanishing without a signal (the hub must time out).
  Some are *eager* (a first frame right behind the request head), some
  *dawdle* (half the request head, the rest maybe after ``handshakeTimeout``),
  some are *slow* (stop reading for a while: the hub-side transport buffers
  what the hub writes and, above a high-water mark, the sim calls
  ``client_write_paused``, then ``client_write_resumed`` once drained, as
  asyncio's flow control does). ``PauseClient``/``ResumeClient`` stop/restart
  delivering a client's bytes (they wait, as in a kernel buffer).
* **Ending.** After the active phase: no more faults, arrivals, stalls or group
  data. Either the hub is shut down at once (faults may still be healing), or
  the run settles, a probe is published to every group, and then every client
  leaves or the hub is shut down (``StopListening`` ... ``Stopped``).

Invariants (a failure raises ``SimFailure`` whose text starts ``seed=N``)
------------------------------------------------------------------------
(a) Group data: exactly once, in order, for the whole time a client is a member.
    A *reference model* of membership follows only what the hub has been
    shown: a connection becomes a member when the hub answers its upgrade
    (``101``), starting with the groups of the first (oldest) other connection
    of its key if that one has groups, and stops being one when the hub closes
    it or is told it is lost. Each ``groups-new:KEY`` message the hub has
    *received* (every byte delivered while its subscriber link was up) sets the
    groups of every member of KEY.
    A group message is *owed* to a client iff the hub received it (Redis pushed
    it on the hub's subscriber connection, so the channel was subscribed there
    when it was published, and the link stayed up until all its bytes were
    delivered) and the client was then a member of its group in the model. So
    data published while the subscriber link is down, before the SUBSCRIBE is
    confirmed or after the UNSUBSCRIBE may be lost (Redis pub/sub semantics),
    but nothing the hub received for a member may be lost, doubled or reordered.
    (a1) Every group message a client receives is its next owed one, intact:
    no duplicate, no reordering, no gap, nothing extra. (a2) A client whose
    connection the hub closed gracefully (a close frame, or a FIN after its
    own half-close; not an abort) and that read to the end has received *all*
    its owed messages: frames are queued before the close, and a graceful
    close flushes even frames held while the socket was full. A client that
    vanished, reset, or was aborted (slow consumer) has received a prefix,
    which a1 checks. (a3) Liveness, once the faults stopped and the run
    settled: both links up; the hub's subscriber connection subscribed to
    exactly the channels the model needs (``groups-new:KEY``, ``client-send:KEY``, ``client-kick:KEY`` per key with a
    member, ``group-data:G`` per group of a member), which must also equal
    ``hub.needed_channels()``; ``hub.ready``; every member has groups; no sender
    still paused; a probe published to every group is owed to and received by
    every member within a second.
(b) Client data: every message the hub *received* (all bytes of its frames
    passed to ``client_data``, and it was not over ``maxMessageSize``) reaches
    the observer on ``client-data:KEY`` of the sender's key, intact. Per sender,
    what Redis executes is in order with no gap. A message may repeat only as
    an at-least-once resend: on a later command connection, the sender's first
    PUBLISH must be exactly its oldest message that Redis executed on the
    sender's previous connection without the reply reaching the hub (or the
    next new one if there is none), and a repeated message's earlier execution
    must have been unacknowledged. At the end (or at ``Stopped``, if it came
    before ``shutdownTimeout``) everything received has been published.
    ``hub.stats.messages_in`` always equals the count of received messages.
(c) No leak: at the end every client is gone, ``hub.is_empty()``, no needed and
    no subscribed channel in the hub, no subscription left in Redis, no
    command but a keepalive (PING, the stall probe) awaiting a reply, and a ``client-gone`` was
    published for every key after its last connection closed (not checked if
    ``Stopped`` came by the shutdown timeout: the process exits).
(d) Timers fire when due. The simulation knows the time of every input, so it
    checks the hub's documented deadlines (epsilon 1e-6 s), both ways where
    the rule has two sides:
    - a handshake not finished after ``handshakeTimeout`` is closed then (not
      before, unless shutting down);
    - an open, not write-paused client is pinged at most ``0.9*pongWait`` after
      the later of the last bytes the hub received from it and its last ping;
    - a client the hub has heard nothing from for ``pongWait`` is closed then,
      and a 1011 close never comes earlier;
    - a write-paused client is closed at most ``writeWait`` after the pause;
    - ``groupsTimeout``: a client without groups is closed, with 1008, either
      ``groupsTimeout`` after its TCP accept (at once if its upgrade came after
      that) or exactly ``groupsTimeout`` after its upgrade; not at another time;
    - 1009 only for a client that sent a message over ``maxMessageSize``;
      1001 only on shutdown; no other close code;
    - a Redis link owing a reply is dropped ``redis.timeout`` after the later
      of its oldest unanswered command and the last bytes received (replies to
      AUTH/SELECT pending freeze the latter), and never earlier; an idle link
      sends a PING within ``redis.timeout`` of its last received bytes (the core
      aims at half that: ``late_idle_pings`` counts misses); a connect is
      abandoned after ``redis.timeout``, not before; a lost link is re-dialled
      within ``redis.reconnectMax``;
    - after ``handle_timer(now)`` a deadline at or before ``now`` may come back
      (``past_deadlines`` counts them; the shell calls again at once) but not
      three times in a row at one instant: that is a deadline the hub ignores;
    - ``Stopped`` comes within ``shutdownTimeout``.
(h) History (history seeds): group messages published with history are not in
    (a)'s owed list (a repair delivers what the hub did not receive live); per
    member and group instead. A *stint* is a time the model has the member in
    the group (joined with its key's groups or by a ``groups-new`` the hub
    received; a stint of a group in ``since=`` starts as if the entry at that
    offset came last). A live entry counts in the stint the hub received it in,
    whenever its frame goes out (the hub holds a write-paused member's frames,
    so one queued before a leave may go out after the rejoin); an entry a
    history read brought, in the stint its frame was sent in. (h1) Entries of a
    group arrive intact, with their own offset (recover=1), each later in the
    group's history than the one before (never twice, never out of order, across
    stints too). (h2) Within a stint the next entry is the one after the last:
    one may be skipped only if the history no longer holds it (trimmed), and a
    member with recover=1 must have been told ``{"group": G, "reset": true}``
    first. (h3) A reset only when the history no longer holds the entry after
    the member's last in this stint. (h4) Once settled (with (a3)'s probe,
    published with history): every entry the hub received live for a member
    during its current stint of a group has reached it, and no connection is
    still catching up. Together: a member that stays in a group, or resumes
    within the history, gets every entry once, in publish order; one whose
    offset was trimmed gets a reset first.
(e) The core never raises: an exception out of any ``Hub`` method is a failure.
(f) Behind Sentinel a data link dials only the address a sentinel named last,
    named after the link went down (never a cached address); after ROLE said
    ``slave`` it sends nothing more; a data link down while a sentinel is up
    is dialled again within ``reconnectMax`` plus that sentinel's answer.

Also checked: no client is closed with 1011 (silence) while the hub itself has
paused reading it (Redis backpressure); the hub restarts its silence clock on
resume.
"""

from __future__ import annotations

import base64
import dataclasses
import heapq
import json
import logging
import random
import traceback
import zlib
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import hiredis
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection as WsFrameEncoder
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError as WsRemoteProtocolError

from wshub_core import (
    CloseClient,
    CloseLink,
    Config,
    Hub,
    OpenLink,
    PauseClient,
    RedisLink,
    ResumeClient,
    SendToClient,
    SendToClients,
    SendToLink,
    StopListening,
    Stopped,
)
from wshub_core._redis_broker import RedisBroker
from wshub_core._redis_history import MAGIC, parse_envelope

__all__ = ["SimFailure", "World", "run_seed"]

EPS = 1e-6
T0 = 1000.0  # virtual time starts here, not at 0
HIGH_WATER = 1024  # the sim's transport write buffer (asyncio uses 64 KiB; our messages are small)
SUB = RedisLink.SUBSCRIBER
CMD = RedisLink.COMMANDS
SENTINEL = RedisLink.SENTINEL
# Sentinel mode (a quarter of the seeds): two sentinels name the master; a failover moves the master's
# address between two names of the one simulated Redis (its data, subscriptions and observers stay one).
SENTINEL_ADDRS = (("sentinel-1.sim", 26379), ("sentinel-2.sim", 26379))
MASTER_ADDRS = (("redis-a.sim", 6379), ("redis-b.sim", 6379))
MASTER_NAME = b"mymaster"
_NOT_ENOUGH = object()
_PONG_SUBSCRIBED = b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"


class _CoreLog(logging.Handler):
    """The core's log lines go into the running world's trace, not to stderr."""

    def __init__(self, world: World) -> None:
        super().__init__(logging.INFO)
        self.world = world

    def emit(self, record: logging.LogRecord) -> None:
        self.world.log("core log: %s", record.getMessage())


class SimFailure(AssertionError):
    """An invariant broke; ``str()`` starts with ``seed=N`` and ends with the last events."""

    def __init__(self, seed: int, message: str, trace: str) -> None:
        self.seed = seed
        self.message = message
        self.trace = trace
        super().__init__(
            f"seed={seed}: {message}\n"
            f"--- last events (replay all: python -m tests.sim --seed {seed} --trace) ---\n{trace}"
        )


def _bulk(b: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(b), b)


def _id(position: tuple[int, int]) -> str:
    return f"{position[0]}-{position[1]}"


def _push(kind: bytes, channel: bytes, tail: bytes) -> bytes:
    return b"*3\r\n" + _bulk(kind) + _bulk(channel) + tail


def sim_parse_groups(payload: bytes) -> frozenset[str] | None:
    """The listener protocol (README step 3), as the simulation understands it."""
    text = payload.decode("utf-8").strip()
    if text.startswith("["):
        value = json.loads(text)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return frozenset(v for v in value if v)
        return None
    if text.startswith(("{", '"')):
        return None
    return frozenset(p.strip() for p in text.split(",") if p.strip())


# -- network -------------------------------------------------------------------------


class Pipe:
    """One direction of a TCP connection: in order, delayed, split into random chunks."""

    __slots__ = ("world", "latency", "jitter", "last", "deliver", "closed")

    def __init__(self, world: World, latency: float, jitter: float, deliver: Callable[[Any], None]) -> None:
        self.world = world
        self.latency = latency
        self.jitter = jitter
        self.last = 0.0
        self.deliver = deliver
        self.closed = False

    def send(self, data: bytes | None) -> None:
        """Queue bytes (``None``: a FIN) for in-order delivery."""
        if self.closed:
            return
        w = self.world
        pieces: list[bytes | None] = [None] if data is None else list(w.split(data))
        for piece in pieces:
            t = w.now + self.latency + self.jitter * w.rng.random()
            if t < self.last:
                t = self.last
            self.last = t
            w.at(t, self._arrive, piece)

    def _arrive(self, piece: bytes | None) -> None:
        if not self.closed:
            self.deliver(piece)


class FrameScanner:
    """Reads what the hub writes to one client: the HTTP status, then server frames (unmasked)."""

    __slots__ = ("buf", "status")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.status = 0  # 0 until the response head is complete

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """(opcode, control payload) of each complete frame; (-1, b"") when the head completes."""
        buf = self.buf
        buf += data
        out: list[tuple[int, bytes]] = []
        if not self.status:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return out
            self.status = int(bytes(buf[:end]).split(b" ", 2)[1])
            del buf[: end + 4]
            out.append((-1, b""))
            if self.status != 101:
                buf.clear()
                return out
        while len(buf) >= 2:
            op = buf[0] & 0x0F
            n = buf[1] & 0x7F
            pos = 2
            if n == 126:
                if len(buf) < 4:
                    break
                n = int.from_bytes(buf[2:4], "big")
                pos = 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n = int.from_bytes(buf[2:10], "big")
                pos = 10
            if len(buf) < pos + n:
                break
            out.append((op, bytes(buf[pos : pos + n]) if op >= 8 else b""))
            del buf[: pos + n]
        return out


# -- Redis ---------------------------------------------------------------------------


class ExecRec:
    """One execution of a client's PUBLISH by Redis, for the at-least-once check."""

    __slots__ = ("cid", "seq", "conn_id", "acked")

    def __init__(self, cid: int, seq: int, conn_id: int) -> None:
        self.cid = cid
        self.seq = seq
        self.conn_id = conn_id
        self.acked = False  # its reply reached the hub


class RedisConn:
    """One TCP connection between the hub and Redis: both ends' bookkeeping."""

    __slots__ = (
        "id", "link", "link_id", "alive", "up", "down", "reader", "authed", "subs",
        "sent", "delivered", "records", "out_reader", "pending", "last_rx", "wait_rx", "prelude_left",
        "addr", "born", "role_refused", "sentinel_sub",
    )

    def __init__(self, world: World, cid: int, link: RedisLink, link_id: int, prelude: int,
                 addr: tuple[str, int]) -> None:
        self.id = cid
        self.link = link  # the role
        self.link_id = link_id  # the hub's name for it (its OpenLink)
        self.addr = addr  # where the hub dialled (sentinel mode: a sentinel, or one of the master's names)
        self.born = world.now
        self.role_refused = False  # ROLE answered "slave": the hub must drop it and send nothing more
        self.sentinel_sub = False  # a sentinel connection subscribed to +switch-master
        self.alive = True
        lat = world.redis_latency
        self.up = Pipe(world, lat, lat / 2, lambda data: world.redis.feed(self, data))
        lag = world.sub_lag if link is SUB else 0.0  # a subscriber read behind the command link (history seeds)
        self.down = Pipe(world, lat + lag, lat / 2 + lag, lambda data: world.redis_rx(self, data))
        self.reader = hiredis.Reader(notEnoughData=_NOT_ENOUGH)  # server side: the hub's commands
        self.authed = not world.cfg.redis_password
        self.subs: dict[bytes, None] = {}
        # server -> hub stream: bytes written, bytes delivered, and what ends where
        self.sent = 0
        self.delivered = 0
        self.records: deque[tuple[int, tuple[Any, ...]]] = deque()
        # hub side: commands written and not yet fully answered (their send times)
        self.out_reader = hiredis.Reader(notEnoughData=_NOT_ENOUGH)
        self.pending: deque[tuple[float, bytes]] = deque()  # (sent at, command name)
        self.last_rx = world.now  # last bytes delivered to the hub (the core's last_rx)
        self.wait_rx = world.now  # the same, frozen while the AUTH/SELECT replies are owed
        self.prelude_left = prelude


class Stalls:
    """A Redis process's one thread: what it executes waits, in arrival order, while it is stalled."""

    def __init__(self) -> None:
        self.stalled = False
        self.queue: list[tuple[Callable[..., None], tuple[Any, ...]]] = []

    def run(self, fn: Callable[..., None], *args: Any) -> None:
        """Execute now, or when the stall ends."""
        if self.stalled:
            self.queue.append((fn, args))
        else:
            fn(*args)

    def end_stall(self) -> None:
        self.stalled = False
        queue, self.queue = self.queue, []
        for fn, args in queue:
            fn(*args)


class SimRedis(Stalls):
    """Just enough Redis: AUTH, SELECT, PING, (UN)SUBSCRIBE, PUBLISH, the wshub functions; RESP2 pub/sub."""

    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world
        self.subs: dict[bytes, dict[RedisConn, None]] = {}  # channel -> network subscribers (ordered)
        self.mode = "up"  # "up" | "refuse" | "blackhole" (for new connects)
        self.next_id = 0
        self.kill_after_publish = 0  # > 0: the connection dies after executing that many more PUBLISHes
        # History: the ``wshub`` library loaded, and each stream (key = channel): [id, prev, payload] in order.
        self.functions = False
        self.streams: dict[bytes, deque[tuple[tuple[int, int], str, str, bytes]]] = {}
        self.stream_last: dict[bytes, tuple[int, int]] = {}  # each stream's last id (XADD's floor)
        self.trimmed: dict[bytes, int] = {}  # entries trimmed from each stream so far

    def accept(self, link: RedisLink, link_id: int, addr: tuple[str, int]) -> RedisConn:
        self.next_id += 1
        cfg = self.world.cfg
        # AUTH, SELECT (command link), ROLE (sentinel mode), or a lone PING when there is none of them: the
        # link is up once answered. A sentinel link: a PING (the sim's sentinels have no password).
        prelude = (1 if link is SENTINEL else int(bool(cfg.redis_password)) + int(link is CMD and cfg.redis_db != 0)
                   + int(self.world.sentinel_mode) or 1)
        return RedisConn(self.world, self.next_id, link, link_id, prelude, addr)

    def close(self, c: RedisConn) -> None:
        """The connection is gone on the server: subscriptions dropped, unread bytes discarded."""
        if not c.alive:
            return
        c.alive = False
        c.up.closed = True
        c.down.closed = True
        for ch in c.subs:
            subs = self.subs[ch]
            del subs[c]
            if not subs:
                del self.subs[ch]
        c.subs = {}

    def feed(self, c: RedisConn, data: bytes) -> None:
        if c.link is SENTINEL:
            self._process(c, data)  # a sentinel is another process: a Redis stall does not stop it
        else:
            self.run(self._process, c, data)

    def _process(self, c: RedisConn, data: bytes) -> None:
        if not c.alive:
            return
        c.reader.feed(data)
        while c.alive:
            try:
                cmd = c.reader.gets()
            except hiredis.ProtocolError as exc:
                self.world.fail(f"the hub sent malformed RESP on {c.link.value}: {exc}")
            if cmd is _NOT_ENOUGH:
                return
            if not isinstance(cmd, list) or not cmd or not all(isinstance(a, bytes) for a in cmd):
                self.world.fail(f"the hub sent a command that is not an array of bulk strings: {cmd!r}")
            self._command(c, cmd)

    def _send(self, c: RedisConn, parts: list[tuple[bytes, tuple[Any, ...] | None]]) -> None:
        """One write (so its length does not depend on the order of the parts)."""
        for piece, rec in parts:
            c.sent += len(piece)
            if rec is not None:
                c.records.append((c.sent, rec))
        c.down.send(b"".join(p for p, _ in parts))

    def _reply(self, c: RedisConn, data: bytes, exec_rec: ExecRec | None = None) -> None:
        self._send(c, [(data, ("reply", True, exec_rec))])

    def _command(self, c: RedisConn, cmd: list[bytes]) -> None:
        w = self.world
        cfg = w.cfg
        name = cmd[0].upper()
        args = cmd[1:]
        w.log("redis<%s#%d %s", c.link.value[:3], c.id, b" ".join(a[:40] for a in cmd))
        if c.link is SENTINEL:
            self._sentinel_command(c, name, args)
            return
        if c.role_refused:
            w.fail(f"the hub sent {name!r} on its {c.link.value} link #{c.id} after ROLE said it is a replica")
        if name == b"AUTH":
            want = [cfg.redis_username.encode(), cfg.redis_password.encode()] if cfg.redis_username else [
                cfg.redis_password.encode()]
            if not cfg.redis_password:
                self._reply(c, b"-ERR AUTH <password> called without any password configured\r\n")
            elif args == want:
                c.authed = True
                self._reply(c, b"+OK\r\n")
            else:
                self._reply(c, b"-WRONGPASS invalid username-password pair or user is disabled.\r\n")
            return
        if not c.authed:
            self._reply(c, b"-NOAUTH Authentication required.\r\n")
            return
        if name == b"PING":
            self._reply(c, _PONG_SUBSCRIBED if c.subs else b"+PONG\r\n")
        elif name == b"ROLE":
            if not w.sentinel_mode:
                w.fail("the hub sent ROLE in standalone mode")
            if c.addr == w.master_addr():
                self._reply(c, b"*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n")
            else:  # the other name of the pair: a replica now
                c.role_refused = True
                host, port = w.master_addr()
                self._reply(c, b"*5\r\n$5\r\nslave\r\n" + _bulk(host.encode()) + b":%d\r\n" % port
                            + _bulk(b"connected") + b":0\r\n")
        elif name in (b"SUBSCRIBE", b"UNSUBSCRIBE"):
            if c.link is not SUB:
                w.fail(f"the hub sent {name.decode()} on its {c.link.value} link")
            parts: list[tuple[bytes, tuple[Any, ...] | None]] = []
            channels = args if args or name == b"SUBSCRIBE" else list(c.subs)
            for i, ch in enumerate(channels):
                if name == b"SUBSCRIBE":
                    if ch not in c.subs:
                        c.subs[ch] = None
                        self.subs.setdefault(ch, {})[c] = None
                    kind = b"subscribe"
                else:
                    if ch in c.subs:
                        del c.subs[ch]
                        subs = self.subs[ch]
                        del subs[c]
                        if not subs:
                            del self.subs[ch]
                    kind = b"unsubscribe"
                parts.append((_push(kind, ch, b":%d\r\n" % len(c.subs)), ("reply", i == len(channels) - 1, None)))
            if not parts:
                w.fail("the hub sent UNSUBSCRIBE without channels")
            self._send(c, parts)
        elif c.subs:
            self._reply(c, b"-ERR Can't execute '%s': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / "
                           b"RESET are allowed in this context\r\n" % name.lower())
        elif name == b"SELECT":
            if args != [str(cfg.redis_db).encode()]:
                w.fail(f"the hub selected database {args!r}, configured {cfg.redis_db}")
            self._reply(c, b"+OK\r\n")
        elif name == b"FUNCTION" and args[:2] == [b"LOAD", b"REPLACE"] and len(args) == 3:
            if not cfg.history or c.link is not CMD or b"#!lua name=wshub" not in args[2]:
                w.fail(f"the hub loaded a function library it should not: {args[:2]!r} on {c.link.value}")
            self.functions = True
            self._reply(c, _bulk(b"wshub"))
        elif name in (b"FCALL", b"FCALL_RO"):
            self._fcall(c, name, args)
        elif name == b"PUBLISH" and len(args) == 2:
            if c.link is not CMD:
                w.fail(f"the hub sent PUBLISH on its {c.link.value} link")
            n, rec = self.publish(args[0], args[1], c)
            if self.kill_after_publish:
                self.kill_after_publish -= 1
                if not self.kill_after_publish:
                    w.log("FAULT: Redis dies after executing a PUBLISH, before its reply")
                    w.kill_link(CMD)
                    return
            self._reply(c, b":%d\r\n" % n, rec)
        else:
            w.fail(f"the hub sent a command the simulated Redis does not implement: {cmd!r}")

    def _fcall(self, c: RedisConn, name: bytes, args: list[bytes]) -> None:
        """``wshub_publish`` and ``wshub_read``, as the Lua in ``_redis_history.py`` does them."""
        w = self.world
        if c.link is not CMD:
            w.fail(f"the hub sent {name!r} on its {c.link.value} link")
        if not self.functions:
            self._reply(c, b"-ERR Function not found\r\n")
            return
        if len(args) < 3 or args[1] != b"1":
            w.fail(f"the hub sent a malformed {name!r}: {args!r}")
        self._function(c, name, args)

    def _function(self, c: RedisConn, name: bytes, args: list[bytes]) -> None:
        """Run ``wshub_read`` or ``wshub_publish`` (``args``: FCALL's) and answer it."""
        fn, key, rest = args[0], args[2], args[3:]
        if fn == b"wshub_read" and len(rest) == 2:
            self._reply(c, self.history_read(key, rest[0].decode(), int(rest[1])))
        elif fn == b"wshub_publish" and name == b"FCALL" and rest:
            self._reply(c, _bulk(self.history_publish(key, rest[0]).encode()))
        else:
            self.world.fail(f"the hub called {fn!r} with {rest!r} ({name!r})")

    def history_publish(self, key: bytes, payload: bytes) -> str:
        """XADD with the previous id, MAXLEN ~ history.size, then PUBLISH of the envelope; returns the id."""
        w = self.world
        ms = int(w.now * 1000)
        last = self.stream_last.get(key)
        new = (ms, 0) if last is None or ms > last[0] else (last[0], last[1] + 1)
        stream = self.streams.setdefault(key, deque())
        prev = _id(stream[-1][0]) if stream else "0-0"
        offset = _id(new)
        stream.append((new, offset, prev, payload))
        self.stream_last[key] = new
        # "~": Redis trims whole nodes only, so a stream holds history.size entries or some more.
        size = w.cfg.history_size
        if len(stream) > size and (len(stream) > 2 * size or w.rng.random() < 0.5):
            while len(stream) > size:
                stream.popleft()
                self.trimmed[key] = self.trimmed.get(key, 0) + 1
        self.publish(key, MAGIC + offset.encode() + b"\0" + prev.encode() + b"\0" + payload, None)
        return offset

    def history_read(self, key: bytes, after: str, count: int) -> bytes:
        """``wshub_read``'s reply: the last id ("" without a stream), then id, prev, payload after ``after``."""
        stream = self.streams.get(key)
        if not stream:
            return b"*1\r\n$0\r\n\r\n"
        ms, _, seq = after.partition("-")
        floor = (int(ms), int(seq))
        parts = [_bulk(stream[-1][1].encode())]
        if count >= 1:
            for position, offset, prev, payload in stream:
                if position > floor:
                    parts += [_bulk(offset.encode()), _bulk(prev.encode()), _bulk(payload)]
                    if len(parts) > 3 * count:
                        break
        return b"*%d\r\n" % len(parts) + b"".join(parts)

    def _sentinel_command(self, c: RedisConn, name: bytes, args: list[bytes]) -> None:
        """Just enough Sentinel: PING, SENTINEL get-master-addr-by-name, (UN)SUBSCRIBE +switch-master."""
        w = self.world
        if name == b"PING":
            self._reply(c, _PONG_SUBSCRIBED if c.sentinel_sub else b"+PONG\r\n")
        elif name == b"SENTINEL" and len(args) == 2 and args[0].lower() == b"get-master-addr-by-name":
            if c.sentinel_sub:
                w.fail("the hub sent SENTINEL on a sentinel connection in pub/sub mode")
            if args[1] != MASTER_NAME:
                w.fail(f"the hub asked for master {args[1]!r}")
            host, port = w.master_addr()
            self._send(c, [(b"*2\r\n" + _bulk(host.encode()) + _bulk(b"%d" % port), ("reply", True, None)),
                           (b"", ("named", (host, port)))])
        elif name in (b"SUBSCRIBE", b"UNSUBSCRIBE") and args == [b"+switch-master"]:
            c.sentinel_sub = name == b"SUBSCRIBE"
            self._send(c, [(_push(name.lower(), args[0], b":%d\r\n" % c.sentinel_sub), ("reply", True, None))])
        else:
            w.fail(f"the hub sent a sentinel {name!r} {args!r}")

    def switch_master(self, c: RedisConn, old: tuple[str, int], new: tuple[str, int]) -> None:
        """The sentinel announces a failover on its +switch-master channel."""
        payload = b"%s %s %d %s %d" % (MASTER_NAME, old[0].encode(), old[1], new[0].encode(), new[1])
        self._send(c, [(_push(b"message", b"+switch-master", _bulk(payload)), ("named", new))])

    def publish(self, channel: bytes, payload: bytes, origin: RedisConn | None) -> tuple[int, ExecRec | None]:
        subs = self.subs.get(channel)
        n = 0
        if subs:
            msg = _push(b"message", channel, _bulk(payload))
            for c in list(subs):
                self._send(c, [(msg, ("push", channel, payload))])
                n += 1
                limit = self.world.obuf_limit
                if limit and c.link is SUB and c.sent - c.delivered > limit and c.alive:
                    # client-output-buffer-limit pubsub: Redis drops a subscriber that does not keep up.
                    self.world.log("FAULT: Redis drops the subscriber for its output buffer (%d B unread)",
                                   c.sent - c.delivered)
                    self.world.stats["output_buffer_kills"] += 1
                    self.world.kill_link(SUB)
        internal, rec = self.world.observe(channel, payload, origin)
        return n + internal, rec


# -- clients -------------------------------------------------------------------------


class SimClient:
    """A WebSocket client (wsproto) plus the hub-side transport the sim plays for it."""

    def __init__(self, world: World, cid: int, key: str) -> None:
        w = world
        self.world = w
        self.cid = cid
        self.key = key
        self.state = "connecting"  # connecting | open | closing | done
        self.ws = WSConnection(ConnectionType.CLIENT)
        lat = 0.0 if w.rng.random() < 0.1 else w.rng.uniform(0.001, 0.02)
        self.up = Pipe(w, lat, lat / 2, self._at_hub)
        self.down = Pipe(w, lat, lat / 2, self._at_client)
        self.latency = lat
        # behaviour
        self.msg_rate = w.rng.choice(w.msg_rates)
        self.slow = w.rng.random() < w.slow_prob
        self.leave_kind = w.pick_leave()
        self.life = w.rng.expovariate(1 / w.mean_life)
        self.leave_when_open = False
        # what the client sent (b)
        self.out_offset = 0
        # (end offset in the byte stream, seq, over webSocket.maxMessageSize)
        self.msg_ends: deque[tuple[int, int, bool]] = deque()
        self.sent_oversize = False
        self.next_seq = 0
        self.accepted = 0  # messages the hub received: seqs 0..accepted-1
        self.payloads: dict[int, bytes] = {}
        # hub-side transport
        self.conn = 0
        self.t_open = False  # the hub's transport for this client exists
        self.hub_known = False  # the hub has the connection (not closed, not told lost)
        self.hub_open = False  # ... and has upgraded it
        self.opened_at = 0.0
        self.upgraded_at = 0.0
        self.hub_rx = 0.0  # last client_data call
        self.hub_delivered = 0
        self.ping_base = 0.0
        self.read_paused = False
        self.held: list[bytes | None] = []
        self.stalled = False
        self.stall_forever = False
        self.tbuf: list[bytes] = []
        self.tbuf_bytes = 0
        self.fin_after_flush = False
        self.closing_until: float | None = None  # a graceful CloseClient not flushed yet: abort deadline
        self.write_paused = False
        self.paused_since = 0.0
        self.aborted = False
        self.scanner = FrameScanner()
        # model (a)
        self.member = False
        self.groups: frozenset[str] | None = None
        self.owed: list[tuple[str, int]] = []
        self.recv = 0
        self.parts: list[bytes] = []
        self.got_close_frame = False
        self.end = ""
        # model (h): history seeds. A *stint* of a group is a time the model has the client in it.
        self.envelopes = False  # recover=1
        self.since: dict[str, str] = {}  # since= offsets not yet used (the hub uses one when the group is joined)
        self.offsets: dict[str, str] = {}  # the last offset received per group (a reconnect's since=)
        self.h_stint: dict[str, int] = {}  # group -> stints begun or ended so far
        self.h_seen: dict[str, int] = {}  # group -> h_stint when its last entry came (or its resume began)
        self.h_last: dict[str, int] = {}  # group -> seq of the last entry received (or the resume's offset)
        self.h_reset: dict[str, bool] = {}  # group -> a reset came after its last entry
        self.h_owed: dict[str, list[int]] = {}  # group -> entries the hub received live in this stint
        self.h_got: dict[str, set[int]] = {}  # group -> every entry received
        self.h_skipped: dict[str, list[tuple[int, int]]] = {}  # group -> runs trimmed away (h2) in this stint
        # A frame belongs to the stint it was *sent* in: data frames sent and received, and per group the
        # frames sent when each stint began or ended (frame n+1 on is in the new one).
        self.frames_sent = 0
        self.frames_recv = 0
        self.h_changes: dict[str, list[tuple[int, int]]] = {}
        # A live entry belongs to the stint the hub received it in, whenever its frame goes out: the hub
        # holds a write-paused member's frames, so one queued before a leave may be sent after the rejoin.
        self.h_live_stint: dict[tuple[str, int], int] = {}  # (group, seq) -> stint

    def __repr__(self) -> str:
        return f"client#{self.cid}(conn {self.conn}, key {self.key!r})"

    # -- client side ---------------------------------------------------------------

    def write(self, data: bytes) -> None:
        self.out_offset += len(data)
        self.up.send(data)

    def start(self) -> None:
        w = self.world
        target = f"/ws?{w.cfg.client_key}={quote(self.key)}"
        if self.envelopes:
            target += "&recover=1"
        if self.since:
            target += "&since=" + quote(json.dumps(self.since, sort_keys=True))
        request = self.ws.send(Request(host="hub.sim", target=target))
        r = w.rng.random()
        if r < 0.1:  # eager: a first message right behind the request head, before the 101
            body = f"{self.cid}|0|eager".encode()
            self.next_seq = 1
            self.payloads[0] = body
            frame = WsFrameEncoder(ConnectionType.CLIENT).send(TextMessage(data=body.decode()))
            self.msg_ends.append((self.out_offset + len(request) + len(frame), 0, False))
            self.write(request + frame)
        elif r < 0.14:  # a dawdler: half the request head now, the rest maybe too late
            cut = w.rng.randint(1, len(request) - 1)
            self.write(request[:cut])
            w.at(w.now + w.rng.uniform(0.3, 1.5) * w.cfg.handshake_timeout, self._rest, request[cut:])
        else:
            self.write(request)

    def _rest(self, data: bytes) -> None:
        if self.state == "connecting" and self.world.phase == "active":
            self.write(data)  # after the active phase a dawdler never finishes: the hub times it out

    def _at_client(self, data: bytes | None) -> None:
        """Bytes from the hub reach the client."""
        if self.state == "done":
            return
        w = self.world
        if data is None:
            w.log("%r got EOF", self)
            if self.state == "connecting":  # closed before the upgrade: only a shutdown does that
                if not w.stopping:
                    w.fail(f"{self!r}: the hub closed the connection before answering the upgrade")
                self.finish("eof")
                return
            self.ws.receive_data(None)
            self._events()
            self.finish("eof")
            return
        try:
            self.ws.receive_data(data)
            self._events()
        except WsRemoteProtocolError as exc:
            w.fail(f"{self!r}: the hub sent something the WebSocket client rejects: {exc}")

    def _events(self) -> None:
        w = self.world
        for ev in self.ws.events():
            if isinstance(ev, AcceptConnection):
                self.state = "open"
                w.client_open(self)
            elif isinstance(ev, RejectConnection | RejectData):
                if not w.stopping:
                    w.fail(f"{self!r}: upgrade rejected: {ev!r}")
            elif isinstance(ev, TextMessage | BytesMessage):
                chunk = ev.data.encode() if isinstance(ev.data, str) else bytes(ev.data)
                self.parts.append(chunk)
                if ev.message_finished:
                    msg = b"".join(self.parts)
                    self.parts = []
                    w.group_message_received(self, msg)
            elif isinstance(ev, Ping):
                if self.ws.state is ConnectionState.OPEN:
                    self.write(self.ws.send(ev.response()))
            elif isinstance(ev, CloseConnection):
                if ev.code == 1006:
                    continue  # wsproto's own event for an EOF without a close frame (1006 is never sent)
                self.got_close_frame = True
                w.log("%r got close %d %r", self, ev.code, ev.reason)
                if self.ws.state is ConnectionState.REMOTE_CLOSING:
                    self.write(self.ws.send(ev.response()))
                self.state = "closing"

    def send_message(self) -> None:
        w = self.world
        rng = w.rng
        seq = self.next_seq
        self.next_seq += 1
        head = f"{self.cid}|{seq}|"
        r = rng.random()
        pad = "x" * (rng.randint(500, 2500) if r < 0.05 else rng.randint(0, 60))
        binary = rng.random() < 0.15
        body = (head + pad).encode() + (b"\xff\xfe" if binary else b"")
        self.payloads[seq] = body
        ws = self.ws
        data = b""
        if rng.random() < 0.1 and len(body) > len(head) + 1:
            cut = rng.randint(len(head), len(body) - 1)
            if binary:
                data += ws.send(BytesMessage(data=body[:cut], message_finished=False))
                data += ws.send(BytesMessage(data=body[cut:], message_finished=True))
            else:
                text = body.decode()
                data += ws.send(TextMessage(data=text[:cut], message_finished=False))
                data += ws.send(TextMessage(data=text[cut:], message_finished=True))
        elif binary:
            data += ws.send(BytesMessage(data=body))
        else:
            data += ws.send(TextMessage(data=body.decode()))
        end = self.out_offset + len(data)
        if rng.random() < 0.05:
            data += ws.send(Ping(payload=b"c"))
        oversize = len(body) > w.cfg.max_message_size
        self.sent_oversize |= oversize  # the hub may close with 1009 before all of it arrived
        self.msg_ends.append((end, seq, oversize))
        self.write(data)

    def finish(self, how: str) -> None:
        """The client's side of the connection is over: check what it received (a2)."""
        if self.state == "done":
            return
        w = self.world
        self.state = "done"
        self.end = how
        w.live.pop(self.cid, None)
        if self.offsets:
            w.resumable.append(self)
        # A graceful close (not an abort) flushes what the hub held while the socket was full, then
        # our close frame (ClientTable.flush): a client that read to the end has everything owed.
        full = self.got_close_frame or (how == "eof" and not self.aborted)
        w.log("%r finished (%s): received %d of %d owed, full required: %s", self, how, self.recv,
              len(self.owed), full)
        if full and self.recv != len(self.owed):
            missing = self.owed[self.recv : self.recv + 5]
            w.fail(f"{self!r} ended cleanly ({how}, close frame: {self.got_close_frame}) but received "
                   f"{self.recv} of its {len(self.owed)} owed group messages; first missing: {missing}")

    # -- hub side ----------------------------------------------------------------------

    def _at_hub(self, data: bytes | None) -> None:
        """Client bytes reach the hub's socket: delivered unless reading is paused."""
        if not self.t_open:
            return
        if self.read_paused:
            self.held.append(data)
            return
        self.world.deliver_to_hub(self, data)


# -- the world -----------------------------------------------------------------------


class World:
    """One seeded run: the hub, its peers, the clock, and the invariants."""

    def __init__(self, seed: int, *, verbose: bool = False, fingerprint: bool = False) -> None:
        self.seed = seed
        self.rng = rng = random.Random(seed)
        self.verbose = verbose
        self.fingerprint = 0 if fingerprint else None
        self.now = T0
        self._q: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self.events = 0
        self.max_events = 2_000_000
        self._ring: deque[tuple[float, str, tuple[Any, ...]]] = deque(maxlen=120)
        self.finished = False
        self.notes: dict[str, int] = {"late_idle_pings": 0, "past_deadlines": 0}

        # configuration (random per seed, always valid)
        reconnect_min = rng.choice([0.02, 0.1, 0.3])
        password = rng.choice(["", "", "s3cret"])
        self.cfg = Config(
            redis_host="redis.sim",
            redis_port=6379,
            channel_prefix=rng.choice(["ws-hub:", "", "app/7:"]),
            redis_username=rng.choice(["", "hub"]) if password else "",
            redis_password=password,
            redis_db=rng.choice([0, 0, 3]),
            redis_timeout=rng.choice([1.0, 2.0, 4.0]),
            reconnect_min=reconnect_min,
            reconnect_max=max(reconnect_min, rng.choice([0.5, 1.0, 2.0])),
            max_buffered_bytes=rng.choice([600, 4000, 16 * 1024 * 1024]),
            write_wait=rng.choice([0.5, 1.0, 3.0]),
            pong_wait=rng.choice([1.5, 3.0, 6.0]),
            max_outbound_buffer=rng.choice([1500, 6000, 1024 * 1024]),
            max_message_size=rng.choice([65536, 65536, 2000]),
            groups_timeout=rng.choice([0.0, 0.0, 0.0, 3.0]),
            shutdown_timeout=rng.choice([2.0, 5.0]),
            handshake_timeout=rng.choice([1.0, 5.0]),
            history=False,  # a third of the seeds turn it on (below)
        )
        # A quarter of the seeds run behind Sentinel (no rng draw: the other seeds replay as before).
        self.sentinel_mode = seed % 4 == 3
        if self.sentinel_mode:
            self.cfg = dataclasses.replace(self.cfg, redis_mode="sentinel", redis_master_name=MASTER_NAME.decode(),
                                           redis_sentinels=SENTINEL_ADDRS, redis_host=SENTINEL_ADDRS[0][0],
                                           redis_port=SENTINEL_ADDRS[0][1])
        # A third of the seeds keep group history (no rng draw for the others: they replay as before): the
        # backend publishes through wshub_publish (some still with PUBLISH), members ask for envelopes, some
        # reconnect with since=, bursts overflow the subscriber's output buffer and outrun history.size.
        self.history_mode = seed % 3 == 1
        self.obuf_limit = 0  # client-output-buffer-limit pubsub (0: none)
        self.p_plain = 1.0  # share of the backend's group messages sent by plain PUBLISH
        self.p_envelopes = 0.0  # share of clients with recover=1
        self.p_resume = 0.0  # share of those that resume a finished client's offsets (since=)
        page = 0  # entries per history read (0: the hub's own)
        self.sub_lag = 0.0  # extra latency (and jitter) of Redis -> hub on the subscriber link
        if self.history_mode:
            self.cfg = dataclasses.replace(self.cfg, history=True, history_size=rng.choice([3, 8, 30, 1000]))
            self.obuf_limit = rng.choice([0, 2500, 8000])
            self.p_plain = rng.choice([0.0, 0.2])
            self.p_envelopes = rng.choice([0.5, 0.9])
            self.p_resume = rng.choice([0.3, 0.7])
            page = rng.choice([0, 2, 5])
            # The hub reads its two links in any order: pushes may come after replies sent later.
            self.sub_lag = rng.choice([0.0, 0.0, 0.003, 0.02])
        self.master = 0  # index in MASTER_ADDRS of the master's name now
        self.sentinel_down: set[int] = set()  # sentinels that refuse connections now
        self.named_at = -1.0  # when the hub last processed a sentinel naming the master
        self.last_named: tuple[str, int] | None = None  # ... and the address it named
        self.in_sentinel_input = False  # the hub is handling bytes from its sentinel link (it may move links)
        self.stalls_seen = 0  # the hub's probe stalls accounted for (a stall drops a link owing no reply)
        cfg = self.cfg
        self.interval = cfg.pong_wait * 0.9  # the hub's ping interval, computed as the hub does
        prefix = cfg.channel_prefix
        self.pfx_key = f"{prefix}groups-new:".encode()
        self.pfx_group = f"{prefix}group-data:".encode()
        self.pfx_data = f"{prefix}client-data:".encode()
        self.pfx_send = f"{prefix}client-send:".encode()  # needed, like groups-new:KEY, while KEY has a connection
        self.pfx_kick = f"{prefix}client-kick:".encode()
        self.ch_new = f"{prefix}client-new".encode()
        self.ch_gone = f"{prefix}client-gone".encode()
        self.pfx_probe = f"{prefix}probe:".encode()  # the broker's own stall probe (redis.probeInterval)

        # scenario
        self.duration = rng.uniform(30.0, 60.0)
        self.keys = [f"k{i}" for i in range(rng.randint(2, 7))]
        if rng.random() < 0.3:
            self.keys.append("ключ-ü")
        self.groups = [f"g{i}" for i in range(rng.randint(2, 6))]
        self.mean_life = rng.uniform(8.0, 25.0)
        self.arrival_rate = rng.randint(4, 16) / self.mean_life
        self.msg_rates = rng.choice([[0.0, 0.3, 1.0], [0.0, 2.0], [0.5, 3.0]])
        self.slow_prob = rng.choice([0.0, 0.15, 0.4])
        self.leave_weights = [rng.random() for _ in range(4)]  # close, eof, reset, vanish
        self.publish_rates = {g: rng.uniform(0.5, 4.0) for g in self.groups}
        self.faults_on = rng.random() < 0.85
        self.fault_gap = rng.uniform(2.0, 10.0)
        self.ending = rng.choice(["leave", "leave", "shutdown", "shutdown_now"])
        self.listener_delay = rng.choice([0.2, 0.2, 0.2, 5.0])  # upper bound of the listener's answer time
        self.redis_latency = rng.choice([0.0, rng.uniform(0.0002, 0.003), rng.uniform(0.0002, 0.003)])
        self.p_whole = rng.choice([0.3, 0.6, 0.9])

        # state
        self.cfg = cfg = self._topology_config(cfg)
        self.hub = Hub(config=cfg, seed=seed)
        if page and self.hub._history is not None:
            self.hub._history._page = page  # short pages: a repair or a resume takes several reads
        self.redis = self._make_redis()
        # The shell's side, by role: the hub names links by ids (one per dial), the invariants by role.
        self.redis_conn: dict[RedisLink, RedisConn] = {}  # the open link of each role
        self.connecting: dict[RedisLink, tuple[int, float]] = {}  # role -> (link id of the dial, since)
        self.link_roles: dict[int, RedisLink] = {}  # every link id the hub dialled, and its role
        self.down_since: dict[RedisLink, float] = {}
        self.phase = "active"  # active | settle | ending | done
        self.stopping = False
        self.stopped_at: float | None = None
        self.shutdown_at: float | None = None
        self.fault_until = T0
        self.clients: dict[int, SimClient] = {}  # every client ever, by cid
        self.live: dict[int, SimClient] = {}  # not finished
        self.by_conn: dict[int, SimClient] = {}
        self.open_clients: dict[int, SimClient] = {}  # hub_open, by cid
        self.http_clients: dict[int, SimClient] = {}  # hub_known, not upgraded yet
        self.key_members: dict[str, dict[int, SimClient]] = {}  # model: key -> members in join order
        self.key_left_at: dict[str, float] = {}
        self.gone_seen: dict[str, float] = {}
        self.accepted_total = 0
        self.group_seq: dict[str, int] = dict.fromkeys(self.groups, 0)
        self.group_payloads: dict[tuple[str, int], bytes] = {}
        # History: per group, the entries published with it (seq -> offset) and their payloads.
        self.hist_ids: dict[str, list[str]] = {g: [] for g in self.groups}
        self.hist_seq_of: dict[tuple[str, str], int] = {}
        self.hist_payloads: dict[tuple[str, int], bytes] = {}
        self.resumable: list[SimClient] = []  # finished clients with offsets, whose since= a new one may send
        self.key_groups: dict[str, frozenset[str]] = {}
        self.sender: dict[int, dict[str, Any]] = {}
        self.stats = {"clients": 0, "group_msgs_delivered": 0, "client_msgs_observed": 0, "faults": 0,
                      "duplicates_at_least_once": 0, "aborts": 0, "keepalive_closes": 0, "write_pauses": 0,
                      "read_pauses": 0, "upgraded_after_groups_timeout": 0, "history_entries": 0,
                      "history_delivered": 0, "resets_received": 0, "resumes": 0, "output_buffer_kills": 0}
        self._timer_at: float | None = None
        self._timer_token = 0
        self._spin = 0
        self._next_cid = 0

    def _topology_config(self, cfg: Config) -> Config:
        """The configuration of the Redis topology the subclass simulates (here: as drawn)."""
        return cfg

    def _make_redis(self) -> SimRedis:
        return SimRedis(self)

    # -- engine ----------------------------------------------------------------------

    def at(self, t: float, fn: Callable[..., None], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._q, (t, self._seq, fn, args))

    def run(self) -> dict[str, Any]:
        core_log = logging.getLogger("wshub")
        handler = _CoreLog(self)
        level, propagate = core_log.level, core_log.propagate
        core_log.addHandler(handler)
        core_log.setLevel(logging.INFO)
        core_log.propagate = False
        try:
            return self._run()
        finally:
            core_log.removeHandler(handler)
            core_log.setLevel(level)
            core_log.propagate = propagate

    def _run(self) -> dict[str, Any]:
        self.at(T0, self._start)
        q = self._q
        while q and not self.finished:
            t, _, fn, args = heapq.heappop(q)
            if t > self.now:
                self._check_due(t)
                self.now = t
                self._spin = 0
            self.events += 1
            if self.events > self.max_events:
                self.fail("event budget exhausted (livelock?)")
            if self.fingerprint is not None:
                self.fingerprint = zlib.crc32(f"{t:.9f}{getattr(fn, '__name__', '?')}".encode(), self.fingerprint)
            fn(*args)
        if not self.finished:
            self.fail("the event queue ran dry before the end of the scenario")
        return {
            "seed": self.seed,
            "events": self.events,
            "virtual_seconds": round(self.now - T0, 3),
            "ending": self.ending,
            "fingerprint": self.fingerprint,
            **self.stats,
            **self.notes,
        }

    def fail(self, message: str) -> None:
        lines: list[str] = []
        repeats = 0
        for t, fmt, args in self._ring:
            line = f"{t - T0:11.6f}  {fmt % args}"
            if lines and line == lines[-1]:
                repeats += 1
                continue
            if repeats:
                lines[-1] += f"  (x{repeats + 1})"
                repeats = 0
            lines.append(line)
        if repeats:
            lines[-1] += f"  (x{repeats + 1})"
        lines.append(f"{self.now - T0:11.6f}  ** {message}")
        raise SimFailure(self.seed, f"t={self.now - T0:.6f}: {message}", "\n".join(lines))

    def log(self, fmt: str, *args: Any) -> None:
        self._ring.append((self.now, fmt, args))
        if self.verbose:
            print(f"{self.now - T0:11.6f}  {fmt % args}")

    def split(self, data: bytes) -> list[bytes]:
        n = len(data)
        r = self.rng.random()
        if n < 2 or r < self.p_whole:
            return [data]
        if n <= 48 and r > 0.98:
            return [data[i : i + 1] for i in range(n)]
        k = min(n, self.rng.randint(2, 4))
        cuts = [0, *sorted(self.rng.sample(range(1, n), k - 1)), n]
        return [data[cuts[i] : cuts[i + 1]] for i in range(k)]

    # -- driving the hub like the asyncio shell ----------------------------------------

    def call(self, what: str, fn: Callable[..., None], *args: Any, post: Callable[[], None] | None = None) -> None:
        """One input to the hub, then its actions, executed in order, then the timer re-armed."""
        self.log("hub.%s", what)
        self._invoke(what, fn, *args)
        if post is not None:
            post()
        self._drain()

    def _invoke(self, what: str, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except SimFailure:
            raise
        except Exception as exc:
            self.fail(f"(e) the core raised in {what}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")

    def _drain(self) -> None:
        hub = self.hub
        actions = hub.actions()
        while actions:
            for action in actions:
                self._execute(action)
            actions = hub.actions()
        deadline = hub.next_deadline()
        if deadline != self._timer_at:
            self._timer_token += 1
            self._timer_at = deadline
            if deadline is not None:
                if deadline < self.now:
                    self.notes["past_deadlines"] += 1
                self.at(max(deadline, self.now), self._on_timer, self._timer_token)

    def _on_timer(self, token: int) -> None:
        if token != self._timer_token or self.phase == "done":
            return
        self._timer_at = None
        self.call("handle_timer", self.hub.handle_timer, self.now, post=self._after_timer)

    def _after_timer(self) -> None:
        deadline = self.hub.next_deadline()
        if deadline is not None and deadline <= self.now:
            self._spin += 1
            if self._spin >= 3:
                self.fail(f"(d) after {self._spin} handle_timer calls at {self.now - T0:.6f} the hub still "
                          f"asks for deadline {deadline - T0:.6f}: a deadline it ignores")
        else:
            self._spin = 0

    def _execute(self, a: Any) -> None:
        kind = type(a)
        if kind is SendToClient:
            self._send_to_client(a.conn, a.data)
        elif kind is SendToClients:
            for conn in a.conns:
                self._send_to_client(conn, a.data)
        elif kind is SendToLink:
            self._send_to_redis(a.link, a.data)
        elif kind is CloseClient:
            self._close_client(a.conn, a.abort)
        elif kind is PauseClient:
            c = self.by_conn.get(a.conn)
            self.log("action PauseClient %r", c)
            if c is not None and c.t_open:
                c.read_paused = True
                self.stats["read_pauses"] += 1
        elif kind is ResumeClient:
            c = self.by_conn.get(a.conn)
            self.log("action ResumeClient %r", c)
            if c is not None and c.t_open and c.read_paused:
                c.read_paused = False
                c.hub_rx = self.now  # the hub restarts the silence clock of a client it stopped reading
                if c.held:
                    self.at(self.now, self._deliver_held, c)
        elif kind is OpenLink:
            self._connect_redis(a)
        elif kind is CloseLink:
            self._close_redis(a.link)
        elif kind is StopListening:
            self.log("action StopListening")
            if not self.stopping:
                self.fail("StopListening without a shutdown")
        elif kind is Stopped:
            self._stopped()
        else:
            self.fail(f"unknown action {a!r}")

    # -- Redis links (hub side) ----------------------------------------------------------

    def _connect_redis(self, a: OpenLink) -> None:
        roles = [role for role, current in self.hub.broker.current_links().items() if current == a.link]
        if not roles or a.link in self.link_roles:
            self.fail(f"OpenLink #{a.link}: an id the hub does not hold as a link, or one it used before")
        link = roles[0]
        self.log("action OpenLink %s #%d", link.value, a.link)
        if link in self.redis_conn or link in self.connecting:
            self.fail(f"the hub dialled its {link.value} link while the previous connection is still open")
        addr = (a.host, a.port)
        if not self.sentinel_mode:
            expected = [(self.cfg.redis_host, self.cfg.redis_port)]
        elif link is SENTINEL:
            expected = list(SENTINEL_ADDRS)
        else:
            # (f) Behind Sentinel a data link dials the address a sentinel named last, and only one named
            # after the link went down: never a cached address.
            expected = list(MASTER_ADDRS)
            down = self.down_since.get(link)
            if addr != self.last_named:
                self.fail(f"(f) the {link.value} link dialled {addr}, not the address named last {self.last_named}")
            if down is not None and self.named_at < down:
                self.fail(f"(f) the {link.value} link redialled {addr} named at {self.named_at - T0:.6f}, before "
                          f"it went down at {down - T0:.6f}")
        if addr not in expected or a.tls != self.cfg.redis_tls:
            self.fail(f"OpenLink to {a.host}:{a.port} tls={a.tls}")
        self.link_roles[a.link] = link
        self.down_since.pop(link, None)
        self.connecting[link] = (a.link, self.now)
        self.at(self.now + 2 * self.redis_latency + 0.0002, self._connect_done, link, a.link, addr)

    def _connect_done(self, link: RedisLink, link_id: int, addr: tuple[str, int]) -> None:
        entry = self.connecting.get(link)
        to_sentinel = link is SENTINEL
        if entry is None or entry[0] != link_id or (self.redis.mode == "blackhole" and not to_sentinel):
            return  # cancelled by CloseLink, or the SYN went into a black hole
        del self.connecting[link]
        if (SENTINEL_ADDRS.index(addr) in self.sentinel_down) if to_sentinel else self.redis.mode == "refuse":
            self.down_since[link] = self.now
            self.call(f"link_lost({link.value} #{link_id}) [connection refused]", self.hub.link_lost, link_id,
                      self.now)
            return
        c = self.redis.accept(link, link_id, addr)
        self.redis_conn[link] = c
        self.call(f"link_opened({link.value} #{link_id}) #{c.id}", self.hub.link_opened, link_id, self.now)

    def _role(self, link_id: int, action: str) -> RedisLink:
        """The role of the link an action names, which must be one the shell holds (dialling or open).

        The shell gives up a link only when the hub closed it or was told it was lost, and
        the hub names no link after that: an action naming it is a hub bug (an old id).
        """
        link = self.link_roles.get(link_id)
        c = None if link is None else self.redis_conn.get(link)
        entry = None if link is None else self.connecting.get(link)
        held = (c is not None and c.link_id == link_id) or (entry is not None and entry[0] == link_id)
        if link is None or not held:
            self.fail(f"{action} #{link_id}: a link the hub closed or heard was lost (or never dialled)")
        assert link is not None
        return link

    def _send_to_redis(self, link_id: int, data: bytes) -> None:
        link = self._role(link_id, "SendToLink")
        self.log("action SendToLink %s #%d %r", link.value, link_id, data[:80])
        c = self.redis_conn.get(link)
        if c is None:
            self.fail(f"SendToLink on the {link.value} link #{link_id} before it was opened")
            return
        if not c.pending and self.now > c.last_rx + self.cfg.redis_timeout / 2 + EPS:
            self.notes["late_idle_pings"] += 1  # idle for more than timeout/2 before sending anything
        c.out_reader.feed(data)
        while (cmd := c.out_reader.gets()) is not _NOT_ENOUGH:
            name = cmd[0].upper() if isinstance(cmd, list) and cmd else b"?"
            if name == b"PUBLISH" and len(cmd) > 1 and cmd[1].startswith(self.pfx_probe):
                name = b"PROBE"  # the stall probe: a keepalive of the subscriber link, not a client's message
            c.pending.append((self.now, name))
        c.up.send(data)

    def _close_redis(self, link_id: int) -> None:
        link = self._role(link_id, "CloseLink")
        self.log("action CloseLink %s #%d", link.value, link_id)
        timeout = self.cfg.redis_timeout
        entry = self.connecting.pop(link, None)
        if entry is not None and not self.in_sentinel_input and self.now < entry[1] + timeout - EPS:
            self.fail(f"(d) the hub abandoned a {link.value} connect after {self.now - entry[1]:.6f}s, "
                      f"before redis.timeout={timeout}")
        c = self.redis_conn.pop(link, None)
        stalls = self.hub.broker.stalls if isinstance(self.hub.broker, RedisBroker) else 0
        if c is not None and (c.role_refused or self.in_sentinel_input or stalls > self.stalls_seen):
            # Dropped by design with no reply owed: a replica, a move to the master a sentinel named, a
            # subscriber that did not deliver the probe (see docs/reliability.md#stalled-connections).
            self.stalls_seen = stalls
            self.redis.close(c)
        elif c is not None:
            if not c.pending:
                self.fail(f"(d) the hub dropped its {link.value} link #{c.id} while no reply was owed "
                          f"(did it find the reply stream broken?)")
            due = max(c.wait_rx, c.pending[0][0]) + timeout
            if self.now < due - EPS:
                self.fail(f"(d) the hub dropped its {link.value} link #{c.id} {due - self.now:.6f}s before "
                          f"its reply timeout")
            self.redis.close(c)
        self.down_since[link] = self.now

    def redis_rx(self, c: RedisConn, data: bytes) -> None:
        """Bytes from Redis reach the hub's socket."""
        if self.redis_conn.get(c.link) is not c:
            return  # the shell detached this connection
        c.last_rx = self.now
        self.in_sentinel_input = c.link is SENTINEL
        try:
            self.call(f"link_data({c.link.value} #{c.link_id}, {len(data)}B)", self.hub.link_data, c.link_id,
                      data, self.now, post=lambda: self._redis_records(c, len(data)))
        finally:
            self.in_sentinel_input = False

    def _redis_records(self, c: RedisConn, n: int) -> None:
        """What the hub just processed: replies (acks) and pushes (model of membership)."""
        c.delivered += n
        records = c.records
        while records and records[0][0] <= c.delivered:
            rec = records.popleft()[1]
            if rec[0] == "reply":
                if rec[1]:
                    if not c.pending:
                        self.fail(f"simulation bug: a reply on {c.link.value} without a pending command")
                    c.pending.popleft()
                    if c.prelude_left:
                        c.prelude_left -= 1
                if rec[2] is not None:
                    rec[2].acked = True
            elif rec[0] == "named":  # the hub has read a sentinel's answer or +switch-master
                self.named_at = self.now
                self.last_named = rec[1]
            else:
                self._model_push(rec[1], rec[2])
        if not c.prelude_left:
            c.wait_rx = self.now

    def kill_link(self, link: RedisLink) -> None:
        c = self.redis_conn.get(link)
        if c is None or not c.alive:
            return
        self.log("FAULT: %s link #%d dropped by Redis", link.value, c.id)
        self.redis.close(c)
        self.at(self.now + self.rng.uniform(0.0, 0.05), self._notify_lost, link, c)

    def _notify_lost(self, link: RedisLink, c: RedisConn) -> None:
        if self.redis_conn.get(link) is not c:
            return  # the hub closed it first
        del self.redis_conn[link]
        self.down_since[link] = self.now
        self.call(f"link_lost({link.value} #{c.link_id})", self.hub.link_lost, c.link_id, self.now)

    # -- client transports (hub side) -----------------------------------------------------

    def deliver_to_hub(self, c: SimClient, data: bytes | None) -> None:
        if data is None:
            self.call(f"client_eof({c.conn})", self.hub.client_eof, c.conn, self.now)
            return
        c.hub_rx = self.now
        self.call(f"client_data({c.conn}, {len(data)}B)", self.hub.client_data, c.conn, data, self.now,
                  post=lambda: self._client_bytes_in(c, len(data)))

    def _client_bytes_in(self, c: SimClient, n: int) -> None:
        c.hub_delivered += n
        ends = c.msg_ends
        while ends and ends[0][0] <= c.hub_delivered:
            _, seq, oversize = ends.popleft()
            if oversize:  # the hub closes with 1009: neither this message nor any later one is received
                ends.clear()
                break
            c.accepted = seq + 1
            self.accepted_total += 1
        if self.hub.stats.messages_in != self.accepted_total:
            self.fail(f"(b) hub.stats.messages_in={self.hub.stats.messages_in} but the hub received "
                      f"{self.accepted_total} complete client messages")

    def _deliver_held(self, c: SimClient) -> None:
        while c.held and c.t_open and not c.read_paused:
            data = c.held.pop(0)
            if data is not None:  # what the kernel buffered arrives as one read
                while c.held and c.held[0] is not None:
                    data += c.held.pop(0)  # type: ignore[operator]
            self.deliver_to_hub(c, data)

    def _send_to_client(self, conn: int, data: bytes) -> None:
        c = self.by_conn.get(conn)
        if c is None or not c.t_open:
            return
        self.log("action SendToClient %r %d B %r", c, len(data), data[:40])
        for op, payload in c.scanner.feed(data):
            if op == -1:
                if c.scanner.status == 101:
                    self._model_join(c)
                elif not self.stopping:
                    self.fail(f"{c!r}: the hub answered the upgrade with HTTP {c.scanner.status}")
            elif op in (1, 2):
                c.frames_sent += 1
            elif op == 9:
                c.ping_base = self.now
            elif op == 8 and len(payload) >= 2:
                self._check_close_code(c, int.from_bytes(payload[:2], "big"), payload[2:])
        if c.stalled:
            c.tbuf.append(data)
            c.tbuf_bytes += len(data)
            if c.tbuf_bytes > HIGH_WATER and not c.write_paused:
                c.write_paused = True
                c.paused_since = self.now
                self.stats["write_pauses"] += 1
                self.log("hub.client_write_paused(%d)", conn)
                self._invoke("client_write_paused", self.hub.client_write_paused, conn, self.now)
        else:
            c.down.send(data)

    def _check_close_code(self, c: SimClient, code: int, reason: bytes) -> None:
        cfg = self.cfg
        if code == 1011:
            self.stats["keepalive_closes"] += 1
            if c.read_paused and c.state != "done":
                self.fail(f"(d) {c!r} closed for silence while the hub itself had paused reading it")
            silent = self.now - c.hub_rx
            if silent < cfg.pong_wait - EPS:
                self.fail(f"(d) {c!r} closed for keepalive after {silent:.6f}s of silence, pongWait={cfg.pong_wait}")
        elif code == 1008 and b"no groups" in reason:
            self.log("%r closed for no groups %.6fs after it connected, %.6fs after its upgrade", c,
                     self.now - c.opened_at, self.now - c.upgraded_at)
            # groupsTimeout ("close a client the listener has not answered within this time") may run from
            # the TCP accept (then a client upgraded after that deadline is closed at once) or from the
            # upgrade (when the listener first hears of it). Either is accepted; a time that follows
            # neither depends on unrelated timers.
            t_out = cfg.groups_timeout
            from_accept = c.opened_at + t_out - EPS <= self.now <= max(c.opened_at + t_out, c.upgraded_at) + EPS
            from_upgrade = abs(self.now - (c.upgraded_at + t_out)) <= EPS
            if not t_out or c.groups is not None or not (from_accept or from_upgrade):
                self.fail(f"(d) {c!r} closed for 'no groups' {self.now - c.opened_at:.6f}s after its TCP accept "
                          f"and {self.now - c.upgraded_at:.6f}s after its upgrade; groupsTimeout={t_out}, "
                          f"groups in the model: {c.groups}")
        elif code == 1009:
            if not c.sent_oversize:
                self.fail(f"(d) {c!r} closed with 1009 but sent no message over {cfg.max_message_size} bytes")
        elif code == 1001:
            if not self.stopping:
                self.fail(f"{c!r} closed with 1001 without a shutdown")
        elif code != 1000:
            self.fail(f"{c!r} closed with unexpected code {code} {reason!r}")

    def _close_client(self, conn: int, abort: bool) -> None:
        c = self.by_conn.get(conn)
        self.log("action CloseClient %r abort=%s", c, abort)
        if c is None or not c.t_open:
            return
        if c.closing_until is not None:
            # The hub gave up on a flushing close it had asked for: only an abort may follow one.
            if not abort:
                self.fail(f"{c!r}: a second graceful CloseClient")
            self._abort_transport(c)
            return
        c.up.closed = True  # the shell reads nothing more
        c.held = []
        self._model_leave(c)
        if abort:
            self._abort_transport(c)
        elif c.stalled:
            # close() flushes first; asyncio reports connection_lost only when the flush is done, which
            # for a client that never reads again is never: the hub must abort it (writeWait).
            c.fin_after_flush = True
            since = c.paused_since if c.write_paused else self.now
            c.closing_until = min(since, self.now) + self.cfg.write_wait
        else:
            c.t_open = False
            c.down.send(None)
            self.at(self.now, self._lost_after_close, c)  # connection_lost, after close() flushed

    def _abort_transport(self, c: SimClient) -> None:
        """transport.abort(): unsent bytes dropped, a reset to the peer, connection_lost soon."""
        c.t_open = False
        c.closing_until = None
        self.stats["aborts"] += 1
        c.aborted = True
        c.down.closed = True
        c.tbuf = []
        c.fin_after_flush = False
        if c.state != "done":
            self.at(self.now + c.latency, self._client_reset, c)
        # asyncio reports connection_lost after abort(): idempotent for the hub.
        self.at(self.now, self._lost_after_close, c)

    def _lost_after_close(self, c: SimClient) -> None:
        self.call(f"client_lost({c.conn}) [after close]", self.hub.client_lost, c.conn, self.now)

    def _client_reset(self, c: SimClient) -> None:
        if c.state != "done":
            self.log("%r got a reset", c)
            c.finish("reset by hub")

    # -- clients (simulation side) ----------------------------------------------------

    def pick_leave(self) -> str:
        return self.rng.choices(["close", "eof", "reset", "vanish"], self.leave_weights)[0]

    def _arrival(self) -> None:
        if self.phase != "active":
            return
        self._spawn()
        self.at(self.now + self.rng.expovariate(self.arrival_rate), self._arrival)

    def _spawn(self) -> None:
        self._next_cid += 1
        c = SimClient(self, self._next_cid, self.rng.choice(self.keys))
        if self.history_mode:
            rng = self.rng
            c.envelopes = rng.random() < self.p_envelopes
            if c.envelopes and self.resumable and rng.random() < self.p_resume:
                # A reconnect: the offsets a finished client received (its key's if one had some).
                same_key = [old for old in self.resumable if old.key == c.key]
                c.since = dict(rng.choice(same_key or self.resumable).offsets)
                if rng.random() < 0.3:  # an older offset, which the history may no longer hold
                    group = rng.choice(sorted(c.since))
                    c.since[group] = rng.choice(self.hist_ids[group])
        self.clients[c.cid] = c
        self.live[c.cid] = c
        self.stats["clients"] += 1
        holder: list[int] = []
        self.call(f"client_opened() for client#{c.cid}",
                  lambda: holder.append(self.hub.client_opened(self.now)))
        c.conn = holder[0]
        if c.conn in self.by_conn:
            self.fail(f"client_opened returned conn {c.conn} twice")
        self.by_conn[c.conn] = c
        c.t_open = True
        c.hub_known = True
        c.opened_at = c.hub_rx = c.ping_base = self.now
        self.http_clients[c.cid] = c
        c.start()

    def client_open(self, c: SimClient) -> None:
        """The client saw the 101: start its behaviour."""
        if c.msg_rate:
            self.at(self.now + self.rng.expovariate(c.msg_rate), self._client_send, c)
        if c.slow and self.phase == "active":
            self.at(self.now + self.rng.uniform(0.2, 8.0), self._stall, c)
        if c.leave_when_open:
            self._leave(c, c.leave_kind)
        elif self.phase == "active":
            self.at(self.now + c.life, self._leave_active, c)

    def _client_send(self, c: SimClient) -> None:
        if c.state != "open" or self.phase == "done":
            return
        c.send_message()
        self.at(self.now + self.rng.expovariate(c.msg_rate), self._client_send, c)

    def _stall(self, c: SimClient) -> None:
        if c.state != "open" or c.stalled or self.phase != "active":
            return
        length = self.rng.uniform(0.2, 2.5) * self.cfg.write_wait
        self.log("%r stops reading for %.3fs", c, length)
        c.stalled = True
        self.at(self.now + length, self._unstall, c)

    def _unstall(self, c: SimClient) -> None:
        if not c.stalled or c.stall_forever:
            return
        c.stalled = False
        self.log("%r reads again (%d B buffered)", c, c.tbuf_bytes)
        if c.tbuf:
            c.down.send(b"".join(c.tbuf))
            c.tbuf = []
            c.tbuf_bytes = 0
        if c.fin_after_flush:
            c.down.send(None)
            c.fin_after_flush = False
            if c.closing_until is not None:  # the flushing close completed: connection_lost
                c.closing_until = None
                c.t_open = False
                self.call(f"client_lost({c.conn}) [close flushed]", self.hub.client_lost, c.conn, self.now)
                return
        if c.write_paused and c.t_open:
            c.write_paused = False
            c.ping_base = max(c.ping_base, self.now)
            self.call(f"client_write_resumed({c.conn})", self.hub.client_write_resumed, c.conn, self.now)
        if c.slow and self.phase == "active":
            self.at(self.now + self.rng.uniform(0.5, 8.0), self._stall, c)

    def _leave_active(self, c: SimClient) -> None:
        if self.phase == "active":
            self._leave(c, c.leave_kind)

    def _leave(self, c: SimClient, kind: str) -> None:
        if c.state == "connecting":
            c.leave_when_open = True
            c.leave_kind = kind
            return
        if c.state != "open":
            return
        self.log("%r leaves: %s", c, kind)
        if kind == "close":
            c.write(c.ws.send(CloseConnection(code=1000, reason="bye")))
            c.state = "closing"
        elif kind == "eof":
            c.state = "closing"
            c.up.send(None)
        elif kind == "reset":
            c.up.closed = True
            c.down.closed = True
            c.finish("reset")
            self.at(self.now + c.latency, self._reset_reaches_hub, c)
        else:  # vanish: no signal; the hub's writes pile up in its transport
            c.up.closed = True
            c.down.closed = True
            c.stalled = True
            c.stall_forever = True
            c.finish("vanished")

    def _reset_reaches_hub(self, c: SimClient) -> None:
        if not c.t_open:
            return
        c.t_open = False
        c.closing_until = None
        c.held = []
        if c.hub_known:
            self._model_leave(c)
        self.call(f"client_lost({c.conn})", self.hub.client_lost, c.conn, self.now)

    # -- model (a) ------------------------------------------------------------------------

    def _model_join(self, c: SimClient) -> None:
        siblings = self.key_members.get(c.key)
        if siblings:
            first = next(iter(siblings.values()))
            self._model_groups(c, first.groups)
        c.member = True
        c.hub_open = True
        c.upgraded_at = self.now
        if self.cfg.groups_timeout and self.now > c.opened_at + self.cfg.groups_timeout:
            self.stats["upgraded_after_groups_timeout"] += 1
        self.http_clients.pop(c.cid, None)
        self.open_clients[c.cid] = c
        self.key_members.setdefault(c.key, {})[c.cid] = c
        self.log("model: %r joins with groups %s", c, sorted(c.groups) if c.groups is not None else None)

    def _model_leave(self, c: SimClient) -> None:
        if c.cid in self.http_clients:
            del self.http_clients[c.cid]
            if not self.stopping and self.now < c.opened_at + self.cfg.handshake_timeout - EPS:
                self.fail(f"(d) {c!r} closed {self.now - c.opened_at:.6f}s after it connected, before "
                          f"completing its handshake and before handshakeTimeout={self.cfg.handshake_timeout}")
        c.hub_known = False
        c.hub_open = False
        self.open_clients.pop(c.cid, None)
        if not c.member:
            return
        c.member = False
        members = self.key_members[c.key]
        del members[c.cid]
        if not members:
            del self.key_members[c.key]
            self.key_left_at[c.key] = self.now

    def _model_push(self, channel: bytes, payload: bytes) -> None:
        if channel.startswith(self.pfx_group):
            group = channel[len(self.pfx_group):].decode()
            if payload.startswith(MAGIC):  # an entry with history: (h) owed to every member in this stint
                entry = parse_envelope(payload)
                if entry is None:
                    self.fail(f"simulation bug: a malformed envelope {payload[:60]!r}")
                    return
                hseq = int(entry[2].split(b"|", 2)[1][1:])
                for members in self.key_members.values():
                    for c in members.values():
                        if c.groups is not None and group in c.groups:
                            c.h_owed.setdefault(group, []).append(hseq)
                            c.h_live_stint[(group, hseq)] = c.h_stint.get(group, 0)
                return
            seq = int(payload.split(b"|", 2)[1])
            for members in self.key_members.values():
                for c in members.values():
                    if c.groups is not None and group in c.groups:
                        c.owed.append((group, seq))
        elif channel.startswith(self.pfx_key):
            key = channel[len(self.pfx_key):].decode()
            groups = sim_parse_groups(payload)
            members = self.key_members.get(key)
            if groups is None or not members:
                return
            self.log("model: key %r now in %s", key, sorted(groups))
            for c in members.values():
                self._model_groups(c, groups)

    def _model_groups(self, c: SimClient, groups: frozenset[str] | None) -> None:
        """The hub set a member's groups: (h) a stint ends for each group left and begins for each joined."""
        old = c.groups or frozenset()
        c.groups = groups
        if not self.history_mode:
            return
        new = groups or frozenset()
        for g in sorted(old ^ new):
            c.h_stint[g] = c.h_stint.get(g, 0) + 1
            c.h_changes.setdefault(g, []).append((c.frames_sent, c.h_stint[g]))
            c.h_owed.pop(g, None)
            c.h_skipped.pop(g, None)
        for g in sorted(new - old):
            offset = c.since.pop(g, None)
            if offset is not None:  # the hub resumes the group from there: as if that entry came last
                c.h_last[g] = self.hist_seq_of[(g, offset)]
                c.h_seen[g] = c.h_stint[g]
                c.h_reset[g] = False
                self.stats["resumes"] += 1
                self.log("model: %r resumes %s after %s", c, g, offset)

    def group_message_received(self, c: SimClient, msg: bytes) -> None:
        """(a1) The next owed message, intact; or (h) an entry with history, or a reset."""
        offset: str | None = None
        envelope_group = ""
        c.frames_recv += 1
        if c.envelopes:
            try:
                env = json.loads(msg)
                envelope_group = env["group"]
                if env.get("reset") is True:
                    self._history_reset_received(c, envelope_group)
                    return
                offset = env.get("offset")
                msg = base64.b64decode(env["data"]) if env["binary"] else env["data"].encode()
            except (ValueError, KeyError, TypeError):
                self.fail(f"(h) {c!r} (recover=1) received something that is no envelope: {msg[:80]!r}")
        try:
            group_b, seq_b, _ = msg.split(b"|", 2)
            if seq_b.startswith(b"h"):
                self._history_received(c, group_b.decode(), int(seq_b[1:]), msg, offset, envelope_group)
                return
            got = (group_b.decode(), int(seq_b))
        except ValueError:
            self.fail(f"(a) {c!r} received something that is no group message: {msg[:60]!r}")
        if c.envelopes and (offset is not None or envelope_group != got[0]):
            self.fail(f"(h) {c!r}: the envelope of plain message {got} names group {envelope_group!r}, "
                      f"offset {offset!r}")
        want = c.owed[c.recv] if c.recv < len(c.owed) else None
        if got != want:
            before = c.owed[max(0, c.recv - 3) : c.recv]
            self.fail(f"(a) {c!r} received {got} but the next owed message is {want} "
                      f"(received {c.recv} of {len(c.owed)} owed; the previous owed were {before}; "
                      f"groups in the model: {sorted(c.groups) if c.groups is not None else None})")
        if msg != self.group_payloads[got]:
            self.fail(f"(a) {c!r} received a corrupted payload for {got}")
        c.recv += 1
        self.stats["group_msgs_delivered"] += 1

    def _sent_stint(self, c: SimClient, group: str) -> int:
        """The client's stint of ``group`` when the hub sent the frame it is reading now."""
        stint = 0
        for sent, value in c.h_changes.get(group, ()):
            if sent >= c.frames_recv:
                break
            stint = value
        return stint

    def _trimmed(self, group: str, seq: int) -> bool:
        """The group's history no longer holds its entry ``seq`` (the backend is its only writer)."""
        return seq < self.redis.trimmed.get(self.pfx_group + group.encode(), 0)

    def _history_received(self, c: SimClient, group: str, seq: int, msg: bytes, offset: str | None,
                          envelope_group: str) -> None:
        """(h) Per group: no entry twice or out of order; within a stint none skipped that the history holds,
        and (recover=1) none skipped without a reset first."""
        if msg != self.hist_payloads.get((group, seq)):
            self.fail(f"(h) {c!r} received a corrupted entry {group} h{seq}: {msg[:60]!r}")
        if c.envelopes and (offset != self.hist_ids[group][seq] or envelope_group != group):
            self.fail(f"(h) {c!r}: entry {group} h{seq} (offset {self.hist_ids[group][seq]}) came with offset "
                      f"{offset!r}, group {envelope_group!r}")
        last = c.h_last.get(group)
        live = c.h_live_stint.pop((group, seq), None)
        stint = self._sent_stint(c, group) if live is None else live  # a repair's or resume's read: when sent
        if last is not None:
            if seq <= last:
                self.fail(f"(h) {c!r} received {group} h{seq} after h{last}: a duplicate or out of order "
                          f"(offsets {self.hist_ids[group][seq]}, {self.hist_ids[group][last]})")
            if c.h_seen.get(group) == stint and seq != last + 1:
                if not self._trimmed(group, last + 1):
                    self.fail(f"(h) {c!r} received {group} h{seq} after h{last}: h{last + 1} "
                              f"({self.hist_ids[group][last + 1]}) is still in the history and was skipped")
                if c.envelopes and not c.h_reset.get(group):
                    self.fail(f"(h) {c!r} received {group} h{seq} after h{last} without a reset first "
                              f"(h{last + 1} was trimmed)")
                c.h_skipped.setdefault(group, []).append((last + 1, seq - 1))
        c.h_last[group] = seq
        c.h_seen[group] = stint
        c.h_reset[group] = False
        c.h_got.setdefault(group, set()).add(seq)
        if offset is not None:
            c.offsets[group] = offset
        self.stats["history_delivered"] += 1

    def _history_reset_received(self, c: SimClient, group: str) -> None:
        """(h) A reset only when the history no longer holds what comes next for this member."""
        last = c.h_last.get(group)
        self.stats["resets_received"] += 1
        if last is not None and c.h_seen.get(group) == self._sent_stint(c, group) and \
                not self._trimmed(group, last + 1):
            following = self.hist_ids[group][last + 1] if last + 1 < len(self.hist_ids[group]) else "none yet"
            self.fail(f"(h) {c!r} was told reset for {group} after h{last} ({self.hist_ids[group][last]}), but "
                      f"the history still holds h{last + 1} ({following})")
        c.h_reset[group] = True

    # -- listener, observer, publishers ---------------------------------------------

    def observe(self, channel: bytes, payload: bytes, origin: RedisConn | None) -> tuple[int, ExecRec | None]:
        """The in-Redis listener and observer see every PUBLISH; returns (receivers, exec record)."""
        if channel == self.ch_new:
            key = payload.decode()
            self.log("listener: client-new %r", key)
            self.at(self.now + self.rng.uniform(0.001, self.listener_delay), self.redis.run, self._answer, key, False)
            return 2, None
        if channel == self.ch_gone:
            key = payload.decode()
            self.gone_seen[key] = self.now
            return 1, None
        if channel.startswith(self.pfx_data):
            if origin is None:
                self.fail("simulation bug: client-data published by the simulation")
            return 1, self._observe_client_data(channel, payload, origin)
        return 0, None

    def _answer(self, key: str, unsolicited: bool) -> None:
        rng = self.rng
        old = self.key_groups.get(key)
        if old is None or rng.random() < 0.4:
            n = 0 if rng.random() < 0.05 else rng.randint(1, min(3, len(self.groups)))
            old = frozenset(rng.sample(self.groups, n))
            self.key_groups[key] = old
        names = sorted(old)
        rng.shuffle(names)
        r = rng.random()
        if unsolicited and r < 0.15:
            payload = rng.choice(['{"groups": ["g0"]}', '"g0"'])  # neither form: the hub ignores it
        elif r < 0.5:
            payload = json.dumps(names)
        else:
            payload = rng.choice([",", ", "]).join(names)
        self.log("listener: groups-new %r <- %r", key, payload)
        self.redis.publish(self.pfx_key + key.encode(), payload.encode(), None)

    def _regroup(self) -> None:
        if self.phase != "active":
            return
        keys = sorted({c.key for c in self.live.values()})
        if keys:
            self.redis.run(self._answer, self.rng.choice(keys), True)
        self.at(self.now + self.rng.uniform(2.0, 12.0), self._regroup)

    def _publisher(self, group: str) -> None:
        if self.phase != "active":
            return
        self.redis.run(self._backend_publish, group)
        self.at(self.now + self.rng.expovariate(self.publish_rates[group]), self._publisher, group)

    def _backend_publish(self, group: str) -> int:
        if self.history_mode and self.rng.random() >= self.p_plain:
            self._history_publish(group)
            return -1
        seq = self.group_seq[group]
        self.group_seq[group] = seq + 1
        pad = b"." * self.rng.randint(0, 80)
        if self.rng.random() < 0.2:
            pad += b"\xc3\x28"  # not UTF-8: a binary frame
        payload = f"{group}|{seq}|".encode() + pad
        self.group_payloads[(group, seq)] = payload
        self.redis.publish(self.pfx_group + group.encode(), payload, None)
        return seq

    def _history_publish(self, group: str) -> int:
        """``FCALL wshub_publish`` by a backend: ``G|hSEQ|padding``; returns SEQ."""
        seq = len(self.hist_ids[group])
        pad = b"." * self.rng.randint(0, 80)
        if self.rng.random() < 0.2:
            pad += b"\xc3\x28"  # not UTF-8: a binary frame, base64 in an envelope
        payload = f"{group}|h{seq}|".encode() + pad
        self.hist_payloads[(group, seq)] = payload
        offset = self.redis.history_publish(self.pfx_group + group.encode(), payload)
        self.hist_ids[group].append(offset)
        self.hist_seq_of[(group, offset)] = seq
        self.stats["history_entries"] += 1
        return seq

    def _burst(self, group: str, n: int) -> None:
        self.log("burst: %d entries to %s", n, group)
        for _ in range(n):
            self._history_publish(group)

    def _observe_client_data(self, channel: bytes, payload: bytes, origin: RedisConn) -> ExecRec:
        """(b) per sender: in order, no gap, duplicates only as at-least-once resends."""
        try:
            cid_b, seq_b, _ = payload.split(b"|", 2)
            cid, seq = int(cid_b), int(seq_b)
            c = self.clients[cid]
        except (ValueError, KeyError):
            self.fail(f"(b) the observer got a client message no client sent: {payload[:60]!r}")
        if channel != self.pfx_data + c.key.encode():
            self.fail(f"(b) {c!r}'s message {seq} was published on {channel!r}")
        if seq >= c.accepted:
            self.fail(f"(b) {c!r}'s message {seq} was published but the hub has received only {c.accepted}")
        if payload != c.payloads[seq]:
            self.fail(f"(b) {c!r}'s message {seq} was corrupted: {payload[:60]!r}")
        st = self.sender.setdefault(cid, {"prev": -1, "max": -1, "conn": 0, "execs": [], "last": {}})
        rec = ExecRec(cid, seq, origin.id)
        if origin.id != st["conn"] and st["conn"]:
            unacked = [r.seq for r in st["execs"] if not r.acked]
            expected = min(unacked) if unacked else st["prev"] + 1
            if seq != expected:
                self.fail(f"(b) {c!r}: on command connection #{origin.id} its first PUBLISH is message {seq}, "
                          f"expected {expected} (previous connection #{st['conn']}: last {st['prev']}, "
                          f"executed but unacknowledged {unacked})")
            st["execs"] = []
        elif seq != st["prev"] + 1:
            self.fail(f"(b) {c!r}: message {seq} published after {st['prev']} on the same command "
                      f"connection #{origin.id} (lost, reordered or duplicated)")
        if seq <= st["max"]:
            earlier = st["last"][seq]
            if earlier.acked:
                self.fail(f"(b) {c!r}: message {seq} published again on #{origin.id} although Redis had "
                          f"acknowledged it to the hub on #{earlier.conn_id}")
            self.stats["duplicates_at_least_once"] += 1
        st["prev"] = seq
        st["max"] = max(st["max"], seq)
        st["conn"] = origin.id
        st["execs"].append(rec)
        st["last"][seq] = rec
        self.stats["client_msgs_observed"] += 1
        return rec

    # -- faults ------------------------------------------------------------------------

    def _fault(self) -> None:
        if self.phase != "active":
            return
        rng = self.rng
        kinds = ["drop_sub", "drop_cmd", "drop_both", "restart", "stall", "blackhole", "lose_reply"]
        weights = [2.0, 2, 1, 2, 1.5, 1, 2]
        if self.sentinel_mode:
            kinds += ["failover", "failover_unannounced", "drop_sentinel"]
            weights += [3, 1, 2]
        kind = self._pick_fault(kinds, weights)
        timeout = self.cfg.redis_timeout
        heal = self.now
        if kind == "drop_sub":
            self.kill_link(SUB)
        elif kind == "drop_cmd":
            self.kill_link(CMD)
        elif kind in ("drop_both", "restart"):
            self.kill_link(SUB)
            self.kill_link(CMD)
            if kind == "restart":
                self.redis.mode = "refuse"
                heal = self.now + rng.uniform(0.1, 3.0)
                self.at(heal, self._set_mode, "up")
        elif kind == "lose_reply":
            self.redis.kill_after_publish = rng.randint(1, 3)
        elif kind in ("failover", "failover_unannounced"):
            old = MASTER_ADDRS[self.master]
            self.master = 1 - self.master
            self.log("FAULT: the master moves from %s to %s", old, self.master_addr())
            for link in (SUB, CMD):  # the promotion's CLIENT KILL: connections to the old master are cut
                c = self.redis_conn.get(link)
                if c is not None and c.addr == old:
                    self.kill_link(link)
            watcher = self.redis_conn.get(SENTINEL)
            if kind == "failover" and watcher is not None and watcher.alive and watcher.sentinel_sub:
                self.redis.switch_master(watcher, old, self.master_addr())
        elif kind == "drop_sentinel":
            watcher = self.redis_conn.get(SENTINEL)
            index = SENTINEL_ADDRS.index(watcher.addr) if watcher is not None else rng.randrange(2)
            self.sentinel_down.add(index)
            self.kill_link(SENTINEL)
            heal = self.now + rng.uniform(0.1, 3.0)
            self.at(heal, self.sentinel_down.discard, index)
        elif kind == "burst":
            self._start_burst()
        elif kind == "stall":
            self.redis.stalled = True
            heal = self.now + rng.uniform(0.2, 2.0) * timeout
            self.at(heal, self._end_stall)
        else:
            self.kill_link(SUB)
            self.kill_link(CMD)
            self.redis.mode = "blackhole"
            heal = self.now + rng.uniform(0.5, 2.0) * timeout
            self.at(heal, self._set_mode, "up")
        self._next_fault(heal)

    def _pick_fault(self, kinds: list[str], weights: list[float]) -> str:
        """One of ``kinds`` (history seeds: or a burst), counted and logged."""
        if self.history_mode:
            kinds.append("burst")
            weights.append(3)
        kind = self.rng.choices(kinds, weights)[0]
        self.stats["faults"] += 1
        self.log("FAULT %s", kind)
        return kind

    def _start_burst(self) -> None:
        """Many entries at once: the output buffer may overflow, history.size be outrun."""
        n = self.rng.randint(3, min(3 * self.cfg.history_size + 10, 120))
        self.redis.run(self._burst, self.rng.choice(self.groups), n)

    def _next_fault(self, heal: float) -> None:
        self.fault_until = max(self.fault_until, heal)
        self.at(heal + self.rng.uniform(0.5, 2.0) * self.fault_gap, self._fault)

    def master_addr(self) -> tuple[str, int]:
        return MASTER_ADDRS[self.master]

    def _set_mode(self, mode: str) -> None:
        self.log("Redis accepts connections again")
        self.redis.mode = mode

    def _end_stall(self) -> None:
        self.log("Redis stall ends (%d queued)", len(self.redis.queue))
        self.redis.end_stall()

    # -- phases ----------------------------------------------------------------------------

    def _start(self) -> None:
        self.call("start", self.hub.start, self.now)
        self.at(self.now + self.rng.uniform(0.0, 1.0), self._arrival)
        for g in self.groups:
            self.at(self.now + self.rng.expovariate(self.publish_rates[g]), self._publisher, g)
        self.at(self.now + self.rng.uniform(1.0, 6.0), self._regroup)
        if self.faults_on:
            self.at(self.now + self.rng.uniform(1.0, 2.0) * self.fault_gap, self._fault)
        self.at(T0 + self.duration, self._end_active)

    def _end_active(self) -> None:
        """No more faults, arrivals, stalls or group data: let everything settle, then probe."""
        self.phase = "settle"
        self.redis.kill_after_publish = 0
        self.log("active phase over; faults heal at %.3f", self.fault_until - T0)
        cfg = self.cfg
        # A listener answer lost to a fault is asked for again once the links are back (client-new
        # re-published after the resubscribe), and may take listener_delay from then.
        settle = (max(self.fault_until - self.now, 0.0) + cfg.reconnect_max + 2 * cfg.redis_timeout
                  + self.listener_delay + 1.0)
        settle = max(settle, 2.5 * cfg.write_wait + 1.0) + self._settle_extra()
        if self.ending == "shutdown_now":
            self.phase = "ending"
            self._shutdown()
            return
        self.at(self.now + settle, self._probe)

    def _settle_extra(self) -> float:
        """More settling time a topology needs (a Cluster's periodic refresh)."""
        return 0.0

    def _probe(self) -> None:
        """(a3) Liveness once quiet: links up, subscriptions converged, groups assigned, a probe delivered."""
        self.log("probe")
        hub = self.hub
        self._check_links_up()
        model_needed = {pfx + k.encode() for k in self.key_members
                        for pfx in (self.pfx_key, self.pfx_send, self.pfx_kick)}
        for members in self.key_members.values():
            for c in members.values():
                if c.groups is None:
                    self.fail(f"(a3) {c!r} has no groups after the run settled")
                if c.read_paused and not self._publish_in_flight():
                    self.fail(f"(a3) {c!r} is still paused (PauseClient) with Redis healthy and no PUBLISH "
                              f"in flight")
                model_needed |= {self.pfx_group + g.encode() for g in c.groups}
        if hub.needed_channels() != model_needed:
            self.fail(f"(a3) the hub needs {sorted(hub.needed_channels())}, the model {sorted(model_needed)}")
        self._check_subscriptions(model_needed)
        if not hub.ready:
            self.fail("(a3) hub.ready is False once everything settled")
        probes = {}
        for g in self.groups:
            if self.pfx_group + g.encode() in model_needed:
                probes[g] = self._history_publish(g) if self.history_mode else self._backend_publish(g)
        # Who must get which probe: the members as they are now (a later answer may change groups).
        expect = [(c, sorted((g, probes[g]) for g in c.groups or ()))
                  for members in self.key_members.values() for c in members.values()]
        self.at(self.now + 1.0, self._probe_check, expect)

    def _check_links_up(self) -> None:
        for link in (SUB, CMD):
            c = self.redis_conn.get(link)
            if c is None or not c.alive or c.prelude_left:
                self.fail(f"(a3) the {link.value} link is not up after the faults healed")

    def _publish_in_flight(self) -> bool:
        return any(name == b"PUBLISH" for _, name in self.redis_conn[CMD].pending)

    def _check_subscriptions(self, needed: set[bytes]) -> None:
        """(a3) Redis has the hub subscribed to exactly the channels needed."""
        hub_subs = {ch for ch in self.redis_conn[SUB].subs if not ch.startswith(self.pfx_probe)}  # the probe's apart
        if hub_subs != needed:
            self.fail(f"(a3) Redis has the hub subscribed to {sorted(hub_subs)}, needed {sorted(needed)}")

    def _probe_check(self, expect: list[tuple[SimClient, list[tuple[str, int]]]]) -> None:
        for c, wanted in expect:
            if c.state != "open" or not c.member:
                continue
            for g, probe in wanted:
                if self.history_mode:
                    if c.groups is not None and g in c.groups and probe not in c.h_owed.get(g, ()):
                        self.fail(f"(a3) the probe {g} h{probe} was not delivered to the hub for {c!r}")
                elif (g, probe) not in c.owed:
                    self.fail(f"(a3) the probe {(g, probe)} was not delivered to the hub for {c!r}")
            if c.recv != len(c.owed):
                self.fail(f"(a3) {c!r} received {c.recv} of {len(c.owed)} owed messages 1s after the probe")
            for g in sorted(c.groups or ()):
                # (h) Every entry the hub received live in this stint came (with the ones between, above).
                # (Or it was trimmed before a read for it ran: then it is in a run that h2 let it skip.)
                got = c.h_got.get(g, set())
                skipped = c.h_skipped.get(g, ())
                missing = [seq for seq in c.h_owed.get(g, ())
                           if seq not in got and not any(a <= seq <= b for a, b in skipped)]
                if missing:
                    self.fail(f"(h) {c!r} stayed in {g} but never received h{missing[0]} "
                              f"({self.hist_ids[g][missing[0]]}) of the {len(missing)} entries it is owed; "
                              f"last received: h{c.h_last.get(g)}")
        history = self.hub._history
        if history is not None and history.catching_up():
            self.fail(f"(h) {history.catching_up()} connections still catching up from history once settled")
        self.phase = "ending"
        if self.ending == "shutdown":
            self.at(self.now + 0.2, self._shutdown)
        else:
            for c in list(self.live.values()):
                self.at(self.now + self.rng.uniform(0.0, 2.0), self._leave, c, self.pick_leave())
            self.at(self.now + 2.0 + self.cfg.pong_wait + self.cfg.write_wait + 2 * self.cfg.redis_timeout + 1.0,
                    self._final)

    def _shutdown(self) -> None:
        self.stopping = True
        self.shutdown_at = self.now
        self.call("shutdown", self.hub.shutdown, self.now)
        cfg = self.cfg
        end = max(self.now + cfg.shutdown_timeout, self.fault_until) + cfg.reconnect_max + 2 * cfg.redis_timeout
        self.at(end + 1.0, self._final)

    def _stopped(self) -> None:
        self.log("action Stopped")
        if not self.stopping or self.shutdown_at is None:
            self.fail("Stopped without a shutdown")
        if self.stopped_at is not None:
            self.fail("Stopped twice")
        self.stopped_at = self.now
        if self.now < self.shutdown_at + self.cfg.shutdown_timeout - EPS:
            self._check_all_published("at Stopped")
        # The shell exits: Server.close() aborts every transport it still has.
        for cid in sorted(self.clients):
            c = self.clients[cid]
            if c.t_open:
                if c.hub_known:
                    self._model_leave(c)
                c.up.closed = True
                c.held = []
                self._abort_transport(c)

    def _check_all_published(self, when: str) -> None:
        for cid in sorted(self.clients):
            c = self.clients[cid]
            st = self.sender.get(cid)
            seen = st["max"] + 1 if st else 0
            if seen != c.accepted:
                self.fail(f"(b) {when}: the hub received {c.accepted} messages from {c!r}, "
                          f"Redis published {seen}")

    def _final(self) -> None:
        """(c) nothing leaks; (b) everything received was published; every key announced gone."""
        self.log("final checks")
        hub = self.hub
        if self.stopping and self.stopped_at is None:
            self.fail("(d) the hub never reported Stopped")
        if self.stopped_at is not None and self.shutdown_at is not None and \
                self.stopped_at > self.shutdown_at + self.cfg.shutdown_timeout + EPS:
            self.fail("(d) Stopped came after shutdownTimeout")
        for c in self.clients.values():
            if c.state != "done":
                self.fail(f"(c) {c!r} is still {c.state} at the end")
            if c.t_open or c.hub_known:
                self.fail(f"(c) {c!r}'s connection is still open in the hub at the end")
        if not hub.is_empty() or hub.client_count():
            self.fail(f"(c) hub.is_empty() is False at the end ({hub.client_count()} clients)")
        if hub.needed_channels() or hub.subscribed_channels():
            self.fail(f"(c) the hub still needs {sorted(hub.needed_channels())} / subscribes "
                      f"{sorted(hub.subscribed_channels())}")
        self._check_links_final()
        if self.stopped_at is not None and self.shutdown_at is not None and \
                self.stopped_at > self.shutdown_at + self.cfg.shutdown_timeout - EPS:
            # Stopped by the shutdown timeout: the process exits, buffered messages are lost by design.
            self.phase = "done"
            self.finished = True
            return
        self._check_all_published("at the end")
        for key, left in sorted(self.key_left_at.items()):
            if self.gone_seen.get(key, -1.0) < left:
                self.fail(f"(c) no client-gone for {key!r} after its last connection closed at {left - T0:.6f}")
        self.phase = "done"
        self.finished = True

    def _check_links_final(self) -> None:
        for link in (SUB, CMD):
            c = self.redis_conn.get(link)
            if c is None:
                self.fail(f"(c) the {link.value} link is down at the end")
            left = sorted(ch for ch in c.subs if not ch.startswith(self.pfx_probe))  # the probe's: while up
            if left:
                self.fail(f"(c) Redis still has the hub subscribed to {left}")
            waiting = [name for _, name in c.pending if name not in (b"PING", b"PROBE")]  # keepalives may be owed
            if waiting:
                self.fail(f"(c) the {link.value} link still waits for replies to {waiting}")
        for ch in self.redis.subs:
            if not ch.startswith(self.pfx_probe):
                self.fail(f"(c) Redis still has subscribers on {ch!r}")

    # -- (d) deadlines ---------------------------------------------------------------------

    def _check_due(self, t: float) -> None:
        """Before time moves to ``t``: nothing the hub had to do before ``t`` is still undone."""
        cfg = self.cfg
        for c in self.clients.values():
            if c.closing_until is not None and t > c.closing_until + EPS:
                self.fail(f"(c) {c!r}: a graceful close that cannot flush was not aborted by "
                          f"{c.closing_until - T0:.6f} (writeWait={cfg.write_wait})")
        for c in self.http_clients.values():
            if t > c.opened_at + cfg.handshake_timeout + EPS:
                self.fail(f"(d) {c!r} still in its HTTP handshake {t - c.opened_at:.6f}s after it connected, "
                          f"handshakeTimeout={cfg.handshake_timeout}")
        for c in self.open_clients.values():
            if cfg.groups_timeout and c.groups is None and t > c.upgraded_at + cfg.groups_timeout + EPS:
                self.fail(f"(d) {c!r} has had no groups for {t - c.upgraded_at:.6f}s since its upgrade and "
                          f"was not closed (groupsTimeout={cfg.groups_timeout})")
            if c.read_paused:
                continue  # the hub stopped reading it (Redis backpressure): no ping, no silence close
            silent_due = c.hub_rx + cfg.pong_wait
            if t > silent_due + EPS:
                self.fail(f"(d) {c!r}: the hub heard nothing for {t - c.hub_rx:.6f}s (pongWait={cfg.pong_wait}) "
                          f"and did not close it by {silent_due - T0:.6f}")
            if c.write_paused:
                if t > c.paused_since + cfg.write_wait + EPS:
                    self.fail(f"(d) {c!r} write-paused since {c.paused_since - T0:.6f} not closed within "
                              f"writeWait={cfg.write_wait}")
            else:
                ping_due = max(c.hub_rx, c.ping_base) + self.interval
                if t > ping_due + EPS:
                    self.fail(f"(d) {c!r}: no ping by {ping_due - T0:.6f} (last bytes in at {c.hub_rx - T0:.6f}, "
                              f"last ping at {c.ping_base - T0:.6f}, interval {self.interval})")
        self._check_links_due(t)

    def _check_links_due(self, t: float) -> None:
        """(d) for the Redis links: reply timeouts, idle pings, connect timeouts, redials."""
        cfg = self.cfg
        timeout = cfg.redis_timeout
        watcher = self.redis_conn.get(SENTINEL)
        for link in (SUB, CMD, SENTINEL) if self.sentinel_mode else (SUB, CMD):
            rc = self.redis_conn.get(link)
            if rc is not None:
                if rc.pending:
                    due = max(rc.wait_rx, rc.pending[0][0]) + timeout
                    what = "reply timeout (drop the link)"
                else:
                    due = rc.last_rx + timeout
                    what = "idle PING"
            elif link in self.connecting:
                due = self.connecting[link][1] + timeout
                what = "connect timeout"
            elif link in self.down_since:
                due = self.down_since[link] + cfg.reconnect_max
                what = "reconnect"
                if self.sentinel_mode and link is not SENTINEL:
                    # It waits for a sentinel to name the master: due once one is up (its answer is a round
                    # trip away, a slow sentinel link's prelude another).
                    if watcher is None or not watcher.alive or watcher.prelude_left:
                        continue
                    due = max(due, watcher.born) + 8 * self.redis_latency + 0.01
                    what = "reconnect (a sentinel is up)"
            else:
                continue
            if t > due + EPS:
                self.fail(f"(d) {link.value} link: {what} was due at {due - T0:.6f}, nothing happened by "
                          f"{t - T0:.6f}")


def run_seed(seed: int, *, verbose: bool = False, fingerprint: bool = False) -> dict[str, Any]:
    """Run one seed; raises ``SimFailure`` (text starts with ``seed=N``) if an invariant breaks."""
    from .cluster import ClusterWorld, is_cluster_seed  # it builds on this module

    world = ClusterWorld if is_cluster_seed(seed) else World
    return world(seed, verbose=verbose, fingerprint=fingerprint).run()
