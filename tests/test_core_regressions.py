"""Regressions found by fuzzing and review, pinned at the core's API (no I/O)."""

from __future__ import annotations

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request

from wshub_core import (
    CloseClient,
    CloseLink,
    ConfigError,
    Hub,
    OpenLink,
    PauseClient,
    RedisLink,
    ResumeClient,
    SendToClient,
    load_config,
)


def resp(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def hub_with_client(config_text: str = "") -> tuple[Hub, int]:
    hub = Hub(config=load_config("broker: redis\n" + config_text, source="test"), seed=3)
    hub.start(0.0)
    for action in hub.actions():
        assert isinstance(action, OpenLink)
        hub.link_opened(action.link, 0.0)
        hub.link_data(action.link, b"+PONG\r\n", 0.0)  # the handshake's PING answered
    hub.actions()
    client = WSConnection(ConnectionType.CLIENT)
    conn = hub.client_opened(0.0)
    hub.client_data(conn, client.send(Request(host="h", target="/ws?session_key=k")), 0.0)
    for action in hub.actions():
        if isinstance(action, SendToClient):
            client.receive_data(action.data)
    assert any(isinstance(e, AcceptConnection) for e in client.events())
    return hub, conn


class TestFlowControl:
    def test_a_full_socket_also_stops_reading_and_resumes_when_drained(self) -> None:
        hub, conn = hub_with_client()
        hub.client_write_paused(conn, 1.0)
        assert PauseClient(conn=conn) in hub.actions()
        hub.client_write_resumed(conn, 2.0)
        assert ResumeClient(conn=conn) in hub.actions()

    def test_a_client_we_do_not_read_is_not_closed_for_silence(self) -> None:
        """Its pongs wait unread in the socket: only writeWait may close it."""
        hub, conn = hub_with_client("webSocket:\n  pongWait: 1\n  writeWait: 30\n")
        hub.client_write_paused(conn, 0.5)
        hub.actions()
        for t in (1.0, 2.0, 5.0, 10.0):
            hub.handle_timer(t)
            assert not any(isinstance(a, CloseClient) for a in hub.actions()), t
        hub.client_write_resumed(conn, 10.0)
        hub.actions()
        hub.handle_timer(10.5)  # the silence clock restarted at the resume
        assert not any(isinstance(a, CloseClient) for a in hub.actions())
        hub.handle_timer(11.5)
        assert CloseClient(conn=conn, abort=False) in hub.actions()  # now it is silent for pongWait

    def test_write_stall_still_closes_after_write_wait(self) -> None:
        hub, conn = hub_with_client("webSocket:\n  pongWait: 60\n  writeWait: 2\n")
        hub.client_write_paused(conn, 1.0)
        hub.actions()
        hub.handle_timer(3.5)
        assert CloseClient(conn=conn, abort=True) in hub.actions()


class TestRedisReplyBookkeeping:
    @pytest.mark.parametrize("data", [
        b"%1\r\n*0\r\n",  # a RESP3 map keyed by an array: hiredis raises TypeError
        resp(b"subscribe", b"ws-hub:groups-new:never-asked", b"1"),  # a confirmation we are not owed
        resp(b"unsubscribe", b"ws-hub:group-data:never-asked", b"0"),
    ])
    def test_a_reply_that_breaks_the_bookkeeping_drops_and_redials_the_link(self, data: bytes) -> None:
        hub, _conn = hub_with_client()
        sub = hub.broker.current_links()[RedisLink.SUBSCRIBER]
        hub.link_data(sub, data, 1.0)
        actions = hub.actions()
        assert CloseLink(link=sub) in actions
        assert not any(isinstance(a, CloseClient) for a in actions)  # clients stay


class TestConfigErrors:
    @pytest.mark.parametrize("text, where", [
        ("redis:\n  address: 'A://['\n", "redis.address"),
        ("a: " + "[" * 2000 + "]" * 2000 + "\n", "nested too deeply"),
    ])
    def test_bad_text_is_a_config_error(self, text: str, where: str) -> None:
        with pytest.raises(ConfigError, match=where):
            load_config(text, source="c.yaml")
