"""The mixed traffic of tests/faults/test_mixed_traffic.py: payments through every way in, each
with its deliveries placed on a timeline cut into slices, and a provider that retries a webhook
until it is answered 2xx.

Ways in: kc_tasks' signed `POST /webhooks/payments` (payment.succeeded, payment.refunded),
Razorpay's webhook (order.paid, refund.processed, payment.dispute.lost), Stripe's
(checkout.session.completed, payment_intent.succeeded, charge.refunded, charge.dispute.closed),
create_purchase and revoke_purchase sent by name, and the providers' APIs
(tests/provider_api_server.py) for payments and refunds whose webhooks never came. Deliveries
repeat (the same event again, or a second event of the same payment), refunds come before their
captures, and rivals (a second payment of a course already held; through kc's webhook or a
task) come a slice after the payment they rival, once it holds its row.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import httpx

from tests import provider_api_server as api
from tests import provider_samples as s
from tests.builders import WEBHOOK_SECRET, purchase
from tests.faults.model import Payment

SLICES = 5
ROUTES = {"kc": "/webhooks/payments", "razorpay": "/webhooks/razorpay", "stripe": "/webhooks/stripe"}
CREATE, REVOKE = "kc_tasks.create_purchase", "kc_tasks.revoke_purchase"
# A provider retries an unanswered webhook for days; here, for this long before the test fails.
DELIVERY_DEADLINE = 120.0
RETRY_BACKOFF = 0.2


@dataclass
class Delivery:
    """A webhook (`provider` kc, razorpay or stripe, with its event id and body) or a task sent
    by name (`task`, `kwargs`), at `key` on the timeline (0 to 1)."""

    key: float
    payment_id: str
    capture: bool
    provider: str | None = None
    event_id: str | None = None
    body: bytes = b""
    task: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    # a payment that must hold its purchase row before this is sent (the one a rival rivals)
    after: str | None = None

    @property
    def slice(self) -> int:
        return min(SLICES - 1, int(self.key * SLICES))

    def headers(self) -> dict[str, str]:
        """Signed now, as the provider signs each attempt."""
        if self.provider == "razorpay":
            return s.razorpay_headers(self.body, event_id=self.event_id)
        if self.provider == "stripe":
            return s.stripe_headers(self.body)
        t = int(time.time())
        digest = hmac.new(WEBHOOK_SECRET.encode(), f"{t}.".encode() + self.body, hashlib.sha256).hexdigest()
        return {"Content-Type": "application/json", "X-KC-Signature": f"t={t},v1={digest}"}


@dataclass
class Traffic:
    payments: list[Payment] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    # payments refunded at the provider only: the second reconciliation run revokes them
    refunded_at_provider: list[str] = field(default_factory=list)

    def slice(self, n: int) -> list[Delivery]:
        return sorted((d for d in self.deliveries if d.slice == n), key=lambda d: d.key)

    def figures(self) -> dict[str, int]:
        """What the traffic holds, by kind (for the run's figures)."""
        first_capture: dict[str, float] = {}
        for d in self.deliveries:
            if d.capture:
                first_capture[d.payment_id] = min(d.key, first_capture.get(d.payment_id, 1.0))
        captures = Counter(d.payment_id for d in self.deliveries if d.capture)
        return {
            **{f"payments via {via}": n for via, n in sorted(Counter(p.via for p in self.payments).items())},
            "webhook events": sum(1 for d in self.deliveries if d.provider),
            "tasks": sum(1 for d in self.deliveries if d.task),
            "repeated captures": sum(n - 1 for n in captures.values()),
            "revocations before their capture": sum(
                1 for d in self.deliveries if not d.capture and d.key < first_capture.get(d.payment_id, 0.0)
            ),
            "rivals": sum(1 for p in self.payments if p.rival_of),
            "refunded at the provider only": len(self.refunded_at_provider),
        }


def build(provider: api.StandIn, seed: int, per_way: int = 30) -> Traffic:
    """About `per_way` payments through each webhook and as tasks, a third as many known only
    to the providers' APIs, and rivals of a tenth of them."""
    rnd = random.Random(seed)
    now = int(time.time())
    traffic = Traffic()

    def later(key: float) -> float:
        return min(0.999, key + rnd.uniform(0.01, 0.15))

    def earlier(key: float) -> float:
        return max(0.0, key - rnd.uniform(0.01, 0.1))

    kept: Counter[str] = Counter()  # payments kept (not refunded by webhook or task), by way in

    def pay(via: str, key: float, student: str, course: str, rival_of: str | None = None) -> Payment:
        """One payment through `via`: its capture, maybe repeated, maybe refunded or disputed."""
        roll = rnd.random()
        revoked = "refund" if roll < 0.15 else "dispute" if roll < 0.2 else None
        if via in ("task", "kc"):  # no disputes in these: a refund is a refund
            revoked = "refund" if revoked else None
        if via == "reconcile-razorpay":  # Razorpay's refunds are found by reconciliation below
            revoked = None
        pid = s.new_intent() if via in ("stripe", "reconcile-stripe") else f"pay_{uuid.uuid4().hex[:20]}"
        payment = Payment(pid, student, course, via, revoked, rival_of)
        traffic.payments.append(payment)
        captures, revocations = _events(provider, payment, now, rnd)
        back = earlier(key) if revoked and rnd.random() < 0.5 and not rival_of else later(key)
        traffic.deliveries += [
            replace(d, key=key if n == 0 else later(key), after=rival_of) for n, d in enumerate(captures)
        ]
        traffic.deliveries += [replace(d, key=back, after=rival_of) for d in revocations]
        kept["razorpay"] += via == "razorpay" and not revoked and not rival_of
        if via == "razorpay" and not revoked and not rival_of and kept["razorpay"] % 8 == 1:
            # every eighth kept Razorpay payment is refunded at Razorpay, and its webhook never
            # came: reconciliation revokes it
            payment.revoked = "refund"
            traffic.refunded_at_provider.append(pid)
            provider.razorpay_refund(next(p for p in provider.razorpay_payments if p["id"] == pid), now - 300)
        return payment

    originals = []
    for via in ("kc", "razorpay", "stripe", "task"):
        for _ in range(per_way):
            p = pay(via, rnd.random(), str(uuid.uuid4()), str(uuid.uuid4()))
            originals.append((p, min(d.key for d in traffic.deliveries if d.payment_id == p.payment_id)))
    for via in ("reconcile-razorpay", "reconcile-stripe"):
        for _ in range(max(1, per_way // 3)):
            pay(via, 0.0, str(uuid.uuid4()), str(uuid.uuid4()))
    held = [
        (p, key)
        for p, key in originals
        if not p.revoked and key < 0.55 and all(d.key < 0.6 for d in traffic.deliveries if d.payment_id == p.payment_id)
    ]
    for p, key in rnd.sample(held, min(len(held), max(1, per_way * 4 // 10))):
        start = (int(key * SLICES) + 1 + rnd.random()) / SLICES  # the next slice or the one after
        # kc or task: a rival at a provider's API could be found by reconciliation before the
        # payment it rivals made its purchase, and become the purchase itself
        pay(rnd.choice(("kc", "task")), min(0.999, start), p.student, p.course, p.payment_id)
    return traffic


def _events(provider: api.StandIn, p: Payment, now: int, rnd: random.Random) -> tuple[list[Delivery], list[Delivery]]:
    """The payment's captures (the first, and any repeat) and revocations, by its way in; what
    the provider's API must show is put there."""
    repeat = rnd.random() < 0.2
    if p.via in ("task", "kc"):
        kwargs = purchase(p.student, p.course, p.payment_id)
        revoke = {"payment_id": p.payment_id, "reason": "refund", "refund_id": f"rfnd_{uuid.uuid4().hex[:14]}"}
        if p.via == "task":
            captures = [Delivery(0, p.payment_id, True, task=CREATE, kwargs=kwargs)] * (2 if repeat else 1)
            return captures, [Delivery(0, p.payment_id, False, task=REVOKE, kwargs=revoke)] if p.revoked else []
        paid = _kc("payment.succeeded", kwargs, p.payment_id, True)
        # a repeat is the same event again, or the payment service's second event of the payment
        again = [paid, _kc("payment.succeeded", kwargs, p.payment_id, True)][rnd.randrange(2)]
        revoke.pop("reason")
        return [paid, *([again] if repeat else [])], [_kc("payment.refunded", revoke, p.payment_id, False)] * bool(
            p.revoked
        )
    if p.via in ("razorpay", "reconcile-razorpay"):
        payment = provider.razorpay_paid(now - 600, p.student, p.course, p.payment_id)
        if p.via == "reconcile-razorpay":
            return [], []
        order = provider.razorpay_orders[payment["order_id"]]
        paid = _razorpay(s.razorpay_event("order.paid", payment, order), p.payment_id, True)
        revocations = []
        if p.revoked == "refund":
            refunded = s.razorpay_payment(p.payment_id, refunded=payment["amount"])
            event = s.razorpay_event("refund.processed", refunded, refund=s.razorpay_refund(refunded))
            revocations = [_razorpay(event, p.payment_id, False)]
        elif p.revoked == "dispute":
            event = s.razorpay_event("payment.dispute.lost", payment, dispute=s.razorpay_dispute(payment))
            revocations = [_razorpay(event, p.payment_id, False)]
        return [paid, *([paid] if repeat else [])], revocations
    intent = p.payment_id
    events = [provider.stripe_event("checkout.session.completed", s.stripe_session(intent, p.student, p.course), now)]
    if repeat:
        events.append(
            provider.stripe_event("payment_intent.succeeded", s.stripe_intent(intent, p.student, p.course), now)
        )
    gone = []
    if p.revoked == "refund":
        gone = [provider.stripe_event("charge.refunded", s.stripe_charge(intent), now)]
    elif p.revoked == "dispute":
        gone = [provider.stripe_event("charge.dispute.closed", s.stripe_dispute(intent, "lost"), now)]
    if p.via == "reconcile-stripe":
        return [], []
    return [_stripe(e, intent, True) for e in events], [_stripe(e, intent, False) for e in gone]


def _kc(kind: str, data: dict[str, Any], payment_id: str, capture: bool) -> Delivery:
    event_id = f"evt_{uuid.uuid4().hex}"
    body = json.dumps({"id": event_id, "type": kind, "data": data}).encode()
    return Delivery(0, payment_id, capture, provider="kc", event_id=event_id, body=body)


def _razorpay(event: dict[str, Any], payment_id: str, capture: bool) -> Delivery:
    return Delivery(0, payment_id, capture, "razorpay", f"evt_rzp_{uuid.uuid4().hex[:16]}", s.encode(event))


def _stripe(event: dict[str, Any], payment_id: str, capture: bool) -> Delivery:
    return Delivery(0, payment_id, capture, "stripe", event["id"], s.encode(event))


class Webhooks:
    """The providers' side of the webhooks: each delivery is retried until it is answered 2xx
    (a connection error or a 503 is tried again, at the web process `base()` names then); any
    other answer fails the test."""

    def __init__(self, base: Callable[[], str]) -> None:
        self.base = base
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def deliver(self, d: Delivery) -> None:
        assert d.provider is not None
        deadline = time.monotonic() + DELIVERY_DEADLINE
        while True:
            self.count("webhook attempts")
            try:
                answer = httpx.post(self.base() + ROUTES[d.provider], content=d.body, headers=d.headers(), timeout=30)
            except httpx.TransportError:
                self.count("webhook connection errors")
            else:
                if 200 <= answer.status_code < 300:
                    self.count("webhooks answered 2xx")
                    return
                assert answer.status_code == 503, f"{d.provider} {d.event_id}: {answer.status_code} {answer.text}"
                self.count("webhook 503s")
            assert time.monotonic() < deadline, f"{d.provider} {d.event_id}: never answered 2xx"
            time.sleep(RETRY_BACKOFF)  # a provider's backoff between attempts
