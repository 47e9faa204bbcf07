"""HTTP routing: a request head in, a decision out; and the admin endpoints' answers.

Rules:
1. ``route`` is a pure function of the request and a read-only context: it
   changes no state, so every status the hub answers is decided (and tested)
   here, and the hub only carries the decision out.
2. On ``serverUrl`` a plain GET gets the answer an upgrade would (400, 403,
   503), and 426 only once it passed those checks: a page whose WebSocket
   failed can fetch() the same URL to learn why. So that it can read the
   answer, every answer there carries CORS headers for an allowed origin.
3. A key is percent-decoded byte for byte, then read as UTF-8 strictly: with
   replacement, %FF%FE and %FE%FF would both become U+FFFD U+FFFD, one key
   shared by two clients (their groups and client-data channel).
"""

from __future__ import annotations

import enum
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote_to_bytes

from ._admin_page import PAGE, PAGE_HEADERS
from ._auth import Identity, TokenVerifier
from ._client import HttpRequest
from ._redis_history import valid_position

__all__ = ["ADMIN_PATHS", "API_PREFIX", "Admin", "Answer", "ApiCall", "ApiKind", "RouteContext", "Upgrade",
           "admin_answer", "api_error", "route"]

ADMIN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/admin"})
API_PREFIX = "/api/"
JSON = "application/json"
Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteContext:
    """What routing may read: the config's paths and rules, and the hub's admission state."""

    server_url: str
    client_key: str
    allowed_origins: tuple[str, ...]
    stopping: bool
    full: bool  # webSocket.maxConnections reached
    api_key: str = ""  # the Bearer token /api/ requests must carry (empty: every API request is refused)
    verifier: TokenVerifier | None = None  # auth.jwt.*: the clientKey value is a token
    wall: float = 0.0  # the wall-clock time now, for a token's exp and nbf


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    """A plain HTTP answer; ``origin_refused``: a 403 for an Origin not allowed (the hub logs it)."""

    status: int
    body: str | bytes
    headers: Headers = ()
    content_type: str = "text/plain; charset=utf-8"
    origin_refused: bool = False
    keep_alive: bool = False  # the API's answers keep the connection for the next request


@dataclass(frozen=True, slots=True, kw_only=True)
class Upgrade:
    """A WebSocket upgrade for ``key`` that passed every check the hub makes (a token's, with ``auth.jwt.*``)."""

    key: str
    groups: frozenset[str] | None = None  # the token's groups claim: set at once, no listener round trip
    expires: float | None = None  # the token's exp (wall clock): the connection is closed then
    envelopes: bool = False  # recover=1: group messages as JSON envelopes with their offsets
    since: tuple[tuple[str, str], ...] = ()  # since=: (group, offset) to resume from


@dataclass(frozen=True, slots=True, kw_only=True)
class Admin:
    """One of ``ADMIN_PATHS``: answered from the hub's state (``admin_answer``)."""

    path: str


class ApiKind(enum.Enum):
    """The HTTP API's calls (docs/protocol.md, HTTP API); the value is what a log line calls it."""

    GROUP_PUBLISH = "POST /api/groups/{group}"
    KEY_GROUPS = "PUT /api/keys/{key}/groups"
    KEY_SEND = "POST /api/keys/{key}"
    KEY_KICK = "DELETE /api/keys/{key}"
    EVENTS = "GET /api/events"
    STATUS = "GET /api/status"
    PRESENCE = "GET /api/groups/{group}/presence"


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiCall:
    """An authorised API request: ``name`` is the group or key from the path, decoded (empty for events, status)."""

    kind: ApiKind
    name: str = ""
    message_id: bytes = b""  # a group publish's Idempotency-Key: a retry within history.ttl is not delivered twice


def api_error(status: int, reason: str, headers: Headers = ()) -> Answer:
    """An API error: JSON with the reason, on a connection kept alive (the request was read whole)."""
    return Answer(status=status, body=json.dumps({"error": reason}) + "\n", headers=headers, content_type=JSON,
                  keep_alive=True)


def _api_route(request: HttpRequest, path: str, ctx: RouteContext) -> Answer | ApiCall:
    """Auth first (an unauthorised caller learns nothing of the paths), then the path, then the method."""
    auth = request.header(b"authorization") or b""
    scheme, _, token = auth.partition(b" ")
    if not ctx.api_key or scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), ctx.api_key.encode()):
        why = "missing Authorization: Bearer <api.key>" if not auth else "wrong API key"
        return api_error(401, why, (("www-authenticate", 'Bearer realm="wshub"'),))
    parts = path[len(API_PREFIX):].split("/")
    name = ""
    allowed: dict[bytes, ApiKind] = {}
    if parts == ["events"]:
        allowed = {b"GET": ApiKind.EVENTS}
    elif parts == ["status"]:
        allowed = {b"GET": ApiKind.STATUS}
    elif len(parts) == 2 and parts[0] == "groups" and parts[1]:
        name, allowed = parts[1], {b"POST": ApiKind.GROUP_PUBLISH}
    elif len(parts) == 2 and parts[0] == "keys" and parts[1]:
        name, allowed = parts[1], {b"POST": ApiKind.KEY_SEND, b"DELETE": ApiKind.KEY_KICK}
    elif len(parts) == 3 and parts[0] == "keys" and parts[1] and parts[2] == "groups":
        name, allowed = parts[1], {b"PUT": ApiKind.KEY_GROUPS}
    elif len(parts) == 3 and parts[0] == "groups" and parts[1] and parts[2] == "presence":
        name, allowed = parts[1], {b"GET": ApiKind.PRESENCE}
    if not allowed:
        return api_error(404, f"no such API endpoint: {path}")
    kind = allowed.get(request.method)
    if kind is None:
        methods = ", ".join(m.decode() for m in allowed)
        return api_error(405, f"{path} takes {methods}", (("allow", methods),))
    try:
        decoded = unquote_to_bytes(name).decode("utf-8")
    except UnicodeDecodeError:
        return api_error(400, f"the name in {path} is not valid UTF-8 once percent-decoded")
    message_id = (request.header(b"idempotency-key") or b"") if kind is ApiKind.GROUP_PUBLISH else b""
    if len(message_id) > 200:
        return api_error(400, "Idempotency-Key is longer than 200 bytes")
    return ApiCall(kind=kind, name=decoded, message_id=message_id)


def route(request: HttpRequest, ctx: RouteContext) -> Answer | Upgrade | Admin | ApiCall:
    """Decide what a request head gets, in the documented order (docs/protocol.md, HTTP)."""
    path, _, query = request.target.decode("latin-1").partition("?")
    if path.startswith(API_PREFIX) and path != ctx.server_url:
        if ctx.stopping:
            return api_error(503, "server shutting down")
        return _api_route(request, path, ctx)
    if path in ADMIN_PATHS and path != ctx.server_url:
        return Admin(path=path)
    if path != ctx.server_url:
        return Answer(status=404, body=f"not found: {path}\n")
    origin = request.header(b"origin")
    origin_text = None if origin is None else origin.decode("latin-1")
    allowed = not ctx.allowed_origins or origin_text in ctx.allowed_origins
    cors: Headers = (("access-control-allow-origin", "*"),)  # an error text is no secret
    if ctx.allowed_origins:
        cors = (("access-control-allow-origin", origin_text), ("vary", "origin")) if allowed and origin_text \
            else (("vary", "origin"),)
    if request.method != b"GET":
        return Answer(status=405, body="only GET upgrades to WebSocket\n", headers=(("allow", "GET"), *cors))
    param = ctx.client_key.encode().decode("latin-1")  # as parse_qs(encoding="latin-1") reads it
    params = parse_qs(query, keep_blank_values=True, encoding="latin-1")
    raw_keys = params.get(param, [])
    raw_key = raw_keys[0] if raw_keys else ""  # the first value counts
    if not raw_key and ctx.verifier is None:
        return Answer(status=400, body=f"missing query parameter {ctx.client_key}\n", headers=cors)
    try:
        key = raw_key.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        return Answer(status=400, body=f"query parameter {ctx.client_key} is not valid UTF-8\n", headers=cors)
    resume = _resume(params)
    if isinstance(resume, str):
        return Answer(status=400, body=f"{resume}\n", headers=cors)
    if not allowed:
        return Answer(status=403, body="origin not allowed\n", headers=cors, origin_refused=True)
    identity = Identity(key=key)
    if ctx.verifier is not None:
        checked = ctx.verifier.verify(key, ctx.wall) if key else f"missing token: query parameter {ctx.client_key}"
        if isinstance(checked, str):
            return Answer(status=401, body=f"{checked}\n", headers=(
                ("www-authenticate", f'Bearer realm="wshub", error="invalid_token", error_description="{checked}"'),
                *cors))
        identity = checked
    if ctx.stopping:
        return Answer(status=503, body="server shutting down\n", headers=cors)
    if ctx.full:
        return Answer(status=503, body="too many connections\n", headers=(("retry-after", "5"), *cors))
    if b"websocket" not in (request.header(b"upgrade") or b"").lower():
        return Answer(status=426, body="this endpoint speaks WebSocket only\n",
                      headers=(("upgrade", "websocket"), *cors))
    return Upgrade(key=identity.key, groups=identity.groups, expires=identity.expires, envelopes=resume[0],
                   since=resume[1])


def _resume(params: dict[str, list[str]]) -> tuple[bool, tuple[tuple[str, str], ...]] | str:
    """``recover`` and ``since`` from the query (docs/protocol.md, "Resume"), or why they are wrong."""
    recover = params.get("recover", ["0"])[0]
    if recover not in ("0", "1"):
        return f"query parameter recover must be 1 or 0, not {recover!r}"
    raw = params.get("since")
    if raw is None:
        return recover == "1", ()
    if recover != "1":
        return "query parameter since needs recover=1"
    try:
        value = json.loads(raw[0].encode("latin-1").decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return f"query parameter since is not JSON: {exc}"
    if not isinstance(value, dict):
        return f"query parameter since must be a JSON object of group: offset, got {type(value).__name__}"
    for group, offset in value.items():
        if not isinstance(offset, str) or not valid_position(offset):
            return f"query parameter since: the offset of group {group!r} must be a string like \"1700000000000-0\""
    return True, tuple(value.items())


def admin_answer(request: HttpRequest, admin: Admin, *, ready: bool, not_ready_reason: Callable[[], str],
                 metrics: Callable[[], str]) -> Answer:
    """/healthz (the process answers), /readyz (the broker is ready, with the reason if not), /metrics, /admin.

    /admin is the admin page itself, the same bytes for everyone: it holds no data and needs no key (what
    it shows it fetches from ``/api/`` with the key the user enters).
    """
    if request.method not in (b"GET", b"HEAD"):
        return Answer(status=405, body="use GET\n", headers=(("allow", "GET"),))
    if admin.path == "/admin":
        return Answer(status=200, body=PAGE, headers=PAGE_HEADERS, content_type="text/html; charset=utf-8")
    if admin.path == "/healthz":
        return Answer(status=200, body="ok\n")
    if admin.path == "/readyz":
        return Answer(status=200, body="ready\n") if ready else Answer(status=503, body=not_ready_reason() + "\n")
    return Answer(status=200, body=metrics(), content_type="text/plain; version=0.0.4")
