"""POST /checkouts/confirm: the course granted the moment its buyer returns from checkout.

The platform's success page hands kc_tasks what the provider gave the buyer's browser (Razorpay
Checkout's handler: order id, payment id and signature; Stripe: the Checkout Session id), with
the buyer's bearer token, or the platform server's (scope purchases:confirm). Nothing the
browser sends decides a grant: kc_tasks reads the order (and its payments) or the session back
from the provider's API, with its own key, and the provider module reads it by the webhook's
own rules (`razorpay.confirmation`, `stripe.confirmation`). Each provider's body and reader are
declared by its registry entry (kc_tasks.providers.registry, kc_tasks.providers.readback).

One path: what was read goes into the inbox like a webhook's event (provider `razorpay` or
`stripe`, event id `confirm:<payment_id>`, stored as an API object) and becomes the same
`create_purchase` task, under the same task id, as the webhook that comes before or after it:
one of them makes the purchase, the other is a repeat. The request then waits, up to
KC_CONFIRM_WAIT_MS, for the purchase (kc_tasks.web.waits): 200 with it, else 202 with the task id.

The route is thin (kc_tasks.web.app); each step here answers with an `Answer` and counts it
(kc_confirms_total{provider,outcome}).
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Union

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import Field, TypeAdapter, ValidationError
from sqlalchemy.engine import Engine

from kc_tasks.core import metrics, names
from kc_tasks.core.errors import KcTasksError, ProviderApiError
from kc_tasks.core.settings import Settings
from kc_tasks.payments import inbox
from kc_tasks.providers import Confirmation, NotPaid, Purchase, apis, readback, registry
from kc_tasks.web import auth
from kc_tasks.web.intake import Intake
from kc_tasks.web.waits import Waits

logger = logging.getLogger(__name__)

PATH = "/checkouts/confirm"
MAX_BODY_BYTES = 4096
GRANTED, PENDING, NOT_PAID, REFUSED, UNAVAILABLE = "granted", "pending", "not_paid", "refused", "unavailable"
# What a 503 asks the caller to wait before trying again, seconds: the provider's API is away
# (the webhook still comes, and reconciliation after it).
RETRY_AFTER_SECONDS = 5
# How long a provider's API gets to answer a confirm, seconds: a buyer is waiting.
API_TIMEOUT = 5.0
# The per-token rate limit (per web process), a token bucket: a buyer's token may confirm
# BURST times at once and then once every 1/RATE seconds; the platform's (purchases:confirm)
# confirms for every buyer, and gets PLATFORM_BURST and PLATFORM_RATE.
BURST, RATE = 10, 0.5
PLATFORM_BURST, PLATFORM_RATE = 500, 200.0
# Buckets kept before the full ones are forgotten.
MAX_BUCKETS = 10_000
# An API's answer that means "no such order or session": Razorpay's 400 BAD_REQUEST_ERROR ("The id
# provided does not exist"), Stripe's 404 resource_missing.
UNKNOWN_STATUSES = (400, 404)

bearer = HTTPBearer(
    auto_error=False, description="the buyer's JWT (`sub`), or the platform's (scope purchases:confirm)"
)


# The body: one of the registry's checkouts (readback.RazorpayCheckout, readback.StripeCheckout),
# told apart by `provider`; a union made at run time, which mypy cannot read as a type.
BODIES = tuple(p.confirm.checkout for p in registry.CONFIRMED if p.confirm is not None)
Checkout = Annotated[Union[BODIES], Field(discriminator="provider")]  # type: ignore[valid-type]  # noqa: UP007
_checkout: TypeAdapter[Any] = TypeAdapter(Checkout)

RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": '{"status": "granted", "purchase_id", "payment_id", "course_id"}'},
    202: {"description": '{"status": "pending", "task_id"}: not made within KC_CONFIRM_WAIT_MS; it will be'},
    401: {"description": "missing, expired or invalid bearer token"},
    403: {"description": "the token is another student's"},
    404: {"description": "unknown order or session, one that names no course, or that provider is off"},
    409: {"description": '{"status": "not_paid"}: not paid (in full) yet, or refunded'},
    413: {"description": f"body over {MAX_BODY_BYTES} bytes"},
    422: {"description": "malformed body, or a Razorpay signature that does not match"},
    429: {"description": "too many confirms with this token: see Retry-After"},
    503: {"description": "the provider's API or the database is unreachable: see Retry-After"},
}


@dataclass
class Answer(Exception):
    """The answer to a confirm, and what it counts as (an exception, to end a step early)."""

    status: int
    body: dict[str, Any]
    outcome: str
    headers: dict[str, str] | None = None

    def response(self) -> JSONResponse:
        return JSONResponse(self.body, status_code=self.status, headers=self.headers)


def refused(status: int, detail: str, headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, {"detail": detail}, REFUSED, headers)


def refill(tokens: float, elapsed: float, rate: float, burst: int) -> float:
    """A token bucket's tokens `elapsed` seconds later (pure)."""
    return min(float(burst), tokens + max(elapsed, 0.0) * rate)


class RateLimit:
    """Token buckets by token subject, in one process (used from its event loop only)."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, platform: bool, now: float) -> float | None:
        """None when `key` may confirm now (a token taken); else the seconds until it may."""
        burst, rate = (PLATFORM_BURST, PLATFORM_RATE) if platform else (BURST, RATE)
        tokens, at = self._buckets.get(key, (float(burst), now))
        tokens = refill(tokens, now - at, rate, burst)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / rate
        if len(self._buckets) >= MAX_BUCKETS:
            self._forget_full(now)
        self._buckets[key] = (tokens - 1, now)
        return None

    def _forget_full(self, now: float) -> None:
        """Buckets that would be full by now hold nothing worth keeping."""
        full = now - max(BURST / RATE, PLATFORM_BURST / PLATFORM_RATE)
        self._buckets = {k: v for k, v in self._buckets.items() if v[1] > full}


class Checkouts:
    """The confirm of one web process: the providers' APIs, the inbox's intake, the waits."""

    def __init__(self, settings: Settings, intake: Intake, engine: Engine, verifier: auth.Verifier) -> None:
        self.settings, self.intake, self.verifier = settings, intake, verifier
        self.waits = Waits(engine)
        self.limits = RateLimit()
        # The providers whose API key is set, each API and reader of theirs.
        self.apis: dict[str, apis.Api] = {}
        self.readers: dict[str, readback.Reader] = {}
        for provider in registry.CONFIRMED:
            access, confirm = provider.api, provider.confirm
            if access is None or confirm is None or not access.configured(settings):
                continue
            # A buyer waits: one try, then 503 (and the webhook still comes).
            api = self.apis[provider.name] = access.open(settings, API_TIMEOUT, apis.no_retry)
            self.readers[provider.name] = confirm.reader(settings, api)

    def close(self) -> None:
        self.waits.close()
        for api in self.apis.values():
            api.close()

    async def confirm(self, request: Request, credentials: HTTPAuthorizationCredentials | None) -> JSONResponse:
        arrived = time.monotonic()
        provider = "other"
        try:
            grant = self._grant(credentials)
            self._limit(grant, credentials)
            checkout = await self._checkout(request)
            provider = checkout.provider
            answer = await self._confirm(checkout, grant, arrived)
        except Answer as stop:
            answer = stop
        metrics.confirm(provider, answer.outcome)
        return answer.response()

    def _grant(self, credentials: HTTPAuthorizationCredentials | None) -> auth.Grant:
        if credentials is None:
            raise refused(401, "a bearer token is required", {"WWW-Authenticate": "Bearer"})
        try:
            return self.verifier.verify(credentials.credentials)
        except auth.Unauthorized as exc:
            logger.info("confirm: token refused: %s", exc)
            challenge = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
            raise refused(401, "invalid or expired token", challenge) from None

    def _limit(self, grant: auth.Grant, credentials: HTTPAuthorizationCredentials | None) -> None:
        assert credentials is not None
        key = grant.subject or hashlib.sha256(credentials.credentials.encode()).hexdigest()
        wait = self.limits.take(key, grant.confirms_any, time.monotonic())
        if wait is not None:
            logger.info("confirm: token of %s over its rate limit", key[:64])
            raise refused(429, "too many confirms with this token", {"Retry-After": str(max(1, round(wait + 0.5)))})

    async def _checkout(self, request: Request) -> Any:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise refused(413, f"body over {MAX_BODY_BYTES} bytes")
        try:
            checkout = _checkout.validate_json(bytes(body))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
            raise refused(422, problems[:1000]) from None
        if checkout.provider not in self.apis:
            raise refused(404, f"confirming {checkout.provider} checkouts is off: its API key is not set")
        return checkout

    async def _confirm(self, checkout: Any, grant: auth.Grant, arrived: float) -> Answer:
        found = await run_in_threadpool(self._read, checkout)
        # Nothing server-set names a student: no course purchase, nobody's to protect (answered below).
        named = found.student_id if found.student_id is not None and _is_uuid(found.student_id) else None
        if named is not None and not grant.may_confirm(uuid.UUID(named)):
            logger.info("confirm %s: refused to a token of another subject", checkout.provider)
            return refused(403, "this token does not allow confirming this student's checkout")
        if isinstance(found, NotPaid):
            logger.info("confirm %s: not paid: %s", checkout.provider, found.why)
            return Answer(409, {"status": NOT_PAID, "detail": found.why}, NOT_PAID)
        event = found.event
        _, task, why = inbox.plan(event)
        if task is None or not isinstance(event.action, Purchase):
            logger.info("confirm %s: payment %s grants no course: %s", event.provider, event.payment_id, why)
            return refused(404, f"this checkout grants no course: {why}")
        try:
            # Its payment counts as seen from the confirm's arrival (kc_payment_to_access_seconds).
            receipt = await self.intake.receive(event, found.body, raw=False, arrived=arrived)
        except KcTasksError as exc:
            logger.error("confirm %s: payment %s not stored: %s", event.provider, event.payment_id, exc)
            return Answer(
                503,
                {"detail": "the database is unavailable; retry later"},
                UNAVAILABLE,
                {"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        if receipt.status == names.CONFLICT:
            return refused(409, receipt.why or "stored with another body")
        payment_id = str(task.kwargs["payment_id"])
        left = self.settings.confirm_wait_ms / 1000 - (time.monotonic() - arrived)
        access = await self.waits.purchase(payment_id, max(left, 0.0))
        if access is None:
            logger.info("confirm %s: payment %s: no purchase yet, task %s", event.provider, payment_id, task.task_id)
            return Answer(202, {"status": PENDING, "task_id": task.task_id}, PENDING)
        if not access.active:
            why = f"payment {payment_id} was refunded or disputed: its purchase is revoked"
            return Answer(409, {"status": NOT_PAID, "detail": why}, NOT_PAID)
        answer = {"status": GRANTED, "purchase_id": access.purchase_id, "payment_id": payment_id}
        return Answer(200, {**answer, "course_id": access.course_id}, GRANTED)

    def _read(self, checkout: Any) -> Confirmation | NotPaid:
        """The checkout read back from the provider's API by its registry entry's reader (in a
        thread: the client is blocking)."""
        try:
            return self.readers[checkout.provider](checkout)
        except readback.CheckoutRefused as exc:
            logger.warning("confirm %s: %s", checkout.provider, exc)
            raise refused(422, exc.detail) from None
        except ProviderApiError as exc:
            if exc.status in UNKNOWN_STATUSES:
                raise refused(404, f"{checkout.provider} knows no such order or session") from None
            logger.warning("confirm %s: %s; answered 503, the webhook still comes", checkout.provider, exc)
            raise Answer(
                503,
                {"detail": f"{checkout.provider}'s API is unreachable; retry later"},
                UNAVAILABLE,
                {"Retry-After": str(RETRY_AFTER_SECONDS)},
            ) from None


def router(
    settings: Settings, intake: Intake, engine: Engine, verifier: auth.Verifier
) -> tuple[APIRouter, Checkouts] | None:
    """The route, or None (off) while no confirming provider's API key is set."""
    checkouts = Checkouts(settings, intake, engine, verifier)
    if not checkouts.apis:
        checkouts.close()
        return None
    routes = APIRouter()

    @routes.post(
        PATH,
        responses=RESPONSES,
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": _checkout.json_schema()}}}
        },
    )
    async def confirm_checkout(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> JSONResponse:
        """The buyer is back from checkout: read the order or session from the provider's API and
        grant by the webhook's rules, through the inbox; wait up to KC_CONFIRM_WAIT_MS for the
        purchase."""
        return await checkouts.confirm(request, credentials)

    return routes, checkouts


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
