"""event_outbox: purchase events, written with their row, published after commit."""

from __future__ import annotations

from alembic import op

revision = "004_event_outbox"
down_revision = "003_duplicate_payments"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE IF NOT EXISTS event_outbox (
            id           uuid PRIMARY KEY,
            type         text NOT NULL,
            occurred_at  timestamptz NOT NULL DEFAULT now(),
            data         jsonb NOT NULL,
            published_at timestamptz
        )
    """)
    # The relay reads the unpublished ones, oldest first; pruning reads the published ones.
    op.execute(
        "CREATE INDEX IF NOT EXISTS event_outbox_unpublished_idx ON event_outbox (occurred_at) "
        "WHERE published_at IS NULL"
    )
    op.execute(
        "CREATE INDEX IF NOT EXISTS event_outbox_published_idx ON event_outbox (published_at) "
        "WHERE published_at IS NOT NULL"
    )
