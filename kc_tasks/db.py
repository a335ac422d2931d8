"""Database access: the tables, the engine of this process, and driver errors translated once."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.engine import URL, Engine
from sqlalchemy.pool import Pool

from kc_tasks import errors
from kc_tasks.settings import describe_database

logger = logging.getLogger(__name__)

metadata = sa.MetaData()

purchases = sa.Table(
    "student_course_purchases",
    metadata,
    sa.Column("id", UUID(as_uuid=False), primary_key=True),
    sa.Column("student_id", UUID(as_uuid=False), nullable=False),
    sa.Column("course_id", UUID(as_uuid=False), nullable=False),
    sa.Column("payment_id", sa.Text, nullable=False),
    sa.Column("amount_cents", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.CHAR(3), nullable=False),
    sa.Column("metadata", JSONB),
    sa.Column("is_active", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

# Payments that arrived for a course the student already held: they made no purchase, and
# must never make one later, even after the purchase they collided with is deactivated.
duplicate_payments = sa.Table(
    "duplicate_payments",
    metadata,
    sa.Column("payment_id", sa.Text, primary_key=True),
    sa.Column("purchase_id", UUID(as_uuid=False), nullable=False),
    # The payment of the purchase already held: a refund names both.
    sa.Column("held_payment_id", sa.Text, nullable=False),
    sa.Column("student_id", UUID(as_uuid=False), nullable=False),
    sa.Column("course_id", UUID(as_uuid=False), nullable=False),
    sa.Column("amount_cents", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.CHAR(3), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

# Events written in the transaction of the row they describe; see events.py.
event_outbox = sa.Table(
    "event_outbox",
    metadata,
    sa.Column("id", UUID(as_uuid=False), primary_key=True),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("data", JSONB, nullable=False),
    sa.Column("published_at", sa.DateTime(timezone=True)),
)

# One row per payment kc_tasks has seen: create_purchase and revoke_purchase both upsert it
# first, and its row lock orders them (purchases.py, revocations.py). `revoked_at` is set once
# the payment is revoked, whether or not it has made a purchase yet.
payments = sa.Table(
    "payments",
    metadata,
    sa.Column("payment_id", sa.Text, primary_key=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
)

# Refunds and other revocations, one per payment, kept whether or not its purchase exists yet.
revocations = sa.Table(
    "revocations",
    metadata,
    sa.Column("payment_id", sa.Text, primary_key=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("refund_id", sa.Text),
    # The purchase it made inactive; null while the payment has made none.
    sa.Column("purchase_id", UUID(as_uuid=False)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
)

# The inbox: every payment-provider event that passed its signature check; see inbox.py.
payment_events = sa.Table(
    "payment_events",
    metadata,
    sa.Column("provider", sa.Text, primary_key=True),
    sa.Column("event_id", sa.Text, primary_key=True),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("payment_id", sa.Text),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("body", sa.Text, nullable=False),
    # When the body was reduced to its redacted form (kc_tasks/redaction.py); null: still whole.
    sa.Column("body_redacted_at", sa.DateTime(timezone=True)),
    # SHA-256 of the raw body as it came over HTTP, kept through redaction: a second arrival of
    # the id is a repeat only with the same bytes (inbox.same_event). Null for what reconciliation
    # stored (a provider's API object) and for events stored before migration 008.
    sa.Column("body_sha256", sa.LargeBinary),
)

# Purchases an operator made active again after their revocation (kc-tasks payment restore),
# one row each time: the revocation they overruled leaves `revocations` and is kept here.
restorations = sa.Table(
    "restorations",
    metadata,
    sa.Column("id", UUID(as_uuid=False), primary_key=True),
    sa.Column("payment_id", sa.Text, nullable=False),
    sa.Column("purchase_id", UUID(as_uuid=False), nullable=False),
    # The operator's reason.
    sa.Column("reason", sa.Text, nullable=False),
    # The revocation overruled, as `revocations` held it.
    sa.Column("revocation_reason", sa.Text, nullable=False),
    sa.Column("refund_id", sa.Text),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
    sa.Column("restored_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

# Razorpay refunds reconciliation saw `pending`: fetched again on later runs until they are final,
# even after they leave the window (kc_tasks/reconcile.py).
pending_refunds = sa.Table(
    "pending_refunds",
    metadata,
    sa.Column("refund_id", sa.Text, primary_key=True),
    sa.Column("payment_id", sa.Text, nullable=False),
    sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

# Dead letters an operator purged (kc-tasks dlq purge): the task's outcome is final, so its inbox
# event is never sent again and its body is redacted in time.
purged_dead_letters = sa.Table(
    "purged_dead_letters",
    metadata,
    sa.Column("task_id", sa.Text, primary_key=True),
    sa.Column("task", sa.Text),
    sa.Column("payment_id", sa.Text),
    sa.Column("purged_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

PAYMENT_ID_CONSTRAINT = "student_course_purchases_payment_id_key"
CONNECT_TIMEOUT = 5  # seconds; libpq waits forever by default

# SQLSTATEs a retry can cure. Connection-class errors (08xxx) are added by prefix.
_UNAVAILABLE = {"57P01", "57P02", "57P03"}  # admin/crash shutdown, cannot connect now
_BUSY = {"40001", "40P01", "55P03", "53300", "53000", "57014"}


def make_engine(url: URL, pool_size: int = 2, max_overflow: int = 0, poolclass: type[Pool] | None = None) -> Engine:
    """The engine of one process: call it after the fork, never share it across processes.

    `pool_size` connections are kept, up to `max_overflow` more are opened when needed and
    closed after use; a checkout waits at most 10 s. kc_tasks.process sizes a worker's for the
    tasks it runs at once. NullPool suits one-off commands.
    """
    pooling: dict[str, Any] = (
        {"poolclass": poolclass}
        if poolclass
        else {"pool_size": pool_size, "max_overflow": max_overflow, "pool_timeout": 10}
    )
    return sa.create_engine(
        url,
        connect_args={"connect_timeout": CONNECT_TIMEOUT, "application_name": "kc_tasks"},
        **pooling,
    )


def classify(sqlstate: str | None, disconnected: bool) -> type[errors.KcTasksError]:
    """Which error a driver failure becomes: retryable, or permanent."""
    if disconnected or sqlstate is None or sqlstate.startswith("08") or sqlstate in _UNAVAILABLE:
        return errors.DatabaseUnavailable
    if sqlstate in _BUSY:
        return errors.DatabaseBusy
    if sqlstate == "42P10":
        return errors.ConflictTargetMissing
    return errors.DatabaseError


@contextlib.contextmanager
def translate_errors(url: URL | None = None) -> Iterator[None]:
    """Turn SQLAlchemy/psycopg failures into kc_tasks errors, once, at the I/O boundary."""
    try:
        yield
    except sa.exc.DBAPIError as exc:
        raise _translate(exc.orig, bool(exc.connection_invalidated), url) from exc
    except psycopg.Error as exc:
        raise _translate(exc, False, url) from exc
    except sa.exc.TimeoutError as exc:
        raise errors.DatabaseBusy(f"no free database connection in the pool: {exc}") from exc


def _translate(orig: BaseException | None, invalidated: bool, url: URL | None) -> errors.KcTasksError:
    sqlstate = getattr(orig, "sqlstate", None)
    where = f" ({describe_database(url)})" if url is not None else ""
    message = f"{type(orig).__name__}{where}: {_first_line(orig)}"
    if sqlstate == "23505":
        diag = getattr(orig, "diag", None)
        return errors.UniqueConflict(message, getattr(diag, "constraint_name", None))
    if not isinstance(orig, psycopg.Error):
        return errors.DatabaseError(message)
    if sqlstate is None and isinstance(orig, psycopg.DataError):
        # Refused by psycopg itself, before any server saw it (a NUL in a text value).
        return errors.DatabaseError(message)
    disconnected = invalidated or isinstance(orig, psycopg.InterfaceError)
    return classify(sqlstate, disconnected)(message)


def _first_line(exc: BaseException | None) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
