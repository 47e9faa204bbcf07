"""``GET /api/status`` and ``GET /admin`` in the core (docs/protocol.md, HTTP API): no sockets, a virtual clock.

On both brokers: the counts, the top groups in order, the last closes with
fingerprints (never keys) and codes, the Redis links' states; the ring
buffer's bound; the pure ``status`` function on its own.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from wshub_core import RedisState
from wshub_core._status import LAST_CLOSES, TOP_GROUPS, Close, status

from .harness import CMD, SUB, Harness, parse_http_answer
from .test_api_core import KEY, answers, api_config, api_request


def fp(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:8]


def get_status(h: Harness) -> dict[str, Any]:
    client = h.open()
    client.send_raw(api_request(b"GET", b"/api/status"))
    [(status_code, body)] = answers(client)
    assert status_code == 200, body
    value: dict[str, Any] = json.loads(body)
    return value


def give_groups(h: Harness, key: str, *groups: str) -> None:
    """The listener's answer, published through the hub's own broker (works on both)."""
    h.hub.broker.publish(h.channel(f"groups-new:{key}"), json.dumps(list(groups)).encode())
    h.run()


@pytest.mark.parametrize("broker", ["memory", "redis"])
class TestStatusOnBothBrokers:
    def test_connections_groups_and_closes(self, broker: str) -> None:
        h = Harness(api_config(broker))
        clients = {name: h.connect(name) for name in ("alice", "bob", "carol", "dave")}
        give_groups(h, "alice", "news", "room")
        give_groups(h, "bob", "news", "room")
        give_groups(h, "carol", "news", "zoo")
        give_groups(h, "dave", "alpha")
        clients["alice"].text("hi")
        h.run()
        h.advance(2.0)
        clients["dave"].close(1000, "bye")
        h.run()
        h.advance(3.0)
        s = get_status(h)
        assert s["broker"]["kind"] == broker and s["broker"]["ready"] is True and s["broker"]["reason"] is None
        assert s["connections"] == 3
        assert s["sockets"] >= 4  # the three members and the status request itself
        assert s["counters"]["connects"] == 4 and s["counters"]["messages_in"] == 1
        assert s["counters"]["api_calls"] == 1  # this status call
        assert s["groups"]["count"] == 3  # dave's group went with him
        assert s["groups"]["top"] == [{"name": "news", "members": 3}, {"name": "room", "members": 2},
                                      {"name": "zoo", "members": 1}]
        [close] = s["closes"]
        assert close == {"ago": 3.0, "key": fp("dave"), "code": 1000, "reason": "bye"}
        assert "dave" not in json.dumps(s)  # a key is a credential: only its fingerprint

    def test_a_kick_is_a_close_with_4000(self, broker: str) -> None:
        h = Harness(api_config(broker))
        h.connect("eve")
        kicker = h.open()
        kicker.send_raw(api_request(b"DELETE", b"/api/keys/eve", b"go away"))
        h.run()
        assert answers(kicker) == [(200, b'{"ok": true}\n')]
        [close] = get_status(h)["closes"]
        assert (close["key"], close["code"], close["reason"]) == (fp("eve"), 4000, "go away")

    def test_the_last_closes_are_bounded_newest_first(self, broker: str) -> None:
        h = Harness(api_config(broker))
        for i in range(LAST_CLOSES + 5):
            h.connect(f"k{i}").close(1000, f"n{i}")
            h.run()
            h.advance(1.0)
        closes = get_status(h)["closes"]
        assert len(closes) == LAST_CLOSES
        assert [c["reason"] for c in closes] == [f"n{i}" for i in reversed(range(5, LAST_CLOSES + 5))]
        assert closes[0]["ago"] < closes[-1]["ago"]
        assert len(h.hub._closes) == LAST_CLOSES

    def test_without_a_key_it_is_401_and_shows_nothing(self, broker: str) -> None:
        h = Harness(api_config(broker))
        h.connect("alice")
        for key in (None, "wrong"):
            client = h.open()
            client.send_raw(api_request(b"GET", b"/api/status", key=key))
            [(code, body)] = answers(client)
            assert code == 401 and set(json.loads(body)) == {"error"}, body
        assert h.hub._api.calls == 0


class TestRedisLinks:
    def test_links_and_readiness_follow_the_links(self) -> None:
        h = Harness(api_config("redis"))
        s = get_status(h)
        assert s["broker"]["links"] == {"subscriber": "ready", "commands": "ready"}
        h.refuse.add(SUB)
        h.drop_redis(SUB)
        s = get_status(h)
        assert s["broker"]["ready"] is False
        assert s["broker"]["links"]["subscriber"] in (RedisState.DOWN.value, RedisState.CONNECTING.value)
        assert s["broker"]["links"]["commands"] == "ready"
        assert s["broker"]["reason"].startswith("redis subscriber link")
        assert h.hub.link_states()[CMD] is RedisState.READY

    def test_the_memory_broker_has_no_links(self) -> None:
        assert get_status(Harness(api_config("memory")))["broker"]["links"] == {}


class TestAdminPage:
    @pytest.mark.parametrize("method", [b"GET", b"HEAD"])
    def test_the_page_needs_no_key_and_holds_no_data(self, method: bytes) -> None:
        h = Harness(api_config("memory"))
        h.connect("alice")
        client = h.open(method=method)
        client.send_raw(method + b" /admin HTTP/1.1\r\nhost: hub.test\r\n\r\n")
        answer = parse_http_answer(bytes(client.raw), method=method)
        assert answer is not None and answer.status == 200
        assert answer.headers[b"content-type"] == b"text/html; charset=utf-8"
        csp = answer.headers[b"content-security-policy"].decode()
        assert "default-src 'none'" in csp and "script-src 'sha256-" in csp and "connect-src 'self'" in csp
        if method == b"GET":
            assert answer.body.startswith(b"<!DOCTYPE html>") and b"/api/status" in answer.body
            assert b"alice" not in answer.body and KEY.encode() not in answer.body
            assert b"/presence" in answer.body  # the presence panel asks /api/groups/GROUP/presence
        else:
            assert answer.body == b""

    def test_another_method_is_405(self) -> None:
        h = Harness(api_config("memory"))
        client = h.open(method=b"POST")
        client.send_raw(b"POST /admin HTTP/1.1\r\nhost: hub.test\r\ncontent-length: 0\r\n\r\n")
        answer = parse_http_answer(bytes(client.raw), method=b"POST")
        assert answer is not None and answer.status == 405 and answer.headers[b"allow"] == b"GET"


class TestStatusFunction:
    """``status`` is pure: plain values in, the documented object out."""

    def test_top_groups_by_members_then_name_and_the_count_of_all(self) -> None:
        groups = [(f"g{i:02}", i % 7) for i in range(30)]
        s = status(now=10.0, broker="memory", ready=True, not_ready_reason="", links={}, connections=0, sockets=0,
                   counters={}, groups=iter(groups), closes=[])
        top = s["groups"]
        assert isinstance(top, dict) and top["count"] == 30
        expected = sorted(groups, key=lambda g: (-g[1], g[0]))[:TOP_GROUPS]
        assert top["top"] == [{"name": n, "members": m} for n, m in expected]

    def test_closes_newest_first_with_their_age(self) -> None:
        closes = [Close(at=1.0, key="sha256:00000000", code=1000, reason="a"),
                  Close(at=4.5, key="sha256:11111111", code=1006, reason="")]
        s = status(now=5.0, broker="redis", ready=False, not_ready_reason="redis commands link down",
                   links={"subscriber": "ready", "commands": "down"}, connections=1, sockets=2,
                   counters={"connects": 2}, groups=[], closes=closes)
        assert s["closes"] == [{"ago": 0.5, "key": "sha256:11111111", "code": 1006, "reason": ""},
                               {"ago": 4.0, "key": "sha256:00000000", "code": 1000, "reason": "a"}]
        assert s["broker"] == {"kind": "redis", "ready": False, "reason": "redis commands link down",
                               "links": {"subscriber": "ready", "commands": "down"}}
