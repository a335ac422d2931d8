"""`kc-tasks migrate` on an empty server, on a table the old worker left, and twice at once."""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable

import psycopg
import pytest
import sqlalchemy as sa

from kc_tasks.core.settings import normalize_database_url
from kc_tasks.store.migrate import migrate
from tests.builders import MIGRATIONS as ALL
from tests.services import admin, run_sql


def columns(url: str) -> dict[str, tuple[str, str]]:
    rows = run_sql(
        url,
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_name = 'student_course_purchases'",
    )
    return {name: (kind, nullable) for name, kind, nullable in rows}


def index_state(url: str, name: str) -> tuple | None:
    rows = run_sql(
        url,
        "SELECT i.indisvalid, i.indisunique, pg_get_indexdef(i.indexrelid) FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = %s",
        (name,),
    )
    return rows[0] if rows else None


def test_from_nothing_it_creates_the_database_and_the_contract_schema(
    empty_database_url: str, db_route: Callable[[str], str]
) -> None:
    assert migrate(normalize_database_url(db_route(empty_database_url))) == ALL
    assert columns(empty_database_url) == {
        "id": ("uuid", "NO"),
        "student_id": ("uuid", "NO"),
        "course_id": ("uuid", "NO"),
        "payment_id": ("text", "NO"),
        "amount_cents": ("bigint", "NO"),
        "currency": ("character", "NO"),
        "metadata": ("jsonb", "YES"),
        "is_active": ("boolean", "NO"),
        "created_at": ("timestamp with time zone", "NO"),
        "updated_at": ("timestamp with time zone", "NO"),
    }
    valid, unique, definition = index_state(empty_database_url, "unique_active_purchase")
    assert valid and unique
    assert definition.endswith("(student_id, course_id) WHERE (is_active = true)")
    assert run_sql(
        empty_database_url,
        "SELECT contype FROM pg_constraint WHERE conname = 'student_course_purchases_payment_id_key'",
    ) == [("u",)]
    assert migrate(normalize_database_url(db_route(empty_database_url))) == [], "a second run does nothing"
    assert run_sql(empty_database_url, "SELECT version_num FROM alembic_version") == [(ALL[-1],)]


def test_two_runs_at_once_both_succeed_and_apply_everything_once(
    empty_database_url: str, db_route: Callable[[str], str]
) -> None:
    """Through a transaction pooler too: the lock is a transaction's, and the runs that wait for
    it hold none of the pooler's few server connections between their tries."""
    results: list[list[str]] = []
    failures: list[BaseException] = []

    def run() -> None:
        try:
            results.append(migrate(normalize_database_url(db_route(empty_database_url))))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures, failures
    assert sorted(results, key=len) == [[], [], ALL]
    assert index_state(empty_database_url, "unique_active_purchase")[0] is True


LEGACY_TABLE = """
CREATE TABLE student_course_purchases (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    student_id uuid NOT NULL, course_id uuid NOT NULL, payment_id text NOT NULL,
    amount_cents bigint NOT NULL, currency char(3) NOT NULL,
    is_active boolean NOT NULL DEFAULT true, created_at timestamptz NOT NULL DEFAULT now()
)"""


@pytest.fixture
def legacy_url(empty_database_url: str) -> str:
    """A database as the old worker left it: no constraints, duplicates from the bug."""
    name = empty_database_url.rsplit("/", 1)[1]
    admin(f"CREATE DATABASE {name}")
    run_sql(empty_database_url, LEGACY_TABLE)
    s1, c1, s2, c2 = ("11111111-1111-4111-8111-11111111111" + str(i) for i in range(4))
    rows = [
        # three active purchases of one course by one student: the oldest must stay active
        (s1, c1, "pay_a_old", 30, True),
        (s1, c1, "pay_a_mid", 20, True),
        (s1, c1, "pay_a_new", 10, True),
        # an earlier deactivated purchase and one active one: nothing to change
        (s2, c2, "pay_b_refunded", 50, False),
        (s2, c2, "pay_b_active", 5, True),
        # one payment inserted twice by racing deliveries
        (s2, c1, "pay_c_twice", 40, True),
        (s2, c1, "pay_c_twice", 39, True),
    ]
    for student, course, payment, hours_ago, active in rows:
        run_sql(
            empty_database_url,
            "INSERT INTO student_course_purchases (student_id, course_id, payment_id, amount_cents, currency, "
            "is_active, created_at) VALUES (%s, %s, %s, 100, 'INR', %s, now() - make_interval(hours => %s))",
            (student, course, payment, active, hours_ago),
        )
    return empty_database_url


def test_onto_an_old_table_with_duplicates_it_keeps_the_oldest_and_deletes_nothing(legacy_url: str, caplog) -> None:
    caplog.set_level("INFO")
    assert migrate(normalize_database_url(legacy_url)) == ALL
    active = run_sql(legacy_url, "SELECT payment_id, is_active FROM student_course_purchases ORDER BY created_at")
    assert active == [
        ("pay_b_refunded", False),
        ("pay_c_twice", True),
        (
            "pay_c_twice#duplicate:"
            + run_sql(
                legacy_url, "SELECT id::text FROM student_course_purchases WHERE payment_id LIKE 'pay_c_twice#%'"
            )[0][0],
            False,
        ),
        ("pay_a_old", True),
        ("pay_a_mid", False),
        ("pay_a_new", False),
        ("pay_b_active", True),
    ]
    assert "deactivated 1 purchases that repeated an earlier purchase's payment id" in caplog.text
    assert "deactivated 2 duplicate active purchases" in caplog.text
    assert index_state(legacy_url, "unique_active_purchase")[:2] == (True, True)
    assert "metadata" in columns(legacy_url) and "updated_at" in columns(legacy_url)


def test_an_invalid_index_left_behind_is_replaced_by_a_valid_one(legacy_url: str) -> None:
    with pytest.raises(Exception, match="could not create unique index"):
        run_sql(
            legacy_url,
            "CREATE UNIQUE INDEX CONCURRENTLY unique_active_purchase "
            "ON student_course_purchases (student_id, course_id) WHERE is_active = true",
        )
    assert index_state(legacy_url, "unique_active_purchase")[0] is False
    migrate(normalize_database_url(legacy_url))
    assert index_state(legacy_url, "unique_active_purchase")[0] is True
    invalid = run_sql(legacy_url, "SELECT count(*) FROM pg_index WHERE NOT indisvalid")
    assert invalid == [(0,)], "no invalid index is left anywhere"


def test_the_sql_file_for_consoles_builds_the_same_index(legacy_url: str) -> None:
    from pathlib import Path

    import psycopg

    script = (Path(__file__).parents[2] / "scripts" / "create-purchase-index.sql").read_text()
    statements = [
        s.strip()
        for s in "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("--")).split(";")
        if s.strip()
    ]
    with psycopg.connect(legacy_url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)
    assert index_state(legacy_url, "unique_active_purchase")[:2] == (True, True)
    assert (
        run_sql(
            legacy_url,
            "SELECT count(*) FROM student_course_purchases WHERE is_active "
            "GROUP BY student_id, course_id HAVING count(*) > 1",
        )
        == []
    )


# --- the old worker's tables, as deployments have them -------------------------------------

S, C = "22222222-2222-4222-8222-222222222222", "33333333-3333-4333-8333-333333333333"
# Written in this order; the ids sort the other way, so that "oldest" cannot be read off them.
FIRST, SECOND, THIRD = (
    "ffffffff-0000-4000-8000-000000000003",
    "77777777-0000-4000-8000-000000000002",
    ("00000000-0000-4000-8000-000000000001"),
)


def legacy_database(url: str, table: str, rows: list[tuple[str, str]]) -> None:
    """A database whose student_course_purchases is `table`, with `rows` (id, payment id) of
    one student and course written in order, as the old worker wrote them."""
    admin(f"CREATE DATABASE {url.rsplit('/', 1)[1]}")
    run_sql(url, table)
    for row_id, payment in rows:
        run_sql(
            url,
            "INSERT INTO student_course_purchases (id, student_id, course_id, payment_id, amount_cents, currency) "
            "VALUES (%s, %s, %s, %s, 100, 'INR')",
            (row_id, S, C, payment),
        )


def active_payments(url: str) -> list[tuple[str, bool]]:
    return run_sql(url, "SELECT payment_id, is_active FROM student_course_purchases ORDER BY payment_id")


def test_without_created_at_the_first_row_written_is_the_oldest(empty_database_url: str) -> None:
    """No created_at: every row gets the migration's time, and the order the rows are stored in
    (the order the old worker wrote them) decides which is oldest, not their ids."""
    legacy_database(
        empty_database_url,
        "CREATE TABLE student_course_purchases (id uuid PRIMARY KEY, student_id uuid NOT NULL, "
        "course_id uuid NOT NULL, payment_id text NOT NULL, amount_cents bigint NOT NULL, currency char(3) NOT NULL, "
        "is_active boolean NOT NULL DEFAULT true)",
        [(FIRST, "pay_first"), (SECOND, "pay_second"), (THIRD, "pay_first")],
    )
    assert migrate(normalize_database_url(empty_database_url)) == ALL
    assert active_payments(empty_database_url) == [
        ("pay_first", True),
        (f"pay_first#duplicate:{THIRD}", False),
        ("pay_second", False),
    ]


def test_without_is_active_every_old_row_was_in_force_and_the_oldest_stays(empty_database_url: str) -> None:
    legacy_database(
        empty_database_url,
        "CREATE TABLE student_course_purchases (id uuid PRIMARY KEY, student_id uuid NOT NULL, "
        "course_id uuid NOT NULL, payment_id text NOT NULL, amount_cents bigint NOT NULL, currency char(3) NOT NULL, "
        "created_at timestamptz NOT NULL DEFAULT clock_timestamp())",
        [(FIRST, "pay_first"), (SECOND, "pay_second")],
    )
    assert migrate(normalize_database_url(empty_database_url)) == ALL
    assert active_payments(empty_database_url) == [("pay_first", True), ("pay_second", False)]
    assert index_state(empty_database_url, "unique_active_purchase")[:2] == (True, True)


def test_with_text_ids_purchases_and_refunds_are_made_after_the_migration(
    empty_database_url: str,
) -> None:
    from kc_tasks.core.payload import RevocationKwargs
    from kc_tasks.store import db
    from kc_tasks.store.index_guard import IndexGuard
    from kc_tasks.worker.purchases import PurchaseOutcome, create_purchase
    from kc_tasks.worker.revocations import revoke
    from tests.builders import order

    legacy_database(
        empty_database_url,
        "CREATE TABLE student_course_purchases (id text PRIMARY KEY, student_id uuid NOT NULL, "
        "course_id uuid NOT NULL, payment_id text NOT NULL, amount_cents bigint NOT NULL, currency char(3) NOT NULL, "
        "is_active boolean NOT NULL DEFAULT true, created_at timestamptz NOT NULL DEFAULT clock_timestamp())",
        [(FIRST, "pay_first"), (SECOND, "pay_second")],
    )
    assert migrate(normalize_database_url(empty_database_url)) == ALL
    assert active_payments(empty_database_url) == [("pay_first", True), ("pay_second", False)]
    engine = db.make_engine(normalize_database_url(empty_database_url))
    try:
        guard = IndexGuard(ttl=300)
        assert guard.status(engine).usable
        rival = order(S, C)
        assert create_purchase(engine, guard, rival) == PurchaseOutcome(FIRST, created=False, duplicate_of=FIRST)
        assert create_purchase(engine, guard, order(S)).created
        assert create_purchase(engine, guard, order(payment="pay_first")) == PurchaseOutcome(FIRST, created=False)
        refund = RevocationKwargs(payment_id="pay_first", reason="refund", refund_id=None)
        assert revoke(engine, refund).as_result() == {"purchase_id": FIRST, "revoked": True}
        late = order(payment="pay_refunded_first")
        revoke(engine, RevocationKwargs(payment_id=late.payment_id, reason="refund", refund_id=None))
        assert create_purchase(engine, guard, late).created, "a purchase made after its refund, inactive"
        assert dict(active_payments(empty_database_url))["pay_refunded_first"] is False
    finally:
        engine.dispose()


def test_a_unique_index_under_another_name_is_kept_and_the_contract_ones_are_added(empty_database_url: str) -> None:
    legacy_database(
        empty_database_url,
        "CREATE TABLE student_course_purchases (id uuid PRIMARY KEY, student_id uuid NOT NULL, "
        "course_id uuid NOT NULL, payment_id text NOT NULL CONSTRAINT old_payment_unique UNIQUE, "
        "amount_cents bigint NOT NULL, currency char(3) NOT NULL, is_active boolean NOT NULL DEFAULT true, "
        "created_at timestamptz NOT NULL DEFAULT clock_timestamp());"
        "CREATE UNIQUE INDEX old_active_pair ON student_course_purchases (student_id, course_id) WHERE is_active",
        [(FIRST, "pay_first")],
    )
    assert migrate(normalize_database_url(empty_database_url)) == ALL
    assert index_state(empty_database_url, "unique_active_purchase")[:2] == (True, True)
    assert run_sql(
        empty_database_url,
        "SELECT contype FROM pg_constraint WHERE conname = 'student_course_purchases_payment_id_key'",
    ) == [("u",)]
    assert index_state(empty_database_url, "old_active_pair")[:2] == (True, True), "the deployment's own is left"
    assert active_payments(empty_database_url) == [("pay_first", True)]


def test_a_duplicate_purchase_written_while_002_builds_its_index_is_deactivated_and_the_build_retried(
    legacy_url: str, caplog
) -> None:
    """The old worker still writing during the migration: a second active purchase of a pair,
    uncommitted when unique_active_purchase starts building, commits while the build waits
    for it. The build fails on it; 002 deactivates it and builds again. The test holds the
    ensure-index lock until the writer's row is in, so that it lands after the clean-up."""
    import psycopg

    caplog.set_level("INFO")
    lock = psycopg.connect(legacy_url, autocommit=True)
    lock.execute("SELECT pg_advisory_lock(hashtext('kc_tasks:ensure-index'))")
    failures: list[BaseException] = []

    def run() -> None:
        try:
            migrate(normalize_database_url(legacy_url))
        except BaseException as exc:
            failures.append(exc)

    migrating = threading.Thread(target=run, daemon=True)
    migrating.start()
    deadline = time.monotonic() + 60
    while "waiting for another process holding kc_tasks:ensure-index" not in caplog.text:
        assert migrating.is_alive() and time.monotonic() < deadline, f"002 never reached the index: {failures}"
        time.sleep(0.05)
    writer = psycopg.connect(legacy_url)
    writer.execute(
        "INSERT INTO student_course_purchases (student_id, course_id, payment_id, amount_cents, currency) "
        "SELECT student_id, course_id, 'pay_a_during_build', 100, 'INR' FROM student_course_purchases "
        "WHERE payment_id = 'pay_a_old'"
    )
    lock.execute("SELECT pg_advisory_unlock(hashtext('kc_tasks:ensure-index'))")
    lock.close()
    blocked = (
        "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid)) "
        "AND query LIKE 'CREATE UNIQUE INDEX%%'"
    )
    while not run_sql(legacy_url, blocked, (writer.info.backend_pid,))[0][0]:
        assert migrating.is_alive() and time.monotonic() < deadline, (
            f"the build never waited for the writer: {failures}"
        )
        time.sleep(0.05)
    writer.commit()
    writer.close()
    migrating.join(120)
    assert not migrating.is_alive() and not failures, failures
    assert "a duplicate active purchase arrived during the build; retrying" in caplog.text
    assert run_sql(
        legacy_url,
        "SELECT payment_id, is_active FROM student_course_purchases WHERE payment_id LIKE 'pay_a_%' ORDER BY 1",
    ) == [("pay_a_during_build", False), ("pay_a_mid", False), ("pay_a_new", False), ("pay_a_old", True)]
    assert index_state(legacy_url, "unique_active_purchase")[:2] == (True, True)


def test_migration_008_gives_up_its_lock_wait_instead_of_queueing_the_webhooks_behind_it(database_url: str) -> None:
    """A transaction reading payment_events holds its lock: the ALTER waits LOCK_TIMEOUT at most
    per try, in which the webhooks' inserts queue behind it, then lets them through."""
    migration = importlib.import_module("kc_tasks.store.migrations.versions.008_event_body_digest")
    plain = database_url
    with psycopg.connect(plain, autocommit=True) as setup:
        setup.execute("ALTER TABLE payment_events DROP COLUMN body_sha256")
    reader = psycopg.connect(plain)
    reader.execute("SELECT count(*) FROM payment_events")  # its lock held until the transaction ends
    engine = sa.create_engine(normalize_database_url(plain))
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            with pytest.raises(sa.exc.OperationalError, match="lock timeout"):
                migration.add_column(conn, tries=2, pause=0)
            reader.rollback()
            migration.add_column(conn, tries=2, pause=0)
            columns = conn.execute(
                sa.text("SELECT column_name FROM information_schema.columns WHERE table_name = 'payment_events'")
            ).scalars()
            assert "body_sha256" in set(columns)
            assert conn.execute(sa.text("SHOW lock_timeout")).scalar() == "0", "the session's setting is put back"
    finally:
        reader.close()
        engine.dispose()
