"""GET /students/{id}/courses through real uvicorn: only a valid bearer JWT for that student
(or with scope purchases:read) reads it. The identity provider's JWKS is served by a local
HTTP server; the attacks are forged tokens, not mocks of the verifier."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.harness import Web, start_web, wait_until
from tests.jwks_server import JWKS
from tests.services import AMQP, PG, admin, run_sql

SECRET = "e2e-jwt-secret-" + "s" * 32
AUDIENCE = "kc_tasks"
ISSUER = "https://id.example.test/"
STUDENT = str(uuid.uuid4())
OTHER = str(uuid.uuid4())
KC_TASKS = str(Path(sys.executable).with_name("kc-tasks"))


def claims(sub: str = STUDENT, **extra: object) -> dict:
    """A good token's claims, made when called (never at collection: a token made there may
    have expired by the time its test runs, and be refused for that instead)."""
    now = datetime.now(UTC)
    base = {"sub": sub, "aud": AUDIENCE, "iss": ISSUER, "iat": now, "exp": now + timedelta(minutes=5)}
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def handmade(header: dict, payload: dict, key: bytes | None) -> str:
    """A token PyJWT would refuse to make: `alg: none`, or HS256 keyed with a public key."""
    payload = {k: int(v.timestamp()) if isinstance(v, datetime) else v for k, v in payload.items()}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = b"" if key is None else hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


@pytest.fixture(scope="module")
def keys() -> dict[str, object]:
    return {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec": ec.generate_private_key(ec.SECP256R1()),
    }


@pytest.fixture(scope="module")
def jwks(keys: dict[str, object]) -> Iterator[JWKS]:
    server = JWKS()
    server.add("rsa-1", keys["rsa"], "RS256")
    server.add("ec-1", keys["ec"])  # no alg: a P-256 key is an ES256 key
    yield server
    server.close()


@pytest.fixture(scope="module")
def student_db(template_db: str) -> Iterator[str]:
    name = f"kc_a_{uuid.uuid4().hex[:12]}"
    admin(f"CREATE DATABASE {name} TEMPLATE {template_db}")
    url = f"{PG}/{name}"
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(5):
        run_sql(
            url,
            "INSERT INTO student_course_purchases (id, student_id, course_id, payment_id, amount_cents, currency, "
            "created_at, updated_at) VALUES (gen_random_uuid(), %s, gen_random_uuid(), %s, 4999, 'INR', %s, %s)",
            (STUDENT, f"pay_secret_{i}", start + timedelta(days=i), start + timedelta(days=i)),
        )
    yield url
    admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory, student_db: str, jwks: JWKS) -> Iterator[Web]:
    process = start_web(
        tmp_path_factory.mktemp("auth"),
        student_db,
        AMQP,
        KC_JWT_SECRET=SECRET,
        KC_JWT_JWKS_URL=jwks.url,
        KC_JWT_ISSUER=ISSUER,
    )
    yield process
    process.stop()


def courses(web: Web, token: str | None, student: str = STUDENT, query: str = "") -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.get(f"{web.base}/students/{student}/courses{query}", headers=headers, timeout=10)


def refusal(web: Web, token: str) -> str:
    """Why the web process refused the token: the 401 says only "invalid or expired token" (a
    client learns nothing it could probe with), the log line the operator reads says why."""
    student = str(uuid.uuid4())  # names this request's log line
    response = courses(web, token, student=student)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert response.json() == {"detail": "invalid or expired token"}
    marker = f"courses of {student}: token refused: "
    assert wait_until(lambda: marker in web.text(), timeout=10), web.text()[-2000:]
    return web.text().split(marker, 1)[1].splitlines()[0]


def test_without_a_token_the_courses_are_not_shown(web: Web) -> None:
    response = courses(web, None)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "pay_secret" not in response.text
    basic = httpx.get(f"{web.base}/students/{STUDENT}/courses", auth=("a", "b"), timeout=10)
    assert basic.status_code == 401


def test_the_students_own_hs256_token_shows_their_courses_without_payment_ids(web: Web) -> None:
    response = courses(web, jwt.encode(claims(), SECRET, algorithm="HS256"))
    assert response.status_code == 200, response.text
    rows = response.json()
    assert len(rows) == 5
    assert [r["purchased_at"] for r in rows] == sorted((r["purchased_at"] for r in rows), reverse=True)
    assert all("payment_id" not in r for r in rows)


def test_a_service_token_with_scope_purchases_read_sees_any_student_with_payment_ids(web: Web) -> None:
    token = jwt.encode(claims(sub="payment-service", scope="openid purchases:read"), SECRET, algorithm="HS256")
    rows = courses(web, token).json()
    assert {r["payment_id"] for r in rows} == {f"pay_secret_{i}" for i in range(5)}


@pytest.mark.parametrize(("kid", "alg"), [("rsa-1", "RS256"), ("ec-1", "ES256")])
def test_tokens_of_the_identity_providers_jwks_are_accepted(
    web: Web, keys: dict[str, object], kid: str, alg: str
) -> None:
    key = keys["rsa" if alg == "RS256" else "ec"]
    token = jwt.encode(claims(), key, algorithm=alg, headers={"kid": kid})
    assert courses(web, token).status_code == 200


def test_a_key_added_to_the_jwks_is_fetched_when_its_kid_is_first_seen(web: Web, jwks: JWKS) -> None:
    courses(web, jwt.encode(claims(), jwt_key := rsa.generate_private_key(65537, 2048), "RS256", {"kid": "nope"}))
    jwks.add("rsa-2", jwt_key, "RS256")
    fetches = jwks.fetches
    token = jwt.encode(claims(), jwt_key, algorithm="RS256", headers={"kid": "rsa-2"})
    # The refresh after an unknown kid is allowed once every few seconds: ask until it is.
    deadline = time.monotonic() + 30
    while (status := courses(web, token).status_code) != 200 and time.monotonic() < deadline:
        time.sleep(1)
    assert status == 200
    assert jwks.fetches > fetches


def test_algorithm_confusion_an_hs256_token_keyed_with_the_public_key_is_refused(
    web: Web, keys: dict[str, object]
) -> None:
    public_pem = (
        keys["rsa"]
        .public_key()
        .public_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    for kid in ("rsa-1", None):
        header = {"alg": "HS256", "typ": "JWT", **({"kid": kid} if kid else {})}
        reason = refusal(web, handmade(header, claims(), public_pem))
        assert reason == "InvalidSignatureError: Signature verification failed", kid
    # The JWK itself, as the HMAC key, fares no better.
    jwk_text = json.dumps(jwt.algorithms.RSAAlgorithm.to_jwk(keys["rsa"].public_key())).encode()  # type: ignore[attr-defined]
    reason = refusal(web, handmade({"alg": "HS256", "kid": "rsa-1"}, claims(), jwk_text))
    assert reason == "InvalidSignatureError: Signature verification failed"


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
def test_an_unsigned_token_is_refused(web: Web, alg: str) -> None:
    assert refusal(web, handmade({"alg": alg, "typ": "JWT"}, claims(), None)) == f"algorithm {alg!r} is not accepted"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"exp": timedelta(minutes=-5)}, "ExpiredSignatureError: Signature has expired"),
        ({"exp": None}, 'MissingRequiredClaimError: Token is missing the "exp" claim'),
        ({"aud": "another-service"}, "InvalidAudienceError: Audience doesn't match"),
        ({"aud": None}, 'MissingRequiredClaimError: Token is missing the "aud" claim'),
        ({"iss": "https://evil.example.test/"}, "InvalidIssuerError: Invalid issuer"),
        ({"iss": None}, 'MissingRequiredClaimError: Token is missing the "iss" claim'),
    ],
    ids=["expired", "no exp", "wrong aud", "no aud", "wrong iss", "no iss"],
)
def test_a_token_with_bad_claims_is_refused_for_that_claim(web: Web, changes: dict, reason: str) -> None:
    # Made here, as the test runs: only "expired" is past its expiry.
    made = {k: datetime.now(UTC) + v if isinstance(v, timedelta) else v for k, v in changes.items()}
    assert refusal(web, jwt.encode(claims(**made), SECRET, algorithm="HS256")) == reason


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "e30.e30.", "x" * 10000, "\u00e9t\u00e9.\u00b2.x"])
def test_a_malformed_token_is_a_401(web: Web, token: str) -> None:
    response = httpx.get(
        f"{web.base}/students/{STUDENT}/courses",
        headers=[(b"Authorization", (b"Bearer " + token.encode("latin-1", "replace")).strip())],
        timeout=10,
    )
    assert response.status_code == 401


def test_a_token_signed_with_another_secret_is_refused(web: Web) -> None:
    token = jwt.encode(claims(), "another secret of 32 bytes or more!", algorithm="HS256")
    assert refusal(web, token) == "InvalidSignatureError: Signature verification failed"


def test_another_students_token_is_forbidden(web: Web) -> None:
    response = courses(web, jwt.encode(claims(sub=OTHER), SECRET, algorithm="HS256"))
    assert response.status_code == 403
    assert "pay_secret" not in response.text


def test_the_listing_is_paged_with_a_link_to_the_next_page(web: Web) -> None:
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    seen: list[str] = []
    query = "?limit=2"
    while True:
        response = courses(web, token, query=query)
        assert response.status_code == 200
        assert len(response.json()) <= 2
        seen += [r["purchase_id"] for r in response.json()]
        link = response.headers.get("link")
        if link is None:
            break
        query = "?" + link.split("?", 1)[1].split(">", 1)[0]
    assert len(seen) == len(set(seen)) == 5
    assert courses(web, token, query="?limit=1000").status_code == 422
    assert courses(web, token, query="?after=not-a-cursor").status_code == 422


def test_kc_tasks_token_mints_a_token_the_web_process_accepts(web: Web) -> None:
    env = dict(os.environ, KC_JWT_SECRET=SECRET, KC_JWT_ISSUER=ISSUER)
    minted = subprocess.run(
        [KC_TASKS, "token", "--student", STUDENT, "--ttl", "10m"], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert courses(web, minted).status_code == 200
    assert courses(web, minted, student=OTHER).status_code == 403
    assert jwt.decode(minted, SECRET, algorithms=["HS256"], audience=AUDIENCE)["exp"] <= time.time() + 600


def test_with_no_key_configured_every_token_is_refused(
    tmp_path: Path, student_db: str, keys: dict[str, object]
) -> None:
    web = start_web(tmp_path, student_db, AMQP, KC_JWT_SECRET="")
    try:
        for token in (jwt.encode(claims(), SECRET, algorithm="HS256"), handmade({"alg": "none"}, claims(), None)):
            assert refusal(web, token) == "no token key is configured"
    finally:
        web.stop()
