"""Signed connection tokens (``auth.jwt.*``): a token string and the wall-clock time in, an identity or a reason out.

PyJWT checks the signature, the algorithm, ``aud`` and ``iss``; this module
checks ``exp`` and ``nbf`` itself, against the time the caller passes, with
PyJWT told not to (its own clock is the process's, and the core reads none).

Rules:
1. ``verify`` never raises on what a client sends: every failure is a short
   reason for the 401 answer (a malformed token, a bad signature, an expired
   one), never the token itself.
2. The key is ``sub``; a ``groups`` claim, when present, is an array of
   strings (anything else is a bad token, not silently no groups).
3. Keys are rotated by ``previousSecret``: a token signed with either secret
   passes, so clients holding old tokens are not dropped at the switch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jwt

from ._config import Config, ConfigError

__all__ = ["Identity", "TokenVerifier", "token_verifier"]

_DECODE_OPTIONS: Any = {"verify_exp": False, "verify_nbf": False, "verify_iat": False, "require": ["sub"]}


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """What a valid token says: the client's key, its groups if the token carries them, and its expiry."""

    key: str
    groups: frozenset[str] | None = None  # None: no groups claim, the listener assigns them
    expires: float | None = None  # ``exp`` (seconds since the epoch); None: never


class TokenVerifier:
    """Verify tokens with one HS256 secret (and the previous one), or one RS256/ES256 public key."""

    __slots__ = ("_keys", "_algorithms", "_audience", "_issuer", "_leeway")

    def __init__(self, *, secret: str = "", previous_secret: str = "", public_key_pem: str = "",
                 audience: str = "", issuer: str = "", leeway: float = 0.0) -> None:
        """Raises ``ValueError`` if ``public_key_pem`` is not an RSA or EC public key."""
        self._keys: list[Any]
        if public_key_pem:
            from cryptography.hazmat.primitives.asymmetric import ec, rsa
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            try:
                key = load_pem_public_key(public_key_pem.encode())
            except ValueError as exc:
                raise ValueError(f"not a PEM public key ({exc})") from None
            if isinstance(key, rsa.RSAPublicKey):
                self._algorithms = ["RS256"]
            elif isinstance(key, ec.EllipticCurvePublicKey):
                self._algorithms = ["ES256"]
            else:
                raise ValueError(f"a {type(key).__name__}; RS256 needs an RSA key, ES256 an EC (P-256) key")
            self._keys = [key]
        else:
            self._algorithms = ["HS256"]
            self._keys = [s for s in (secret, previous_secret) if s]
        self._audience = audience or None
        self._issuer = issuer or None
        self._leeway = leeway

    def verify(self, token: str, wall: float) -> Identity | str:
        """The identity in ``token`` at wall-clock time ``wall``, or why it is refused."""
        claims: dict[str, Any] | None = None
        for key in self._keys:
            try:
                claims = jwt.decode(token, key, algorithms=self._algorithms, audience=self._audience,
                                    issuer=self._issuer, options=_DECODE_OPTIONS)
                break
            except jwt.InvalidSignatureError:
                continue  # perhaps signed with the previous secret
            except jwt.InvalidAlgorithmError:
                return f"algorithm not allowed (this hub takes {', '.join(self._algorithms)})"
            except jwt.MissingRequiredClaimError as exc:
                return f"no {exc.claim} claim"
            except jwt.InvalidAudienceError:
                return "wrong audience"
            except jwt.InvalidIssuerError:
                return "wrong issuer"
            except jwt.DecodeError:
                return "malformed token"
            except jwt.InvalidTokenError as exc:
                return f"invalid token ({type(exc).__name__})"
            except Exception:  # rule 1: whatever else a crafted token makes PyJWT raise
                return "malformed token"
        if claims is None:
            return "bad signature"
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            return "sub must be a non-empty string"
        expires = _number(claims, "exp")
        not_before = _number(claims, "nbf")
        if isinstance(expires, str):
            return expires
        if isinstance(not_before, str):
            return not_before
        if expires is not None and wall >= expires + self._leeway:
            return "token expired"
        if not_before is not None and wall < not_before - self._leeway:
            return "token not valid yet (nbf)"
        groups = claims.get("groups")
        if groups is not None:
            if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
                return "groups must be an array of strings"
            try:
                for name in groups:
                    name.encode("utf-8")  # a lone surrogate from JSON names no channel
            except UnicodeEncodeError:
                return "groups must be an array of strings"
            groups = frozenset(g for g in groups if g)
        return Identity(key=sub, groups=groups, expires=expires)


def _number(claims: dict[str, Any], name: str) -> float | str | None:
    """A NumericDate claim (RFC 7519 section 2), None if absent, or why it is not one."""
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return f"{name} must be a number"
    return float(value)


def token_verifier(config: Config) -> TokenVerifier | None:
    """The verifier ``auth.jwt.*`` asks for (None: tokens are off); a bad public key is a ``ConfigError``.

    ``auth.jwt.publicKey`` names a file unless it is the PEM itself: the
    shell reads the file into ``config.jwt_public_key_pem`` first (the core
    reads no file).
    """
    if not config.jwt_secret and not config.jwt_public_key:
        return None
    if config.jwt_public_key and not config.jwt_public_key_pem:
        raise ConfigError(f"{config.where('auth.jwt.publicKey')}: the file {config.jwt_public_key!r} was not read "
                          "(the shell reads it at start)", json_logs=config.log_format == "json")
    try:
        return TokenVerifier(secret=config.jwt_secret, previous_secret=config.jwt_previous_secret,
                             public_key_pem=config.jwt_public_key_pem, audience=config.jwt_audience,
                             issuer=config.jwt_issuer, leeway=config.jwt_leeway)
    except ValueError as exc:
        raise ConfigError(f"{config.where('auth.jwt.publicKey')}: {exc}",
                          json_logs=config.log_format == "json") from None
