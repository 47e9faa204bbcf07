"""Presence in Redis: this hub's connection counts per (group, key), shared with every hub through Lua scripts.

Storage, per group G (keys in the slot of its events channel ``presence:G``,
see ``Channels.presence_keys``):

- a hash ``...:counts``: field ``HUB:KEY`` -> how many connections of KEY
  that hub has in G;
- a sorted set ``...:hubs``: HUB -> until when (ms, Redis's clock)
  that hub's fields count. A hub that stops refreshing (killed) drops out of
  every answer when its score passes, and the next refresh by any hub in the
  group deletes its fields and publishes ``leave`` for keys nobody else has.

and for all hubs: a sorted set ``{PREFIX presence}:hubs`` (the heartbeat:
HUB -> until when) and a set ``{PREFIX presence}:groups:HUB`` (the groups a
hub has fields in), so a survivor sweeps every group a dead hub was in, even
groups it has no member of itself.

Rules:
1. Never one command per connection per interval: changes are coalesced per
   group until the next flush (one script call per group with every changed
   key), and a refresh is one call per group this hub is in plus one
   heartbeat, whatever the number of connections.
2. Counts are absolute, so any write may be repeated: after a reconnect (the
   Redis may have restarted empty) or a ``NOSCRIPT`` the whole local state is
   written again; commands are never resent.
3. Time is Redis's (``TIME`` inside the scripts): hubs share no clock.
4. ``join`` and ``leave`` are decided inside the scripts, atomically, from
   every live hub's counts: the first connection of a key anywhere, and the
   last one leaving. They are published with the broker's verb: PUBLISH, or
   SPUBLISH on a sharded Cluster (the keys share the channel's slot, so the
   script's node serves it).
5. Every script touches keys of one slot (a group's two keys, or the
   heartbeat and the hub's groups set, which share a tag): on a Cluster each
   call goes to that slot's master (``command``'s routing), SCRIPT LOAD to
   every master, and ``restore`` runs again as each master's link comes up.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import hiredis

from ._channels import Channels

__all__ = ["RedisPresence"]

_NOW = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000) "
_TOTAL = (
    "local function total(live, key) local n = 0 for _, h in ipairs(live) do "
    "n = n + (tonumber(redis.call('HGET', KEYS[1], h .. ':' .. key)) or 0) end return n end "
)
_EVENT = "redis.call('%%s', ARGV[3], cjson.encode({event = %s, group = ARGV[4], key = key})) "  # verb later

# KEYS hash, hubs; ARGV hub, ttl ms, event channel, group, then key, count pairs: set this hub's counts.
_SET = (_NOW + _TOTAL + "local hub, ttl = ARGV[1], tonumber(ARGV[2]) "
        "redis.call('ZADD', KEYS[2], now + ttl, hub) "
        "local live = redis.call('ZRANGE', KEYS[2], now, '+inf', 'BYSCORE') "
        "for i = 5, #ARGV, 2 do local key, count = ARGV[i], tonumber(ARGV[i + 1]) "
        "local before = total(live, key) "
        "if count > 0 then redis.call('HSET', KEYS[1], hub .. ':' .. key, count) "
        "else redis.call('HDEL', KEYS[1], hub .. ':' .. key) end "
        "local after = total(live, key) "
        "if (before == 0) ~= (after == 0) then "
        + _EVENT % "(after > 0 and 'join' or 'leave')" + "end end "
        "redis.call('PEXPIRE', KEYS[1], ttl * 2) redis.call('PEXPIRE', KEYS[2], ttl * 2) return 1")

# KEYS hash, hubs; ARGV hub, ttl ms, event channel, group, mine ('1': refresh this hub's entry too), and
# optionally a hub known dead (its heartbeat passed): drop the fields of hubs whose time passed, publishing
# leave for keys no live hub has.
_SWEEP = (_NOW + _TOTAL + "local hub, ttl = ARGV[1], tonumber(ARGV[2]) "
          "if ARGV[5] == '1' then redis.call('ZADD', KEYS[2], now + ttl, hub) "
          "redis.call('PEXPIRE', KEYS[1], ttl * 2) redis.call('PEXPIRE', KEYS[2], ttl * 2) end "
          "local dead = redis.call('ZRANGE', KEYS[2], '-inf', '(' .. now, 'BYSCORE') "
          "if ARGV[6] then table.insert(dead, ARGV[6]) end "
          "if #dead == 0 then return 0 end "
          "local gone, orphans = {}, {} for _, d in ipairs(dead) do gone[d] = true end "
          "local live = {} for _, h in ipairs(redis.call('ZRANGE', KEYS[2], now, '+inf', 'BYSCORE')) do "
          "if not gone[h] then table.insert(live, h) end end "
          "for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do local sep = string.find(f, ':', 1, true) "
          "if sep and gone[string.sub(f, 1, sep - 1)] then redis.call('HDEL', KEYS[1], f) "
          "orphans[string.sub(f, sep + 1)] = true end end "
          "for key in pairs(orphans) do if total(live, key) == 0 then " + _EVENT % "'leave'" + "end end "
          "redis.call('ZREM', KEYS[2], unpack(dead)) return #dead")

# KEYS heartbeat, this hub's groups; ARGV hub, ttl ms, groups-set prefix: beat, and hand back (once, to
# one hub) every hub whose heartbeat passed with each of its groups, flat (hub, group, ...), to sweep.
_BEAT = (_NOW + "local ttl = tonumber(ARGV[2]) redis.call('ZADD', KEYS[1], now + ttl, ARGV[1]) "
         "redis.call('PEXPIRE', KEYS[2], ttl * 4) "
         "local groups = {} for _, d in ipairs(redis.call('ZRANGE', KEYS[1], '-inf', '(' .. now, 'BYSCORE')) do "
         "redis.call('ZREM', KEYS[1], d) for _, g in ipairs(redis.call('SMEMBERS', ARGV[3] .. d)) do "
         "table.insert(groups, d) table.insert(groups, g) end redis.call('DEL', ARGV[3] .. d) end return groups")

# KEYS hash, hubs: every key with a connection on a live hub, and its count across them, flat.
_QUERY = (_NOW + "local live = {} "
          "for _, h in ipairs(redis.call('ZRANGE', KEYS[2], now, '+inf', 'BYSCORE')) do live[h] = true end "
          "local totals, order = {}, {} local flat = redis.call('HGETALL', KEYS[1]) "
          "for i = 1, #flat, 2 do local f = flat[i] local sep = string.find(f, ':', 1, true) "
          "if sep and live[string.sub(f, 1, sep - 1)] then local key = string.sub(f, sep + 1) "
          "if not totals[key] then totals[key] = 0 table.insert(order, key) end "
          "totals[key] = totals[key] + tonumber(flat[i + 1]) end end "
          "local out = {} for _, key in ipairs(order) do table.insert(out, key) table.insert(out, totals[key]) end "
          "return out")



def _scripts(verb: str) -> dict[str, tuple[bytes, bytes]]:
    """Each script's text and SHA1, the events published with ``verb`` (PUBLISH or SPUBLISH)."""
    texts = (("set", _SET % verb), ("sweep", _SWEEP % verb), ("beat", _BEAT), ("query", _QUERY))
    return {name: (text.encode(), hashlib.sha1(text.encode()).hexdigest().encode()) for name, text in texts}


Command = Callable[..., None]  # CommandSession.command(*args, resend=..., ticket=...)
OnPresence = Callable[[int, "dict[str, int] | None", str], None]  # (ticket, counts or None, error)


class RedisPresence:
    """This hub's presence entries and the commands that keep them in Redis."""

    __slots__ = ("_channels", "_hub", "_ttl", "_command", "_on_presence", "_local", "_dirty", "_groups",
                 "_pending", "_next", "_hub_groups", "_restored_at", "_scripts")

    def __init__(self, *, channels: Channels, hub_id: str, timeout: float, command: Command,
                 on_presence: OnPresence, publish: str = "PUBLISH") -> None:
        """``command`` queues a command (on a Cluster: on its key's master); ``on_presence`` answers a ``query``'s
        ticket; ``publish`` is the verb of the join/leave events."""
        self._scripts = _scripts(publish)
        self._channels = channels
        self._hub = hub_id.encode()
        self._ttl = str(max(1, round(timeout * 1000))).encode()
        self._command = command
        self._on_presence = on_presence
        self._local: dict[str, dict[str, int]] = {}  # group -> key -> this hub's connections (none at 0)
        self._dirty: dict[str, dict[str, int]] = {}  # changes not written yet, coalesced per group
        self._groups: set[str] = set()  # groups recorded in this hub's groups set in Redis
        self._pending: dict[int, tuple[str, str, int]] = {}  # internal ticket -> (what, group, caller's ticket)
        self._next = 0  # internal tickets are negative: the hub's own (the API's) are positive
        self._hub_groups = channels.presence_groups_prefix + self._hub
        self._restored_at = 0

    # -- what the hub's presence part tells it ---------------------------------------------

    def set(self, group: str, key: str, count: int) -> None:
        """This hub now has ``count`` connections of ``key`` in ``group`` (0: none): written at the next flush."""
        local = self._local.setdefault(group, {})
        if count:
            local[key] = count
        else:
            local.pop(key, None)
            if not local:
                del self._local[group]
        self._dirty.setdefault(group, {})[key] = count

    def query(self, group: str, ticket: int) -> None:
        """Every live hub's keys in ``group``, with counts: ``on_presence(ticket, counts, error)`` later."""
        hash_key, hubs_key = self._channels.presence_keys(group)
        self._call("query", group, ticket, hash_key, hubs_key)

    # -- what the broker calls ---------------------------------------------------------------

    def flush(self) -> None:
        """One script call per group that changed (rule 1), and this hub's groups set kept in step."""
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, {}
        for group, changes in dirty.items():
            hash_key, hubs_key = self._channels.presence_keys(group)
            pairs = [part for key, count in changes.items() for part in (key.encode(), str(count).encode())]
            self._call("set", group, 0, hash_key, hubs_key, self._hub, self._ttl, self._channels.presence(group),
                       group.encode(), *pairs)
            present = group in self._local
            if present and group not in self._groups:
                self._groups.add(group)
                self._command(b"SADD", self._hub_groups, group.encode(), resend=False)
            elif not present and group in self._groups:
                self._groups.discard(group)
                self._command(b"SREM", self._hub_groups, group.encode(), resend=False)

    def refresh(self) -> None:
        """Every ``timeout / 3``: the heartbeat (which hands back dead hubs' groups) and each group's entry."""
        self._call("beat", "", 0, self._channels.presence_hubs, self._hub_groups, self._hub, self._ttl,
                   self._channels.presence_groups_prefix)
        for group in self._local:
            self._sweep(group, mine=True)

    def restore(self) -> None:
        """The command link is (back) up: load the scripts, write everything again (rule 2), beat."""
        self._restored_at = self._next  # calls issued before this (tickets above it) may still fail NOSCRIPT
        for text, _ in self._scripts.values():
            self._command(b"SCRIPT", b"LOAD", text, resend=False)
        self._groups.clear()
        self._dirty = {group: dict(keys) for group, keys in self._local.items()}
        self.flush()
        self.refresh()

    def reply(self, ticket: int, error: str, reply: object) -> None:
        """The reply to one of this part's commands (its tickets are negative)."""
        what, group, caller = self._pending.pop(ticket, ("", "", 0))
        if error.startswith("NOSCRIPT"):
            # SCRIPT FLUSH (or a failover to a replica without the scripts): load again, write everything,
            # once for all the calls that were already in flight.
            if ticket < self._restored_at:
                self.restore()
            if what == "query":
                self.query(group, caller)
            return
        if what == "query":
            if error:
                self._on_presence(caller, None, error)
            else:
                self._on_presence(caller, _counts(reply), "")
        elif what == "beat" and isinstance(reply, list):
            for dead, name in zip(reply[::2], reply[1::2], strict=False):
                if isinstance(dead, bytes) and isinstance(name, bytes):
                    self._sweep(name.decode("utf-8", "replace"), mine=False, dead=dead)

    def dropped(self, ticket: int) -> None:
        """A query lost with its link: its caller hears ``link lost``."""
        what, _, caller = self._pending.pop(ticket, ("", "", 0))
        if what == "query":
            self._on_presence(caller, None, "link lost")

    def owns(self, ticket: int) -> bool:
        return ticket in self._pending

    def entries(self) -> int:
        """(group, key) pairs this hub has entries for."""
        return sum(len(keys) for keys in self._local.values())

    # -- internals -------------------------------------------------------------------------------

    def _sweep(self, group: str, *, mine: bool, dead: bytes = b"") -> None:
        hash_key, hubs_key = self._channels.presence_keys(group)
        self._call("sweep", group, 0, hash_key, hubs_key, self._hub, self._ttl, self._channels.presence(group),
                   group.encode(), b"1" if mine else b"0", *((dead,) if dead else ()))

    def _call(self, what: str, group: str, caller: int, *args: bytes) -> None:
        """EVALSHA with one internal ticket: the scripts are loaded by ``restore`` before any call."""
        _, sha = self._scripts[what]
        self._next -= 1
        self._pending[self._next] = (what, group, caller)
        self._command(b"EVALSHA", sha, b"2", *args, resend=False, ticket=self._next)


def _counts(reply: object) -> dict[str, int] | None:
    """The query script's flat ``[key, count, ...]``; None if Redis answered anything else."""
    if isinstance(reply, hiredis.ReplyError) or not isinstance(reply, list) or len(reply) % 2:
        return None
    out: dict[str, int] = {}
    for i in range(0, len(reply), 2):
        key, count = reply[i], reply[i + 1]
        if not isinstance(key, bytes) or not isinstance(count, int):
            return None
        out[key.decode("utf-8", "replace")] = count
    return out
