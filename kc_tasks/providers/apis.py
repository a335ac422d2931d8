"""Reading the payment providers' APIs: every object of a time window, page after page.

httpx with explicit timeouts, not the providers' SDKs: the razorpay client (requests) sets
no timeout and does not wait out a 429, stripe's StripeClient retries 5xx but not 429 and
caps Retry-After at a few seconds; one small client treats both providers alike, and what
it raises names the provider and the request, never the key (errors.ProviderApiError).

`razorpay_api` and `stripe_api` open each with its key (KC_RAZORPAY_KEY_*, KC_STRIPE_API_KEY).

Razorpay: GET /v1/payments, /v1/refunds and /v1/disputes ?from&to&count=100&skip=n, one
order, payment or refund by id, and an order's payments; basic auth (key id, key secret).
Stripe: GET /v1/events?created[gte]&limit=100&types[]=...&starting_after, and one Checkout
Session by id; bearer key.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from kc_tasks.core.errors import ProviderApiError
from kc_tasks.core.settings import Settings
from kc_tasks.providers import razorpay, stripe

logger = logging.getLogger(__name__)
# httpx logs every request at INFO; its failures reach the log as this module words them.
logging.getLogger("httpx").setLevel(logging.WARNING)

PAGE_SIZE = 100
# A read that takes longer than this fails the request (and is tried again, see retry_delay).
READ_TIMEOUT = 20.0
CONNECT_TIMEOUT = 5.0
# 429: waited out this many times, each wait at most MAX_WAIT seconds.
RATE_LIMIT_TRIES = 8
MAX_WAIT = 60.0
# 5xx, a timeout, a dropped connection: this many tries in all.
FAILURE_TRIES = 3
# A provider that keeps saying has_more (or filling pages) past this is answering garbage.
MAX_PAGES = 10_000


# (HTTP status or None, Retry-After, try number) -> seconds to wait before another try, or None.
Retry = Callable[[int | None, str | None, int], float | None]


@dataclass(frozen=True)
class Window:
    """[since, until], unix seconds."""

    since: int
    until: int

    def holds(self, created: Any) -> bool:
        return isinstance(created, int) and self.since <= created <= self.until


def retry_delay(status: int | None, retry_after: str | None, attempt: int) -> float | None:
    """Seconds to wait before try number `attempt + 1` of a request whose try number `attempt`
    (from 1) failed with HTTP `status` (None: timeout or connection error); None: give up (pure)."""
    if status == 429:
        if attempt >= RATE_LIMIT_TRIES:
            return None
        try:
            wait = float(retry_after) if retry_after is not None else 2.0 ** (attempt - 1)
        except ValueError:
            wait = 2.0 ** (attempt - 1)
        return min(max(wait, 0.0), MAX_WAIT)
    if status is None or status >= 500:
        return 0.5 * 2 ** (attempt - 1) if attempt < FAILURE_TRIES else None
    return None


class Api:
    """One provider's API: GET a JSON object, with the retries above; secrets kept out of errors."""

    def __init__(
        self,
        provider: str,
        base_url: str,
        auth: httpx.Auth | tuple[str, str] | None = None,
        headers: dict[str, str] | None = None,
        secrets: tuple[str, ...] = (),
        read_timeout: float = READ_TIMEOUT,
        sleep: Callable[[float], None] = time.sleep,
        retry: Retry = retry_delay,
    ) -> None:
        self.provider = provider
        self._retry = retry
        self._secrets = tuple(s for s in secrets if s)
        self._sleep = sleep
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            auth=auth,
            headers={"Accept": "application/json", **(headers or {})},
            timeout=httpx.Timeout(read_timeout, connect=CONNECT_TIMEOUT),
            follow_redirects=False,
        )

    def close(self) -> None:
        self._client.close()

    def get(self, path: str, params: dict[str, Any] | Sequence[tuple[str, Any]] = ()) -> dict[str, Any]:
        attempt = 0
        while True:
            attempt += 1
            status: int | None = None
            retry_after: str | None = None
            try:
                response = self._client.get(path, params=list(params.items() if isinstance(params, dict) else params))
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                status = response.status_code
                if status == 200:
                    return self._json(path, response)
                retry_after = response.headers.get("retry-after")
                problem = f"HTTP {status}"
            wait = self._retry(status, retry_after, attempt)
            if wait is None:
                tries = f" after {attempt} tries" if attempt > 1 else ""
                message = self._scrub(f"{self.provider} API: GET {path} failed{tries}: {problem}")
                raise ProviderApiError(message, status)
            logger.info("%s API: GET %s: %s; trying again in %.1f s", self.provider, path, problem, wait)
            self._sleep(wait)

    def _json(self, path: str, response: httpx.Response) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            raise ProviderApiError(f"{self.provider} API: GET {path} answered a body that is not JSON") from None
        if not isinstance(data, dict):
            raise ProviderApiError(f"{self.provider} API: GET {path} answered JSON that is not an object")
        return data

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def no_retry(status: int | None, retry_after: str | None, attempt: int) -> float | None:
    """A request tried once (a buyer is waiting: `POST /checkouts/confirm` answers 503 at once)."""
    return None


def razorpay_api(settings: Settings, read_timeout: float = READ_TIMEOUT, retry: Retry = retry_delay) -> Api:
    """Razorpay's API with the key id and secret (basic auth)."""
    return Api(
        razorpay.NAME,
        settings.razorpay_api_url,
        auth=(settings.razorpay_key_id, settings.razorpay_key_secret),
        secrets=(settings.razorpay_key_id, settings.razorpay_key_secret),
        read_timeout=read_timeout,
        retry=retry,
    )


def stripe_api(settings: Settings, read_timeout: float = READ_TIMEOUT, retry: Retry = retry_delay) -> Api:
    """Stripe's API with the secret key (bearer)."""
    return Api(
        stripe.NAME,
        settings.stripe_api_url,
        headers={"Authorization": f"Bearer {settings.stripe_api_key}"},
        secrets=(settings.stripe_api_key,),
        read_timeout=read_timeout,
        retry=retry,
    )


def razorpay_list(api: Api, path: str, window: Window) -> Iterator[dict[str, Any]]:
    """Every entity of a Razorpay collection (/v1/payments, /v1/refunds, /v1/disputes) created
    in the window, page by page (count/skip)."""
    skip = 0
    for _ in range(MAX_PAGES):
        page = api.get(path, {"from": window.since, "to": window.until, "count": PAGE_SIZE, "skip": skip})
        items = page.get("items")
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise ProviderApiError(f"{api.provider} API: GET {path} answered no list of items")
        yield from items
        if len(items) < PAGE_SIZE:
            return
        skip += len(items)
    raise ProviderApiError(f"{api.provider} API: GET {path} never reached its last page")


def razorpay_entity(api: Api, collection: str, entity_id: str) -> dict[str, Any]:
    """One entity by id (GET /v1/orders/{id}, /v1/payments/{id}, /v1/refunds/{id}); the id is escaped, never a path."""
    return api.get(f"/v1/{collection}/{quote(entity_id, safe='')}")


def razorpay_order_payments(api: Api, order_id: str) -> list[dict[str, Any]]:
    """Every payment of an order (GET /v1/orders/{id}/payments: one page, an order has few)."""
    path = f"/v1/orders/{quote(order_id, safe='')}/payments"
    items = api.get(path).get("items")
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ProviderApiError(f"{api.provider} API: GET {path} answered no list of items")
    return items


def stripe_session(api: Api, session_id: str) -> dict[str, Any]:
    """One Checkout Session by id (GET /v1/checkout/sessions/{id}); the id is escaped, never a path."""
    return api.get(f"/v1/checkout/sessions/{quote(session_id, safe='')}")


def stripe_events(api: Api, window: Window, types: Sequence[str]) -> Iterator[dict[str, Any]]:
    """Every event of these types created since the window began, newest first, as Stripe
    lists them (starting_after/has_more); `types` in Stripe's array encoding (types[]=...)."""
    path = "/v1/events"
    base: list[tuple[str, Any]] = [("created[gte]", window.since), ("limit", PAGE_SIZE)]
    base += [("types[]", kind) for kind in types]
    params = base
    for _ in range(MAX_PAGES):
        page = api.get(path, params)
        data, has_more = page.get("data"), page.get("has_more")
        if (
            not isinstance(data, list)
            or not all(isinstance(obj, dict) for obj in data)
            or not isinstance(has_more, bool)
        ):
            raise ProviderApiError(f"{api.provider} API: GET {path} answered no list (data, has_more)")
        yield from data
        if not has_more:
            return
        last = data[-1].get("id") if data else None
        if not isinstance(last, str):
            raise ProviderApiError(f"{api.provider} API: GET {path} said has_more after a page without ids")
        params = [*base, ("starting_after", last)]
    raise ProviderApiError(f"{api.provider} API: GET {path} never reached its last page")
