"""Razorpay's and Stripe's APIs, served from a local HTTP server in the test.

The endpoints reconciliation and POST /checkouts/confirm read (CONTRACT.md), with their
documented pagination, authentication and answer shapes, over objects the test puts in:
Razorpay's payments, refunds and disputes (collections by `from`/`to`, `count`/`skip`), one
order, payment or refund by id, an order's payments; Stripe's Events API (`created[gte]`,
`types[]`, `limit`, `starting_after`) and one Checkout Session by id. An unknown id is answered
as each provider answers it: Razorpay 400 BAD_REQUEST_ERROR, Stripe 404 resource_missing.
Faults are queued per path: the next requests of that path answer them, in order, then it
serves again ("pass" serves one request as usual).
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
from urllib.parse import parse_qs, unquote, urlsplit

from tests import provider_samples as s

RAZORPAY_KEY_ID = "rzp_test_reconcileKeyId01"
RAZORPAY_KEY_SECRET = "razorpay-key-secret-never-logged-7f3a"
STRIPE_API_KEY = "rk_test_stripe-restricted-key-never-logged-9c2b"
DAY = 86400

# Faults: "429" (Retry-After: 0), "500", "timeout" (sleeps TIMEOUT_SLEEP before answering),
# "garbage" (200 with an HTML body), "shape" (200 with JSON of another shape).
TIMEOUT_SLEEP = 3.0


@dataclass
class Provider:
    razorpay_payments: list[dict[str, Any]] = field(default_factory=list)
    razorpay_orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    razorpay_refunds: list[dict[str, Any]] = field(default_factory=list)
    razorpay_disputes: list[dict[str, Any]] = field(default_factory=list)
    stripe_events: list[dict[str, Any]] = field(default_factory=list)
    stripe_sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    faults: dict[str, list[str]] = field(default_factory=dict)
    # (path, query) of every request, in order; a query value is a list where the key repeats
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def fail(self, path: str, *faults: str) -> None:
        with self.lock:
            self.faults.setdefault(path, []).extend(faults)

    def pages(self, path: str) -> list[dict[str, Any]]:
        return [query for p, query in self.requests if p == path]

    def razorpay_paid(
        self,
        created_at: int,
        student: str | None = None,
        course: str | None = None,
        payment_id: str | None = None,
        status: str = "captured",
        payment_notes: dict[str, Any] | None = None,
        with_order: bool = True,
    ) -> dict[str, Any]:
        """A payment at the provider, and the order the platform's server created for it with
        the student and course in its notes (none with `with_order` false)."""
        payment = s.razorpay_payment(payment_id, notes=payment_notes, created_at=created_at)
        if status != "captured":
            payment.update(status=status, captured=False, error_code="BAD_REQUEST_ERROR", error_description="declined")
        if with_order:
            self.razorpay_orders[payment["order_id"]] = s.razorpay_order(payment, student, course)
        else:
            payment["order_id"] = None
        self.razorpay_payments.append(payment)
        return payment

    def razorpay_refund(
        self, payment: dict[str, Any], created_at: int, amount: int | None = None, status: str = "processed"
    ) -> dict[str, Any]:
        """A refund of `payment` made at `created_at`; once processed, the payment shows it."""
        refund = s.razorpay_refund(payment, amount, status="pending", created_at=created_at)
        self.razorpay_refunds.append(refund)
        if status == "processed":
            self.razorpay_refund_processed(payment, refund)
        return refund

    def razorpay_refund_processed(self, payment: dict[str, Any], refund: dict[str, Any]) -> None:
        """A pending refund (Razorpay's `status` pending) is processed: the payment shows it."""
        refund["status"] = "processed"
        payment["amount_refunded"] += refund["amount"]
        full = payment["amount_refunded"] >= payment["amount"]
        payment.update(refund_status="full" if full else "partial", status="refunded" if full else "captured")

    def razorpay_instalments(
        self,
        created_at: int,
        student: str,
        course: str,
        parts: int,
        paid: int,
        amount: int = 49900,
        order_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """An order that takes partial payments (`partial_payment`: true) of `parts` instalments of
        `amount`, `paid` of them captured a minute apart: one payment each, all of the order, which
        shows its `amount_paid`, `amount_due` and `status` (`attempted` until paid in full, then
        `paid`). Called again with the order's id and more `paid`: the next instalments."""
        order_id = order_id or "order_" + uuid.uuid4().hex[:14]
        payments = [p for p in self.razorpay_payments if p["order_id"] == order_id]
        while len(payments) < paid:
            payment = s.razorpay_payment(amount=amount, order_id=order_id, created_at=created_at + 60 * len(payments))
            self.razorpay_payments.append(payment)
            payments.append(payment)
        self.razorpay_orders[order_id] = s.razorpay_order(
            payments[-1], student, course, amount=parts * amount, amount_paid=paid * amount
        )
        return payments

    def razorpay_dispute(self, payment: dict[str, Any], created_at: int, status: str = "lost") -> dict[str, Any]:
        dispute = s.razorpay_dispute(payment, status, created_at=created_at)
        self.razorpay_disputes.append(dispute)
        return dispute

    def razorpay_order_for(
        self, student: str | None, course: str | None, amount: int = 49900, created_at: int | None = None
    ) -> dict[str, Any]:
        """An order the platform's server created (status `created`, nothing paid yet): the
        buyer has not paid, or has not finished paying."""
        created = created_at or int(time.time())
        payment = s.razorpay_payment(amount=amount, created_at=created)
        order = s.razorpay_order(payment, student, course, amount_paid=0)
        order["status"] = "created"
        self.razorpay_orders[order["id"]] = order
        return order

    def razorpay_pay(
        self, order: dict[str, Any], status: str = "captured", amount: int | None = None
    ) -> dict[str, Any]:
        """A payment of `order` (captured, or e.g. `authorized`, not captured yet); a captured one
        adds to the order's `amount_paid`, which is `paid` once it reaches its `amount`."""
        payment = s.razorpay_payment(amount=amount or order["amount"], order_id=order["id"])
        payment["created_at"] = int(time.time()) + len(self.razorpay_payments)
        if status != "captured":
            payment.update(status=status, captured=False)
        else:
            order["amount_paid"] += payment["amount"]
            order["amount_due"] = order["amount"] - order["amount_paid"]
            order["status"] = "paid" if order["amount_paid"] >= order["amount"] else "attempted"
        order["attempts"] = order.get("attempts", 0) + 1
        self.razorpay_payments.append(payment)
        return payment

    def stripe_checkout(self, session: dict[str, Any]) -> dict[str, Any]:
        """A Checkout Session at Stripe, as GET /v1/checkout/sessions/{id} answers it."""
        self.stripe_sessions[session["id"]] = session
        return session

    def stripe_event(self, kind: str, obj: dict[str, Any], created: int) -> dict[str, Any]:
        """An event in Stripe's event log, as its webhook would have sent it."""
        event = s.stripe_event(kind, obj, created=created)
        self.stripe_events.append(event)
        return event


def _handler(provider: Provider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # Keep-alive, as the providers' APIs: every answer says its Content-Length. Without Nagle's
        # algorithm: the body, written after the headers, would wait for their delayed ACK (40 ms).
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = {k: (v if k.endswith("[]") else v[-1]) for k, v in parse_qs(parts.query).items()}
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
            if parts.path == "/v1/events":
                return self._stripe_events(query)
            if parts.path.startswith("/v1/checkout/sessions/"):
                return self._stripe_session(unquote(parts.path.removeprefix("/v1/checkout/sessions/")))
            if not self._razorpay_authorized():
                return self._send(401, {"error": {"code": "BAD_REQUEST_ERROR", "description": "Authentication failed"}})
            collections = {
                "/v1/payments": provider.razorpay_payments,
                "/v1/refunds": provider.razorpay_refunds,
                "/v1/disputes": provider.razorpay_disputes,
            }
            if parts.path in collections:
                return self._razorpay_list(query, collections[parts.path])
            if parts.path.startswith("/v1/orders/") and parts.path.endswith("/payments"):
                order_id = unquote(parts.path.removeprefix("/v1/orders/").removesuffix("/payments"))
                if order_id not in provider.razorpay_orders:
                    error = {"code": "BAD_REQUEST_ERROR", "description": "The id provided does not exist"}
                    return self._send(400, {"error": error})
                items = [p for p in provider.razorpay_payments if p["order_id"] == order_id]
                return self._send(200, {"entity": "collection", "count": len(items), "items": items})
            _, _, collection, entity_id = [*parts.path.split("/", 3), "", "", "", ""][:4]
            entity_id = unquote(entity_id)
            found: dict[str, Any] | None = None
            if collection == "orders":
                found = provider.razorpay_orders.get(entity_id)
            elif collection == "payments":
                found = next((p for p in provider.razorpay_payments if p["id"] == entity_id), None)
            elif collection == "refunds":
                found = next((r for r in provider.razorpay_refunds if r["id"] == entity_id), None)
            if found is None:
                error = {"code": "BAD_REQUEST_ERROR", "description": "The id provided does not exist"}
                return self._send(400, {"error": error})
            return self._send(200, found)

        def _razorpay_authorized(self) -> bool:
            expected = base64.b64encode(f"{RAZORPAY_KEY_ID}:{RAZORPAY_KEY_SECRET}".encode()).decode()
            return self.headers.get("Authorization") == f"Basic {expected}"

        def _razorpay_list(self, query: dict[str, Any], entities: list[dict[str, Any]]) -> None:
            since, until = int(query.get("from", 0)), int(query.get("to", 2**40))
            count, skip = min(int(query.get("count", 10)), 100), int(query.get("skip", 0))
            found = sorted(
                (e for e in entities if since <= e["created_at"] <= until), key=lambda e: (-e["created_at"], e["id"])
            )
            items = found[skip : skip + count]
            return self._send(200, {"entity": "collection", "count": len(items), "items": items})

        def _stripe_session(self, session_id: str) -> None:
            if self.headers.get("Authorization") != f"Bearer {STRIPE_API_KEY}":
                return self._send(401, {"error": {"type": "invalid_request_error", "message": "Invalid API Key"}})
            found = provider.stripe_sessions.get(session_id)
            if found is None:
                error = {
                    "type": "invalid_request_error",
                    "code": "resource_missing",
                    "message": f"No such checkout.session: '{session_id}'",
                }
                return self._send(404, {"error": error})
            return self._send(200, found)

        def _stripe_events(self, query: dict[str, Any]) -> None:
            if self.headers.get("Authorization") != f"Bearer {STRIPE_API_KEY}":
                return self._send(401, {"error": {"type": "invalid_request_error", "message": "Invalid API Key"}})
            since, limit = int(query.get("created[gte]", 0)), min(int(query.get("limit", 10)), 100)
            types = query.get("types[]")
            found = sorted(
                (e for e in provider.stripe_events if e["created"] >= since and (not types or e["type"] in types)),
                key=lambda e: (-e["created"], e["id"]),
            )
            after = query.get("starting_after")
            if after:
                ids = [e["id"] for e in found]
                found = found[ids.index(after) + 1 :]
            page = found[:limit]
            return self._send(
                200, {"object": "list", "url": "/v1/events", "has_more": len(found) > limit, "data": page}
            )

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
