#!/usr/bin/env python3
"""A deterministic benchmark of the Sans-IO core alone: no sockets, no event loop, no clock.

    python bench/core.py [--clients N] [--groups G] [--fanout M] [--client-messages K] [--size B] [--history]
    python bench/core.py --measure time --repeat 5        # wall clock per phase, median of 5 runs
    python bench/core.py --callgrind                      # instructions per phase (runs under valgrind)

One ``wshub_core.Hub`` is driven through its public API with real bytes: the
WebSocket side is wsproto acting as a client (handshake, masked frames, close),
the Redis side is hand-written RESP (the ``+PONG`` that makes a link READY,
subscribe/unsubscribe confirmations, ``message`` pushes, PUBLISH integer
replies). Every input is followed by a drain (``hub.actions()``), as a shell
that drains after every input would. Phases, each measured on its own:

1. ``connect``: N clients: handshake, SUBSCRIBE groups-new:KEY (with client-send:KEY, client-kick:KEY) confirmed,
   client-new published (and answered), the listener's groups answer
   (``["all","gI"]``, I = client index mod G), group SUBSCRIBEs confirmed;
2. ``fanout``: M messages to group ``all`` (N members): M x N deliveries;
3. ``groups``: one message to each of the G groups ``gI`` (N/G members): N deliveries;
4. ``client_messages``: each client sends K messages (PUBLISH client-data:KEY, reply fed back);
5. ``disconnect``: each client sends a close frame; the hub echoes it and closes; the
   transport reports its loss; UNSUBSCRIBE confirmations and client-gone replies are fed back.

Inside a phase the loop only calls the hub and keeps its actions: every byte
fed in was built before the phase started (the Redis replies can be, because
what the hub must send is known from the protocol), and what the hub sent is
checked after the phase (client bytes decoded by each wsproto client, Redis
commands parsed with hiredis and compared with what the protocol requires).
So the figures are the core's work plus a constant few calls per input.

Instruction counts (``--callgrind``): the script runs itself under
``valgrind --tool=callgrind --zero-before=getppid --dump-before=getpgrp``;
with ``--measure instructions`` it calls ``os.getppid()`` just before each
phase and ``os.getpgrp()`` just after it: two libc functions nothing else in
the process calls, which CPython calls directly from C (a function reached
through ctypes/libffi is not seen entering by callgrind). So callgrind zeroes
its counters as a phase starts and writes one dump as it ends: one dump per
phase, holding exactly that phase (plus the return from ``getppid`` and the
call of ``getpgrp``). An ``empty`` phase (the two marker calls and nothing
between) shows the cost of the markers themselves. The counts repeat exactly
because nothing varies: ``PYTHONHASHSEED=0`` fixes set and dict orders, the
child gets a fixed environment and working directory, wsproto's client nonces
and masks come from a seeded PRNG, and a ``gc.collect()``
before each phase makes the collections inside it fall at the same points.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hiredis
import wsproto.frame_protocol
import wsproto.utilities
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Request, TextMessage

from wshub_core import (
    Action,
    CloseClient,
    CloseLink,
    Hub,
    OpenLink,
    RedisLink,
    RedisState,
    SendToClient,
    SendToLink,
    load_config,
)

try:
    from wshub_core import SendToClients
except ImportError:  # a core from before issue 13's broadcast action, run for a before/after
    SendToClients = None  # type: ignore[assignment,misc]

PREFIX = "bench:"
# No stall probe: its SUBSCRIBE at link up and one PUBLISH per 5 s are no part of the phases measured here.
# History off unless --history: then group messages are envelopes (as wshub_publish publishes them), and the
# library's load and each new group's first read (where its history ends) are answered like Redis would.
CONFIG = (f'redis:\n  address: "localhost:6379"\n  channelPrefix: "{PREFIX}"\n  probeInterval: 0\n'
          "history:\n  enabled: {history}\n")
MAGIC = b"\xffwshub\x00"  # wshub_core/_redis_history.py: an envelope's first bytes
NOW = 1000.0  # virtual time; nothing in the benchmark waits long enough for a deadline to pass
PHASES = ("connect", "fanout", "groups", "client_messages", "disconnect")
UNITS = {"connect": "connects", "fanout": "deliveries", "groups": "deliveries",
         "client_messages": "messages", "disconnect": "disconnects", "empty": "-"}
Json = dict[str, Any]


# -- RESP, as Redis writes it -------------------------------------------------------


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def push(kind: bytes, channel: bytes, count: int) -> bytes:
    """A (un)subscribe confirmation, or (kind=b"message") a message with ``count`` unused."""
    return b"*3\r\n" + bulk(kind) + bulk(channel) + b":%d\r\n" % count


def message(channel: bytes, payload: bytes) -> bytes:
    return b"*3\r\n" + bulk(b"message") + bulk(channel) + bulk(payload)


def integer(value: int) -> bytes:
    return b":%d\r\n" % value


PONG = b"+PONG\r\n"


# -- the only code that knows how the core names its Redis links ----------------------


ROLE_NAMES = {RedisLink.SUBSCRIBER: "sub", RedisLink.COMMANDS: "cmd"}


class RedisLinks:
    """Every use of the core's link API, in one place.

    Depends on: the ``link`` id of ``OpenLink`` and ``SendToLink``,
    ``Hub.link_opened``, ``Hub.link_data``, ``hub.broker.current_links()``
    (which role, ``RedisLink.SUBSCRIBER`` / ``RedisLink.COMMANDS``, each id
    plays) and ``Hub.link_states`` (values ``RedisState.READY``).
    """

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self._names: dict[int, str] = {}  # link id -> "sub" / "cmd": the dials of hub.start
        # The hot loops call these: one C-level partial each, no Python frame of ours (set by connect).
        self.feed_sub: Callable[[bytes, float], None] = self._not_connected
        self.feed_cmd: Callable[[bytes, float], None] = self._not_connected

    @staticmethod
    def _not_connected(data: bytes, now: float) -> None:
        raise BenchError("Redis bytes fed before the links were dialled")

    def connect(self, actions: Iterable[Action], now: float) -> None:
        """Answer the OpenLink actions of ``hub.start``: both links are up (not READY yet)."""
        dialled = [a.link for a in actions if isinstance(a, OpenLink)]
        roles = {link: role for role, link in self._hub.broker.current_links().items()}
        self._names = {link: ROLE_NAMES[roles[link]] for link in dialled if link in roles}
        if len(dialled) != 2 or sorted(self._names.values()) != ["cmd", "sub"]:
            raise BenchError(f"hub.start dialled {dialled!r}, expected both links")
        ids = {name: link for link, name in self._names.items()}
        self.feed_sub = functools.partial(self._hub.link_data, ids["sub"])
        self.feed_cmd = functools.partial(self._hub.link_data, ids["cmd"])
        for link in dialled:
            self._hub.link_opened(link, now)

    def sent_on(self, action: SendToLink) -> str:
        return self._names[action.link]

    def all_ready(self) -> bool:
        return all(state is RedisState.READY for state in self._hub.link_states().values())


class BenchError(RuntimeError):
    """The hub did not do what the protocol requires: the figures would be meaningless."""


# -- the benchmark ----------------------------------------------------------------------------


@dataclass
class Params:
    clients: int = 1000
    groups: int = 10
    fanout: int = 10
    client_messages: int = 5
    size: int = 64
    history: bool = False

    def check(self) -> None:
        if self.clients < 1 or self.groups < 1 or self.fanout < 0 or self.client_messages < 0 or self.size < 0:
            raise SystemExit("--clients and --groups must be >= 1; --fanout, --client-messages, --size >= 0")
        if self.clients % self.groups:
            raise SystemExit(f"--clients ({self.clients}) must be a multiple of --groups ({self.groups})")


@dataclass
class Client:
    index: int
    key: bytes
    groups: tuple[bytes, ...]
    ws: WSConnection = field(default_factory=lambda: WSConnection(ConnectionType.CLIENT))
    conn: int = 0
    received: list[bytes] = field(default_factory=list)  # SendToClient data, in order
    messages: int = 0  # messages decoded so far
    closed: bool = False  # CloseClient seen


class Markers:
    """Phase boundaries: perf_counter readings, or (instructions) the callgrind zero/dump triggers."""

    def __init__(self, instructions: bool) -> None:
        self.instructions = instructions
        self.wall: list[float] = []

    def begin(self) -> None:
        # A full collection first: the collector's counters start from zero, so the collections a phase
        # triggers (their cost is the core's too) fall at the same points whatever ran before it.
        gc.collect()
        if self.instructions:
            os.getppid()  # callgrind --zero-before=getppid: counting starts here
        else:
            self.wall.append(time.perf_counter())

    def end(self) -> None:
        if self.instructions:
            os.getpgrp()  # callgrind --dump-before=getpgrp: one dump per phase
        else:
            self.wall[-1] = time.perf_counter() - self.wall[-1]


def seed_wsproto_clients(seed: int) -> None:
    """The same client bytes every run: wsproto's client-side nonce and masking keys from a seeded PRNG.

    Only client-role code in wsproto calls ``os.urandom`` (``generate_nonce``, the
    frame mask), so the hub's own wsproto (server role) is unaffected. Random
    keys and masks would move the counts a little (a 0.1-0.3 % spread seen).
    """
    fake_os = types.SimpleNamespace(urandom=random.Random(seed).randbytes)
    wsproto.frame_protocol.os = fake_os  # type: ignore[attr-defined,assignment]
    wsproto.utilities.os = fake_os  # type: ignore[attr-defined,assignment]


class CoreBench:
    def __init__(self, params: Params, markers: Markers) -> None:
        seed_wsproto_clients(0)
        self.p = params
        self.m = markers
        self.hub = Hub(config=load_config(CONFIG.format(history=str(params.history).lower()), source="bench/core.py",
                                          environ={}), seed=0)
        self.entries: dict[bytes, int] = {}  # group channel -> entries published (--history)
        self.links = RedisLinks(self.hub)
        self.payload = (b"x" * params.size)
        self.clients = [
            Client(i, b"k%d" % i, (b"all", b"g%d" % (i % params.groups))) for i in range(params.clients)
        ]
        self.subscribed = 0  # the server's count of this link's subscriptions (in confirmations)
        self.results: list[Json] = []
        self.wanted: set[str] = set()

    def channel(self, name: bytes) -> bytes:
        return PREFIX.encode() + name

    def group_message(self, channel: bytes) -> bytes:
        """A group message as Redis delivers it: plain, or (--history) the envelope of the next entry."""
        if not self.p.history:
            return message(channel, self.payload)
        n = self.entries.get(channel, 0)
        self.entries[channel] = n + 1
        prev = b"%d-0" % (1000 + n - 1) if n else b"0-0"
        return message(channel, MAGIC + b"%d-0" % (1000 + n) + b"\0" + prev + b"\0" + self.payload)

    # -- setup: both links READY ---------------------------------------------------------

    def start(self) -> None:
        hub = self.hub
        hub.start(NOW)
        self.links.connect(hub.actions(), NOW)
        prelude = hub.actions()  # a PING on each link (no AUTH/SELECT configured)
        if sorted(self.links.sent_on(a) for a in prelude if isinstance(a, SendToLink)) != ["cmd", "sub"]:
            raise BenchError(f"expected one prelude per link, got {prelude!r}")
        self.links.feed_sub(PONG, NOW)
        self.links.feed_cmd(PONG, NOW)
        if self.p.history:
            load = hub.actions()  # FUNCTION LOAD REPLACE, the moment the command link is READY
            if [self.links.sent_on(a) for a in load if isinstance(a, SendToLink)] != ["cmd"]:
                raise BenchError(f"expected the library's load on the command link, got {load!r}")
            self.links.feed_cmd(bulk(b"wshub"), NOW)
        if hub.actions() or not self.links.all_ready():
            raise BenchError("the links did not become READY on +PONG")

    def phase(self, name: str, ops: int, run: Callable[[], list[list[Action]]]) -> list[Action]:
        """Run one phase; between the markers if it is one of the phases asked for."""
        if name not in self.wanted:
            return [a for batch in run() for a in batch]
        self.m.begin()
        log = run()
        self.m.end()
        self.results.append({"phase": name, "ops": ops, "unit": UNITS[name]})
        return [a for batch in log for a in batch]

    # -- checks (after a phase, outside the measurement) -------------------------------------

    def split(self, actions: list[Action]) -> dict[str, list[list[bytes]]]:
        """Client bytes to their wsproto clients; Redis commands parsed, per link."""
        by_conn = {c.conn: c for c in self.clients}
        readers = {"sub": hiredis.Reader(), "cmd": hiredis.Reader()}
        for action in actions:
            if isinstance(action, SendToClient):
                by_conn[action.conn].received.append(action.data)
            elif SendToClients is not None and isinstance(action, SendToClients):
                for conn in action.conns:
                    by_conn[conn].received.append(action.data)
            elif isinstance(action, SendToLink):
                readers[self.links.sent_on(action)].feed(action.data)
            elif isinstance(action, CloseClient):
                if action.abort:
                    raise BenchError(f"unexpected abort: {action!r}")
                by_conn[action.conn].closed = True
            elif isinstance(action, CloseLink):
                raise BenchError(f"the hub dropped a Redis link: {action!r}")
            else:
                raise BenchError(f"unexpected action {action!r}")
        commands: dict[str, list[list[bytes]]] = {}
        for name, reader in readers.items():
            commands[name] = []
            while (cmd := reader.gets()) is not False:
                commands[name].append(cmd)
        if not self.links.all_ready():
            raise BenchError("a Redis link is no longer READY")
        return commands

    @staticmethod
    def expect(what: str, got: list[list[bytes]], want: list[list[bytes]]) -> None:
        def flat(cmds: list[list[bytes]]) -> list[tuple[bytes, ...]]:
            # SUBSCRIBE a b == SUBSCRIBE a + SUBSCRIBE b; channel order inside one phase does not matter.
            out: list[tuple[bytes, ...]] = []
            for cmd in cmds:
                if cmd[0] in (b"SUBSCRIBE", b"UNSUBSCRIBE"):
                    out += [(cmd[0], ch) for ch in cmd[1:]]
                else:
                    out.append(tuple(cmd))
            return sorted(out)
        if flat(got) != flat(want):
            raise BenchError(f"{what}: the hub sent {got[:6]!r}... ({len(got)}), expected {want[:6]!r}... "
                             f"({len(want)})")

    def decode(self, client: Client) -> list[object]:
        events: list[object] = []
        for data in client.received:
            client.ws.receive_data(data)
            events += client.ws.events()
        client.received.clear()
        return events

    def expect_messages(self, per_client: Callable[[Client], int], payload: bytes) -> None:
        text = payload.decode()
        for c in self.clients:
            events = self.decode(c)
            msgs = [e for e in events if isinstance(e, TextMessage | BytesMessage)]
            if len(msgs) != per_client(c) or any(m.data != text for m in msgs) or len(msgs) != len(events):
                raise BenchError(f"client {c.index} decoded {events[:3]!r}... ({len(events)}), "
                                 f"expected {per_client(c)} x {text!r}")

    # -- phases -------------------------------------------------------------------------------

    def run(self, phases: Iterable[str]) -> list[Json]:
        """Every phase runs (each needs the state the previous ones left); those in ``phases`` are measured."""
        self.wanted = set(phases)
        self.start()
        self.phase("empty", 0, list)
        self.connect()
        self.fanout()
        self.groups()
        self.client_messages()
        self.disconnect()
        return self.results

    def connect(self) -> None:
        hub, p = self.hub, self.p
        feed_sub, feed_cmd = self.links.feed_sub, self.links.feed_cmd
        plan = []  # per client: handshake, key confirmation, groups answer, group confirmations
        seen: set[bytes] = set()
        want: dict[str, list[list[bytes]]] = {"sub": [], "cmd": []}
        for c in self.clients:
            handshake = c.ws.send(Request(host="hub.test", target=f"/ws?session_key={c.key.decode()}"))
            key_channel = self.channel(b"groups-new:" + c.key)
            key_channels = [key_channel, self.channel(b"client-send:" + c.key), self.channel(b"client-kick:" + c.key)]
            confirm = b""
            for ch in key_channels:
                self.subscribed += 1
                confirm += push(b"subscribe", ch, self.subscribed)
            answer = message(key_channel, b"[" + b",".join(b'"%s"' % g for g in c.groups) + b"]")
            new = [self.channel(b"group-data:" + g) for g in c.groups if g not in seen]
            seen.update(c.groups)
            confirms = b""
            for ch in new:
                self.subscribed += 1
                confirms += push(b"subscribe", ch, self.subscribed)
            plan.append((c, handshake, confirm, answer, confirms, len(new) if p.history else 0))
            want["sub"] += [[b"SUBSCRIBE", *key_channels], *([b"SUBSCRIBE", ch] for ch in new)]
            if p.history:  # each new group reads where its history ends (none yet: the stream is empty)
                want["cmd"] += [[b"FCALL_RO", b"wshub_read", b"1", ch, b"0-0", b"0"] for ch in new]
            want["cmd"].append([b"PUBLISH", self.channel(b"client-new"), c.key])
        published = integer(1)  # the listener got client-new
        no_history = b"*1\r\n$0\r\n\r\n"  # wshub_read's answer for a key that does not exist yet

        def run() -> list[list[Action]]:
            log = []
            for c, handshake, confirm, answer, confirms, reads in plan:
                c.conn = conn = hub.client_opened(NOW)
                hub.client_data(conn, handshake, NOW)
                log.append(hub.actions())  # 101, SUBSCRIBE groups-new:KEY
                feed_sub(confirm, NOW)
                log.append(hub.actions())  # PUBLISH client-new KEY
                feed_cmd(published, NOW)
                feed_sub(answer, NOW)
                log.append(hub.actions())  # SUBSCRIBE group-data:G for groups new to this hub
                if confirms:
                    feed_sub(confirms, NOW)
                    log.append(hub.actions())
                if reads:
                    feed_cmd(no_history * reads, NOW)
                    log.append(hub.actions())
            return log

        commands = self.split(self.phase("connect", p.clients, run))
        for c in self.clients:
            if not any(isinstance(e, AcceptConnection) for e in self.decode(c)):
                raise BenchError(f"client {c.index} was not accepted")
        self.expect("connect, subscriber link", commands["sub"], want["sub"])
        self.expect("connect, command link", commands["cmd"], want["cmd"])
        for c in self.clients:
            if self.hub.groups_of(c.conn) != {g.decode() for g in c.groups}:
                raise BenchError(f"client {c.index} is in {self.hub.groups_of(c.conn)}, expected {c.groups!r}")

    def _deliver(self, name: str, pushes: list[bytes], ops: int) -> list[Action]:
        hub = self.hub
        feed_sub = self.links.feed_sub

        def run() -> list[list[Action]]:
            log = []
            for data in pushes:
                feed_sub(data, NOW)
                log.append(hub.actions())
            return log

        return self.phase(name, ops, run)

    def fanout(self) -> None:
        p = self.p
        pushes = [self.group_message(self.channel(b"group-data:all")) for _ in range(p.fanout)]
        commands = self.split(self._deliver("fanout", pushes, p.fanout * p.clients))
        self.expect("fanout", commands["sub"] + commands["cmd"], [])
        self.expect_messages(lambda c: p.fanout, self.payload)

    def groups(self) -> None:
        p = self.p
        pushes = [self.group_message(self.channel(b"group-data:g%d" % g)) for g in range(p.groups)]
        commands = self.split(self._deliver("groups", pushes, p.clients))
        self.expect("groups", commands["sub"] + commands["cmd"], [])
        self.expect_messages(lambda c: 1, self.payload)

    def client_messages(self) -> None:
        hub, p = self.hub, self.p
        feed_cmd = self.links.feed_cmd
        text = self.payload.decode()
        frames = [(c.conn, c.ws.send(TextMessage(data=text))) for _ in range(p.client_messages) for c in self.clients]
        reply = integer(0)  # nobody subscribed to client-data:KEY

        def run() -> list[list[Action]]:
            log = []
            for conn, frame in frames:
                hub.client_data(conn, frame, NOW)
                log.append(hub.actions())  # PUBLISH client-data:KEY
                feed_cmd(reply, NOW)
            log.append(hub.actions())
            return log

        commands = self.split(self.phase("client_messages", len(frames), run))
        want = [[b"PUBLISH", self.channel(b"client-data:" + c.key), self.payload]
                for _ in range(p.client_messages) for c in self.clients]
        self.expect("client messages", commands["sub"] + commands["cmd"], want)
        self.expect_messages(lambda c: 0, b"")

    def disconnect(self) -> None:
        hub, p = self.hub, self.p
        feed_sub, feed_cmd = self.links.feed_sub, self.links.feed_cmd
        last_of = {g: c.index for c in self.clients for g in c.groups}  # the member whose close empties g
        plan = []
        want: dict[str, list[list[bytes]]] = {"sub": [], "cmd": []}
        for c in self.clients:
            close = c.ws.send(CloseConnection(code=1000))
            gone = [self.channel(kind + c.key) for kind in (b"groups-new:", b"client-send:", b"client-kick:")]
            gone += [self.channel(b"group-data:" + g) for g in c.groups if last_of[g] == c.index]
            confirms = b""
            for ch in gone:
                self.subscribed -= 1
                confirms += push(b"unsubscribe", ch, self.subscribed)
            plan.append((c, close, confirms))
            want["sub"] += [[b"UNSUBSCRIBE", ch] for ch in gone]
            want["cmd"].append([b"PUBLISH", self.channel(b"client-gone"), c.key])
        published = integer(0)

        def run() -> list[list[Action]]:
            log = []
            for c, close, confirms in plan:
                hub.client_data(c.conn, close, NOW)
                log.append(hub.actions())  # close echoed, CloseClient, UNSUBSCRIBE, PUBLISH client-gone
                hub.client_lost(c.conn, NOW)  # the flushing close completed
                feed_sub(confirms, NOW)
                feed_cmd(published, NOW)
                log.append(hub.actions())
            return log

        commands = self.split(self.phase("disconnect", p.clients, run))
        for c in self.clients:
            events = self.decode(c)
            if not c.closed or not any(isinstance(e, CloseConnection) for e in events):
                raise BenchError(f"client {c.index} was not closed with a close frame: {events!r}")
        self.expect("disconnect, subscriber link", commands["sub"], want["sub"])
        self.expect("disconnect, command link", commands["cmd"], want["cmd"])
        if not self.hub.is_empty() or self.hub.subscribed_channels():
            raise BenchError("the hub is not empty after every client left")


# -- reporting ----------------------------------------------------------------------------------


def table(rows: list[Json], value: str, per_op: str) -> str:
    head = ("phase", "operations", "unit", value, per_op)
    lines = [head]
    for r in rows:
        total = r[value]
        each = r[per_op]
        lines.append((r["phase"], str(r["ops"]), r["unit"], f"{total:,}" if isinstance(total, int) else str(total),
                      "-" if each is None else f"{each:,}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in
                               enumerate(zip(line, widths, strict=True))).rstrip() for line in lines)


def measure_time(params: Params, phases: list[str], repeat: int) -> list[Json]:
    runs: list[list[Json]] = []
    for _ in range(repeat):
        markers = Markers(instructions=False)
        bench = CoreBench(params, markers)
        rows = bench.run(phases)
        for row, seconds in zip(rows, markers.wall, strict=True):
            row["seconds"] = seconds
        runs.append(rows)
    out = []
    for i, row in enumerate(runs[0]):
        median = statistics.median(run[i]["seconds"] for run in runs)
        row = {k: v for k, v in row.items() if k != "seconds"}
        out.append({**row, "seconds_median": round(median, 6), "ms_median": f"{median * 1e3:.3f}",
                    "us_per_op": round(median * 1e6 / row["ops"], 3) if row["ops"] else None})
    return out


def dump_instructions(path: Path) -> int:
    """Instructions executed in one callgrind dump: its ``summary:`` line (what callgrind_annotate
    calls PROGRAM TOTALS). Not ``totals:``, which also counts calls still open when the counters were zeroed."""
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise BenchError(f"no summary line in {path}")


def measure_callgrind(args: argparse.Namespace, forward: list[str]) -> list[Json]:
    with tempfile.TemporaryDirectory(prefix="core-callgrind-") as tmp:
        out = Path(tmp) / "callgrind.out"
        cmd = [args.valgrind, "--tool=callgrind", "--zero-before=getppid", "--dump-before=getpgrp",
               "--dump-line=no", f"--callgrind-out-file={out}",
               sys.executable, str(Path(__file__).resolve()), "--measure", "instructions", "--json", *forward]
        # A fixed environment and working directory: their size moves the stack and what Python allocates.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONHASHSEED": "0", "LC_ALL": "C.UTF-8"}
        if "PYTHONPATH" in os.environ:
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        proc = subprocess.run(cmd, env=env, cwd=Path(__file__).resolve().parent.parent, capture_output=True,
                              text=True, check=False)
        if proc.returncode:
            raise SystemExit(f"callgrind run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        rows: list[Json] = json.loads(proc.stdout.strip().splitlines()[-1])["phases"]
        # One dump per phase (callgrind.out.1, .2, ...), in phase order; the one at exit is callgrind.out.
        dumps = sorted(Path(tmp).glob("callgrind.out.*"), key=lambda f: int(f.name.rsplit(".", 1)[1]))
        if len(dumps) != len(rows):
            raise BenchError(f"{len(dumps)} callgrind dumps for {len(rows)} phases: something else called getpgrp")
        for row, dump in zip(rows, dumps, strict=True):
            ir = dump_instructions(dump)
            row["instructions"] = ir
            row["instructions_per_op"] = round(ir / row["ops"]) if row["ops"] else None
        return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--clients", type=int, default=Params.clients, help="N (a multiple of --groups)")
    p.add_argument("--groups", type=int, default=Params.groups, help="G groups of N/G members")
    p.add_argument("--fanout", type=int, default=Params.fanout, help="M messages to the group of all N")
    p.add_argument("--client-messages", type=int, default=Params.client_messages, help="K messages per client")
    p.add_argument("--size", type=int, default=Params.size, help="payload bytes of every message")
    p.add_argument("--phases", default=",".join(("empty", *PHASES)), help=f"comma list of {', '.join(PHASES)}, empty")
    p.add_argument("--measure", choices=("time", "instructions"), default="time",
                   help="instructions: call the callgrind markers (run it under valgrind; see --callgrind)")
    p.add_argument("--repeat", type=int, default=5, help="time: runs, median reported")
    p.add_argument("--callgrind", action="store_true", help="run under callgrind and print instructions per phase")
    p.add_argument("--valgrind", default="valgrind")
    p.add_argument("--history", action="store_true",
                   help="history on: group messages as wshub_publish's envelopes, through the hub's history part")
    p.add_argument("--json", action="store_true", help="one JSON line instead of the table")
    a = p.parse_args(argv)
    params = Params(a.clients, a.groups, a.fanout, a.client_messages, a.size, a.history)
    params.check()
    phases = [ph for ph in a.phases.split(",") if ph]
    unknown = set(phases) - {*PHASES, "empty"}
    if unknown:
        raise SystemExit(f"unknown phase(s): {', '.join(sorted(unknown))}")
    phases = [ph for ph in ("empty", *PHASES) if ph in phases]
    info: Json = {"bench": "core", "params": vars(params), "python": sys.version.split()[0]}
    if a.callgrind:
        forward = [f"--clients={a.clients}", f"--groups={a.groups}", f"--fanout={a.fanout}",
                   f"--client-messages={a.client_messages}", f"--size={a.size}", f"--phases={','.join(phases)}",
                   *(["--history"] if a.history else [])]
        rows = measure_callgrind(a, forward)
        info["measure"] = "instructions"
        value, per_op = "instructions", "instructions_per_op"
    elif a.measure == "instructions":
        rows = CoreBench(params, Markers(instructions=True)).run(phases)
        info["measure"] = "instructions"
        value, per_op = "", ""
    else:
        rows = measure_time(params, phases, a.repeat)
        info["measure"] = "time"
        info["repeat"] = a.repeat
        value, per_op = "ms_median", "us_per_op"
    if a.json or not value:
        print(json.dumps({**info, "phases": rows}))
    else:
        print(f"# {json.dumps(info)}")
        print(table(rows, value, per_op))
    return 0


if __name__ == "__main__":
    sys.exit(main())
