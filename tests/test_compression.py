"""permessage-deflate over real sockets (docs/protocol.md, Compression): the websockets client as a browser.

The hub runs in this process on the memory broker; its backend is the HTTP API.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

from helpers import TEST_API_KEY, EventStream, HttpClient, hub_config, running_hub, within, ws_url

PAYLOAD = json.dumps({"quotes": [{"symbol": f"S{i}", "price": 100 + i / 8, "volume": i * 37} for i in range(120)]})


def run(coro: Any) -> None:
    asyncio.run(coro)


def compressed_config(**overrides: Any) -> Any:
    return hub_config(0, "c:", broker="memory", api={"key": TEST_API_KEY},
                      webSocket={"compression": True, **overrides})


async def api(port: int, method: str, path: str, body: bytes = b"") -> int:
    client = await HttpClient.open(port)
    try:
        status, _, _ = await client.request(method, path, body)
        return status
    finally:
        await client.close()


def test_a_compressing_client_and_a_plain_one_get_the_same_group_message(shell: str) -> None:
    async def scenario() -> None:
        async with running_hub(compressed_config(), shell) as server:
            deflating = await websockets.connect(ws_url(server.port, "deflating"), proxy=None, compression="deflate")
            plain = await websockets.connect(ws_url(server.port, "plain"), proxy=None, compression=None)
            try:
                extensions = deflating.response.headers["sec-websocket-extensions"]
                assert "permessage-deflate" in extensions
                assert "server_no_context_takeover" in extensions and "client_no_context_takeover" in extensions
                assert "sec-websocket-extensions" not in plain.response.headers
                for key in ("deflating", "plain"):
                    assert await api(server.port, "PUT", f"/api/keys/{key}/groups", b'["g"]') == 200
                assert await api(server.port, "POST", "/api/groups/g", PAYLOAD.encode()) == 200
                assert await within(deflating.recv()) == PAYLOAD
                assert await within(plain.recv()) == PAYLOAD
                # the frames were compressed once: bytes queued are well under twice the payload
                assert server.core.stats.bytes_out < len(PAYLOAD) * 1.6
            finally:
                await deflating.close()
                await plain.close()

    run(scenario())


def test_a_compressed_client_message_reaches_the_backend_inflated(shell: str) -> None:
    async def scenario() -> None:
        async with running_hub(compressed_config(), shell) as server:
            stream = await EventStream.open(server.port)
            try:
                async with websockets.connect(ws_url(server.port, "k"), proxy=None, compression="deflate") as ws:
                    await ws.send(PAYLOAD)
                    while True:
                        event, data = await within(stream.next())
                        if event == "client-data":
                            break
                    assert data == {"key": "k", "data": PAYLOAD}
            finally:
                await stream.close()

    run(scenario())


def test_a_compression_bomb_is_closed_with_1009(shell: str) -> None:
    """8 MiB of zeros arrive as about 8 KiB; the hub stops inflating at maxMessageSize (64 KiB)."""

    async def scenario() -> None:
        async with running_hub(compressed_config(), shell) as server:
            ws = await websockets.connect(ws_url(server.port, "bomber"), proxy=None, compression="deflate",
                                          max_size=None)
            await ws.send(b"\0" * (8 << 20))
            with pytest.raises(websockets.ConnectionClosed):
                await within(ws.recv(), 10)
            assert ws.close_code == 1009 and ws.close_reason == "message over 65536 bytes"

    run(scenario())


def test_compression_off_negotiates_nothing(shell: str) -> None:
    async def scenario() -> None:
        config = hub_config(0, "c:", broker="memory", api={"key": TEST_API_KEY})
        async with running_hub(config, shell) as server:
            factory = ClientPerMessageDeflateFactory()
            async with websockets.connect(ws_url(server.port, "k"), proxy=None, extensions=[factory],
                                          compression=None) as ws:
                assert "sec-websocket-extensions" not in ws.response.headers

    run(scenario())
