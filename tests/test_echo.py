"""The echo app: EchoHub on the core alone, then each real shell (asyncio, trio) with a real client.

The full protocol check is Autobahn (conformance/run_autobahn.sh); these are
the quick guards: kinds and ordering of echoes (RFC 6455 5.6, 5.5.1), the
size limit (7.4.1, 1009), and that the ``python -m`` entry point serves.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from wsproto.frame_protocol import Frame, FrameProtocol, Opcode

from helpers import serving, shell_module
from wshub_asyncio.echo import parse_address
from wshub_core import CloseClient, SendToClient
from wshub_core._echo import EchoHub

REPO = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024

HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)) + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class Peer:
    """A client that talks to an EchoHub directly: frames in, what the hub would write out."""

    def __init__(self, hub: EchoHub) -> None:
        self.hub = hub
        self.encoder = FrameProtocol(client=True, extensions=[])
        self.decoder = FrameProtocol(client=True, extensions=[])  # a client reads unmasked frames
        self.conn = hub.client_opened(0.0)
        self.closed = False
        written = self.send(HANDSHAKE)
        head, _, rest = written.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        assert rest == b""

    def send(self, data: bytes) -> bytes:
        self.hub.client_data(self.conn, data, 0.0)
        out = b""
        for action in self.hub.actions():
            if isinstance(action, SendToClient) and action.conn == self.conn:
                out += action.data
            elif isinstance(action, CloseClient) and action.conn == self.conn:
                self.closed = True
        return out

    def frames(self, data: bytes) -> list[Frame]:
        self.decoder.receive_bytes(data)
        return list(self.decoder.received_frames())

    def text(self, payload: str) -> bytes:
        return bytes(self.encoder.send_data(payload, fin=True))

    def binary(self, payload: bytes) -> bytes:
        return bytes(self.encoder.send_data(payload, fin=True))


def kinds(frames: list[Frame]) -> list[tuple[Opcode, object]]:
    return [(f.opcode, f.payload) for f in frames]


class TestEchoHubRFC6455Section5_6:
    """Data frames: a text message comes back as text, a binary one as binary."""

    def test_text_and_binary(self) -> None:
        peer = Peer(EchoHub())
        out = peer.send(peer.text("héllo") + peer.binary(b"\xff\x00"))
        assert kinds(peer.frames(out)) == [(Opcode.TEXT, "héllo"), (Opcode.BINARY, b"\xff\x00")]

    def test_fragmented_message_comes_back_whole(self) -> None:
        peer = Peer(EchoHub())
        first = bytes(peer.encoder.send_data("frag", fin=False))
        ping = bytes(peer.encoder.ping(b"p"))
        last = bytes(peer.encoder.send_data("ment", fin=True))
        out = peer.send(first + ping + last)
        assert kinds(peer.frames(out)) == [(Opcode.PONG, b"p"), (Opcode.TEXT, "fragment")]

    def test_binary_that_is_valid_utf8_stays_binary(self) -> None:
        peer = Peer(EchoHub())
        out = peer.send(peer.binary(b"") + peer.binary(b"abc"))
        assert kinds(peer.frames(out)) == [(Opcode.BINARY, b""), (Opcode.BINARY, b"abc")]


class TestEchoHubRFC6455Section5_5_1:
    """Close: echoes of messages that arrived before a close still go out before ours."""

    def test_message_then_close_in_one_read(self) -> None:
        peer = Peer(EchoHub())
        out = peer.send(peer.text("bye") + bytes(peer.encoder.close(1000, "done")))
        assert kinds(peer.frames(out)) == [(Opcode.TEXT, "bye"), (Opcode.CLOSE, (1000, "done"))]
        assert peer.closed

    def test_message_then_protocol_error_in_one_read(self) -> None:
        """Autobahn 3.2: the echo, then 1002 for the frame with a reserved bit set."""
        peer = Peer(EchoHub())
        bad = bytearray(peer.encoder._serialize_frame(Opcode.TEXT, b"x", fin=True))
        bad[0] |= 0x20  # RSV2
        out = peer.send(peer.text("Hello, world!") + bytes(bad) + bytes(peer.encoder.ping()))
        frames = peer.frames(out)
        assert kinds(frames)[0] == (Opcode.TEXT, "Hello, world!")
        assert frames[1].opcode is Opcode.CLOSE and frames[1].payload[0] == 1002
        assert len(frames) == 2 and peer.closed

    def test_invalid_utf8_is_1007(self) -> None:
        peer = Peer(EchoHub())
        out = peer.send(bytes(peer.encoder._serialize_frame(Opcode.TEXT, b"\xce\xba\xe1\xbd", fin=True)))
        (frame,) = peer.frames(out)
        assert frame.opcode is Opcode.CLOSE and frame.payload[0] == 1007


class TestEchoHubLimits:
    def test_message_over_the_limit_is_1009(self) -> None:
        peer = Peer(EchoHub(max_message_size=1000))
        out = peer.send(peer.binary(b"\xff" * 1000))
        assert kinds(peer.frames(out)) == [(Opcode.BINARY, b"\xff" * 1000)]
        (frame,) = peer.frames(peer.send(peer.binary(b"\xff" * 1001)))
        assert frame.opcode is Opcode.CLOSE and frame.payload[0] == 1009

    def test_other_path_is_404(self) -> None:
        hub = EchoHub()
        conn = hub.client_opened(0.0)
        hub.client_data(conn, HANDSHAKE.replace(b"GET / ", b"GET /ws "), 0.0)
        sent = [a for a in hub.actions() if isinstance(a, SendToClient)]
        assert sent[0].data.startswith(b"HTTP/1.1 404")
        assert hub.client_count() == 0

    def test_handshake_timeout(self) -> None:
        hub = EchoHub(handshake_timeout=5.0)
        conn = hub.client_opened(0.0)
        assert hub.next_deadline() == 5.0
        hub.handle_timer(5.0)
        assert CloseClient(conn=conn, abort=True) in hub.actions()
        assert hub.client_count() == 0 and hub.next_deadline() is None

    def test_write_stall_closes_with_1008(self) -> None:
        peer = Peer(EchoHub(write_wait=2.0))
        peer.hub.client_write_paused(peer.conn, 1.0)
        assert peer.hub.next_deadline() == 3.0
        peer.hub.handle_timer(3.0)
        assert CloseClient(conn=peer.conn, abort=True) in peer.hub.actions()


# -- the real shell --------------------------------------------------------------------


async def _echo_roundtrips(uri: str) -> None:
    async with connect(uri, max_size=None, compression=None) as ws:
        await ws.send("hello, wörld")
        assert await ws.recv() == "hello, wörld"
        await ws.send(b"\x00\xfe\xff")
        assert await ws.recv() == b"\x00\xfe\xff"
        big = bytes(range(256)) * (MiB // 256)  # not UTF-8
        await ws.send(big)
        assert await ws.recv() == big
        big_text = "é" * (MiB // 2)
        await ws.send(big_text)
        assert await ws.recv() == big_text
        pong = await ws.ping(b"are you there")
        await asyncio.wait_for(pong, 5)
    assert ws.close_code == 1000


def test_echo_server_in_process(shell: str) -> None:
    async def main() -> None:
        async with serving(EchoHub(), shell) as server:
            await _echo_roundtrips(f"ws://127.0.0.1:{server.port}/")
            server.shutdown()
            await asyncio.wait_for(server.stopped.wait(), 5)

    asyncio.run(main())


def test_shutdown_closes_clients_with_1001(shell: str) -> None:
    async def main() -> None:
        async with serving(EchoHub(), shell) as server:
            async with connect(f"ws://127.0.0.1:{server.port}/") as ws:
                server.shutdown()
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 5)
            assert ws.close_code == 1001
            await asyncio.wait_for(server.stopped.wait(), 5)

    asyncio.run(main())


@pytest.fixture
def echo_process(shell: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """``python -m wshub_<shell>.echo`` on a port of its choosing (it prints it)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", f"{shell_module(shell)}.echo", "--address", "127.0.0.1:0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on 127.0.0.1:" in line, line
        yield proc, int(line.rsplit(":", 1)[1])
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_python_m_entry_point(echo_process: tuple[subprocess.Popen[str], int]) -> None:
    proc, port = echo_process
    asyncio.run(_echo_roundtrips(f"ws://127.0.0.1:{port}/"))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:9001", ("127.0.0.1", 9001)),
    (":9001", ("", 9001)),
    ("[::1]:80", ("::1", 80)),
])
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["9001", "host:", "host:99999", "host:http"])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_address(text)
