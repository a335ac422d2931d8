"""Razorpay's and Stripe's list APIs, served from a local HTTP server in the test.

The endpoints reconciliation reads (CONTRACT.md, Reconciliation), with their documented
pagination, authentication and answer shapes, over objects the test puts in. Faults are
queued per path: the next requests of that path answer them, in order, then it serves again.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests import provider_samples as s

RAZORPAY_KEY_ID = "rzp_test_reconcileKeyId01"
RAZORPAY_KEY_SECRET = "razorpay-key-secret-never-logged-7f3a"
STRIPE_API_KEY = "rk_test_stripe-restricted-key-never-logged-9c2b"

# Faults: "429" (Retry-After: 0), "500", "timeout" (sleeps TIMEOUT_SLEEP before answering),
# "garbage" (200 with an HTML body), "shape" (200 with JSON of another shape).
TIMEOUT_SLEEP = 3.0


@dataclass
class Provider:
    razorpay_payments: list[dict[str, Any]] = field(default_factory=list)
    stripe_intents: list[dict[str, Any]] = field(default_factory=list)
    stripe_charges: list[dict[str, Any]] = field(default_factory=list)
    faults: dict[str, list[str]] = field(default_factory=dict)
    # (path, query) of every request, in order
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def fail(self, path: str, *faults: str) -> None:
        with self.lock:
            self.faults.setdefault(path, []).extend(faults)

    def pages(self, path: str) -> list[dict[str, str]]:
        return [query for p, query in self.requests if p == path]


def razorpay_payment(
    created_at: int,
    student: str | None = None,
    course: str | None = None,
    status: str = "captured",
    refunded: int = 0,
    payment_id: str | None = None,
) -> dict[str, Any]:
    payment = s.razorpay_payment(payment_id, student, course, refunded=refunded)
    payment["created_at"] = created_at
    if status != "captured":
        payment.update(status=status, captured=False, error_code="BAD_REQUEST_ERROR", error_description="declined")
    return payment


def stripe_intent(
    created: int, student: str | None = None, course: str | None = None, status: str = "succeeded"
) -> dict[str, Any]:
    intent = s.stripe_intent(s.new_intent(), student, course)
    intent["created"] = created
    if status != "succeeded":
        intent.update(status=status, amount_received=0)
    return intent


def stripe_charge(intent: dict[str, Any], refunded: bool = True) -> dict[str, Any]:
    charge = s.stripe_charge(intent["id"], refunded, 99900 if refunded else 100)
    charge["created"] = intent["created"]
    return charge


def _handler(provider: Provider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            with provider.lock:
                provider.requests.append((parts.path, query))
                queued = provider.faults.get(parts.path) or []
                fault = queued.pop(0) if queued else None
            if fault == "timeout":
                time.sleep(TIMEOUT_SLEEP)
                return self._send(200, {"entity": "collection", "count": 0, "items": []})
            if fault == "429":
                return self._send(429, {"error": {"code": "TOO_MANY_REQUESTS"}}, {"Retry-After": "0"})
            if fault == "500":
                return self._send(500, {"error": {"message": "internal"}})
            if fault == "garbage":
                return self._send_raw(200, b"<html>502 Bad Gateway</html>", "text/html")
            if fault == "shape":
                return self._send(200, {"unexpected": True})
            if parts.path == "/v1/payments":
                return self._razorpay(query)
            if parts.path in ("/v1/payment_intents", "/v1/charges"):
                objects = provider.stripe_intents if parts.path == "/v1/payment_intents" else provider.stripe_charges
                return self._stripe(query, objects)
            return self._send(404, {"error": "not found"})

        def _razorpay(self, query: dict[str, str]) -> None:
            expected = base64.b64encode(f"{RAZORPAY_KEY_ID}:{RAZORPAY_KEY_SECRET}".encode()).decode()
            if self.headers.get("Authorization") != f"Basic {expected}":
                return self._send(401, {"error": {"code": "BAD_REQUEST_ERROR", "description": "Authentication failed"}})
            since, until = int(query.get("from", 0)), int(query.get("to", 2**40))
            count, skip = min(int(query.get("count", 10)), 100), int(query.get("skip", 0))
            found = sorted(
                (p for p in provider.razorpay_payments if since <= p["created_at"] <= until),
                key=lambda p: (-p["created_at"], p["id"]),
            )
            items = found[skip : skip + count]
            return self._send(200, {"entity": "collection", "count": len(items), "items": items})

        def _stripe(self, query: dict[str, str], objects: list[dict[str, Any]]) -> None:
            if self.headers.get("Authorization") != f"Bearer {STRIPE_API_KEY}":
                return self._send(401, {"error": {"type": "invalid_request_error", "message": "Invalid API Key"}})
            since, limit = int(query.get("created[gte]", 0)), min(int(query.get("limit", 10)), 100)
            found = sorted((o for o in objects if o["created"] >= since), key=lambda o: (-o["created"], o["id"]))
            after = query.get("starting_after")
            if after:
                ids = [o["id"] for o in found]
                found = found[ids.index(after) + 1 :]
            page = found[:limit]
            url = "/v1/payment_intents" if objects is provider.stripe_intents else "/v1/charges"
            return self._send(200, {"object": "list", "url": url, "has_more": len(found) > limit, "data": page})

        def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            self._send_raw(status, json.dumps(body).encode(), "application/json", headers)

        def _send_raw(self, status: int, body: bytes, kind: str, headers: dict[str, str] | None = None) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout)
                pass

    return Handler


@contextmanager
def serve() -> Iterator[Provider]:
    provider = Provider()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(provider))
    server.daemon_threads = True
    provider.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield provider
    finally:
        server.shutdown()
        server.server_close()


def new_id() -> str:
    return str(uuid.uuid4())
