"""Hostile tokens: any string in the clientKey parameter is a 101 for a valid token or a 401 with a reason.

The invariant (STYLE.md's fuzz rule): ``TokenVerifier.verify`` never raises,
and returns an ``Identity`` only for a token signed with a configured key whose
claims hold at the time given; through the hub, every upgrade request with a
token is answered 101 or 401, and a refused one leaves nothing behind.
"""

from __future__ import annotations

import base64
import json
from urllib.parse import quote

import jwt
from core.harness import Harness, fuzz_examples, make_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wshub_core._auth import Identity, TokenVerifier

SECRET = "fuzz-secret-0123456789abcdef0123456789"
FUZZ = settings(max_examples=fuzz_examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
VERIFIER = TokenVerifier(secret=SECRET, audience="hub")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                       max_size=3), max_leaves=8)
CLAIMS = st.dictionaries(st.sampled_from(["sub", "exp", "nbf", "aud", "iss", "groups", "iat", "x"]), JSON_VALUES,
                         max_size=6)
HEADERS = st.dictionaries(st.sampled_from(["alg", "typ", "kid", "crit", "b64"]),
                          st.sampled_from(["HS256", "none", "RS256", "ES256", "HS512", "JWT", "", None, 1, [], {}]),
                          max_size=4)


@st.composite
def tokens(draw: st.DrawFn) -> str:
    """Random strings, structurally valid tokens with random headers and claims, and truly signed ones."""
    kind = draw(st.sampled_from(["text", "parts", "signed", "mutated"]))
    if kind == "text":
        return draw(st.text(max_size=60))
    claims = draw(CLAIMS)
    if kind == "parts":
        try:
            payload = json.dumps(claims, allow_nan=True).encode()
        except (TypeError, ValueError):
            payload = b"{}"
        header = json.dumps(draw(HEADERS)).encode()
        return ".".join([b64(header), b64(payload), draw(st.sampled_from(["", "abc", b64(b"x" * 32)]))])
    try:
        token = jwt.encode(claims, SECRET, algorithm="HS256")
    except (TypeError, ValueError, OverflowError):
        token = jwt.encode({"sub": "a"}, SECRET, algorithm="HS256")
    if kind == "mutated":
        i = draw(st.integers(0, len(token) - 1))
        token = token[:i] + draw(st.sampled_from(["", "A", ".", "=", "%", "\x00"])) + token[i + 1:]
    return token


class TestTokenFuzz:
    @FUZZ
    @given(tokens(), st.floats(min_value=0, max_value=4e9))
    def test_verify_returns_an_identity_or_a_reason_and_never_raises(self, token: str, wall: float) -> None:
        result = VERIFIER.verify(token, wall)
        if isinstance(result, Identity):
            claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="hub",
                                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False})
            assert result.key == claims["sub"] and result.key
            assert "exp" not in claims or wall < claims["exp"]
            assert "nbf" not in claims or wall >= claims["nbf"]
        else:
            assert isinstance(result, str) and result and "\n" not in result

    @FUZZ
    @given(tokens())
    def test_the_hub_answers_every_token_with_101_or_401(self, token: str) -> None:
        config = make_config(f"broker: memory\nauth:\n  jwt:\n    secret: {SECRET}\n    audience: hub\n")
        h = Harness(config, start=False)
        h.hub.clock(h.now, 1_800_000_000.0)
        h.hub.start(h.now)
        h.run()
        client = h.connect(quote(token, safe=""))
        assert client.status in (101, 401, 400), client.status  # 400: not UTF-8 (a lone surrogate in the text)
        if client.status != 101:
            h.run()
            assert h.hub.is_empty()
