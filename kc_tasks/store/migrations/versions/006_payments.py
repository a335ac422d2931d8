"""payments: one row per payment kc_tasks has seen, the row on which its state is decided.

create_purchase and revoke_purchase both upsert this row before they touch a purchase. Its
row lock orders them: whichever comes second sees what the first committed (see
kc_tasks/worker/purchases.py and revocations.py). The rows of the payments already known (their
purchases, duplicate payments and revocations) are made here in batches of BATCH rows, each
committed on its own: the existing tables are only read (ACCESS SHARE, which no write waits
for), and the new one is written a batch at a time while workers already write to it.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

revision = "006_payments"
down_revision = "005_payment_events"
branch_labels = None
depends_on = None

logger = logging.getLogger("kc_tasks.migrations")

BATCH = 10_000

# Each source, read in payment_id order from its unique index, BATCH rows past the last one.
_SOURCES = {
    "student_course_purchases": "SELECT payment_id, NULL::timestamptz AS revoked_at FROM student_course_purchases",
    "duplicate_payments": "SELECT payment_id, NULL::timestamptz AS revoked_at FROM duplicate_payments",
    "revocations": "SELECT payment_id, coalesce(revoked_at, created_at) AS revoked_at FROM revocations",
}
_COPY = """
WITH batch AS (
    {source} WHERE payment_id > :after ORDER BY payment_id LIMIT :n
), copied AS (
    INSERT INTO payments (payment_id, revoked_at)
    SELECT payment_id, revoked_at FROM batch
    ON CONFLICT (payment_id) DO UPDATE SET revoked_at = coalesce(payments.revoked_at, excluded.revoked_at)
    WHERE excluded.revoked_at IS NOT NULL
)
SELECT max(payment_id), count(*) FROM batch
"""


def upgrade() -> None:
    op.execute("""
        CREATE TABLE IF NOT EXISTS payments (
            payment_id text PRIMARY KEY,
            created_at timestamptz NOT NULL DEFAULT now(),
            revoked_at timestamptz
        )
    """)
    with op.get_context().autocommit_block():
        conn = op.get_bind()
        for table, source in _SOURCES.items():
            copied = backfill(conn, source)
            logger.info("payments: %d row(s) of %s copied", copied, table)


def backfill(conn: sa.Connection, source: str, batch: int = BATCH) -> int:
    """Copy the payments of one source, a batch per autocommitted statement; how many were read."""
    statement = sa.text(_COPY.format(source=source))
    after, read = "", 0
    while True:
        last, count = conn.execute(statement, {"after": after, "n": batch}).one()
        if last is None:
            return read
        read += count
        after = last
