"""History on the hub's side (``_history.py``): gap repair and resume, against the memory broker's history.

The property test drives ``History`` over a real ``MemoryBroker`` whose reads
are answered when the test says (as a Redis command link answers them: in
order, at any time relative to live messages), with live entries dropped
at random (a lost subscription), interruptions announced or not, members
joining and leaving, and connections resuming from any offset. Invariant,
per member: what it receives is a contiguous run of the group's history
(each entry's predecessor is the one it got before), except right after a
``reset`` told to it; and once everything is answered, every member has
the newest entry.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from urllib.parse import quote

from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.events import RejectData

from tests.core.harness import Client, Harness, fuzz_examples, make_config
from tests.core.test_api_core import answers, api_config, api_request
from wshub_core import load_config
from wshub_core._history import History
from wshub_core._memory_broker import MemoryBroker

CHANNEL = b"ws-hub:group-data:g"


class World:
    """One group on one hub, a memory broker with history, and reads answered on demand."""

    def __init__(self, size: int) -> None:
        self.wall = 1_000_000.0
        self.memory = MemoryBroker(on_message=lambda c, p: None, on_entry=self._entry, on_history=self._answer,
                                   history=(size, 3600.0), wall=lambda: self.wall)
        self.memory.need(CHANNEL)
        self.pending: list[tuple[bytes, str, int, int]] = []
        self.drop_live = False
        self.members: set[int] = set()
        self.got: dict[int, list[tuple[str, str]]] = {}  # conn -> (offset, prev) received, and resets as ("reset", "")
        self.history = History(broker=self, page=4, on_deliver=self._deliver, on_replay=self._replay,  # type: ignore[arg-type]
                               on_reset=self._reset, clock=lambda: 0.0, group_name=lambda c: "g")
        self.prev_of: dict[str, str] = {}
        self.published: list[str] = []

    # the broker seam, as History uses it
    history_error = ""

    def is_confirmed(self, channel: bytes) -> bool:
        return True

    def read_history(self, channel: bytes, after: str, count: int, ticket: int) -> None:
        self.pending.append((channel, after, count, ticket))

    def answer_next(self) -> None:
        channel, after, count, ticket = self.pending.pop(0)
        self.memory.read_history(channel, after, count, ticket)

    def _answer(self, ticket: int, last: str, entries: list[tuple[str, str, bytes]] | None, error: str) -> None:
        for entry, prev, _ in entries or ():
            assert self.prev_of[entry] == prev
        self.history.answer(ticket, last, entries, error)

    # the hub's side
    def _entry(self, channel: bytes, offset: str, prev: str, payload: bytes) -> None:
        self.prev_of[offset] = prev
        self.published.append(offset)
        if not self.drop_live:
            self.history.live(channel, offset, prev, payload)

    def _deliver(self, channel: bytes, offset: str, payload: bytes, leave_out: Collection[int]) -> None:
        for conn in self.members:
            if conn not in leave_out:
                self.got[conn].append((offset, self.prev_of[offset]))

    def _replay(self, conn: int, channel: bytes, offset: str, payload: bytes) -> None:
        assert conn in self.members
        self.got[conn].append((offset, self.prev_of[offset]))

    def _reset(self, channel: bytes, conn: int | None, leave_out: Collection[int]) -> None:
        for member in ([conn] if conn is not None else self.members):
            if member not in leave_out:
                self.got[member].append(("reset", ""))

    def publish(self) -> None:
        self.wall += 0.0005  # two entries in one millisecond now and then: positions ms-seq
        self.memory.publish_history(CHANNEL, str(len(self.published)).encode())

    def check(self, start: dict[int, str | None]) -> None:
        """Contiguous runs only, broken by nothing but a reset; a resume starts right after its offset."""
        for conn, got in self.got.items():
            last = start[conn]
            reset = False
            for offset, prev in got:
                if offset == "reset":
                    reset = True
                    continue
                if last is not None and not reset:
                    assert prev == last, f"conn {conn}: {offset} (after {prev}) follows {last}: {got}"
                if last is not None:
                    assert offset > last or reset, f"conn {conn}: {offset} again after {last}"
                last, reset = offset, False


@settings(max_examples=fuzz_examples(300), deadline=None)
@given(st.data(), st.sampled_from([4, 1000]))
def test_every_member_gets_a_contiguous_run_of_the_history(data: st.DataObject, size: int) -> None:
    world = World(size)
    history = world.history
    start: dict[int, str | None] = {}
    next_conn = 1
    history.confirmed(CHANNEL)  # the group's first confirmation: it reads where the history ends
    for _ in range(data.draw(st.integers(10, 80))):
        op = data.draw(st.sampled_from(["publish", "publish", "publish", "drop", "resume", "interrupted",
                                        "answer", "answer", "join", "resume_join", "leave"]))
        if op == "publish":
            world.publish()
        elif op == "drop":
            world.drop_live = True
            for _ in range(data.draw(st.integers(1, 6))):
                world.publish()
            world.drop_live = False
        elif op == "interrupted":
            history.confirmed(CHANNEL)
        elif op == "answer" and world.pending:
            world.answer_next()
        elif op == "join":
            conn, next_conn = next_conn, next_conn + 1
            world.members.add(conn)
            world.got[conn] = []
            # Joined now: it gets what the group delivers from here on, so its run starts at the group's cursor.
            cursor = history._groups[CHANNEL].cursor
            start[conn] = cursor.at_text if cursor.at is not None and cursor.at_text != "0-0" else None
        elif op == "resume_join" and world.published:
            conn, next_conn = next_conn, next_conn + 1
            offset = data.draw(st.sampled_from(world.published))
            world.members.add(conn)
            world.got[conn] = []
            start[conn] = offset
            history.resume(conn, CHANNEL, offset)
        elif op == "leave" and world.members:
            conn = data.draw(st.sampled_from(sorted(world.members)))
            world.members.discard(conn)
            history.leave(conn, CHANNEL)
            start.pop(conn)
            world.got.pop(conn)
    history.confirmed(CHANNEL)  # the last drops are noticed as a resubscribe notices them
    while world.pending:
        world.answer_next()
    world.check(start)
    newest = world.published[-1] if world.published else None
    for conn, got in world.got.items():
        entries = [offset for offset, _ in got if offset != "reset"]
        if newest is not None and (entries or start[conn] is not None):
            assert (entries[-1] if entries else start[conn]) == newest, f"conn {conn} is behind: {got}"
    assert history.catching_up() == 0


# -- through the hub (memory broker): envelopes, resume, the API's offsets ----------------------------------


def memory_hub(**overrides: object) -> Harness:
    return Harness(make_config("broker: memory\nhistory:\n  enabled: true\n", **overrides))


def join(h: Harness, key: str, target: str, groups: bytes = b'["g"]') -> Client:
    client = h.connect(key, target=target)
    h.hub.broker.publish(h.channel(f"groups-new:{key}"), groups)
    h.run()
    return client


def envelopes(client: Client) -> list[dict[str, object]]:
    return [json.loads(m) for m in client.messages]


def publish(h: Harness, *payloads: bytes) -> None:
    for payload in payloads:
        h.hub.broker.publish_history(h.channel("group-data:g"), payload)
    h.run()


def since(group: str, offset: object) -> str:
    return "&since=" + quote(json.dumps({group: offset}))


class TestEnvelopes:
    def test_recover_gets_envelopes_and_a_raw_member_the_payload(self) -> None:
        h = memory_hub()
        raw = join(h, "a", "/ws?session_key=a")
        wrapped = join(h, "b", "/ws?session_key=b&recover=1")
        publish(h, b"hello")
        h.hub.broker.publish(h.channel("group-data:g"), b"\xff\x00")  # plain, binary
        h.run()
        assert raw.messages[-2:] == ["hello", b"\xff\x00"]
        got = envelopes(wrapped)
        assert got[0]["group"] == "g" and got[0]["data"] == "hello" and got[0]["binary"] is False
        assert isinstance(got[0]["offset"], str) and "-" in got[0]["offset"]
        assert got[1] == {"group": "g", "data": "/wA=", "binary": True}  # no offset: published without history

    def test_a_resume_replays_after_its_offset_then_goes_live(self) -> None:
        h = memory_hub()
        first = join(h, "a", "/ws?session_key=a&recover=1")
        publish(h, *(f"m{i}".encode() for i in range(5)))
        offsets = [e["offset"] for e in envelopes(first)]
        again = join(h, "b", "/ws?session_key=b&recover=1" + since("g", offsets[1]))
        publish(h, b"m5")
        assert [e["data"] for e in envelopes(again)] == ["m2", "m3", "m4", "m5"]
        assert 'wshub_history_resumes_total 1' in h.hub.metrics_text()

    def test_an_offset_older_than_the_history_gets_reset_first(self) -> None:
        h = memory_hub(history_size=3)
        first = join(h, "a", "/ws?session_key=a&recover=1")
        publish(h, *(f"m{i}".encode() for i in range(6)))
        oldest = envelopes(first)[0]["offset"]
        again = join(h, "b", "/ws?session_key=b&recover=1" + since("g", oldest))
        got = envelopes(again)
        assert got[0] == {"group": "g", "reset": True}
        assert [e["data"] for e in got[1:]] == ["m3", "m4", "m5"]

    def test_an_offset_the_history_never_had_gets_reset_then_live(self) -> None:
        h = memory_hub()
        join(h, "a", "/ws?session_key=a")
        publish(h, b"m0")
        again = join(h, "b", "/ws?session_key=b&recover=1" + since("g", "99999999999999-0"))
        publish(h, b"m1")
        assert [e.get("data", e.get("reset")) for e in envelopes(again)] == [True, "m1"]

    def test_without_history_a_resume_is_told_reset(self) -> None:
        h = Harness(make_config("broker: memory\n", history=False))
        c = join(h, "b", "/ws?session_key=b&recover=1" + since("g", "1-0"))
        assert envelopes(c) == [{"group": "g", "reset": True}]

    def test_bad_resume_parameters_get_400_with_the_reason(self) -> None:
        h = memory_hub()
        for query, reason in [
            ("&recover=yes", b"recover must be 1 or 0"),
            ("&since=%7B%7D", b"since needs recover=1"),
            ("&recover=1&since=nope", b"since is not JSON"),
            ("&recover=1&since=%5B%5D", b"must be a JSON object"),
            ("&recover=1" + since("g", 5), b"offset of group 'g'"),
            ("&recover=1" + since("g", "12"), b"offset of group 'g'"),
        ]:
            client = h.connect("a", target="/ws?session_key=a" + query)
            body = b"".join(bytes(e.data) for e in client.events if isinstance(e, RejectData))
            assert client.status == 400 and reason in body, (query, body)


class TestApi:
    def test_a_group_publish_answers_its_offset_and_an_idempotency_key_is_kept(self) -> None:
        h = Harness(api_config("memory", "history:\n  enabled: true\n"))
        member = join(h, "a", "/ws?session_key=a&recover=1")
        api = h.open()
        request = api_request(b"POST", b"/api/groups/g", b"hi", headers=((b"idempotency-key", b"order-17"),))
        api.send_raw(request + request + api_request(b"POST", b"/api/groups/g", b"other"))
        bodies = [json.loads(body) for status, body in answers(api) if status == 200]
        assert len(bodies) == 3 and bodies[0]["offset"] == bodies[1]["offset"] != bodies[2]["offset"]
        assert [e["data"] for e in envelopes(member)] == ["hi", "other"]  # the retry was not delivered again

    def test_an_idempotency_key_over_200_bytes_is_400(self) -> None:
        h = Harness(api_config("memory", "history:\n  enabled: true\n"))
        api = h.open()
        api.send_raw(api_request(b"POST", b"/api/groups/g", b"hi", headers=((b"idempotency-key", b"x" * 201),)))
        assert answers(api) == [(400, b'{"error": "Idempotency-Key is longer than 200 bytes"}\n')]


def test_config_history_keys_have_their_defaults() -> None:
    config = load_config("")
    assert config.history and config.history_size == 1000 and config.history_ttl == 300.0
