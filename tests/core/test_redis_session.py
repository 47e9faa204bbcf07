"""The hub's two Redis sessions (``_redis.py`` through ``Hub``) against a fake Redis.

The fake runs each command when it arrives and queues its reply; with
``auto_reply=False`` a test decides when replies reach the hub, so races
between commands and confirmations are laid out step by step.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from wshub_core import CloseLink, OpenLink, PauseClient, RedisLink, RedisState, ResumeClient, SendToLink

from .harness import (
    CMD,
    SUB,
    FakeRedis,
    Harness,
    make_config,
    resp_array,
    resp_bulk,
    resp_error,
    resp_int,
    resp_message,
    resp_push,
)


def subscribe_commands(h: Harness, *, session: bool = False) -> list[list[bytes]]:
    fake = h.redis.links[SUB]
    cmds = fake.session_commands if session else fake.commands
    return [c for c in cmds if c[0] in (b"SUBSCRIBE", b"UNSUBSCRIBE")]


def key_channels(h: Harness, key: str) -> list[bytes]:
    """What a key's first connection subscribes, in order: its groups answer, its sends, its kicks."""
    return [h.channel(f"{kind}:{key}") for kind in ("groups-new", "client-send", "client-kick")]


def channels_of(commands: list[list[bytes]], verb: bytes) -> list[bytes]:
    return [ch for c in commands if c[0] == verb for ch in c[1:]]


def assert_subscriptions_settled(h: Harness) -> None:
    """What Redis has subscribed equals what the hub needs, and the hub knows it."""
    assert h.redis.links[SUB].pending == []
    needed = h.hub.needed_channels()
    assert h.redis.links[SUB].subscribed == needed
    assert h.hub.subscribed_channels() == needed


def closes(h: Harness, role: RedisLink, mark: int = 0) -> int:
    return sum(1 for a in h.actions_since(mark) if isinstance(a, CloseLink) and h.role_of(a.link) is role)


def dials(h: Harness, role: RedisLink, mark: int = 0) -> list[float]:
    return [t for t, a in h.log[mark:] if isinstance(a, OpenLink) and h.role_of(a.link) is role]


class TestClientNewAfterConfirmation:
    """client-new is PUBLISHed only once groups-new:KEY is confirmed: the answer cannot be missed."""

    def test_client_new_waits_for_the_subscribe_confirmation(self) -> None:
        h = Harness(auto_reply=False)
        h.connect("k")
        assert subscribe_commands(h) == [[b"SUBSCRIBE", *key_channels(h, "k")]]
        assert h.commands(CMD) == []
        h.deliver(SUB, chunk=1)
        assert h.commands(CMD) == [[b"PUBLISH", h.channel("client-new"), b"k"]]

    def test_confirmation_byte_by_byte_publishes_only_at_the_last_byte(self) -> None:
        h = Harness(auto_reply=False)
        h.connect("k")
        data = h.redis.links[SUB].pending[0].data
        h.redis.links[SUB].pending.clear()
        for i in range(len(data) - 1):
            h.redis_data(SUB, data[i:i + 1])
            assert h.commands(CMD) == []
        h.redis_data(SUB, data[-1:])
        assert len(h.commands(CMD)) == 1

    def test_redis_sees_client_new_only_while_subscribed(self) -> None:
        h = Harness(auto_reply=False)
        violations: list[bytes] = []

        def check(channel: bytes, payload: bytes) -> None:
            key_channel = h.channel("groups-new:" + payload.decode(errors="replace"))
            if channel == h.channel("client-new") and key_channel not in h.redis.links[SUB].subscribed:
                violations.append(payload)

        h.redis.on_publish.append(check)
        for key in ("a", "b", "a", "c"):
            h.connect(key)
        h.deliver(SUB)
        h.deliver(CMD)
        h.connect("b")
        h.connect("d")
        h.deliver(SUB)
        assert violations == []
        assert sorted(h.published(h.channel("client-new"))) == [b"a", b"a", b"b", b"b", b"c", b"d"]

    def test_listener_answer_reaches_the_client(self) -> None:
        h = Harness()
        client = h.connect("k")
        assert h.set_groups("k", ["g1", "g2"]) == 1
        assert h.hub.groups_of(client.conn) == {"g1", "g2"}
        h.group_data("g2", b"hello")
        assert client.messages == ["hello"]

    def test_comma_list_answer(self) -> None:
        h = Harness()
        client = h.connect("k")
        h.set_groups("k", b" g1 , g2,,")
        assert h.hub.groups_of(client.conn) == {"g1", "g2"}

    @pytest.mark.parametrize("payload", [b'{"a":1}', b'"g"', b"[1,2]", b"[", b"\xff\xfe"])
    def test_unusable_answer_is_ignored(self, payload: bytes) -> None:
        h = Harness()
        client = h.connect("k")
        h.set_groups("k", ["g"])
        h.set_groups("k", payload)
        assert h.hub.groups_of(client.conn) == {"g"}
        assert_subscriptions_settled(h)

    def test_sibling_inherits_the_groups_of_its_key(self) -> None:
        h = Harness()
        first = h.connect("k")
        h.set_groups("k", ["g"])
        second = h.connect("k")
        assert h.hub.groups_of(second.conn) == {"g"}
        h.group_data("g", b"both")
        assert first.messages == second.messages == ["both"]

    def test_group_names_that_are_not_valid_unicode_do_not_break_the_hub(self) -> None:
        """A listener's JSON may hold a lone surrogate escape; it is not a usable group name."""
        h = Harness()
        client = h.connect("k")
        mark = h.mark()
        h.set_groups("k", b'["ok", "\\ud800"]')
        assert closes(h, SUB, mark) == 0  # the listener's mistake is not a Redis protocol error
        assert "\ud800" not in h.hub.groups_of(client.conn)
        assert_subscriptions_settled(h)


class TestReferenceCounting:
    def test_unsubscribe_only_when_the_last_member_leaves(self) -> None:
        h = Harness()
        a1, a2 = h.connect("k"), h.connect("k")
        h.set_groups("k", ["g"])
        before = len(subscribe_commands(h))
        a1.close()
        assert len(subscribe_commands(h)) == before
        assert h.published(h.channel("client-gone")) == []
        a2.close()
        assert sorted(channels_of(subscribe_commands(h)[before:], b"UNSUBSCRIBE")) == sorted(
            [h.channel("group-data:g"), *key_channels(h, "k")])
        assert h.published(h.channel("client-gone")) == [b"k"]
        assert h.hub.is_empty() and h.redis.links[SUB].subscribed == set()

    def test_group_shared_by_two_keys(self) -> None:
        h = Harness()
        a, b = h.connect("a"), h.connect("b")
        h.set_groups("a", ["g"])
        h.set_groups("b", ["g", "h"])
        assert channels_of(subscribe_commands(h), b"SUBSCRIBE").count(h.channel("group-data:g")) == 1
        a.close()
        assert h.channel("group-data:g") in h.redis.links[SUB].subscribed
        h.group_data("g", b"x")
        assert b.messages == ["x"] and a.messages == []
        assert_subscriptions_settled(h)

    def test_changing_groups_subscribes_the_difference(self) -> None:
        h = Harness()
        h.connect("k")
        h.set_groups("k", ["g1", "g2"])
        before = len(subscribe_commands(h))
        h.set_groups("k", ["g2", "g3"])
        changes = subscribe_commands(h)[before:]
        assert channels_of(changes, b"SUBSCRIBE") == [h.channel("group-data:g3")]
        assert channels_of(changes, b"UNSUBSCRIBE") == [h.channel("group-data:g1")]
        assert_subscriptions_settled(h)

    def test_same_groups_again_sends_nothing(self) -> None:
        h = Harness()
        h.connect("k")
        h.set_groups("k", ["g"])
        before = len(subscribe_commands(h))
        h.set_groups("k", ["g"])
        assert len(subscribe_commands(h)) == before


class TestSubscribeRaces:
    """Commands cross replies: the hub's view must end where Redis ends."""

    def test_subscribe_unsubscribe_subscribe_before_any_reply(self) -> None:
        h = Harness(auto_reply=False)
        first = h.connect("k")
        h.lose(first)  # UNSUBSCRIBE goes out before the SUBSCRIBE is confirmed
        second = h.connect("k")
        assert [c[0] for c in subscribe_commands(h)] == [b"SUBSCRIBE", b"UNSUBSCRIBE", b"SUBSCRIBE"]
        h.deliver(SUB, count=1)  # the first confirmation: stale, a later SUBSCRIBE is outstanding
        assert h.published(h.channel("client-new")) == []
        assert not h.hub.ready
        h.deliver(SUB)
        assert h.published(h.channel("client-new")) == [b"k"]  # once, for the second connection
        assert h.hub.ready
        assert_subscriptions_settled(h)
        h.deliver(CMD)
        h.set_groups("k", ["g"])
        h.deliver(SUB)
        h.group_data("g", b"m")
        h.deliver(SUB)
        assert second.messages == ["m"]

    def test_resubscribe_after_the_unsubscribe_reply_came_back(self) -> None:
        h = Harness(auto_reply=False)
        first = h.connect("k")
        h.deliver(SUB)
        h.lose(first)
        h.deliver(SUB)  # unsubscribe confirmed
        h.connect("k")
        h.deliver(SUB)
        assert_subscriptions_settled(h)
        assert h.published(h.channel("client-new")) == [b"k", b"k"]

    def test_unsubscribe_subscribe_unsubscribe_ends_unsubscribed(self) -> None:
        h = Harness(auto_reply=False)
        first = h.connect("k")
        h.deliver(SUB)
        h.lose(first)
        h.lose(h.connect("k"))
        assert [c[0] for c in subscribe_commands(h)] == [b"SUBSCRIBE", b"UNSUBSCRIBE", b"SUBSCRIBE",
                                                         b"UNSUBSCRIBE"]
        h.deliver(SUB)
        assert_subscriptions_settled(h)
        assert h.redis.links[SUB].subscribed == set()
        assert h.hub.is_empty()

    def test_group_membership_flaps_before_confirmations(self) -> None:
        h = Harness(auto_reply=False)
        client = h.connect("k")
        h.deliver(SUB)
        for groups in (["g"], [], ["g"], [], ["g"]):
            h.redis.publish(h.channel("groups-new:k"), ("[" + ",".join(f'"{g}"' for g in groups) + "]").encode())
        h.deliver(SUB, count=1)
        h.deliver(SUB, count=1)
        h.deliver(SUB)
        h.deliver(SUB)
        h.deliver(SUB)
        assert_subscriptions_settled(h)
        h.group_data("g", b"once")
        h.deliver(SUB)
        assert client.messages == ["once"]

    def test_message_that_crossed_an_unsubscribe_is_dropped(self) -> None:
        h = Harness(auto_reply=False)
        client = h.connect("k")
        h.deliver(SUB)
        h.set_groups("k", ["g"])
        h.deliver(SUB)
        h.deliver(SUB)
        # The listener removes g, then someone publishes to g before our UNSUBSCRIBE reaches Redis.
        h.redis.publish(h.channel("groups-new:k"), b"[]")
        h.redis.publish(h.channel("group-data:g"), b"in flight")
        h.deliver(SUB)  # both in one chunk: the change, then the message that crossed the UNSUBSCRIBE
        h.deliver(SUB)
        assert client.messages == []
        assert_subscriptions_settled(h)


class TestReconnect:
    """After link_lost and a reconnect, the hub rebuilds what the dead connection held."""

    def test_every_needed_channel_is_resubscribed(self) -> None:
        h = Harness(make_config(reconnect_max=1.0))
        a, b = h.connect("a"), h.connect("b")
        h.connect("b")
        h.set_groups("a", ["g1", "g2"])
        h.set_groups("b", ["g2", "g3"])
        h.drop_redis(SUB)
        assert h.redis.links[SUB].subscribed == set()
        c = h.connect("c")  # arrives while the link is down
        b.close()  # one of two "b" connections leaves while down
        h.advance(1.0)
        assert h.redis.links[SUB].up
        resubscribed = set(channels_of(subscribe_commands(h, session=True), b"SUBSCRIBE"))
        assert resubscribed == h.hub.needed_channels()
        assert h.channel("group-data:g3") in resubscribed  # still needed by the other "b"
        assert_subscriptions_settled(h)
        h.set_groups("c", ["g3"])
        h.group_data("g1", b"to a")
        h.group_data("g3", b"to b and c")
        assert a.messages == ["to a"] and c.messages == ["to b and c"]

    def test_resubscribe_forgets_nothing_with_thousands_of_channels(self) -> None:
        h = Harness(make_config(reconnect_max=1.0))
        for i in range(1200):
            h.connect(f"key{i}")
        h.set_groups("key0", [f"g{i}" for i in range(300)])
        needed = h.hub.needed_channels()
        assert len(needed) == 1200 * 3 + 300  # three channels per key, one per group
        h.drop_redis(SUB)
        h.advance(1.0)
        session = subscribe_commands(h, session=True)
        assert all(len(c) <= 1001 for c in session)  # pipelined in bounded commands
        assert set(channels_of(session, b"SUBSCRIBE")) == needed
        assert_subscriptions_settled(h)

    def test_connections_without_groups_ask_again_after_a_resubscribe(self) -> None:
        h = Harness(make_config(reconnect_max=1.0))
        h.connect("has")
        h.connect("lacks")
        h.set_groups("has", ["g"])
        h.redis.published.clear()
        h.drop_redis(SUB)
        h.advance(1.0)
        assert h.published(h.channel("client-new")) == [b"lacks"]  # its answer may have been lost

    def test_unacknowledged_publishes_are_resent_in_order(self) -> None:
        h = Harness(make_config(reconnect_max=1.0), auto_reply=False)
        client = h.connect("k")
        h.deliver(SUB)
        h.deliver(CMD)
        for i in range(4):
            client.text(f"m{i}")
        h.deliver(CMD, count=1)  # m0 acknowledged
        h.drop_redis(CMD)
        client.text("m4")  # queued while down
        h.advance(1.0)
        resent = h.redis.links[CMD].session_commands
        # client-new k was acknowledged before the drop (the listener has it; its answer comes on the
        # subscriber link, which stayed up): announcing again would ask the listener twice.
        assert resent == [[b"PUBLISH", h.channel("client-data:k"), f"m{i}".encode()] for i in (1, 2, 3, 4)]
        h.deliver(CMD)
        assert "wshub_redis_buffered_commands 0\n" in h.hub.metrics_text()

    def test_an_unanswered_client_new_is_not_resent_once_its_connection_closed(self) -> None:
        # Found by TestHubInterleavings: the command link timed out with client-new PUBLISHes unanswered,
        # the connections closed (groups-new:KEY unsubscribed), and the reconnect resent them all: the
        # listener was asked for groups nobody listened for.
        h = Harness(make_config(reconnect_max=1.0), auto_reply=False)
        clients = [h.connect("k") for _ in range(3)]
        h.deliver(SUB)
        assert h.published(h.channel("client-new")) == [b"k"] * 3  # written; Redis' replies held back
        for client in clients:
            client.close()
        h.deliver(SUB)
        mark = len(h.published())
        h.drop_redis(CMD)
        h.advance(1.0)
        assert h.published()[mark:] == [b"k"]  # client-gone, resent; no client-new
        assert h.redis.links[CMD].session_commands == [[b"PUBLISH", h.channel("client-gone"), b"k"]]

    def test_a_command_link_reconnect_announces_each_waiting_key_once(self) -> None:
        h = Harness(make_config(reconnect_max=1.0), auto_reply=False)
        for key in ("a", "a", "b"):
            h.connect(key)
        h.connect("c")
        h.deliver(SUB)  # the client-new PUBLISHes are written; Redis' replies are held back
        h.set_groups("c", ["g"])  # c has its groups: not announced again
        h.deliver(SUB)
        h.drop_redis(CMD)  # the unanswered announcements are dropped, not resent: announced afresh
        h.advance(1.0)
        assert sorted(p for c, p in (cmd[1:] for cmd in h.redis.links[CMD].session_commands)
                      if c == h.channel("client-new")) == [b"a", b"b"]

    def test_announcements_that_went_out_are_not_repeated_after_a_reconnect(self) -> None:
        """A first dial that succeeds sends what was queued meanwhile: the listener hears each key once."""
        h = Harness(make_config(reconnect_max=1.0), auto_reply=False, auto_connect=False)
        h.answer_dial(SUB)
        h.run()
        h.connect("a")
        h.deliver(SUB)  # groups-new:a confirmed while the command link is still dialling: client-new queued
        assert h.published(h.channel("client-new")) == []
        h.answer_dial(CMD)
        h.run()
        h.deliver(CMD)
        h.advance(5.0)
        assert h.published(h.channel("client-new")) == [b"a"]

    def test_command_link_down_queues_in_order(self) -> None:
        h = Harness(make_config(reconnect_min=0.5, reconnect_max=0.5))
        client = h.connect("k")
        h.drop_redis(CMD)
        for i in range(3):
            client.text(f"m{i}")
        assert h.published(h.channel("client-data:k")) == []
        h.advance(0.5)
        assert h.published(h.channel("client-data:k")) == [b"m0", b"m1", b"m2"]

    def test_late_link_opened_after_a_connect_timeout_is_ignored(self) -> None:
        h = Harness(make_config(redis_timeout=2.0), auto_connect=False)
        h.advance(2.0)
        assert closes(h, SUB) == 1 and closes(h, CMD) == 1  # connect timeout
        mark = h.mark()
        h.hub.link_opened(h.link(SUB), h.now)  # the old attempt completes too late
        assert h.run() == [] and h.actions_since(mark) == []

    def test_link_lost_is_idempotent(self) -> None:
        h = Harness(make_config(reconnect_max=1.0))
        h.drop_redis(SUB)
        mark = h.mark()
        h.hub.link_lost(h.link(SUB), h.now)
        h.hub.link_lost(h.link(SUB), h.now)
        assert h.run() == []
        h.advance(1.0)
        assert len(dials(h, SUB, mark)) == 1

    def test_link_data_on_a_link_that_is_down_is_ignored(self) -> None:
        h = Harness(make_config(reconnect_max=1.0))
        h.drop_redis(SUB)
        mark = h.mark()
        h.hub.link_data(h.link(SUB), b"?garbage", h.now)
        assert h.run() == [] and h.actions_since(mark) == []


class TestLinkIds:
    """Links are opaque ids (docs/architecture.md, "Actions"): a new one per dial, and input for an old one is stale."""

    @staticmethod
    def snapshot(h: Harness) -> tuple[object, ...]:
        """What stale input must not change."""
        return (h.hub.link_states(), h.hub.broker.current_links(), h.hub.next_deadline(), h.hub.ready,
                h.hub.subscribed_channels(), h.hub.metrics_text())

    def test_every_dial_gets_a_fresh_id(self) -> None:
        """Drops, refusals and connect timeouts: each redial is a new id, never one used before."""
        h = Harness(make_config(redis_timeout=2.0, reconnect_max=1.0), auto_connect=False)
        h.advance(2.5)  # both connects time out (CloseLink), then they are dialled again
        for role in (SUB, CMD):
            h.answer_dial(role)
        h.run()
        h.refuse.add(SUB)
        h.drop_redis(SUB)
        h.advance(1.0)
        h.answer_dial(SUB)  # a refused redial...
        h.refuse.clear()
        h.advance(1.0)
        h.answer_dial(SUB)  # ...and one that works
        h.run()
        h.drop_redis(CMD)
        h.advance(1.0)
        h.answer_dial(CMD)
        h.run()
        ids = [a.link for _, a in h.log if isinstance(a, OpenLink)]
        assert len(ids) >= 7 and ids == sorted(set(ids))  # increasing: none reused
        assert h.hub.ready and h.hub.broker.current_links() == {SUB: ids[-2], CMD: ids[-1]}
        assert [a.link for _, a in h.log if isinstance(a, CloseLink)] == ids[:2]  # the timed-out dials

    def test_a_late_open_of_an_abandoned_dial_is_not_taken_for_the_redial(self) -> None:
        """With roles, an old attempt completing while the redial is in flight looked like the redial."""
        h = Harness(make_config(redis_timeout=2.0, reconnect_max=1.0), auto_connect=False)
        old = h.link(SUB)
        h.advance(2.0)  # connect timeout: CloseLink(old)
        h.advance(1.0)
        assert h.link(SUB) != old and h.hub.link_states()[SUB] is RedisState.CONNECTING
        before, mark = self.snapshot(h), h.mark()
        h.hub.link_opened(old, h.now)
        h.hub.link_data(old, b"+PONG\r\n", h.now)
        h.hub.link_lost(old, h.now, "Connection reset by peer")
        assert h.run() == [] and h.actions_since(mark) == []
        assert self.snapshot(h) == before
        h.answer_dial(SUB)  # the redial itself still works
        h.run()  # its prelude is answered
        assert h.hub.link_states()[SUB] is RedisState.READY

    def test_input_for_the_link_before_a_reconnect_changes_nothing(self) -> None:
        h = Harness(make_config(reconnect_max=1.0))
        client = h.connect("k")
        h.set_groups("k", ["g"])
        old = h.link(SUB)
        h.drop_redis(SUB)
        h.advance(1.0)
        assert h.link(SUB) != old and h.hub.ready
        before, mark = self.snapshot(h), h.mark()
        h.hub.link_data(old, resp_message(h.channel("group-data:g"), b"from the dead link"), h.now)
        h.hub.link_lost(old, h.now)  # must not drop the new link
        h.hub.link_opened(old, h.now)
        assert h.run() == [] and h.actions_since(mark) == []
        assert self.snapshot(h) == before and client.messages == []
        h.group_data("g", b"live")
        assert client.messages == ["live"]

    def test_input_for_a_link_closed_for_a_protocol_error_is_ignored(self) -> None:
        h = Harness(make_config(reconnect_max=1.0))
        old = h.link(CMD)
        mark = h.mark()
        h.redis_data(CMD, b"?garbage\r\n")
        assert CloseLink(link=old) in h.actions_since(mark)
        before, mark = self.snapshot(h), h.mark()
        h.hub.link_data(old, b"+PONG\r\n", h.now)  # bytes that were still in the socket buffer
        h.hub.link_lost(old, h.now)  # the aborted transport reports its loss
        assert h.run() == [] and h.actions_since(mark) == [] and self.snapshot(h) == before

    @pytest.mark.parametrize("address, tls", [("rediss://cache.example:6380", True),
                                              ("redis://cache.example:6380", False),
                                              ("cache.example:6380", False)])
    def test_open_link_says_whether_to_use_tls(self, address: str, tls: bool) -> None:
        h = Harness(make_config(f"redis:\n  address: {address}\n"))
        opens = [a for _, a in h.log if isinstance(a, OpenLink)]
        assert [(a.host, a.port, a.tls) for a in opens] == [("cache.example", 6380, tls)] * 2
        h.drop_redis(SUB)
        h.advance(10.0)
        assert [a.tls for _, a in h.log if isinstance(a, OpenLink)] == [tls] * 3  # the redial too


class TestBackoff:
    def test_refused_dials_back_off_exponentially_up_to_reconnect_max(self) -> None:
        h = Harness(make_config(reconnect_min=0.1, reconnect_max=2.0))
        h.refuse.add(SUB)
        mark = h.mark()
        start = h.now
        h.drop_redis(SUB)
        h.advance(30)
        times = [start, *dials(h, SUB, mark)]
        delays = [b - a for a, b in itertools.pairwise(times)]
        assert len(delays) >= 15
        for attempt, delay in enumerate(delays):
            ceiling = min(2.0, 0.1 * 2**attempt)
            assert ceiling / 2 - 1e-9 <= delay <= ceiling + 1e-9, (attempt, delay)
        h.refuse.clear()
        h.advance(2.0)
        assert h.redis.links[SUB].up

    def test_backoff_resets_only_after_the_link_stayed_up_for_reconnect_max(self) -> None:
        h = Harness(make_config(reconnect_min=0.1, reconnect_max=8.0))
        h.refuse.add(CMD)
        h.drop_redis(CMD)
        h.advance(10)
        h.refuse.clear()
        h.advance(8)
        assert h.redis.links[CMD].up
        mark = h.mark()
        h.drop_redis(CMD)  # up for less than reconnectMax: a flapping server is not rewarded
        h.advance(0.1)
        assert dials(h, CMD, mark) == []
        h.advance(8)
        assert h.redis.links[CMD].up
        h.advance(8.0)  # healthy for reconnectMax
        mark = h.mark()
        h.drop_redis(CMD)
        h.advance(0.1)
        assert len(dials(h, CMD, mark)) == 1

    @pytest.mark.parametrize("redis", [
        pytest.param(lambda: FakeRedis(password="right"), id="wrong-password"),
        pytest.param(lambda: FakeRedis(), id="needs-no-password"),
    ])
    def test_a_redis_that_refuses_the_prelude_is_redialled_ever_more_slowly(self, redis: Any) -> None:
        # Redis accepts TCP, then refuses AUTH: before, the TCP accept reset the backoff and the
        # hub redialled at reconnectMin forever (132 connections in 6 s).
        config = make_config("redis:\n  password: wrong\n  reconnectMin: 0.1\n  reconnectMax: 2\n")
        h = Harness(config, redis=redis())
        start = h.now
        mark = h.mark()
        h.advance(30)
        times = [start, *dials(h, CMD, mark)]
        delays = [b - a for a, b in itertools.pairwise(times)]
        assert 12 <= len(delays) <= 30
        for attempt, delay in enumerate(delays):
            ceiling = min(2.0, 0.1 * 2**attempt)
            assert ceiling / 2 - 1e-9 <= delay <= ceiling + 1e-9, (attempt, delay)
        assert not h.hub.ready
        assert h.hub.link_states() != {SUB: RedisState.READY, CMD: RedisState.READY}


class TestPrelude:
    """AUTH and SELECT, configured through the real config loader."""

    def test_url_with_user_password_and_db(self) -> None:
        config = make_config('redis:\n  address: "redis://alice:s3cret@redis.test:6380/2"\n')
        assert (config.redis_host, config.redis_port) == ("redis.test", 6380)
        h = Harness(config)
        client = h.connect("k")
        assert h.redis.links[SUB].handshakes == [[[b"AUTH", b"alice", b"s3cret"]]]  # pub/sub ignores the db
        assert h.redis.links[CMD].handshakes == [[[b"AUTH", b"alice", b"s3cret"], [b"SELECT", b"2"]]]
        assert h.redis.links[CMD].db == 2
        client.text("hi")
        assert h.published(h.channel("client-data:k")) == [b"hi"]
        assert h.hub.ready

    def test_password_and_db_keys(self) -> None:
        h = Harness(make_config("redis:\n  password: pw\n  db: 3\n"))
        assert h.redis.links[SUB].handshakes == [[[b"AUTH", b"pw"]]]
        assert h.redis.links[CMD].handshakes == [[[b"AUTH", b"pw"], [b"SELECT", b"3"]]]

    def test_select_without_auth(self) -> None:
        h = Harness(make_config("redis:\n  db: 5\n"))
        assert h.redis.links[SUB].handshakes == [[[b"PING"]]]  # with nothing else to ask, a PING
        assert h.redis.links[CMD].handshakes == [[[b"SELECT", b"5"]]]

    def test_prelude_is_sent_again_on_every_connect(self) -> None:
        h = Harness(make_config("redis:\n  password: pw\n  reconnectMax: 1\n"))
        h.connect("k")
        h.drop_redis(SUB)
        h.advance(1)
        assert h.redis.links[SUB].handshakes == [[[b"AUTH", b"pw"]]] * 2
        assert_subscriptions_settled(h)

    def test_wrong_password_drops_the_link_and_retries(self) -> None:
        config = make_config("redis:\n  password: wrong\n  reconnectMax: 1\n")
        h = Harness(config, redis=FakeRedis(password="right"))
        assert closes(h, SUB) == 1 and closes(h, CMD) == 1
        mark = h.mark()
        h.advance(1.0)
        assert len(dials(h, SUB, mark)) >= 1 and closes(h, SUB, mark) >= 1
        assert not h.hub.ready

    def test_prelude_reply_timeout(self) -> None:
        h = Harness(make_config("redis:\n  password: pw\n  timeout: 3\n"), auto_reply=False, auto_handshake=False)
        h.advance(2.99)
        assert closes(h, SUB) == 0
        h.advance(0.01)
        assert closes(h, SUB) == 1 and closes(h, CMD) == 1


class TestLinkReadiness:
    """A link is up only once Redis answered its prelude: a TCP accept proves nothing."""

    def test_not_ready_until_the_prelude_is_answered(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level("INFO", logger="wshub")
        h = Harness(auto_reply=False, auto_handshake=False)
        assert h.hub.link_states() == {SUB: RedisState.HANDSHAKE, CMD: RedisState.HANDSHAKE}
        assert not h.hub.ready
        assert 'wshub_redis_up{link="subscriber"} 0' in h.hub.metrics_text()
        assert "link up" not in caplog.text
        h.deliver(SUB)
        h.deliver(CMD)
        assert h.hub.link_states() == {SUB: RedisState.READY, CMD: RedisState.READY}
        assert h.hub.ready
        assert 'wshub_redis_up{link="commands"} 1' in h.hub.metrics_text()
        assert caplog.text.count("link up") == 2

    def test_nothing_but_the_prelude_is_sent_before_it_is_answered(self) -> None:
        h = Harness(make_config("redis:\n  password: pw\n"), auto_reply=False, auto_handshake=False)
        client = h.connect("k")
        client.text("hello")
        assert h.commands(SUB) == [] and h.commands(CMD) == []  # held: the harness refuses them in a handshake
        h.deliver(SUB)
        h.deliver(CMD)
        assert subscribe_commands(h) == [[b"SUBSCRIBE", *key_channels(h, "k")]]
        assert h.commands(CMD) == [[b"PUBLISH", h.channel("client-data:k"), b"hello"]]

    @pytest.mark.parametrize("answer", [
        pytest.param(b"E\x00\x00\x00\x7fSFATAL\x00VFATAL\x00C0A000\x00", id="postgresql"),
        pytest.param(b"HTTP/1.1 400 Bad Request\r\n\r\n", id="http"),
        pytest.param(b":1\r\n", id="resp-but-not-pong"),
        pytest.param(b"-DENIED Redis is running in protected mode\r\n", id="protected-mode"),
        pytest.param(b"-ERR max number of clients reached\r\n", id="maxclients"),
    ])
    def test_a_server_that_does_not_answer_the_prelude_is_not_up(self, answer: bytes) -> None:
        h = Harness(make_config(reconnect_max=1.0), auto_reply=False, auto_handshake=False)
        mark = h.mark()
        h.redis.links[SUB].pending.clear()
        h.redis_data(SUB, answer)
        assert closes(h, SUB, mark) == 1
        assert h.hub.link_states()[SUB] is RedisState.DOWN
        client = h.open()
        client.send_raw(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        body = bytes(client.raw).partition(b"\r\n\r\n")[2]
        assert body.startswith(b"redis subscriber link down (last error: "), body

    def test_the_readiness_reason_names_the_refusal(self) -> None:
        h = Harness(make_config("redis:\n  password: wrong\n"), redis=FakeRedis(password="right"))
        client = h.open()
        client.send_raw(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"AUTH failed: WRONGPASS" in bytes(client.raw)


class TestBrokenReplies:
    """A ProtocolError, or a reply no command asked for, drops the link; a reconnect follows."""

    @pytest.mark.parametrize("link", [SUB, CMD], ids=["subscriber", "commands"])
    def test_protocol_error_closes_and_reconnects(self, link: RedisLink) -> None:
        h = Harness(make_config(reconnect_max=1.0))
        client = h.connect("k")
        h.set_groups("k", ["g"])
        mark = h.mark()
        h.redis_data(link, b"?garbage\r\n")
        assert closes(h, link, mark) == 1
        assert not h.redis.links[link].up
        h.advance(1.0)
        assert len(dials(h, link, mark)) == 1 and h.redis.links[link].up
        assert_subscriptions_settled(h)
        h.group_data("g", b"after")
        client.text("after")
        assert client.messages == ["after"]
        assert h.published(h.channel("client-data:k")) == [b"after"]

    def test_protocol_error_in_the_middle_of_a_chunk_keeps_what_came_before(self) -> None:
        h = Harness()
        client = h.connect("k")
        h.set_groups("k", ["g"])
        mark = h.mark()
        h.redis_data(SUB, resp_message(h.channel("group-data:g"), b"kept") + b"$-5\r\n")
        assert client.messages == ["kept"]
        assert closes(h, SUB, mark) == 1

    def test_unexpected_reply_on_the_subscriber_link(self) -> None:
        h = Harness()
        h.connect("k")
        mark = h.mark()
        h.redis_data(SUB, resp_int(1))
        assert closes(h, SUB, mark) == 1

    def test_reply_nobody_asked_for_on_the_command_link(self) -> None:
        h = Harness()
        mark = h.mark()
        h.redis_data(CMD, resp_int(1))
        assert closes(h, CMD, mark) == 1

    def test_publish_error_reply_is_counted_not_fatal(self) -> None:
        h = Harness(auto_reply=False)
        client = h.connect("k")
        h.deliver(SUB)
        h.deliver(CMD)
        client.text("refused")
        h.redis.links[CMD].pending.clear()
        mark = h.mark()
        h.redis_data(CMD, resp_error(b"ERR something"))
        assert closes(h, CMD, mark) == 0
        assert h.hub.broker.publish_errors == 1
        assert "wshub_redis_buffered_commands 0\n" in h.hub.metrics_text()

    @pytest.mark.parametrize("link", [SUB, CMD], ids=["subscriber", "commands"])
    @pytest.mark.parametrize("reply", [b"%1\r\n*0\r\n:1\r\n", b"%1\r\n%0\r\n:1\r\n"],
                             ids=["array-key", "map-key"])
    def test_resp3_map_with_an_unhashable_key_drops_the_link(self, link: RedisLink, reply: bytes) -> None:
        """hiredis raises TypeError (not ProtocolError) building such a map: still Redis input, not a crash."""
        h = Harness(make_config(reconnect_max=1.0))
        h.connect("k")
        mark = h.mark()
        h.redis_data(link, reply)
        assert closes(h, link, mark) == 1
        h.advance(1.0)
        assert h.redis.links[link].up and h.hub.ready

    def test_confirmation_for_a_channel_never_subscribed_does_not_stall_readiness(self) -> None:
        """A confirmation that answers nothing we sent must not stand in for the one we wait for."""
        h = Harness(make_config(reconnect_max=1.0, redis_timeout=5.0), auto_reply=False)
        h.connect("k")
        h.redis.links[SUB].pending.clear()  # the real confirmation is lost...
        h.redis_data(SUB, resp_push(b"subscribe", b"ws-hub:groups-new:other", 1))  # ...and this came instead
        h.auto_reply = True
        h.advance(30)
        assert h.hub.ready, "the hub waits forever for a confirmation it no longer expects"
        assert h.published(h.channel("client-new")) == [b"k"]

    @pytest.mark.parametrize(
        "reply",
        [
            resp_array(resp_bulk(b"subscribe"), resp_array()),  # channel is an array
            resp_array(resp_bulk(b"message"), resp_array(), resp_bulk(b"x")),
            resp_array(resp_bulk(b"message"), resp_bulk(b"ws-hub:group-data:g"), resp_int(5)),
            resp_array(resp_bulk(b"message"), resp_bulk(b"ws-hub:group-data:g"), b"$-1\r\n"),
            resp_array(resp_bulk(b"message"), resp_bulk(b"ws-hub:groups-new:k"), resp_int(5)),
            resp_array(resp_bulk(b"message"), resp_bulk(b"ws-hub:groups-new:k"), resp_error(b"ERR x")),
            resp_array(resp_int(1), resp_int(2)),
            resp_push(b"unsubscribe", b"never-subscribed", 0),
        ],
        ids=["subscribe-array-channel", "message-array-channel", "message-int-payload", "message-nil-payload",
             "groups-int-payload", "groups-error-payload", "int-kind", "stray-unsubscribe"],
    )
    def test_malformed_pubsub_reply_never_raises(self, reply: bytes) -> None:
        """Valid RESP, wrong shape: the link may be dropped, the hub must not raise."""
        h = Harness(make_config(reconnect_max=1.0))
        client = h.connect("k")
        h.set_groups("k", ["g"])
        h.redis_data(SUB, reply)
        h.advance(1.0)
        assert h.redis.links[SUB].up
        assert_subscriptions_settled(h)
        assert client.open


class TestTimeouts:
    def test_subscribe_reply_timeout_closes_the_link(self) -> None:
        h = Harness(make_config(redis_timeout=5.0), auto_reply=False)
        h.connect("k")
        h.advance(4.99)
        assert closes(h, SUB) == 0
        h.advance(0.01)
        assert closes(h, SUB) == 1

    def test_publish_reply_timeout_closes_the_link(self) -> None:
        h = Harness(make_config(redis_timeout=5.0), auto_reply=False)
        client = h.connect("k")
        h.deliver(SUB)
        h.deliver(CMD)
        h.advance(1)
        h.deliver(SUB)
        h.deliver(CMD)
        client.text("hello?")
        h.advance(4.99)
        assert closes(h, CMD) == 0
        h.advance(0.01)
        assert closes(h, CMD) == 1

    def test_idle_links_are_pinged_and_stay_up(self) -> None:
        h = Harness(make_config(redis_timeout=10.0))
        h.connect("k")
        h.advance(100)
        pings = {link: sum(1 for c in h.redis.links[link].commands if c == [b"PING"]) for link in (SUB, CMD)}
        assert 9 <= pings[SUB] <= 21 and 9 <= pings[CMD] <= 21
        assert closes(h, SUB) == 0 and closes(h, CMD) == 0

    def test_unanswered_ping_closes_the_link(self) -> None:
        h = Harness(make_config(redis_timeout=10.0), auto_reply=False)
        h.advance(5)
        assert [b"PING"] in h.redis.links[SUB].commands
        h.advance(10)
        assert closes(h, SUB) >= 1 and closes(h, CMD) >= 1

    def test_connect_timeout_closes_and_dials_again(self) -> None:
        h = Harness(make_config(redis_timeout=2.0, reconnect_max=1.0), auto_connect=False)
        assert len(dials(h, SUB)) == 1
        h.advance(2.0)
        assert closes(h, SUB) == 1
        h.advance(1.0)
        assert len(dials(h, SUB)) == 2


class TestPublishBackpressure:
    """redis.maxBufferedBytes: above it the sender is paused, below half of it resumed."""

    def test_sender_paused_then_resumed_when_drained(self) -> None:
        h = Harness(make_config(max_buffered_bytes=100), auto_reply=False)
        client = h.connect("k")
        h.deliver(SUB)
        h.deliver(CMD)
        mark = h.mark()
        client.text("x" * 150)
        assert PauseClient(conn=client.conn) in h.actions_since(mark)
        assert client.reading_paused
        client.text("already in the socket buffer")  # no second PauseClient (the harness checks)
        h.deliver(CMD, count=1)
        assert client.reading_paused  # still above half
        h.deliver(CMD)
        assert ResumeClient(conn=client.conn) in h.actions_since(mark)
        assert not client.reading_paused

    def test_over_the_limit_every_member_is_paused_and_resumed(self) -> None:
        """Not only the sender that crossed it: every member may send, and a late pause overshoots."""
        h = Harness(make_config(max_buffered_bytes=100, reconnect_max=1.0))
        a, b, quiet = h.connect("a"), h.connect("b"), h.connect("c")
        h.drop_redis(CMD)
        a.text("x" * 80)  # with its PUBLISH framing, over the limit
        assert a.reading_paused and b.reading_paused and quiet.reading_paused
        late = h.connect("d")  # upgraded while over the limit: paused at once
        assert late.reading_paused
        h.advance(1.0)
        assert not a.reading_paused and not b.reading_paused and not quiet.reading_paused
        assert not late.reading_paused
        assert h.published(h.channel("client-data:a")) == [b"x" * 80]

    def test_paused_sender_that_leaves_is_not_resumed(self) -> None:
        h = Harness(make_config(max_buffered_bytes=100), auto_reply=False)
        client = h.connect("k")
        h.deliver(SUB)
        h.deliver(CMD)
        client.text("x" * 150)
        h.lose(client)
        h.deliver(CMD)
        assert not any(isinstance(a, ResumeClient) for a in h.actions_since(0))
        assert h.hub.is_empty()


def test_every_redis_action_names_a_link() -> None:
    h = Harness()
    h.connect("k").text("x")
    for _, action in h.log:
        if isinstance(action, SendToLink | OpenLink | CloseLink):
            assert h.role_of(action.link) in (SUB, CMD)
