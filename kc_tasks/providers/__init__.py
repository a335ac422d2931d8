"""What a payment provider's verified event asks of kc_tasks, one pure module per provider.

Each module (`kc`, `razorpay`, `stripe`) checks a signature and turns a verified body into an
Event whose action is one of four small values; none does I/O. kc_tasks.inbox stores the
event and acts on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

REFUND = "refund"


class Malformed(ValueError):
    """Raised when a verified body is not an event of the provider at all (not a JSON object,
    no id or type): answered 4xx and not stored."""


@dataclass(frozen=True)
class Purchase:
    """A paid payment: create_purchase's kwargs, as mapped (kc_tasks.payload validates them)."""

    kwargs: dict[str, Any]

    @property
    def payment_id(self) -> str | None:
        return text(self.kwargs.get("payment_id"))


@dataclass(frozen=True)
class Revocation:
    """The payment was fully refunded: revoke_purchase's kwargs."""

    payment_id: str
    reason: str = REFUND
    refund_id: str | None = None

    @property
    def kwargs(self) -> dict[str, Any]:
        kwargs = {"payment_id": self.payment_id, "reason": self.reason}
        return kwargs if self.refund_id is None else {**kwargs, "refund_id": self.refund_id}


@dataclass(frozen=True)
class Ignored:
    """An event kc_tasks does not act on (another type, an unpaid session, a partial refund)."""

    why: str
    payment_id: str | None = None


@dataclass(frozen=True)
class Unmapped:
    """A paid payment whose notes/metadata do not say which student and course it buys."""

    payment_id: str | None
    missing: tuple[str, ...]


Action = Purchase | Revocation | Ignored | Unmapped


@dataclass(frozen=True)
class Event:
    provider: str
    event_id: str
    type: str
    action: Action

    @property
    def payment_id(self) -> str | None:
        return self.action.payment_id


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


def purchase_from(payment_id: Any, amount: Any, currency: Any, notes: Any) -> Purchase | Unmapped:
    """A purchase when the notes (Razorpay) or metadata (Stripe) name the student and course;
    the other notes go to the purchase's metadata. Notes may be `[]` (Razorpay's empty notes)."""
    notes = notes if isinstance(notes, dict) else {}
    missing = tuple(k for k in ("student_id", "course_id") if not text(notes.get(k)))
    pid = text(payment_id)
    if missing:
        return Unmapped(pid, missing)
    rest = {k: v for k, v in notes.items() if k not in ("student_id", "course_id")}
    kwargs: dict[str, Any] = {
        "payment_id": payment_id,
        "student_id": notes["student_id"],
        "course_id": notes["course_id"],
        "amount_cents": amount,
        "currency": currency.upper() if isinstance(currency, str) else currency,
    }
    if rest:
        kwargs["metadata"] = rest
    return Purchase(kwargs)
