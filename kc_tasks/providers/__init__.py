"""What a payment provider's verified event asks of kc_tasks, one pure module per provider.

Each module (`kc`, `razorpay`, `stripe`) checks a signature and turns a verified body into an
ProviderEvent whose action is one of five small values; none does I/O. kc_tasks.payments.inbox stores the
event and acts on it.

The trust boundary: a provider's student and course are read only from what the platform's
own server set (a Razorpay order's notes, a Stripe Checkout Session's or PaymentIntent's
metadata), through `purchase_from`; never from what the buyer's browser can set.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

REFUND = "refund"
DISPUTE = "dispute"
KEYS = ("student_id", "course_id")
# Why a paid payment that names neither key is left alone: a payment for another product.
NOT_A_COURSE = "not a course purchase"
# How the why of a failed refund begins: the payment's story and the inbox's warning say it.
REFUND_FAILED = "refund failed"
# How the event id of a checkout confirmed on the buyer's return begins (POST /checkouts/confirm):
# `confirm:<payment_id>`, stored under the provider's own name.
CONFIRM_PREFIX = "confirm:"


class Malformed(ValueError):
    """Raised when a verified body is not an event of the provider at all (not a JSON object,
    no id or type): answered 4xx and not stored."""


@dataclass(frozen=True)
class Purchase:
    """A paid payment: create_purchase's kwargs, as mapped (kc_tasks.core.payload validates them)."""

    kwargs: dict[str, Any]

    @property
    def payment_id(self) -> str | None:
        return text(self.kwargs.get("payment_id"))


@dataclass(frozen=True)
class Revocation:
    """The payment was fully refunded, or its dispute lost: revoke_purchase's kwargs."""

    payment_id: str
    reason: str = REFUND
    refund_id: str | None = None

    @property
    def kwargs(self) -> dict[str, Any]:
        kwargs = {"payment_id": self.payment_id, "reason": self.reason}
        return kwargs if self.refund_id is None else {**kwargs, "refund_id": self.refund_id}


@dataclass(frozen=True)
class Ignored:
    """An event kc_tasks does not act on (another type, an unpaid session, a partial refund, a
    payment that is not a course purchase, a Stripe event of the other mode)."""

    why: str
    payment_id: str | None = None


@dataclass(frozen=True)
class RefundFailed:
    """A refund that failed (or was canceled) after it was processed: the buyer was not paid
    back, and a full refund may already have revoked the purchase. Nothing is enqueued: the
    inbox warns and counts it, and an operator decides (`kc-tasks payment restore`)."""

    payment_id: str
    refund_id: str | None = None
    status: str = "failed"
    # The provider's own reason, when it gives one (Stripe's `failure_reason`).
    reason: str | None = None

    @property
    def why(self) -> str:
        refund = f"refund {self.refund_id}" if self.refund_id else "a refund"
        because = f" ({self.reason})" if self.reason else ""
        return f"{REFUND_FAILED}: {refund} of this payment {self.status} after it was processed{because}"


@dataclass(frozen=True)
class Unmapped:
    """A paid payment whose server-set notes/metadata name one of student_id/course_id but not
    both, or a value that is not a UUID: meant as a course purchase, but which one is unknown."""

    payment_id: str | None
    why: str


Action = Purchase | Revocation | Ignored | Unmapped | RefundFailed


@dataclass(frozen=True)
class ProviderEvent:
    provider: str
    event_id: str
    type: str
    action: Action

    @property
    def payment_id(self) -> str | None:
        return self.action.payment_id


@dataclass(frozen=True)
class NotPaid:
    """A checkout confirmed before it was paid (in full): nothing to store or grant yet.
    `student_id`: the student the server-set notes or metadata name, if any."""

    why: str
    student_id: str | None


@dataclass(frozen=True)
class Confirmation:
    """A checkout read back from the provider's API on the buyer's return: the event to store
    (shaped as the webhook's, under `confirm:<payment_id>`), its body, and the student the
    server-set notes or metadata name, if any."""

    event: ProviderEvent
    body: bytes
    student_id: str | None


def confirm_event_id(payment_id: str) -> str:
    return CONFIRM_PREFIX + payment_id


def canonical(data: Any) -> bytes:
    """API objects as stored in payment_events.body: the same objects, the same bytes."""
    return json.dumps(data, ensure_ascii=False, sort_keys=True).encode("utf-8")


def load_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or Malformed."""
    try:
        data = json.loads(body.decode("utf-8"))  # stored as text: UTF-8 only
    except (ValueError, UnicodeDecodeError) as exc:
        raise Malformed(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise Malformed("body is not valid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise Malformed("body must be a JSON object")
    return data


def dig(value: Any, *keys: str) -> Any:
    """value[k1][k2]... or None where a level is missing or not an object."""
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def text(value: Any) -> str | None:
    """A non-empty string PostgreSQL can store as text (no NUL, no lone surrogate), or None."""
    if not isinstance(value, str) or not value or "\x00" in value:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value


def purchase_from(payment_id: Any, amount: Any, currency: Any, server_set: Any) -> Purchase | Ignored | Unmapped:
    """The purchase a paid payment makes, decided by `server_set` alone: the notes or metadata
    the platform's own server set (a Razorpay order's notes, a Stripe Checkout Session's or
    PaymentIntent's metadata), never a Razorpay payment's own notes, which the browser sets.

    Both keys, each a UUID: a purchase, the other keys going to its metadata. Neither key: not a
    course purchase (Ignored). One key, or a value that is not a UUID: Unmapped. Notes may be
    `[]` (Razorpay's empty notes)."""
    data = server_set if isinstance(server_set, dict) else {}
    pid = text(payment_id)
    named = [key for key in KEYS if data.get(key) not in (None, "")]
    if not named:
        return Ignored(f"{NOT_A_COURSE}: its server-set notes/metadata name no student_id or course_id", pid)
    if len(named) < len(KEYS):
        missing = next(key for key in KEYS if key not in named)
        return Unmapped(pid, f"its server-set notes/metadata name {named[0]} but not {missing}")
    not_uuid = [key for key in KEYS if not _is_uuid(data[key])]
    if not_uuid:
        return Unmapped(
            pid, f"its server-set {' and '.join(not_uuid)} {'is' if len(not_uuid) == 1 else 'are'} not a UUID"
        )
    rest = {k: v for k, v in data.items() if k not in KEYS}
    kwargs: dict[str, Any] = {
        "payment_id": payment_id,
        "student_id": data["student_id"],
        "course_id": data["course_id"],
        "amount_cents": amount,
        "currency": currency.upper() if isinstance(currency, str) else currency,
    }
    if rest:
        kwargs["metadata"] = rest
    return Purchase(kwargs)


def amount(value: Any) -> int | None:
    """An amount in the currency's smallest unit: an int, never a bool; else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _is_uuid(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
