"""Redis Sentinel: which sentinel to ask, the sentinel link's session, and the master it named.

The broker composes one ``Sentinels``: it dials ``address()`` as one more link
(role ``sentinel``), and this module turns what that link says into the
master's address. The sentinel link's life after its prelude:

```
READY ─(ask)─▶ ASKING ─(address)─▶ SUBSCRIBING ─(subscribe confirmed)─▶ WATCHING
                  ▲                                                         │
                  └────────────(a data link needs a fresh address: ask)─────┘
```

``ask`` pipelines ``SENTINEL get-master-addr-by-name NAME`` and
``SUBSCRIBE +switch-master`` (behind an ``UNSUBSCRIBE`` when already
subscribed: a RESP2 connection in pub/sub mode takes no other command), so
one link both answers and watches. Every ``+switch-master`` for our master
while subscribed is an event.

Rules:
1. Nothing a sentinel sends raises: an unexpected reply sets ``broken`` and
   the broker drops the link and tries the next sentinel.
2. An address is *fresh* for a data link only if it was named after that link
   went down: a reconnect never redials a cached address (the master may have
   failed over meanwhile); it asks again.
3. Sentinels are tried in turn; the backoff spaces whole rounds, not each one.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass

import hiredis

from ._logs import host_port
from ._redis import Backoff, RedisSession, RedisState, pack

__all__ = ["MasterAddress", "SentinelPhase", "SentinelSession", "Sentinels"]

_SWITCH = b"+switch-master"


class SentinelPhase(enum.Enum):
    """Where a READY sentinel link is (before READY it is ``IDLE``)."""

    IDLE = "idle"  # prelude not answered yet, or nothing asked
    ASKING = "asking"  # get-master-addr-by-name sent, its answer owed
    SUBSCRIBING = "subscribing"  # address known, SUBSCRIBE +switch-master not confirmed yet
    WATCHING = "watching"  # subscribed: a failover reaches us as +switch-master


@dataclass(frozen=True, slots=True, kw_only=True)
class MasterAddress:
    """A sentinel named the master: in answer to ``ask`` (``switched`` False) or in a ``+switch-master``."""

    host: str
    port: int
    switched: bool


class SentinelSession(RedisSession):
    """The sentinel link: ask for the master, then watch ``+switch-master``."""

    __slots__ = ("phase", "_master_name", "_owed", "_subscribed")

    def __init__(self, *, backoff: Backoff, username: str, password: str, healthy_after: float,
                 master_name: str) -> None:
        super().__init__(backoff=backoff, username=username, password=password, healthy_after=healthy_after)
        self.phase = SentinelPhase.IDLE
        self._master_name = master_name.encode()
        self._owed: deque[str] = deque()  # the replies owed, in order: "unsubscribe", "address", "subscribe", "pong"
        self._subscribed = False  # a SUBSCRIBE was sent last on this connection: no command but (UN)SUBSCRIBE/PING

    def connected(self, now: float) -> bytes:
        """TCP is up: the prelude (AUTH with the sentinel's password, else PING)."""
        self._reset()
        return super().connected(now)

    def lost(self, now: float) -> None:
        """The link is gone: what was asked on it will never be answered."""
        super().lost(now)
        self._reset()

    def _reset(self) -> None:
        self.phase = SentinelPhase.IDLE
        self._owed.clear()
        self._subscribed = False

    def ask(self, now: float) -> bytes:
        """The commands that ask for the master's address and (re)subscribe to ``+switch-master``."""
        commands = []
        if self._subscribed:
            commands.append(pack(b"UNSUBSCRIBE", _SWITCH))
            self._owed.append("unsubscribe")
        commands += [pack(b"SENTINEL", b"get-master-addr-by-name", self._master_name), pack(b"SUBSCRIBE", _SWITCH)]
        self._owed += ("address", "subscribe")
        self._subscribed = True
        self.phase = SentinelPhase.ASKING
        if self.waiting_since is None:
            self.waiting_since = now
        return b"".join(commands)

    def ping(self, now: float) -> bytes:
        """An idle ping: in pub/sub mode answered by a ``pong`` push, else ``+PONG``."""
        self._owed.append("pong")
        if self.waiting_since is None:
            self.waiting_since = now
        return pack(b"PING")

    def feed(self, data: bytes, now: float) -> list[MasterAddress]:
        """The masters named in ``data``; ``broken`` is set on anything a sentinel would not send."""
        out: list[MasterAddress] = []
        for reply in self._replies(data, now):
            if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
                if self.phase is not SentinelPhase.WATCHING and self.phase is not SentinelPhase.SUBSCRIBING:
                    continue  # a switch that crossed our UNSUBSCRIBE: the answer to the ask is newer
                switched = self._switch(reply)
                if switched is not None:
                    out.append(switched)
                if self.broken:
                    break
                continue
            if not self._owed:
                self.broken = f"unexpected reply on the sentinel link: {reply!r}"[:200]
                break
            owed = self._owed.popleft()
            if owed == "address":
                named = self._address(reply)
                if named is None:
                    break
                out.append(named)
                self.phase = SentinelPhase.SUBSCRIBING
            elif owed == "pong":
                if reply != b"PONG" and reply != [b"pong", b""]:
                    self.broken = f"unexpected answer to PING on the sentinel link: {reply!r}"[:200]
                    break
            elif not (isinstance(reply, list) and len(reply) == 3 and reply[0] == owed.encode()
                      and reply[1] == _SWITCH):
                self.broken = f"unexpected answer to {owed.upper()} on the sentinel link: {reply!r}"[:200]
                break
            elif owed == "subscribe" and self.phase is SentinelPhase.SUBSCRIBING:
                self.phase = SentinelPhase.WATCHING
        if not self._prelude_pending:
            self.waiting_since = (now if self._owed else None)
        return out

    def _address(self, reply: object) -> MasterAddress | None:
        """The answer to get-master-addr-by-name, or None (and ``broken``) if it names no master."""
        name = self._master_name.decode(errors="replace")
        if reply is None:
            self.broken = f"this sentinel monitors no master named {name!r}"
        elif isinstance(reply, hiredis.ReplyError):
            self.broken = f"SENTINEL get-master-addr-by-name failed: {reply}"[:200]
        else:
            parsed = _host_port(reply)
            if parsed is not None:
                return MasterAddress(host=parsed[0], port=parsed[1], switched=False)
            self.broken = f"unreadable master address from the sentinel: {reply!r}"[:200]
        return None

    def _switch(self, reply: list[object]) -> MasterAddress | None:
        """``+switch-master`` says ``NAME OLD-IP OLD-PORT NEW-IP NEW-PORT``; None if it is another master's."""
        payload = reply[2]
        parts = payload.split() if reply[1] == _SWITCH and isinstance(payload, bytes) else []
        if len(parts) != 5:
            self.broken = f"unexpected message on the sentinel link: {reply!r}"[:200]
            return None
        if parts[0] != self._master_name:
            return None
        parsed = _host_port(parts[3:])
        if parsed is None:
            self.broken = f"unreadable +switch-master from the sentinel: {payload!r}"[:200]
            return None
        return MasterAddress(host=parsed[0], port=parsed[1], switched=True)


def _host_port(reply: object) -> tuple[str, int] | None:
    """``[host, port]`` as bulk strings (how a sentinel names an instance), or None."""
    if not (isinstance(reply, list) and len(reply) == 2 and all(isinstance(p, bytes) for p in reply)):
        return None
    host_bytes, port_bytes = reply
    assert isinstance(host_bytes, bytes) and isinstance(port_bytes, bytes)
    if not host_bytes or not port_bytes.isdigit() or not 0 < int(port_bytes) < 65536:
        return None
    try:
        host = host_bytes.decode("ascii")
    except UnicodeDecodeError:
        return None
    return host, int(port_bytes)


class Sentinels:
    """The sentinels to try in turn, the session of the link to the current one, and the master it named."""

    __slots__ = ("session", "master", "_addresses", "_index", "_round_start", "_generation", "_down_at")

    def __init__(self, *, addresses: tuple[tuple[str, int], ...], session: SentinelSession) -> None:
        self.session = session
        self.master: tuple[str, int] | None = None  # the latest address a sentinel named
        self._addresses = addresses
        self._index = 0  # the sentinel dialled (or to dial) now
        self._round_start = 0  # the first sentinel of the round of failures now running
        self._generation = 0  # how many times a sentinel named the master
        self._down_at: dict[Hashable, int] = {}  # a data link's role -> the generation when it went down

    def address(self) -> tuple[str, int]:
        """The sentinel to dial."""
        return self._addresses[self._index]

    def where(self) -> str:
        """The current sentinel, as logs and /readyz name it."""
        return host_port(*self.address())

    def failed(self) -> bool:
        """The current sentinel failed: move to the next; True if a whole round failed (back off)."""
        self._index = (self._index + 1) % len(self._addresses)
        return self._index == self._round_start

    def named(self, master: MasterAddress) -> None:
        """A sentinel named the master: the address is fresh for every data link down until now."""
        self._round_start = self._index  # this one answers: the next round of failures starts here
        self._generation += 1
        self.master = (master.host, master.port)

    def went_down(self, role: Hashable) -> None:
        """A data link went down: it may dial again only an address named after this."""
        self._down_at[role] = self._generation

    def fresh(self, role: Hashable) -> bool:
        """A master address was named since ``role`` went down (or it never dialled)."""
        return self.master is not None and self._generation > self._down_at.get(role, 0)

    @property
    def watching(self) -> bool:
        """The link is up and subscribed to ``+switch-master``: a failover will reach us."""
        return self.session.state is RedisState.READY and self.session.phase is SentinelPhase.WATCHING

    @property
    def asking(self) -> bool:
        """An answer to ``ask`` is owed (asking again now would be a second question)."""
        return self.session.phase is SentinelPhase.ASKING
