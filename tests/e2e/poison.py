"""A task that kills the worker process running it, loaded only by the tests (-I tests.e2e.poison)."""

from __future__ import annotations

import os
import signal

from kc_tasks.celery import app


@app.task(name="tests.kill_my_worker")
def kill_my_worker() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
