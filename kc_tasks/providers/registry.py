"""The payment providers, each declared once: its webhook (route, body limit, headers, how a
request is verified and with which secret), its parser, what redaction keeps of its bodies,
whether reconciliation reads its API, how that API is opened with kc_tasks' key, and how a
checkout is confirmed on the buyer's return (POST /checkouts/confirm).

Everything that goes through the providers reads this list: the web routes
(kc_tasks.web.webhooks, kc_tasks.web.checkouts), the inbox's parsing, the metrics' label series, reconciliation and
redaction. A new provider is a module of its own (kc_tasks/providers/<name>.py) and one entry
here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from pydantic import BaseModel

from kc_tasks.core.metrics import Labels
from kc_tasks.core.settings import Settings, secrets
from kc_tasks.providers import Malformed, ProviderEvent, apis, kc, razorpay, readback, recovered, signature, stripe
from kc_tasks.providers.kept import Table

# A stored or arriving body read into an event: (body, its event id when that travels outside
# the body (a header, the stored row), KC_STRIPE_LIVEMODE or None) -> ProviderEvent, or Malformed.
Parse = Callable[[bytes, str | None, bool | None], ProviderEvent]
# (body, the signature header's value, the secrets) -> None when one of them signed it, else why not.
Verify = Callable[[bytes, str | None, Sequence[str]], str | None]

KIB = 1024


@dataclass(frozen=True)
class LongSecret:
    """A webhook secret the web asks to be long, whatever the provider's dashboard accepts:
    each of the secrets of the variable `variable` at least the web's minimum of characters,
    else the web refuses to start and says `advice`."""

    variable: str
    advice: str

    def problem(self, value: str, min_chars: int) -> str | None:
        """Why `value` (the variable's comma-separated secrets) is too weak, or None."""
        if any(len(part) < min_chars for part in secrets(value)):
            return f"{self.variable} is shorter than {min_chars} characters; {self.advice}"
        return None


@dataclass(frozen=True)
class Webhook:
    """How a provider's webhook arrives: POST `path`, at most `max_body` bytes, signed in
    `signature_header` with one of the (comma-separated) secrets of the setting `secret` reads.
    `event_id_header`: the header that carries the event id, when it is not in the body.
    `own_format`: kc_tasks' own format, whose sender is kc_tasks' payment service: an invalid
    event is its bug (422), and the answer is the task (202). A provider's route is served only
    while its secret is set; kc's is required (KC_WEBHOOK_SECRET). `long_secret`: the web
    refuses to start with a short secret (kc_tasks.web.app)."""

    path: str
    max_body: int
    signature_header: str
    verify: Verify
    secret: Callable[[Settings], str]
    event_id_header: str | None = None
    own_format: bool = False
    long_secret: LongSecret | None = None


@dataclass(frozen=True)
class ApiAccess:
    """How kc_tasks reads a provider's API: `configured`, whether its key is set; `open`, the
    client with that key (settings, read timeout, retry policy)."""

    configured: Callable[[Settings], bool]
    open: Callable[[Settings, float, apis.Retry], apis.Api]


@dataclass(frozen=True)
class Confirm:
    """How a checkout is confirmed on the buyer's return: `checkout`, the JSON body the browser
    hands over (its `provider` the provider's name); `reader`, given the settings and the
    provider's API (its `api`), reads such a checkout back (kc_tasks.providers.readback)."""

    checkout: type[BaseModel]
    reader: Callable[[Settings, apis.Api], readback.Reader]


@dataclass(frozen=True)
class Provider:
    """One provider. `kept`: redaction's tables (kc_tasks.providers.kept) of its bodies, by the
    provider whose fields a body holds: its own name, or for reconciliation's events, the provider
    whose API they were read from (`source_of` an event id). `revoking`: the types of its events
    that revoke. `reconciled`: kc_tasks reads its API (reconciliation, checkouts confirmed on the
    buyer's return). `api`: how its API is opened; `confirm`: how its checkout is confirmed on
    the buyer's return (with an `api`)."""

    name: str
    title: str
    parse: Parse
    kept: Mapping[str, Table]
    revoking: tuple[str, ...]
    webhook: Webhook | None = None
    source_of: Callable[[str], str | None] | None = None
    reconciled: bool = False
    api: ApiAccess | None = None
    confirm: Confirm | None = None

    def __post_init__(self) -> None:
        if self.confirm is not None and self.api is None:
            raise ValueError(f"provider {self.name}: a checkout confirmed on return is read from its API")

    def table(self, event_id: str) -> Table:
        """What redaction keeps of a body stored under `event_id` ({}: nothing)."""
        source = self.name if self.source_of is None else self.source_of(event_id)
        return self.kept.get(source, {}) if source is not None else {}


def _parse_recovered(body: bytes, event_id: str | None, livemode: bool | None) -> ProviderEvent:
    if event_id is None:  # its kind is in its id: without one, nothing says what it is
        raise Malformed(f"unknown provider {recovered.NAME}")
    return recovered.parse(body, event_id)


KC = Provider(
    kc.NAME,
    "kc_tasks",
    lambda body, event_id, livemode: kc.parse(body),
    {kc.NAME: kc.KEPT},
    (kc.PAYMENT_REFUNDED,),
    Webhook("/webhooks/payments", 64 * KIB, signature.HEADER, kc.verify, lambda s: s.webhook_secret, own_format=True),
)
# Razorpay's and Stripe's events: larger than kc_tasks' own, never this large.
RAZORPAY = Provider(
    razorpay.NAME,
    "Razorpay",
    lambda body, event_id, livemode: razorpay.parse(body, event_id),
    {razorpay.NAME: razorpay.KEPT},
    (razorpay.REFUND_PROCESSED, razorpay.DISPUTE_LOST),
    Webhook(
        "/webhooks/razorpay",
        256 * KIB,
        razorpay.SIGNATURE_HEADER,
        razorpay.verify,
        lambda s: s.razorpay_webhook_secret,
        event_id_header=razorpay.EVENT_ID_HEADER,
        # Razorpay's signature has no timestamp: the secret is all that stands between a forger
        # and an order.paid. Its dashboard takes any text, so kc_tasks asks for a long one.
        long_secret=LongSecret(
            "KC_RAZORPAY_WEBHOOK_SECRET",
            "Razorpay's dashboard takes any text: generate one with "
            'python3 -c "import secrets; print(secrets.token_hex(32))" and paste it in '
            "both the webhook's Secret field and this variable",
        ),
    ),
    reconciled=True,
    # The key secret also checks Checkout's razorpay_signature: both are needed.
    api=ApiAccess(lambda s: bool(s.razorpay_key_id and s.razorpay_key_secret), apis.razorpay_api),
    confirm=Confirm(readback.RazorpayCheckout, readback.razorpay_reader),
)
STRIPE = Provider(
    stripe.NAME,
    "Stripe",
    lambda body, event_id, livemode: stripe.parse(body, livemode),
    {stripe.NAME: stripe.KEPT},
    (stripe.CHARGE_REFUNDED, stripe.DISPUTE_CLOSED),
    Webhook("/webhooks/stripe", 256 * KIB, stripe.SIGNATURE_HEADER, stripe.verify, lambda s: s.stripe_webhook_secret),
    reconciled=True,
    api=ApiAccess(lambda s: bool(s.stripe_api_key), apis.stripe_api),
    confirm=Confirm(readback.StripeCheckout, readback.stripe_reader),
)
# What reconciliation read from a provider's API, stored as inbox events of its own: no webhook.
RECOVERED = Provider(
    recovered.NAME,
    "Reconciliation",
    _parse_recovered,
    recovered.KEPT,
    tuple(kind for (_, found), kind in recovered.TYPES.items() if found != recovered.PAID),
    source_of=recovered.source_of,
)

PROVIDERS = (KC, RAZORPAY, STRIPE, RECOVERED)
BY_NAME: dict[str, Provider] = {p.name: p for p in PROVIDERS}
NAMES = tuple(BY_NAME)
# The providers whose webhooks the web serves, and those whose API kc_tasks reads.
WEBHOOKS = tuple(p for p in PROVIDERS if p.webhook is not None)
RECONCILED = tuple(p.name for p in PROVIDERS if p.reconciled)
# The providers whose checkouts POST /checkouts/confirm reads back, in the order of its body's schema.
CONFIRMED = tuple(p for p in PROVIDERS if p.confirm is not None)
REVOKING_TYPES = tuple(kind for p in PROVIDERS for kind in p.revoking)
# The label series the metrics make from 0 (kc_tasks.core.metrics).
METRIC_LABELS = Labels(webhooks=tuple(p.name for p in WEBHOOKS), apis=RECONCILED)


def find(name: str) -> Provider | None:
    return BY_NAME.get(name)
