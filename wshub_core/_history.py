"""Group history on the hub's side: gap repair per group, and resume per connection, over any broker.

A message published with history (``Broker.publish_history``; Redis: the
``wshub_publish`` function) reaches the hub as an *entry*: its position (a
stream id ``ms-seq``, ordered), the position of the entry before it in the
group's history (``prev``), and the payload. The hub keeps, per group it
serves, a *cursor*: the position it delivered last.

Gap repair: a live entry E is delivered when ``E.prev <= cursor < E``
(nothing exists in between); ``E <= cursor`` is a duplicate and dropped;
otherwise entries are missing and the group reads its history after the
cursor (``Broker.read_history``, in pages), delivers what it missed in order,
then the live entries it held meanwhile, by the same rule. The same read runs
whenever the broker confirms a group's channel again (its subscription was
interrupted: a lost link, a killed subscriber, a stall, a failover). When the
history no longer holds the missing entries, the members that asked for
envelopes are told ``reset`` and delivery goes on.

Resume: a connection that arrives with an offset for a group is left out of
the group's live deliveries while it *catches up*: it reads the history after
its offset, up to the group's cursor, then joins the live deliveries exactly
there. So it gets every entry once, in order, whatever the live messages do
meanwhile; a read for it starts only once the group's channel is confirmed,
so nothing published after the read can be missed.

Rules:
1. Nothing here encodes or sends: deliveries, replays and resets go out
   through the hub's callbacks, which know members and frames.
2. Reads are coalesced: one read per (group, position) in flight, whoever
   waits for it.
3. Memory is bounded: live entries held during a repair are at most one
   page; past that they are dropped and read again from history afterwards.
   Those held are delivered even if the history was trimmed past them
   meanwhile: in order, where the read's first entry leaves a gap.
4. A read that fails is retried after ``retry`` seconds; a broker without
   history (``Broker.history_error``) ends repairs and resumes at once (a
   resume with a reset).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import cast

from ._broker import Broker
from ._timers import Timers

__all__ = ["History", "Position", "position"]

log = logging.getLogger("wshub")

Position = tuple[int, int]
ZERO: Position = (0, 0)  # the ``prev`` of a history's first entry: what came before is unknown
HUB = 0  # a read's waiter that is the group's own cursor (connection ids are positive)

Entry = tuple[Position, Position, str, bytes]  # (position, prev, position as text, payload)
OnDeliver = Callable[[bytes, str, bytes, "dict[int, _Cursor]"], None]  # (channel, offset, payload, leave out)
OnReplay = Callable[[int, bytes, str, bytes], None]  # (conn, channel, offset, payload)
# (channel, the conn, or None: every member of the group but those in the last argument, still catching up)
OnReset = Callable[[bytes, "int | None", "dict[int, _Cursor]"], None]


def position(text: str) -> Position:
    """A stream id as a comparable pair (the broker checked its shape)."""
    ms, _, seq = text.partition("-")
    return int(ms), int(seq)


class _Cursor:
    """Where one reader of a group's history is: the group itself (``HUB``) or a connection catching up."""

    __slots__ = ("at", "at_text", "reading", "held", "again", "waiting", "ahead", "first", "read_when")

    def __init__(self, at: Position | None, at_text: str) -> None:
        self.at = at  # position delivered last (None: nothing yet)
        self.at_text = at_text
        self.reading = False  # a read for it is in flight
        self.held: list[Entry] = []  # live entries that came during a repair (the group's cursor only)
        self.again = False  # held entries were dropped (over one page): read once more afterwards
        self.waiting = False  # a connection's: its read waits for the channel's confirmation
        self.ahead = False  # a connection's: it is past the group's cursor and joins when the group gets there
        self.first = True  # the next answer is the first page of this catch-up or repair
        self.read_when: Position | None = None  # a connection's: the group's cursor when its read went out


class _Group:
    __slots__ = ("cursor", "catching", "fresh")

    def __init__(self) -> None:
        self.cursor = _Cursor(None, "")
        self.catching: dict[int, _Cursor] = {}  # conn -> its cursor, while it catches up
        # Set while the cursor was taken from a read, not from a delivery, and no live entry came since: a
        # live entry at or before it was published after the SUBSCRIBE and before that read ran, and its push
        # came after the read's answer (two links). The group never delivered it: it is new to every member
        # but the connections here, which joined since and had it from their own read.
        self.fresh: dict[int, _Cursor] | None = None


class History:
    """The hub's history part: every group's cursor, repairs, and connections catching up."""

    def __init__(self, *, broker: Broker, page: int, on_deliver: OnDeliver, on_replay: OnReplay,
                 on_reset: OnReset, clock: Callable[[], float], group_name: Callable[[bytes], str],
                 retry: float = 1.0) -> None:
        """``page``: entries per read; ``clock``: the hub's latest input time (answers arrive without one);
        ``group_name``: a group channel's group, for logs (``Channels.group_name``)."""
        self._group_name = group_name
        self._broker = broker
        self._page = page
        self._on_deliver = on_deliver
        self._on_replay = on_replay
        self._on_reset = on_reset
        self._clock = clock
        self._retry = retry
        self._groups: dict[bytes, _Group] = {}
        self._reads: dict[int, tuple[bytes, str, list[int]]] = {}  # ticket -> (channel, after, waiters)
        self._open: dict[tuple[bytes, str], int] = {}  # (channel, after) -> the ticket of the read in flight
        self._next_ticket = 0
        self._timers = Timers()  # (channel, waiter): retry a failed read
        self.duplicates = 0  # live entries dropped because they were delivered already
        self.repairs = 0  # reads made for a gap or an interrupted subscription
        self.resets = 0  # resets told: entries the history no longer held (a group's, or a resume's)
        self.resumes = 0  # connections that caught up from history
        self.repaired = 0  # entries a repair read delivered (they had not come live)

    # -- the hub's inputs ---------------------------------------------------------------

    def live(self, channel: bytes, offset: str, prev: str, payload: bytes) -> None:
        """An entry arrived on a group's channel (the hub checked it has members)."""
        group = self._groups.get(channel)
        if group is None:
            group = self._groups[channel] = _Group()
        entry = (position(offset), position(prev), offset, payload)
        cursor = group.cursor
        if cursor.reading:
            if len(cursor.held) < self._page:
                cursor.held.append(entry)
            else:
                cursor.again = True  # it is in the history: read again once this repair is done
            return
        self._accept(channel, group, entry, repaired=False)

    def confirmed(self, channel: bytes) -> None:
        """The broker confirmed a group's ``channel`` (again): repair what an interruption may have cost.

        The first time, the group reads where its history ends (after the
        confirmation, so every later entry comes live): an interruption
        before its first live entry is then repaired from there.
        """
        group = self._groups.get(channel)
        if group is None:
            group = self._groups[channel] = _Group()
        cursor = group.cursor
        group.fresh = None  # an entry held up behind the read's answer came before the interruption or is lost
        if cursor.reading:
            cursor.again = True  # the read in flight may have run before this interruption ended: once more
        else:
            if cursor.at is not None:
                self.repairs += 1
            self._read(channel, group, HUB)
        for conn, waiting in list(group.catching.items()):
            if waiting.waiting:
                waiting.waiting = False
                self._read(channel, group, conn)

    def resume(self, conn: int, channel: bytes, offset: str) -> None:
        """``conn`` just joined the group of ``channel`` and had received everything up to ``offset``."""
        group = self._groups.get(channel)
        if group is None:
            group = self._groups[channel] = _Group()
        cursor = _Cursor(position(offset), offset)
        group.catching[conn] = cursor
        if self._broker.history_error:
            self._give_up(channel, group, conn)
        elif self._broker.is_confirmed(channel):
            self._read(channel, group, conn)
        else:
            cursor.waiting = True

    def leave(self, conn: int, channel: bytes) -> None:
        """``conn`` left the group (or the hub) before it caught up."""
        group = self._groups.get(channel)
        if group is not None and group.catching.pop(conn, None) is not None:
            self._timers.cancel((channel, conn))

    def release(self, channel: bytes) -> None:
        """The hub no longer serves the group: forget its cursor (reads still in flight are ignored)."""
        group = self._groups.pop(channel, None)
        if group is not None:
            self._timers.cancel((channel, HUB))
            for conn in group.catching:
                self._timers.cancel((channel, conn))

    def answer(self, ticket: int, last: str, entries: list[tuple[str, str, bytes]] | None, error: str) -> None:
        """The broker's answer to a read: the history's last position ("" none) and the entries after ``after``."""
        read = self._reads.pop(ticket, None)
        if read is None:
            return
        channel, after, waiters = read
        self._open.pop((channel, after), None)
        parsed = [(position(e[0]), position(e[1]), e[0], e[2]) for e in entries or ()]
        for waiter in waiters:
            group = self._groups.get(channel)
            if group is None:
                return
            cursor = group.cursor if waiter == HUB else group.catching.get(waiter)
            if cursor is None or not cursor.reading or _read_key(cursor, self._page) != after:
                continue  # it left, or was released and came back: this read is not its
            cursor.reading = False
            if entries is None:
                self._failed(channel, group, waiter, error)
            elif waiter == HUB:
                self._repaired(channel, group, last, parsed)
            else:
                self._caught_up(channel, group, waiter, cursor, last, parsed)

    def handle_timer(self, now: float) -> None:
        """Retry the reads that failed."""
        for owner in self._timers.pop_due(now):
            channel, waiter = cast("tuple[bytes, int]", owner)
            group = self._groups.get(channel)
            if group is None:
                continue
            if waiter == HUB or waiter in group.catching:
                self._read(channel, group, waiter)  # a failed read is owed until then: nothing else sent it

    def next_deadline(self) -> float | None:
        """The earliest retry."""
        return self._timers.next_deadline()

    def catching_up(self) -> int:
        """Connections still catching up from history."""
        return sum(len(group.catching) for group in self._groups.values())

    # -- internals ------------------------------------------------------------------------

    def _accept(self, channel: bytes, group: _Group, entry: Entry, *, repaired: bool) -> None:
        """The group's rule for one entry; ``repaired``: it came from a read, so a gap now is a loss, not a read."""
        cursor = group.cursor
        at = cursor.at
        if at is not None:
            if entry[0] <= at:
                if group.fresh is not None and not repaired:
                    self._on_deliver(channel, entry[2], entry[3], {**group.catching, **group.fresh})
                    return
                self.duplicates += 1
                return
            if entry[1] > at:
                if not repaired:
                    cursor.held.append(entry)
                    self.repairs += 1
                    self._read(channel, group, HUB)
                    return
                self._lost(channel, group, f"the history holds nothing between {cursor.at_text} and {entry[2]}")
        cursor.at, cursor.at_text = entry[0], entry[2]
        group.fresh = None  # past the read's position: what the pushes bring from now on is newer
        self._on_deliver(channel, entry[2], entry[3], group.catching)
        if group.catching:
            self._ahead(channel, group, entry)

    def _ahead(self, channel: bytes, group: _Group, entry: Entry) -> None:
        """Connections waiting for the group's cursor to reach theirs: join at this entry, or catch up again."""
        for conn, other in list(group.catching.items()):
            if not other.ahead or other.at is None or entry[0] < other.at:
                continue
            other.ahead = False
            if entry[0] == other.at:
                self._join(group, conn)  # it had this one: a member like the others from the next on
            elif entry[1] <= other.at:
                self._on_replay(conn, channel, entry[2], entry[3])
                self._join(group, conn)
            else:
                self._read(channel, group, conn)  # the group went past it with entries it has not seen

    def _read(self, channel: bytes, group: _Group, waiter: int) -> None:
        """Ask for the entries after the waiter's position (the group's first read: none, only where it ends)."""
        cursor = group.cursor if waiter == HUB else group.catching[waiter]
        cursor.reading = True
        cursor.read_when = group.cursor.at
        count = self._page if cursor.at is not None else 0
        after = cursor.at_text if cursor.at is not None else "0-0"
        key = (channel, f"{after}/{count}")
        ticket = self._open.get(key)
        if ticket is not None:
            self._reads[ticket][2].append(waiter)
            return
        self._next_ticket += 1
        ticket = self._next_ticket
        self._open[key] = ticket
        self._reads[ticket] = (channel, key[1], [waiter])
        self._broker.read_history(channel, after, count, ticket)  # the memory broker answers in this call

    def _failed(self, channel: bytes, group: _Group, waiter: int, error: str) -> None:
        """A read failed: still owed, so live entries keep waiting for it (held), and it goes out again soon."""
        if self._broker.history_error:
            self._give_up(channel, group, waiter)
            return
        (group.cursor if waiter == HUB else group.catching[waiter]).reading = True
        log.warning("history read for group %s failed: %s; retrying in %gs", self._group_name(channel), error,
                    self._retry, extra={"event": "history_read_failed", "reason": error})
        self._timers.schedule((channel, waiter), self._clock() + self._retry)

    def _give_up(self, channel: bytes, group: _Group, waiter: int) -> None:
        """The broker has no history: a repair delivers what it held; a resume is told reset and joins."""
        if waiter == HUB:
            held, group.cursor.held = group.cursor.held, []
            for entry in held:
                self._accept(channel, group, entry, repaired=True)
            return
        self.resets += 1
        self._on_reset(channel, waiter, {})
        group.catching.pop(waiter, None)

    def _lost(self, channel: bytes, group: _Group, why: str) -> None:
        self.resets += 1
        log.warning("group %s lost messages: %s; members with envelopes are told reset", self._group_name(channel), why,
                    extra={"event": "history_gap", "reason": why})
        self._on_reset(channel, None, group.catching)

    def _repaired(self, channel: bytes, group: _Group, last: str, entries: list[Entry]) -> None:
        """A page of the group's repair: deliver it; at the end, the entries held meanwhile."""
        cursor = group.cursor
        if cursor.at is None:
            # The first read (where the history ends): what came live meanwhile is all new; else start there.
            held, cursor.held = cursor.held, []
            if not held:
                cursor.at, cursor.at_text = (position(last), last) if last else (ZERO, "0-0")
                group.fresh = {}
            self._held(channel, group, held, repaired=False)  # a gap among them is read, as a live one is
            if cursor.reading:
                return
            if cursor.again:
                cursor.again = False
                self._read(channel, group, HUB)
            return
        if cursor.first and entries and entries[0][1] == ZERO and cursor.at != ZERO:
            self._lost(channel, group, f"the history began again ({entries[0][2]}) after {cursor.at_text}")
            cursor.at, cursor.at_text = ZERO, "0-0"  # every entry of the new history is new
        cursor.first = False
        for entry in entries:
            if cursor.held and cursor.at is not None and entry[1] > cursor.at:
                self._fill(channel, group, entry[0])
            if cursor.at is None or entry[0] > cursor.at:
                self.repaired += 1
            self._accept(channel, group, entry, repaired=True)
        if len(entries) >= self._page:
            self._read(channel, group, HUB)  # the next page, from the last entry delivered
            return
        cursor.first = True
        held, cursor.held = cursor.held, []
        self._held(channel, group, held, repaired=True)
        if cursor.again:
            cursor.again = False
            self._read(channel, group, HUB)
        elif group.catching:
            self._settle(channel, group)

    def _fill(self, channel: bytes, group: _Group, before: Position) -> None:
        """The history no longer holds what comes before ``before``: deliver the live entries held meanwhile
        that fall in that gap (the hub has them in hand: trimmed from the history is not lost to members)."""
        cursor = group.cursor
        keep: list[Entry] = []
        for entry in cursor.held:
            if cursor.at is not None and cursor.at < entry[0] < before:
                self._accept(channel, group, entry, repaired=True)
            else:
                keep.append(entry)
        cursor.held = keep

    def _held(self, channel: bytes, group: _Group, held: list[Entry], *, repaired: bool) -> None:
        """The live entries held during a read, by the group's rule; the rest held again if one starts a read."""
        cursor = group.cursor
        for i, entry in enumerate(held):
            if cursor.reading:
                cursor.held.extend(held[i:])
                return
            self._accept(channel, group, entry, repaired=repaired)

    def _settle(self, channel: bytes, group: _Group) -> None:
        """The group's repair is over: a connection that waited for its cursor joins there, or reads on."""
        at = group.cursor.at
        for conn, other in list(group.catching.items()):
            if other.ahead and at is not None and other.at is not None and other.at <= at:
                other.ahead = False
                if other.at == at:
                    self._join(group, conn)
                else:
                    self._read(channel, group, conn)

    def _caught_up(self, channel: bytes, group: _Group, conn: int, cursor: _Cursor, last: str,
                   entries: list[Entry]) -> None:
        """A page of a connection's catch-up: replay up to the group's cursor, then join it there."""
        assert cursor.at is not None
        first, cursor.first = cursor.first, False
        if entries:  # on every page: the history may have been trimmed past this position between two pages
            gap = entries[0][1] > cursor.at or (first and entries[0][1] == ZERO and cursor.at != ZERO)
        else:
            gap = first and (not last or position(last) < cursor.at)
        if gap:
            self.resets += 1
            self._on_reset(channel, conn, {})
            if not entries:
                if not last:  # no history at all: it is a member like the others from now on
                    self._join(group, conn)
                    return
                cursor.at, cursor.at_text = position(last), last  # from the history's end
        hub = group.cursor
        before = cursor.at
        for entry in entries:
            if entry[0] <= cursor.at:
                continue
            if hub.at is not None and entry[0] > hub.at:
                break  # the group has not delivered it yet: it will, to this connection too
            self._on_replay(conn, channel, entry[2], entry[3])
            cursor.at, cursor.at_text = entry[0], entry[2]
        else:
            if len(entries) >= self._page:
                self._read(channel, group, conn)
                return
        if hub.at is None or hub.reading:
            if hub.at is None and not hub.reading:
                # The group delivered nothing since its channel was confirmed, which was before this read: all
                # after the history's end comes live. The group's cursor starts where this one is.
                hub.at, hub.at_text = cursor.at, cursor.at_text
                group.fresh = {}
                self._join(group, conn)
            else:
                cursor.ahead = True  # the group is reading: join when its cursor gets here (``_ahead``)
            return
        if cursor.at < hub.at and (cursor.at != before or cursor.read_when != hub.at):
            # The read ran before the group's newest entries were in it; one sent now has them (unless the
            # history lost them: then a read that moves nothing while the group stood still ends it).
            self._read(channel, group, conn)
            return
        if cursor.at > hub.at:
            cursor.ahead = True
            return
        self._join(group, conn)

    def _join(self, group: _Group, conn: int) -> None:
        self.resumes += 1
        cursor = group.catching.pop(conn, None)
        if group.fresh is not None and cursor is not None:
            group.fresh[conn] = cursor  # it read the entries up to the group's cursor: none again


def _read_key(cursor: _Cursor, page: int) -> str:
    """What ``_read`` calls the read it made for ``cursor`` (a position and a count)."""
    return f"{cursor.at_text}/{page}" if cursor.at is not None else "0-0/0"
