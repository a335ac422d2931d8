"""Hostile requests against the real web process: whatever their shape, a 4xx, never a 5xx.

Every POST route under /webhooks/ that the running app lists in its OpenAPI document is
attacked, each signature header of every provider at once, so a route added later is
covered without touching this file."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.builders import WEBHOOK_SECRET
from tests.harness import Web, start_web
from tests.services import AMQP, PG, admin

# The signature headers of kc_tasks and of the providers (CONTRACT.md, HTTP).
SIGNATURE_HEADERS = ("X-KC-Signature", "X-Razorpay-Signature", "Stripe-Signature")
PROVIDER_SECRETS = {
    "KC_RAZORPAY_WEBHOOK_SECRET": "e2e-razorpay-secret-of-at-least-32-bytes",
    "KC_STRIPE_WEBHOOK_SECRET": "whsec_e2e-stripe-secret-of-at-least-32-bytes",
}
BODY = b'{"id":"evt_hostile","type":"payment.succeeded","data":{}}'

# Bytes a client can put in a header value: visible ASCII, space and tab, and latin-1's
# upper half (Starlette decodes headers as latin-1: b"\xb2" arrives as '\u00b2').
_HEADER_BYTE = st.sampled_from([*range(0x20, 0x7F), 0x09, *range(0x80, 0x100)])
_RAW = st.lists(_HEADER_BYTE, min_size=1, max_size=200).map(bytes)
# Shaped like a signature, with odd digits in it: unicode digits, long runs, signs, spaces.
_DIGITS = st.text(alphabet=st.sampled_from("0123456789\u00b2\u00b3\u00b9 -+_"), min_size=0, max_size=40).map(
    lambda s: s.encode("latin-1")
)
_SHAPED = st.builds(
    lambda t, v: b"t=" + t + b",v1=" + v,
    st.one_of(_DIGITS, st.integers(0, 10**30).map(lambda n: str(n).encode())),
    st.one_of(_RAW, st.just(b"0" * 64)),
)


def _header_value(raw: bytes) -> bytes | None:
    value = raw.strip(b" \t")
    return value or None


@pytest.fixture(scope="module")
def hostile_web(tmp_path_factory: pytest.TempPathFactory, template_db: str) -> Iterator[tuple[Web, list[str]]]:
    """One web process for the module (hypothesis runs many examples against it)."""
    name = f"kc_h_{uuid.uuid4().hex[:12]}"
    admin(f"CREATE DATABASE {name} TEMPLATE {template_db}")
    web = start_web(tmp_path_factory.mktemp("hostile"), f"{PG}/{name}", AMQP, **PROVIDER_SECRETS)
    try:
        paths = httpx.get(web.base + "/openapi.json", timeout=10).json()["paths"]
        routes = sorted(p for p, methods in paths.items() if p.startswith("/webhooks/") and "post" in methods)
        assert "/webhooks/payments" in routes
        yield web, routes
    finally:
        web.stop()
        admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.one_of(_RAW, _SHAPED))
@example(header=b"t=\xb2,v1=" + b"0" * 64)
@example(header=b"t=" + b"9" * 5000 + b",v1=" + b"0" * 64)
@example(header=b"t=" + b"1" * 4301 + b",v1=00")
@example(header=b"t=\xb9\xb2\xb3,v1=\xff")
def test_no_signature_header_gets_a_5xx_on_any_webhook_route(hostile_web: tuple[Web, list[str]], header: bytes) -> None:
    web, routes = hostile_web
    value = _header_value(header)
    headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json")]
    if value is not None:
        headers += [(name.encode(), value) for name in SIGNATURE_HEADERS]
    for route in routes:
        response = httpx.post(web.base + route, content=BODY, headers=headers, timeout=10)
        assert 400 <= response.status_code < 500, (route, header, response.status_code, response.text[:200])


def _kc_signed(body: bytes) -> dict[str, str]:
    t = int(time.time())
    digest = hmac.new(WEBHOOK_SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return {"Content-Type": "application/json", "X-KC-Signature": f"t={t},v1={digest}"}


@pytest.mark.parametrize(
    "nested",
    [b"[" * 32000 + b"]" * 32000, b'{"a":' * 10000 + b"1" + b"}" * 10000],
    ids=["arrays", "objects"],
)
def test_a_signed_but_deeply_nested_body_is_a_422(hostile_web: tuple[Web, list[str]], nested: bytes) -> None:
    web, _ = hostile_web
    body = b'{"id":"evt_deep","type":"payment.succeeded","data":' + nested + b"}"
    response = httpx.post(web.base + "/webhooks/payments", content=body, headers=_kc_signed(body), timeout=10)
    # Refused for its nesting, once parsed: not for its size (413) before that.
    assert response.status_code == 422, response.text[:200]
    assert response.json() == {"detail": "body is not valid JSON: nested too deeply"}
    assert "Traceback" not in web.text()


def test_an_event_id_with_line_breaks_cannot_forge_a_log_line(hostile_web: tuple[Web, list[str]]) -> None:
    web, _ = hostile_web
    forged = (
        "2026-01-01 00:00:00,000 INFO MainProcess kc_tasks.web.webhooks: webhook evt_ok: payment pay_forged enqueued"
    )
    data = {
        "payment_id": f"pay_{uuid.uuid4().hex}",
        "student_id": str(uuid.uuid4()),
        "course_id": str(uuid.uuid4()),
        "amount_cents": 100,
        "currency": "INR",
    }
    event_id = f"evt_{uuid.uuid4().hex}\n{forged}\r\n\x1b[2K"
    body = json.dumps({"id": event_id, "type": "payment.succeeded", "data": data}).encode()
    response = httpx.post(web.base + "/webhooks/payments", content=body, headers=_kc_signed(body), timeout=10)
    assert response.status_code in (200, 202), response.text
    lines = web.text().splitlines()
    assert not any(line.startswith(forged) for line in lines), "a request forged a log line"
    assert "\x1b" not in web.text()
