"""payment_events.body_sha256: the SHA-256 of an event's raw body, kept through redaction.

An event id names one event: a second arrival of a stored id is a repeat only with the same
body, byte for byte (kc_tasks/payments/inbox.py, same_event). Once a body is redacted the bytes are gone;
their digest stays. The events stored before this migration have none: they are compared by
what they ask for (their type and action, which the redacted form keeps), and nothing is
backfilled, so this migration reads no row.

A nullable column without a default is a change of the catalog alone, whatever the table's size,
but it takes the table's strongest lock for that instant: it waits for the transactions using the
table, and every webhook's insert waits behind it. So it waits at most LOCK_TIMEOUT, in its own
transaction, and tries again after a pause in which the webhooks go on.
"""

from __future__ import annotations

import logging
import time

import sqlalchemy as sa
from alembic import op

revision = "008_event_body_digest"
down_revision = "007_inbox_body_redaction"
branch_labels = None
depends_on = None

logger = logging.getLogger("kc_tasks.migrations")

LOCK_TIMEOUT = "2s"
TRIES = 30
PAUSE_SECONDS = 1.0
LOCK_NOT_AVAILABLE = "55P03"


def upgrade() -> None:
    with op.get_context().autocommit_block():
        add_column(op.get_bind())


def add_column(conn: sa.Connection, tries: int = TRIES, pause: float = PAUSE_SECONDS) -> None:
    """ADD COLUMN, each try waiting at most LOCK_TIMEOUT for the table's lock (autocommit `conn`)."""
    conn.execute(sa.text(f"SET lock_timeout = '{LOCK_TIMEOUT}'"))
    try:
        for attempt in range(1, tries + 1):
            try:
                conn.execute(sa.text("ALTER TABLE payment_events ADD COLUMN IF NOT EXISTS body_sha256 bytea"))
                return
            except sa.exc.DBAPIError as exc:
                if getattr(exc.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE or attempt == tries:
                    raise
                logger.warning(
                    "payment_events is in use: adding body_sha256 again in %.0f s (try %d of %d)", pause, attempt, tries
                )
                time.sleep(pause)
    finally:
        conn.execute(sa.text("RESET lock_timeout"))
