"""Property tests for ``_routing.py`` (and the deadline heap of ``_timers.py``) on their own.

The routing table is checked against a model simple enough to trust: a dict
conn -> key and a dict conn -> groups. ``needed()`` and every index must be
what the model computes after any sequence of add / set_groups / remove, and
each mutator must return exactly the channels that became (un)needed.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from wshub_core import parse_groups
from wshub_core._channels import Channels
from wshub_core._routing import Routing
from wshub_core._timers import Timers

PREFIX = "p:"
KEYS = st.sampled_from(["a", "b", "c", "é", "a:b", ""])
GROUPS = st.frozensets(st.sampled_from(["g1", "g2", "g3", "ü", "x:y"]), max_size=4)


class Model:
    def __init__(self) -> None:
        self.key_of: dict[int, str] = {}  # in order of arrival
        self.groups_of: dict[int, frozenset[str]] = {}

    def needed(self, r: Routing) -> set[bytes]:
        keys = {f"{PREFIX}{kind}:{k}".encode() for k in self.key_of.values()
                for kind in ("groups-new", "client-send", "client-kick")}
        groups = {r.group_channel(g) for gs in self.groups_of.values() for g in gs}
        return keys | groups


def check(r: Routing, m: Model) -> None:
    assert r.needed() == m.needed(r)
    assert len(r) == len(m.key_of)
    assert r.is_empty() == (not m.key_of and not any(m.groups_of.values()))
    for conn, key in m.key_of.items():
        assert r.key_channel_of(conn) == r.key_channel(key)
        assert r.groups_of(conn) == frozenset(r.group_channel(g) for g in m.groups_of.get(conn, ()))
    for channel in r.needed():
        key_conns = [c for c, k in m.key_of.items() if r.key_channel(k) == channel]
        send_kick_conns = [c for c, k in m.key_of.items()
                           if channel in (f"{PREFIX}client-send:{k}".encode(), f"{PREFIX}client-kick:{k}".encode())]
        assert list(r.conns_for_key_channel(channel) or {}) == send_kick_conns
        if send_kick_conns:
            continue
        group_conns = {c for c, gs in m.groups_of.items() if channel in {r.group_channel(g) for g in gs}}
        if key_conns:
            # Oldest first: the hub copies groups from the first sibling.
            assert list(r.conns_of_key(channel) or {}) == key_conns
            assert r.members(channel) is None
        else:
            assert r.conns_of_key(channel) is None
            assert set(r.members(channel) or {}) == group_conns


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_indexes_follow_a_simple_model(data: st.DataObject) -> None:
    r = Routing(channels=Channels(PREFIX))
    m = Model()
    next_conn = 0
    for _ in range(data.draw(st.integers(0, 40), label="steps")):
        before = m.needed(r)
        live = sorted(m.key_of)
        op = data.draw(st.sampled_from(["add", "set", "remove"] if live else ["add"]), label="op")
        if op == "add":
            next_conn += 1
            key = data.draw(KEYS, label="key")
            became = r.add(next_conn, key)
            m.key_of[next_conn] = key
            gone: list[bytes] = []
        elif op == "set":
            conn = data.draw(st.sampled_from(live), label="conn")
            groups = data.draw(GROUPS, label="groups")
            became, gone = r.set_groups(conn, frozenset(r.group_channel(g) for g in groups))
            m.groups_of[conn] = groups
        else:
            conn = data.draw(st.sampled_from(live), label="conn")
            gone, last = r.remove(conn)
            key = m.key_of.pop(conn)
            m.groups_of.pop(conn, None)
            became = []
            assert last == (key not in m.key_of.values())
        after = m.needed(r)
        assert len(became) == len(set(became)) and len(gone) == len(set(gone))
        assert set(became) == after - before
        assert set(gone) == before - after
        check(r, m)
    for conn in list(m.key_of):
        r.remove(conn)
    assert r.is_empty() and r.needed() == set()


def test_channel_names_carry_the_prefix() -> None:
    r = Routing(channels=Channels("ws-hub:"))
    assert r.key_channel("k") == b"ws-hub:groups-new:k"
    assert r.group_channel("g") == b"ws-hub:group-data:g"
    assert r.group_name(b"ws-hub:group-data:g\xff") == "g\ufffd"


class TestParseGroups:
    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=200))
    def test_never_raises_on_arbitrary_bytes(self, payload: bytes) -> None:
        result = parse_groups(payload)
        assert result is None or all(isinstance(g, str) and g for g in result)

    @settings(max_examples=300, deadline=None)
    @given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner,
                                                                                     max_size=3),
                        max_leaves=8))
    def test_never_raises_on_any_json(self, value: object) -> None:
        result = parse_groups(json.dumps(value).encode())
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            assert result == frozenset(v for v in value if v)
        elif isinstance(value, list | dict | str):
            assert result is None  # JSON, but not a list of strings

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.text(alphabet=st.characters(blacklist_characters=",", blacklist_categories=("Cs",)),
                            max_size=6).map(str.strip).filter(lambda s: not s.startswith(("[", "{", '"'))),
                    max_size=5))
    def test_comma_list(self, names: list[str]) -> None:
        assert parse_groups(",".join(names).encode()) == frozenset(n for n in names if n)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=60) | st.lists(st.text(max_size=4), max_size=3).map(
        lambda v: json.dumps(v).encode()) | st.sampled_from([b'["\\ud800"]', b'["a\\udfff"]', b'["\\ud83d"]']))
    def test_every_name_returned_makes_a_channel(self, payload: bytes) -> None:
        """What parse_groups accepts, the hub turns into channel names: that must not raise."""
        r = Routing(channels=Channels(PREFIX))
        for group in parse_groups(payload) or ():
            r.group_channel(group)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.floats(0, 100)), max_size=40), st.floats(0, 100))
def test_timers_fire_in_order_never_late(schedules: list[tuple[int, float]], now: float) -> None:
    """_timers.Timers: an owner fires at its earliest scheduled deadline, once."""
    t = Timers()
    earliest: dict[int, float] = {}
    for owner, deadline in schedules:
        t.schedule(owner, deadline)
        earliest[owner] = min(deadline, earliest.get(owner, deadline))
    if earliest:
        assert t.next_deadline() == min(earliest.values())
    due = t.pop_due(now)
    assert sorted(due) == sorted(o for o, d in earliest.items() if d <= now)
    assert len(t) == len(earliest) - len(due)
    assert t.pop_due(now) == []
