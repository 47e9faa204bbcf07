"""A graceful close: it reaches a client that is still sending, and it ends by writeWait for one that never reads.

A graceful close flushes, shuts the write side, and reads and discards what
the client still sends until its EOF (the lingering close): the client reads
the close frame and then EOF, never a reset. The transport reports its loss
only when the flush and the linger are done: for a peer that never reads
again, never. The core keeps such a socket as *closing* and aborts it at
``webSocket.writeWait``. Observed where it matters: a real hub process
(``python -m wshub_asyncio`` on uvloop, ``python -m wshub_trio``), the client
sockets it holds and what a raw-socket client reads.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import (
    RedisProcess,
    free_port,
    http_exchange,
    hub_process,
    raw_websocket,
    self_signed,
    shell_module,
    upgrade_head,
    within,
    ws_frame,
)

ROOT = Path(__file__).resolve().parent.parent
WRITE_WAIT = 2.0
GROUPS_TIMEOUT = 1.0


def client_sockets(pid: int, port: int) -> int:
    """How many TCP connections accepted on ``port`` (127.0.0.1) the process holds a descriptor of."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed while we looked
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    accepted = set()
    with open("/proc/net/tcp", encoding="ascii") as table:
        for row in table.readlines()[1:]:
            fields = row.split()  # sl local_address rem_address st ... inode (the 10th)
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] != "0A":  # 0A: LISTEN
                accepted.add(fields[9])
    return len(inodes & accepted)


async def wait_clients(pid: int, port: int, want: int, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (held := client_sockets(pid, port)) != want:
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {held} client sockets, want {want}")
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
            # The readiness probes' sockets go when the hub has read their EOF (the lingering close).
            await wait_clients(proc.pid, port, 1, 5, "the client's socket alone")
            # 8 MiB of pings, never reading the pongs: far more than the kernel buffers hold.
            ping = ws_frame(0x9, b"p" * 125)
            flood = asyncio.ensure_future(loop.sock_sendall(sock, ping * (8 * 1024 * 1024 // len(ping))))
            # Slack for a loaded 2-core machine (it took 4.4 s there); without the abort the socket would
            # stay until pongWait (60 s), so the bound still tells the two apart.
            deadline = GROUPS_TIMEOUT + WRITE_WAIT + 5.0
            await wait_clients(proc.pid, port, 0, deadline, "the unflushable socket aborted")
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


def test_a_client_flooding_past_its_rate_limit_reads_the_close_frame_then_eof(shell: str) -> None:
    """It goes on writing after the hub closed it (20 messages a second allowed, 1000 sent at once): without
    the lingering close its unread bytes make the hub's kernel reset the connection, which discards the
    close frame still queued, and the client sees no close frame (1006) or a reset after it."""
    asyncio.run(flood_until_closed(shell, "rate limit"))


@pytest.mark.parametrize("cause", ["rate limit", "too big", "shutdown"])
def test_over_tls_a_client_still_sending_reads_the_close_frame_then_eof(shell: str, cause: str,
                                                                       tmp_path: Path) -> None:
    """The same over ``wss://``, where TLS has no half-close: the hub lingers after its close_notify
    (asyncio on uvloop: its TLS close reads on; trio: close_notify, FIN, then it reads and discards until
    the client's close_notify or EOF). Without that a client still sending saw a reset after the close
    frame, on trio often instead of it (1006): docs/protocol.md, Limits. Both shells as
    ``python -m`` runs them; the standard asyncio loop, whose TLS close aborts on the client's records
    after its close_notify, is not one of them."""
    cert, key = self_signed(tmp_path)
    asyncio.run(flood_until_closed(shell, cause, tls=ssl.create_default_context(cafile=str(cert)),
                                   WSHUB_TLS_CERT_FILE=str(cert), WSHUB_TLS_KEY_FILE=str(key)))


def test_over_tls_the_close_is_close_notify_and_the_clients_close_notify_ends_the_linger(shell: str,
                                                                                        tmp_path: Path) -> None:
    """After the close frame the client reads the hub's close_notify (a clean TLS end: a bare TCP EOF raises
    SSLEOFError here, a reset ConnectionResetError), then still sends (the hub reads and discards it) and
    sends its own close_notify; the hub, having read that, closes the socket, though the client keeps its
    TCP side open, well before writeWait (10 s) would."""
    cert, key = self_signed(tmp_path)
    payload = (1009).to_bytes(2, "big") + b"message over 4096 bytes"

    def client(port: int) -> tuple[bytes, socket.socket]:
        tls = ssl.create_default_context(cafile=str(cert)).wrap_socket(
            socket.create_connection(("127.0.0.1", port)), server_hostname="localhost", suppress_ragged_eofs=False)
        tls.settimeout(5)
        tls.sendall(upgrade_head("big"))
        received = b""
        while b"\r\n\r\n" not in received:
            received += tls.recv(1)  # byte by byte: nothing after the head
        assert received.startswith(b"HTTP/1.1 101")
        tls.sendall(ws_frame(0x2, b"z" * 5000) + ws_frame(0x2, b"z" * 100) * 50)  # over the limit, then more
        received = b""
        while chunk := tls.recv(65536):  # b"" only at the hub's close_notify
            received += chunk
        assert received == bytes([0x88, len(payload)]) + payload
        time.sleep(0.2)  # a hub that closed at its close_notify has closed by now: what follows meets a reset
        tls.sendall(ws_frame(0x1, b"late") * 200)  # TLS lets a peer send after the other's close_notify
        return received, tls.unwrap()  # our close_notify (the hub's was read): TCP stays open, both ways

    async def scenario() -> None:
        async with hub_process(shell=shell, WSHUB_WEBSOCKET_MAX_MESSAGE_SIZE="4096", WSHUB_TLS_CERT_FILE=str(cert),
                               WSHUB_TLS_KEY_FILE=str(key)) as hub:
            _, plain = await asyncio.to_thread(client, hub.port)
            try:
                await wait_clients(hub.proc.pid, hub.port, 0, 5, "the hub's close after the client's close_notify")
            finally:
                plain.close()

    asyncio.run(scenario())


# Why the hub closes a client that is still sending: its settings, the frame the client floods, the close frame.
FLOODS = {
    "rate limit": ({"WSHUB_WEBSOCKET_MAX_MESSAGES_PER_SECOND": "20"}, ws_frame(0x1, b"x" * 4096),
                   (1008, b"message rate limit: 20 per second")),
    "too big": ({"WSHUB_WEBSOCKET_MAX_MESSAGE_SIZE": "4096"}, ws_frame(0x2, b"z" * 5000),
                (1009, b"message over 4096 bytes")),
    "shutdown": ({}, ws_frame(0x1, b"s" * 4096), (1001, b"server shutting down")),  # SIGTERM mid-flood
}


async def flood_until_closed(shell: str, cause: str, *, tls: ssl.SSLContext | None = None, **env: str) -> None:
    """A hub process; a raw client floods it with ``cause``'s frame, reads the close frame, then EOF, not a reset."""
    settings, frame, expected = FLOODS[cause]
    async with hub_process(shell=shell, **settings, **env) as hub:
        ws = await raw_websocket(hub.port, "flood", tls=tls)
        assert ws.status_line == b"HTTP/1.1 101 Switching Protocols"
        flood = asyncio.ensure_future(ws.flood_until_close(frame, times=1000 if cause != "shutdown" else 100_000))
        if cause == "shutdown":
            await asyncio.sleep(0.3)  # the flood under way
            hub.proc.send_signal(signal.SIGTERM)
        close, eof = await flood
        assert (close.close_code, close.payload[2:]) == expected
        assert eof, "a reset after the close frame, not the hub's EOF"
        await ws.aclose()
        if cause == "shutdown":
            assert await within(hub.proc.wait(), 15) == 0
