"""Channel names: every channel the protocol uses, built in one place.

Names are bytes with ``redis.channelPrefix`` applied, exactly as a broker
delivers them back, so routing a message costs one dict lookup and no
decoding (docs/protocol.md lists them).
"""

from __future__ import annotations

__all__ = ["Channels"]


class Channels:
    """The protocol's channels under one prefix."""

    __slots__ = ("client_new", "client_gone", "client_data_prefix", "_groups_new", "_group_data", "_client_data",
                 "client_send_prefix", "client_kick_prefix", "presence_prefix", "presence_hubs",
                 "presence_groups_prefix")

    def __init__(self, prefix: str) -> None:
        self.client_new = f"{prefix}client-new".encode()  # the hub announces a key
        self.client_gone = f"{prefix}client-gone".encode()  # the last local connection of a key closed
        self._groups_new = f"{prefix}groups-new:".encode()
        self._group_data = f"{prefix}group-data:".encode()
        self._client_data = f"{prefix}client-data:".encode()
        self.client_data_prefix = self._client_data  # the event stream needs every key's: a prefix need
        self.client_send_prefix = f"{prefix}client-send:".encode()  # a message for every connection of a key
        self.client_kick_prefix = f"{prefix}client-kick:".encode()  # close every connection of a key
        self.presence_prefix = f"{prefix}presence:".encode()  # join/leave events of a group
        # Presence keys every hub shares (a heartbeat per hub, and the groups each hub has entries in): one
        # hash tag, so a script reads them together on a Cluster too.
        tag = "{" + f"{prefix}presence" + "}"
        self.presence_hubs = f"{tag}:hubs".encode()
        self.presence_groups_prefix = f"{tag}:groups:".encode()

    def groups_new(self, key: str) -> bytes:
        """Where the listener answers a key's groups."""
        return self._groups_new + key.encode()

    def group_data(self, group: str) -> bytes:
        """What every member of ``group`` receives."""
        return self._group_data + group.encode()

    def client_data(self, key: str) -> bytes:
        """Where the hub publishes what a key's clients send."""
        return self._client_data + key.encode()

    def client_send(self, key: str) -> bytes:
        """A message for every connection of ``key``, on every hub."""
        return self.client_send_prefix + key.encode()

    def client_kick(self, key: str) -> bytes:
        """Closes every connection of ``key``, on every hub."""
        return self.client_kick_prefix + key.encode()

    def key_channels(self, key: str) -> tuple[bytes, bytes, bytes]:
        """What a key needs while it has a local connection: its groups answer, its sends and its kicks."""
        return self.key_channels_of(self.groups_new(key))

    def key_channels_of(self, groups_new: bytes) -> tuple[bytes, bytes, bytes]:
        """``key_channels`` of the key whose ``groups_new`` channel this is (no decoding)."""
        raw = groups_new[len(self._groups_new):]
        return groups_new, self.client_send_prefix + raw, self.client_kick_prefix + raw

    def group_name(self, channel: bytes) -> str:
        """The group a ``group_data`` channel is for (for logs: undecodable bytes replaced)."""
        return channel[len(self._group_data):].decode("utf-8", "replace")

    def presence(self, group: str) -> bytes:
        """Where a group's ``join`` and ``leave`` events are published."""
        return self.presence_prefix + group.encode()

    def presence_keys(self, group: str) -> tuple[bytes, bytes]:
        """A group's presence keys (who, and which hubs are alive in it): in the slot of its events channel.

        Redis Cluster hashes a name by its hash tag (the first ``{...}`` with
        something inside) or else whole; the keys carry the events channel's
        tag, or the whole channel as their tag, so the script that changes
        them publishes ``join``/``leave`` (SPUBLISH on a sharded Cluster) on a
        channel its node serves.
        """
        base = slot_base(self.presence(group))
        return base + b":counts", base + b":hubs"


def slot_base(channel: bytes) -> bytes:
    """A prefix for keys that must live in ``channel``'s Cluster slot: its own tag, or the channel as the tag."""
    return channel if hash_tag(channel) is not None or b"}" in channel else b"{" + channel + b"}"


def hash_tag(name: bytes) -> bytes | None:
    """The part of ``name`` Redis Cluster hashes, if it has a hash tag (CLUSTER KEYSLOT's rule), else None."""
    start = name.find(b"{")
    if start < 0:
        return None
    end = name.find(b"}", start + 1)
    if end <= start + 1:
        return None
    return name[start + 1:end]
