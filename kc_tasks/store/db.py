"""Database access: the tables, the engine of this process, and driver errors translated once."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.engine import URL, Engine
from sqlalchemy.pool import NullPool, Pool

from kc_tasks.core import errors
from kc_tasks.core.settings import describe_database

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
    # When the body was reduced to its redacted form (kc_tasks/payments/redaction.py); null: still whole.
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
# even after they leave the window (kc_tasks/payments/reconciler.py).
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

# The isolation level of a connection whose statements commit one by one (`autocommit`).
AUTOCOMMIT = "AUTOCOMMIT"
PAYMENT_ID_CONSTRAINT = "student_course_purchases_payment_id_key"
CONNECT_TIMEOUT = 5  # seconds, for each host of the URL; libpq waits forever by default
# How long a probe (is PostgreSQL taking writes?) waits to connect, seconds, for each host.
PROBE_CONNECT_TIMEOUT = 2

# SQLSTATEs that say the server cannot take writes now, whatever the statement: an outage, to
# be waited out. Connection-class errors (08xxx, PgBouncer's own among them) are added by prefix.
_UNAVAILABLE = {
    "57P01",  # admin shutdown: the server is stopping (a failover, maintenance)
    "57P02",  # crash shutdown
    "57P03",  # cannot connect now: starting up, shutting down, in recovery
    "25006",  # read-only transaction: a standby, or a primary not yet promoted
    "53100",  # disk full
    "53200",  # out of memory
    "53300",  # too many connections
}
# SQLSTATEs of one statement meeting others: a retry of that task can cure them.
_BUSY = {"40001", "40P01", "55P03", "53000", "57014"}
# The server each engine's last connection reached, by URL (a multi-host URL names several).
_in_use: dict[str, str] = {}


def make_engine(
    url: URL,
    pool_size: int = 2,
    max_overflow: int = 0,
    poolclass: type[Pool] | None = None,
    connect_timeout: int = CONNECT_TIMEOUT,
) -> Engine:
    """The engine of one process: call it after the fork, never share it across processes.

    `pool_size` connections are kept, up to `max_overflow` more are opened when needed and
    closed after use; a checkout waits at most 10 s. kc_tasks.worker.process sizes a worker's for the
    tasks it runs at once. NullPool suits one-off commands.
    """
    pooling: dict[str, Any] = (
        {"poolclass": poolclass}
        if poolclass
        else {"pool_size": pool_size, "max_overflow": max_overflow, "pool_timeout": 10}
    )
    engine = sa.create_engine(
        url,
        connect_args={
            "connect_timeout": connect_timeout,
            "application_name": "kc_tasks",
            # No server-side prepared statements: behind a transaction pooler (PgBouncer's
            # pool_mode = transaction) the next transaction may run on another server connection,
            # where a statement psycopg prepared does not exist, or already does. Unnamed
            # statements cost a parse and a plan per execution, no extra round trip
            # (docs/benchmark.md measures it).
            "prepare_threshold": None,
        },
        **pooling,
    )
    sa.event.listen(engine, "connect", functools.partial(_note_server, _key(url)))
    sa.event.listen(engine, "handle_error", _outage_is_a_disconnect)
    return engine


def _outage_is_a_disconnect(context: sa.engine.ExceptionContext) -> None:
    """A server that cannot take writes (a standby, one shutting down, out of disk) is treated as
    a lost connection: SQLAlchemy drops this connection and renews the pool's others, so that the
    next attempt connects afresh, to the primary of a multi-host URL, or with the server's
    current settings (a default_transaction_read_only that was lifted)."""
    sqlstate = getattr(context.original_exception, "sqlstate", None)
    if sqlstate is not None and classify(sqlstate, False) is errors.DatabaseUnavailable:
        context.is_disconnect = True


def _note_server(key: str, dbapi_connection: Any, _record: Any) -> None:
    """Remember which server of the URL this connection reached: log lines name that one."""
    info = dbapi_connection.info
    _in_use[key] = f"{info.host}:{info.port}/{info.dbname}"


def _key(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def server_in_use(url: URL) -> str:
    """host:port/database of the server the last connection made on `url` in this process
    reached; before any did, every server the URL names."""
    return _in_use.get(_key(url)) or describe_database(url)


# A write: a transaction id is given only where a write may follow (never on a standby), and a
# server in read-only mode (default_transaction_read_only) says so. Rolled back: nothing stays.
_PROBE = sa.text("SELECT pg_current_xact_id()::text, current_setting('transaction_read_only')")
_probe_engines: dict[str, Engine] = {}


def probe_engine(url: URL) -> Engine:
    """This process's engine for probes: no pool, so a probe never meets a dead connection, and
    a short connect timeout, so that a scrape that probes answers in time."""
    key = _key(url)
    if key not in _probe_engines:
        _probe_engines[key] = make_engine(url, poolclass=NullPool, connect_timeout=PROBE_CONNECT_TIMEOUT)
    return _probe_engines[key]


def writable(engine: Engine) -> str | None:
    """None when PostgreSQL takes a write now; else why not."""
    try:
        with translate_errors(engine.url), engine.connect() as conn:
            _, read_only = conn.execute(_PROBE).one()
            conn.rollback()
    except errors.KcTasksError as exc:
        return str(exc)
    if read_only == "on":
        return f"{server_in_use(engine.url)} is read-only (transaction_read_only is on)"
    return None


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


@contextlib.contextmanager
def autocommit(engine: Engine) -> Iterator[sa.Connection]:
    """A connection of `engine` in autocommit mode: each statement commits on its own, with no
    BEGIN or COMMIT round trips (and CREATE INDEX CONCURRENTLY may run); driver errors, the
    connect's included, translated as `translate_errors` does. The one way kc_tasks opens one."""
    with translate_errors(engine.url), engine.connect().execution_options(isolation_level=AUTOCOMMIT) as conn:
        yield conn


def in_autocommit(conn: sa.Connection) -> bool:
    """Whether `conn` is in autocommit mode (opened by `autocommit`)."""
    return conn.get_execution_options().get("isolation_level") == AUTOCOMMIT


def _translate(orig: BaseException | None, invalidated: bool, url: URL | None) -> errors.KcTasksError:
    sqlstate = getattr(orig, "sqlstate", None)
    where = f" ({server_in_use(url)})" if url is not None else ""
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
