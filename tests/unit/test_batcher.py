"""PurchaseBatcher's dispatching, in front of Celery's own pool semaphore (kombu's
LaxBoundedSemaphore, as the worker uses it): who goes alone, who goes together, and what a
lost connection leaves behind. The end-to-end behaviour is in tests/e2e/test_pipeline.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kombu.asynchronous.semaphore import LaxBoundedSemaphore

from kc_tasks.worker import BATCH_MAX, PURCHASE_TASK, PurchaseBatcher


@dataclass
class FakeTask:
    time_limit: float | None = None
    soft_time_limit: float | None = None


@dataclass
class FakeRequest:
    id: str
    name: str = PURCHASE_TASK
    time_limits: tuple[float | None, float | None] = (None, None)
    task: FakeTask = field(default_factory=FakeTask)
    type: str = PURCHASE_TASK
    request_dict: dict = field(default_factory=dict)
    body: bytes = b"[[], {}, {}]"
    content_type: str = "application/json"
    content_encoding: str = "utf-8"
    _apply_result: Any = None

    def revoked(self) -> bool:
        return False


class FakePool:
    def __init__(self) -> None:
        self.jobs: list[list[str]] = []

    def apply_async(self, target: Any, args: tuple, **options: Any) -> object:
        self.jobs.append([job[1] for job in args[0]])
        return self  # something a weak reference can point at


class Controller:
    """The parts of Celery's WorkController the batcher uses: a pool behind a semaphore of
    one slot per process; _process_task sends one request to the pool."""

    def __init__(self, processes: int) -> None:
        self.semaphore = LaxBoundedSemaphore(processes)
        self._quick_acquire = self.semaphore.acquire
        self._quick_release = self.semaphore.release
        self.pool = FakePool()
        self.alone: list[str] = []

    def _process_task(self, request: FakeRequest) -> None:
        self.alone.append(request.id)

    def _process_task_sem(self, request: FakeRequest) -> None:
        self._quick_acquire(self._process_task, request)


def batcher(processes: int = 2) -> tuple[PurchaseBatcher, Controller]:
    controller = Controller(processes)
    return PurchaseBatcher(controller, controller._process_task_sem, run_batch=lambda jobs: []), controller


def test_a_request_that_finds_a_free_process_goes_alone_at_once() -> None:
    b, controller = batcher()
    b(FakeRequest("a"))
    b(FakeRequest("b"))
    assert controller.alone == ["a", "b"]
    assert controller.pool.jobs == []


def test_requests_that_wait_for_a_process_go_to_it_together_when_it_is_free() -> None:
    b, controller = batcher(processes=1)
    b(FakeRequest("first"))
    for i in range(5):
        b(FakeRequest(f"r{i}"))
    assert controller.alone == ["first"] and controller.pool.jobs == [], "nobody is free yet"
    controller.semaphore.release()  # the first one's process is done
    assert controller.pool.jobs == [["r0", "r1", "r2", "r3", "r4"]]


def test_a_batch_takes_at_most_batch_max_and_the_rest_waits_for_the_next_process() -> None:
    b, controller = batcher(processes=1)
    b(FakeRequest("first"))
    for i in range(BATCH_MAX + 3):
        b(FakeRequest(f"r{i}"))
    controller.semaphore.release()
    assert [len(job) for job in controller.pool.jobs] == [BATCH_MAX]
    controller.semaphore.release()
    assert [len(job) for job in controller.pool.jobs] == [BATCH_MAX, 3]


def test_other_tasks_and_tasks_with_time_limits_are_never_held() -> None:
    b, controller = batcher(processes=1)
    b(FakeRequest("first"))
    b(FakeRequest("check", name="kc_tasks.verify_purchase_index"))
    b(FakeRequest("limited", time_limits=(30, None)))
    controller.semaphore.release()
    controller.semaphore.release()
    assert controller.alone == ["first", "check", "limited"]


def test_after_a_lost_connection_new_requests_are_not_stuck_behind_the_old_ones() -> None:
    """Celery clears its semaphore, and the callbacks waiting on it, when the broker
    connection goes; a batcher still waiting for its callback would never dispatch again."""
    b, controller = batcher(processes=1)
    b(FakeRequest("first"))
    b(FakeRequest("waiting"))
    controller.semaphore.clear()  # Consumer.on_close
    b.clear()
    b(FakeRequest("after"))
    assert controller.alone == ["first", "after"]
    assert controller.pool.jobs == [], "the old connection's request is the broker's to deliver again"


def test_without_celerys_semaphore_every_request_goes_alone() -> None:
    controller = Controller(1)
    b = PurchaseBatcher(controller, controller._process_task, run_batch=lambda jobs: [])  # -P threads, solo
    for i in range(3):
        b(FakeRequest(f"r{i}"))
    assert controller.alone == ["r0", "r1", "r2"]
