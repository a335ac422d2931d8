"""duplicate_payments: payments that arrived for a course the student already held."""

from __future__ import annotations

from alembic import op

revision = "003_duplicate_payments"
down_revision = "002_add_idempotency_constraints"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE IF NOT EXISTS duplicate_payments (
            payment_id   text PRIMARY KEY,
            purchase_id  uuid NOT NULL,
            held_payment_id text NOT NULL,
            student_id   uuid NOT NULL,
            course_id    uuid NOT NULL,
            amount_cents bigint NOT NULL,
            currency     char(3) NOT NULL,
            created_at   timestamptz NOT NULL DEFAULT now()
        )
    """)
