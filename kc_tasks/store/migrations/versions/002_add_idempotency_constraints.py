"""unique_active_purchase and the unique payment_id constraint, built without blocking writes.

Databases that ran the old worker may hold duplicates. Of each payment, the oldest row
keeps the payment id; later rows are deactivated and their payment id suffixed with
`#duplicate:<row id>`. Of each student and course, the oldest active purchase stays active
and the others are deactivated. Nothing is deleted; the counts are logged.

"Oldest" is the earliest created_at, and among equal ones (every row of a table that had no
created_at gets 001's time) the row stored first (ctid): the order the old worker wrote
them, never the ids, which are random. A table the old worker made without is_active gets
it here, every row in force, before anything reads it.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

from kc_tasks.core import errors
from kc_tasks.store import db, index_guard

revision = "002_add_idempotency_constraints"
down_revision = "001_create_purchases"
branch_labels = None
depends_on = None

logger = logging.getLogger("kc_tasks.migrations")

PAYMENT_KEY = db.PAYMENT_ID_CONSTRAINT
RENAME_DUPLICATE_PAYMENTS = sa.text("""
WITH ranked AS (
    SELECT id, payment_id, row_number() OVER (PARTITION BY payment_id
                                              ORDER BY created_at, ctid) AS n
    FROM student_course_purchases
)
UPDATE student_course_purchases p
SET payment_id = p.payment_id || '#duplicate:' || p.id::text, is_active = false, updated_at = now(),
    metadata = coalesce(p.metadata, '{}'::jsonb) || jsonb_build_object('duplicate_of_payment', r.payment_id)
FROM ranked r WHERE p.id = r.id AND r.n > 1
""")


def upgrade() -> None:
    op.execute("ALTER TABLE student_course_purchases ADD COLUMN IF NOT EXISTS is_active boolean NOT NULL DEFAULT true")
    with op.get_context().autocommit_block():
        conn = op.get_bind()
        _unique_payment_id(conn)
        status, _ = index_guard.ensure_index(conn)
        if not status.usable:
            raise errors.DatabaseError(status.describe())


def _unique_payment_id(conn: sa.Connection) -> None:
    if conn.execute(sa.text("SELECT 1 FROM pg_constraint WHERE conname = :n"), {"n": PAYMENT_KEY}).first():
        return
    for _ in range(index_guard.BUILD_ATTEMPTS):
        conn.execute(sa.text(f"DROP INDEX CONCURRENTLY IF EXISTS {PAYMENT_KEY}"))
        renamed = conn.execute(RENAME_DUPLICATE_PAYMENTS).rowcount
        if renamed:
            logger.warning("deactivated %d purchases that repeated an earlier purchase's payment id", renamed)
        try:
            with db.translate_errors():
                conn.execute(
                    sa.text(f"CREATE UNIQUE INDEX CONCURRENTLY {PAYMENT_KEY} ON student_course_purchases (payment_id)")
                )
            break
        except errors.UniqueConflict:
            logger.warning("a duplicate payment arrived during the build; retrying")
    else:
        conn.execute(sa.text(f"DROP INDEX CONCURRENTLY IF EXISTS {PAYMENT_KEY}"))
        raise errors.DatabaseError(f"could not build {PAYMENT_KEY}: duplicates kept arriving")
    conn.execute(
        sa.text(f"ALTER TABLE student_course_purchases ADD CONSTRAINT {PAYMENT_KEY} UNIQUE USING INDEX {PAYMENT_KEY}")
    )
