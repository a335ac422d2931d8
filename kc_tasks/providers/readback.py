"""A checkout confirmed on the buyer's return (POST /checkouts/confirm), provider by provider:
what the provider's checkout hands the buyer's browser, and how kc_tasks reads that checkout back
from the provider's API (kc_tasks.providers.apis), with its own key, into a Confirmation by the
webhook's own rules (`razorpay.confirmation`, `stripe.confirmation`). Nothing the browser sends
decides a grant: it only names what to read.

Each provider's registry entry declares its body and its reader (kc_tasks.providers.registry);
the web's route reads them there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import razorpay as razorpay_sdk
from pydantic import BaseModel, Field

from kc_tasks.core.settings import Settings
from kc_tasks.providers import Confirmation, NotPaid, apis, razorpay, stripe

# One checkout (the provider's body model) read back: Confirmation, or NotPaid. Raises
# CheckoutRefused, or ProviderApiError when the provider's API does not answer.
Reader = Callable[[Any], Confirmation | NotPaid]


class CheckoutRefused(ValueError):
    """Raised when what the browser handed over does not hold (a Razorpay Checkout signature
    that does not match): answered 422 with `detail`; the message is what the log says."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


class RazorpayCheckout(BaseModel):
    """What Razorpay Checkout's handler gives the browser."""

    provider: Literal["razorpay"]
    razorpay_order_id: str = Field(pattern=r"^order_[A-Za-z0-9_]{1,60}$")
    razorpay_payment_id: str = Field(pattern=r"^pay_[A-Za-z0-9_]{1,60}$")
    razorpay_signature: str = Field(pattern=r"^[0-9a-f]{64}$")


class StripeCheckout(BaseModel):
    """The Checkout Session id of the success URL ({CHECKOUT_SESSION_ID})."""

    provider: Literal["stripe"]
    session_id: str = Field(pattern=r"^cs_[A-Za-z0-9_]{1,250}$")


def razorpay_reader(settings: Settings, api: apis.Api) -> Reader:
    """Checkout's signature checked with the key secret, then the order and its payments read
    (GET /v1/orders/{id}, /v1/orders/{id}/payments)."""
    client = razorpay_sdk.Client(auth=(settings.razorpay_key_id, settings.razorpay_key_secret))

    def read(checkout: RazorpayCheckout) -> Confirmation | NotPaid:
        order_id, payment_id = checkout.razorpay_order_id, checkout.razorpay_payment_id
        if not razorpay.verify_checkout(order_id, payment_id, checkout.razorpay_signature, client):
            raise CheckoutRefused(
                f"order {order_id}, payment {payment_id}: bad signature",
                "razorpay_signature does not match the order and payment",
            )
        order = apis.razorpay_entity(api, "orders", order_id)
        payments = apis.razorpay_order_payments(api, order_id)
        return razorpay.confirmation(order, payments, payment_id)

    return read


def stripe_reader(settings: Settings, api: apis.Api) -> Reader:
    """The Checkout Session read (GET /v1/checkout/sessions/{id}), under KC_STRIPE_LIVEMODE."""

    def read(checkout: StripeCheckout) -> Confirmation | NotPaid:
        return stripe.confirmation(apis.stripe_session(api, checkout.session_id), settings.stripe_livemode)

    return read
