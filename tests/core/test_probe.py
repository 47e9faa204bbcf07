"""The stall probe (``_probe.py`` through the Redis broker) against the harness' fake Redis, no sockets.

A subscriber link that answers PING but delivers nothing must be found by the
probe: the command link PUBLISHes to a channel only that link is subscribed
to, and a probe that does not come back before the next is due drops it.
"""

from __future__ import annotations

import pytest

from wshub_core import CloseLink, RedisState, SendToLink
from wshub_core._probe import Probe

from .harness import CMD, SUB, Harness, make_config

INTERVAL = 1.0


def probing_hub(**overrides: object) -> Harness:
    """A hub whose first probe (due at link up) has gone round."""
    settings: dict[str, object] = {"redis_probe_interval": INTERVAL, "redis_timeout": 120.0, "reconnect_min": 0.05,
                                   "reconnect_max": 0.2, "pong_wait": 1e6}
    h = Harness(make_config(**{**settings, **overrides}))
    h.advance(0.0)
    assert len(h.published(probe_channel(h))) == 1
    return h


def probe_channel(h: Harness) -> bytes:
    """The probe channel the current subscriber link subscribed."""
    head = h.channel("probe:")
    channels = [ch for cmd in h.redis.links[SUB].session_commands if cmd[0] == b"SUBSCRIBE"
                for ch in cmd[1:] if ch.startswith(head)]
    assert len(channels) == 1, h.redis.links[SUB].session_commands
    return channels[0]


def probes(h: Harness, channel: bytes) -> list[bytes]:
    return h.published(channel)


def sub_closes(h: Harness) -> int:
    return sum(1 for _, a in h.log if isinstance(a, CloseLink) and h.role_of(a.link) is SUB)


def stalls(h: Harness) -> int:
    line = next(line for line in h.hub.metrics_text().splitlines() if line.startswith("wshub_redis_stalls_total "))
    return int(line.split()[1])


class TestHealthyLinks:
    def test_one_probe_per_interval_goes_round_and_nothing_is_dropped(self) -> None:
        h = probing_hub()
        channel = probe_channel(h)
        assert channel == h.channel("probe:") + channel.split(b":")[-2] + b":" + str(h.link(SUB)).encode()
        h.advance(10 * INTERVAL)
        assert len(probes(h, channel)) == 11  # the first at link up, then one per interval
        assert sub_closes(h) == 0 and stalls(h) == 0
        assert h.hub.ready

    def test_the_probe_channel_is_the_brokers_own(self) -> None:
        h = probing_hub()
        client = h.connect("k")
        h.advance(3 * INTERVAL)
        assert probe_channel(h) not in h.hub.subscribed_channels()
        assert probe_channel(h) not in h.hub.needed_channels()
        assert client.messages == []

    def test_no_probe_with_probe_interval_zero(self) -> None:
        h = Harness(make_config(redis_probe_interval=0.0))
        h.advance(30.0)
        assert not any(ch.startswith(h.channel("probe:")) for ch, _ in h.redis.published)
        assert not any(c[0] == b"SUBSCRIBE" for c in h.redis.links[SUB].commands)

    def test_two_hubs_never_share_a_probe_channel(self) -> None:
        one, two = probing_hub(), Harness(make_config(redis_probe_interval=INTERVAL), now=1000.5)
        two.advance(0.0)
        assert probe_channel(one) != probe_channel(two)


class TestStalls:
    def test_a_link_that_answers_ping_but_lost_its_subscription_is_dropped(self,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
        """What PING cannot see: the server (or a proxy) answers, but the subscription delivers nothing."""
        h = probing_hub(redis_timeout=0.5)  # idle PINGs every 0.25 s, all answered
        channel = probe_channel(h)
        h.redis.links[SUB].subscribed.discard(channel)
        h.advance(2 * INTERVAL + 0.01)
        assert sub_closes(h) == 1 and stalls(h) == 1
        assert any("stalled: the probe published 1s ago did not come back" in r.getMessage()
                   for r in caplog.records), [r.getMessage() for r in caplog.records]
        h.advance(1.0)  # redialled after the backoff, with a channel of the new link
        assert h.hub.ready and probe_channel(h) != channel
        h.advance(5 * INTERVAL)
        assert stalls(h) == 1

    def test_a_silent_subscriber_is_dropped_long_before_the_reply_timeout(self) -> None:
        h = probing_hub()
        h.auto_reply = False
        h.advance(INTERVAL)
        h.deliver(CMD)  # Redis took the probe; the subscriber link does not deliver it
        h.advance(INTERVAL)
        assert sub_closes(h) == 1 and stalls(h) == 1
        reasons = h.hub.broker.not_ready_reason()
        assert "stalled" in reasons and "nor did" not in reasons, reasons

    def test_a_probe_whose_publish_was_not_answered_either_says_so(self) -> None:
        h = probing_hub()
        h.auto_reply = False
        h.advance(2 * INTERVAL)
        assert stalls(h) == 1
        assert "(nor did the answer to its PUBLISH)" in h.hub.broker.not_ready_reason()

    def test_a_late_probe_is_not_taken_for_the_next(self) -> None:
        h = probing_hub()
        channel = probe_channel(h)
        h.auto_reply = False
        h.advance(INTERVAL)  # probe 2 sent (probe 1 went round at link up)
        assert len(probes(h, channel)) == 2
        h.deliver(CMD)
        late = h.redis.links[SUB].pending[:]
        h.redis.links[SUB].pending.clear()
        h.advance(INTERVAL)  # overdue: dropped
        assert stalls(h) == 1
        assert late and late[0].channel == channel

    def test_a_command_link_outage_abandons_the_probe_without_blaming_the_subscriber(self) -> None:
        h = probing_hub()
        h.auto_reply = False
        h.advance(INTERVAL)  # a probe is in flight
        h.refuse.add(CMD)
        h.drop_redis(CMD, lost_in_transit=True)
        h.redis.links[SUB].pending.clear()
        h.auto_reply = True
        h.advance(5 * INTERVAL)
        assert stalls(h) == 0 and sub_closes(h) == 0
        h.refuse.clear()
        h.advance(2.0)
        assert h.hub.link_states()[CMD] is RedisState.READY
        h.advance(5 * INTERVAL)
        assert stalls(h) == 0 and len(probes(h, probe_channel(h))) >= 5

    def test_only_the_subscriber_link_is_dropped(self) -> None:
        h = probing_hub()
        h.redis.links[SUB].subscribed.discard(probe_channel(h))
        mark = h.mark()
        h.advance(2 * INTERVAL + 0.01)
        closed = [h.role_of(a.link) for a in h.actions_since(mark) if isinstance(a, CloseLink)]
        assert closed == [SUB]
        assert any(isinstance(a, SendToLink) for a in h.actions_since(mark))


class TestTickets:
    """The probe's PUBLISHes carry tickets like the API's (positive) and presence's (negative, from -1 down)."""

    def test_the_probes_tickets_are_nobody_elses(self) -> None:
        probe = Probe(prefix=b"p:", interval=1.0)
        tickets = [probe.send(float(i))[1] for i in range(1000)]
        assert all(Probe.owns(t) for t in tickets) and len(set(tickets)) == 1000
        assert not any(Probe.owns(t) for t in [*range(-100_000, 0), *range(1, 1000)])

    def test_probes_go_round_between_presence_calls(self) -> None:
        """Presence's EVALSHAs (refused by the fake Redis) share the command link with the probe: no stall."""
        h = Harness(make_config("broker: redis\npresence:\n  enabled: true\n  grace: 0\n  timeout: 3\n",
                                redis_probe_interval=INTERVAL, pong_wait=1e6), start=False)
        h.hub.clock(h.now, 1_800_000_000.0)
        h.hub.start(h.now)
        h.run()
        h.advance(10 * INTERVAL)
        assert any(c[0] == b"EVALSHA" for c in h.commands(CMD))
        assert len(probes(h, probe_channel(h))) == 11 and stalls(h) == 0 and sub_closes(h) == 0
