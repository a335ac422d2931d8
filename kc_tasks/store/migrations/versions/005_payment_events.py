"""payment_events: the inbox of provider events; revocations: refunds, remembered per payment."""

from __future__ import annotations

from alembic import op

revision = "005_payment_events"
down_revision = "004_event_outbox"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every provider event that passed its signature check, its raw body byte for byte.
    op.execute("""
        CREATE TABLE IF NOT EXISTS payment_events (
            provider    text NOT NULL,
            event_id    text NOT NULL,
            type        text NOT NULL,
            payment_id  text,
            status      text NOT NULL,
            received_at timestamptz NOT NULL DEFAULT now(),
            body        text NOT NULL,
            PRIMARY KEY (provider, event_id),
            CONSTRAINT payment_events_status_check
                CHECK (status IN ('received', 'enqueued', 'ignored', 'unmapped', 'invalid'))
        )
    """)
    # `kc-tasks inbox list` reads the newest first; the relay reads those still `received`.
    op.execute("CREATE INDEX IF NOT EXISTS payment_events_received_at_idx ON payment_events (received_at)")
    op.execute(
        "CREATE INDEX IF NOT EXISTS payment_events_waiting_idx ON payment_events (received_at) "
        "WHERE status = 'received'"
    )
    op.execute("CREATE INDEX IF NOT EXISTS payment_events_payment_id_idx ON payment_events (payment_id)")
    # One row per revoked payment, written before its purchase is looked for: a refund that
    # arrives before the payment's purchase is remembered, and that purchase is made inactive.
    op.execute("""
        CREATE TABLE IF NOT EXISTS revocations (
            payment_id  text PRIMARY KEY,
            reason      text NOT NULL,
            refund_id   text,
            purchase_id uuid,
            created_at  timestamptz NOT NULL DEFAULT now(),
            revoked_at  timestamptz
        )
    """)
