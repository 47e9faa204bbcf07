"""Redis Cluster addressing and the sharded sessions, without a server: slots, topologies, redirections."""

from __future__ import annotations

import hiredis
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.harness import resp_value
from wshub_core import load_config
from wshub_core._actions import Action, OpenLink, SendToLink
from wshub_core._channels import Channels
from wshub_core._cluster import SLOTS, Redirect, key_slot, parse_redirect, parse_shards, parse_slots
from wshub_core._cluster_broker import ClusterBroker, _channel_of
from wshub_core._redis import (
    Backoff,
    CommandSession,
    Confirmed,
    PubMessage,
    RedisState,
    SubscriberSession,
    Unsubscribed,
)

# CLUSTER KEYSLOT on Redis 7.0 for each name.
KNOWN = [(b"x", 16287), (b"foo", 12182), (b"{user1000}.following", 3443), (b"a{}b", 13694),
         (b"ws-hub:group-data:g1", 13774), (b"{", 4092), (b"}{x}", 16287)]


@pytest.mark.parametrize(("name", "slot"), KNOWN)
def test_slots_are_what_redis_computes(name: bytes, slot: int) -> None:
    assert key_slot(name) == slot


@given(st.binary(max_size=20), st.binary(min_size=1, max_size=10).filter(lambda t: b"}" not in t),
       st.binary(max_size=20))
def test_a_hash_tag_decides_the_slot(before: bytes, tag: bytes, after: bytes) -> None:
    if b"{" in before:
        return  # then the first '{' is elsewhere
    assert key_slot(before + b"{" + tag + b"}" + after) == key_slot(tag)
    assert 0 <= key_slot(before + after) < SLOTS


def shards_reply(*shards: tuple[list[int], list[tuple[str, int, str, str]]]) -> list[object]:
    return [[b"slots", slots, b"nodes", [[b"id", b"x", b"port", port, b"ip", host.encode(), b"endpoint", host.encode(),
                                          b"role", role.encode(), b"health", health.encode()]
                                         for host, port, role, health in nodes]]
            for slots, nodes in shards]


def test_shards_name_each_slot_range_s_master() -> None:
    found = parse_shards(shards_reply(
        ([0, 5460], [("127.0.0.1", 7001, "master", "online"), ("127.0.0.1", 7004, "replica", "online")]),
        ([5461, 10922, 10923, 16383], [("127.0.0.1", 7002, "master", "online")])))
    assert not isinstance(found, str)
    assert found.complete() and found.masters == (("127.0.0.1", 7001), ("127.0.0.1", 7002))
    assert found.owner(0) == ("127.0.0.1", 7001) and found.owner(16383) == ("127.0.0.1", 7002)
    assert found.slot_of(("127.0.0.1", 7002)) == 5461


def test_a_shard_whose_master_failed_leaves_its_slots_unserved() -> None:
    found = parse_shards(shards_reply(([0, 16383], [("127.0.0.1", 7001, "master", "fail"),
                                                    ("127.0.0.1", 7004, "replica", "online")])))
    assert not isinstance(found, str) and not found.complete() and found.owner(5) is None


MASTER = [[b"port", 1, b"ip", b"h", b"role", b"master"]]


@pytest.mark.parametrize("reply", [b"nope", [b"slots"], [[b"slots", [1], b"nodes", MASTER]],
                                   [[b"slots", [0, 99999], b"nodes", MASTER]],
                                   [[b"slots", [0, 1], b"nodes", [b"junk"]]]])
def test_unreadable_shards_are_an_error_not_an_exception(reply: object) -> None:
    assert isinstance(parse_shards(reply), str)


def test_slots_reply_of_older_redis() -> None:
    found = parse_slots([[0, 100, [b"h1", 1, b"id"], [b"h2", 2, b"id2"]], [101, 16383, [b"h3", 3, b"id3"]]])
    assert not isinstance(found, str) and found.complete() and found.owner(100) == ("h1", 1)
    assert isinstance(parse_slots([[0, 1]]), str) and isinstance(parse_slots(b"x"), str)


@pytest.mark.parametrize(("error", "redirect"), [
    ("MOVED 3999 127.0.0.1:6381", Redirect(ask=False, slot=3999, address=("127.0.0.1", 6381))),
    ("ASK 1 [::1]:7000", Redirect(ask=True, slot=1, address=("::1", 7000))),
    ("MOVED x h:1", None), ("ERR no", None), ("MOVED 99999 h:1", None), ("MOVED 1 h:port", None)])
def test_redirections(error: str, redirect: Redirect | None) -> None:
    assert parse_redirect(error) == redirect


def test_the_channel_of_a_routed_command_is_read_back() -> None:
    pack = hiredis.pack_command
    assert _channel_of(pack((b"SPUBLISH", b"ch", b"x"))) == b"ch"
    assert _channel_of(pack((b"FCALL", b"wshub_publish", b"1", b"ch", b"x"))) == b"ch"
    assert _channel_of(pack((b"PING",))) == b""


def ready(session: SubscriberSession | CommandSession) -> None:
    session.connecting(0.0)
    session.connected(0.0)
    session.feed(b"+PONG\r\n", 0.0)
    assert session.state is RedisState.READY


def sub(sharded: bool = True) -> SubscriberSession:
    s = SubscriberSession(backoff=Backoff(minimum=1, maximum=2, seed=0), username="", password="", healthy_after=1,
                          sharded=sharded)
    ready(s)
    return s


def test_shard_channels_are_subscribed_one_per_command() -> None:
    s = sub()
    s.want(b"a")
    s.want(b"b")
    assert s.take_commands(0.0) == hiredis.pack_command((b"SSUBSCRIBE", b"a")) + hiredis.pack_command(
        (b"SSUBSCRIBE", b"b"))
    events = s.feed(b"*3\r\n$10\r\nssubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$8\r\nsmessage\r\n$1\r\na\r\n$2\r\nhi\r\n", 1.0)
    assert events == [Confirmed(channel=b"a"), PubMessage(channel=b"a", payload=b"hi")]


def test_a_shard_channel_redis_gave_up_is_an_event_and_no_longer_subscribed() -> None:
    s = sub()
    s.want(b"a")
    s.take_commands(0.0)
    s.feed(b"*3\r\n$10\r\nssubscribe\r\n$1\r\na\r\n:1\r\n", 1.0)
    events = s.feed(b"*3\r\n$12\r\nsunsubscribe\r\n$1\r\na\r\n:0\r\n", 2.0)
    assert events == [Unsubscribed(channel=b"a")] and not s.broken
    assert not s.is_confirmed(b"a") and s.subscribed_channels() == set()
    s.want(b"a")  # wanted again (on its new master, by the broker): subscribed again
    assert s.take_commands(3.0) == hiredis.pack_command((b"SSUBSCRIBE", b"a"))


def test_our_own_sunsubscribe_is_no_event() -> None:
    s = sub()
    s.want(b"a")
    s.take_commands(0.0)
    s.feed(b"*3\r\n$10\r\nssubscribe\r\n$1\r\na\r\n:1\r\n", 1.0)
    s.unwant(b"a")
    s.take_commands(1.0)
    assert s.feed(b"*3\r\n$12\r\nsunsubscribe\r\n$1\r\na\r\n:0\r\n", 2.0) == [] and not s.broken


def test_moved_on_the_subscriber_link_breaks_it() -> None:
    s = sub()
    s.want(b"a")
    s.take_commands(0.0)
    s.feed(b"-MOVED 15495 127.0.0.1:7003\r\n", 1.0)
    assert "MOVED" in s.broken


def test_redirected_commands_are_handed_back_in_order_with_their_tickets() -> None:
    c = CommandSession(backoff=Backoff(minimum=1, maximum=2, seed=0), username="", password="", db=0,
                       healthy_after=1)
    c.redirected = []
    ready(c)
    c.command(b"SPUBLISH", b"a", b"1", ticket=7)
    c.command(b"SPUBLISH", b"a", b"2", resend=False)
    c.command(b"SPUBLISH", b"b", b"3", ticket=8)
    c.take_commands(0.0)
    assert c.feed(b"-MOVED 1 h:1\r\n-ASK 1 h:2\r\n:1\r\n", 1.0) == []
    assert [(cmd, t, r, e) for cmd, t, r, e in c.redirected] == [
        (hiredis.pack_command((b"SPUBLISH", b"a", b"1")), 7, True, "MOVED 1 h:1"),
        (hiredis.pack_command((b"SPUBLISH", b"a", b"2")), 0, False, "ASK 1 h:2")]
    assert c.acknowledged == [(8, "", 1)] and c.idle and c.buffered_bytes == 0


def test_outstanding_commands_move_to_another_node_whole() -> None:
    c = CommandSession(backoff=Backoff(minimum=1, maximum=2, seed=0), username="", password="", db=0,
                       healthy_after=1)
    ready(c)
    c.command(b"SPUBLISH", b"a", b"1", ticket=3)
    c.take_commands(0.0)  # in flight
    c.command(b"SPUBLISH", b"a", b"2", resend=False)  # queued
    moved = c.take_outstanding()
    assert moved == [(hiredis.pack_command((b"SPUBLISH", b"a", b"1")), 3, True),
                     (hiredis.pack_command((b"SPUBLISH", b"a", b"2")), 0, False)]
    assert c.idle and c.buffered_bytes == 0 and len(c) == 0


def topology_up(yaml: str = "") -> tuple[ClusterBroker, list[Action], int]:
    """A cluster broker whose topology link to the seed is up (its CLUSTER SHARDS not yet flushed)."""
    sink: list[Action] = []
    config = load_config("redis:\n  mode: cluster\n  address: '127.0.0.1:7000'\n" + yaml, source="test")
    broker = ClusterBroker(config=config, seed=1, sink=sink, on_message=lambda c, p: None,
                           on_confirmed=lambda c: None, on_publisher_back=lambda: None)
    broker.start(0.0)
    (topology,) = [a.link for a in sink if isinstance(a, OpenLink)]
    sink.clear()
    broker.link_opened(topology, 0.0)
    broker.link_data(topology, b"+PONG\r\n", 0.0)
    return broker, sink, topology


def test_a_slot_without_a_master_holds_its_commands_only() -> None:
    """While one shard has no master (mid-failover), its slots' publishes wait, in order; the others go on."""
    broker, sink, topology = topology_up("history:\n  enabled: false\n")

    def opened() -> dict[int, tuple[str, int]]:
        links = {a.link: (a.host, a.port) for a in sink if isinstance(a, OpenLink)}
        sink.clear()
        return links

    broker.flush(0.0)  # CLUSTER SHARDS goes out
    reply = shards_reply(([0, 8191], [("127.0.0.1", 7001, "master", "online")]),
                         ([8192, 16383], [("127.0.0.1", 7002, "master", "fail")]))
    broker.link_data(topology, resp_value(reply), 0.0)
    links = opened()
    assert sorted(links.values()) == [("127.0.0.1", 7001)] * 2
    for link in links:
        broker.link_opened(link, 0.0)
        broker.link_data(link, b"+PONG\r\n", 0.0)
    low = next(b"c%d" % i for i in range(100) if key_slot(b"c%d" % i) < 8192)
    high = next(b"c%d" % i for i in range(100) if key_slot(b"c%d" % i) >= 8192)
    broker.publish(high, b"1")
    broker.publish(low, b"2")
    broker.publish(high, b"3")
    sink.clear()
    broker.flush(0.0)
    sent = b"".join(a.data for a in sink if isinstance(a, SendToLink))
    assert hiredis.pack_command((b"SPUBLISH", low, b"2")) in sent and high not in sent
    assert broker.pending_count() == 3 and not broker.ready  # 2 held, 1 in flight
    assert broker.not_ready_reason() == "the cluster topology leaves slots without a master"


def test_a_redis_without_cluster_shards_is_asked_cluster_slots() -> None:
    broker, sink, topology = topology_up()
    sink.clear()
    broker.flush(0.0)
    assert [a.data for a in sink] == [hiredis.pack_command((b"CLUSTER", b"SHARDS"))]
    sink.clear()
    broker.link_data(topology, b"-ERR unknown subcommand 'SHARDS'. Try CLUSTER HELP.\r\n", 0.1)
    broker.flush(0.1)
    assert [a.data for a in sink] == [hiredis.pack_command((b"CLUSTER", b"SLOTS"))]
    sink.clear()
    broker.link_data(topology, resp_value([[0, 16383, [b"127.0.0.1", 7001, b"id"]]]), 0.2)
    assert sorted((a.host, a.port) for a in sink if isinstance(a, OpenLink)) == [("127.0.0.1", 7001)] * 2


def test_a_push_whose_kind_is_not_a_string_breaks_the_link_not_the_hub() -> None:
    """Found by fuzz/test_fuzz_cluster.py: a list as the kind raised TypeError (unhashable) out of the session."""
    s = sub()
    assert s.feed(b"*3\r\n*0\r\n$1\r\na\r\n:1\r\n", 1.0) == []
    assert s.broken.startswith("unexpected reply on the subscriber link")


def _commands(data: bytes) -> list[list[bytes]]:
    reader = hiredis.Reader()
    reader.feed(data)
    out: list[list[bytes]] = []
    while (cmd := reader.gets()) is not False:
        assert isinstance(cmd, list)
        out.append(cmd)
    return out


def test_presence_goes_to_the_master_of_each_group_s_keys_and_is_written_again_on_a_new_master() -> None:
    """Each script call to the slot of its keys (join/leave are SPUBLISHed there), SCRIPT LOAD to every master,
    and everything written again when a master's command link comes up (it may be a promoted replica)."""
    broker, sink, topology = topology_up("history:\n  enabled: false\npresence:\n  enabled: true\n")
    broker.flush(0.0)
    sink.clear()
    low, high = ("127.0.0.1", 7001), ("127.0.0.1", 7002)
    broker.link_data(topology, resp_value(shards_reply(([0, 8191], [(*low, "master", "online")]),
                                                       ([8192, 16383], [(*high, "master", "online")]))), 0.0)
    dialled = [(a.link, (a.host, a.port)) for a in sink if isinstance(a, OpenLink)]
    commands = {address: link for link, address in dialled[1::2]}  # each master: subscriber, then commands
    for link, _ in dialled:
        broker.link_opened(link, 0.0)
        broker.link_data(link, b"+PONG\r\n", 0.0)
    channels = Channels("ws-hub:")
    groups = {side: next(g for i in range(100) if (key_slot(channels.presence(g := f"g{i}")) < 8192) == (side is low))
              for side in (low, high)}

    def sent() -> dict[tuple[str, int], list[list[bytes]]]:
        by_link = {link: address for address, link in commands.items()}
        out: dict[tuple[str, int], list[list[bytes]]] = {low: [], high: []}
        for action in sink:
            if isinstance(action, SendToLink) and action.link in by_link:
                out[by_link[action.link]] += [c for c in _commands(action.data) if c != [b"PING"]]
        sink.clear()
        return out

    sink.clear()
    broker.flush(0.0)
    first = sent()
    for side in (low, high):  # the scripts, on each master
        assert sum(1 for cmd in first[side] if cmd[:2] == [b"SCRIPT", b"LOAD"]) >= 4
    for group in groups.values():
        broker.presence_set(group, "alice", 1)
    broker.flush(0.0)
    second = sent()
    for side, group in groups.items():
        (call,) = [cmd for cmd in second[side] if cmd[0] == b"EVALSHA"]
        assert call[3:5] == list(channels.presence_keys(group)) and call[7] == channels.presence(group)
    # The high master's command link drops and comes back (a promoted replica, say): its counts again, and the
    # low master's too (counts are absolute: writing them twice is harmless).
    broker.link_lost(commands[high], 1.0)
    sink.clear()
    broker.handle_timer(5.0)
    (again,) = [a.link for a in sink if isinstance(a, OpenLink)]
    broker.link_opened(again, 5.0)
    commands[high] = again
    broker.link_data(again, b"+PONG\r\n", 5.0)
    broker.flush(5.0)
    third = sent()
    assert [cmd[:2] for cmd in third[high]][:4] == [[b"SCRIPT", b"LOAD"]] * 4  # loaded before it is used
    for side, group in groups.items():
        assert any(cmd[0] == b"EVALSHA" and cmd[3] == channels.presence_keys(group)[0] for cmd in third[side]), side


ONE_MASTER = shards_reply(([0, 16383], [("127.0.0.1", 7001, "master", "online")]))
TWO_MASTERS = shards_reply(([0, 8191], [("127.0.0.1", 7001, "master", "online")]),
                           ([8192, 16383], [("127.0.0.1", 7002, "master", "online")]))


def cluster(shards: list[object], *, history: bool = False, backs: list[int] | None = None) -> tuple[
        ClusterBroker, list[Action], dict[tuple[int, str], int], int]:
    """A broker that read the topology ``shards``, every master's links up (the sink emptied); its links by
    (port, kind), and its topology link."""
    sink: list[Action] = []
    config = load_config("redis:\n  mode: cluster\n  address: '127.0.0.1:7000'\nhistory:\n  enabled: "
                         f"{'true' if history else 'false'}\n", source="test")
    broker = ClusterBroker(config=config, seed=1, sink=sink, on_message=lambda c, p: None,
                           on_confirmed=lambda c: None,
                           on_publisher_back=lambda: None if backs is None else backs.append(1))
    broker.start(0.0)
    (topology,) = [a.link for a in sink if isinstance(a, OpenLink)]
    broker.link_opened(topology, 0.0)
    broker.link_data(topology, b"+PONG\r\n", 0.0)
    broker.flush(0.0)
    sink.clear()
    broker.link_data(topology, resp_value(shards), 0.0)
    links = {(broker._link_of[a.link][0].address[1], broker._link_of[a.link][1]): a.link
             for a in sink if isinstance(a, OpenLink)}
    for link in links.values():
        broker.link_opened(link, 0.0)
        broker.link_data(link, b"+PONG\r\n", 0.0)
    sink.clear()
    return broker, sink, links, topology


def sent_to(sink: list[Action], link: int) -> list[bytes]:
    return [a.data for a in sink if isinstance(a, SendToLink) and a.link == link]


def test_a_replica_refusing_function_load_leaves_history_on() -> None:
    """Found by the simulation (seed 298): a master's command link redialled to its old address came up on the
    node a failover had turned into a replica, before the map caught up; its ``-READONLY`` to FUNCTION LOAD
    turned history off for good, and every resume after that was told ``reset``. Now it asks the topology."""
    broker, sink, links, topology = cluster(ONE_MASTER, history=True)
    broker.flush(0.0)
    assert any(b"FUNCTION" in data for data in sent_to(sink, links[(7001, "commands")]))
    sink.clear()
    broker.link_data(links[(7001, "commands")], b"-READONLY You can't write against a read only replica.\r\n", 0.1)
    broker.flush(0.1)
    assert broker.history_error == ""
    assert sent_to(sink, topology) == [hiredis.pack_command((b"CLUSTER", b"SHARDS"))]


def test_a_moved_to_a_master_the_topology_does_not_name_yet_waits_for_a_new_topology() -> None:
    """Found by the simulation (seed 298): after a failover a replica answered -MOVED to the new master while
    the topology, read from a node whose view lagged, still named the old one. Each same answer sent the
    command back to the old master at once, which moved it again: a loop at network speed (in the
    simulation, at one instant). An answer that says nothing new now leaves it waiting."""
    broker, sink, links, topology = cluster(ONE_MASTER)
    commands = links[(7001, "commands")]
    broker.publish(b"ch", b"1")
    broker.flush(0.0)
    assert spublished(sink, commands) == [b"1"]
    sink.clear()
    broker.link_data(commands, b"-MOVED %d 127.0.0.1:7002\r\n" % key_slot(b"ch"), 0.1)
    broker.flush(0.1)
    assert sent_to(sink, topology) == [hiredis.pack_command((b"CLUSTER", b"SHARDS"))]
    sink.clear()
    broker.link_data(topology, resp_value(ONE_MASTER), 0.1)
    broker.flush(0.1)
    assert spublished(sink, commands) == []  # not back to 7001: it waits
    assert broker.pending_count() == 1
    sink.clear()
    broker.handle_timer(0.7)  # asked again soon, while something waits
    broker.flush(0.7)
    assert sent_to(sink, topology) == [hiredis.pack_command((b"CLUSTER", b"SHARDS"))]
    sink.clear()
    broker.link_data(topology, resp_value(shards_reply(([0, 16383], [("127.0.0.1", 7002, "master", "online")]))),
                     0.7)
    assert sorted((a.host, a.port) for a in sink if isinstance(a, OpenLink)) == [("127.0.0.1", 7002)] * 2


def test_a_retired_master_whose_link_dropped_an_announcement_has_it_made_again() -> None:
    """Found by the simulation (seed 11918, under an earlier mix of its faults): a client-new (sent with
    ``resend=False``) was queued for a master that had died; the failed redial dropped it, and a failover
    retired that master before its link came back to say so: the key was never announced, and its
    connection stayed without groups. Retiring such a master now asks the hub to announce again."""
    backs: list[int] = []
    broker, sink, links, topology = cluster(ONE_MASTER, backs=backs)
    broker.link_lost(links[(7001, "commands")], 1.0)  # the master dies
    broker.publish(b"client-new", b"k", resend=False)
    sink.clear()
    broker.handle_timer(3.0)
    (redial,) = [a.link for a in sink if isinstance(a, OpenLink)]
    broker.link_lost(redial, 3.0)  # refused: the announcement is dropped with the link
    assert broker.pending_count() == 0 and not backs
    broker.flush(3.0)
    broker.link_data(topology, resp_value(shards_reply(([0, 16383], [("127.0.0.1", 7002, "master", "online")]))),
                     3.1)
    assert backs == [1]


def spublished(sink: list[Action], link: int) -> list[bytes]:
    reader = hiredis.Reader()
    reader.feed(b"".join(a.data for a in sink if isinstance(a, SendToLink) and a.link == link))
    out = []
    while (cmd := reader.gets()) is not False:
        if isinstance(cmd, list) and cmd[0] == b"SPUBLISH":
            out.append(cmd[2])
    return out


def two_in_flight() -> tuple[ClusterBroker, list[Action], dict[tuple[int, str], int], int, bytes]:
    """Two masters, and two client messages of a channel in slots 0-4095 in flight on 7001."""
    broker, sink, links, topology = cluster(TWO_MASTERS)
    ch = next(b"c%d" % i for i in range(100) if key_slot(b"c%d" % i) < 4096)
    broker.publish(ch, b"1")
    broker.publish(ch, b"2")
    broker.flush(0.0)
    assert spublished(sink, links[(7001, "commands")]) == [b"1", b"2"]
    return broker, sink, links, topology, ch


def test_commands_moved_one_reply_at_a_time_keep_their_order_before_newer_ones() -> None:
    """Client messages of one key, in flight on a master whose slot just moved: each comes back -MOVED in
    its own read. A message published between two of those reads went to the new master at once, ahead
    of the older one still to be moved: out of order. Now the slot's commands wait until the old master
    has answered all it owed for the slot, then go in their order."""
    broker, sink, links, _, ch = two_in_flight()
    sink.clear()
    moved = b"-MOVED %d 127.0.0.1:7002\r\n" % key_slot(ch)
    broker.link_data(links[(7001, "commands")], moved, 0.1)
    broker.publish(ch, b"3")
    broker.flush(0.1)
    assert spublished(sink, links[(7002, "commands")]) == []  # 2 is still owed by 7001
    broker.link_data(links[(7001, "commands")], moved, 0.1)
    broker.flush(0.1)
    assert spublished(sink, links[(7002, "commands")]) == [b"1", b"2", b"3"]
    assert broker.pending_count() == 3


def test_a_new_topology_moving_a_slot_keeps_its_commands_behind_the_old_master_s_answers() -> None:
    """The same when a topology, not a -MOVED, says the slot moved: what 7001 still owes for it comes first."""
    broker, sink, links, topology, ch = two_in_flight()
    broker.link_lost(links[(7002, "subscriber")], 0.05)  # a sign the topology may have changed: it is read
    sink.clear()
    broker.flush(0.05)
    assert [a.data for a in sink if isinstance(a, SendToLink)] == [hiredis.pack_command((b"CLUSTER", b"SHARDS"))]
    broker.link_data(topology, resp_value(shards_reply(([4096, 8191], [("127.0.0.1", 7001, "master", "online")]),
                                                       ([0, 4095, 8192, 16383],
                                                        [("127.0.0.1", 7002, "master", "online")]))), 0.1)
    broker.publish(ch, b"3")
    sink.clear()
    broker.flush(0.1)
    assert spublished(sink, links[(7002, "commands")]) == []
    moved = b"-MOVED %d 127.0.0.1:7002\r\n" % key_slot(ch)
    broker.link_data(links[(7001, "commands")], moved + moved, 0.2)
    broker.flush(0.2)
    assert spublished(sink, links[(7002, "commands")]) == [b"1", b"2", b"3"]
