"""The Celery application: `celery -A kc_tasks worker|beat|flower`."""

from __future__ import annotations

import sys

from celery import Celery

# Imported for what they connect to Celery's signals: the logging set-up, and the start-up
# checks of flower and beat.
from kc_tasks.core import logs, process_guard  # noqa: F401
from kc_tasks.core.errors import ConfigError
from kc_tasks.core.settings import Settings

# The environment's settings, read once per process: the modules of the package import them
# from here, and celeryconfig.py derives Celery's settings from them. Every process (worker,
# beat, flower, web, kc-tasks) imports this first: a malformed variable stops it here with one
# line that names it, not a traceback.
try:
    settings = Settings.from_env()
except ConfigError as exc:
    print(f"kc_tasks: configuration error: {exc}", file=sys.stderr)
    raise SystemExit(1) from None

app = Celery("kc_tasks", task_cls="kc_tasks.worker.consumer:KcTask")
app.config_from_object("celeryconfig")  # ./celeryconfig.py, installed beside the package
app.autodiscover_tasks(["kc_tasks.worker"], related_name="tasks", force=True)
