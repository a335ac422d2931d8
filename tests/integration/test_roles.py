"""The processes' database roles on a real PostgreSQL: kc_tasks/store/migrations/roles.sql, then
`kc-tasks migrate`'s grants, and what a login in each role can and cannot do.

The three group roles are cluster-wide and stay (a concurrent run may use them); each test
makes login roles of its own in them and drops them after.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import psycopg
import sqlalchemy as sa
from celery import Celery
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from kc_tasks.core.payload import RevocationKwargs, parse_purchase
from kc_tasks.core.settings import normalize_database_url
from kc_tasks.payments import inbox
from kc_tasks.payments.redaction import redact_final
from kc_tasks.providers import razorpay
from kc_tasks.store import db, events, roles
from kc_tasks.store.index_guard import IndexGuard, ensure_index
from kc_tasks.store.migrate import migrate
from kc_tasks.worker.purchases import create_purchase
from kc_tasks.worker.revocations import revoke
from tests import provider_samples as s
from tests.builders import MIGRATIONS as ALL
from tests.services import ROLES_SQL, admin, run_sql, set_up_roles

# What kc_web and kc_worker may do to each table, and to which columns of it alone, as the
# catalog holds it: (role, table, privilege, column or None for the whole table).
GRANTS = """
SELECT r.rolname, c.relname, x.privilege_type, NULL
  FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) x JOIN pg_roles r ON r.oid = x.grantee
 WHERE c.relnamespace = 'public'::regnamespace AND r.rolname IN ('kc_web', 'kc_worker')
UNION ALL
SELECT r.rolname, c.relname, x.privilege_type, a.attname
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
       CROSS JOIN LATERAL aclexplode(a.attacl) x JOIN pg_roles r ON r.oid = x.grantee
 WHERE c.relnamespace = 'public'::regnamespace AND r.rolname IN ('kc_web', 'kc_worker')
"""
OWNERS = "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'"


def grants(url: str) -> set[tuple[str, str, str, frozenset[str]]]:
    """(role, table, privilege, the columns it is limited to: none for the whole table)."""
    found: dict[tuple[str, str, str], set[str]] = {}
    for role, table, privilege, column in run_sql(url, GRANTS):
        found.setdefault((role, table, privilege), set()).update([column] if column else [])
    return {(*key, frozenset(columns)) for key, columns in found.items()}


def expected_grants() -> set[tuple[str, str, str, frozenset[str]]]:
    """roles.PRIVILEGES read the same way: "UPDATE (status)" is UPDATE on status alone."""
    expected = set()
    for role, tables in roles.PRIVILEGES.items():
        for table, privileges in tables.items():
            for privilege in privileges:
                kind, _, columns = privilege.partition(" (")
                expected.add((role, table, kind, frozenset(c.strip() for c in columns.rstrip(")").split(",") if c)))
    return expected


def engine_for(url: str) -> Engine:
    return db.make_engine(normalize_database_url(url), poolclass=NullPool)


def refused(url: str, statement: str) -> str:
    """The SQLSTATE with which PostgreSQL refuses the statement, or 'done'."""
    try:
        run_sql(url, statement)
    except psycopg.Error as exc:
        return exc.sqlstate or "?"
    return "done"


DENIED = "42501"  # insufficient_privilege, "must be owner" included
FORBIDDEN = "23514"  # check_violation: what payment_events' trigger answers a forged body


def test_roles_sql_then_migrate_give_each_role_exactly_its_privileges(roles_db: str) -> None:
    assert grants(roles_db) == expected_grants()
    assert run_sql(roles_db, OWNERS) == [(roles.OWNER,)], "kc_owner owns every table, alembic_version too"
    groups = ", ".join(f"'{group}'" for group in (roles.WEB, roles.WORKER, roles.OWNER))
    # roles.sql's roles are groups: nobody logs in as one (other tests' kc_t_* logins are theirs).
    assert run_sql(roles_db, f"SELECT rolname FROM pg_roles WHERE rolname IN ({groups}) AND rolcanlogin") == []


def test_setting_up_again_changes_nothing_and_takes_back_a_stray_grant(roles_db: str) -> None:
    run_sql(roles_db, "GRANT DELETE ON student_course_purchases TO kc_web")
    run_sql(roles_db, "GRANT UPDATE (body) ON payment_events TO kc_web")
    set_up_roles(roles_db)
    set_up_roles(roles_db)

    assert grants(roles_db) == expected_grants()
    assert run_sql(roles_db, OWNERS) == [(roles.OWNER,)]


def test_the_web_role_stores_webhooks_and_reads_purchases_but_cannot_change_them(
    roles_db: str, login: Callable[..., str]
) -> None:
    run_sql(
        roles_db,
        "INSERT INTO student_course_purchases (student_id, course_id, payment_id, amount_cents, currency) "
        "VALUES (gen_random_uuid(), gen_random_uuid(), 'pay_held', 100, 'INR')",
    )
    web = login(roles.WEB)
    engine = engine_for(web)
    body = s.encode(s.razorpay_paid(str(uuid.uuid4()), str(uuid.uuid4()), "pay_web"))
    try:
        receipt = inbox.receive(engine, Celery(broker="memory://"), razorpay.parse(body, "evt_web"), body)
        with engine.connect() as conn:
            held = conn.execute(sa.select(db.purchases.c.payment_id)).scalars().all()
    finally:
        engine.dispose()

    assert (receipt.status, receipt.new) == ("enqueued", True), "stored, then marked enqueued"
    assert held == ["pay_held"]
    assert refused(web, "UPDATE student_course_purchases SET is_active = false") == DENIED
    assert refused(web, "DELETE FROM student_course_purchases") == DENIED
    assert (
        refused(
            web,
            "INSERT INTO student_course_purchases (student_id, course_id, payment_id, amount_cents, currency) "
            "VALUES (gen_random_uuid(), gen_random_uuid(), 'pay_forged', 1, 'INR')",
        )
        == DENIED
    )
    assert refused(web, "DELETE FROM payment_events") == DENIED, "the inbox is kept"
    assert refused(web, "UPDATE payment_events SET body = '{}'") == DENIED, "a stored body is never rewritten"
    assert refused(web, "DROP TABLE student_course_purchases") == DENIED
    assert refused(web, "TRUNCATE payment_events") == DENIED
    assert run_sql(roles_db, "SELECT count(*) FROM student_course_purchases") == [(1,)]


def test_the_worker_role_makes_and_revokes_purchases_but_cannot_alter_the_schema(
    roles_db: str, login: Callable[..., str]
) -> None:
    worker = login(roles.WORKER)
    engine = engine_for(worker)
    purchase = parse_purchase(
        {
            "payment_id": "pay_worker",
            "student_id": str(uuid.uuid4()),
            "course_id": str(uuid.uuid4()),
            "amount_cents": 49900,
            "currency": "INR",
        }
    )
    try:
        guard = IndexGuard(300)
        assert guard.refresh(engine).usable, "the beat task's index check runs as the worker"
        made = create_purchase(engine, guard, purchase)
        again = create_purchase(engine, guard, purchase)
        revoked = revoke(engine, RevocationKwargs(payment_id="pay_worker", reason="refund", refund_id="rfnd_1"))
        broker = Celery(broker="memory://")
        # The relays lock the rows they take (FOR UPDATE): that needs UPDATE on a column.
        relayed = (inbox.enqueue_received(engine, broker, older_than=0), events.publish_pending(engine, broker))
        pruned = events.prune(engine)
    finally:
        engine.dispose()

    assert made.created and not again.created and made.purchase_id == again.purchase_id
    assert (revoked.purchase_id, revoked.revoked) == (made.purchase_id, True)
    assert (relayed, pruned) == ((0, 0), 0)
    assert run_sql(roles_db, "SELECT payment_id, is_active FROM student_course_purchases") == [("pay_worker", False)]
    assert run_sql(roles_db, "SELECT type FROM event_outbox ORDER BY occurred_at") == [
        ("purchase.created",),
        ("purchase.revoked",),
    ]
    assert refused(worker, "DELETE FROM student_course_purchases") == DENIED, "purchases are never deleted"
    assert refused(worker, "UPDATE student_course_purchases SET amount_cents = 0") == DENIED, "nor rewritten"
    run_sql(
        roles_db,
        "INSERT INTO payment_events (provider, event_id, type, status, body, received_at) "
        "VALUES ('stripe', 'evt_old', 'charge.refunded', 'ignored', %s, now() - interval '40 days')",
        (json.dumps({"id": "evt_old", "receipt_email": s.EMAIL}),),
    )
    assert refused(worker, "UPDATE payment_events SET body = '{}'") == FORBIDDEN, "a body is never forged"
    engine = engine_for(worker)
    try:
        reduced = redact_final(engine, 30 * 86400)
    finally:
        engine.dispose()
    assert reduced == 1, "but the redaction task, run as the worker, reduces an old one"
    assert run_sql(roles_db, "SELECT body FROM payment_events") == [('{"id":"evt_old"}',)]
    assert refused(worker, "UPDATE payment_events SET body = '{}'") == FORBIDDEN, "once, for good"
    assert refused(worker, "UPDATE payment_events SET body_redacted_at = NULL") == FORBIDDEN
    assert refused(worker, "ALTER TABLE student_course_purchases ADD COLUMN note text") == DENIED
    assert refused(worker, "DROP INDEX unique_active_purchase") == DENIED, "ensure-index is the owner's"
    assert refused(worker, "CREATE TABLE kc_stray (id int)") == DENIED
    assert refused(worker, "DROP TABLE payment_events") == DENIED


def test_a_fresh_deployment_migrated_by_the_owners_login(empty_database_url: str, login: Callable[..., str]) -> None:
    """roles.sql on an empty database, then migrate and ensure-index as a login in kc_owner."""
    name = empty_database_url.rsplit("/", 1)[1]
    admin(f"CREATE DATABASE {name}")
    run_sql(empty_database_url, ROLES_SQL.read_text())
    owner = login(roles.OWNER, empty_database_url)

    applied = migrate(normalize_database_url(owner))
    run_sql(owner, "DROP INDEX unique_active_purchase")
    engine = engine_for(owner)
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            status, _ = ensure_index(conn)
    finally:
        engine.dispose()

    assert applied[-1] == ALL[-1]
    assert status.usable, "the owner rebuilds the index"
    assert run_sql(empty_database_url, OWNERS) == [(roles.OWNER,)], "not the login role: kc_owner"
    assert grants(empty_database_url) == expected_grants()
