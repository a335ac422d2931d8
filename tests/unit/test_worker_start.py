"""What a worker does to itself at start-up, apart from connecting."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
from celery.signals import worker_init, worker_process_init, worker_ready

from kc_tasks.worker import process


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def _receivers(signal: object) -> list[object]:
    refs = [receiver for _, receiver in signal.receivers]  # type: ignore[attr-defined]
    return [r() if isinstance(r, weakref.ReferenceType) else r for r in refs]


def test_start_up_objects_are_frozen_before_the_fork_in_each_pool_process_and_once_ready(unfrozen: None) -> None:
    """A full collection over everything start-up made stalled the worker's consumer for
    30-80 ms; frozen, those objects are not looked at again."""
    for signal in (worker_init, worker_process_init, worker_ready):
        assert process._freeze_start_up_objects in _receivers(signal), signal.name
    made_at_start_up = [[] for _ in range(100)]
    process._freeze_start_up_objects()
    made_by_a_task: list[object] = []
    looked_at = {id(o) for o in gc.get_objects()}  # what a full collection goes through
    assert not [o for o in made_at_start_up if id(o) in looked_at], "start-up objects are out of its sight"
    assert id(made_by_a_task) in looked_at, "what tasks make is still collected"
