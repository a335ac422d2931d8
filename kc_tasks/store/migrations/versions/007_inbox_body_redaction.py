"""payment_events.body_redacted_at: when an event's body was reduced to its redacted form."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "007_inbox_body_redaction"
down_revision = "006_payments"
branch_labels = None
depends_on = None

INDEX = "payment_events_whole_body_idx"


def upgrade() -> None:
    # Null while the body is whole (kc_tasks/payments/redaction.py; KC_INBOX_BODY_DAYS).
    op.execute("ALTER TABLE payment_events ADD COLUMN IF NOT EXISTS body_redacted_at timestamptz")
    # The raw body is never rewritten but once, to its redacted form, stamped with the time of
    # it: a role that may reduce bodies still cannot forge one. Only an UPDATE that sets one of
    # these columns runs it; marking an event enqueued does not.
    op.execute("""
        CREATE OR REPLACE FUNCTION payment_events_body_reduced_once() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF OLD.body_redacted_at IS NOT NULL
               AND (NEW.body IS DISTINCT FROM OLD.body OR NEW.body_redacted_at IS DISTINCT FROM OLD.body_redacted_at)
            THEN
                RAISE EXCEPTION 'payment_events body of % % is already redacted', OLD.provider, OLD.event_id
                    USING ERRCODE = 'check_violation';
            END IF;
            IF NEW.body IS DISTINCT FROM OLD.body AND NEW.body_redacted_at IS NULL THEN
                RAISE EXCEPTION 'payment_events body of % % is rewritten only to its redacted form',
                    OLD.provider, OLD.event_id
                    USING ERRCODE = 'check_violation';
            END IF;
            RETURN NEW;
        END
        $$
    """)
    op.execute("DROP TRIGGER IF EXISTS payment_events_body_reduced_once ON payment_events")
    op.execute(
        "CREATE TRIGGER payment_events_body_reduced_once BEFORE UPDATE OF body, body_redacted_at ON payment_events "
        "FOR EACH ROW EXECUTE FUNCTION payment_events_body_reduced_once()"
    )
    # The redaction task goes through the bodies still whole in primary-key order: this index
    # holds those alone, so the ones already reduced are never read again. Built concurrently:
    # the webhooks go on storing events meanwhile. A build that failed leaves an invalid index:
    # dropped and built again.
    with op.get_context().autocommit_block():
        conn = op.get_bind()
        invalid = conn.execute(
            sa.text("SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:name)"), {"name": INDEX}
        ).scalar()
        if invalid:
            conn.execute(sa.text(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}"))
        conn.execute(
            sa.text(
                f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {INDEX} ON payment_events (provider, event_id) "
                "WHERE body_redacted_at IS NULL"
            )
        )
