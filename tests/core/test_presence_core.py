"""Presence in the core (no sockets, a virtual clock): local counts, the grace, shutdown, and the Redis part's
commands and replies. Lua itself runs against a real Redis in tests/test_presence.py.
"""

from __future__ import annotations

import json

import jwt
from hypothesis import given, settings
from hypothesis import strategies as st

from wshub_core import SendToLink
from wshub_core._channels import Channels, hash_tag
from wshub_core._cluster import key_slot
from wshub_core._redis_presence import RedisPresence

from .harness import CMD, Harness, fuzz_examples, make_config, resp_array, resp_bulk, resp_error, resp_int

SECRET = "presence-core-secret-0123456789abcdef"
WALL = 1_800_000_000.0


def presence_harness(broker: str = "memory", grace: float = 2.0, **overrides: object) -> Harness:
    text = (f"broker: {broker}\nauth:\n  jwt:\n    secret: {SECRET}\n"
            f"presence:\n  enabled: true\n  grace: {grace}\n  timeout: 30\n")
    h = Harness(make_config(text, **overrides), start=False)
    h.hub.clock(h.now, WALL)
    h.hub.start(h.now)
    h.run()
    return h


def token(key: str, *groups: str) -> str:
    return jwt.encode({"sub": key, "groups": list(groups)}, SECRET, algorithm="HS256")


class TestLocalCounts:
    def test_first_connection_joins_last_leaves_after_the_grace(self) -> None:
        h = presence_harness()
        seen: list[tuple[str, str, int]] = []
        original = h.hub.broker.presence_set
        h.hub.broker.presence_set = lambda g, k, c: (seen.append((g, k, c)), original(g, k, c))[1]  # type: ignore
        a = h.connect(token("alice", "g"))
        b = h.connect(token("alice", "g"))
        assert seen == [("g", "alice", 1), ("g", "alice", 2)]
        a.close()
        h.run()
        assert seen[-1] == ("g", "alice", 1)
        b.close()
        h.run()
        assert seen[-1] == ("g", "alice", 1)  # the drop to zero waits out the grace
        h.advance(1.9)
        assert seen[-1] == ("g", "alice", 1)
        h.advance(0.2)
        assert seen[-1] == ("g", "alice", 0)

    def test_a_reconnect_within_the_grace_tells_nothing_new(self) -> None:
        h = presence_harness()
        seen: list[tuple[str, str, int]] = []
        original = h.hub.broker.presence_set
        h.hub.broker.presence_set = lambda g, k, c: (seen.append((g, k, c)), original(g, k, c))[1]  # type: ignore
        h.connect(token("bob", "g")).close()
        h.run()
        h.advance(1.0)
        h.connect(token("bob", "g"))
        h.advance(5.0)
        assert seen == [("g", "bob", 1), ("g", "bob", 1)]  # never 0

    def test_groups_replaced_by_the_listener_move_the_counts(self) -> None:
        h = presence_harness(grace=0)
        seen: list[tuple[str, str, int]] = []
        original = h.hub.broker.presence_set
        h.hub.broker.presence_set = lambda g, k, c: (seen.append((g, k, c)), original(g, k, c))[1]  # type: ignore
        h.connect(token("carol", "a", "b"))
        h.hub.broker.publish(h.hub._channels.groups_new("carol"), b'["b", "c"]')  # as a listener would
        h.run()
        assert sorted(seen) == [("a", "carol", 0), ("a", "carol", 1), ("b", "carol", 1), ("c", "carol", 1)]

    def test_shutdown_tells_every_drop_at_once(self) -> None:
        h = presence_harness(grace=10)
        h.connect(token("dave", "g"))
        h.shutdown()
        h.run()
        assert h.hub.broker._presence == {}  # type: ignore[attr-defined]


class TestMemoryBrokerPresence:
    def test_join_and_leave_are_published_on_the_group_s_presence_channel(self) -> None:
        h = presence_harness(grace=0)
        heard: list[bytes] = []
        h.hub.broker.need(b"ws-hub:presence:g")
        on_message = h.hub.broker._on_message  # type: ignore[attr-defined]

        def hear(channel: bytes, payload: bytes) -> None:
            if channel == b"ws-hub:presence:g":
                heard.append(payload)
            on_message(channel, payload)

        h.hub.broker._on_message = hear  # type: ignore[attr-defined]
        client = h.connect(token("erin", "g"))
        client.close()
        h.run()
        assert [json.loads(p) for p in heard] == [{"event": "join", "group": "g", "key": "erin"},
                                                  {"event": "leave", "group": "g", "key": "erin"}]


class TestHashTags:
    """Redis Cluster specification, keys hash slot: the first {...} with something inside, else the whole name."""

    def test_redis_rule(self) -> None:
        assert hash_tag(b"{user1000}.following") == b"user1000"
        assert hash_tag(b"foo{}{bar}") is None
        assert hash_tag(b"foo{{bar}}zap") == b"{bar"
        assert hash_tag(b"foo{bar}{zap}") == b"bar"
        assert hash_tag(b"plain") is None

    def test_presence_keys_share_the_events_channel_s_slot(self) -> None:
        # The script that changes them SPUBLISHes join/leave on a sharded Cluster: same slot, same node.
        channels = Channels("ws-hub:")
        assert channels.presence_keys("room") == (b"{ws-hub:presence:room}:counts", b"{ws-hub:presence:room}:hubs")
        for group in ("room", "a{b}c", "{x}", "é", "a:b"):
            events = channels.presence(group)
            assert {key_slot(k) for k in channels.presence_keys(group)} == {key_slot(events)}, group
        hash_key, _ = channels.presence_keys("a{b}c")
        assert hash_tag(hash_key) == hash_tag(channels.presence("a{b}c")) == b"b"


class TestRedisPresenceCommands:
    def make(self) -> tuple[RedisPresence, list[tuple[tuple[bytes, ...], int]], list[object]]:
        sent: list[tuple[tuple[bytes, ...], int]] = []
        answers: list[object] = []
        part = RedisPresence(channels=Channels("p:"), hub_id="h1", timeout=30.0,
                             command=lambda *args, resend=True, ticket=0: sent.append((args, ticket)),
                             on_presence=lambda t, counts, error: answers.append((t, counts, error)))
        return part, sent, answers

    def test_changes_are_coalesced_into_one_call_per_group(self) -> None:
        part, sent, _ = self.make()
        for key in ("a", "b", "c"):
            part.set("g", key, 1)
        part.set("g", "a", 2)
        part.flush()
        evals = [args for args, _ in sent if args[0] == b"EVALSHA"]
        assert len(evals) == 1
        assert evals[0][-6:] == (b"a", b"2", b"b", b"1", b"c", b"1")
        assert [args[0] for args, _ in sent].count(b"SADD") == 1

    def test_a_refresh_costs_one_call_per_group_plus_the_heartbeat(self) -> None:
        part, sent, _ = self.make()
        for i in range(1000):
            part.set(f"g{i % 10}", f"k{i}", 1)
        part.flush()
        sent.clear()
        part.refresh()
        assert len(sent) == 11

    def test_a_query_is_answered_from_the_flat_reply_and_a_bad_reply_is_502_material(self) -> None:
        part, sent, answers = self.make()
        part.query("g", 7)
        part.query("g", 8)
        (_, t1), (_, t2) = sent
        part.reply(t1, "", [b"alice", 2, b"bob", 1])
        part.reply(t2, "", [b"alice"])
        assert answers == [(7, {"alice": 2, "bob": 1}, ""), (8, None, "")]

    def test_noscript_loads_the_scripts_and_writes_everything_again_once(self) -> None:
        part, sent, _ = self.make()
        part.set("g", "a", 1)
        part.set("h", "b", 1)
        part.flush()
        tickets = [t for _, t in sent if t]
        sent.clear()
        for t in tickets:
            part.reply(t, "NOSCRIPT No matching script.", None)
        verbs = [args[:2] for args, _ in sent]
        assert verbs.count((b"SCRIPT", b"LOAD")) == 4  # one restore for both failures
        assert sum(1 for args, _ in sent if args[0] == b"EVALSHA") == 2 + 1 + 2  # rewrite, beat, refresh

    @settings(max_examples=fuzz_examples(200), deadline=None)
    @given(st.recursive(st.none() | st.integers() | st.binary(max_size=8), lambda inner: st.lists(inner, max_size=6),
                        max_leaves=20), st.sampled_from(["", "ERR x", "NOSCRIPT x", "link lost"]))
    def test_any_reply_to_any_call_is_taken_without_raising(self, reply: object, error: str) -> None:
        part, sent, answers = self.make()
        part.set("g", "a", 1)
        part.flush()
        part.refresh()
        part.query("g", 5)
        for _, ticket in list(sent):
            if ticket:
                part.reply(ticket, error, reply)
        assert all(isinstance(a, tuple) for a in answers)


def test_the_redis_broker_survives_hostile_replies_to_presence_calls() -> None:
    """Through the hub: the fake Redis answers EVALSHA with errors and junk; the hub keeps serving."""
    h = presence_harness(broker="redis", grace=0)
    client = h.connect(token("zed", "g"))
    h.run()
    for junk in (resp_error(b"ERR no"), resp_int(3), resp_array(resp_bulk(b"x")), resp_bulk(b"")):
        h.redis_data(CMD, junk)
    assert client.close_code is None
    assert any(isinstance(a, SendToLink) for _, a in h.log)
