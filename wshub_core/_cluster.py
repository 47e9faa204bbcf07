"""Redis Cluster's addressing: the slot of a name, the topology a node reports, and its redirections.

Rules:
1. A name's slot is CRC16 (XMODEM, ``binascii.crc_hqx``) of its hash tag, or of
   the whole name without one, modulo 16384: what ``CLUSTER KEYSLOT`` answers,
   for keys and shard channels alike (``Channels``' ``hash_tag``).
2. Nothing a node answers raises: a reply of the wrong shape is an error
   string for the caller, which keeps the topology it had.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass

from ._channels import hash_tag

__all__ = ["SLOTS", "Redirect", "SlotMap", "key_slot", "parse_redirect", "parse_shards", "parse_slots"]

SLOTS = 16384
Address = tuple[str, int]


def key_slot(name: bytes) -> int:
    """The Cluster slot of a key or shard channel."""
    tag = hash_tag(name)
    return binascii.crc_hqx(name if tag is None else tag, 0) & (SLOTS - 1)


class SlotMap:
    """Which master serves each slot (None: no master, the cluster is not whole)."""

    __slots__ = ("_owner", "masters")

    def __init__(self, ranges: list[tuple[int, int, Address]]) -> None:
        self._owner: list[Address | None] = [None] * SLOTS
        for start, end, master in ranges:
            self._owner[start:end + 1] = [master] * (end + 1 - start)
        self.masters: tuple[Address, ...] = tuple(sorted({m for _, _, m in ranges}))

    def owner(self, slot: int) -> Address | None:
        """The master serving ``slot``."""
        return self._owner[slot]

    def assign(self, slot: int, master: Address) -> None:
        """``slot`` is served by ``master`` now (a ``-MOVED`` said so)."""
        self._owner[slot] = master

    def complete(self) -> bool:
        """Every slot has a master."""
        return None not in self._owner

    def slot_of(self, master: Address) -> int | None:
        """One slot ``master`` serves (the lowest), or None."""
        try:
            return self._owner.index(master)
        except ValueError:
            return None

    def copy(self) -> SlotMap:
        """The same map, to amend (``assign``) without changing this one."""
        other = SlotMap([])
        other._owner = list(self._owner)
        other.masters = self.masters
        return other

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SlotMap) and self._owner == other._owner

    __hash__ = None  # type: ignore[assignment]


def _text(value: object) -> str | None:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else None


def parse_shards(reply: object) -> SlotMap | str:
    """``CLUSTER SHARDS`` (Redis 7): each shard's slot ranges and its master (the node whose role is master)."""
    if not isinstance(reply, list):
        return f"CLUSTER SHARDS answered {reply!r}"[:200]
    ranges: list[tuple[int, int, Address]] = []
    for shard in reply:
        fields = _pairs(shard)
        slots = fields.get("slots") if fields is not None else None
        nodes = fields.get("nodes") if fields is not None else None
        if not isinstance(slots, list) or not isinstance(nodes, list):
            return f"CLUSTER SHARDS: unreadable shard {shard!r}"[:200]
        master: Address | None = None
        for node in nodes:
            info = _pairs(node)
            if info is None:
                return f"CLUSTER SHARDS: unreadable node {node!r}"[:200]
            host = _text(info.get("endpoint")) or _text(info.get("ip"))
            port = info.get("port", info.get("tls-port"))
            if _text(info.get("role")) == "master" and host and host != "?" and isinstance(port, int) \
                    and _text(info.get("health")) != "fail":
                master = (host, port)
        if master is None:
            continue  # a shard without a live master: its slots stay unserved until a replica is promoted
        bounds = [s for s in slots if isinstance(s, int) and 0 <= s < SLOTS]
        if len(bounds) != len(slots) or len(bounds) % 2:
            return f"CLUSTER SHARDS: unreadable slots {slots!r}"[:200]
        ranges.extend((bounds[i], bounds[i + 1], master) for i in range(0, len(bounds), 2))
    return SlotMap(ranges)


def parse_slots(reply: object) -> SlotMap | str:
    """``CLUSTER SLOTS`` (before Redis 7): ``[start, end, [host, port, id, ...], replicas...]`` per range."""
    if not isinstance(reply, list):
        return f"CLUSTER SLOTS answered {reply!r}"[:200]
    ranges: list[tuple[int, int, Address]] = []
    for item in reply:
        if not (isinstance(item, list) and len(item) >= 3 and isinstance(item[0], int) and isinstance(item[1], int)
                and isinstance(item[2], list) and len(item[2]) >= 2 and isinstance(item[2][1], int)
                and 0 <= item[0] <= item[1] < SLOTS):
            return f"CLUSTER SLOTS: unreadable range {item!r}"[:200]
        host = _text(item[2][0])
        if host and host != "?":
            ranges.append((item[0], item[1], (host, item[2][1])))
    return SlotMap(ranges)


def _pairs(value: object) -> dict[str, object] | None:
    """A RESP2 map (a flat list of name, value) as a dict; None if it is not one."""
    if isinstance(value, dict):
        return {k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k): v for k, v in value.items()}
    if not isinstance(value, list) or len(value) % 2:
        return None
    out: dict[str, object] = {}
    for i in range(0, len(value), 2):
        name = _text(value[i])
        if name is None:
            return None
        out[name] = value[i + 1]
    return out


@dataclass(frozen=True, slots=True)
class Redirect:
    """``-MOVED slot host:port`` (the slot lives there now) or ``-ASK slot host:port`` (this once, after ASKING)."""

    ask: bool
    slot: int
    address: Address


def parse_redirect(error: str) -> Redirect | None:
    """The redirection in a reply error, or None if it is not one."""
    parts = error.split()
    if len(parts) != 3 or parts[0] not in ("MOVED", "ASK") or not parts[1].isdigit():
        return None
    host, _, port = parts[2].rpartition(":")
    if not port.isdigit() or not 0 <= int(parts[1]) < SLOTS:
        return None
    return Redirect(ask=parts[0] == "ASK", slot=int(parts[1]), address=(host.strip("[]"), int(port)))
