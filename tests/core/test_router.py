"""``route``: a pure function from a request head and a context to a decision (docs/protocol.md, HTTP)."""

from __future__ import annotations

import dataclasses

import pytest

from wshub_core._client import HttpRequest
from wshub_core._http import Admin, Answer, RouteContext, Upgrade, route

CTX = RouteContext(server_url="/ws", client_key="session_key", allowed_origins=(), stopping=False, full=False)
UPGRADE = ((b"upgrade", b"websocket"), (b"connection", b"Upgrade"))
ANY = (("access-control-allow-origin", "*"),)


def request(target: bytes, *, method: bytes = b"GET", headers: tuple[tuple[bytes, bytes], ...] = UPGRADE,
            ) -> HttpRequest:
    return HttpRequest(method=method, target=target, headers=headers)


@pytest.mark.parametrize(("req", "ctx", "decision"), [
    (request(b"/ws?session_key=a%20b"), CTX, Upgrade(key="a b")),
    (request(b"/ws?session_key=%C3%A9"), CTX, Upgrade(key="\u00e9")),
    (request(b"/readyz"), CTX, Admin(path="/readyz")),
    (request(b"/nope"), CTX, Answer(status=404, body="not found: /nope\n")),
    (request(b"/ws?session_key=%FF"), CTX,
     Answer(status=400, body="query parameter session_key is not valid UTF-8\n", headers=ANY)),
    (request(b"/ws?session_key=k"), dataclasses.replace(CTX, stopping=True),
     Answer(status=503, body="server shutting down\n", headers=ANY)),
    (request(b"/ws?session_key=k", headers=()), CTX,
     Answer(status=426, body="this endpoint speaks WebSocket only\n", headers=(("upgrade", "websocket"), *ANY))),
    (request(b"/ws?session_key=k", headers=(*UPGRADE, (b"origin", b"https://evil.test"))),
     dataclasses.replace(CTX, allowed_origins=("https://app.test",)),
     Answer(status=403, body="origin not allowed\n", headers=(("vary", "origin"),), origin_refused=True)),
], ids=["upgrade", "utf8-key", "admin", "404", "bad-utf8", "stopping", "no-upgrade", "origin"])
def test_each_request_gets_its_documented_decision(req: HttpRequest, ctx: RouteContext, decision: object) -> None:
    assert route(req, ctx) == decision
    assert route(req, ctx) == decision  # pure: the same input, the same answer
