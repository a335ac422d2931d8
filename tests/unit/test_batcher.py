"""PurchaseBatcher's dispatching, in front of Celery's own pool semaphore (kombu's
LaxBoundedSemaphore, as the worker uses it): who goes alone, who goes together, and what a
lost connection leaves behind. The end-to-end behaviour is in tests/e2e/test_pipeline.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kombu.asynchronous.semaphore import LaxBoundedSemaphore

from kc_tasks.core.names import CREATE_PURCHASE
from kc_tasks.worker.batching import BATCH_MAX, HOLD_UNTIL, PurchaseBatcher


@dataclass
class FakeTask:
    time_limit: float | None = None
    soft_time_limit: float | None = None


@dataclass
class FakeRequest:
    id: str
    name: str = CREATE_PURCHASE
    time_limits: tuple[float | None, float | None] = (None, None)
    task: FakeTask = field(default_factory=FakeTask)
    type: str = CREATE_PURCHASE
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


class Timer:
    """The event loop's call_later, fired by hand."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []

    def call_later(self, delay: float, callback: Any) -> Entry:
        entry = Entry(delay, callback)
        self.entries.append(entry)
        return entry

    def fire(self) -> None:
        due, self.entries = self.entries, []
        for entry in due:
            if not entry.cancelled:
                entry.callback()


@dataclass
class Entry:
    delay: float
    callback: Any
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


def holding_batcher(processes: int = 2) -> tuple[PurchaseBatcher, Controller, Timer]:
    controller, timer = Controller(processes), Timer()
    b = PurchaseBatcher(
        controller, controller._process_task_sem, run_batch=lambda jobs: [], call_later=timer.call_later, hold=0.002
    )
    return b, controller, timer


def test_while_the_other_processes_are_busy_the_last_free_one_waits_for_more_requests() -> None:
    b, controller, timer = holding_batcher(processes=2)
    b(FakeRequest("first"))  # the other process is free: goes at once
    b(FakeRequest("a"))  # the last free process: held back
    b(FakeRequest("b"))
    assert controller.alone == ["first"] and controller.pool.jobs == []
    assert [entry.delay for entry in timer.entries] == [0.002]
    timer.fire()
    assert controller.pool.jobs == [["a", "b"]]


def test_a_request_held_back_alone_goes_alone_when_the_hold_ends() -> None:
    b, controller, timer = holding_batcher(processes=1)
    b(FakeRequest("lonely"))
    assert controller.alone == []
    timer.fire()
    assert controller.alone == ["lonely"]


def test_a_held_process_goes_at_once_when_enough_requests_have_arrived() -> None:
    b, controller, timer = holding_batcher(processes=1)
    for i in range(HOLD_UNTIL):
        b(FakeRequest(f"r{i}"))
    assert controller.pool.jobs == [[f"r{i}" for i in range(HOLD_UNTIL)]]
    assert all(entry.cancelled for entry in timer.entries)
    timer.fire()
    assert len(controller.pool.jobs) == 1 and controller.alone == [], "nothing is sent twice"


def test_requests_that_waited_for_a_busy_process_are_not_held_back_further() -> None:
    b, controller, timer = holding_batcher(processes=1)
    b(FakeRequest("first"))
    timer.fire()
    for i in range(3):
        b(FakeRequest(f"r{i}"))
    controller.semaphore.release()  # first's process is done; r0-r2 waited for it
    assert controller.pool.jobs == [["r0", "r1", "r2"]]
    assert timer.entries == []


def test_a_request_that_finds_several_free_processes_is_not_held_back() -> None:
    b, controller, timer = holding_batcher(processes=3)
    b(FakeRequest("a"))
    b(FakeRequest("b"))
    assert controller.alone == ["a", "b"] and timer.entries == []


def test_after_a_lost_connection_a_held_process_is_not_sent_and_new_requests_go() -> None:
    b, controller, timer = holding_batcher(processes=1)
    b(FakeRequest("held"))
    controller.semaphore.clear()  # Consumer.on_close
    b.clear()
    timer.fire()
    assert controller.alone == [] and controller.pool.jobs == [], "the broker delivers it again"
    b(FakeRequest("after"))
    timer.fire()
    assert controller.alone == ["after"]
