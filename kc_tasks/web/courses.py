"""GET /students/{student_id}/courses: a student's active purchases, newest first, a page at a
time (a cursor in the Link header), for the student's own token or one with scope purchases:read."""

from __future__ import annotations

import base64
import binascii
import logging
import uuid
from datetime import datetime
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine

from kc_tasks.store import db
from kc_tasks.web import auth
from kc_tasks.web.answers import Problem

logger = logging.getLogger(__name__)

# A page of a student's courses holds at most this many; the Link header names the next one.
MAX_PAGE = 100
# At module level: FastAPI resolves the route's (string) annotations in this module's globals.
bearer = HTTPBearer(auto_error=False, description="a JWT: `sub` the student, or `scope` with purchases:read")


class Course(BaseModel):
    purchase_id: str
    course_id: str
    payment_id: str | None = Field(
        None, description="the payment provider's id: only for a token with scope purchases:read, not for a student"
    )
    amount_cents: int
    currency: str
    purchased_at: str


def router(engine: Engine, verifier: auth.Verifier) -> APIRouter:
    routes = APIRouter()

    @routes.get(
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
        position = decode_cursor(after) if after else None
        rows = courses(engine, str(student_id), limit + 1, position)
        if len(rows) > limit:
            rows = rows[:limit]
            cursor = encode_cursor(rows[-1]["purchased_at"], rows[-1]["purchase_id"])
            response.headers["Link"] = f'</students/{student_id}/courses?limit={limit}&after={cursor}>; rel="next"'
        if not grant.any_student:
            # A student's own view: the provider's payment id serves refunds and support
            # look-ups, not the student, and would widen what a leaked token tells.
            for row in rows:
                row.pop("payment_id")
        return rows

    return routes


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


def encode_cursor(purchased_at: str, purchase_id: str) -> str:
    return base64.urlsafe_b64encode(f"{purchased_at}|{purchase_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when, _, purchase_id = text.partition("|")
        position = datetime.fromisoformat(when), uuid.UUID(purchase_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise HTTPException(422, "after: not a cursor of this listing") from None
    if position[0].tzinfo is None:
        raise HTTPException(422, "after: not a cursor of this listing")
    return position


def courses(
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
