"""Hypothesis over random interleavings of everything that can happen to a Hub.

Clients connect (several keys, shared keys), send messages and leave in four
ways; the listener answers with group lists and publishes group data; Redis
replies are held and delivered whole, a few at a time or cut mid-reply; Redis
links drop, refuse to come back, and come back; time passes.

Each example builds its own Harness (fresh state per example). An independent
model, not the hub's own indexes, predicts who must receive what:

- a key's groups are those of the last usable ``groups-new:KEY`` message the
  hub read while the key had a connection (a new sibling starts with them);
- a group message goes to exactly the connections whose key holds the group
  when the hub reads it, once, in the order Redis sent it.

Invariants, after every step:
1. every client received exactly the group messages the model predicts;
2. while the subscriber link is up, what Redis has subscribed equals
   ``hub.needed_channels()`` (as the fake sees SUBSCRIBE/UNSUBSCRIBE), and once
   every confirmation is delivered (and the command link is up) ``hub.ready``;
3. per key, client messages reach Redis in the order they were sent (resends
   after a reconnect repeat, never reorder);
4. until a Redis link has failed, Redis runs ``PUBLISH client-new KEY`` only
   once the hub has read the confirmation of ``SUBSCRIBE groups-new:KEY``.
At the end, once Redis is reachable and every reply delivered: every client
message reached Redis; then everyone leaves and the hub is empty with nothing
subscribed.
"""

from __future__ import annotations

import json
import os

from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from wshub_core import CloseLink, RedisLink

from .harness import CMD, SUB, Client, Harness, Reply, make_config, ws_frame

KEYS = ["a", "b", "c"]
GROUPS = ["g1", "g2", "g3"]
LINKS = st.sampled_from([SUB, CMD])
RECONNECT_MAX = 2.0


class HubMachine(RuleBasedStateMachine):
    @initialize(seed=st.integers(0, 2**16), auto_listener=st.booleans(), faults=st.booleans(),
                listener_groups=st.fixed_dictionaries({k: st.frozensets(st.sampled_from(GROUPS), min_size=1)
                                                       for k in KEYS}))
    def start(self, seed: int, auto_listener: bool, faults: bool,
              listener_groups: dict[str, frozenset[str]]) -> None:
        config = make_config(pong_wait=1e6, handshake_timeout=1e6, redis_timeout=30.0, reconnect_min=0.1,
                             reconnect_max=RECONNECT_MAX, max_buffered_bytes=1 << 30)
        self.h = Harness(config, auto_reply=False, seed=seed)
        self.key_of: dict[int, str] = {}
        self.clients: list[Client] = []
        self.key_groups: dict[str, frozenset[str] | None] = {}  # keys with an open connection
        self.expected: dict[int, list[str]] = {}
        self.sent: dict[str, list[bytes]] = {k: [] for k in KEYS}
        self.groups_payload: dict[bytes, frozenset[str] | None] = {}
        self.counter = 0
        self.failures = 0  # Redis links lost or refused so far
        self.client_new_violations: list[bytes] = []
        # The listener: answers client-new at once (auto) or only when a rule says so.
        self.auto_listener = auto_listener
        self.faults = faults  # Redis failures in this example (timeouts may still happen)
        self.listener_groups = dict(listener_groups)
        self.h.redis.on_publish.append(self._on_publish)

    # -- model helpers -------------------------------------------------------------

    def _on_publish(self, channel: bytes, payload: bytes) -> None:
        if channel != self.h.channel("client-new"):
            return
        key = payload.decode()
        channel = self.h.channel("groups-new:" + key)
        fake = self.h.redis.links[SUB]
        unconfirmed = any(r.kind == "subscribe" and r.channel == channel for r in fake.pending)
        # The PUBLISH and the UNSUBSCRIBE of a key whose last client left travel on two
        # links: Redis may run them in either order. Only a key still connected counts.
        still_connected = any(self.key_of.get(c.conn) == key and not c.closed for c in self.clients)
        if not self.failures and still_connected and (channel not in fake.subscribed or unconfirmed):
            self.client_new_violations.append(payload)
        if self.auto_listener:
            self._answer(key, self.listener_groups[key], "json")

    def _answer(self, key: str, groups: frozenset[str], form: str) -> None:
        self.counter += 1
        ordered = sorted(groups)
        if form == "json":
            payload = json.dumps(ordered).encode()
        elif form == "comma":
            payload = ",".join(ordered).encode()
        else:
            payload = b'{"groups": %d}' % self.counter
        # Padding the parser must skip; the same bytes always mean the same groups.
        payload += b" " * (self.counter % 3) if form != "comma" else b"," * (self.counter % 3)
        self.groups_payload[payload] = None if form == "invalid" else groups
        self.h.redis.publish(self.h.channel(f"groups-new:{key}"), payload)

    def open_clients(self) -> list[Client]:
        return [c for c in self.clients if not c.closed]

    def _prune(self) -> None:
        live = {self.key_of[c.conn] for c in self.open_clients()}
        for key in list(self.key_groups):
            if key not in live:
                del self.key_groups[key]

    def _absorb(self, replies: list[Reply]) -> None:
        """What the hub must have done with these replies, in order."""
        key_prefix = self.h.channel("groups-new:")
        group_prefix = self.h.channel("group-data:")
        for reply in replies:
            if reply.kind != "message":
                continue
            if reply.channel.startswith(key_prefix):
                key = reply.channel[len(key_prefix):].decode()
                groups = self.groups_payload[reply.payload]
                if key in self.key_groups and groups is not None:
                    self.key_groups[key] = groups
            elif reply.channel.startswith(group_prefix):
                group = reply.channel[len(group_prefix):].decode()
                for client in self.open_clients():
                    groups = self.key_groups[self.key_of[client.conn]]
                    if groups is not None and group in groups:
                        self.expected[client.conn].append(reply.payload.decode())

    def _count_failures(self, mark: int) -> None:
        self.failures += sum(isinstance(a, CloseLink) for a in self.h.actions_since(mark))

    def _pick(self, index: int) -> Client:
        live = self.open_clients()
        return live[index % len(live)]

    # -- rules: clients ------------------------------------------------------------------

    @precondition(lambda self: len(self.open_clients()) < 8)
    @rule(key=st.sampled_from(KEYS), then_deliver=st.booleans())
    def connect(self, key: str, then_deliver: bool) -> None:
        self._prune()
        mark = self.h.mark()
        client = self.h.connect(key)
        self._count_failures(mark)
        assert client.status == 101
        self.clients.append(client)
        self.key_of[client.conn] = key
        self.expected[client.conn] = []
        self.key_groups.setdefault(key, None)
        if then_deliver:
            self._deliver_all_subscriber()

    def _deliver_all_subscriber(self) -> None:
        """Redis answers promptly: every reply (and what they trigger, e.g. the listener's answer)."""
        for _ in range(3):
            mark = self.h.mark()
            self._absorb(self.h.deliver(SUB))
            self._count_failures(mark)

    @precondition(lambda self: self.open_clients())
    @rule(index=st.integers(0, 99), burst=st.integers(1, 3))
    def client_message(self, index: int, burst: int) -> None:
        client = self._pick(index)
        for _ in range(burst):
            self.counter += 1
            text = f"c{client.conn}-m{self.counter}"
            self.sent[self.key_of[client.conn]].append(text.encode())
            client.text(text)

    @precondition(lambda self: self.open_clients())
    @rule(index=st.integers(0, 99), how=st.sampled_from(["close", "eof", "lost", "protocol-error"]))
    def disconnect(self, index: int, how: str) -> None:
        client = self._pick(index)
        if how == "close":
            client.close(1000)
        elif how == "eof":
            self.h.eof(client)
        elif how == "lost":
            self.h.lose(client)
        else:
            client.send_raw(ws_frame(0x1, b"unmasked", mask=None))
            assert client.close_code == 1002
        assert client.closed
        self._prune()

    # -- rules: the listener and other publishers ----------------------------------------

    @rule(key=st.sampled_from(KEYS), groups=st.frozensets(st.sampled_from(GROUPS)),
          form=st.sampled_from(["json", "comma", "invalid"]))
    def listener_answers(self, key: str, groups: frozenset[str], form: str) -> None:
        if form != "invalid":
            self.listener_groups[key] = groups
        self._answer(key, groups, form)

    @rule(group=st.sampled_from(GROUPS), then_deliver=st.booleans())
    def group_data(self, group: str, then_deliver: bool) -> None:
        self.counter += 1
        self.h.redis.publish(self.h.channel(f"group-data:{group}"), f"{group}#{self.counter}".encode())
        if then_deliver:
            self._deliver_all_subscriber()

    # -- rules: Redis --------------------------------------------------------------------

    @rule(count=st.none() | st.integers(1, 4))
    def deliver_subscriber(self, count: int | None) -> None:
        mark = self.h.mark()
        self._absorb(self.h.deliver(SUB, count))
        self._count_failures(mark)

    @rule(count=st.none() | st.integers(1, 4))
    def deliver_commands(self, count: int | None) -> None:
        mark = self.h.mark()
        self.h.deliver(CMD, count)
        self._count_failures(mark)

    @rule(link=LINKS, nbytes=st.integers(1, 60))
    def deliver_bytes(self, link: RedisLink, nbytes: int) -> None:
        mark = self.h.mark()
        self._absorb(self.h.deliver_bytes(link, nbytes))
        self._count_failures(mark)

    @precondition(lambda self: self.faults)
    @rule(link=LINKS, in_transit=st.booleans())
    def redis_drops(self, link: RedisLink, in_transit: bool) -> None:
        """The connection dies under the hub, maybe with the unanswered commands lost on the way."""
        if self.h.redis.links[link].up:
            self.failures += 1
            self.h.drop_redis(link, lost_in_transit=in_transit)

    @precondition(lambda self: self.faults)
    @rule(link=LINKS, refuse=st.booleans())
    def redis_refuses(self, link: RedisLink, refuse: bool) -> None:
        """Dials to this link start (or stop) failing."""
        if refuse:
            self.failures += 1
            self.h.refuse.add(link)
        else:
            self.h.refuse.discard(link)

    @rule(seconds=st.sampled_from([0.05, 0.3, 1.0, 5.0, 20.0]))
    def tick(self, seconds: float) -> None:
        mark = self.h.mark()
        self.h.advance(seconds)
        self._count_failures(mark)
        if self.h.refuse:
            self.failures += 1  # refused dials

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def group_messages_reach_exactly_the_members_once_in_order(self) -> None:
        for client in self.clients:
            assert client.messages == self.expected[client.conn], client.conn

    @invariant()
    def subscriptions_match_what_is_needed(self) -> None:
        fake = self.h.redis.links[SUB]
        if not fake.up:
            return
        needed = self.h.hub.needed_channels()
        assert fake.subscribed == needed
        assert self.h.hub.subscribed_channels() == needed
        confirmations_owed = any(r.kind in ("subscribe", "unsubscribe") for r in fake.pending)
        if not confirmations_owed and self.h.redis.links[CMD].up:
            assert self.h.hub.ready

    @invariant()
    def client_messages_reach_redis_in_order(self) -> None:
        for key in KEYS:
            seen: list[bytes] = []
            for payload in self.h.published(self.h.channel(f"client-data:{key}")):
                if payload not in seen:
                    seen.append(payload)
            assert seen == self.sent[key][: len(seen)], key

    @invariant()
    def client_new_only_while_subscribed(self) -> None:
        assert self.client_new_violations == []

    # -- the end ---------------------------------------------------------------------------

    def _settle(self) -> None:
        self.h.refuse.clear()
        for _ in range(50):
            self.h.advance(RECONNECT_MAX)
            busy = False
            for link in (SUB, CMD):
                if self.h.redis.links[link].pending:
                    busy = True
                    self._absorb(self.h.deliver(link))
            if not busy and all(f.up for f in self.h.redis.links.values()):
                return
        raise AssertionError("Redis never settled")

    def teardown(self) -> None:
        if not hasattr(self, "h"):
            return
        self._settle()
        target(float(sum(len(v) for v in self.expected.values())), label="group messages delivered")
        self.group_messages_reach_exactly_the_members_once_in_order()
        self.subscriptions_match_what_is_needed()
        assert self.h.hub.ready
        for key in KEYS:  # nothing lost: every client message reached Redis
            published = set(self.h.published(self.h.channel(f"client-data:{key}")))
            assert published == set(self.sent[key]), key
        for i, client in enumerate(self.open_clients()):
            if i % 2:
                client.close()
            else:
                self.h.lose(client)
        self._settle()
        assert self.h.hub.is_empty()
        assert self.h.hub.needed_channels() == set()
        assert self.h.hub.subscribed_channels() == set()
        assert self.h.redis.links[SUB].subscribed == set()


HubMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("WSHUB_PROPERTY_EXAMPLES", "250")),
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestHubInterleavings = HubMachine.TestCase


# -- focused properties: the two Redis guarantees, with every step aimed at them --------------

FOCUSED = settings(max_examples=2 * int(os.environ.get("WSHUB_PROPERTY_EXAMPLES", "250")), deadline=None,
                   suppress_health_check=[HealthCheck.too_slow])

COMMAND_OPS = st.lists(
    st.tuples(st.just("send"), st.integers(1, 3))
    | st.tuples(st.just("ack"), st.integers(1, 4))
    | st.tuples(st.just("ack-bytes"), st.integers(1, 9))
    | st.tuples(st.just("drop"), st.booleans())
    | st.tuples(st.just("refuse"), st.booleans())
    | st.tuples(st.just("tick"), st.sampled_from([0.05, 0.5, 1.0])),
    max_size=30,
)


@FOCUSED
@given(ops=COMMAND_OPS)
def test_client_messages_reach_redis_at_least_once_and_in_order(ops: list[tuple[str, object]]) -> None:
    """The command link: unacknowledged PUBLISHes survive any drop, and each connection sends in order."""
    h = Harness(make_config(reconnect_min=0.1, reconnect_max=1.0, max_buffered_bytes=1 << 30), auto_reply=False)
    client = h.connect("k")
    h.deliver(SUB)
    h.deliver(CMD)
    channel = h.channel("client-data:k")
    sent: list[bytes] = []
    for op, arg in ops:
        if op == "send":
            for _ in range(int(arg)):  # type: ignore[call-overload]
                sent.append(b"m%d" % len(sent))
                client.text(sent[-1].decode())
        elif op == "ack":
            h.deliver(CMD, int(arg))  # type: ignore[call-overload]
        elif op == "ack-bytes":
            h.deliver_bytes(CMD, int(arg))  # type: ignore[call-overload]
        elif op == "drop" and h.redis.links[CMD].up:
            h.drop_redis(CMD, lost_in_transit=bool(arg))
        elif op == "refuse":
            h.refuse = {CMD} if arg else set()
        elif op == "tick":
            h.advance(float(arg))  # type: ignore[arg-type]
        first = list(dict.fromkeys(h.published(channel)))
        assert first == sent[: len(first)]
    h.refuse.clear()
    for _ in range(5):
        h.advance(1.0)
        h.deliver(CMD)
    assert list(dict.fromkeys(h.published(channel))) == sent  # nothing lost
    for session in h.redis.links[CMD].sessions:  # each connection: resends first, then new, in order
        indexes = [sent.index(c[2]) for c in session if c[:2] == [b"PUBLISH", channel]]
        assert indexes == sorted(indexes) and len(set(indexes)) == len(indexes), indexes
    assert "wshub_redis_buffered_commands 0\n" in h.hub.metrics_text()


SUBSCRIBER_OPS = st.lists(
    st.tuples(st.just("connect"), st.sampled_from(["a", "b"]))
    | st.tuples(st.just("leave"), st.integers(0, 9))
    | st.tuples(st.just("deliver"), st.integers(1, 3))
    | st.tuples(st.just("deliver-bytes"), st.integers(1, 50))
    | st.tuples(st.just("groups"), st.sampled_from(["a", "b"]))
    | st.tuples(st.just("drop"), st.none())
    | st.tuples(st.just("tick"), st.none()),
    max_size=30,
)


@FOCUSED
@given(ops=SUBSCRIBER_OPS)
def test_subscribe_races_end_where_redis_ends(ops: list[tuple[str, object]]) -> None:
    """The subscriber link: churn on few keys, replies late or cut, drops; client-new waits for confirmation."""
    h = Harness(make_config(reconnect_min=0.1, reconnect_max=1.0), auto_reply=False)
    violations: list[bytes] = []
    failed = [False]

    def on_publish(channel: bytes, payload: bytes) -> None:
        if channel == h.channel("client-new") and not failed[0]:
            ch = h.channel("groups-new:" + payload.decode())
            fake = h.redis.links[SUB]
            if ch not in fake.subscribed or any(r.kind == "subscribe" and r.channel == ch for r in fake.pending):
                violations.append(payload)

    h.redis.on_publish.append(on_publish)
    clients: list[Client] = []
    key_of: dict[int, str] = {}
    for op, arg in ops:
        live = [c for c in clients if not c.closed]
        if op == "connect":
            clients.append(h.connect(str(arg)))
            key_of[clients[-1].conn] = str(arg)
        elif op == "leave" and live:
            h.lose(live[int(arg) % len(live)])  # type: ignore[call-overload]
        elif op == "deliver":
            h.deliver(SUB, int(arg))  # type: ignore[call-overload]
        elif op == "deliver-bytes":
            h.deliver_bytes(SUB, int(arg))  # type: ignore[call-overload]
        elif op == "groups":
            h.redis.publish(h.channel(f"groups-new:{arg}"), b'["g"]')
        elif op == "drop" and h.redis.links[SUB].up:
            failed[0] = True
            h.drop_redis(SUB)
        elif op == "tick":
            h.advance(0.5)
        assert violations == []
        if h.redis.links[SUB].up:
            assert h.redis.links[SUB].subscribed == h.hub.needed_channels() == h.hub.subscribed_channels()
        h.deliver(CMD)
    for _ in range(3):
        h.advance(1.0)
        h.deliver(SUB)
        h.deliver(CMD)
    assert h.redis.links[SUB].pending == [] and h.hub.ready
    assert h.redis.links[SUB].subscribed == h.hub.needed_channels()
    # Every connection still waiting for groups has asked for them after its key was confirmed.
    asked = h.published(h.channel("client-new"))
    for client in clients:
        if not client.closed and not h.hub.groups_of(client.conn):
            assert key_of[client.conn].encode() in asked
