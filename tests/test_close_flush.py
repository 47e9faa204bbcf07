"""A graceful close to a peer that does not read ends by writeWait (the hub process holds no socket for it).

``transport.close()`` flushes before closing, and asyncio reports
``connection_lost`` only when the flush is done: for a peer that never reads
again, never. The core keeps such a socket as *closing* and aborts it at
``webSocket.writeWait``. Observed where it matters: the socket file
descriptors of a real ``python -m wshub_asyncio`` process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import yaml

from helpers import RedisProcess, free_port, http_exchange, shell_module, upgrade_head, within, ws_frame

ROOT = Path(__file__).resolve().parent.parent
WRITE_WAIT = 2.0
GROUPS_TIMEOUT = 1.0


def socket_fds(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            pass  # closed while we looked
    return count


async def wait_fds(pid: int, want: int, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while socket_fds(pid) != want:
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {socket_fds(pid)} sockets, want {want}")
        await asyncio.sleep(0.01)


def test_a_graceful_close_the_peer_never_reads_is_aborted_within_write_wait(shell: str, redis_server: RedisProcess,
                                                                            prefix: str,
                                                                            tmp_path: Path) -> None:
    """The client floods pings and reads nothing: the hub's pongs fill its socket. groupsTimeout then
    closes it gracefully (1008, a flushing close) before the write stall would abort it; that close can
    never flush, so the hub aborts it at writeWait after its socket filled up."""
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "address": f"127.0.0.1:{port}",
        "redis": {"address": f"127.0.0.1:{redis_server.port}", "channelPrefix": prefix},
        "webSocket": {"writeWait": WRITE_WAIT, "groupsTimeout": GROUPS_TIMEOUT},
    }), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSHUB_")}

    async def scenario() -> None:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", shell_module(shell), "--config", str(config),
                                                    cwd=ROOT, env=env, stderr=asyncio.subprocess.PIPE)
        assert proc.stderr is not None
        stderr = proc.stderr
        flood: asyncio.Future[None] | None = None
        sock = socket.socket()
        try:
            async def listening() -> None:
                while b"listening on" not in (line := await stderr.readline()):
                    assert line, "the hub exited early"

            await within(listening(), 15)
            drain = asyncio.ensure_future(stderr.read())
            while (await http_exchange(port, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")).status != 200:
                await asyncio.sleep(0.02)  # polling the hub's own readiness endpoint
            await asyncio.sleep(0)
            baseline = socket_fds(proc.pid)  # listening socket, two Redis links, the loop's self-pipe

            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window, quickly full
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            await loop.sock_connect(sock, ("127.0.0.1", port))
            await loop.sock_sendall(sock, upgrade_head("slow"))
            head = b""
            while b"\r\n\r\n" not in head:
                head += await within(loop.sock_recv(sock, 1))  # byte by byte: nothing after the head is read
            upgraded = loop.time()
            assert head.startswith(b"HTTP/1.1 101")
            await wait_fds(proc.pid, baseline + 1, 5, "the client's socket")
            # 8 MiB of pings, never reading the pongs: far more than the kernel buffers hold.
            ping = ws_frame(0x9, b"p" * 125)
            flood = asyncio.ensure_future(loop.sock_sendall(sock, ping * (8 * 1024 * 1024 // len(ping))))
            # Slack for a loaded 2-core machine (it took 4.4 s there); without the abort the socket would
            # stay until pongWait (60 s), so the bound still tells the two apart.
            deadline = GROUPS_TIMEOUT + WRITE_WAIT + 5.0
            await wait_fds(proc.pid, baseline, deadline, "the unflushable socket aborted")
            assert loop.time() - upgraded <= deadline
            proc.send_signal(signal.SIGTERM)
            assert await within(proc.wait(), 10) == 0
            await drain
        finally:
            if flood is not None:
                flood.cancel()
            sock.close()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    asyncio.run(scenario())
