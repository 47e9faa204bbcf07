"""Loop-neutral pieces every shell uses: one drain step, the wss:// context, the workers' SO_REUSEPORT socket,
the OS's words for a failed dial, and the start line.

Rules: stdlib ``socket`` and ``ssl`` only; nothing here imports an event loop
or decides anything the core decides.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
from collections.abc import Callable

from wshub_core import Action, Config, ConfigError, Core
from wshub_core._logs import host_port

__all__ = ["execute_actions", "log_listening", "os_reason", "reuseport_socket", "server_tls_context"]

log = logging.getLogger("wshub")


def execute_actions(core: Core, execute: Callable[[Action], None]) -> float | None:
    """A drain: every action the core has, in order, until it has none; then the deadline to arm the timer at."""
    actions = core.actions()
    while actions:
        for action in actions:
            execute(action)
        actions = core.actions()  # executing may call back into the core (a write pause, a loss)
    return core.next_deadline()


def os_reason(exc: BaseException) -> str:
    """What failed, in the OS's words ("Connection refused", "Name or service not known").

    asyncio words a refused connect as "Connect call failed ('127.0.0.1', 6379)", uvloop
    as the errno's text; the errno's text is the same on every loop.
    """
    if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError) and exc.errno:
        text = exc.strerror if isinstance(exc, socket.gaierror) else os.strerror(exc.errno)
        if text:
            return text
    return str(exc) or type(exc).__name__


def server_tls_context(config: Config) -> ssl.SSLContext | None:
    """The wss:// context, or None for plain ws://; errors name the keys and where each value came from."""
    if not config.tls_cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls_cert_file, config.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"{config.where('tls.certFile')} and {config.where('tls.keyFile')}: cannot load "
            f"{config.tls_cert_file!r} with {config.tls_key_file!r}: {exc}", json_logs=config.log_format == "json",
        ) from None
    return context


def reuseport_socket(config: Config) -> socket.socket:
    """A listening socket that sibling worker processes bind too; the kernel spreads connects."""
    every_interface = not config.host  # ":8080": IPv6 and IPv4, as create_server does
    family = socket.AF_INET6 if every_interface or ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if every_interface:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::" if every_interface else config.host, config.port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def log_listening(config: Config, *, port: int, loop: str, config_file: str | None) -> None:
    """The start line: where, which loop, TLS, which broker, which file -- "which settings is this running with"."""
    host = config.host or "*"
    if ":" in host:
        host = f"[{host}]"  # "::1:8080" would be ambiguous
    broker = ("memory broker (in this process)" if config.broker == "memory"
              else f"redis cluster ({config.redis_pubsub} pub/sub) from seed nodes "
                   + ", ".join(host_port(*a) for a in config.redis_seeds) if config.redis_seeds
              else f"redis broker at {host_port(config.redis_host, config.redis_port)}" if not config.redis_sentinels
              else f"redis broker at master {config.redis_master_name!r} of sentinels "
                   + ", ".join(host_port(*a) for a in config.redis_sentinels))
    log.info("listening on %s:%d%s (%s event loop), %s, %s, %s", host, port, config.server_url, loop,
             "TLS on (wss://)" if config.tls_cert_file else "TLS off (ws://)", broker,
             f"config file {config_file}" if config_file else "no config file")
