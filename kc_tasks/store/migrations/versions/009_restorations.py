"""restorations: purchases an operator made active again after their revocation.

`kc-tasks payment restore` (a refund that failed after it was processed: the buyer paid and has
no course) moves the payment's revocation here, with the operator's reason, in the transaction
that makes the purchase active again. A new table: nothing live waits on it.
"""

from __future__ import annotations

from alembic import op

revision = "009_restorations"
down_revision = "008_event_body_digest"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE IF NOT EXISTS restorations (
            id                uuid PRIMARY KEY,
            payment_id        text NOT NULL,
            purchase_id       uuid NOT NULL,
            reason            text NOT NULL,
            revocation_reason text NOT NULL,
            refund_id         text,
            revoked_at        timestamptz,
            restored_at       timestamptz NOT NULL DEFAULT now()
        )
    """)
    # A payment's story and reconciliation look restorations up by payment.
    op.execute("CREATE INDEX IF NOT EXISTS restorations_payment_id_idx ON restorations (payment_id)")
