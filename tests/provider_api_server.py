"""Razorpay's and Stripe's APIs, served from a local HTTP server in the test: the stand-in of
kc_tasks/ops/dev_providers.py (its endpoints, keys and faults), with the objects a test puts in
built from the providers' documented samples (tests/provider_samples.py).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kc_tasks.ops import dev_providers
from kc_tasks.ops.dev_providers import DAY, TIMEOUT_SLEEP, new_id  # noqa: F401 (re-exported: tests and bench/ use them)
from tests import provider_samples as s

RAZORPAY_KEY_ID = "rzp_test_reconcileKeyId01"
RAZORPAY_KEY_SECRET = "razorpay-key-secret-never-logged-7f3a"
STRIPE_API_KEY = "rk_test_stripe-restricted-key-never-logged-9c2b"


class StandIn(dev_providers.StandIn):
    """The stand-in with the tests' keys, and the tests' ways of putting objects in."""

    def __init__(self) -> None:
        super().__init__(
            razorpay_key_id=RAZORPAY_KEY_ID, razorpay_key_secret=RAZORPAY_KEY_SECRET, stripe_api_key=STRIPE_API_KEY
        )

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


@contextmanager
def serve() -> Iterator[StandIn]:
    with dev_providers.serve(StandIn()) as provider:
        yield provider
