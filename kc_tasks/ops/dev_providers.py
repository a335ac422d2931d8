"""Razorpay's and Stripe's APIs, served on this machine: for development mode
(`kc-tasks dev --providers`) and the tests (tests/provider_api_server.py re-exports it).

What kc_tasks reads (CONTRACT.md), with the providers' documented pagination, authentication
and answer shapes: Razorpay's payments, refunds and disputes (collections by `from`/`to`,
`count`/`skip`), one order, payment or refund by id, an order's payments; Stripe's Events API
(`created[gte]`, `types[]`, `limit`, `starting_after`) and one Checkout Session by id. An unknown
id is answered as each provider answers it: Razorpay 400 BAD_REQUEST_ERROR, Stripe 404
resource_missing. Faults are queued per path: the next GET requests of that path answer them,
in order, then it serves again ("pass" serves one request as usual).

What a platform's server and its buyer do, for the story told offline (examples/checkout/):
- Razorpay: `POST /v1/orders` (the Orders API, JSON, the key's basic auth) creates an order;
  `GET /v1/checkout.js` is a stand-in of Checkout's script (`new Razorpay(options).open()`),
  whose Pay button calls `POST /dev/razorpay/orders/{id}/pay`: the order is paid and Checkout's
  handler gets `razorpay_order_id`, `razorpay_payment_id` and `razorpay_signature`
  (HMAC-SHA256 of "order_id|payment_id" with the key secret, as Razorpay signs it).
- Stripe: `POST /v1/checkout/sessions` (form-encoded, the secret key as bearer) creates a
  session whose `url` is a stand-in of Stripe's hosted page (`/dev/stripe/checkout/{id}`); its
  Pay button completes the session and sends the buyer to the `success_url`, its
  `{CHECKOUT_SESSION_ID}` filled in.
With `webhooks` set, each payment also sends the provider's signed webhook (Razorpay's
`order.paid`, Stripe's `checkout.session.completed`) to kc_tasks, as the provider would.

Each route is a small function, Razorpay's and Stripe's apart, in a table (ROUTES) dispatched
by method and path. Nothing is kept: the objects live in memory, as long as the process.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import razorpay
import stripe

logger = logging.getLogger(__name__)

DAY = 86400

# Faults: "429" (Retry-After: 0), "500", "timeout" (sleeps TIMEOUT_SLEEP before answering),
# "garbage" (200 with an HTML body), "shape" (200 with JSON of another shape).
TIMEOUT_SLEEP = 3.0
MAX_BODY_BYTES = 65536
# How long a webhook's delivery to kc_tasks may take, seconds (one try: reconciliation is the net).
WEBHOOK_TIMEOUT = 10.0
UNKNOWN_ID = {"code": "BAD_REQUEST_ERROR", "description": "The id provided does not exist"}


@dataclass
class Webhooks:
    """Where the stand-in sends the providers' webhooks: kc_tasks' web process, and the secrets
    of its KC_RAZORPAY_WEBHOOK_SECRET and KC_STRIPE_WEBHOOK_SECRET."""

    base_url: str
    razorpay_secret: str = field(repr=False)
    stripe_secret: str = field(repr=False)


@dataclass
class StandIn:
    """Razorpay's and Stripe's APIs stood in for: the objects they hold, their keys, the faults asked of them."""

    razorpay_payments: list[dict[str, Any]] = field(default_factory=list)
    razorpay_orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    razorpay_refunds: list[dict[str, Any]] = field(default_factory=list)
    razorpay_disputes: list[dict[str, Any]] = field(default_factory=list)
    stripe_events: list[dict[str, Any]] = field(default_factory=list)
    stripe_sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    faults: dict[str, list[str]] = field(default_factory=dict)
    # (path, query) of every GET request, in order; a query value is a list where the key repeats
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""
    # The keys it answers to (none while empty): the tests' own, or those development mode
    # generates and gives kc_tasks (KC_RAZORPAY_KEY_ID/SECRET, KC_STRIPE_API_KEY).
    razorpay_key_id: str = ""
    razorpay_key_secret: str = field(default="", repr=False)
    stripe_api_key: str = field(default="", repr=False)
    webhooks: Webhooks | None = None

    def fail(self, path: str, *faults: str) -> None:
        with self.lock:
            self.faults.setdefault(path, []).extend(faults)

    def pages(self, path: str) -> list[dict[str, Any]]:
        return [query for p, query in self.requests if p == path]

    def create_order(self, body: Any) -> dict[str, Any]:
        """Razorpay's POST /v1/orders: `amount` (paise, at least 100), `currency`, `receipt`,
        `notes` (the platform's: student_id and course_id). Raises ValueError on a bad body."""
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        amount, currency, notes = body.get("amount"), body.get("currency", "INR"), body.get("notes") or {}
        if not isinstance(amount, int) or isinstance(amount, bool) or amount < 100:
            raise ValueError("amount: an integer of at least 100 (paise) is required")
        if not isinstance(currency, str) or not re.fullmatch(r"[A-Z]{3}", currency):
            raise ValueError("currency: a three-letter code is required")
        if not isinstance(notes, dict) or len(notes) > 15:
            raise ValueError("notes: an object of at most 15 keys")
        order: dict[str, Any] = {
            "id": "order_" + uuid.uuid4().hex[:14],
            "entity": "order",
            "amount": amount,
            "amount_paid": 0,
            "amount_due": amount,
            "currency": currency,
            "receipt": body.get("receipt"),
            "offer_id": None,
            "status": "created",
            "attempts": 0,
            "notes": notes or [],
            "created_at": int(time.time()),
        }
        with self.lock:
            self.razorpay_orders[order["id"]] = order
        return order

    def pay_order(self, order_id: str) -> dict[str, str] | None:
        """The buyer pays what is due on the order at Checkout: a captured payment, the order
        paid, and what Checkout's handler gets. None: no such order, or nothing due."""
        with self.lock:
            order = self.razorpay_orders.get(order_id)
            if order is None or order["amount_due"] <= 0:
                return None
            payment = _razorpay_payment(order)
            order.update(amount_paid=order["amount"], amount_due=0, status="paid", attempts=order["attempts"] + 1)
            self.razorpay_payments.append(payment)
            event = {
                "entity": "event",
                "account_id": "acc_kcdevstandin",
                "event": "order.paid",
                "contains": ["payment", "order"],
                "payload": {"payment": {"entity": payment}, "order": {"entity": order}},
                "created_at": payment["created_at"],
            }
            body = json.dumps(event).encode()
        signature = checkout_signature(order_id, payment["id"], self.razorpay_key_secret)
        logger.info("razorpay stand-in: order %s paid by %s", order_id, payment["id"])
        if self.webhooks is not None:
            _send(self._razorpay_webhook, body, self.webhooks)
        return {"razorpay_order_id": order_id, "razorpay_payment_id": payment["id"], "razorpay_signature": signature}

    def create_session(self, form: dict[str, str]) -> dict[str, Any]:
        """Stripe's POST /v1/checkout/sessions, form-encoded as Stripe's libraries send it:
        `mode` payment, `success_url`, `line_items[i][price_data][currency|unit_amount]` and
        `[quantity]`, `metadata[...]` (the platform's: student_id and course_id),
        `client_reference_id`. Raises ValueError on a bad form."""
        if form.get("mode") != "payment":
            raise ValueError("mode: only payment is served here")
        if not form.get("success_url", "").startswith(("http://", "https://")):
            raise ValueError("success_url: an absolute URL is required")
        items: dict[str, dict[str, str]] = {}
        metadata: dict[str, str] = {}
        for key, value in form.items():
            item = re.fullmatch(r"line_items\[(\d+)\]\[(.+)\]", key)
            if item:
                items.setdefault(item.group(1), {})[item.group(2)] = value
            meta = re.fullmatch(r"metadata\[(.+)\]", key)
            if meta:
                metadata[meta.group(1)] = value
        try:
            amounts = [int(i["price_data][unit_amount"]) * int(i.get("quantity", "1")) for i in items.values()]
            currencies = {i["price_data][currency"].lower() for i in items.values()}
        except (KeyError, ValueError):
            raise ValueError("line_items: each needs price_data[currency], price_data[unit_amount], quantity") from None
        if not amounts or len(currencies) != 1:
            raise ValueError("line_items: at least one, all in one currency")
        session_id = "cs_test_" + uuid.uuid4().hex[:24]
        now = int(time.time())
        session = {
            "id": session_id,
            "object": "checkout.session",
            "amount_subtotal": sum(amounts),
            "amount_total": sum(amounts),
            "cancel_url": form.get("cancel_url"),
            "client_reference_id": form.get("client_reference_id"),
            "created": now,
            "currency": currencies.pop(),
            "customer": None,
            "customer_details": None,
            "expires_at": now + DAY,
            "livemode": False,
            "metadata": metadata,
            "mode": "payment",
            "payment_intent": None,
            "payment_method_types": ["card"],
            "payment_status": "unpaid",
            "status": "open",
            "success_url": form["success_url"],
            "url": f"{self.url}/dev/stripe/checkout/{session_id}",
        }
        with self.lock:
            self.stripe_sessions[session_id] = session
        return session

    def complete_session(self, session_id: str) -> str | None:
        """The buyer pays at Stripe's hosted page: the session complete and paid (a PaymentIntent),
        its checkout.session.completed in the event log; where Stripe sends the buyer then (the
        success URL). None: no such session, or not open."""
        with self.lock:
            session = self.stripe_sessions.get(session_id)
            if session is None or session["status"] != "open":
                return None
            session.update(status="complete", payment_status="paid", payment_intent="pi_" + uuid.uuid4().hex[:24])
            session["url"] = None
            event = {
                "id": "evt_" + uuid.uuid4().hex[:24],
                "object": "event",
                "api_version": "2024-06-20",
                "created": int(time.time()),
                "data": {"object": dict(session)},
                "livemode": False,
                "pending_webhooks": 1,
                "request": {"id": None, "idempotency_key": None},
                "type": "checkout.session.completed",
            }
            self.stripe_events.append(event)
            body = json.dumps(event).encode()
        logger.info("stripe stand-in: session %s completed, %s", session_id, session["payment_intent"])
        if self.webhooks is not None:
            _send(self._stripe_webhook, body, self.webhooks)
        return str(session["success_url"]).replace("{CHECKOUT_SESSION_ID}", session_id)

    @staticmethod
    def _razorpay_webhook(body: bytes, to: Webhooks) -> httpx.Response:
        """Signed as Razorpay documents it (its library only verifies), and checked with it."""
        signature = hmac.new(to.razorpay_secret.encode(), body, hashlib.sha256).hexdigest()
        razorpay.Utility().verify_webhook_signature(body.decode(), signature, to.razorpay_secret)
        headers = {
            "Content-Type": "application/json",
            "X-Razorpay-Signature": signature,
            "X-Razorpay-Event-Id": "evt_" + uuid.uuid4().hex[:14],
        }
        return httpx.post(to.base_url + "/webhooks/razorpay", content=body, headers=headers, timeout=WEBHOOK_TIMEOUT)

    @staticmethod
    def _stripe_webhook(body: bytes, to: Webhooks) -> httpx.Response:
        """Signed with Stripe's library."""
        header = stripe.WebhookSignature.generate_signature_header(body.decode(), to.stripe_secret)
        headers = {"Content-Type": "application/json", "Stripe-Signature": header}
        return httpx.post(to.base_url + "/webhooks/stripe", content=body, headers=headers, timeout=WEBHOOK_TIMEOUT)


def checkout_signature(order_id: str, payment_id: str, key_secret: str) -> str:
    """What Razorpay Checkout hands the browser: HMAC-SHA256 of "<order_id>|<payment_id>"."""
    return hmac.new(key_secret.encode(), f"{order_id}|{payment_id}".encode(), hashlib.sha256).hexdigest()


def _razorpay_payment(order: dict[str, Any]) -> dict[str, Any]:
    """A captured UPI payment of what is due on `order`, shaped as Razorpay's payment entity
    (its test UPI address and contact)."""
    return {
        "id": "pay_" + uuid.uuid4().hex[:14],
        "entity": "payment",
        "amount": order["amount_due"],
        "currency": order["currency"],
        "status": "captured",
        "order_id": order["id"],
        "invoice_id": None,
        "international": False,
        "method": "upi",
        "amount_refunded": 0,
        "refund_status": None,
        "captured": True,
        "description": None,
        "card_id": None,
        "bank": None,
        "wallet": None,
        "vpa": "success@razorpay",
        "email": "buyer@example.com",
        "contact": "+919000090000",
        "notes": [],
        "fee": 0,
        "tax": 0,
        "error_code": None,
        "error_description": None,
        "created_at": int(time.time()),
    }


def _send(deliver: Callable[[bytes, Webhooks], httpx.Response], body: bytes, to: Webhooks) -> None:
    """Delivers a webhook from a thread of its own, as a provider would: after the buyer's answer."""

    def run() -> None:
        try:
            answer = deliver(body, to)
        except httpx.HTTPError as exc:
            logger.warning("stand-in webhook to %s not delivered: %s (reconciliation finds it)", to.base_url, exc)
            return
        logger.info("stand-in webhook to %s: %s", to.base_url, answer.status_code)

    threading.Thread(target=run, name="stand-in-webhook", daemon=True).start()


# Razorpay Checkout's script, for the offline story: the same `new Razorpay(options)`, `.on()`
# and `.open()` as https://checkout.razorpay.com/v1/checkout.js, whose dialog's Pay button pays
# the order at this stand-in and hands Checkout's response to `options.handler`.
CHECKOUT_JS = """\
(function () {
  "use strict";
  var API = %(api)s;
  function Razorpay(options) { this.options = options; this.handlers = {}; }
  Razorpay.prototype.on = function (name, handler) { this.handlers[name] = handler; };
  Razorpay.prototype.open = function () {
    var options = this.options, handlers = this.handlers;
    var dialog = document.createElement("div");
    dialog.setAttribute("role", "dialog");
    dialog.setAttribute("aria-label", "Razorpay Checkout (development stand-in)");
    dialog.style.cssText = "position:fixed;inset:0;display:flex;align-items:center;" +
      "justify-content:center;background:rgba(0,0,0,.5);font-family:sans-serif";
    var box = document.createElement("div");
    box.style.cssText = "background:#fff;padding:2em;border-radius:8px;max-width:24em";
    var what = document.createElement("p");
    what.textContent = (options.name || "") + ": " + (options.amount / 100).toFixed(2) + " " +
      (options.currency || "INR") + ". Razorpay Checkout's development stand-in: nothing is charged.";
    var pay = document.createElement("button");
    pay.textContent = "Pay";
    box.append(what, pay);
    dialog.append(box);
    document.body.append(dialog);
    pay.addEventListener("click", function () {
      pay.disabled = true;
      var url = API + "/dev/razorpay/orders/" + encodeURIComponent(options.order_id) +
        "/pay?key_id=" + encodeURIComponent(options.key);
      fetch(url, { method: "POST" })
        .then(function (r) { return r.json().then(function (body) { return { ok: r.ok, body: body }; }); })
        .then(function (answer) {
          dialog.remove();
          if (answer.ok) { options.handler(answer.body); }
          else if (handlers["payment.failed"]) { handlers["payment.failed"](answer.body); }
        });
    });
  };
  window.Razorpay = Razorpay;
})();
"""

# Stripe's hosted Checkout page, for the offline story: the session's amount and a Pay button.
STRIPE_PAGE = """\
<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Stripe Checkout (development stand-in)</title></head>
<body style="font-family:sans-serif;max-width:32em;margin:3em auto">
<h1>Pay %(amount)s %(currency)s</h1>
<p>Stripe Checkout's development stand-in: nothing is charged.</p>
<form method="post"><button type="submit">Pay</button></form>
</body></html>
"""


@dataclass(frozen=True)
class Request:
    """What a route reads of a request: its path as sent, its query (a value is a list where the
    key ends in `[]`, as Stripe's `types[]`), headers and body, and the path's `{id}`, unquoted."""

    path: str
    query: dict[str, Any]
    headers: Message
    body: bytes = b""
    id: str = ""


@dataclass(frozen=True)
class Answer:
    """What the stand-in answers: status, body, its Content-Type, and more headers."""

    status: int
    body: bytes
    kind: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


# A route's function: what `provider` answers to `request`.
Answers = Callable[["StandIn", "Request"], "Answer"]


@dataclass(frozen=True)
class Route:
    """`method` on `path`: an exact path, or one with an `{id}` that is the rest of the path
    between what comes before and after it (unquoted)."""

    method: str
    path: str
    answer: Answers

    def match(self, method: str, path: str) -> str | None:
        """The `{id}` in `path` ("" where the route has none), or None: not this route."""
        if method != self.method:
            return None
        if "{id}" not in self.path:
            return "" if path == self.path else None
        before, _, after = self.path.partition("{id}")
        if not (path.startswith(before) and path.endswith(after)):
            return None
        return unquote(path.removeprefix(before).removesuffix(after))


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, json.dumps(body).encode(), "application/json", headers or {})


# Faults queued for a GET path, answered before its route ("timeout" answers late; any other,
# such as "pass", lets the route answer).
FAULTS = {
    "429": _json(429, {"error": {"code": "TOO_MANY_REQUESTS"}}, {"Retry-After": "0"}),
    "500": _json(500, {"error": {"message": "internal"}}),
    "garbage": Answer(200, b"<html>502 Bad Gateway</html>", "text/html"),
    "shape": _json(200, {"unexpected": True}),
}


def _fault(fault: str | None) -> Answer | None:
    if fault == "timeout":
        time.sleep(TIMEOUT_SLEEP)
        return _json(200, {"entity": "collection", "count": 0, "items": []})
    return FAULTS.get(fault or "")


# Razorpay's routes: its key's basic auth, errors as {"error": {"code", "description"}}.

RAZORPAY_UNAUTHORIZED = _json(401, {"error": {"code": "BAD_REQUEST_ERROR", "description": "Authentication failed"}})


def _razorpay_authorized(provider: StandIn, request: Request) -> bool:
    if not (provider.razorpay_key_id and provider.razorpay_key_secret):
        return False
    keys = f"{provider.razorpay_key_id}:{provider.razorpay_key_secret}"
    return request.headers.get("Authorization") == "Basic " + base64.b64encode(keys.encode()).decode()


def _razorpay_checkout_js(provider: StandIn, request: Request) -> Answer:
    script = CHECKOUT_JS % {"api": json.dumps(provider.url)}
    return Answer(200, script.encode(), "text/javascript")


def _razorpay_create_order(provider: StandIn, request: Request) -> Answer:
    if not _razorpay_authorized(provider, request):
        return RAZORPAY_UNAUTHORIZED
    try:
        return _json(200, provider.create_order(json.loads(request.body or b"null")))
    except ValueError as exc:
        return _json(400, {"error": {"code": "BAD_REQUEST_ERROR", "description": str(exc)}})


def _razorpay_pay(provider: StandIn, request: Request) -> Answer:
    """Called by the Checkout stand-in from the platform's page (another origin)."""
    cors = {"Access-Control-Allow-Origin": "*"}
    key_id = request.query.get("key_id", "")
    if not key_id or key_id != provider.razorpay_key_id:
        error = {"code": "BAD_REQUEST_ERROR", "description": "key_id: not this account's key"}
        return _json(401, {"error": error}, cors)
    paid = provider.pay_order(request.id)
    if paid is None:
        error = {"code": "BAD_REQUEST_ERROR", "description": "no such order, or it is paid already"}
        return _json(400, {"error": error}, cors)
    return _json(200, paid, cors)


def _razorpay_collection(entities: Callable[[StandIn], list[dict[str, Any]]]) -> Answers:
    """A collection's route: newest first, by `from`/`to` (created_at) and `count`/`skip`."""

    def answer(provider: StandIn, request: Request) -> Answer:
        if not _razorpay_authorized(provider, request):
            return RAZORPAY_UNAUTHORIZED
        query = request.query
        since, until = int(query.get("from", 0)), int(query.get("to", 2**40))
        count, skip = min(int(query.get("count", 10)), 100), int(query.get("skip", 0))
        found = sorted(
            (e for e in entities(provider) if since <= e["created_at"] <= until),
            key=lambda e: (-e["created_at"], e["id"]),
        )
        items = found[skip : skip + count]
        return _json(200, {"entity": "collection", "count": len(items), "items": items})

    return answer


def _razorpay_order_payments(provider: StandIn, request: Request) -> Answer:
    if not _razorpay_authorized(provider, request):
        return RAZORPAY_UNAUTHORIZED
    if request.id not in provider.razorpay_orders:
        return _json(400, {"error": UNKNOWN_ID})
    items = [p for p in provider.razorpay_payments if p["order_id"] == request.id]
    return _json(200, {"entity": "collection", "count": len(items), "items": items})


def _razorpay_entity(provider: StandIn, request: Request) -> Answer:
    """One order, payment or refund by id: `/<version>/<collection>/<id>`, any other path is
    an unknown id, as Razorpay answers it."""
    if not _razorpay_authorized(provider, request):
        return RAZORPAY_UNAUTHORIZED
    _, _, collection, entity_id = [*request.path.split("/", 3), "", "", "", ""][:4]
    entity_id = unquote(entity_id)
    found: dict[str, Any] | None = None
    if collection == "orders":
        found = provider.razorpay_orders.get(entity_id)
    elif collection == "payments":
        found = next((p for p in provider.razorpay_payments if p["id"] == entity_id), None)
    elif collection == "refunds":
        found = next((r for r in provider.razorpay_refunds if r["id"] == entity_id), None)
    if found is None:
        return _json(400, {"error": UNKNOWN_ID})
    return _json(200, found)


# Stripe's routes: its secret key as bearer, errors as {"error": {"type", "message"}}.

STRIPE_UNAUTHORIZED = _json(401, {"error": {"type": "invalid_request_error", "message": "Invalid API Key"}})


def _stripe_authorized(provider: StandIn, request: Request) -> bool:
    return bool(provider.stripe_api_key) and request.headers.get("Authorization") == f"Bearer {provider.stripe_api_key}"


def _stripe_events(provider: StandIn, request: Request) -> Answer:
    """The Events API: newest first, by `created[gte]` and `types[]`, `limit` a page after
    `starting_after`."""
    if not _stripe_authorized(provider, request):
        return STRIPE_UNAUTHORIZED
    query = request.query
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
    return _json(200, {"object": "list", "url": "/v1/events", "has_more": len(found) > limit, "data": page})


def _stripe_session(provider: StandIn, request: Request) -> Answer:
    if not _stripe_authorized(provider, request):
        return STRIPE_UNAUTHORIZED
    found = provider.stripe_sessions.get(request.id)
    if found is None:
        error = {
            "type": "invalid_request_error",
            "code": "resource_missing",
            "message": f"No such checkout.session: '{request.id}'",
        }
        return _json(404, {"error": error})
    return _json(200, found)


def _stripe_create_session(provider: StandIn, request: Request) -> Answer:
    if not _stripe_authorized(provider, request):
        return STRIPE_UNAUTHORIZED
    pairs = parse_qs(request.body.decode(errors="replace"), keep_blank_values=True)
    form = {k: v[-1] for k, v in pairs.items()}
    try:
        return _json(200, provider.create_session(form))
    except ValueError as exc:
        return _json(400, {"error": {"type": "invalid_request_error", "message": str(exc)}})


NO_OPEN_SESSION = Answer(404, b"no open checkout session", "text/plain")


def _stripe_page(provider: StandIn, request: Request) -> Answer:
    """The hosted Checkout page of an open session."""
    session = provider.stripe_sessions.get(request.id)
    if session is None or session["status"] != "open":
        return NO_OPEN_SESSION
    amount = f"{session['amount_total'] / 100:.2f}"
    page = STRIPE_PAGE % {"amount": amount, "currency": html.escape(session["currency"].upper())}
    return Answer(200, page.encode(), "text/html; charset=utf-8")


def _stripe_pay(provider: StandIn, request: Request) -> Answer:
    """The hosted page's Pay button: the session completed, the buyer sent to its success URL."""
    success = provider.complete_session(request.id)
    if success is None:
        return NO_OPEN_SESSION
    return Answer(303, b"", "text/plain", {"Location": success})


RAZORPAY_ROUTES = (
    Route("GET", "/v1/checkout.js", _razorpay_checkout_js),
    Route("POST", "/v1/orders", _razorpay_create_order),
    Route("POST", "/dev/razorpay/orders/{id}/pay", _razorpay_pay),
    Route("GET", "/v1/payments", _razorpay_collection(lambda provider: provider.razorpay_payments)),
    Route("GET", "/v1/refunds", _razorpay_collection(lambda provider: provider.razorpay_refunds)),
    Route("GET", "/v1/disputes", _razorpay_collection(lambda provider: provider.razorpay_disputes)),
    Route("GET", "/v1/orders/{id}/payments", _razorpay_order_payments),
)
STRIPE_ROUTES = (
    Route("GET", "/v1/events", _stripe_events),
    Route("GET", "/v1/checkout/sessions/{id}", _stripe_session),
    Route("POST", "/v1/checkout/sessions", _stripe_create_session),
    Route("GET", "/dev/stripe/checkout/{id}", _stripe_page),
    Route("POST", "/dev/stripe/checkout/{id}", _stripe_pay),
)
# The first that matches answers. Razorpay answers every other GET (an order, payment or refund
# by id, or an unknown id), so its "{id}" of the whole path is last; a POST no route takes is a 404.
ROUTES = (*RAZORPAY_ROUTES, *STRIPE_ROUTES, Route("GET", "{id}", _razorpay_entity))


def _answer(provider: StandIn, method: str, request: Request) -> Answer:
    for route in ROUTES:
        found = route.match(method, request.path)
        if found is not None:
            return route.answer(provider, replace(request, id=found))
    return _json(404, {"error": {"message": f"no route {method} {request.path}"}})


def _handler(provider: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # Keep-alive, as the providers' APIs: every answer says its Content-Length. Without Nagle's
        # algorithm: the body, written after the headers, would wait for their delayed ACK (40 ms).
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            request = self._request()
            with provider.lock:
                provider.requests.append((request.path, request.query))
                queued = provider.faults.get(request.path) or []
                fault = queued.pop(0) if queued else None
            _write(self, _fault(fault) or _answer(provider, "GET", request))

        def do_POST(self) -> None:
            request = self._request()
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                return _write(self, _json(413, {"error": {"message": "body too large"}}))
            _write(self, _answer(provider, "POST", replace(request, body=self.rfile.read(length))))

        def _request(self) -> Request:
            parts = urlsplit(self.path)
            query = {k: (v if k.endswith("[]") else v[-1]) for k, v in parse_qs(parts.query).items()}
            return Request(parts.path, query, self.headers)

    return Handler


def _write(handler: BaseHTTPRequestHandler, answer: Answer) -> None:
    try:
        handler.send_response(answer.status)
        handler.send_header("Content-Type", answer.kind)
        handler.send_header("Content-Length", str(len(answer.body)))
        for name, value in answer.headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(answer.body)
    except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout)
        pass


P = TypeVar("P", bound=StandIn)


@contextmanager
def serve(provider: P, host: str = "127.0.0.1", port: int = 0) -> Iterator[P]:
    """`provider`'s APIs on host:port (a free port by default; its `url` says which), from a
    thread, until the block ends."""
    server = ThreadingHTTPServer((host, port), _handler(provider))
    server.daemon_threads = True
    provider.url = f"http://{host}:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="provider-stand-in", daemon=True)
    thread.start()
    try:
        yield provider
    finally:
        server.shutdown()
        server.server_close()


def new_id() -> str:
    return str(uuid.uuid4())
