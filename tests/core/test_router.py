"""``route``: a pure function from a request head and a context to a decision (docs/protocol.md, HTTP)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from wshub_core._client import HttpRequest
from wshub_core._http import Admin, Answer, ApiCall, ApiKind, RouteContext, Upgrade, route

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
    (request(b"/admin", headers=()), CTX, Admin(path="/admin")),  # the page needs no key: it holds no data
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
], ids=["upgrade", "utf8-key", "admin", "admin-page", "404", "bad-utf8", "stopping", "no-upgrade", "origin"])
def test_each_request_gets_its_documented_decision(req: HttpRequest, ctx: RouteContext, decision: object) -> None:
    assert route(req, ctx) == decision
    assert route(req, ctx) == decision  # pure: the same input, the same answer


class TestApiRoutes:
    """The HTTP API: auth first, then the path, then the method; names percent-decoded as UTF-8."""

    API_CTX = dataclasses.replace(CTX, api_key="s3cret")
    AUTH = ((b"authorization", b"Bearer s3cret"),)

    def call(self, target: bytes, method: bytes, headers: tuple[tuple[bytes, bytes], ...] = AUTH) -> object:
        return route(request(target, method=method, headers=headers), self.API_CTX)

    @pytest.mark.parametrize(("target", "method", "kind", "name"), [
        (b"/api/groups/news", b"POST", ApiKind.GROUP_PUBLISH, "news"),
        (b"/api/groups/a%2Fb%20c?x=1", b"POST", ApiKind.GROUP_PUBLISH, "a/b c"),
        (b"/api/groups/%C3%BC", b"POST", ApiKind.GROUP_PUBLISH, "\u00fc"),
        (b"/api/keys/alice/groups", b"PUT", ApiKind.KEY_GROUPS, "alice"),
        (b"/api/keys/alice", b"POST", ApiKind.KEY_SEND, "alice"),
        (b"/api/keys/alice", b"DELETE", ApiKind.KEY_KICK, "alice"),
        (b"/api/events", b"GET", ApiKind.EVENTS, ""),
        (b"/api/status", b"GET", ApiKind.STATUS, ""),
        (b"/api/status?x=1", b"GET", ApiKind.STATUS, ""),
    ])
    def test_every_call(self, target: bytes, method: bytes, kind: ApiKind, name: str) -> None:
        assert self.call(target, method) == ApiCall(kind=kind, name=name)

    @pytest.mark.parametrize("headers", [(), ((b"authorization", b"Bearer wrong"),),
                                         ((b"authorization", b"Basic s3cret"),), ((b"authorization", b"s3cret"),)])
    def test_no_or_a_wrong_key_is_401_before_anything_else(self, headers: tuple[tuple[bytes, bytes], ...]) -> None:
        for target, method in ((b"/api/groups/g", b"POST"), (b"/api/nothing", b"GET"), (b"/api/events", b"PUT"),
                               (b"/api/status", b"GET"), (b"/api/status", b"POST")):
            answer = self.call(target, method, headers)
            assert isinstance(answer, Answer) and answer.status == 401, answer
            assert ("www-authenticate", 'Bearer realm="wshub"') in answer.headers
            assert json.loads(answer.body)["error"]

    def test_an_empty_api_key_opens_nothing(self) -> None:
        answer = route(request(b"/api/events", headers=((b"authorization", b"Bearer "),)), CTX)
        assert isinstance(answer, Answer) and answer.status == 401

    @pytest.mark.parametrize(("target", "method", "status", "allow"), [
        (b"/api/groups/", b"POST", 404, None),
        (b"/api/groups/a/b", b"POST", 404, None),
        (b"/api/keys/k/other", b"PUT", 404, None),
        (b"/api/", b"GET", 404, None),
        (b"/api/groups/g", b"GET", 405, "POST"),
        (b"/api/keys/k", b"PUT", 405, "POST, DELETE"),
        (b"/api/keys/k/groups", b"POST", 405, "PUT"),
        (b"/api/events", b"POST", 405, "GET"),
        (b"/api/status", b"DELETE", 405, "GET"),
        (b"/api/status/x", b"GET", 404, None),
        (b"/api/groups/%FF", b"POST", 400, None),
    ])
    def test_bad_paths_and_methods(self, target: bytes, method: bytes, status: int, allow: str | None) -> None:
        answer = self.call(target, method)
        assert isinstance(answer, Answer) and answer.status == status, answer
        assert answer.content_type == "application/json" and json.loads(answer.body)["error"]
        assert dict(answer.headers).get("allow") == allow

    def test_shutting_down_is_503(self) -> None:
        answer = route(request(b"/api/groups/g", method=b"POST", headers=self.AUTH),
                       dataclasses.replace(self.API_CTX, stopping=True))
        assert isinstance(answer, Answer) and answer.status == 503

    def test_the_websocket_path_wins_over_the_api(self) -> None:
        ctx = dataclasses.replace(self.API_CTX, server_url="/api/ws")
        assert route(request(b"/api/ws?session_key=k"), ctx) == Upgrade(key="k")
