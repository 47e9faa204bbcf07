"""Actions: what the core asks its shell to do.

The shell executes them in the order they were returned. They are plain data;
nothing here has behaviour, so any event loop can interpret them.

A client socket is named by the ``conn`` id ``client_opened`` returned; an
outgoing connection (a *link*, e.g. to Redis) by the ``link`` id of the
``OpenLink`` that dialled it. Link ids are opaque: the core picks a new one for
every dial and never reuses it, so a broker can open links at run time and the
shell needs no notion of what a link is for.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Action",
    "CloseClient",
    "CloseLink",
    "OpenLink",
    "PauseClient",
    "ResumeClient",
    "SendToClient",
    "SendToClients",
    "SendToLink",
    "StopListening",
    "Stopped",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class SendToClient:
    """Write everything the core queued for one socket since the last drain: one write per socket."""

    conn: int
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class SendToClients:
    """Write the same bytes on each of several sockets, each as its one write of this drain.

    A group message's frame is built once and is all its members are owed, so
    one action carries it for all of them: a broadcast costs the shell a loop,
    not an action object and a dispatch per member. ``conns`` has at least two
    ids, none of them in another ``SendToClient`` or ``SendToClients`` of the
    same drain.
    """

    conns: tuple[int, ...]
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
class OpenLink:
    """Dial ``host:port`` (TLS if ``tls``) as ``link``, a fresh id: no late callback of an older dial passes for it."""

    link: int
    host: str
    port: int
    tls: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class SendToLink:
    """Write on an open link: everything the core queued for it since the last drain, so one write per link."""

    link: int
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class CloseLink:
    """Drop the link, or abandon its dial, and forget its id: the core has already scheduled what follows."""

    link: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StopListening:
    """Shutdown began: accept no new clients."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Stopped:
    """Shutdown finished (or timed out): the shell may exit."""


Action = (
    SendToClient
    | SendToClients
    | CloseClient
    | PauseClient
    | ResumeClient
    | OpenLink
    | SendToLink
    | CloseLink
    | StopListening
    | Stopped
)
