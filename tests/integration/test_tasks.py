"""The tasks inside a real worker (celery.contrib.pytest's celery_session_worker) on RabbitMQ and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from tests.builders import kwargs
from tests.harness import Seen
from tests.services import run_sql


def send(app: Celery, name: str = "kc_tasks.create_purchase", **options: Any) -> str:
    return app.send_task(name, queue="purchases", **options).id


def test_a_purchase_and_its_repeat_return_the_contract_result(
    celery_app: Celery, seen: Seen, app_database: str
) -> None:
    order = kwargs(metadata={"source": "app"})
    first, second = send(celery_app, kwargs=order), send(celery_app, kwargs=order)
    seen.wait(first)
    seen.wait(second)
    results = [seen.results[first], seen.results[second]]
    assert sorted(r["created"] for r in results) == [False, True]
    assert results[0]["purchase_id"] == results[1]["purchase_id"]
    assert run_sql(app_database, "SELECT id::text FROM student_course_purchases") == [(results[0]["purchase_id"],)]


def test_a_connection_dropped_between_tasks_costs_no_retry(celery_app: Celery, seen: Seen, app_database: str) -> None:
    warm = send(celery_app, kwargs=kwargs())
    seen.wait(warm)
    run_sql(
        app_database,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'kc_tasks' AND datname = current_database()",
    )
    task_id = send(celery_app, kwargs=kwargs(payment_id="pay_after_outage"))
    seen.wait(task_id)
    assert seen.results[task_id]["created"] is True, "a second try on a fresh connection, in the same attempt"
    assert seen.retries == []
    assert run_sql(
        app_database, "SELECT count(*) FROM student_course_purchases WHERE payment_id = 'pay_after_outage'"
    ) == [(1,)]


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        (kwargs(student_id="not-a-uuid"), "student_id: must be a UUID string"),
        (kwargs(amount_cents=-1), "amount_cents"),
        (kwargs(surprise=True), "surprise: is not a create_purchase kwarg"),
    ],
)
def test_a_bad_purchase_fails_at_once_without_retries(
    celery_app: Celery, seen: Seen, app_database: str, bad: dict, named: str, caplog: pytest.LogCaptureFixture
) -> None:
    task_id = send(celery_app, kwargs=bad)
    seen.wait(task_id)
    assert named in str(seen.failures[task_id])
    assert type(seen.failures[task_id]).__name__ == "InvalidPurchase"
    assert seen.retries == []
    assert f"create_purchase {task_id} gave up on payment {bad['payment_id']} after 1 attempt(s)" in caplog.text
    assert run_sql(app_database, "SELECT count(*) FROM student_course_purchases") == [(0,)]


def test_positional_arguments_are_refused(celery_app: Celery, seen: Seen) -> None:
    order = kwargs()
    task_id = send(celery_app, args=list(order.values()))
    seen.wait(task_id)
    assert "keyword arguments only" in str(seen.failures[task_id])


def test_verify_purchase_index_reports_a_missing_index_with_the_fix(
    celery_app: Celery, seen: Seen, app_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="kc_tasks")
    run_sql(app_database, "DROP INDEX unique_active_purchase")
    try:
        task_id = send(celery_app, name="kc_tasks.verify_purchase_index")
        seen.wait(task_id)
    finally:
        run_sql(
            app_database,
            "CREATE UNIQUE INDEX unique_active_purchase ON student_course_purchases "
            "(student_id, course_id) WHERE is_active = true",
        )
    assert seen.results[task_id] == {
        "index": "unique_active_purchase",
        "usable": False,
        "reason": "it does not exist",
        "fix": "kc-tasks ensure-index",
        "dead_letters": 0,
        "unmapped": 0,
    }
    assert (
        "unique_active_purchase index not usable: it does not exist - purchases use the fallback method; "
        "fix: kc-tasks ensure-index" in caplog.text
    )
    task_id = send(celery_app, name="kc_tasks.verify_purchase_index")
    seen.wait(task_id)
    assert seen.results[task_id]["usable"] is True


def test_a_pickled_message_is_refused_and_the_worker_goes_on(
    celery_app: Celery, seen: Seen, app_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    pickled = send(celery_app, kwargs=kwargs(payment_id="pay_pickled"), serializer="pickle")
    good = send(celery_app, kwargs=kwargs(payment_id="pay_json"))
    seen.wait(good)
    assert pickled not in seen.results and pickled not in seen.failures, "never executed"
    assert "ContentDisallowed" in caplog.text
    assert run_sql(app_database, "SELECT payment_id FROM student_course_purchases") == [("pay_json",)]
