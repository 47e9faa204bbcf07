"""Actions: what the core asks its shell to do.

The shell executes them in the order they were returned. They are plain data;
nothing here has behaviour, so any event loop can interpret them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "Action",
    "CloseClient",
    "CloseRedis",
    "ConnectRedis",
    "PauseClient",
    "RedisLink",
    "ResumeClient",
    "SendToClient",
    "SendToRedis",
    "StopListening",
    "Stopped",
]


class RedisLink(enum.Enum):
    """Which of the hub's two Redis connections an action is about."""

    SUBSCRIBER = "subscriber"
    COMMANDS = "commands"


@dataclass(frozen=True, slots=True, kw_only=True)
class SendToClient:
    conn: int
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class CloseClient:
    """Close the client's socket; ``abort`` drops unsent bytes (dead or slow peers)."""

    conn: int
    abort: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class PauseClient:
    """Stop reading from the client so that TCP pushes back on it."""

    conn: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ResumeClient:
    conn: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectRedis:
    """Open a TCP connection; report ``redis_connected`` or ``redis_lost``."""

    link: RedisLink
    host: str
    port: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SendToRedis:
    link: RedisLink
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class CloseRedis:
    """Drop the connection; the core has already scheduled its reconnect."""

    link: RedisLink


@dataclass(frozen=True, slots=True, kw_only=True)
class StopListening:
    """Shutdown began: accept no new clients."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Stopped:
    """Shutdown finished (or timed out): the shell may exit."""


Action = (
    SendToClient
    | CloseClient
    | PauseClient
    | ResumeClient
    | ConnectRedis
    | SendToRedis
    | CloseRedis
    | StopListening
    | Stopped
)
