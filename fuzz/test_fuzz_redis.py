"""Hostile bytes on both Redis links: random, RESP of any shape, and mutated valid streams.

The invariant: the core never raises; each input is either accepted, or the
link is dropped (``CloseLink``) and dialled again after its backoff. Either
way the hub recovers by itself: once Redis behaves, both links are up, what
Redis has subscribed equals ``hub.needed_channels()``, every subscription is
confirmed (``hub.ready``), no client was closed because of Redis, and group
messages and client messages flow again.

Garbage arrives while replies are owed (a SUBSCRIBE and a PUBLISH in flight),
so accepted garbage can be mistaken for a reply; the hub must still converge.
"""

from __future__ import annotations

import json

from core.harness import (
    CMD,
    SUB,
    Client,
    Harness,
    chunked,
    fuzz_examples,
    make_config,
    mutated,
    resp_array,
    resp_bulk,
    resp_error,
    resp_int,
    resp_message,
    resp_push,
    resp_simple,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wshub_core import CloseLink, OpenLink, RedisLink

FUZZ = settings(max_examples=fuzz_examples(300), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
RECONNECT_MAX = 1.0
REDIS_TIMEOUT = 5.0
LINK = st.sampled_from([SUB, CMD])

CHANNELS = st.sampled_from([
    b"ws-hub:groups-new:a", b"ws-hub:groups-new:b", b"ws-hub:groups-new:zz", b"ws-hub:group-data:g1",
    b"ws-hub:group-data:g2", b"ws-hub:group-data:nobody", b"ws-hub:client-new", b"",
]) | st.binary(max_size=12)

GROUP_NAMES = st.text(max_size=6) | st.sampled_from(["\ud800", "a\udfff", "g1", "g2", "", " ", "\x00"])
GROUP_PAYLOADS = st.one_of(
    st.lists(GROUP_NAMES, max_size=4).map(lambda v: json.dumps(v).encode()),
    st.lists(GROUP_NAMES, max_size=4).map(lambda v: ",".join(v).encode("utf-8", "surrogatepass")),
    st.sampled_from([b"[", b"{}", b'"x"', b"[1]", b"\xff", b"null", b"[null]", b'["\\ud800"]']),
    st.binary(max_size=16),
)

SCALARS = st.one_of(
    st.binary(max_size=8).filter(lambda b: b"\r" not in b and b"\n" not in b).map(resp_simple),
    st.binary(max_size=8).filter(lambda b: b"\r" not in b and b"\n" not in b).map(resp_error),
    st.integers(-(2**63), 2**63 - 1).map(resp_int),
    st.binary(max_size=16).map(resp_bulk),
    GROUP_PAYLOADS.map(resp_bulk),
    st.sampled_from([
        b"$-1\r\n", b"*-1\r\n", b"*0\r\n", b"+OK\r\n", b"+PONG\r\n", b"_\r\n", b"#t\r\n", b"#f\r\n",
        b",1.5\r\n", b",inf\r\n", b"(12345678901234567890\r\n", b"=8\r\ntxt:pong\r\n", b"!3\r\nERR\r\n",
    ]),
)


def _aggregate(marker: bytes, items: list[bytes]) -> bytes:
    return marker + b"%d\r\n" % len(items) + b"".join(items)


def _map(items: list[bytes]) -> bytes:
    items = items[: len(items) // 2 * 2]
    return b"%" + b"%d\r\n" % (len(items) // 2) + b"".join(items)


RESP_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda xs: _aggregate(b"*", xs)),
        st.lists(inner, max_size=4).map(lambda xs: _aggregate(b">", xs)),  # RESP3 push
        st.lists(inner, max_size=4).map(lambda xs: _aggregate(b"~", xs)),  # RESP3 set
        st.lists(inner, max_size=4).map(_map),  # RESP3 map
    ),
    max_leaves=8,
)

# Pub/sub-shaped replies whose parts may be of any type.
PUBSUB_SHAPED = st.builds(
    lambda kind, channel, tail: resp_array(resp_bulk(kind), channel, *tail),
    st.sampled_from([b"message", b"subscribe", b"unsubscribe", b"pong", b"pmessage", b"smessage", b"MESSAGE"]),
    CHANNELS.map(resp_bulk) | RESP_VALUES,
    st.lists(GROUP_PAYLOADS.map(resp_bulk) | RESP_VALUES | st.integers(0, 9).map(resp_int), max_size=2),
)


@st.composite
def valid_streams(draw: st.DrawFn) -> bytes:
    """Replies Redis could really send on the hub's links."""
    parts = draw(st.lists(st.one_of(
        st.builds(resp_message, CHANNELS, GROUP_PAYLOADS | st.binary(max_size=20)),
        st.builds(resp_push, st.sampled_from([b"subscribe", b"unsubscribe"]), CHANNELS, st.integers(0, 5)),
        st.just(resp_array(resp_bulk(b"pong"), resp_bulk(b""))),
        st.integers(0, 3).map(resp_int),
        st.just(resp_simple(b"OK")),
        st.just(resp_error(b"ERR wrong")),
    ), max_size=6))
    return b"".join(parts)


HOSTILE = st.one_of(
    st.binary(max_size=200),
    st.lists(RESP_VALUES | PUBSUB_SHAPED, max_size=5).map(b"".join),
    valid_streams(),
    valid_streams().flatmap(lambda s: mutated(s)),
)


# -- the scenario ------------------------------------------------------------------------


def busy_hub() -> tuple[Harness, list[Client]]:
    """Two keys with groups, three clients, and (from here on) replies held back."""
    h = Harness(make_config(reconnect_min=0.05, reconnect_max=RECONNECT_MAX, redis_timeout=REDIS_TIMEOUT,
                            pong_wait=1e6))
    clients = [h.connect("a"), h.connect("a"), h.connect("b")]
    h.set_groups("a", ["g1", "g2"])
    h.set_groups("b", ["g2"])
    h.auto_reply = False
    clients[0].text("owed")  # a PUBLISH in flight
    clients.append(h.connect("c"))  # a SUBSCRIBE in flight
    return h, clients


def assert_recovers(h: Harness, clients: list[Client], hostile_links: set[RedisLink]) -> None:
    closes = {h.role_of(a.link) for _, a in h.log if isinstance(a, CloseLink)}
    h.auto_reply = True
    h.run()
    # Garbage may leave a reply half-read (an array still waiting for elements): only the
    # reply timeout can tell, so allow two of them, and the reconnects after them.
    for _ in range(int(2 * (REDIS_TIMEOUT + RECONNECT_MAX) / RECONNECT_MAX) + 1):
        h.advance(RECONNECT_MAX)
    for role in closes:  # each dropped link was dialled again after it was dropped
        last_close = max(i for i, (_, a) in enumerate(h.log) if isinstance(a, CloseLink) and h.role_of(a.link) is role)
        assert any(isinstance(a, OpenLink) and h.role_of(a.link) is role for _, a in h.log[last_close:])
    assert all(f.up for f in h.redis.links.values())
    needed = h.hub.needed_channels()
    assert h.redis.links[SUB].subscribed == needed
    assert h.hub.subscribed_channels() == needed
    assert h.hub.ready
    assert all(c.open for c in clients), "Redis trouble must never close a client"
    # Things flow again: every member gets a fresh group message, client messages reach Redis.
    for client in clients:
        for group in h.hub.groups_of(client.conn):
            before = len(client.messages)
            payload = f"after {client.conn} {group!r}".encode("utf-8", "replace")
            h.redis.publish(h.channel("group-data:") + group.encode(), payload)
            h.run()
            assert client.messages[before:][-1:] == [payload.decode()]
    clients[-1].text("after")
    assert b"after" in h.published(h.channel("client-data:c"))
    for client in clients:
        h.lose(client)
    h.advance(RECONNECT_MAX)
    assert h.hub.is_empty() and h.redis.links[SUB].subscribed == set()


class TestRedisBytesFuzz:
    @FUZZ
    @given(st.data())
    def test_hostile_bytes_on_one_link(self, data: st.DataObject) -> None:
        h, clients = busy_hub()
        link = data.draw(LINK)
        for chunk in data.draw(chunked(data.draw(HOSTILE))):
            h.redis_data(link, chunk)
        assert_recovers(h, clients, {link})

    @FUZZ
    @given(st.data())
    def test_hostile_bytes_interleaved_with_real_replies(self, data: st.DataObject) -> None:
        h, clients = busy_hub()
        for _ in range(data.draw(st.integers(1, 4))):
            link = data.draw(LINK)
            if data.draw(st.booleans()):
                h.deliver(link, data.draw(st.integers(1, 2)))
            for chunk in data.draw(chunked(data.draw(HOSTILE))):
                h.redis_data(link, chunk)
        assert_recovers(h, clients, {SUB, CMD})

    @FUZZ
    @given(st.data())
    def test_real_reply_stream_mutated(self, data: st.DataObject) -> None:
        """The hub's own pending replies, mutated on the way (a corrupting proxy)."""
        h, clients = busy_hub()
        h.group_data("g1", b"x")
        h.set_groups("c", ["g3"])
        for link in (SUB, CMD):
            fake = h.redis.links[link]
            stream = b"".join(r.data for r in fake.pending)
            fake.pending.clear()
            for chunk in data.draw(chunked(data.draw(mutated(stream)))):
                h.redis_data(link, chunk)
        assert_recovers(h, clients, {SUB, CMD})
