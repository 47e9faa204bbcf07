"""Group history in Redis: a Redis Function library that publishes through a capped stream, and its replies.

A publisher calls ``FCALL wshub_publish 1 <prefix>group-data:<GROUP> <payload> [<message id>]``.
Atomically, the function appends the payload to a stream whose key is the
channel's name (keys and channels are separate namespaces), with the id of
the entry before it, trims it to about ``history.size`` entries (``MAXLEN ~``),
lets it expire ``history.ttl`` seconds after its last message, and publishes
an *envelope* on the channel: ``MAGIC id NUL prev NUL payload``. It returns
the new entry's id, the message's *position*.

Why the previous id travels with each message: stream ids are times
(``ms-seq``), not a counter, so "the successor of position P" cannot be
computed; an entry that names its predecessor P' can be checked instead: no
message is missing between what a hub delivered last (L) and entry E when
``E.prev <= L < E``. That also holds across a failover that lost the tail of
the stream: the new master's next entry names the last entry *it* has, which
is older than L, so nothing is reported missing that was delivered.

``wshub_read 1 <channel> <after> <count>`` answers the stream's last id (or
"" when the key is gone) and up to ``count`` entries after ``after`` as
``id, prev, payload`` triples: one round trip for a gap or a resume.

Rules:
1. Every key the functions touch is declared (KEYS[1]) or, for a message id,
   derived from it with the same hash tag rule as presence keys
   (``_channels.slot_base``): one Cluster slot.
2. The envelope starts with a byte that no UTF-8 text can start with (0xFF),
   so a plain PUBLISH of text can never be read as one.
3. Nothing Redis answers raises: a reply of the wrong shape is an error
   string for the caller.
"""

from __future__ import annotations

import re

import hiredis

from ._broker import OnHistory

__all__ = ["MAGIC", "READ_PAGE", "answer_read", "library", "parse_envelope", "parse_read", "publish_args", "read_args",
           "valid_position"]

MAGIC = b"\xffwshub\x00"  # an envelope's first bytes: 0xFF starts no UTF-8 text
READ_PAGE = 1000  # entries per read (a gap or resume longer than this takes several)
_POSITION = re.compile(r"\d{1,20}-\d{1,20}")

# %(publish)s is PUBLISH or SPUBLISH (a Cluster in sharded mode); %(size)d and %(ttl)d are history.size and
# history.ttl (milliseconds), baked in at load: publishers pass only the channel and the payload.
_LIBRARY = r"""#!lua name=wshub
local SIZE, TTL = %(size)d, %(ttl)d
local MAGIC = '\255wshub\0'
local function tagged(key)
  local s = string.find(key, '{', 1, true)
  if s then
    local e = string.find(key, '}', s + 1, true)
    if e and e > s + 1 then return key end
  end
  if string.find(key, '}', 1, true) then return key end
  return '{' .. key .. '}'
end
local function publish(keys, args)
  local key, payload, msgid = keys[1], args[1], args[2]
  if payload == nil then return redis.error_reply('ERR wshub_publish needs a payload') end
  local ids, times
  if msgid and msgid ~= '' then
    local t = redis.call('TIME')
    local now = t[1] * 1000 + math.floor(t[2] / 1000)
    local base = tagged(key)
    ids, times = base .. ':msgids', base .. ':msgid-times'
    for _, old in ipairs(redis.call('ZRANGE', times, '-inf', '(' .. (now - TTL), 'BYSCORE', 'LIMIT', 0, 100)) do
      redis.call('HDEL', ids, old)
      redis.call('ZREM', times, old)
    end
    local seen = redis.call('HGET', ids, msgid)
    if seen then return seen end
    redis.call('ZADD', times, now, msgid)
    redis.call('PEXPIRE', times, TTL)
  end
  local prev = '0-0'
  local tail = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
  if #tail > 0 then prev = tail[1][1] end
  local id = redis.call('XADD', key, 'MAXLEN', '~', SIZE, '*', 'd', payload, 'p', prev)
  redis.call('PEXPIRE', key, TTL)
  if ids then
    redis.call('HSET', ids, msgid, id)
    redis.call('PEXPIRE', ids, TTL)
  end
  redis.call('%(publish)s', key, MAGIC .. id .. '\0' .. prev .. '\0' .. payload)
  return id
end
local function read(keys, args)
  local key, after, count = keys[1], args[1], tonumber(args[2])
  local tail = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
  if #tail == 0 then return {''} end
  local out = {tail[1][1]}
  if count < 1 then return out end  -- where the history ends, nothing more (XRANGE COUNT 0 answers nil)
  for _, e in ipairs(redis.call('XRANGE', key, '(' .. after, '+', 'COUNT', count)) do
    local d, p, f = '', '0-0', e[2]
    for i = 1, #f, 2 do
      if f[i] == 'd' then d = f[i + 1] elseif f[i] == 'p' then p = f[i + 1] end
    end
    out[#out + 1] = e[1]
    out[#out + 1] = p
    out[#out + 1] = d
  end
  return out
end
redis.register_function('wshub_publish', publish)
redis.register_function{function_name = 'wshub_read', callback = read, flags = {'no-writes'}}
"""


def library(*, size: int, ttl: float, sharded: bool = False) -> bytes:
    """The library's code for ``FUNCTION LOAD REPLACE``, with the config's size and ttl in it."""
    return (_LIBRARY % {"size": size, "ttl": max(1, round(ttl * 1000)),
                        "publish": "SPUBLISH" if sharded else "PUBLISH"}).encode()


def publish_args(channel: bytes, payload: bytes, message_id: bytes) -> tuple[bytes, ...]:
    """The ``FCALL wshub_publish`` command for ``payload`` on ``channel`` (with its message id, if any)."""
    return (b"FCALL", b"wshub_publish", b"1", channel, payload, *((message_id,) if message_id else ()))


def read_args(channel: bytes, after: str, count: int) -> tuple[bytes, ...]:
    """The ``FCALL_RO wshub_read`` command: up to ``count`` entries of ``channel`` after ``after``."""
    return b"FCALL_RO", b"wshub_read", b"1", channel, after.encode(), str(count).encode()


def answer_read(on_history: OnHistory, caller: int, error: str, reply: object) -> None:
    """Hand a ``wshub_read`` reply (or its error) to the history part, parsed."""
    answer = error or parse_read(reply)
    if isinstance(answer, str):
        on_history(caller, "", None, answer)
    else:
        on_history(caller, answer[0], answer[1], "")


def valid_position(text: str) -> bool:
    """``text`` is a stream id ``ms-seq`` (what a client may send back as an offset)."""
    return _POSITION.fullmatch(text) is not None


def parse_envelope(payload: bytes) -> tuple[str, str, bytes] | None:
    """``(id, prev, payload)`` of an envelope (``payload`` starts with ``MAGIC``); None if it is malformed."""
    first = payload.find(b"\x00", len(MAGIC))
    second = payload.find(b"\x00", first + 1) if first >= 0 else -1
    if second < 0:
        return None
    try:
        entry = payload[len(MAGIC):first].decode("ascii")
        prev = payload[first + 1:second].decode("ascii")
    except UnicodeDecodeError:
        return None
    if not valid_position(entry) or not valid_position(prev):
        return None
    return entry, prev, payload[second + 1:]


def parse_read(reply: object) -> tuple[str, list[tuple[str, str, bytes]]] | str:
    """``wshub_read``'s reply as (the stream's last id or "", entries), or the error as a string."""
    if isinstance(reply, hiredis.ReplyError):
        return str(reply)
    if not isinstance(reply, list) or not reply or not isinstance(reply[0], bytes) or len(reply) % 3 != 1:
        return f"unexpected reply to wshub_read: {reply!r}"[:200]
    entries: list[tuple[str, str, bytes]] = []
    for i in range(1, len(reply), 3):
        entry, prev, data = reply[i], reply[i + 1], reply[i + 2]
        if not (isinstance(entry, bytes) and isinstance(prev, bytes) and isinstance(data, bytes)):
            return f"unexpected entry in wshub_read's reply: {reply[i:i + 3]!r}"[:200]
        try:
            entries.append((entry.decode("ascii"), prev.decode("ascii"), data))
        except UnicodeDecodeError:
            return "an entry id in wshub_read's reply is not ASCII"
    try:
        return reply[0].decode("ascii"), entries
    except UnicodeDecodeError:
        return "the last id in wshub_read's reply is not ASCII"
