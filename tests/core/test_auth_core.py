"""Tokens and limits in the core: the verifier alone, then the hub with a virtual clock (no sockets).

The process-level tests are tests/test_auth.py.
"""

from __future__ import annotations

import jwt
import pytest

from wshub_core._auth import Identity, TokenVerifier

from .harness import Harness, make_config

SECRET = "core-test-secret-0123456789abcdef"
WALL = 1_800_000_000.0  # the wall-clock time the tests' hub is told at its virtual now


def sign(claims: dict[str, object], key: str = SECRET) -> str:
    return jwt.encode(claims, key, algorithm="HS256")


class TestVerifier:
    """RFC 7519 section 4.1: exp, nbf, aud, iss, sub; checked at the time passed in, never the process clock."""

    def test_exp_and_nbf_are_checked_against_the_time_passed_in(self) -> None:
        v = TokenVerifier(secret=SECRET)
        t = sign({"sub": "a", "exp": 100, "nbf": 50})
        assert v.verify(t, 49.0) == "token not valid yet (nbf)"
        assert v.verify(t, 50.0) == Identity(key="a", expires=100.0)
        assert v.verify(t, 99.9) == Identity(key="a", expires=100.0)
        assert v.verify(t, 100.0) == "token expired"  # exp is the first instant it is not valid (4.1.4)

    def test_leeway_widens_both_edges(self) -> None:
        v = TokenVerifier(secret=SECRET, leeway=10)
        t = sign({"sub": "a", "exp": 100, "nbf": 50})
        assert isinstance(v.verify(t, 41.0), Identity)
        assert isinstance(v.verify(t, 109.0), Identity)
        assert v.verify(t, 110.0) == "token expired"

    def test_the_previous_secret_verifies_too_and_no_other(self) -> None:
        v = TokenVerifier(secret=SECRET, previous_secret="old-secret-0123456789abcdef012345")
        assert isinstance(v.verify(sign({"sub": "a"}, "old-secret-0123456789abcdef012345"), 0), Identity)
        assert v.verify(sign({"sub": "a"}, "other-secret-0123456789abcdef01234"), 0) == "bad signature"

    @pytest.mark.parametrize(("claims", "reason"), [
        ({"sub": ""}, "sub must be a non-empty string"),
        ({"sub": 7}, "invalid token (InvalidSubjectError)"),
        ({}, "no sub claim"),
        ({"sub": "a", "exp": "soon"}, "exp must be a number"),
        ({"sub": "a", "groups": "g"}, "groups must be an array of strings"),
        ({"sub": "a", "groups": ["g", 1]}, "groups must be an array of strings"),
    ])
    def test_claims_of_the_wrong_shape_are_refused_with_a_reason(self, claims: dict[str, object],
                                                                 reason: str) -> None:
        assert TokenVerifier(secret=SECRET).verify(sign(claims), 0) == reason

    def test_groups_claim_empty_names_are_dropped(self) -> None:
        identity = TokenVerifier(secret=SECRET).verify(sign({"sub": "a", "groups": ["x", "", "y"]}), 0)
        assert identity == Identity(key="a", groups=frozenset({"x", "y"}))

    def test_audience_and_issuer(self) -> None:
        v = TokenVerifier(secret=SECRET, audience="hub", issuer="me")
        assert isinstance(v.verify(sign({"sub": "a", "aud": ["x", "hub"], "iss": "me"}), 0), Identity)
        assert v.verify(sign({"sub": "a", "aud": "x", "iss": "me"}), 0) == "wrong audience"
        assert v.verify(sign({"sub": "a", "aud": "hub", "iss": "you"}), 0) == "wrong issuer"
        assert v.verify(sign({"sub": "a", "iss": "me"}), 0) == "no aud claim"

    def test_a_pem_that_is_no_public_key_is_refused_at_construction(self) -> None:
        with pytest.raises(ValueError, match="not a PEM public key"):
            TokenVerifier(public_key_pem="-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")


def token_harness(**overrides: object) -> Harness:
    config = make_config(f"broker: memory\nauth:\n  jwt:\n    secret: {SECRET}\n", **overrides)
    h = Harness(config, start=False)
    h.hub.clock(h.now, WALL)
    h.hub.start(h.now)
    h.run()
    return h


class TestHubTokens:
    def test_the_connection_closes_with_4001_at_exp_on_the_hub_s_clock(self) -> None:
        h = token_harness()
        client = h.connect(sign({"sub": "a", "exp": WALL + 30, "groups": ["g"]}))
        assert client.status == 101
        h.advance(29.9)
        assert client.close_code is None
        h.advance(0.2)
        assert (client.close_code, client.close_reason) == (4001, "token expired")

    def test_a_clock_step_is_followed(self) -> None:
        """The shell tells the time again with each timer: a token is refused by the wall clock, not the start's."""
        h = token_harness()
        t = sign({"sub": "a", "exp": WALL + 30})
        h.hub.clock(h.now, WALL + 60)  # the wall clock was stepped a minute ahead
        assert h.connect(t).status == 401

    def test_the_groups_claim_serves_at_once_and_client_new_still_goes_out(self) -> None:
        h = token_harness()
        client = h.connect(sign({"sub": "alice", "groups": ["g1", "g2"]}))
        assert h.hub.groups_of(client.conn) == {"g1", "g2"}

    def test_a_refused_token_leaves_nothing_behind(self) -> None:
        h = token_harness()
        client = h.connect("not-a-token")
        assert client.status == 401
        h.run()
        assert h.hub.is_empty()


class TestHubLimits:
    def test_a_burst_up_to_the_rate_passes_and_one_more_closes_with_1008(self) -> None:
        h = Harness(make_config(broker="memory", max_messages_per_second=5.0))
        flood, calm = h.connect("flood"), h.connect("calm")
        for i in range(5):
            flood.text(f"m{i}")
        h.run()
        assert flood.close_code is None
        flood.text("one too many")
        h.run()
        assert (flood.close_code, flood.close_reason) == (1008, "message rate limit: 5 per second")
        assert h.hub.stats.messages_in == 5  # the one over the limit was not published
        calm.text("fine")
        h.run()
        assert calm.close_code is None and h.hub.stats.messages_in == 6

    def test_the_bucket_refills_with_time(self) -> None:
        h = Harness(make_config(broker="memory", max_messages_per_second=2.0))
        client = h.connect("k")
        for _ in range(10):
            client.text("x")
            client.text("y")
            h.run()
            h.advance(1.0)
        assert client.close_code is None and h.hub.stats.messages_in == 20

    def test_messages_read_together_after_the_one_over_are_dropped(self) -> None:
        """One socket read can carry many frames: after the close, the rest of that read is not published."""
        h = Harness(make_config(broker="memory", max_bytes_per_second=65536, max_message_size=65536))
        client = h.connect("k")
        assert client.ws is not None
        from wsproto.events import TextMessage

        data = b"".join(client.ws.send(TextMessage(data="x" * 30000)) for _ in range(4))
        h.client_data(client.conn, data)
        h.run()
        assert (client.close_code, client.close_reason) == (1008, "byte rate limit: 65536 per second")
        assert h.hub.stats.messages_in == 2
        assert "wshub_rate_limited_total 1\n" in h.hub.metrics_text()
