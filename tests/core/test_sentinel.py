"""Sentinel mode of the Redis broker, driven through its link inputs with RESP bytes written by hand.

No sockets: ``SentinelDriver`` (in the harness) is the shell and the servers at once. It keeps
every link the broker dialled (by id, with the address it dialled), parses the
commands sent on each with hiredis, and lets a test answer as a sentinel or
a Redis would. What is checked is the resolution state machine: the master is
asked for, checked with ROLE, asked for again on every reconnect, both links
move on ``+switch-master``, and a dead sentinel makes the broker try the next.
"""

from __future__ import annotations

import pytest

from wshub_core import RedisState

from .harness import (
    CMD,
    ROLE_MASTER,
    ROLE_SLAVE,
    SENTINEL,
    SENTINEL_CONFIG,
    SENTINELS,
    SUB,
    SentinelDriver,
    address_reply,
    resp_array,
    resp_bulk,
    resp_error,
    resp_int,
    resp_message,
    resp_push,
    resp_simple,
    switch_master,
)

Sentinel = SentinelDriver

def ready_on(port: int, **overrides: object) -> Sentinel:
    s = Sentinel(**overrides)
    s.sentinel_answers(port)
    s.data_links_up(port)
    assert s.broker.ready, s.broker.not_ready_reason()
    return s


class TestResolve:
    def test_the_sentinel_is_dialled_first_and_the_data_links_only_once_it_named_the_master(self) -> None:
        s = Sentinel()
        assert s.dials() == [SENTINELS[0]]
        assert s.broker.not_ready_reason() == "no sentinel answered yet"
        s.sentinel_answers(6380)
        assert s.dials() == [SENTINELS[0], "127.0.0.1:6380", "127.0.0.1:6380"]
        s.data_links_up(6380)
        assert s.broker.ready
        assert s.broker.link_states() == {SUB: RedisState.READY, CMD: RedisState.READY, SENTINEL: RedisState.READY}

    def test_a_data_link_is_not_ready_before_role_answers(self) -> None:
        s = Sentinel()
        s.sentinel_answers(6380)
        dialled = s.opened(SUB)
        assert dialled.commands == [[b"ROLE"]]
        assert s.broker.link_states()[SUB] is RedisState.HANDSHAKE

    def test_role_comes_after_auth_and_select(self) -> None:
        s = Sentinel(redis_password="pw", redis_db=2)
        s.sentinel_answers(6380)
        assert s.opened(CMD).commands == [[b"AUTH", b"pw"], [b"SELECT", b"2"], [b"ROLE"]]

    def test_the_sentinels_own_password_authenticates_the_sentinel_link(self) -> None:
        s = Sentinel(SENTINEL_CONFIG + "  sentinelUsername: watcher\n  sentinelPassword: spw\n  password: mpw\n")
        assert s.opened(SENTINEL).commands == [[b"AUTH", b"watcher", b"spw"]]

    def test_the_sentinel_is_not_ready_until_subscribed(self) -> None:
        s = Sentinel()
        s.opened(SENTINEL)
        s.reply(SENTINEL, resp_simple(b"PONG"))
        s.reply(SENTINEL, address_reply(6380))
        s.data_links_up(6380)
        assert not s.broker.ready
        assert s.broker.link_states()[SENTINEL] is RedisState.HANDSHAKE
        assert "asking sentinel 127.0.0.1:26379" in s.broker.not_ready_reason()
        s.reply(SENTINEL, resp_push(b"subscribe", b"+switch-master", 1))
        assert s.broker.ready
        assert 'wshub_redis_up{link="sentinel"} 1' in "\n".join(
            f"{name}{label} {value}" for name, _, _, rows in s.broker.samples() for label, value in rows)


class TestRoleMismatch:
    def test_a_replica_is_dropped_and_the_sentinel_asked_again(self) -> None:
        s = Sentinel()
        s.sentinel_answers(6380)
        s.opened(SUB)
        s.reply(SUB, ROLE_SLAVE)
        assert s.links[min(s.links)].closed is False  # the sentinel link stays
        assert "master 127.0.0.1:6380: not a master (ROLE: slave)" in s.broker.not_ready_reason()
        sentinel = s.current(SENTINEL)
        before = len(sentinel.commands)
        dials = len(s.links)
        s.advance(1.0)  # the subscriber's backoff has run out: it asks, it does not redial the cached address
        assert sentinel.commands[before:] == [[b"UNSUBSCRIBE", b"+switch-master"],
                                              [b"SENTINEL", b"get-master-addr-by-name", b"mymaster"],
                                              [b"SUBSCRIBE", b"+switch-master"]]
        assert len(s.links) == dials  # nothing dialled until a sentinel names the master again
        s.reply(SENTINEL, resp_push(b"unsubscribe", b"+switch-master", 0) + address_reply(6381)
                + resp_push(b"subscribe", b"+switch-master", 1))
        assert s.current(SUB).address == "127.0.0.1:6381"
        s.opened(SUB)
        s.reply(SUB, ROLE_MASTER)
        assert s.broker.link_states()[SUB] is RedisState.READY

    def test_a_stale_address_that_refuses_is_never_redialled_without_asking(self) -> None:
        s = ready_on(6380)
        s.lost(SUB, "connection reset")
        s.advance(1.0)
        assert [d.address for d in s.links.values()].count("127.0.0.1:6380") == 2  # no redial yet
        s.reply(SENTINEL, resp_push(b"unsubscribe", b"+switch-master", 0) + address_reply(6380)
                + resp_push(b"subscribe", b"+switch-master", 1))
        assert s.current(SUB).address == "127.0.0.1:6380" and not s.current(SUB).closed  # asked, then dialled
        s.lost(SUB, "Connection refused")
        s.advance(1.0)
        assert [d.address for d in s.links.values()].count("127.0.0.1:6380") == 3

    @pytest.mark.parametrize("reply", [resp_array(resp_bulk(b"sentinel"), resp_array()), resp_error(b"ERR no"),
                                       resp_simple(b"OK"), resp_array()])
    def test_anything_but_master_is_not_a_master(self, reply: bytes) -> None:
        s = Sentinel()
        s.sentinel_answers(6380)
        dialled = s.opened(CMD)
        s.reply(CMD, reply)
        assert dialled.closed
        assert s.broker.link_states()[CMD] is RedisState.DOWN


class TestSwitchMaster:
    def test_both_links_move_at_once_and_resubscribe_and_resend_in_order(self) -> None:
        s = ready_on(6380)
        s.broker.need(b"ws-hub:group-data:g")
        s.run()
        s.answer_subscribes()
        old_sub, old_cmd = s.current(SUB), s.current(CMD)
        for i in range(3):
            s.broker.publish(b"ws-hub:client-data:k", b"m%d" % i)
        s.run()
        s.reply(CMD, resp_int(1))  # m0 acknowledged; m1, m2 are not
        s.reply(SENTINEL, switch_master(6380, 6381))
        assert old_sub.closed and old_cmd.closed
        assert s.current(SUB).address == s.current(CMD).address == "127.0.0.1:6381"
        assert not s.broker.ready
        s.data_links_up(6381)
        assert [b"SUBSCRIBE", b"ws-hub:group-data:g"] in s.current(SUB).commands
        assert [c for c in s.current(CMD).commands if c[0] == b"PUBLISH"] == [
            [b"PUBLISH", b"ws-hub:client-data:k", b"m1"], [b"PUBLISH", b"ws-hub:client-data:k", b"m2"]]
        assert s.broker.ready

    def test_links_waiting_for_their_backoff_are_dialled_at_once(self) -> None:
        s = ready_on(6380)
        s.lost(SUB)
        s.lost(CMD)
        s.reply(SENTINEL, switch_master(6380, 6381))
        assert s.current(SUB).address == s.current(CMD).address == "127.0.0.1:6381"

    def test_another_masters_switch_changes_nothing(self) -> None:
        s = ready_on(6380)
        links = dict(s.broker.current_links())
        s.reply(SENTINEL, switch_master(7000, 7001, name=b"other"))
        assert s.broker.current_links() == links and s.broker.ready

    def test_a_switch_to_where_the_links_are_changes_nothing(self) -> None:
        s = ready_on(6380)
        links = dict(s.broker.current_links())
        s.reply(SENTINEL, switch_master(6379, 6380))
        assert s.broker.current_links() == links and s.broker.ready

    def test_a_new_sentinel_that_names_another_master_moves_the_links(self) -> None:
        """A failover while no sentinel was watched is found when the next one answers."""
        s = ready_on(6380)
        old = s.current(SUB)
        s.lost(SENTINEL, "connection reset")
        assert s.broker.ready is False and s.broker.link_states()[SUB] is RedisState.READY
        s.sentinel_answers(6381)
        assert old.closed and s.current(SUB).address == "127.0.0.1:6381"


class TestDeadSentinels:
    def test_the_next_sentinel_is_tried_at_once_and_a_failed_round_backs_off(self) -> None:
        s = Sentinel()
        s.lost(SENTINEL, "Connection refused")
        assert s.dials() == SENTINELS[:2]
        assert s.broker.not_ready_reason() \
            == "no sentinel answered (last error: 127.0.0.1:26379: connect failed: Connection refused)"
        s.lost(SENTINEL, "Connection refused")
        s.lost(SENTINEL, "Connection refused")
        assert s.dials() == SENTINELS  # the round is over: the next dial waits for the backoff
        s.advance(0.04)
        assert s.dials() == SENTINELS
        s.advance(1.0)
        assert s.dials() == [*SENTINELS, SENTINELS[0]]

    def test_a_sentinel_that_does_not_know_the_master_is_left_for_the_next(self) -> None:
        s = Sentinel()
        s.opened(SENTINEL)
        s.reply(SENTINEL, resp_simple(b"PONG"))
        s.reply(SENTINEL, b"$-1\r\n")
        assert s.dials() == SENTINELS[:2]
        assert "monitors no master named 'mymaster'" in s.broker.not_ready_reason()

    def test_a_sentinel_that_never_answers_is_left_at_the_reply_timeout(self) -> None:
        s = Sentinel()
        s.opened(SENTINEL)
        s.advance(5.0)
        assert s.dials() == SENTINELS[:2]
        assert "no answer to the handshake for 5s" in s.broker.not_ready_reason()

    def test_the_watched_sentinel_dying_leaves_the_data_links_up(self) -> None:
        s = ready_on(6380)
        s.lost(SENTINEL, "connection reset")
        assert s.broker.link_states()[SUB] is RedisState.READY and s.broker.can_publish
        assert s.broker.not_ready_reason().startswith("no sentinel answered (last error: 127.0.0.1:26379")
        s.sentinel_answers(6380)
        assert s.dials()[-1] == SENTINELS[1]
        assert s.broker.ready

    def test_idle_sentinel_link_is_pinged_and_a_pong_push_keeps_it(self) -> None:
        s = ready_on(6380)
        s.advance(2.6)
        assert s.current(SENTINEL).commands[-1] == [b"PING"]
        s.reply(SENTINEL, resp_array(resp_bulk(b"pong"), resp_bulk(b"")))
        assert s.broker.ready
        s.advance(2.6)
        s.advance(5.0)  # the next PING is not answered
        assert s.current(SENTINEL).address == SENTINELS[1]

    @pytest.mark.parametrize("reply", [
        resp_int(3), resp_message(b"other", b"x"), resp_message(b"+switch-master", b"mymaster 1 2"),
        resp_message(b"+switch-master", b"mymaster 127.0.0.1 1 127.0.0.1 notaport"),
        resp_array(resp_bulk(b"127.0.0.1")), resp_push(b"subscribe", b"other", 1),
    ])
    def test_an_unexpected_reply_drops_the_sentinel_link_never_raises(self, reply: bytes) -> None:
        s = ready_on(6380)
        s.reply(SENTINEL, reply)
        assert s.current(SENTINEL).address == SENTINELS[1]
        assert s.broker.link_states()[SUB] is RedisState.READY
