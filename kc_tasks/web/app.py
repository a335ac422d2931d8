"""The web process: the payment webhooks (kc_tasks/web/webhooks.py), checkouts confirmed on the
buyer's return (kc_tasks/web/checkouts.py), a student's courses (kc_tasks/web/courses.py), the
operators' pages (kc_tasks/web/admin.py), health and readiness (kc_tasks/web/health.py).
`create_app` checks the secrets, makes what the routers share, and assembles them.

Served by uvicorn: `uvicorn --factory kc_tasks.web:create_app --port $PORT`.
"""

from __future__ import annotations

import gc
import logging
import sys

from celery import Celery
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from kc_tasks.core import logs, metrics
from kc_tasks.core.errors import ConfigError, KcTasksError
from kc_tasks.core.settings import Settings
from kc_tasks.payments import inbox
from kc_tasks.providers import registry
from kc_tasks.store import db
from kc_tasks.web import admin, auth, checkouts, courses, health, webhooks
from kc_tasks.web.answers import RETRY_AFTER_SECONDS
from kc_tasks.web.intake import Intake
from kc_tasks.web.readiness import Readiness

logger = logging.getLogger(__name__)

# Shorter secrets can be guessed offline from one signed request or token.
MIN_SECRET_BYTES = 32
MIN_ADMIN_PASSWORD_CHARS = 16


def _check_secrets(settings: Settings) -> None:
    """ConfigError (one line, naming the variable, never the value) for a weak secret."""
    if not settings.webhook_secret:
        raise ConfigError("KC_WEBHOOK_SECRET is not set: the webhook cannot verify signatures")
    for name, value in (("KC_WEBHOOK_SECRET", settings.webhook_secret), ("KC_JWT_SECRET", settings.jwt_secret)):
        # Several comma-separated secrets are several secrets (rotation): each must be long.
        if value and any(len(part.strip().encode()) < MIN_SECRET_BYTES for part in value.split(",")):
            raise ConfigError(
                f"{name} is shorter than {MIN_SECRET_BYTES} bytes; generate one with "
                'python3 -c "import secrets; print(secrets.token_hex(32))"'
            )
    # The providers whose webhook secret must be long (the registry says which, and why).
    for provider in registry.WEBHOOKS:
        webhook = provider.webhook
        if webhook is not None and webhook.long_secret is not None:
            problem = webhook.long_secret.problem(webhook.secret(settings), MIN_SECRET_BYTES)
            if problem:
                raise ConfigError(problem)
    if settings.admin_user and settings.admin_password and len(settings.admin_password) < MIN_ADMIN_PASSWORD_CHARS:
        raise ConfigError(f"KC_ADMIN_PASSWORD is shorter than {MIN_ADMIN_PASSWORD_CHARS} characters")


def create_app(settings: Settings | None = None, celery_app: Celery | None = None) -> FastAPI:
    """The ASGI app. Refuses to start without KC_WEBHOOK_SECRET, or with a weak secret."""
    try:
        settings = settings or Settings.from_env()
        _check_secrets(settings)
    except ConfigError as exc:
        print(f"kc_tasks web: refusing to start: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    logs.configure(settings.log_format)
    if celery_app is None:
        from kc_tasks.celery import app as default_app

        celery_app = default_app
    # No task-sent event for what the webhooks enqueue: a second confirmed publish per request,
    # behind a process-wide lock. Flower still sees each task from the worker's events.
    celery_app.conf.task_send_sent_event = False
    # The intake's writers and marker, and the read routes beside them.
    engine = db.make_engine(settings.database_url, pool_size=8)
    if settings.web_metrics_port:
        metrics.start_web(
            settings.web_metrics_port,
            settings.metrics_address,
            lambda: db.writable(db.probe_engine(settings.database_url)),
            lambda: inbox.stuck_count(engine),
            registry.METRIC_LABELS,
        )
    # The webhooks' events are stored and enqueued in batches, by threads of the process.
    intake = Intake(engine, celery_app)
    verifier = auth.Verifier(settings.jwt_secret, settings.jwt_jwks_url, settings.jwt_audience, settings.jwt_issuer)
    api = FastAPI(title="kc_tasks", version="1", description="Payment webhook and purchases of kc_tasks")
    api.include_router(webhooks.router(settings, intake))
    api.include_router(courses.router(engine, verifier))
    api.include_router(health.router(Readiness(engine, celery_app)))
    confirm = checkouts.router(settings, intake, engine, verifier)
    if confirm is not None:
        api.include_router(confirm[0])
        api.router.on_shutdown.append(confirm[1].close)
    admin_routes = admin.router(settings, celery_app, engine)
    if admin_routes is not None:
        api.include_router(admin_routes)
    api.add_exception_handler(KcTasksError, _database_trouble)  # type: ignore[arg-type]
    # What start-up made lives as long as the process: out of the collector's sight, a full
    # collection looks at what requests made only, not at every module and route.
    api.router.on_startup.append(gc.freeze)
    api.router.on_shutdown.append(intake.close)
    api.router.on_shutdown.append(engine.dispose)
    return api


async def _database_trouble(request: Request, exc: KcTasksError) -> JSONResponse:
    logger.error("%s %s failed: %s", request.method, request.url.path, exc)
    return JSONResponse(
        {"detail": "the database is unavailable; retry later"},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )
