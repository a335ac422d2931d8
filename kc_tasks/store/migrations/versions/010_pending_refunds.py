"""pending_refunds: Razorpay refunds reconciliation saw `pending`, fetched again until final.

A refund lists by the time it was made; one still pending when it leaves the reconciliation
window would never be seen processed. Each is kept here until a later run finds it processed
(then revoked as any other) or failed. A new table: nothing live waits on it.
"""

from __future__ import annotations

from alembic import op

revision = "010_pending_refunds"
down_revision = "009_restorations"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE IF NOT EXISTS pending_refunds (
            refund_id     text PRIMARY KEY,
            payment_id    text NOT NULL,
            first_seen_at timestamptz NOT NULL DEFAULT now(),
            checked_at    timestamptz NOT NULL DEFAULT now()
        )
    """)
    # Each run fetches the ones checked longest ago first.
    op.execute("CREATE INDEX IF NOT EXISTS pending_refunds_checked_at_idx ON pending_refunds (checked_at)")
