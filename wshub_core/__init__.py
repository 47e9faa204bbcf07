"""WS-Hub's Sans-IO core: bytes, connection events and time in; actions out.

Nothing in this package opens a socket, reads a clock or touches an event loop.
See docs/architecture.md for how to drive it from any loop.
"""

from __future__ import annotations

from ._actions import (
    Action,
    CloseClient,
    CloseLink,
    OpenLink,
    PauseClient,
    ResumeClient,
    SendToClient,
    SendToClients,
    SendToLink,
    StopListening,
    Stopped,
)
from ._auth import token_verifier
from ._client import ClientState, CloseCode
from ._config import ENV_PREFIX, KEYS, Config, ConfigError, env_name, load_config
from ._core import Core
from ._echo import EchoHub
from ._hub import Hub, encode_message
from ._redis import RedisState
from ._redis_broker import RedisLink
from ._routing import parse_groups

__all__ = [
    "ENV_PREFIX",
    "KEYS",
    "Action",
    "ClientState",
    "CloseClient",
    "CloseCode",
    "CloseLink",
    "Config",
    "ConfigError",
    "Core",
    "EchoHub",
    "Hub",
    "OpenLink",
    "PauseClient",
    "RedisLink",
    "RedisState",
    "ResumeClient",
    "SendToClient",
    "SendToClients",
    "SendToLink",
    "StopListening",
    "Stopped",
    "encode_message",
    "env_name",
    "load_config",
    "parse_groups",
    "token_verifier",
]
