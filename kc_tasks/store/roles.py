"""The database roles of the processes, and what each may do to each table.

kc_tasks/store/migrations/roles.sql creates the three roles (as a superuser; README, Security): kc_owner owns
the tables, kc_web is the web process, kc_worker the worker (beat's tasks run in it).
`kc-tasks migrate` calls `grant` after every upgrade: each role gets exactly the privileges
below, on the tables as they are now, so a table a migration adds is granted in the same run.
A database without the roles (a developer's, say) is left as it is.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from kc_tasks.store import db

logger = logging.getLogger(__name__)

OWNER, WEB, WORKER = "kc_owner", "kc_web", "kc_worker"

# By role, by table: the privileges it is granted; on a table not listed, none. An UPDATE
# names the columns the code sets (SELECT ... FOR UPDATE needs one of them, no more).
PRIVILEGES: dict[str, dict[str, tuple[str, ...]]] = {
    WEB: {
        # The webhooks store each event, then mark it enqueued: the raw body is never rewritten.
        db.payment_events.name: ("SELECT", "INSERT", "UPDATE (status)"),
        # GET /students/{id}/courses; the admin pages read a payment's story from these.
        db.purchases.name: ("SELECT",),
        db.duplicate_payments.name: ("SELECT",),
        db.revocations.name: ("SELECT",),
        db.payments.name: ("SELECT",),
        db.event_outbox.name: ("SELECT",),
        db.restorations.name: ("SELECT",),
        db.purged_dead_letters.name: ("SELECT",),
    },
    WORKER: {
        # Purchases are inserted and deactivated, never rewritten or deleted; the index check
        # EXPLAINs an INSERT.
        db.purchases.name: ("SELECT", "INSERT", "UPDATE (is_active, updated_at)"),
        db.duplicate_payments.name: ("SELECT", "INSERT"),
        db.revocations.name: ("SELECT", "INSERT", "UPDATE (purchase_id, revoked_at)"),
        # Each payment's row, upserted (and so locked) by create_purchase and revoke_purchase.
        db.payments.name: ("SELECT", "INSERT", "UPDATE (revoked_at)"),
        # Events are written, marked published, then pruned.
        db.event_outbox.name: ("SELECT", "INSERT", "UPDATE (published_at)", "DELETE"),
        # The inbox relay marks what it enqueued; reconciliation stores what it enqueues; the
        # redaction task reduces old bodies to their redacted form (kc_tasks/payments/redaction.py).
        db.payment_events.name: ("SELECT", "INSERT", "UPDATE (status, body, body_redacted_at)"),
        # A restoration is the owner's (kc-tasks payment restore deletes the revocation it
        # overrules); the worker reads it, as it reads revocations.
        db.restorations.name: ("SELECT",),
        # Reconciliation's list of Razorpay refunds still pending: bookkeeping, deleted once final.
        db.pending_refunds.name: ("SELECT", "INSERT", "UPDATE (checked_at)", "DELETE"),
        # Recorded by kc-tasks dlq purge, run by operators as kc_worker.
        db.purged_dead_letters.name: ("SELECT", "INSERT"),
    },
}
# Alembic's own table: the owner's alone.
TABLES = (*db.metadata.tables, "alembic_version")


def grant(conn: Connection) -> list[str]:
    """Give each role that exists its privileges, and only those, on kc_tasks' tables; the roles
    granted. Run by the tables' owner (or a superuser) in one transaction: no other session sees
    a role between its revoke and its grants. Idempotent."""
    present = set(
        conn.execute(
            sa.text("SELECT rolname FROM pg_roles WHERE rolname IN (:web, :worker)"), {"web": WEB, "worker": WORKER}
        )
        .scalars()
        .all()
    )
    tables = set(conn.execute(sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars())
    granted = []
    for role in (WEB, WORKER):
        if role not in present:
            continue
        # Names and privileges are the constants above, never input: quoting adds nothing.
        for table in TABLES:
            if table in tables:
                # Column grants, UPDATE (status) say, go with the table's.
                conn.execute(sa.text(f"REVOKE ALL ON TABLE {table} FROM {role}"))
        for table, privileges in PRIVILEGES[role].items():
            if table in tables:
                conn.execute(sa.text(f"GRANT {', '.join(privileges)} ON TABLE {table} TO {role}"))
        granted.append(role)
    if granted:
        logger.info("granted %s their privileges on kc_tasks' tables", " and ".join(granted))
    else:
        logger.info("roles %s and %s do not exist: no grants (see kc_tasks/store/migrations/roles.sql)", WEB, WORKER)
    return granted
