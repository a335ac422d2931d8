"""kc_tasks.worker.seam, the seam through Celery's request dict, as one: what a batch hands
a request reaches its task's `task.request` (Celery's tracer makes a Context of the request
dict), for those kwargs only; and the first-seen stamp of a task sent directly."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from celery.app.task import Context

from kc_tasks.core.errors import DatabaseUnavailable
from kc_tasks.core.names import CREATE_PURCHASE, REVOKE_PURCHASE, SEEN_AT, SEEN_BY
from kc_tasks.core.payload import parse_purchase
from kc_tasks.worker import seam
from kc_tasks.worker.purchases import PurchaseOutcome


def order() -> dict[str, Any]:
    return {
        "payment_id": f"pay_{uuid.uuid4().hex}",
        "student_id": str(uuid.uuid4()),
        "course_id": str(uuid.uuid4()),
        "amount_cents": 4999,
        "currency": "INR",
    }


def task_request(request_dict: dict[str, Any], kwargs: dict[str, Any]) -> Context:
    """What Celery's tracer makes of a request dict for the task (celery.app.trace)."""
    return Context(request_dict, args=(), called_directly=False, kwargs=kwargs)


def test_what_a_batch_made_reaches_the_task_of_those_kwargs_as_it_was_made() -> None:
    kwargs = order()
    made = seam.Made(kwargs, parse_purchase(kwargs), PurchaseOutcome("p1", created=True))
    request_dict: dict[str, Any] = {"id": "t1", "task": CREATE_PURCHASE}
    seam.hand_made(request_dict, made)
    assert seam.made_for(task_request(request_dict, dict(kwargs)), dict(kwargs)) is made


def test_a_task_alone_or_with_other_kwargs_gets_nothing() -> None:
    kwargs = order()
    assert seam.made_for(task_request({"id": "t1"}, kwargs), kwargs) is None
    request_dict: dict[str, Any] = {"id": "t1"}
    seam.hand_made(request_dict, seam.Made(kwargs, parse_purchase(kwargs), DatabaseUnavailable("away")))
    other = order()
    assert seam.made_for(task_request(request_dict, other), other) is None
    request_dict[seam.MADE] = ("not", "made")  # anything else under the key is not taken
    assert seam.made_for(task_request(request_dict, kwargs), kwargs) is None


@dataclass
class ReceivedRequest:
    name: str
    request_dict: dict[str, Any] = field(default_factory=dict)


def test_a_create_purchase_sent_directly_is_stamped_first_seen_on_arrival_and_no_other() -> None:
    direct = ReceivedRequest(CREATE_PURCHASE)
    seam.stamp_arrival(request=direct)
    assert direct.request_dict[SEEN_BY] == "task" and isinstance(direct.request_dict[SEEN_AT], float)
    through_inbox = ReceivedRequest(CREATE_PURCHASE, {SEEN_BY: "razorpay", SEEN_AT: 1.0})
    seam.stamp_arrival(request=through_inbox)
    assert through_inbox.request_dict == {SEEN_BY: "razorpay", SEEN_AT: 1.0}
    revocation = ReceivedRequest(REVOKE_PURCHASE)
    seam.stamp_arrival(request=revocation)
    assert revocation.request_dict == {}
