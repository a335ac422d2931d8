"""`kc-tasks migrate` on an empty server, on a table the old worker left, and twice at once."""

from __future__ import annotations

import threading

import pytest

from kc_tasks.migrate import migrate
from kc_tasks.settings import normalize_database_url
from tests.conftest import admin, run_sql

ALL = [
    "001_create_purchases",
    "002_add_idempotency_constraints",
    "003_duplicate_payments",
    "004_event_outbox",
    "005_payment_events",
]


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


def test_from_nothing_it_creates_the_database_and_the_contract_schema(empty_database_url: str) -> None:
    assert migrate(normalize_database_url(empty_database_url)) == ALL
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
    assert migrate(normalize_database_url(empty_database_url)) == [], "a second run does nothing"
    assert run_sql(empty_database_url, "SELECT version_num FROM alembic_version") == [(ALL[-1],)]


def test_two_runs_at_once_both_succeed_and_apply_everything_once(empty_database_url: str) -> None:
    results: list[list[str]] = []
    failures: list[BaseException] = []

    def run() -> None:
        try:
            results.append(migrate(normalize_database_url(empty_database_url)))
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
