"""The Redis broker: two links (subscriber, commands) to one Redis server, found through Sentinel or not.

It owns each link's whole life (dial, prelude, reply deadline, idle ping,
backoff) and its deadlines, turns the hub's needs into SUBSCRIBE/UNSUBSCRIBE
on the subscriber link and its publishes into pipelined PUBLISHes on the
command link, and tells the hub what came back through the ``Broker``
callbacks. RESP lives in ``_redis.py``; nothing here knows a WebSocket client.

Rules:
1. A link is up only once Redis answered its prelude (``RedisState.READY``);
   ``ready`` also waits for every needed channel to be confirmed.
2. One log line per failed attempt, naming the link, the address and what
   failed; the backoff spaces them.
3. Nothing Redis sends raises out of here: a broken link is closed and
   redialled.
4. Every dial is a new link id (``OpenLink``); each role (``RedisLink``) has
   at most one current id, from its dial until it is lost or closed. Input for
   any other id is stale and changes nothing.
5. Sentinel mode (``_sentinel.py``) adds a third link, to a sentinel: the data
   links dial only a master address named after they went down, check it with
   ROLE in their prelude, and both move at once on ``+switch-master``.
6. In every mode the subscriber link must deliver the probe the command link
   publishes to it (``_probe.py``), or it is dropped as stalled.
7. History (``history.enabled``): the command link loads the ``wshub``
   function library each time it comes up (``_redis_history.py``); a Redis
   that refuses it is said so once, and the broker runs without history
   (``history_error``). Envelopes on a subscribed channel are entries
   (``on_entry``), every other message is a message (``on_message``).
"""

from __future__ import annotations

import enum
import logging

from ._actions import Action, CloseLink, OpenLink, SendToLink
from ._broker import OnConfirmed, OnEntry, OnHistory, OnMessage, OnPresence, OnPublished, OnPublisherBack
from ._channels import Channels
from ._config import Config
from ._logs import host_port
from ._metrics import Sample
from ._probe import Probe
from ._redis import (
    Backoff,
    CommandSession,
    Confirmed,
    PubMessage,
    RedisSession,
    RedisState,
    SubscriberSession,
    Unsubscribed,
)
from ._redis_history import MAGIC, answer_read, library, parse_envelope, publish_args, read_args
from ._redis_presence import RedisPresence
from ._sentinel import MasterAddress, Sentinels, SentinelSession
from ._timers import Timers

__all__ = ["RedisBroker", "RedisLink"]

log = logging.getLogger("wshub")

_PRESENCE = "presence"  # timer owner of the presence refresh


class RedisLink(enum.Enum):
    """A link's role in this broker: its name in logs, ``link_states()`` and the ``link`` metric label.

    Actions never carry it: the shell knows a link only by its id, so another
    broker (a shard per link, say) needs no new action type.
    """

    SUBSCRIBER = "subscriber"
    COMMANDS = "commands"
    SENTINEL = "sentinel"  # sentinel mode: the link that names the master and watches +switch-master


_PROBE = "probe"  # the probe's owner in the broker's timers (the links' owners are their roles)
# History's tickets on the command link: far above the API's (which count up from 1); the first loads the library.
_HISTORY_TICKETS = 1 << 60
_LOAD = _HISTORY_TICKETS


class RedisBroker:
    """``Broker`` over one Redis server: ``redis.address``, or the master the sentinels there name."""

    def __init__(self, *, config: Config, seed: int, sink: list[Action], on_message: OnMessage,
                 on_confirmed: OnConfirmed, on_publisher_back: OnPublisherBack,
                 on_published: OnPublished | None = None, channels: Channels | None = None,
                 on_presence: OnPresence | None = None, on_entry: OnEntry | None = None,
                 on_history: OnHistory | None = None) -> None:
        """``seed`` feeds the reconnect jitter (a test can replay it) and names this hub's presence entries;
        ``sink`` is the hub's action list; ``on_entry`` and ``on_history`` are history's (entries, reads)."""
        self._on_entry = on_entry
        self._on_history = on_history
        self._library = library(size=config.history_size, ttl=config.history_ttl) if config.history else b""
        self._history_error = "" if config.history else "history.enabled is false"
        self._history_reads: dict[int, int] = {}  # internal ticket -> the caller's
        self._history_ticket = _HISTORY_TICKETS
        self._config = config
        self._on_published = on_published
        self._sink = sink
        self._on_message = on_message
        self._on_confirmed = on_confirmed
        self._on_publisher_back = on_publisher_back
        self._timeout = config.redis_timeout
        # A link counts as healthy (its backoff starts over) once it stayed up for reconnectMax.
        self._sub = SubscriberSession(
            backoff=Backoff(minimum=config.reconnect_min, maximum=config.reconnect_max, seed=seed),
            username=config.redis_username,
            password=config.redis_password,
            healthy_after=config.reconnect_max,
        )
        self._cmd = CommandSession(
            backoff=Backoff(minimum=config.reconnect_min, maximum=config.reconnect_max, seed=seed + 1),
            username=config.redis_username,
            password=config.redis_password,
            db=config.redis_db,
            healthy_after=config.reconnect_max,
        )
        self._sessions: dict[RedisLink, RedisSession] = {
            RedisLink.SUBSCRIBER: self._sub,
            RedisLink.COMMANDS: self._cmd,
        }
        self._seed = seed
        self._sentinels: Sentinels | None = None
        if config.redis_mode == "sentinel":
            self._sentinels = Sentinels(addresses=config.redis_sentinels, session=SentinelSession(
                backoff=Backoff(minimum=config.reconnect_min, maximum=config.reconnect_max, seed=seed + 2),
                username=config.redis_sentinel_username,
                password=config.redis_sentinel_password,
                healthy_after=config.reconnect_max,
                master_name=config.redis_master_name,
            ))
            self._sessions[RedisLink.SENTINEL] = self._sentinels.session
            self._sub.require_master()  # a sentinel's answer may be stale by the time we dial it
            self._cmd.require_master()
        self._probe = Probe(prefix=config.channel_prefix.encode(), interval=config.redis_probe_interval)
        self.stalls = 0  # subscriber links dropped because a probe did not come back in time
        self._last_link = 0  # the latest link id handed out: every dial takes the next one
        self._link_of: dict[RedisLink, int] = {}  # each role's current link (dialling or open)
        self._role_of: dict[int, RedisLink] = {}  # the same, inverted: link input for any other id is stale
        self._needed: set[bytes] = set()  # resubscribed after every reconnect
        self._patterns: set[bytes] = set()  # PSUBSCRIBEd (and again after every reconnect)
        self._link_errors: dict[RedisLink, str] = {}  # why each role's link that is not up went down
        self._timers = Timers()
        self._buffered_peak = 0  # highest buffered_bytes seen: wshub_redis_buffered_bytes_max
        self.now = 0.0  # time of the latest link input: the hub builds its output at the latest of its parts
        self.reconnects = 0  # links lost after being ready
        self.publish_errors = 0
        self._on_presence = on_presence
        self._presence: RedisPresence | None = None
        if config.presence:
            self._presence = RedisPresence(channels=channels or Channels(config.channel_prefix),
                                           hub_id=f"{seed:08x}", timeout=config.presence_timeout,
                                           command=self._cmd.command, on_presence=self._presence_answer)

    # -- the hub's requests --------------------------------------------------------

    def start(self, now: float) -> None:
        """Dial both links (sentinel mode: the sentinel link; the data links once it named the master)."""
        self._probe.start(seed=self._seed, now=now)
        if self._sentinels is not None:
            self._dial(RedisLink.SENTINEL, now)
        else:
            for role in self._sessions:
                self._dial(role, now)
        if self._presence is not None:
            self._timers.schedule(_PRESENCE, now + self._config.presence_timeout / 3)

    def need(self, channel: bytes) -> None:
        """Subscribe ``channel`` (now, or when the subscriber link is back)."""
        self._needed.add(channel)
        self._sub.want(channel)

    def release(self, channel: bytes) -> None:
        """Unsubscribe ``channel``."""
        self._needed.discard(channel)
        self._sub.unwant(channel)

    def need_prefix(self, prefix: bytes) -> None:
        """PSUBSCRIBE ``prefix*``, the prefix escaped so that it matches literally."""
        pattern = _glob_literal(prefix) + b"*"
        self._patterns.add(pattern)
        self._sub.want_pattern(pattern)

    def release_prefix(self, prefix: bytes) -> None:
        """PUNSUBSCRIBE ``prefix*``."""
        pattern = _glob_literal(prefix) + b"*"
        self._patterns.discard(pattern)
        self._sub.unwant_pattern(pattern)

    def is_confirmed(self, channel: bytes) -> bool:
        """Redis acknowledged the latest SUBSCRIBE of ``channel``."""
        return self._sub.is_confirmed(channel)

    def publish(self, channel: bytes, payload: bytes, *, resend: bool = True, ticket: int = 0) -> None:
        """Queue a PUBLISH on the command link (resent in order after a reconnect unless ``resend=False``).

        A ticket is confirmed (``on_published``) when Redis answers the PUBLISH, after any resend.
        """
        self._cmd.publish(channel, payload, resend=resend, ticket=ticket)

    def publish_history(self, channel: bytes, payload: bytes, *, message_id: bytes = b"", ticket: int = 0) -> None:
        """``FCALL wshub_publish`` (resent in order after a reconnect, as a PUBLISH is); a PUBLISH without history."""
        if self._history_error:
            self._cmd.publish(channel, payload, ticket=ticket)
            return
        self._cmd.command(*publish_args(channel, payload, message_id), ticket=ticket)

    def read_history(self, channel: bytes, after: str, count: int, ticket: int) -> None:
        """``FCALL_RO wshub_read``; dropped, not resent, at a lost link (its reader asks again)."""
        if self._history_error:
            if self._on_history is not None:
                self._on_history(ticket, "", None, self._history_error)
            return
        self._history_ticket += 1
        self._history_reads[self._history_ticket] = ticket
        self._cmd.command(*read_args(channel, after, count), resend=False, ticket=self._history_ticket)

    @property
    def history_error(self) -> str:
        """"" while the function library is loaded (or being loaded); else why there is no history."""
        return self._history_error

    def _load_library(self) -> None:
        self._cmd.command(b"FUNCTION", b"LOAD", b"REPLACE", self._library, resend=False, ticket=_LOAD)

    def _history_reply(self, ticket: int, error: str, reply: object) -> None:
        """The library's load, or a read's answer, or either dropped at a lost link."""
        if ticket == _LOAD:
            if error and error != "link lost" and not self._history_error:
                self._history_error = f"Redis refused FUNCTION LOAD: {error}"
                log.warning("history is off: %s (group messages are delivered, but not kept, repaired or "
                            "replayed)", self._history_error, extra={"event": "history_off", "reason": error})
            return
        caller = self._history_reads.pop(ticket, 0)
        if "Function not found" in error:
            self._load_library()  # flushed (FUNCTION FLUSH, a failover to an instance without it): load again
        if self._on_history is not None:
            answer_read(self._on_history, caller, error, reply)

    def presence_set(self, group: str, key: str, count: int) -> None:
        """Written at the next flush, coalesced per group (``_redis_presence.py``)."""
        if self._presence is not None:
            self._presence.set(group, key, count)

    def presence_query(self, group: str, ticket: int) -> None:
        """A script reads every live hub's counts; answered when Redis replies."""
        if self._presence is None:
            self._presence_answer(ticket, None, "presence is off")
        else:
            self._presence.query(group, ticket)

    def _presence_answer(self, ticket: int, counts: dict[str, int] | None, error: str) -> None:
        if self._on_presence is not None:
            self._on_presence(ticket, counts, error)

    # -- link inputs (from the shell, through the hub) ---------------------------------

    def link_opened(self, link: int, now: float) -> None:
        """TCP is up: send the prelude; the link is READY once Redis answered it."""
        role = self._role_of.get(link)
        if role is None:
            return  # stale: a dial abandoned at its connect timeout completed after all
        self.now = now
        session = self._sessions[role]
        if session.state is not RedisState.CONNECTING:
            return  # reported twice
        self._sink.append(SendToLink(link=link, data=session.connected(now)))
        if session is self._sub:
            for channel in sorted(self._needed):
                self._sub.want(channel)
            for pattern in sorted(self._patterns):
                self._sub.want_pattern(pattern)
        self._timers.schedule(role, session.deadline(self._timeout))

    def link_lost(self, link: int, now: float, error: str = "") -> None:
        """The link dropped or could not be opened (idempotent); ``error`` is the OS's reason, if any."""
        role = self._role_of.get(link)
        if role is None:
            return  # stale, or reported already: the role's link is down or has a newer id
        self.now = now
        session = self._sessions[role]
        state = session.state
        if state is RedisState.CONNECTING:
            why = f"connect failed: {error or 'refused'}"
        elif state is RedisState.HANDSHAKE:
            why = f"closed before answering the handshake{': ' + error if error else ''}"
        else:
            why = f"connection lost: {error or 'closed by the server'}"
        self._drop_link(role, session, now, why, close=False)

    def link_data(self, link: int, data: bytes, now: float) -> None:
        """Replies and pushes: confirmations and messages go to the hub's callbacks."""
        role = self._role_of.get(link)
        if role is None:
            return  # stale: bytes still buffered from a link the broker closed
        self.now = now
        session = self._sessions[role]
        state = session.state
        if state is not RedisState.READY and state is not RedisState.HANDSHAKE:
            return  # bytes before link_opened
        if session is self._sub:
            probe = self._probe.channel
            for event in self._sub.feed(data, now):
                if event.channel == probe and probe:
                    if not isinstance(event, Unsubscribed):  # none on a classic link
                        self._probe_event(event, now)
                elif type(event) is not PubMessage:
                    if isinstance(event, Confirmed):
                        self._on_confirmed(event.channel)
                elif event.payload[:7] == MAGIC and self._on_entry is not None \
                        and (entry := parse_envelope(event.payload)) is not None:
                    self._on_entry(event.channel, entry[0], entry[1], entry[2])
                else:
                    self._on_message(event.channel, event.payload)
        elif session is not self._cmd:
            assert self._sentinels is not None
            for named in self._sentinels.session.feed(data, now):
                self._master_named(named, now)
        else:
            for error in self._cmd.feed(data, now):  # the untracked ones: client messages, announcements
                self._refused(str(error))
            self._acknowledged()
        if session.broken:
            self._drop_link(role, session, now, session.broken, close=True)
            return
        if state is RedisState.HANDSHAKE and session.state is RedisState.READY:
            self._link_errors.pop(role, None)
            log.info("redis %s link up (%s)", role.value, self._where(role),
                     extra={"event": "link_up", "link": role.value})
            if session is self._cmd:
                if self._cmd.dropped:
                    # Only then: announcements queued while the first dial was pending were kept and go out
                    # now; announcing again would tell the listener twice.
                    self._cmd.dropped = False
                    self._on_publisher_back()
                if self._library:
                    self._load_library()  # first: reads and publishes pipelined behind it find it
                if self._presence is not None:
                    self._presence.restore()
            elif session is self._sub and self._probe.enabled:
                self._sub.want(self._probe.link_up(link, now))
            elif self._sentinels is not None and session is self._sentinels.session:
                self._sink.append(SendToLink(link=link, data=self._sentinels.session.ask(now)))
            self._arm_probe(now)
        self._timers.schedule(role, session.deadline(self._timeout))  # idle ping from the last reply

    def handle_timer(self, now: float) -> None:
        """Redial, connect and reply timeouts, idle pings."""
        for role in self._timers.pop_due(now):
            if role == _PROBE:
                self._probe_timer(now)
                continue
            if role == _PRESENCE:
                assert self._presence is not None
                if self._cmd.state is RedisState.READY:
                    self._presence.refresh()  # else restore() writes everything when the link is back
                self._timers.schedule(_PRESENCE, now + self._config.presence_timeout / 3)
                continue
            assert isinstance(role, RedisLink)
            self._link_timer(role, now)

    def next_deadline(self) -> float | None:
        """The links' earliest deadline."""
        return self._timers.next_deadline()

    def flush(self, now: float) -> None:
        """SUBSCRIBE/UNSUBSCRIBE and PUBLISH queued since the last flush, one write per link."""
        if self._presence is not None and self._cmd.state is RedisState.READY:
            self._presence.flush()  # else kept, and written whole by restore() when the link is back
        if self._cmd.buffered_bytes > self._buffered_peak:  # notices (client-new/-gone) count too
            self._buffered_peak = self._cmd.buffered_bytes
        for role, data in ((RedisLink.SUBSCRIBER, self._sub.take_commands(now)),
                           (RedisLink.COMMANDS, self._cmd.take_commands(now))):
            if data:  # only a READY session has commands to take: the role has a current link
                self._sink.append(SendToLink(link=self._link_of[role], data=data))
                self._timers.schedule(role, self._sessions[role].deadline(self._timeout))

    # -- queries ---------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Both links up and every needed subscription confirmed (sentinel mode: and a sentinel watched)."""
        return (
            (self._sentinels is None or self._sentinels.watching)
            and self._sub.state is RedisState.READY
            and self._cmd.state is RedisState.READY
            and all(self._sub.is_confirmed(ch) for ch in self._needed)
            and self._sub.patterns_confirmed()
        )

    @property
    def can_publish(self) -> bool:
        """The command link is up (its prelude answered): a PUBLISH goes out in this flush."""
        return self._cmd.state is RedisState.READY

    def not_ready_reason(self) -> str:
        """The first link that is not up, and its last error; else the unconfirmed subscriptions."""
        sentinels = self._sentinels
        if sentinels is not None and not sentinels.watching:
            error = self._link_errors.get(RedisLink.SENTINEL)
            if sentinels.session.state is RedisState.READY:
                return f"asking sentinel {sentinels.where()} for master {self._config.redis_master_name!r}"
            return "no sentinel answered" + (f" (last error: {error})" if error else " yet")
        for role, session in self._sessions.items():
            if session.state is not RedisState.READY:
                error = self._link_errors.get(role)
                return f"redis {role.value} link {session.state.value}" + (f" (last error: {error})" if error else "")
        return "subscriptions not confirmed yet"

    @property
    def idle(self) -> bool:
        """No PUBLISH waiting to be written or acknowledged."""
        return self._cmd.idle

    @property
    def buffered_bytes(self) -> int:
        """Bytes of PUBLISHes not yet acknowledged."""
        return self._cmd.buffered_bytes

    def pending_count(self) -> int:
        """Commands on the command link not yet acknowledged."""
        return len(self._cmd)

    def subscribed_channels(self) -> set[bytes]:
        """Channels for which SUBSCRIBE was the last command sent (the broker's own probe channel left out)."""
        return self._sub.subscribed_channels() - {self._probe.channel}

    def link_states(self) -> dict[RedisLink, RedisState]:
        """Where each link is in its lifecycle (READY means the prelude was answered; a sentinel's: and watching)."""
        states = {role: session.state for role, session in self._sessions.items()}
        if self._sentinels is not None and states[RedisLink.SENTINEL] is RedisState.READY \
                and not self._sentinels.watching:
            states[RedisLink.SENTINEL] = RedisState.HANDSHAKE  # asking: it has not named the master yet
        return states

    def current_links(self) -> dict[RedisLink, int]:
        """The id of each role's current link, dialling or open; a role whose link is down has none."""
        return dict(self._link_of)

    def samples(self) -> list[Sample]:
        """The Redis metrics (wshub_redis_*, wshub_subscriptions)."""
        return [
            ("wshub_subscriptions", "gauge", "Redis channels subscribed.",
             [("", len(self.subscribed_channels()))]),
            ("wshub_redis_up", "gauge", "1 if the Redis link is ready.",
             [(f'{{link="{role.value}"}}', int(state is RedisState.READY))
              for role, state in self.link_states().items()]),
            ("wshub_redis_reconnects_total", "counter", "Redis links lost after being ready.",
             [("", self.reconnects)]),
            ("wshub_redis_stalls_total", "counter",
             "Subscriber links dropped because the probe published to them did not come back in time.",
             [("", self.stalls)]),
            ("wshub_redis_buffered_commands", "gauge", "Client messages and notices waiting for Redis.",
             [("", len(self._cmd))]),
            ("wshub_redis_buffered_bytes", "gauge", "Bytes of those commands.", [("", self._cmd.buffered_bytes)]),
            ("wshub_redis_buffered_bytes_max", "gauge", "Highest wshub_redis_buffered_bytes since the start.",
             [("", self._buffered_peak)]),
            *self._presence_samples(),
        ]

    def _presence_samples(self) -> list[Sample]:
        if self._presence is None:
            return []
        return [("wshub_presence_entries", "gauge", "(group, key) pairs this hub has presence entries for.",
                 [("", self._presence.entries())])]

    # -- internals -------------------------------------------------------------------

    def _dial(self, role: RedisLink, now: float) -> None:
        session = self._sessions[role]
        session.connecting(now)
        self._last_link += 1
        link = self._last_link
        self._link_of[role] = link
        self._role_of[link] = role
        host, port = self._address_of(role)
        self._sink.append(OpenLink(link=link, host=host, port=port, tls=self._config.redis_tls))
        self._timers.schedule(role, session.deadline(self._timeout))

    def _drop_link(self, role: RedisLink, session: RedisSession, now: float, why: str, *, close: bool) -> None:
        link = self._link_of.pop(role)
        del self._role_of[link]  # from here on, input for this id is stale
        was_ready = session.state is RedisState.READY
        if close:
            self._sink.append(CloseLink(link=link))
        session.lost(now)
        if session is self._cmd:
            self._acknowledged()  # tickets of commands the loss dropped: "link lost"
        if was_ready:
            self.reconnects += 1
        where = self._where(role)
        self._link_errors[role] = why
        if session is self._sub:
            self._probe.link_down()
            self._timers.cancel(_PROBE)
        elif session is self._cmd:
            self._probe.abandon()  # its PUBLISH is dropped, not resent: it cannot come back now
        if self._sentinels is not None:
            # Name the instance: which sentinel failed, which master address refused.
            self._link_errors[role] = f"{where}: {why}" if role is RedisLink.SENTINEL else f"master {where}: {why}"
            if role is not RedisLink.SENTINEL:
                self._sentinels.went_down(role)
            elif not self._sentinels.failed():  # the next sentinel at once; the backoff spaces whole rounds
                log.warning("redis sentinel link to %s: %s; trying the next sentinel, %s", where, why,
                            self._sentinels.where(), extra={"event": "link_down", "link": role.value, "reason": why})
                self._dial(role, now)
                return
        # One line per attempt: the backoff spaces them, so a refusing Redis cannot flood the log.
        log.warning("redis %s link to %s: %s; retrying in %.2fs", role.value, where, why,
                    session.connect_at - now, extra={"event": "link_down", "link": role.value, "reason": why})
        self._timers.schedule(role, session.connect_at)

    def _refused(self, error: str) -> None:
        self.publish_errors += 1
        log.warning("redis refused a PUBLISH: %s", error, extra={"event": "publish_refused", "reason": error})

    def _acknowledged(self) -> None:
        """Hand each answered (or dropped) ticket to its owner: the probe's and presence's are negative, the hub's
        positive (the probe's far below presence's: ``_probe.py``)."""
        if not self._cmd.acknowledged:
            return
        acknowledged = self._cmd.acknowledged
        self._cmd.acknowledged = []
        for ticket, error, reply in acknowledged:
            if ticket >= _HISTORY_TICKETS:
                self._history_reply(ticket, error, reply)
            elif self._probe.owns(ticket):
                if not (reply is None and error == "link lost"):
                    self._probe.acknowledged(ticket)
            elif ticket < 0:
                if self._presence is not None:
                    if reply is None and error == "link lost":
                        self._presence.dropped(ticket)
                    else:
                        self._presence.reply(ticket, error, reply)
            elif self._on_published is not None:
                if error and error != "link lost":
                    self._refused(error)
                self._on_published(ticket, error, reply.decode("ascii", "replace") if isinstance(reply, bytes) else "")

    def _link_timer(self, role: RedisLink, now: float) -> None:
        session = self._sessions[role]
        timeout = self._timeout
        if session.state is RedisState.DOWN:
            if now >= session.connect_at:
                if self._sentinels is not None and role is not RedisLink.SENTINEL \
                        and not self._sentinels.fresh(role):
                    self._ask_again(now)  # never redial a cached address: it dials when a sentinel names one
                    return
                self._dial(role, now)
                return
        elif why := session.timed_out(now, timeout):
            self._drop_link(role, session, now, why, close=True)
            return
        elif session.ping_due(now, timeout):
            if session is self._cmd:
                self._cmd.ping(now)
                return  # flush() sends it and re-arms this link's timer with the reply deadline
            assert isinstance(session, SubscriberSession | SentinelSession)
            self._sink.append(SendToLink(link=self._link_of[role], data=session.ping(now)))
        self._timers.schedule(role, session.deadline(timeout))

    # -- sentinel mode ---------------------------------------------------------------

    def _address_of(self, role: RedisLink) -> tuple[str, int]:
        """Where ``role`` dials: the configured server; in sentinel mode the current sentinel or the master."""
        if self._sentinels is None:
            return self._config.redis_host, self._config.redis_port
        if role is RedisLink.SENTINEL:
            return self._sentinels.address()
        assert self._sentinels.master is not None  # a data link dials only once a sentinel named the master
        return self._sentinels.master

    def _where(self, role: RedisLink) -> str:
        """``role``'s address as logs name it."""
        if self._sentinels is not None and role is not RedisLink.SENTINEL and self._sentinels.master is None:
            return f"master {self._config.redis_master_name!r} (not named yet)"
        return host_port(*self._address_of(role))

    def _ask_again(self, now: float) -> None:
        """A data link needs a fresh address: ask the watching sentinel (a sentinel not up yet asks when it is)."""
        sentinels = self._sentinels
        assert sentinels is not None
        if sentinels.session.state is RedisState.READY and not sentinels.asking:
            self._sink.append(SendToLink(link=self._link_of[RedisLink.SENTINEL], data=sentinels.session.ask(now)))
            self._timers.schedule(RedisLink.SENTINEL, sentinels.session.deadline(self._timeout))

    def _master_named(self, named: MasterAddress, now: float) -> None:
        """A sentinel named the master: dial the data links waiting for it; on a move, move both at once."""
        sentinels = self._sentinels
        assert sentinels is not None
        where = host_port(named.host, named.port)
        if sentinels.master != (named.host, named.port) or not named.switched:
            log.info("sentinel %s names %s as master %r%s", sentinels.where(), where, self._config.redis_master_name,
                     " (+switch-master)" if named.switched else "",
                     extra={"event": "master_named", "link": RedisLink.SENTINEL.value})
        moved = sentinels.master is not None and sentinels.master != (named.host, named.port)
        if moved:
            # Links still on the old master deliver nothing published to the new one: move both.
            for role in (RedisLink.SUBSCRIBER, RedisLink.COMMANDS):
                session = self._sessions[role]
                if session.state is not RedisState.DOWN:
                    self._drop_link(role, session, now, f"the master moved to {where}", close=True)
        sentinels.named(named)  # after the drops: the address is fresh for both links
        for role in (RedisLink.SUBSCRIBER, RedisLink.COMMANDS):
            session = self._sessions[role]
            if session.state is RedisState.DOWN and (moved or now >= session.connect_at):
                self._dial(role, now)  # a move at once: the failover is over

    # -- the probe (stalled subscriber links) -----------------------------------------------

    def _probe_event(self, event: Confirmed | PubMessage, now: float) -> None:
        """The probe channel's confirmation, or a probe back: the link delivers."""
        if isinstance(event, Confirmed):
            self._probe.confirmed = True
        elif not self._probe.received(event.payload):
            return
        self._arm_probe(now)

    def _arm_probe(self, now: float) -> None:
        """If the probe can run (both links up, its channel confirmed): publish the one due, wake at its deadline."""
        probe = self._probe
        if not (probe.channel and probe.confirmed and self._sub.state is RedisState.READY
                and self._cmd.state is RedisState.READY):
            return  # armed again when they are
        if probe.sent_at is None and now >= probe.next_at:
            payload, ticket = probe.send(now)
            self._cmd.publish(probe.channel, payload, resend=False, ticket=ticket)
        self._timers.schedule(_PROBE, probe.deadline())

    def _probe_timer(self, now: float) -> None:
        probe = self._probe
        sent_at = probe.sent_at
        if sent_at is None or now < sent_at + probe.interval or self._cmd.state is not RedisState.READY:
            self._arm_probe(now)
            return
        self.stalls += 1
        why = (f"stalled: the probe published {now - sent_at:g}s ago did not come back"
               + ("" if probe.answered else " (nor did the answer to its PUBLISH)"))
        self._drop_link(RedisLink.SUBSCRIBER, self._sub, now, why, close=True)


def _glob_literal(text: bytes) -> bytes:
    """``text`` as a Redis glob that matches only itself: ``*?[]\\`` escaped with a backslash."""
    out = bytearray()
    for byte in text:
        if byte in b"*?[]\\":
            out += b"\\"
        out.append(byte)
    return bytes(out)
