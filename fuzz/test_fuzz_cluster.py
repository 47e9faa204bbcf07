"""Hostile bytes on a Cluster broker's links: the topology link, a master's subscriber and command links.

The invariant: the broker never raises, whatever a node sends (random bytes,
RESP of any shape, topology-shaped replies with wrong fields, redirections
naming odd addresses, shard pushes for channels never asked for), on any of
its links, between timers; and every link it sends to is one it opened and
has not closed since.
"""

from __future__ import annotations

from core.harness import chunked, fuzz_examples, mutated, resp_value
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fuzz_redis import RESP_VALUES

from wshub_core import load_config
from wshub_core._actions import Action, CloseLink, OpenLink, SendToLink
from wshub_core._cluster_broker import ClusterBroker

FUZZ = settings(max_examples=fuzz_examples(200), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def shards(*masters: int) -> bytes:
    step = 16384 // len(masters)
    return resp_value([[b"slots", [i * step, 16383 if i == len(masters) - 1 else (i + 1) * step - 1], b"nodes",
                  [[b"id", b"x", b"port", port, b"ip", b"127.0.0.1", b"endpoint", b"127.0.0.1", b"role", b"master",
                    b"health", b"online"]]] for i, port in enumerate(masters)])


CHANNELS = st.sampled_from([b"p:group-data:g", b"p:groups-new:k", b"other", b""]) | st.binary(max_size=6)
SHAPED = st.one_of(
    st.builds(lambda *ports: shards(*ports), st.integers(0, 70000), st.integers(7000, 7003)),
    st.builds(lambda kind, ch: resp_value([kind, ch, 1]),
              st.sampled_from([b"ssubscribe", b"sunsubscribe", b"subscribe"]), CHANNELS),
    st.builds(lambda ch, data: resp_value([b"smessage", ch, data]), CHANNELS, st.binary(max_size=20)),
    st.builds(lambda kind, slot, host, port: b"-%s %s %s:%s\r\n" % (kind, slot, host, port),
              st.sampled_from([b"MOVED", b"ASK"]), st.sampled_from([b"1", b"99999", b"x"]),
              st.sampled_from([b"127.0.0.1", b"", b"[::1]"]), st.sampled_from([b"7001", b"7009", b"", b"x"])),
    st.just(b"+PONG\r\n"), st.just(b"-ERR unknown subcommand 'SHARDS'\r\n"), st.just(b"+OK\r\n"),
)
HOSTILE = st.one_of(
    st.binary(max_size=80),
    st.lists(SHAPED | RESP_VALUES, max_size=4).map(b"".join),
    st.lists(SHAPED, min_size=1, max_size=3).map(b"".join).flatmap(mutated),
)


class Rig:
    def __init__(self, pubsub: str) -> None:
        config = load_config(f"redis:\n  mode: cluster\n  address: '127.0.0.1:7000'\n  channelPrefix: 'p:'\n"
                             f"  pubsub: {pubsub}\npresence:\n  enabled: true\n", source="fuzz")
        self.sink: list[Action] = []
        self.open: set[int] = set()
        self.broker = ClusterBroker(config=config, seed=1, sink=self.sink, on_message=lambda c, p: None,
                                    on_confirmed=lambda c: None, on_publisher_back=lambda: None,
                                    on_published=lambda t, e, p: None, on_entry=lambda c, i, p, d: None,
                                    on_history=lambda t, last, entries, e: None,
                                    on_presence=lambda t, counts, e: None)
        self.now = 0.0
        self.broker.start(0.0)
        self.drain()

    def drain(self) -> list[int]:
        """Check and take the actions; the links opened by them."""
        opened = []
        for action in self.sink:
            if isinstance(action, OpenLink):
                assert action.link not in self.open
                self.open.add(action.link)
                opened.append(action.link)
            elif isinstance(action, SendToLink):
                assert action.link in self.open, action
            elif isinstance(action, CloseLink):
                self.open.discard(action.link)
        self.sink.clear()
        return opened

    def up(self, link: int) -> None:
        self.broker.link_opened(link, self.now)
        self.broker.link_data(link, b"+PONG\r\n", self.now)
        self.broker.flush(self.now)
        self.drain()


@FUZZ
@given(st.sampled_from(["sharded", "classic"]), st.lists(st.tuples(st.integers(0, 7), HOSTILE), max_size=6),
       st.data())
def test_hostile_bytes_on_any_cluster_link_never_raise(pubsub: str, inputs: list[tuple[int, bytes]],
                                                       data: st.DataObject) -> None:
    rig = Rig(pubsub)
    broker = rig.broker
    (topology,) = rig.open
    rig.up(topology)
    broker.link_data(topology, shards(7001, 7002, 7003), rig.now)
    broker.need(b"p:group-data:g")
    broker.publish(b"p:client-data:k", b"hi")
    broker.read_history(b"p:group-data:g", "0-0", 10, 5)
    broker.presence_set("g", "k", 1)  # hostile answers to the presence scripts too
    broker.presence_query("g", 6)
    broker.flush(rig.now)
    for link in sorted(rig.drain()):
        rig.up(link)
    assert len(rig.open) == 7 and broker.can_publish  # the topology link and two per master, all up
    for which, payload in inputs:
        links = sorted(rig.open)
        if not links:
            break
        link = links[which % len(links)]
        for piece in data.draw(st.builds(lambda d: d, st.just(payload)).flatmap(chunked)):
            broker.link_data(link, piece, rig.now)
        if data.draw(st.booleans()):
            broker.link_lost(link, rig.now, "reset")
        rig.now += data.draw(st.sampled_from([0.0, 0.3, 6.0]))
        broker.handle_timer(rig.now)
        broker.flush(rig.now)
        for opened in rig.drain():
            if data.draw(st.booleans()):
                rig.up(opened)
    assert isinstance(broker.ready, bool) and broker.not_ready_reason()
    broker.samples()
