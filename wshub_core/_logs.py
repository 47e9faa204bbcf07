"""What the core's log calls may say about clients and peers, computed only when a line is logged.

Rules:
1. Session keys are credentials (README): a log line at INFO or above names a
   key by ``fingerprint(key)``, never the key itself; only ``--debug`` lines
   may carry the whole key.
2. Nothing here escapes or cuts: log calls pass raw values as arguments and as
   ``extra`` fields (names in ``FIELDS``), and the shell's formatter escapes
   and bounds every value in one place (docs/operations.md#logs).
3. No clock, environment, file or randomness: a fingerprint is the same in
   every process and after every restart, so operators can grep for it.
"""

from __future__ import annotations

import hashlib

__all__ = ["FIELDS", "fingerprint", "host_port"]

# The structured fields a log call may pass in ``extra``; the JSON formatter emits these.
FIELDS = ("event", "conn", "key", "code", "reason", "status", "origin", "link", "groups", "count")


def fingerprint(key: str) -> str:
    """The first 8 hex digits of SHA-256 of the key's UTF-8: short, stable, not the credential.

    Operators find a key's lines with ``printf %s "$KEY" | sha256sum | cut -c1-8``.
    """
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets (``[::1]:6379``) so the port is not read as part of it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
