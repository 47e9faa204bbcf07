#!/usr/bin/env python3
"""The kernel's floor under every per-client write: CPU of one small send() on loopback TCP.

    python bench/syscall_floor.py [--sockets 2000] [--size 66]

Opens N loopback TCP connections to itself and times one ``send()`` of a
WebSocket-sized frame on each server-side socket (nothing else: no event loop,
no Python object per client). On loopback the sender's CPU also pays for the
receiver's TCP processing, so this is what any server on this machine pays per
unbatched delivery before doing any work of its own. Bounded: 3 rounds.
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--sockets", type=int, default=2000)
    p.add_argument("--size", type=int, default=66, help="bytes per send (a 64 B text frame is 66)")
    a = p.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    n = min(a.sockets, (hard - 64) // 2)
    listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
    clients: list[socket.socket] = []
    servers: list[socket.socket] = []
    try:
        for _ in range(n):
            clients.append(socket.create_connection(listener.getsockname()))
            servers.append(listener.accept()[0])
        frame = b"\x81" + bytes([a.size - 2]) + b"x" * (a.size - 2) if a.size < 128 else b"x" * a.size
        rounds = []
        for _ in range(3):
            c0, w0 = time.process_time(), time.perf_counter()
            for s in servers:
                s.send(frame)
            c1, w1 = time.process_time(), time.perf_counter()
            rounds.append({"cpu_us_per_send": round((c1 - c0) * 1e6 / n, 2),
                           "wall_us_per_send": round((w1 - w0) * 1e6 / n, 2)})
            for c in clients:
                c.recv(65536)
        print(json.dumps({"sockets": n, "size": a.size, "rounds": rounds}))
    finally:
        for s in (*clients, *servers, listener):
            s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
