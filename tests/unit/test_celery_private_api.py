"""Each piece of Celery's (and kombu's, billiard's) private API that kc_tasks relies on, by
name, on the installed classes. An upgrade that removes or reshapes one fails here, with its
name, instead of a worker that hangs. The way out meanwhile: KC_BATCHING=off.

kc_tasks/worker/batching.py is the only module that uses them; the worker's Consumer
(kc_tasks/worker/consumer.py) overrides a few of the consumer's public methods, and calls batching for
the rest."""

from __future__ import annotations

import inspect

import pytest
from billiard.pool import Pool as BilliardPool
from celery.app.base import Celery
from celery.app.trace import fast_trace_task, trace_task_ret
from celery.worker import components, state
from celery.worker.consumer import Consumer
from celery.worker.request import Request
from celery.worker.worker import WorkController
from kombu.asynchronous.semaphore import LaxBoundedSemaphore
from kombu.transport.redis import QoS as RedisQoS

# (owner, attribute): what kc_tasks uses, and where Celery defines it.
ATTRIBUTES = [
    # batching.PurchaseBatcher: the worker's pool semaphore and how Celery hands a request to it.
    (WorkController, "_process_task_sem"),
    (WorkController, "_process_task"),
    (LaxBoundedSemaphore, "acquire"),
    (LaxBoundedSemaphore, "release"),
    # batching: the request's parts the tracer takes, and how the pool reports back to it.
    (Request, "_apply_result"),
    (Request, "time_limits"),
    (Request, "type"),
    (Request, "id"),
    (Request, "request_dict"),
    (Request, "body"),
    (Request, "content_type"),
    (Request, "content_encoding"),
    (Request, "revoked"),
    (Request, "on_accepted"),
    (Request, "on_success"),
    (Request, "on_failure"),
    # batching.run_batch: which of the tracer's two entry points the worker set up.
    (Celery, "use_fast_trace_task"),
    # batching.flush_task_events, for worker.Consumer's gathered task events.
    (Consumer, "_flush_events"),
    # outage.Gate: how the worker stops and resumes consuming a queue (what `celery control
    # cancel_consumer` and `add_consumer` call), from another thread too, and the requests it
    # holds, given back to the broker (worker.KcRequest.give_back).
    (Consumer, "cancel_task_queue"),
    (Consumer, "add_task_queue"),
    (Consumer, "call_soon"),
    (Consumer, "task_consumer"),
    (state, "requests"),
    (state, "reserved_requests"),
    (state, "scheduled_requests"),
    (state, "active_requests"),
    (Request, "reject"),
    (Request, "acknowledged"),
    # Public methods worker.Consumer and worker.KcRequest override or read.
    (Consumer, "on_send_event_buffered"),
    (Consumer, "create_task_handler"),
    (Consumer, "on_close"),
    (Consumer, "on_connection_error_after_connected"),
    (Request, "message"),
    (Request, "acknowledge"),
    # worker.hand_back: kombu's restore of what a Redis consumer held.
    (RedisQoS, "restore_unacked"),
]


@pytest.mark.parametrize(("owner", "attribute"), ATTRIBUTES, ids=lambda x: getattr(x, "__name__", x))
def test_celery_still_has(owner: type, attribute: str) -> None:
    assert hasattr(owner, attribute) or attribute in inspect.getsource(owner), (
        f"{getattr(owner, '__module__', owner.__name__)}.{getattr(owner, '__qualname__', '')}.{attribute} is gone: "
        "kc_tasks relies on it (batching: KC_BATCHING=off)"
    )


def test_the_worker_sets_the_semaphore_shortcuts() -> None:
    """WorkController._quick_acquire/_quick_release are set on the instance by the Pool step."""
    source = inspect.getsource(components)
    for attribute in ("_quick_acquire", "_quick_release"):
        assert f"w.{attribute} = w.semaphore." in source, f"celery.worker.components no longer sets {attribute}"
    assert "value" in inspect.getsource(LaxBoundedSemaphore.__init__), "LaxBoundedSemaphore.value is gone"


def test_no_other_module_of_kc_tasks_uses_a_private_attribute_of_celery_kombu_or_billiard() -> None:
    """The fence: one module, so that KC_BATCHING=off turns every use off."""
    import pathlib
    import re

    import kc_tasks

    names = {attribute for _, attribute in ATTRIBUTES if attribute.startswith("_")} | {
        "_quick_acquire",
        "_quick_release",
    }
    root = pathlib.Path(kc_tasks.__file__).parent
    users = {
        path.relative_to(root).as_posix()
        for path in root.rglob("*.py")
        if any(re.search(rf"\.{name}\b", path.read_text()) for name in names)
    }
    assert users == {"worker/batching.py"}


def test_the_tracer_takes_what_batching_gives_it() -> None:
    """kc_tasks.worker.batching._trace_args gives (type, id, request_dict, body, content_type, content_encoding)."""
    for trace in (fast_trace_task, trace_task_ret):
        names = list(inspect.signature(trace).parameters)
        assert names[1:6] == ["uuid", "request", "body", "content_type", "content_encoding"], (trace.__name__, names)


def test_the_pool_takes_the_callbacks_batching_gives_it() -> None:
    parameters = inspect.signature(BilliardPool.apply_async).parameters
    for name in ("accept_callback", "callback", "error_callback", "correlation_id"):
        assert name in parameters, f"billiard.pool.Pool.apply_async no longer takes {name}"


def test_the_worker_consumer_leaves_out_native_delayed_delivery_and_nothing_else() -> None:
    """kc_tasks.worker.consumer.Consumer's steps are Celery's but native delayed delivery, found by the
    name Celery gives it: were it renamed, the step would come back unnoticed (and with it the
    wait on every broker URL, a dead node's too, after each reconnect)."""
    from kc_tasks.worker.consumer import DELAYED_DELIVERY_STEP
    from kc_tasks.worker.consumer import Consumer as KcConsumer

    assert DELAYED_DELIVERY_STEP in Consumer.Blueprint.default_steps, "Celery renamed its delayed-delivery step"
    assert list(KcConsumer.Blueprint.default_steps) == [
        step for step in Consumer.Blueprint.default_steps if step != DELAYED_DELIVERY_STEP
    ]
