"""The web process: the payment webhooks, checkouts confirmed on the buyer's return
(kc_tasks/web/checkouts.py), a student's courses, health and readiness.

Served by uvicorn: `uvicorn --factory kc_tasks.web:create_app --port $PORT`.
"""

from __future__ import annotations

import base64
import binascii
import gc
import logging
import sys
import uuid
from datetime import datetime
from typing import Annotated, Any

import sqlalchemy as sa
from celery import Celery
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine

from kc_tasks.core import logs, metrics, names
from kc_tasks.core.errors import ConfigError, InvalidPurchase, KcTasksError
from kc_tasks.core.payload import parse_purchase
from kc_tasks.core.settings import Settings, secrets
from kc_tasks.payments import inbox
from kc_tasks.providers import Malformed, Purchase, signature
from kc_tasks.providers import kc as kc_provider
from kc_tasks.providers import razorpay as razorpay_provider
from kc_tasks.providers import stripe as stripe_provider
from kc_tasks.store import db
from kc_tasks.web import admin, auth, checkouts
from kc_tasks.web.intake import Intake
from kc_tasks.web.readiness import Readiness

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
# Razorpay's and Stripe's events: larger than kc_tasks' own, never this large.
MAX_PROVIDER_BODY_BYTES = 256 * 1024
PAYMENT_SUCCEEDED = "payment.succeeded"
# A page of a student's courses holds at most this many; the Link header names the next one.
MAX_PAGE = 100
# What a 503 asks the caller to wait before trying again, seconds (Retry-After): PostgreSQL is
# away, for a restart or a failover, often for less.
RETRY_AFTER_SECONDS = 5
# Shorter secrets can be guessed offline from one signed request or token.
MIN_SECRET_BYTES = 32
MIN_ADMIN_PASSWORD_CHARS = 16
# At module level: FastAPI resolves the route's (string) annotations in this module's globals.
bearer = HTTPBearer(auto_error=False, description="a JWT: `sub` the student, or `scope` with purchases:read")


class Accepted(BaseModel):
    task_id: str


class Ignored(BaseModel):
    status: str = names.IGNORED
    type: str


class Course(BaseModel):
    purchase_id: str
    course_id: str
    payment_id: str | None = Field(
        None, description="the payment provider's id: only for a token with scope purchases:read, not for a student"
    )
    amount_cents: int
    currency: str
    purchased_at: str


class Problem(BaseModel):
    detail: str


WEBHOOK_BODY_SCHEMA = {
    "type": "object",
    "required": ["id", "type", "data"],
    "properties": {
        "id": {"type": "string"},
        "type": {"type": "string", "example": PAYMENT_SUCCEEDED},
        "data": {
            "type": "object",
            "description": "create_purchase's kwargs",
            "required": ["payment_id", "student_id", "course_id", "amount_cents", "currency"],
            "properties": {
                "payment_id": {"type": "string", "minLength": 1, "maxLength": 255},
                "student_id": {"type": "string", "format": "uuid"},
                "course_id": {"type": "string", "format": "uuid"},
                "amount_cents": {"type": "integer", "minimum": 0},
                "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
                "metadata": {"type": "object"},
            },
        },
    },
}


def _check_secrets(settings: Settings) -> None:
    """ConfigError (one line, naming the variable, never the value) for a weak secret."""
    for name, value in (("KC_WEBHOOK_SECRET", settings.webhook_secret), ("KC_JWT_SECRET", settings.jwt_secret)):
        # Several comma-separated secrets are several secrets (rotation): each must be long.
        if value and any(len(part.strip().encode()) < MIN_SECRET_BYTES for part in value.split(",")):
            raise ConfigError(
                f"{name} is shorter than {MIN_SECRET_BYTES} bytes; generate one with "
                'python3 -c "import secrets; print(secrets.token_hex(32))"'
            )
    # Razorpay's signature has no timestamp: the secret is all that stands between a forger and
    # an order.paid. Its dashboard takes any text, so kc_tasks asks for a long one.
    if any(len(part) < MIN_SECRET_BYTES for part in secrets(settings.razorpay_webhook_secret)):
        raise ConfigError(
            f"KC_RAZORPAY_WEBHOOK_SECRET is shorter than {MIN_SECRET_BYTES} characters; Razorpay's dashboard takes "
            'any text: generate one with python3 -c "import secrets; print(secrets.token_hex(32))" and paste it in '
            "both the webhook's Secret field and this variable"
        )
    if settings.admin_user and settings.admin_password and len(settings.admin_password) < MIN_ADMIN_PASSWORD_CHARS:
        raise ConfigError(f"KC_ADMIN_PASSWORD is shorter than {MIN_ADMIN_PASSWORD_CHARS} characters")


def create_app(settings: Settings | None = None, celery_app: Celery | None = None) -> FastAPI:
    """The ASGI app. Refuses to start without KC_WEBHOOK_SECRET."""
    try:
        settings = settings or Settings.from_env()
        if not settings.webhook_secret:
            raise ConfigError("KC_WEBHOOK_SECRET is not set: the webhook cannot verify signatures")
        _check_secrets(settings)
    except ConfigError as exc:
        print(f"kc_tasks web: refusing to start: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    logs.configure(settings.log_format)
    if celery_app is None:
        from kc_tasks.celery import app as default_app

        celery_app = default_app
    # The intake's writers and marker, and the read routes beside them.
    engine = db.make_engine(settings.database_url, pool_size=8)
    if settings.web_metrics_port:
        metrics.start_web(
            settings.web_metrics_port,
            settings.metrics_address,
            lambda: db.writable(db.probe_engine(settings.database_url)),
            lambda: inbox.stuck_count(engine),
        )
    api = FastAPI(title="kc_tasks", version="1", description="Payment webhook and purchases of kc_tasks")
    kc_secrets = secrets(settings.webhook_secret)
    razorpay_secrets = secrets(settings.razorpay_webhook_secret)
    stripe_secrets = secrets(settings.stripe_webhook_secret)
    broker: Celery = celery_app
    # No task-sent event for what the webhooks enqueue: a second confirmed publish per request,
    # behind a process-wide lock. Flower still sees each task from the worker's events.
    broker.conf.task_send_sent_event = False
    # The webhooks' events are stored and enqueued in batches, by threads of the process.
    intake = Intake(engine, broker)

    responses: dict[int | str, dict[str, Any]] = {
        401: {"model": Problem, "description": "missing, wrong or stale signature"},
        409: {"model": Problem, "description": "the event id is stored with another body; nothing stored"},
        413: {"model": Problem, "description": f"body over {MAX_BODY_BYTES} bytes"},
        422: {"model": Problem, "description": "invalid JSON or field"},
        503: {"model": Problem, "description": "the database is unreachable: retry later"},
    }
    provider_responses: dict[int | str, dict[str, Any]] = {
        200: {"description": "verified and stored (whatever its type)"},
        400: {"model": Problem, "description": "not a JSON event"},
        401: {"model": Problem, "description": "missing or wrong signature; nothing stored"},
        409: {"model": Problem, "description": "the event id is stored with another body; nothing stored"},
        413: {"model": Problem, "description": f"body over {MAX_PROVIDER_BODY_BYTES} bytes"},
        503: {"model": Problem, "description": "the database is unreachable: retry later"},
    }

    @api.post(
        "/webhooks/payments",
        status_code=202,
        response_model=Accepted,
        responses={200: {"model": Ignored, "description": "not a payment.succeeded event"}, **responses},
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": WEBHOOK_BODY_SCHEMA}}}
        },
    )
    async def payment_webhook(request: Request) -> Any:
        """A signed payment event: payment.succeeded becomes a create_purchase task,
        payment.refunded a revoke_purchase task; stored in the inbox (provider kc) first."""
        body = await _read_body(request, MAX_BODY_BYTES, kc_provider.NAME)
        problem = kc_provider.verify(body, request.headers.get(signature.HEADER), kc_secrets)
        if problem:
            logger.warning("webhook refused: %s", problem)
            metrics.webhook(kc_provider.NAME, "rejected")
            raise HTTPException(401, problem)
        try:
            event = kc_provider.parse(body)
            if isinstance(event.action, Purchase):
                parse_purchase(event.action.kwargs)  # kc_tasks' own format: an invalid one is the caller's bug
        except (Malformed, InvalidPurchase) as exc:
            metrics.webhook(kc_provider.NAME, names.INVALID)
            raise HTTPException(422, str(exc)) from None
        receipt = await _receive(event, body)
        if receipt.task_id is None:
            return JSONResponse({"status": names.IGNORED, "type": event.type}, status_code=200)
        logger.debug(
            "webhook %s: payment %s: task %s %s", event.event_id, event.payment_id, receipt.task_id, receipt.status
        )
        return JSONResponse({"task_id": receipt.task_id}, status_code=202)

    if razorpay_secrets:

        @api.post("/webhooks/razorpay", responses=provider_responses)
        async def razorpay_webhook(request: Request) -> Any:
            """Razorpay's webhook, as Razorpay sends it (X-Razorpay-Signature, X-Razorpay-Event-Id)."""
            body = await _read_body(request, MAX_PROVIDER_BODY_BYTES, razorpay_provider.NAME)
            problem = razorpay_provider.verify(
                body, request.headers.get(razorpay_provider.SIGNATURE_HEADER), razorpay_secrets
            )
            if problem:
                logger.warning("razorpay webhook refused: %s", problem)
                metrics.webhook(razorpay_provider.NAME, "rejected")
                raise HTTPException(401, problem)
            try:
                event = razorpay_provider.parse(body, request.headers.get(razorpay_provider.EVENT_ID_HEADER))
            except Malformed as exc:
                metrics.webhook(razorpay_provider.NAME, names.INVALID)
                raise HTTPException(400, str(exc)) from None
            return await _received(event, body)

    if stripe_secrets:

        @api.post("/webhooks/stripe", responses=provider_responses)
        async def stripe_webhook(request: Request) -> Any:
            """Stripe's webhook, as Stripe sends it (Stripe-Signature)."""
            body = await _read_body(request, MAX_PROVIDER_BODY_BYTES, stripe_provider.NAME)
            problem = stripe_provider.verify(
                body, request.headers.get(stripe_provider.SIGNATURE_HEADER), stripe_secrets
            )
            if problem:
                logger.warning("stripe webhook refused: %s", problem)
                metrics.webhook(stripe_provider.NAME, "rejected")
                raise HTTPException(401, problem)
            try:
                event = stripe_provider.parse(body, settings.stripe_livemode)
            except Malformed as exc:
                metrics.webhook(stripe_provider.NAME, names.INVALID)
                raise HTTPException(400, str(exc)) from None
            return await _received(event, body)

    async def _received(event: Any, body: bytes) -> JSONResponse:
        """Stored before the answer; 200 whatever it is, broker up or down."""
        receipt = await _receive(event, body)
        answer: dict[str, Any] = {"event_id": event.event_id, "status": receipt.status}
        if receipt.task_id is not None:
            answer["task_id"] = receipt.task_id
        return JSONResponse(answer, status_code=200)

    async def _receive(event: Any, body: bytes) -> inbox.Receipt:
        """intake.receive, counted by what became of the event (503: PostgreSQL is down; 409:
        its id is stored with another body, nothing stored)."""
        try:
            receipt = await intake.receive(event, body)
        except KcTasksError:
            metrics.webhook(event.provider, "unavailable")
            raise
        if receipt.status == names.CONFLICT:
            metrics.webhook(event.provider, names.CONFLICT)
            raise HTTPException(409, receipt.why)
        metrics.webhook_receipt(event.provider, receipt.status, receipt.new)
        return receipt

    verifier = auth.Verifier(settings.jwt_secret, settings.jwt_jwks_url, settings.jwt_audience, settings.jwt_issuer)

    @api.get(
        "/students/{student_id}/courses",
        response_model=list[Course],
        response_model_exclude_none=True,
        responses={
            401: {"model": Problem, "description": "missing, expired or invalid bearer token"},
            403: {"model": Problem, "description": "the token is another student's"},
            422: {"model": Problem, "description": "not a student UUID, or a bad page cursor"},
            503: {"model": Problem},
        },
    )
    def student_courses(
        student_id: Annotated[uuid.UUID, Path()],
        response: Response,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = MAX_PAGE,
        after: Annotated[str | None, Query(max_length=200, description="the cursor of the Link header")] = None,
    ) -> list[dict[str, Any]]:
        """The student's active purchases, newest first, a page at a time (Link: rel="next")."""
        grant = _grant(verifier, credentials, student_id)
        position = _decode_cursor(after) if after else None
        rows = _courses(engine, str(student_id), limit + 1, position)
        if len(rows) > limit:
            rows = rows[:limit]
            cursor = _encode_cursor(rows[-1]["purchased_at"], rows[-1]["purchase_id"])
            response.headers["Link"] = f'</students/{student_id}/courses?limit={limit}&after={cursor}>; rel="next"'
        if not grant.any_student:
            # A student's own view: the provider's payment id serves refunds and support
            # look-ups, not the student, and would widen what a leaked token tells.
            for row in rows:
                row.pop("payment_id")
        return rows

    @api.get("/healthz")
    def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    readiness = Readiness(engine, broker)

    @api.get("/readyz", responses={503: {"description": "PostgreSQL or the broker is unreachable"}})
    def readyz() -> JSONResponse:
        """PostgreSQL and the broker are reachable: each `ok` or `unreachable` (details in the log)."""
        answer = readiness.answer()
        if answer["ready"]:
            return JSONResponse(answer)
        return JSONResponse(answer, status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    confirm = checkouts.router(settings, intake, engine, verifier)
    if confirm is not None:
        api.include_router(confirm[0])
        api.router.on_shutdown.append(confirm[1].close)

    admin_routes = admin.router(settings, celery_app, engine)
    if admin_routes is not None:
        api.include_router(admin_routes)

    @api.exception_handler(KcTasksError)
    async def database_trouble(request: Request, exc: KcTasksError) -> JSONResponse:
        logger.error("%s %s failed: %s", request.method, request.url.path, exc)
        return JSONResponse(
            {"detail": "the database is unavailable; retry later"},
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )

    # What start-up made lives as long as the process: out of the collector's sight, a full
    # collection looks at what requests made only, not at every module and route.
    api.router.on_startup.append(gc.freeze)
    api.router.on_shutdown.append(intake.close)
    api.router.on_shutdown.append(engine.dispose)
    return api


async def _read_body(request: Request, limit: int, provider: str) -> bytes:
    """The raw body, or 413 as soon as it is over `limit` bytes (counted as invalid)."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        metrics.webhook(provider, names.INVALID)
        raise HTTPException(413, f"body over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            metrics.webhook(provider, names.INVALID)
            raise HTTPException(413, f"body over {limit} bytes")
    return bytes(body)


def _grant(
    verifier: auth.Verifier, credentials: HTTPAuthorizationCredentials | None, student_id: uuid.UUID
) -> auth.Grant:
    """The token's grant for this student, or 401 (no valid token) / 403 (another student's)."""
    if credentials is None:
        raise HTTPException(401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"})
    try:
        grant = verifier.verify(credentials.credentials)
    except auth.Unauthorized as exc:
        logger.info("courses of %s: token refused: %s", student_id, exc)
        raise HTTPException(
            401, "invalid or expired token", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
        ) from None
    if not grant.allows(student_id):
        logger.info("courses of %s: refused to a token of another subject", student_id)
        raise HTTPException(403, "this token does not allow reading this student's courses")
    return grant


def _encode_cursor(purchased_at: str, purchase_id: str) -> str:
    return base64.urlsafe_b64encode(f"{purchased_at}|{purchase_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when, _, purchase_id = text.partition("|")
        position = datetime.fromisoformat(when), uuid.UUID(purchase_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise HTTPException(422, "after: not a cursor of this listing") from None
    if position[0].tzinfo is None:
        raise HTTPException(422, "after: not a cursor of this listing")
    return position


def _courses(
    engine: Engine, student_id: str, limit: int, after: tuple[datetime, uuid.UUID] | None = None
) -> list[dict[str, Any]]:
    t = db.purchases
    query = (
        sa.select(t.c.id, t.c.course_id, t.c.payment_id, t.c.amount_cents, t.c.currency, t.c.created_at)
        .where(t.c.student_id == student_id, t.c.is_active)
        .order_by(t.c.created_at.desc(), t.c.id.desc())
        .limit(limit)
    )
    if after is not None:
        query = query.where(sa.tuple_(t.c.created_at, t.c.id) < sa.tuple_(sa.literal(after[0]), sa.literal(after[1])))
    with db.translate_errors(engine.url), engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        {
            "purchase_id": str(r.id),
            "course_id": str(r.course_id),
            "payment_id": r.payment_id,
            "amount_cents": r.amount_cents,
            "currency": r.currency,
            "purchased_at": r.created_at.isoformat(),
        }
        for r in rows
    ]
