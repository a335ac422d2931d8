"""The dead-letters page of the web process: list, inspect and replay purchases.dlq; and
/admin/payments/<id>, one payment's story (kc_tasks.payments.story), behind the same basic auth.

Off unless KC_ADMIN_USER and KC_ADMIN_PASSWORD are set. Every route asks for HTTP basic
auth; every button is a POST form carrying a CSRF token, refused when it comes from another
origin. Pages are rendered by autoescaping Jinja2 templates and served under a CSP that
allows no script at all: a dead letter's payload is shown, never run.
"""

# No `from __future__ import annotations` here: FastAPI must see the Depends() of the
# closures defined in guard() and the routers at definition time; as strings they would not resolve.
import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote, urlsplit

import jinja2
from celery import Celery
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.engine import Engine

from kc_tasks.core import names
from kc_tasks.core.settings import Settings
from kc_tasks.payments import story
from kc_tasks.store import dead_letters
from kc_tasks.store.dead_letters import DeadLetter

logger = logging.getLogger(__name__)

PREFIX = "/admin/dead-letters"
PAYMENTS = "/admin/payments"
REALM = 'Basic realm="kc_tasks dead letters"'
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # Nothing to other sites. Not no-referrer: under it Chromium sends `Origin: null` with the
    # page's own forms, which the same-origin check below must then refuse.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
# A wrong password is answered this much later (without holding a thread): guessing is slow.
FAILED_SIGN_IN_DELAY_SECONDS = 1.0
MAX_FORM_BYTES = 4096
# The list shows (and reads) at most this many rows; the count is always the whole queue's.
MAX_ROWS = 500

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def csrf_key(admin_password: str, webhook_secret: str) -> bytes:
    """The key of the CSRF tokens: it changes when either secret does."""
    return hmac.new(webhook_secret.encode(), b"kc_tasks admin csrf:" + admin_password.encode(), hashlib.sha256).digest()


def csrf_token(key: bytes, user: str, hour: int) -> str:
    """HMAC-SHA256(key, "<user>:<hour>"), hour counted in hours since the epoch."""
    return hmac.new(key, f"{user}:{hour}".encode(), hashlib.sha256).hexdigest()


def csrf_valid(key: bytes, user: str, token: str, now: float | None = None) -> bool:
    """The token is this user's, of this hour or the previous one."""
    hour = int((time.time() if now is None else now) // 3600)
    given = token.encode()
    return any(secrets.compare_digest(given, csrf_token(key, user, h).encode()) for h in (hour, hour - 1))


@dataclass(frozen=True)
class Guard:
    """What every admin route depends on, made once per app from KC_ADMIN_*: `signed_in`, the
    basic-auth user (or 401); `same_site_form`, every POST's same-origin and CSRF check (or 403)."""

    key: bytes
    signed_in: Callable[..., Awaitable[str]]
    same_site_form: Callable[..., Awaitable[None]]

    def form_token(self, user: str) -> str:
        return csrf_token(self.key, user, int(time.time() // 3600))


def guard(settings: Settings) -> Guard:
    """The sign-in and form checks of the admin pages (settings.admin_user and admin_password set)."""
    key = csrf_key(settings.admin_password, settings.webhook_secret)

    async def admin_user(request: Request) -> str:
        """Dependency of every route: the basic-auth user, or 401 (later, and logged, when
        credentials were given and are wrong)."""
        header = request.headers.get("authorization")
        given = _basic_credentials(header)
        user_ok = secrets.compare_digest(given[0].encode(), settings.admin_user.encode())
        password_ok = secrets.compare_digest(given[1].encode(), settings.admin_password.encode())
        if not (user_ok and password_ok):
            if header is not None:
                client = request.client.host if request.client else "?"
                # %r: a user name from the request cannot forge a log line with a newline.
                logger.warning("admin: failed sign-in as %r from %s", given[0][:64], client)
                await asyncio.sleep(FAILED_SIGN_IN_DELAY_SECONDS)
            raise HTTPException(401, "dead letters: sign in", headers={"WWW-Authenticate": REALM})
        return settings.admin_user

    async def same_site_form(request: Request, user: Annotated[str, Depends(admin_user)]) -> None:
        """Dependency of every POST: same origin and a valid CSRF token, or 403."""
        host = request.headers.get("host", "").lower()
        for header in ("origin", "referer"):
            value = request.headers.get(header)
            if value is not None and urlsplit(value).netloc.lower() != host:
                logger.warning("admin: refused %s %s from %s %s", request.method, request.url.path, header, value)
                raise HTTPException(403, f"cross-origin request refused ({header})")
        body = await request.body()
        token = parse_qs(body[:MAX_FORM_BYTES].decode("utf-8", "replace")).get("csrf", [""])[0]
        if not csrf_valid(key, user, token):
            logger.warning("admin: refused %s %s: missing or stale CSRF token", request.method, request.url.path)
            raise HTTPException(403, "missing or stale form token; reload the page")

    return Guard(key, admin_user, same_site_form)


def router(settings: Settings, celery_app: Celery, engine: Engine | None = None) -> APIRouter | None:
    """The /admin/dead-letters routes (and /admin/payments/<id> given the engine), or None
    (the pages are off) without KC_ADMIN_*."""
    if not settings.admin_user or not settings.admin_password:
        return None
    access = guard(settings)
    api = dead_letters_router(celery_app, access)
    if engine is None:
        return api
    pages = APIRouter(include_in_schema=False)
    pages.include_router(api)
    pages.include_router(payments_router(engine, celery_app, access))
    return pages


def dead_letters_router(celery_app: Celery, access: Guard) -> APIRouter:
    """/admin/dead-letters: the list, one letter, and their Replay buttons."""
    User = Annotated[str, Depends(access.signed_in)]
    api = APIRouter(prefix=PREFIX, include_in_schema=False, dependencies=[Depends(access.signed_in)])

    @api.get("", response_class=HTMLResponse)
    def list_page(user: User, replayed: int | None = None, failed: int = 0) -> Any:
        """Every dead letter, oldest first, each with a Replay button; a flash after a replay."""
        # Only the rows shown are read: each read is a delivery of every letter read.
        with _broker_errors(), dead_letters.hold(celery_app, limit=MAX_ROWS) as held:
            letters = [letter for letter, _ in held]
            total = len(letters) + dead_letters.depth(celery_app)  # those held are not counted as ready
        flash = None
        if replayed is not None:
            flash = f"replayed {replayed}" + (f"; {failed} could not be (see the log)" if failed else "")
        return _page(
            "list.html",
            letters=letters,
            total=total,
            flash=flash,
            csrf=access.form_token(user),
        )

    @api.get("/{letter_id:path}", response_class=HTMLResponse)
    def detail_page(letter_id: str, user: User) -> Any:
        """One dead letter in full: every field, its kwargs as JSON and its traceback."""
        with _broker_errors(), dead_letters.hold(celery_app, limit=MAX_ROWS) as held:
            found = [letter for letter, _ in held if letter_id in (letter.id, letter.task_id)]
        if not found:
            raise HTTPException(404, f"no dead letter {letter_id} in {names.DEAD_LETTERS}")
        letter = found[0]
        fields = {k: v for k, v in asdict(letter).items() if k not in ("kwargs", "args", "traceback", "raw_body")}
        return _page(
            "detail.html",
            letter=letter,
            fields=fields,
            kwargs_json=json.dumps(letter.kwargs, indent=2, ensure_ascii=False, sort_keys=True),
            args_json=json.dumps(letter.args, ensure_ascii=False),
            csrf=access.form_token(user),
        )

    @api.post("/replay-all", dependencies=[Depends(access.same_site_form)])
    def replay_all(user: User) -> RedirectResponse:
        """Replay every dead letter; back to the list with how many were."""
        return _replay(celery_app, user, lambda letter: True)

    @api.post("/{letter_id:path}/replay", dependencies=[Depends(access.same_site_form)])
    def replay_one(letter_id: str, user: User) -> RedirectResponse:
        """Replay one dead letter (by id or task id); back to the list."""
        return _replay(celery_app, user, lambda letter: letter_id in (letter.id, letter.task_id))

    return api


def payments_router(engine: Engine, celery_app: Celery, access: Guard) -> APIRouter:
    """/admin/payments/<id>: one payment's story."""
    pages = APIRouter(include_in_schema=False)

    @pages.get(PAYMENTS + "/{payment_id:path}", response_class=HTMLResponse, dependencies=[Depends(access.signed_in)])
    def payment_page(payment_id: str) -> Any:
        """Where is my course? The payment's story in time order, and the verdict."""
        return _page("payment.html", story=story.tell(engine, celery_app, payment_id))

    return pages


def _replay(app: Celery, user: str, chosen: Callable[[DeadLetter], bool]) -> RedirectResponse:
    """Send the chosen letters back to purchases; each leaves the DLQ only once the broker
    confirmed its replay (as `kc-tasks dlq replay` does)."""
    replayed, failed = 0, 0
    with _broker_errors(), dead_letters.hold(app) as held:
        for letter, message in held:
            if not chosen(letter):
                continue
            problem = dead_letters.replay(app, letter)
            if problem:
                failed += 1
                logger.error("admin %s: not replayed dead letter %s: %s", user, letter.id, problem)
                continue
            message.ack()
            replayed += 1
            logger.info(
                "admin %s replayed dead letter %s (task %s, payment %s)",
                user,
                letter.id,
                letter.task_id,
                letter.payment_id,
            )
    return RedirectResponse(f"{PREFIX}?replayed={replayed}&failed={failed}", status_code=303)


def _basic_credentials(header: str | None) -> tuple[str, str]:
    """(user, password) of an `Authorization: Basic` header; empty strings when absent or malformed."""
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return "", ""
    try:
        user, _, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return "", ""
    return user, password


@contextmanager
def _broker_errors() -> Iterator[None]:
    """Turn an unreachable broker into a 503 instead of a 500."""
    try:
        yield
    except (BrokerError, OSError) as exc:
        logger.error("admin: the broker is unreachable: %s", exc)
        raise HTTPException(503, "the broker is unreachable; retry later") from None


def _page(template: str, **context: Any) -> HTMLResponse:
    html = _templates.get_template(template).render(prefix=PREFIX, age=_age, segment=_segment, **context)
    return HTMLResponse(html, headers=PAGE_HEADERS)


def _segment(letter: DeadLetter) -> str:
    """The letter's id as one URL path segment."""
    return quote(letter.id, safe="")


def _age(letter: DeadLetter) -> str:
    return letter.age()
