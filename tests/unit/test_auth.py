"""kc_tasks.web.auth: each refused token is refused for its own reason, the one the web process
logs. The identity provider's JWKS is served from this process on a loopback port (PyJWT
fetches only http and https); rotation is adding a key to it."""

from __future__ import annotations

import json
import logging
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from kc_tasks.web import auth
from tests.jwks_server import JWKS

SECRET = "unit-jwt-secret-" + "s" * 64
AUDIENCE = "kc_tasks"
ISSUER = "https://id.example.test/"
STUDENT = str(uuid.uuid4())


def claims(**changes: Any) -> dict[str, Any]:
    """A good token's claims, made now (never at import: the clock moves during a run)."""
    now = int(time.time())
    made = {"sub": STUDENT, "aud": AUDIENCE, "iss": ISSUER, "iat": now, "exp": now + 300}
    made.update(changes)
    return {k: v for k, v in made.items() if v is not None}


def hs256(key: str = SECRET, **changes: Any) -> str:
    return jwt.encode(claims(**changes), key, algorithm="HS256")


def refusal(verifier: auth.Verifier, token: str) -> str:
    with pytest.raises(auth.Unauthorized) as refused:
        verifier.verify(token)
    return str(refused.value)


@pytest.fixture(scope="module")
def rsa_key() -> Any:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> Any:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def jwks(rsa_key: Any, ec_key: Any) -> Iterator[JWKS]:
    keys = JWKS()
    keys.add("rsa-1", rsa_key, "RS256")
    keys.add("ec-1", ec_key)  # no alg: a P-256 key is an ES256 key
    yield keys
    keys.close()


@pytest.fixture
def verifier() -> auth.Verifier:
    return auth.Verifier(SECRET, "", AUDIENCE, ISSUER)


def test_the_students_own_token_grants_that_student_only(verifier: auth.Verifier) -> None:
    grant = verifier.verify(hs256())
    assert grant == auth.Grant(STUDENT, any_student=False)
    assert grant.allows(uuid.UUID(STUDENT))
    assert not grant.allows(uuid.uuid4())


@pytest.mark.parametrize(
    ("scope", "any_student"),
    [
        ("purchases:read", True),
        ("openid purchases:read profile", True),
        ("openid profile", False),
        ("purchases:readall", False),
        ("purchases:read:all", False),
        (["purchases:read"], False),  # not a space-separated string: no scope at all
        (None, False),
    ],
)
def test_only_the_purchases_read_scope_reads_any_student(
    verifier: auth.Verifier, scope: Any, any_student: bool
) -> None:
    grant = verifier.verify(hs256(sub="payment-service", scope=scope))
    assert grant.any_student is any_student
    assert grant.allows(uuid.uuid4()) is any_student


@pytest.mark.parametrize("subject", [None, "not-a-uuid", ""])
def test_a_subject_that_is_not_a_student_id_reads_nobody(verifier: auth.Verifier, subject: Any) -> None:
    grant = verifier.verify(hs256(sub=subject))
    assert grant.subject == subject
    assert not grant.allows(uuid.UUID(STUDENT))


def test_a_subject_that_is_not_a_string_is_refused(verifier: auth.Verifier) -> None:
    assert refusal(verifier, hs256(sub=42)) == "InvalidSubjectError: Subject must be a string"


def test_a_student_id_in_another_spelling_is_the_same_student(verifier: auth.Verifier) -> None:
    assert verifier.verify(hs256(sub=STUDENT.upper())).allows(uuid.UUID(STUDENT))


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"exp": -60}, "ExpiredSignatureError: Signature has expired"),
        ({"exp": None}, 'MissingRequiredClaimError: Token is missing the "exp" claim'),
        ({"aud": "another-service"}, "InvalidAudienceError: Audience doesn't match"),
        ({"aud": None}, 'MissingRequiredClaimError: Token is missing the "aud" claim'),
        ({"iss": "https://evil.example.test/"}, "InvalidIssuerError: Invalid issuer"),
        ({"iss": None}, 'MissingRequiredClaimError: Token is missing the "iss" claim'),
        ({"nbf": 3600}, "ImmatureSignatureError: The token is not yet valid (nbf)"),
    ],
    ids=["expired", "no exp", "wrong aud", "no aud", "wrong iss", "no iss", "not yet valid"],
)
def test_a_token_with_a_bad_claim_is_refused_for_that_claim(
    verifier: auth.Verifier, changes: dict[str, Any], reason: str
) -> None:
    now = int(time.time())
    timed = {k: now + v if k in ("exp", "nbf") and v is not None else v for k, v in changes.items()}
    assert refusal(verifier, hs256(**timed)) == reason


def test_the_clock_of_the_token_issuer_may_be_a_few_seconds_off(verifier: auth.Verifier) -> None:
    now = int(time.time())
    assert verifier.verify(hs256(exp=now - auth.LEEWAY_SECONDS + 3)).subject == STUDENT
    assert verifier.verify(hs256(nbf=now + auth.LEEWAY_SECONDS - 3)).subject == STUDENT
    assert refusal(verifier, hs256(exp=now - auth.LEEWAY_SECONDS - 3)).startswith("ExpiredSignatureError")


def test_without_a_configured_issuer_iss_is_neither_required_nor_checked() -> None:
    verifier = auth.Verifier(SECRET, "", AUDIENCE)
    assert verifier.verify(hs256(iss=None)).subject == STUDENT
    assert verifier.verify(hs256(iss="https://anyone.example.test/")).subject == STUDENT


def test_the_audience_is_the_configured_one() -> None:
    verifier = auth.Verifier(SECRET, "", "another-service")
    assert verifier.verify(hs256(aud="another-service")).subject == STUDENT
    assert refusal(verifier, hs256()) == "InvalidAudienceError: Audience doesn't match"


def test_a_token_signed_with_another_secret_is_refused(verifier: auth.Verifier) -> None:
    other = hs256(key="another secret of 32 bytes or more, surely!")
    assert refusal(verifier, other) == "InvalidSignatureError: Signature verification failed"


@pytest.mark.parametrize("algorithm", ["HS384", "HS512"])
def test_only_hs256_is_accepted_with_the_secret(verifier: auth.Verifier, algorithm: str) -> None:
    token = jwt.encode(claims(), SECRET, algorithm=algorithm)
    assert refusal(verifier, token) == f"algorithm {algorithm!r} is not accepted"


def test_an_unsigned_token_is_refused_for_its_algorithm(verifier: auth.Verifier) -> None:
    token = jwt.encode(claims(), None, algorithm="none")
    assert refusal(verifier, token) == "algorithm 'none' is not accepted"


def test_a_made_up_algorithm_is_named_in_the_refusal_only_in_part(verifier: auth.Verifier) -> None:
    token = jwt.api_jws.base64url_encode(json.dumps({"alg": "X" * 100}).encode()).decode() + ".e30.sig"
    assert refusal(verifier, token) == f"algorithm {'X' * 16!r} is not accepted"
    token = jwt.api_jws.base64url_encode(json.dumps({"typ": "JWT"}).encode()).decode() + ".e30.sig"
    assert refusal(verifier, token) == "algorithm 'None' is not accepted"


def test_a_token_that_is_no_jwt_is_refused_without_being_echoed(verifier: auth.Verifier) -> None:
    reason = refusal(verifier, "garbage-token-text")
    assert reason.startswith("DecodeError: ")
    assert "garbage-token-text" not in reason


def test_a_token_longer_than_any_identity_provider_issues_is_refused_unparsed(verifier: auth.Verifier) -> None:
    assert refusal(verifier, "x" * (auth.MAX_TOKEN_CHARS + 1)) == "token too long"
    assert refusal(verifier, "x" * auth.MAX_TOKEN_CHARS).startswith("DecodeError: "), "at the limit: parsed"


def test_with_no_key_configured_every_token_is_refused() -> None:
    verifier = auth.Verifier("", "", AUDIENCE)
    assert not verifier.configured
    assert refusal(verifier, hs256()) == "no token key is configured"


def test_an_hs256_token_is_refused_when_only_a_jwks_is_configured(jwks: JWKS) -> None:
    verifier = auth.Verifier("", jwks.url, AUDIENCE)
    assert verifier.configured
    assert refusal(verifier, hs256()) == "algorithm 'HS256' is not accepted"


@pytest.mark.parametrize(("kid", "algorithm", "key"), [("rsa-1", "RS256", "rsa"), ("ec-1", "ES256", "ec")])
def test_tokens_signed_with_a_key_of_the_jwks_are_accepted(
    jwks: JWKS, rsa_key: Any, ec_key: Any, kid: str, algorithm: str, key: str
) -> None:
    verifier = auth.Verifier("", jwks.url, AUDIENCE, ISSUER)
    token = jwt.encode(claims(), rsa_key if key == "rsa" else ec_key, algorithm=algorithm, headers={"kid": kid})
    assert verifier.verify(token) == auth.Grant(STUDENT, any_student=False)


def test_an_rs256_token_is_refused_when_no_jwks_is_configured(verifier: auth.Verifier, rsa_key: Any) -> None:
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    assert refusal(verifier, token) == "algorithm 'RS256' is not accepted"


def test_a_jwks_token_without_a_kid_is_refused(jwks: JWKS, rsa_key: Any) -> None:
    verifier = auth.Verifier(SECRET, jwks.url, AUDIENCE)
    assert refusal(verifier, jwt.encode(claims(), rsa_key, algorithm="RS256")) == "token has no kid"


def test_a_key_used_for_another_algorithm_than_its_own_is_refused(jwks: JWKS, ec_key: Any, rsa_key: Any) -> None:
    verifier = auth.Verifier(SECRET, jwks.url, AUDIENCE)
    token = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "rsa-1"})
    assert refusal(verifier, token) == "token key is a RS256 key, not ES256"
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "ec-1"})
    assert refusal(verifier, token) == "token key is a ES256 key, not RS256"


def test_a_jwks_token_with_a_bad_signature_is_refused(jwks: JWKS) -> None:
    verifier = auth.Verifier(SECRET, jwks.url, AUDIENCE)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(claims(), stranger, algorithm="RS256", headers={"kid": "rsa-1"})
    assert refusal(verifier, token) == "InvalidSignatureError: Signature verification failed"


class Clock:
    """auth's view of time: a monotonic clock the test moves, the wall clock as it is."""

    def __init__(self) -> None:
        # Early in the host's uptime: the first unknown kid may fetch at once all the same.
        self.now = float(auth.JWKS_REFRESH_MIN_SECONDS)

    def monotonic(self) -> float:
        return self.now

    @staticmethod
    def time() -> float:
        return time.time()


def test_an_unknown_kid_fetches_the_jwks_again_at_most_every_few_seconds(
    jwks: JWKS, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    monkeypatch.setattr(auth, "time", clock)
    verifier = auth.Verifier("", jwks.url, AUDIENCE)
    rotated = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(claims(), rotated, algorithm="RS256", headers={"kid": "rsa-2"})
    caplog.set_level(logging.INFO, logger="kc_tasks.web.auth")

    assert refusal(verifier, token) == "token key is not in the JWKS"
    assert caplog.messages == ["token key 'rsa-2' is unknown: fetching the JWKS again"]
    assert jwks.fetches == 2, "the cached set, then once again for the unknown kid"
    jwks.add("rsa-2", rotated, "RS256")
    caplog.clear()
    clock.now += auth.JWKS_REFRESH_MIN_SECONDS - 1
    assert refusal(verifier, token) == "token key is not in the JWKS", "too soon: the cached set is used"
    assert caplog.messages == []
    assert jwks.fetches == 2
    clock.now += 1
    assert verifier.verify(token).subject == STUDENT, "the rotated key is fetched"
    assert caplog.messages == ["token key 'rsa-2' is unknown: fetching the JWKS again"]
    assert jwks.fetches == 3


def test_the_logged_kid_is_cut_short(jwks: JWKS, rsa_key: Any, caplog: pytest.LogCaptureFixture) -> None:
    verifier = auth.Verifier("", jwks.url, AUDIENCE)
    caplog.set_level(logging.INFO, logger="kc_tasks.web.auth")
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "k" * 200})
    assert refusal(verifier, token) == "token key is not in the JWKS"
    assert caplog.messages == [f"token key {'k' * 64!r} is unknown: fetching the JWKS again"]


def test_a_known_kid_never_fetches_the_jwks_again(jwks: JWKS, rsa_key: Any, caplog: pytest.LogCaptureFixture) -> None:
    verifier = auth.Verifier("", jwks.url, AUDIENCE)
    caplog.set_level(logging.INFO, logger="kc_tasks.web.auth")
    for _ in range(3):
        verifier.verify(jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"}))
    assert caplog.messages == []
    assert jwks.fetches == 1, "the key set is fetched once and kept"


def test_mint_makes_the_token_the_verifier_accepts() -> None:
    token = auth.mint(SECRET, STUDENT, 600, AUDIENCE, ISSUER, "purchases:read")
    assert auth.Verifier(SECRET, "", AUDIENCE, ISSUER).verify(token) == auth.Grant(STUDENT, any_student=True)
    made = jwt.decode(token, SECRET, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER)
    assert made["exp"] - made["iat"] == 600
    assert abs(made["iat"] - time.time()) < 5


def test_mint_without_issuer_or_scope_leaves_them_out() -> None:
    token = auth.mint(SECRET, STUDENT, 60.9, AUDIENCE)
    made = jwt.decode(token, SECRET, algorithms=["HS256"], audience=AUDIENCE)
    assert set(made) == {"sub", "aud", "iat", "exp"}
    assert made["exp"] - made["iat"] == 60


def test_an_identity_provider_that_does_not_answer_is_given_up_on_within_seconds() -> None:
    """A JWKS fetch that hangs refuses the token after the client's timeout (5 s) instead of
    holding the request, and its thread, for as long as the provider stays silent."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts the connection, never answers
    try:
        verifier = auth.Verifier("", f"http://127.0.0.1:{silent.getsockname()[1]}/jwks.json", AUDIENCE)
        token = jwt.encode(claims(), rsa.generate_private_key(65537, 2048), algorithm="RS256", headers={"kid": "k"})
        started = time.monotonic()
        reason = refusal(verifier, token)
        assert 4 < time.monotonic() - started < 8
        assert reason.startswith("PyJWKClientConnectionError: "), reason
        assert "timed out" in reason
    finally:
        silent.close()
