"""purged_dead_letters: the tasks whose dead letter an operator purged.

A purged dead letter is the task's last outcome: its inbox event is then final (its body is
redacted in time) and is never sent again. `kc-tasks dlq purge` records each here. A new table:
nothing live waits on it.
"""

from __future__ import annotations

from alembic import op

revision = "011_purged_dead_letters"
down_revision = "010_pending_refunds"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE IF NOT EXISTS purged_dead_letters (
            task_id    text PRIMARY KEY,
            task       text,
            payment_id text,
            purged_at  timestamptz NOT NULL DEFAULT now()
        )
    """)
