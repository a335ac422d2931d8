"""Bearer tokens of the read API: JWTs verified by PyJWT, each key pinned to its algorithm.

An HS256 token is checked with KC_JWT_SECRET and nothing else; an RS256 or ES256 token with
the key of its `kid` in the identity provider's JWKS (KC_JWT_JWKS_URL), and only when that
key is of that algorithm. So `alg: none`, and an HS256 token "signed" with a public key
(algorithm confusion), are refused. `aud` and `exp` are required, `iss` when configured.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt

logger = logging.getLogger(__name__)

SCOPE = "purchases:read"
# The platform's own server: confirms any student's checkout (POST /checkouts/confirm).
CONFIRM_SCOPE = "purchases:confirm"
ASYMMETRIC = ("RS256", "ES256")
# Longer than any token an identity provider issues; refused unparsed.
MAX_TOKEN_CHARS = 8192
# How long fetched JWKS keys are trusted, and how soon an unknown kid may fetch them again
# (so that tokens with made-up kids cannot make this process hammer the identity provider).
JWKS_LIFESPAN_SECONDS = 300
JWKS_REFRESH_MIN_SECONDS = 10
LEEWAY_SECONDS = 10


class Unauthorized(Exception):
    """Raised when a token is missing, malformed, expired or not signed by a configured key."""


@dataclass(frozen=True)
class Grant:
    """Who a verified token speaks for: its subject, whether it may read any student, and
    whether it may confirm any student's checkout."""

    subject: str | None
    any_student: bool
    confirms_any: bool = False

    def allows(self, student_id: uuid.UUID) -> bool:
        if self.any_student:
            return True
        return self.is_student(student_id)

    def may_confirm(self, student_id: uuid.UUID) -> bool:
        """A checkout of this student's: the student's own token, or the platform's (scope
        purchases:confirm). purchases:read alone reads, never confirms."""
        return self.confirms_any or self.is_student(student_id)

    def is_student(self, student_id: uuid.UUID) -> bool:
        try:
            return self.subject is not None and uuid.UUID(self.subject) == student_id
        except ValueError:
            return False


class Verifier:
    """Verifies bearer tokens with the configured keys; with none, every token is refused."""

    def __init__(self, secret: str, jwks_url: str, audience: str, issuer: str = "") -> None:
        self._secret = secret.encode()
        self._audience = audience
        self._issuer = issuer or None
        self._jwks = (
            jwt.PyJWKClient(jwks_url, cache_keys=False, cache_jwk_set=True, lifespan=JWKS_LIFESPAN_SECONDS, timeout=5)
            if jwks_url
            else None
        )
        self._lock = threading.Lock()
        self._last_refresh = 0.0

    @property
    def configured(self) -> bool:
        return bool(self._secret) or self._jwks is not None

    def verify(self, token: str) -> Grant:
        """The token's grant, or Unauthorized saying why (never echoing the token)."""
        if not self.configured:
            raise Unauthorized("no token key is configured")
        if len(token) > MAX_TOKEN_CHARS:
            raise Unauthorized("token too long")
        try:
            header = jwt.get_unverified_header(token)
            algorithm = header.get("alg")
            if algorithm == "HS256" and self._secret:
                key: Any = self._secret
            elif algorithm in ASYMMETRIC and self._jwks is not None:
                key = self._public_key(header.get("kid"), algorithm)
            else:
                raise Unauthorized(f"algorithm {str(algorithm)[:16]!r} is not accepted")
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "aud", *(["iss"] if self._issuer else [])]},
            )
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"{type(exc).__name__}: {exc}") from None
        subject = claims.get("sub")
        scope = claims.get("scope")
        scopes = scope.split() if isinstance(scope, str) else []
        return Grant(subject if isinstance(subject, str) else None, SCOPE in scopes, CONFIRM_SCOPE in scopes)

    def _public_key(self, kid: Any, algorithm: str) -> Any:
        """The JWKS key of this kid, fetched again (at most every few seconds) when unknown."""
        assert self._jwks is not None
        if not isinstance(kid, str):
            raise Unauthorized("token has no kid")
        with self._lock:
            found = self._match(self._jwks.get_signing_keys(), kid)
            if found is None and time.monotonic() - self._last_refresh >= JWKS_REFRESH_MIN_SECONDS:
                self._last_refresh = time.monotonic()
                logger.info("token key %r is unknown: fetching the JWKS again", kid[:64])
                found = self._match(self._jwks.get_signing_keys(refresh=True), kid)
        if found is None:
            raise Unauthorized("token key is not in the JWKS")
        if found.algorithm_name != algorithm:
            raise Unauthorized(f"token key is a {found.algorithm_name} key, not {algorithm}")
        return found.key

    @staticmethod
    def _match(keys: list[jwt.PyJWK], kid: str) -> jwt.PyJWK | None:
        return next((k for k in keys if k.key_id == kid), None)


def mint(secret: str, student_id: str, ttl_seconds: float, audience: str, issuer: str = "", scope: str = "") -> str:
    """An HS256 token for `kc-tasks token` and development mode."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": student_id, "aud": audience, "iat": now, "exp": now + int(ttl_seconds)}
    if issuer:
        claims["iss"] = issuer
    if scope:
        claims["scope"] = scope
    return jwt.encode(claims, secret, algorithm="HS256")
