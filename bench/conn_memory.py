#!/usr/bin/env python3
"""What one idle WebSocket connection costs each shell: Python heap per connection, and where it goes.

    python bench/conn_memory.py --shell asyncio --clients 2000
    python bench/conn_memory.py --shell trio --clients 2000

The echo app's core (``EchoHub``: a ``ClientTable``, no pings) is served by the
shell's ``Server`` in this process under ``tracemalloc``; a child process opens
``--clients`` WebSocket connections (raw sockets, one upgrade each) and holds
them open, so nothing the clients allocate is counted here. The heap grown
between "child started" and "every client upgraded" is divided by the number
of clients and grouped by the package that allocated it: ``wshub_core`` (the
core's per-client state, the same on both shells), the shell itself, and its
event loop (``asyncio``'s transports, or ``trio``'s tasks, streams and cancel
scopes). RSS per connection at 15,000 clients is ``bench/run.py connect``'s.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import tracemalloc
from collections import defaultdict
from collections.abc import Callable
from typing import Any

CHILD = r"""
import base64, os, socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
print("started", flush=True)
sys.stdin.readline()
head = ("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n")
held = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall((head % base64.b64encode(os.urandom(16)).decode()).encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 101"), answer[:80]
    held.append(s)
print("ready", flush=True)
sys.stdin.readline()
"""

GROUPS = (("wshub_core", "/wshub_core/"), ("wshub_asyncio", "/wshub_asyncio/"), ("wshub_trio", "/wshub_trio/"),
          ("trio", "/trio/"), ("asyncio", "/asyncio/"), ("uvloop", "/uvloop/"))


def where(filename: str) -> str:
    for name, part in GROUPS:
        if part in filename:
            return name
    return "other"


def per_owner(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, clients: int,
              *, by_file: bool) -> dict[str, float]:
    """Bytes per client by the package (or package/file) of the allocating frame nearest to the allocation."""
    sizes: dict[str, int] = defaultdict(int)
    for stat in after.compare_to(before, "traceback"):
        # The innermost frame of a package named in GROUPS is who allocated it (a socket object made
        # inside trio's accept is trio's; a dict made in the core's client table is the core's).
        owner = next((frame for frame in reversed(stat.traceback) if where(frame.filename) != "other"), None)
        name = "other" if owner is None else where(owner.filename)
        if by_file and owner is not None:
            name += "/" + owner.filename.rsplit("/", 1)[-1]
        sizes[name] += stat.size_diff
    return {k: round(v / clients, 1) for k, v in sorted(sizes.items(), key=lambda kv: -kv[1]) if abs(v) >= clients}


def result(shell: str, clients: int, before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> dict[str, Any]:
    total = sum(s.size_diff for s in after.compare_to(before, "filename"))
    return {"shell": shell, "clients": clients, "heap_bytes_per_conn": round(total / clients, 1),
            "by_package": per_owner(before, after, clients, by_file=False),
            "by_file": per_owner(before, after, clients, by_file=True)}


def child(port: int, clients: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(port), str(clients)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def snapshot() -> tracemalloc.Snapshot:
    gc.collect()
    return tracemalloc.take_snapshot()


async def measure(shell: str, port: int, core: Any, clients: int, in_thread: Callable[..., Any],
                  sleep: Callable[[float], Any]) -> dict[str, Any]:
    """The heap grown while the child connects ``clients`` to ``port`` (the shell's loop's own helpers given)."""
    proc = child(port, clients)
    try:
        await wait_line(proc, "started", in_thread)
        before = snapshot()
        say(proc)
        await wait_line(proc, "ready", in_thread)
        while core.client_count() < clients:  # the last upgrades may still be in the loop
            await sleep(0.05)
        return result(shell, clients, before, snapshot())
    finally:
        say(proc)
        proc.wait(30)


async def on_asyncio(clients: int) -> dict[str, Any]:
    from wshub_asyncio import Server
    from wshub_core import EchoHub

    server = Server(EchoHub(handshake_timeout=600))
    await server.start(host="127.0.0.1", port=0)
    try:
        return await measure("asyncio", server.port, server.core, clients, asyncio.to_thread, asyncio.sleep)
    finally:
        await server.close()


async def on_trio(clients: int) -> dict[str, Any]:
    import trio

    from wshub_core import EchoHub
    from wshub_trio import Server

    server = Server(EchoHub(handshake_timeout=600))
    await server.listen(host="127.0.0.1", port=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        try:
            return await measure("trio", server.port, server.core, clients, trio.to_thread.run_sync, trio.sleep)
        finally:
            server.close()


async def wait_line(proc: subprocess.Popen[str], text: str, in_thread: Callable[..., Any]) -> None:
    assert proc.stdout is not None
    line = await in_thread(proc.stdout.readline)
    assert line.strip() == text, line


def say(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("\n")
    proc.stdin.flush()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--shell", choices=["asyncio", "trio"], required=True)
    p.add_argument("--clients", type=int, default=2000)
    a = p.parse_args()
    import wshub_asyncio  # noqa: F401 - imported before tracing starts: an import traced 25 frames deep is slow
    import wshub_core  # noqa: F401

    if a.shell == "trio":
        import wshub_trio  # noqa: F401
    tracemalloc.start(25)
    if a.shell == "asyncio":
        out = asyncio.run(on_asyncio(a.clients))
    else:
        import trio

        out = trio.run(on_trio, a.clients)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
