"""The `kc-tasks` command as an operator runs it: exit codes and one clear line on failure."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

from kombu import Connection

from tests.builders import MIGRATIONS as ALL
from tests.harness import kc
from tests.services import AMQP, PG, purge_amqp, run_sql


def test_migrate_creates_the_database_then_reports_it_up_to_date(
    empty_database_url: str, db_route: Callable[[str], str]
) -> None:
    first = kc("migrate", DATABASE_URL=db_route(empty_database_url))
    assert first.returncode == 0, first.stderr
    assert f"applied {len(ALL)} migration(s)" in first.stdout
    second = kc("migrate", DATABASE_URL=db_route(empty_database_url))
    assert second.returncode == 0 and "is up to date" in second.stdout


def test_migrate_and_ensure_index_do_their_session_level_work_on_kc_direct_database_url(database_url: str) -> None:
    """With DATABASE_URL a pooler's, `kc-tasks migrate` and `kc-tasks ensure-index` hold their
    advisory locks and build the index on KC_DIRECT_DATABASE_URL, and say which server that is:
    here the pooler does not even answer."""
    name = database_url.rsplit("/", 1)[1]
    run_sql(database_url, "DROP INDEX unique_active_purchase")
    environment = {"DATABASE_URL": f"postgresql://postgres@127.0.0.1:1/{name}", "KC_DIRECT_DATABASE_URL": database_url}
    migrated = kc("migrate", **environment)
    assert migrated.returncode == 0 and migrated.stdout.strip() == f"127.0.0.1:5432/{name} is up to date"
    repaired = kc("ensure-index", **environment)
    assert repaired.returncode == 0 and "index created successfully" in repaired.stdout, repaired.stderr


def test_migrate_understands_the_old_workers_postgres_variables(empty_database_url: str) -> None:
    name = empty_database_url.rsplit("/", 1)[1]
    result = kc("migrate", POSTGRES_HOST="127.0.0.1", POSTGRES_PORT="5432", POSTGRES_USER="postgres", POSTGRES_DB=name)
    assert result.returncode == 0, result.stderr
    assert f"127.0.0.1:5432/{name}" in result.stdout


def test_an_unreachable_database_gives_one_line_without_the_password() -> None:
    result = kc("migrate", DATABASE_URL="postgresql://kc:s3cret-pw@127.0.0.1:1/shop")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot reach PostgreSQL at 127.0.0.1:1/shop" in lines[0]
    assert "DATABASE_URL" in lines[0]
    assert "s3cret-pw" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_a_malformed_setting_is_named() -> None:
    result = kc("migrate", DATABASE_URL="mysql://root@localhost/shop")
    assert result.returncode == 1
    assert "DATABASE_URL must be a postgresql:// URL" in result.stderr


def test_ensure_index_check_reports_and_repair_makes_it_usable(
    database_url: str, db_route: Callable[[str], str]
) -> None:
    run_sql(database_url, "DROP INDEX unique_active_purchase")
    check = kc("ensure-index", "--check", DATABASE_URL=db_route(database_url))
    assert check.returncode == 1
    assert "unique_active_purchase index not usable: it does not exist; fix: kc-tasks ensure-index" in check.stdout
    repair = kc("ensure-index", DATABASE_URL=db_route(database_url))
    assert repair.returncode == 0, repair.stdout + repair.stderr
    assert "index created successfully" in repair.stdout
    assert "unique_active_purchase index found" in repair.stdout
    again = kc("ensure-index", "--check", DATABASE_URL=db_route(database_url))
    assert again.returncode == 0 and again.stdout.strip() == "unique_active_purchase index found"


def test_ensure_index_without_migrations_fails_and_says_so(empty_database_url: str) -> None:
    from tests.services import admin

    admin(f"CREATE DATABASE {empty_database_url.rsplit('/', 1)[1]}")
    result = kc("ensure-index", DATABASE_URL=empty_database_url)
    assert result.returncode == 1
    assert "run kc-tasks migrate" in result.stdout


def test_enqueue_publishes_one_json_task_by_name_to_purchases() -> None:
    purge_amqp()
    student, course = str(uuid.uuid4()), str(uuid.uuid4())
    result = kc(
        "enqueue",
        "--student",
        student,
        "--course",
        course,
        "--payment",
        "pay_cli_1",
        "--amount",
        "4999",
        "--currency",
        "INR",
        CELERY_BROKER_URL=AMQP,
        DATABASE_URL=f"{PG}/unused",
    )
    assert result.returncode == 0, result.stderr
    task_id = result.stdout.strip()
    assert uuid.UUID(task_id)
    with Connection(AMQP) as conn:
        message = conn.SimpleQueue("purchases").get(timeout=5)
        assert message.headers["task"] == "kc_tasks.create_purchase"
        assert message.headers["id"] == task_id
        assert message.content_type == "application/json"
        args, kwargs, _ = json.loads(message.body)
        assert args == [] and kwargs == {
            "payment_id": "pay_cli_1",
            "student_id": student,
            "course_id": course,
            "amount_cents": 4999,
            "currency": "INR",
        }
        message.ack()


def test_enqueue_refuses_a_bad_purchase_before_sending() -> None:
    result = kc(
        "enqueue",
        "--student",
        "nope",
        "--course",
        str(uuid.uuid4()),
        "--payment",
        "p",
        "--amount",
        "-5",
        "--currency",
        "INR",
        CELERY_BROKER_URL=AMQP,
    )
    assert result.returncode == 1
    assert "student_id: must be a UUID string" in result.stderr
    assert "amount_cents" in result.stderr


def test_enqueue_with_the_broker_down_gives_one_line_without_the_password() -> None:
    result = kc(
        "enqueue",
        "--student",
        str(uuid.uuid4()),
        "--course",
        str(uuid.uuid4()),
        "--payment",
        "p",
        "--amount",
        "1",
        "--currency",
        "INR",
        CELERY_BROKER_URL="amqp://guest:hunter2@127.0.0.1:1//",
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot reach the broker at amqp://guest:**@127.0.0.1:1//" in lines[0]
    assert "hunter2" not in result.stderr
