"""GET /healthz (the process is alive) and GET /readyz (PostgreSQL and the broker are reachable)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from kc_tasks.web.answers import RETRY_AFTER_SECONDS
from kc_tasks.web.readiness import Readiness


def router(readiness: Readiness) -> APIRouter:
    routes = APIRouter()

    @routes.get("/healthz")
    def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @routes.get("/readyz", responses={503: {"description": "PostgreSQL or the broker is unreachable"}})
    def readyz() -> JSONResponse:
        """PostgreSQL and the broker are reachable: each `ok` or `unreachable` (details in the log)."""
        answer = readiness.answer()
        if answer["ready"]:
            return JSONResponse(answer)
        return JSONResponse(answer, status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    return routes
