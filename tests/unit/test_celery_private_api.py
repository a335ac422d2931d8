"""Each piece of Celery's, kombu's and billiard's undocumented API that kc_tasks relies on, by
name, on the installed classes: private names (a leading underscore) and public-looking ones
that Celery's documentation does not offer to applications (the consumer's hooks, the
worker's request, the pool's semaphore, the tracer). An upgrade that removes or reshapes one
fails here, with its name, instead of a worker that hangs.

The fence: only these modules use them, each for one reason.

- kc_tasks/worker/batching.py: PurchaseBatcher and run_batch, in front of the prefork pool
  (its semaphore, apply_async, Celery's tracer). KC_BATCHING=off turns every use off.
- kc_tasks/worker/consumer.py: the worker's Consumer, Request and Task classes: dead letters
  for messages Celery would drop, lost-worker counting, gathered task events, the Redis
  hand-back, the consumer's steps.
- kc_tasks/worker/outage.py: stopping and resuming consumption while PostgreSQL is away, and
  the requests the worker holds (celery.worker.state).
- kc_tasks/worker/seam.py: the one module that writes into a request dict (the seam
  between a batch and its tasks, and the first-seen stamp).
- kc_tasks/worker/process.py: which pool implementation the worker runs (-P threads sizes the
  engine per thread).

test_no_module_outside_the_fence_uses_one checks every other module of kc_tasks by name (an
attribute read, an override, or the name as a string); test_the_fence_finds_a_use_outside_it
shows the check failing on a sample. A few attributes share their name with documented
public API elsewhere (a Task's on_failure, a message's body, a context's id): those cannot be
found by name, and are fenced by their imports instead (only fence modules import the
worker's internals: celery.worker, celery.app.trace, celery.concurrency, billiard, kombu's
transports and event loop)."""

from __future__ import annotations

import ast
import inspect
import pathlib

import pytest
from billiard.pool import Pool as BilliardPool
from celery import concurrency
from celery.app.base import Celery
from celery.app.trace import fast_trace_task, trace_task_ret
from celery.worker import components, state
from celery.worker.consumer import Consumer
from celery.worker.request import Request
from celery.worker.worker import WorkController
from kombu.asynchronous.hub import Hub
from kombu.asynchronous.semaphore import LaxBoundedSemaphore
from kombu.transport.redis import QoS as RedisQoS

import kc_tasks

FENCE = {
    "worker/batching.py",
    "worker/consumer.py",
    "worker/outage.py",
    "worker/seam.py",
    "worker/process.py",
}
# Modules of Celery, kombu and billiard whose import is a use of their internals.
INTERNAL_MODULES = ("celery.worker", "celery.app.trace", "celery.concurrency", "billiard", "kombu.asynchronous",
                    "kombu.transport")  # fmt: skip
# Names of undocumented attributes that documented public API also uses, elsewhere: found by
# their owner's import, not by name.
SHARED_WITH_PUBLIC = {
    "id",  # Task.request.id
    "type",
    "body",  # kombu's Message.body
    "content_type",  # kombu's Message
    "content_encoding",
    "message",
    "name",  # Task.name
    "task",
    "acknowledge",
    "acknowledged",
    "reject",  # kombu's Message.reject
    "revoked",
    "on_success",  # Task.on_success
    "on_failure",  # Task.on_failure
    "acquire",
    "release",
    "requests",
    "pool",
    "concurrency",
    "controller",
    "value",
    "connection_for_write",  # the app's, Celery.connection_for_write (core/confirms.py)
}

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
    # consumer.Consumer: the hooks it overrides, and the consumer's parts it reads.
    (Consumer, "connection_for_write"),
    (Consumer, "ensure_connected"),
    (Consumer, "on_decode_error"),
    (Consumer, "on_unknown_message"),
    (Consumer, "on_unknown_task"),
    (Consumer, "on_invalid_task"),
    (Consumer, "on_task_request"),
    (Consumer, "connection_errors"),
    (Consumer, "controller"),
    (Consumer, "hub"),
    (Consumer.Blueprint, "default_steps"),
    (Hub, "call_soon"),
    (Hub, "call_later"),
    # seam: the request dict the tracer makes the task's request of; the request's task.
    (Request, "request_dict"),
    (Request, "name"),
    (Request, "task"),
    # batching.PurchaseBatcher: the worker's pool and its semaphore.
    (WorkController, "pool"),
    (WorkController, "semaphore"),
    # process: which pool the worker runs.
    (concurrency, "get_implementation"),
    (WorkController, "pool_cls"),
    (WorkController, "concurrency"),
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


def uses(source: str, names: set[str]) -> set[str]:
    """The names of `names` a module uses: read as an attribute, overridden (a method or class
    attribute of that name), written as a string (getattr), or imported from Celery's,
    kombu's or billiard's internals (its module named, as "module:name")."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in names:
            found.add(node.attr)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name in names:
                    found.add(item.name)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
            found.add(node.value)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(INTERNAL_MODULES):
            found.update(f"{node.module}:{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith(INTERNAL_MODULES))
    return found


def fenced_names() -> set[str]:
    return {attribute for _, attribute in ATTRIBUTES if attribute not in SHARED_WITH_PUBLIC} | {
        "_quick_acquire",
        "_quick_release",
    }


def breaches(root: pathlib.Path, fence: set[str]) -> dict[str, set[str]]:
    """Each module under `root` outside `fence` that uses an undocumented name, with them."""
    names = fenced_names()
    found = {
        path.relative_to(root).as_posix(): uses(path.read_text(), names)
        for path in root.rglob("*.py")
        if path.relative_to(root).as_posix() not in fence
    }
    return {module: used for module, used in found.items() if used}


def test_no_module_outside_the_fence_uses_one() -> None:
    assert breaches(pathlib.Path(kc_tasks.__file__).parent, FENCE) == {}


def test_every_module_of_the_fence_uses_one() -> None:
    """A module that no longer needs Celery's internals leaves the fence."""
    root = pathlib.Path(kc_tasks.__file__).parent
    assert {module for module in FENCE if uses((root / module).read_text(), fenced_names())} == FENCE


def test_the_fence_finds_a_use_outside_it(tmp_path: pathlib.Path) -> None:
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "hooks.py").write_text(
        "from celery.worker.request import Request\n"
        "class C:\n    def on_send_event_buffered(self): pass\n"
        "def f(r, c):\n    r.request_dict['k'] = 1\n    return getattr(c, '_flush_events')\n"
    )
    (tmp_path / "web" / "fine.py").write_text("def f(task, message):\n    return task.request.id, message.body\n")
    (tmp_path / "inside.py").write_text("def f(r):\n    return r.request_dict\n")
    assert breaches(tmp_path, {"inside.py"}) == {
        "web/hooks.py": {
            "celery.worker.request:Request",
            "on_send_event_buffered",
            "request_dict",
            "_flush_events",
        }
    }


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
