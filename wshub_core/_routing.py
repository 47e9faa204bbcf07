"""Routing: who is in which group, and which Redis channels that requires.

Rules:
1. The indexes key->conns, group->conns and conn->groups change together, in
   one method call; there is no way to update one without the others.
2. A channel is *needed* exactly while some connection needs it:
   ``groups-new:KEY``, ``client-send:KEY`` and ``client-kick:KEY`` while KEY
   has a connection, ``group-data:G`` while G has a member. Every mutator returns the channels that became needed or
   unneeded, so the caller can (UN)SUBSCRIBE; the set itself is derived from
   the indexes, never stored separately.
3. Channel names are bytes with the prefix applied, as Redis sends them back,
   so routing a message costs one dict lookup and no decoding.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from ._channels import Channels

__all__ = ["Routing", "parse_groups"]


def parse_groups(payload: bytes) -> frozenset[str] | None:
    """Decode a listener's answer: a JSON array of strings, or ``a,b,c``. None if neither."""
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    if text.startswith("["):
        try:
            value = json.loads(text)
        except ValueError:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return None
        try:
            for name in value:
                name.encode("utf-8")  # JSON may carry lone surrogates ("\ud800"): no channel name
        except UnicodeEncodeError:
            return None
        return frozenset(v for v in value if v)
    if text.startswith(("{", '"')):
        return None  # JSON, but not a list
    return frozenset(part.strip() for part in text.split(",") if part.strip())


class Routing:
    __slots__ = ("_key_conns", "_group_conns", "_groups_of", "_key_channel_of", "_channels", "_by_key_channel")

    def __init__(self, *, channels: Channels) -> None:
        self._channels = channels
        self._key_conns: dict[bytes, dict[int, None]] = {}  # groups-new channel -> conns (ordered)
        self._group_conns: dict[bytes, dict[int, None]] = {}  # group-data channel -> conns (ordered)
        self._groups_of: dict[int, frozenset[bytes]] = {}  # conn -> group-data channels
        self._key_channel_of: dict[int, bytes] = {}  # conn -> groups-new channel
        # client-send / client-kick channel -> the key's groups-new channel, while the key has connections
        self._by_key_channel: dict[bytes, bytes] = {}

    # -- names ------------------------------------------------------------------

    def key_channel(self, key: str) -> bytes:
        return self._channels.groups_new(key)

    def group_channel(self, group: str) -> bytes:
        return self._channels.group_data(group)

    def group_name(self, channel: bytes) -> str:
        return self._channels.group_name(channel)

    # -- queries ------------------------------------------------------------------

    def needed(self) -> set[bytes]:
        return set(self._key_conns) | set(self._by_key_channel) | set(self._group_conns)

    def members(self, channel: bytes) -> dict[int, None] | None:
        """Connections of a group-data channel (None if not a group we hold)."""
        return self._group_conns.get(channel)

    def conns_of_key(self, channel: bytes) -> dict[int, None] | None:
        """Connections of a groups-new channel."""
        return self._key_conns.get(channel)

    def conns_for_key_channel(self, channel: bytes) -> dict[int, None] | None:
        """Connections of a key's ``client-send`` or ``client-kick`` channel."""
        key_channel = self._by_key_channel.get(channel)
        return None if key_channel is None else self._key_conns[key_channel]

    def group_sizes(self) -> Iterator[tuple[str, int]]:
        """(name, local members) of every group with a member, in no particular order."""
        name = self._channels.group_name
        return ((name(channel), len(conns)) for channel, conns in self._group_conns.items())

    def groups_of(self, conn: int) -> frozenset[bytes]:
        return self._groups_of.get(conn, frozenset())

    def key_channel_of(self, conn: int) -> bytes | None:
        return self._key_channel_of.get(conn)

    def __len__(self) -> int:
        return len(self._key_channel_of)

    def is_empty(self) -> bool:
        return not (self._key_conns or self._group_conns or self._groups_of or self._key_channel_of
                    or self._by_key_channel)

    # -- mutators (return channels that became needed / unneeded) -----------------

    def add(self, conn: int, key: str) -> list[bytes]:
        assert conn not in self._key_channel_of, "connection added twice"
        channel, send, kick = self._channels.key_channels(key)
        self._key_channel_of[conn] = channel
        conns = self._key_conns.get(channel)
        if conns is None:
            self._key_conns[channel] = {conn: None}
            self._by_key_channel[send] = self._by_key_channel[kick] = channel
            return [channel, send, kick]
        conns[conn] = None
        return []

    def set_groups(self, conn: int, groups: frozenset[bytes]) -> tuple[list[bytes], list[bytes]]:
        """Replace ``conn``'s group channels; returns (newly needed, no longer needed)."""
        old = self._groups_of.get(conn, frozenset())
        added: list[bytes] = []
        removed: list[bytes] = []
        for channel in sorted(groups - old):  # sorted: the SUBSCRIBE order must not follow the hash seed
            conns = self._group_conns.get(channel)
            if conns is None:
                self._group_conns[channel] = {conn: None}
                added.append(channel)
            else:
                conns[conn] = None
        for channel in sorted(old - groups):
            if self._drop_member(channel, conn):
                removed.append(channel)
        if groups:
            self._groups_of[conn] = groups
        else:
            self._groups_of.pop(conn, None)
        return added, removed

    def remove(self, conn: int) -> tuple[list[bytes], bool]:
        """Forget ``conn``; returns (no longer needed channels, was it its key's last connection)."""
        _, removed = self.set_groups(conn, frozenset())
        channel = self._key_channel_of.pop(conn)
        conns = self._key_conns[channel]
        del conns[conn]
        if conns:
            return removed, False
        del self._key_conns[channel]
        _, send, kick = self._channels.key_channels_of(channel)
        del self._by_key_channel[send], self._by_key_channel[kick]
        removed += (channel, send, kick)
        return removed, True

    def _drop_member(self, channel: bytes, conn: int) -> bool:
        conns = self._group_conns[channel]
        del conns[conn]
        if conns:
            return False
        del self._group_conns[channel]
        return True
