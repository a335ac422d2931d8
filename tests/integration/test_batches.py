"""kc_tasks.worker.batching.run_batch, as a pool process runs it for requests that waited together
(kc_tasks.worker.batching.PurchaseBatcher), on the real PostgreSQL and RabbitMQ: one statement for
the batch's new purchases, then each request as a task of its own."""

from __future__ import annotations

import ast
import json
import logging
import uuid
from typing import Any
from unittest.mock import ANY

import pytest
from celery import Celery

from kc_tasks.worker import batching, purchases
from kc_tasks.worker.batching import Raised
from tests.builders import kwargs
from tests.services import run_sql

TASK = "kc_tasks.create_purchase"


def job(body: Any, content_type: str = "application/json") -> tuple[Any, ...]:
    """What Celery's Request hands its tracer (celery.worker.request.create_request_cls)."""
    task_id = str(uuid.uuid4())
    request = {"id": task_id, "task": TASK, "retries": 0, "delivery_info": {"routing_key": "purchases"}}
    raw = json.dumps(body).encode() if content_type == "application/json" else body
    return (TASK, task_id, request, raw, content_type, "utf-8")


def purchase_job(order: dict[str, Any]) -> tuple[Any, ...]:
    return job([[], order, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])


def results(outcomes: list[Any]) -> list[Any]:
    """Each request's result as Celery reports it, or the exception type of a failure."""
    seen: list[Any] = []
    for outcome in outcomes:
        if isinstance(outcome, Raised):
            exc = outcome.exc_info.exception
            seen.append(type(getattr(exc, "exc", exc)).__name__)  # unwrapped: ExceptionWithTraceback
        else:
            failed, value, _runtime = outcome
            seen.append(type(value.exception).__name__ if failed else ast.literal_eval(value))
    return seen


def test_a_batch_makes_each_purchase_once_and_reports_each_request_alone(celery_app: Celery, app_database) -> None:
    new = [kwargs() for _ in range(4)]
    held = kwargs()
    assert results(batching.run_batch([purchase_job(held)])) == [{"purchase_id": ANY, "created": True}]
    rival = kwargs(student_id=held["student_id"], course_id=held["course_id"])
    batch = [*new, new[0], held, rival, kwargs(currency="rupees")]
    outcomes = batching.run_batch([purchase_job(order) for order in batch])
    seen = results(outcomes)
    stored = dict(run_sql(app_database, "SELECT payment_id, id::text FROM student_course_purchases"))
    assert seen[:4] == [{"purchase_id": stored[o["payment_id"]], "created": True} for o in new]
    assert seen[4] == {"purchase_id": stored[new[0]["payment_id"]], "created": False}, "a repeat finds it"
    assert seen[5] == seen[6] == {"purchase_id": stored[held["payment_id"]], "created": False}
    assert seen[7] == "InvalidPurchase"
    assert run_sql(app_database, "SELECT payment_id FROM duplicate_payments") == [(rival["payment_id"],)]
    assert run_sql(
        app_database,
        "SELECT count(DISTINCT created_at) FROM student_course_purchases WHERE payment_id = ANY(%s)",
        ([o["payment_id"] for o in new],),
    ) == [(1,)], "the four new purchases were inserted together"


def test_when_the_batch_statement_fails_each_request_still_makes_its_own_purchase(
    celery_app: Celery, app_database, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    whole = purchases.create_all

    def broken(engine: Any, guard: Any, batch: list) -> list:
        if len(batch) > 1:
            raise RuntimeError("a bug met by batches only")
        return whole(engine, guard, batch)

    monkeypatch.setattr(purchases, "create_all", broken)
    orders = [kwargs() for _ in range(3)]
    with caplog.at_level(logging.ERROR):
        seen = results(batching.run_batch([purchase_job(order) for order in orders]))
    assert [r["created"] for r in seen] == [True, True, True]
    assert run_sql(app_database, "SELECT count(DISTINCT created_at) FROM student_course_purchases") == [(3,)]
    assert "making a batch of 3 purchases failed; they go one by one" in caplog.text


def test_a_request_whose_tracer_raises_fails_alone(celery_app: Celery, app_database) -> None:
    """A body the tracer refuses to decode (pickle: JSON only) raises in the tracer itself;
    the pool reports that request failed, and the others of its batch are made."""
    orders = [kwargs() for _ in range(2)]
    pickled = job(b"\x80\x04K\x01.", content_type="application/x-python-serialize")
    seen = results(batching.run_batch([purchase_job(orders[0]), pickled, purchase_job(orders[1])]))
    assert seen[1] == "ContentDisallowed"
    assert [seen[0]["created"], seen[2]["created"]] == [True, True]
    assert run_sql(app_database, "SELECT count(*) FROM student_course_purchases") == [(2,)]


def test_each_task_of_a_batch_takes_its_purchase_as_the_batch_made_it(
    celery_app: Celery, app_database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the seam (kc_tasks.worker.seam): the tasks make nothing again."""

    def made_again(*_: Any) -> None:
        raise AssertionError("a task of the batch made its purchase again")

    monkeypatch.setattr(purchases, "create_purchase", made_again)
    orders = [kwargs() for _ in range(3)]
    seen = results(batching.run_batch([purchase_job(order) for order in orders]))
    stored = dict(run_sql(app_database, "SELECT payment_id, id::text FROM student_course_purchases"))
    assert seen == [{"purchase_id": stored[o["payment_id"]], "created": True} for o in orders]
