"""The payment webhooks, built from the provider registry (kc_tasks.providers.registry): kc_tasks'
own (POST /webhooks/payments: 202 and the task), and one route per provider whose secret is set
(POST /webhooks/<provider>: 200 and what became of the event). Each reads, verifies, parses, and
hands the event to the intake (stored before the answer)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from kc_tasks.core import metrics, names
from kc_tasks.core.errors import InvalidPurchase, KcTasksError
from kc_tasks.core.payload import parse_purchase
from kc_tasks.core.settings import Settings, secrets
from kc_tasks.payments import inbox
from kc_tasks.providers import Malformed, ProviderEvent, Purchase, registry
from kc_tasks.providers.registry import Provider
from kc_tasks.web.answers import Problem
from kc_tasks.web.intake import Intake

logger = logging.getLogger(__name__)

PAYMENT_SUCCEEDED = "payment.succeeded"
Responses = dict[int | str, dict[str, Any]]


class Accepted(BaseModel):
    task_id: str


class Ignored(BaseModel):
    status: str = names.IGNORED
    type: str


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


def own_responses(max_body: int) -> Responses:
    return {
        200: {"model": Ignored, "description": "not a payment.succeeded event"},
        401: {"model": Problem, "description": "missing, wrong or stale signature"},
        409: {"model": Problem, "description": "the event id is stored with another body; nothing stored"},
        413: {"model": Problem, "description": f"body over {max_body} bytes"},
        422: {"model": Problem, "description": "invalid JSON or field"},
        503: {"model": Problem, "description": "the database is unreachable: retry later"},
    }


def provider_responses(max_body: int) -> Responses:
    return {
        200: {"description": "verified and stored (whatever its type)"},
        400: {"model": Problem, "description": "not a JSON event"},
        401: {"model": Problem, "description": "missing or wrong signature; nothing stored"},
        409: {"model": Problem, "description": "the event id is stored with another body; nothing stored"},
        413: {"model": Problem, "description": f"body over {max_body} bytes"},
        503: {"model": Problem, "description": "the database is unreachable: retry later"},
    }


def router(settings: Settings, intake: Intake) -> APIRouter:
    """kc_tasks' own webhook, and each provider's whose secret is set."""
    routes = APIRouter()
    for provider in registry.WEBHOOKS:
        assert provider.webhook is not None
        keys = secrets(provider.webhook.secret(settings))
        if provider.webhook.own_format:
            _own_route(routes, provider, keys, intake)
        elif keys:
            _provider_route(routes, provider, keys, settings, intake)
    return routes


def _own_route(routes: APIRouter, provider: Provider, keys: Sequence[str], intake: Intake) -> None:
    hook = provider.webhook
    assert hook is not None

    @routes.post(
        hook.path,
        status_code=202,
        response_model=Accepted,
        responses=own_responses(hook.max_body),
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": WEBHOOK_BODY_SCHEMA}}}
        },
    )
    async def payment_webhook(request: Request) -> Any:
        """A signed payment event: payment.succeeded becomes a create_purchase task,
        payment.refunded a revoke_purchase task; stored in the inbox (provider kc) first."""
        body = await read_body(request, hook.max_body, provider.name)
        problem = hook.verify(body, request.headers.get(hook.signature_header), keys)
        if problem:
            logger.warning("webhook refused: %s", problem)
            metrics.webhook(provider.name, "rejected")
            raise HTTPException(401, problem)
        try:
            event = provider.parse(body, None, None)
            if isinstance(event.action, Purchase):
                parse_purchase(event.action.kwargs)  # kc_tasks' own format: an invalid one is the caller's bug
        except (Malformed, InvalidPurchase) as exc:
            metrics.webhook(provider.name, names.INVALID)
            raise HTTPException(422, str(exc)) from None
        receipt = await receive(intake, event, body)
        if receipt.task_id is None:
            return JSONResponse({"status": names.IGNORED, "type": event.type}, status_code=200)
        logger.debug(
            "webhook %s: payment %s: task %s %s", event.event_id, event.payment_id, receipt.task_id, receipt.status
        )
        return JSONResponse({"task_id": receipt.task_id}, status_code=202)


def _provider_route(
    routes: APIRouter, provider: Provider, keys: Sequence[str], settings: Settings, intake: Intake
) -> None:
    hook = provider.webhook
    assert hook is not None
    headers = ", ".join(h for h in (hook.signature_header, hook.event_id_header) if h)

    async def provider_webhook(request: Request) -> Any:
        body = await read_body(request, hook.max_body, provider.name)
        problem = hook.verify(body, request.headers.get(hook.signature_header), keys)
        if problem:
            logger.warning("%s webhook refused: %s", provider.name, problem)
            metrics.webhook(provider.name, "rejected")
            raise HTTPException(401, problem)
        event_id = request.headers.get(hook.event_id_header) if hook.event_id_header else None
        try:
            event = provider.parse(body, event_id, settings.stripe_livemode)
        except Malformed as exc:
            metrics.webhook(provider.name, names.INVALID)
            raise HTTPException(400, str(exc)) from None
        return await _received(intake, event, body)

    routes.add_api_route(
        hook.path,
        provider_webhook,
        methods=["POST"],
        responses=provider_responses(hook.max_body),
        name=f"{provider.name}_webhook",
        description=f"{provider.title}'s webhook, as {provider.title} sends it ({headers}).",
    )


async def _received(intake: Intake, event: ProviderEvent, body: bytes) -> JSONResponse:
    """Stored before the answer; 200 whatever it is, broker up or down."""
    receipt = await receive(intake, event, body)
    answer: dict[str, Any] = {"event_id": event.event_id, "status": receipt.status}
    if receipt.task_id is not None:
        answer["task_id"] = receipt.task_id
    return JSONResponse(answer, status_code=200)


async def receive(intake: Intake, event: ProviderEvent, body: bytes) -> inbox.Receipt:
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


async def read_body(request: Request, limit: int, provider: str) -> bytes:
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
