"""Each shell's one ``Server`` executes the link actions: ``OpenLink`` (with or without TLS), ``CloseLink``.

A stand-in server that accepts TCP and never answers shows what the shell
dialled: the first bytes of a plain link are the hub's prelude PING, of a TLS
link a TLS handshake record. Against it a TLS dial never completes, so the
core's connect timeout (``CloseLink`` of a dial in flight) can be watched from
both ends: the abandoned connection is closed and the redial is a new link id.
The link lifecycle against a real redis-server (lost, re-armed, redialled) is
in test_shell_inputs.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from helpers import hub_config, running_hub, wait_for
from wshub_core import RedisLink, RedisState

TLS_HANDSHAKE_RECORD = b"\x16\x03"  # content type 22 (handshake), protocol major version 3
PING = b"*1\r\n$4\r\nPING\r\n"  # the prelude without AUTH/SELECT, as RESP


class SilentServer:
    """Accepts TCP, records what each connection sent until it closed, answers nothing."""

    def __init__(self) -> None:
        self.received: list[bytearray] = []
        self.closed: list[bool] = []
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(self.received)
        self.received.append(bytearray())
        self.closed.append(False)
        self._writers.append(writer)
        while chunk := await reader.read(65536):
            self.received[index] += chunk
        self.closed[index] = True

    async def close(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()


@asynccontextmanager
async def hub_dialling(shell: str, scheme: str, **overrides: Any) -> AsyncIterator[tuple[Any, SilentServer]]:
    silent = SilentServer()
    port = await silent.start()
    config = hub_config(port, "links:", redis_address=f"{scheme}://127.0.0.1:{port}", **overrides)
    try:
        async with running_hub(config, shell, ready=False) as server:
            yield server, silent
    finally:
        await silent.close()


@pytest.mark.parametrize("scheme, first_bytes", [("redis", PING), ("rediss", TLS_HANDSHAKE_RECORD)])
def test_open_link_dials_with_tls_exactly_when_the_action_says_so(shell: str, scheme: str, first_bytes: bytes) -> None:
    async def scenario() -> None:
        async with hub_dialling(shell, scheme) as (server, silent):
            await wait_for(lambda: len(silent.received) == 2 and all(len(r) >= 2 for r in silent.received),
                           what="both links dialled and writing")
            assert all(bytes(r).startswith(first_bytes) for r in silent.received), silent.received
            ids = sorted(server.core.broker.current_links().values())
            if scheme == "redis":  # open, waiting for the PONG
                assert sorted(server.links) == ids and not server._dials
            else:  # the TLS handshake is never answered: still dialling
                assert sorted(server._dials) == ids and not server.links

    asyncio.run(scenario())


def test_close_link_abandons_a_dial_in_flight_and_the_redial_is_a_new_link(shell: str) -> None:
    """A TLS handshake nobody answers: at redis.timeout the core closes the dial; the shell cancels it."""
    async def scenario() -> None:
        async with hub_dialling(shell, "rediss", redis_timeout=1) as (server, silent):
            hub = server.core
            first = hub.broker.current_links()
            assert sorted(server._dials) == sorted(first.values()) and not server.links
            await wait_for(lambda: len(silent.received) == 2, what="both dials reached the server")
            await wait_for(lambda: all(silent.closed[:2]), timeout=1 + 1.0,
                           what="the abandoned dials closed by the shell at the connect timeout")
            await wait_for(lambda: len(silent.received) >= 4, timeout=0.2 + 1.0, what="redialled")
            again = hub.broker.current_links()
            assert again.keys() == {RedisLink.SUBSCRIBER, RedisLink.COMMANDS}
            assert min(again.values()) > max(first.values())
            assert sorted(server._dials) == sorted(again.values()) and not server.links
            assert set(hub.link_states().values()) == {RedisState.CONNECTING}
            assert "connect timed out after 1s" in hub.broker.not_ready_reason()

    asyncio.run(scenario())
