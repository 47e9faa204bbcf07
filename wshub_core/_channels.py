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
                 "client_send_prefix", "client_kick_prefix")

    def __init__(self, prefix: str) -> None:
        self.client_new = f"{prefix}client-new".encode()  # the hub announces a key
        self.client_gone = f"{prefix}client-gone".encode()  # the last local connection of a key closed
        self._groups_new = f"{prefix}groups-new:".encode()
        self._group_data = f"{prefix}group-data:".encode()
        self._client_data = f"{prefix}client-data:".encode()
        self.client_data_prefix = self._client_data  # the event stream needs every key's: a prefix need
        self.client_send_prefix = f"{prefix}client-send:".encode()  # a message for every connection of a key
        self.client_kick_prefix = f"{prefix}client-kick:".encode()  # close every connection of a key

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
