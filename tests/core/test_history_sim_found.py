"""Bugs in the hub's history (``_history.py``) that the whole-hub simulation (tests/sim) found, made minimal.

Each test drives ``History`` by hand over a broker that records reads and
answers them when the test says, and asserts what docs/protocol.md ("History
and resume") promises. Each failed before its fix: ``_failed`` (a failed read stays owed), ``_caught_up`` (a
read sent before the group's newest entry is sent again), ``_Group.fresh`` (an entry behind the first read's
answer is new) and ``_fill`` (an entry held during a repair is delivered though the history was trimmed past it).
"""

from __future__ import annotations

from collections.abc import Collection

from wshub_core._history import History

CHANNEL = b"ws-hub:group-data:g"


class Broker:
    """The broker seam History uses: reads are recorded, answered by the test."""

    history_error = ""

    def __init__(self) -> None:
        self.reads: list[tuple[str, int, int]] = []  # (after, count, ticket)

    def is_confirmed(self, channel: bytes) -> bool:
        return True

    def read_history(self, channel: bytes, after: str, count: int, ticket: int) -> None:
        self.reads.append((after, count, ticket))


class Group:
    """One group, its members (conn -> offsets received), and the clock."""

    def __init__(self, members: Collection[int]) -> None:
        self.broker = Broker()
        self.now = 0.0
        self.got: dict[int, list[str]] = {conn: [] for conn in members}
        self.history = History(broker=self.broker, page=1000, on_deliver=self._deliver,  # type: ignore[arg-type]
                               on_replay=self._replay, on_reset=self._reset, clock=lambda: self.now,
                               group_name=lambda c: "g")

    def _deliver(self, channel: bytes, offset: str, payload: bytes, leave_out: Collection[int]) -> None:
        for conn, got in self.got.items():
            if conn not in leave_out:
                got.append(offset)

    def _replay(self, conn: int, channel: bytes, offset: str, payload: bytes) -> None:
        self.got[conn].append(offset)

    def _reset(self, channel: bytes, conn: int | None, leave_out: Collection[int]) -> None:
        for member, got in self.got.items():
            if (conn is None or member == conn) and member not in leave_out:
                got.append("reset")

    def answer(self, last: str, entries: list[tuple[str, str, bytes]] | None, error: str = "") -> None:
        _, _, ticket = self.broker.reads.pop(0)
        self.history.answer(ticket, last, entries, error)


def test_entries_held_during_a_first_read_that_failed_are_delivered() -> None:
    g = Group([1])
    g.history.confirmed(CHANNEL)  # the first read (where the history ends) goes out on the command link ...
    g.history.live(CHANNEL, "1-0", "0-0", b"a")  # ... and live entries wait for it
    g.history.live(CHANNEL, "2-0", "1-0", b"b")
    g.answer("", None, "link lost")  # the command link dropped: the read is retried in a second
    g.history.live(CHANNEL, "3-0", "2-0", b"c")  # delivered at once: the group's position is now 3-0
    g.now = 1.0
    g.history.handle_timer(g.now)  # the retry reads after 3-0 ...
    g.answer("3-0", [])  # ... and 1-0 and 2-0, held since the start, are dropped as duplicates
    # The hub received 1-0 and 2-0 for its member; it got neither, and no reset was logged.
    assert g.got[1] == ["1-0", "2-0", "3-0"]


def test_a_resume_whose_read_ran_before_a_live_entry_gets_that_entry() -> None:
    g = Group([1])
    g.history.confirmed(CHANNEL)
    g.answer("1-0", [])  # the group starts where its history ends: 1-0
    g.got[7] = []
    g.history.resume(7, CHANNEL, "1-0")  # conn 7 had everything up to 1-0: it reads after it
    g.history.live(CHANNEL, "2-0", "1-0", b"x")  # to the members but 7, which is catching up
    g.answer("1-0", [])  # 7's read ran before 2-0 was published: nothing after 1-0
    # The group is at 2-0 now, which 7's read could not have seen: 7 reads again instead of joining at 1-0
    # (where it would never get 2-0, and be told no reset).
    assert [after for after, _, _ in g.broker.reads] == ["1-0"]
    g.history.live(CHANNEL, "3-0", "2-0", b"y")
    g.answer("3-0", [("2-0", "1-0", b"x"), ("3-0", "2-0", b"y")])
    assert g.got[1] == ["2-0", "3-0"]
    assert g.got[7] == ["2-0", "3-0"]
    assert g.history.catching_up() == 0


def test_live_entries_that_come_after_the_first_reads_answer_are_delivered() -> None:
    g = Group([1])
    g.history.confirmed(CHANNEL)  # the first read goes out on the command link; then 5-0 is published ...
    g.answer("5-0", [])  # ... and the read ran after it: the group starts at 5-0, where its history ends
    # 5-0's push was on its way on the subscriber link, behind the answer on the other link: it is new.
    g.history.live(CHANNEL, "5-0", "4-0", b"a")
    g.history.live(CHANNEL, "6-0", "5-0", b"b")
    g.history.live(CHANNEL, "6-0", "5-0", b"b")  # a duplicate once past the read's position
    assert g.got[1] == ["5-0", "6-0"]


def test_a_resume_that_joined_at_the_first_reads_position_gets_no_late_entry_twice() -> None:
    g = Group([1])
    g.history.confirmed(CHANNEL)
    g.got[7] = []
    g.history.resume(7, CHANNEL, "3-0")  # 7 had 3-0; its read goes out behind the group's
    g.answer("5-0", [])  # the group starts at 5-0 ...
    g.answer("5-0", [("4-0", "3-0", b"x"), ("5-0", "4-0", b"a")])  # ... 7 replays up to it and joins there
    g.history.live(CHANNEL, "5-0", "4-0", b"a")  # late: new to 1, which never had it; 7 has it
    g.history.live(CHANNEL, "6-0", "5-0", b"b")
    assert g.got[1] == ["5-0", "6-0"]
    assert g.got[7] == ["4-0", "5-0", "6-0"]
    assert g.history.catching_up() == 0


def test_a_live_entry_held_during_a_repair_is_delivered_when_the_history_was_trimmed_past_it() -> None:
    # Sim seed 30907: the subscriber link came back while the command link was down; a live entry arrived
    # and waited for the repair; by the time the read ran, the history had been trimmed past it.
    g = Group([1])
    g.history.confirmed(CHANNEL)
    g.answer("1-0", [])  # the group starts at 1-0
    g.history.confirmed(CHANNEL)  # the subscription was interrupted: a repair read after 1-0 goes out
    g.history.live(CHANNEL, "4-0", "3-0", b"d")  # held behind the repair
    g.answer("5-0", [("5-0", "4-0", b"e")])  # 2-0 .. 4-0 were trimmed meanwhile; the history starts at 5-0
    # 2-0 and 3-0 are gone (a reset for those with envelopes), but 4-0 came live: the hub had it in hand.
    assert g.got[1] == ["reset", "4-0", "5-0"]
