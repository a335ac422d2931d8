"""Results computed in a thread, handed to the requests awaiting them in their event loops.

The web process's writer thread (kc_tasks/web/intake.py) and its purchase watcher
(kc_tasks/web/waits.py) settle many awaiting requests at once; each event loop is woken once for
all of its own."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

logger = logging.getLogger(__name__)

Settled = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Any]


def hand_over(settled: Iterable[Settled], what: str) -> None:
    """From any thread: set each future to its outcome (an exception is raised in its awaiter)
    in the future's own loop, one call per loop. A closed loop means the process is stopping
    and nobody awaits: logged at DEBUG as `what`."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = defaultdict(list)
    for loop, future, outcome in settled:
        by_loop[loop].append((future, outcome))
    for loop, answers in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, answers)
        except RuntimeError:  # the loop is closed: the process is stopping, nobody awaits
            logger.debug("%s: %d answer(s) for a closed event loop", what, len(answers))


def _settle(answers: Sequence[tuple[asyncio.Future[Any], Any]]) -> None:
    """In the event loop: each future's outcome, unless its request stopped waiting."""
    for future, outcome in answers:
        if future.done():
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
