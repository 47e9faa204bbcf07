"""Hostile bytes on the sentinel link: random, RESP of any shape, sentinel-shaped replies, mutated valid streams.

The invariant: the broker never raises; each input is either accepted (an
address, a ``+switch-master``, a confirmation) or the sentinel link is dropped
and the next sentinel dialled. Either way it recovers by itself: once a
sentinel behaves and names the master, both data links end up on that master,
checked with ROLE, and the broker is ready.
"""

from __future__ import annotations

from core.harness import (
    CMD,
    ROLE_MASTER,
    SENTINEL,
    SUB,
    SentinelDriver,
    chunked,
    fuzz_examples,
    mutated,
    resp_array,
    resp_bulk,
    resp_error,
    resp_message,
    resp_push,
    resp_simple,
    switch_master,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fuzz_redis import RESP_VALUES

from wshub_core import RedisState

FUZZ = settings(max_examples=fuzz_examples(200), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MASTER = 6380

HOSTS = st.sampled_from([b"127.0.0.1", b"", b"::1", b"\xff", b"host name", b"10.0.0.1"]) | st.binary(max_size=8)
PORTS = st.sampled_from([b"6380", b"6381", b"0", b"65536", b"-1", b"x", b""]) | st.integers(0, 70000).map(
    lambda n: b"%d" % n)

SENTINEL_SHAPED = st.one_of(
    st.builds(lambda h, p: resp_array(resp_bulk(h), resp_bulk(p)), HOSTS, PORTS),
    st.just(b"$-1\r\n"),
    st.just(resp_error(b"ERR No such master with that name")),
    st.builds(lambda name, h, p: resp_message(b"+switch-master", b"%s 127.0.0.1 6380 %s %s" % (name, h, p)),
              st.sampled_from([b"mymaster", b"other", b""]), HOSTS, PORTS),
    st.builds(lambda payload: resp_message(b"+switch-master", payload), st.binary(max_size=40)),
    st.builds(resp_push, st.sampled_from([b"subscribe", b"unsubscribe"]),
              st.sampled_from([b"+switch-master", b"other"]), st.integers(0, 2)),
    st.just(resp_array(resp_bulk(b"pong"), resp_bulk(b""))),
    st.just(resp_simple(b"PONG")),
    st.just(switch_master(MASTER, 6381)),
)

HOSTILE = st.one_of(
    st.binary(max_size=120),
    st.lists(SENTINEL_SHAPED | RESP_VALUES, max_size=5).map(b"".join),
    st.lists(SENTINEL_SHAPED, min_size=1, max_size=4).map(b"".join).flatmap(mutated),
)


def watching_broker(*, asking: bool) -> SentinelDriver:
    """Ready on MASTER with the sentinel watching; ``asking``: a data link dropped, an answer owed."""
    s = SentinelDriver()
    s.sentinel_answers(MASTER)
    s.data_links_up(MASTER)
    if asking:
        s.lost(SUB, "connection reset")
        s.advance(1.0)  # its backoff ran out: it asked again
    return s


def settle(s: SentinelDriver) -> None:
    """Let timeouts and backoffs run; the sentinels and MASTER behave from now on, until the broker is ready."""
    for _ in range(60):
        s.advance(1.0)
        for role in (SENTINEL, SUB, CMD):
            current = s.broker.current_links().get(role)
            if current is None:
                continue
            if s.links[current].open:
                if role is SENTINEL:
                    s.answer_sentinel(MASTER)  # what it asked since (a data link redialled asks again)
            elif role is SENTINEL:
                s.sentinel_answers(MASTER)
                s.links[s.broker.current_links()[SENTINEL]].answered = 3  # PING, SENTINEL, SUBSCRIBE
            elif s.links[current].address == f"127.0.0.1:{MASTER}":
                s.opened(role)
                s.reply(role, ROLE_MASTER)
        s.answer_subscribes()
        if s.broker.ready:
            return
    raise AssertionError(f"never ready again: {s.broker.not_ready_reason()}")


def assert_recovers(s: SentinelDriver) -> None:
    if s.broker.current_links().get(SENTINEL) is not None and s.links[s.broker.current_links()[SENTINEL]].open:
        s.lost(SENTINEL, "a sentinel restart after the garbage")  # the next one is asked afresh
    settle(s)
    states = s.broker.link_states()
    assert states == {SUB: RedisState.READY, CMD: RedisState.READY, SENTINEL: RedisState.READY}
    assert s.current(SUB).address == s.current(CMD).address == f"127.0.0.1:{MASTER}"


class TestSentinelBytesFuzz:
    @FUZZ
    @given(st.data())
    def test_hostile_bytes_on_the_sentinel_link(self, data: st.DataObject) -> None:
        s = watching_broker(asking=data.draw(st.booleans()))
        for chunk in data.draw(chunked(data.draw(HOSTILE))):
            if s.broker.current_links().get(SENTINEL) is None or not s.current(SENTINEL).open:
                break  # dropped: the rest would go to a link that is not there
            s.reply(SENTINEL, chunk)
        assert_recovers(s)

    @FUZZ
    @given(st.data())
    def test_hostile_bytes_before_the_first_answer(self, data: st.DataObject) -> None:
        s = SentinelDriver()
        s.opened(SENTINEL)
        for chunk in data.draw(chunked(data.draw(HOSTILE))):
            if not s.current(SENTINEL).open:
                break
            s.reply(SENTINEL, chunk)
        assert_recovers(s)

    @FUZZ
    @given(st.data())
    def test_hostile_answers_to_role_on_a_data_link(self, data: st.DataObject) -> None:
        """The ROLE of a sentinel-named address: only ``master`` makes the link READY; nothing raises."""
        s = SentinelDriver()
        s.sentinel_answers(MASTER)
        s.links[s.broker.current_links()[SENTINEL]].answered = 3
        role = data.draw(st.sampled_from([SUB, CMD]))
        dialled = s.opened(role)
        for chunk in data.draw(chunked(data.draw(HOSTILE | RESP_VALUES))):
            if s.broker.current_links().get(role) != dialled.link:
                break
            s.reply(role, chunk)
        settle(s)
        assert s.current(SUB).address == s.current(CMD).address == f"127.0.0.1:{MASTER}"
