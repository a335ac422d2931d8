"""What "usable" means for unique_active_purchase, asked of a real PostgreSQL, and its repair."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from kc_tasks.core.settings import normalize_database_url
from kc_tasks.store import db
from kc_tasks.store.index_guard import diagnose, ensure_index


@pytest.fixture
def conn(database_url: str) -> Iterator[Connection]:
    engine = db.make_engine(normalize_database_url(database_url), poolclass=NullPool)
    with engine.connect() as connection:
        yield connection.execution_options(isolation_level="AUTOCOMMIT")
    engine.dispose()


BROKEN = {
    "missing": ("DROP INDEX unique_active_purchase", "it does not exist"),
    "not unique": (
        "DROP INDEX unique_active_purchase; CREATE INDEX unique_active_purchase "
        "ON student_course_purchases (student_id, course_id) WHERE is_active = true",
        "not unique",
    ),
    "no predicate": (
        "DROP INDEX unique_active_purchase; CREATE UNIQUE INDEX unique_active_purchase "
        "ON student_course_purchases (student_id, course_id)",
        "predicate is None",
    ),
    "other columns": (
        "DROP INDEX unique_active_purchase; CREATE UNIQUE INDEX unique_active_purchase "
        "ON student_course_purchases (student_id) WHERE is_active = true",
        "covers ['student_id']",
    ),
    "other predicate": (
        "DROP INDEX unique_active_purchase; CREATE UNIQUE INDEX unique_active_purchase "
        "ON student_course_purchases (student_id, course_id) WHERE is_active AND amount_cents > 0",
        "its predicate is",
    ),
    "invalid": (
        "UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'unique_active_purchase'::regclass",
        "INVALID",
    ),
}


def test_the_migrated_index_is_usable(conn: Connection) -> None:
    status = diagnose(conn)
    assert status.usable
    assert status.describe() == "unique_active_purchase index found"


@pytest.mark.parametrize("case", list(BROKEN))
def test_an_index_that_cannot_arbitrate_counts_as_missing_and_ensure_index_repairs_it(conn, sql, case) -> None:
    statement, reason = BROKEN[case]
    sql(statement)
    status = diagnose(conn)
    assert not status.usable
    assert reason in status.reason
    repaired, deactivated = ensure_index(conn)
    assert repaired.usable and deactivated == 0
    assert sql("SELECT pg_get_indexdef('unique_active_purchase'::regclass)")[0][0].endswith(
        "USING btree (student_id, course_id) WHERE (is_active = true)"
    )


def test_ensure_index_deactivates_duplicates_that_arrived_without_the_index(conn, sql) -> None:
    sql("DROP INDEX unique_active_purchase")
    student, course = "22222222-2222-4222-8222-222222222222", "33333333-3333-4333-8333-333333333333"
    for i, hours in enumerate((3, 2, 1)):
        sql(
            "INSERT INTO student_course_purchases (student_id, course_id, payment_id, amount_cents, currency, "
            "created_at) VALUES (%s, %s, %s, 1, 'INR', now() - make_interval(hours => %s))",
            (student, course, f"pay_{i}", hours),
        )
    status, deactivated = ensure_index(conn)
    assert status.usable and deactivated == 2
    assert sql("SELECT payment_id, is_active FROM student_course_purchases ORDER BY payment_id") == [
        ("pay_0", True),
        ("pay_1", False),
        ("pay_2", False),
    ]


def test_without_the_table_the_reason_says_to_migrate(empty_database_url: str) -> None:
    from tests.services import admin

    admin(f"CREATE DATABASE {empty_database_url.rsplit('/', 1)[1]}")
    engine = db.make_engine(normalize_database_url(empty_database_url), poolclass=NullPool)
    with engine.connect() as c:
        status = diagnose(c)
    engine.dispose()
    assert not status.usable and "run kc-tasks migrate" in status.reason
