"""The Celery application: `celery -A kc_tasks worker|beat|flower`."""

from __future__ import annotations

from celery import Celery

# Imported for what they connect to Celery's signals: the logging set-up, and the start-up
# checks of flower and beat.
from kc_tasks import logs, process_guard  # noqa: F401

app = Celery("kc_tasks", task_cls="kc_tasks.worker:KcTask")
app.config_from_object("kc_tasks.celeryconfig")
app.autodiscover_tasks(["kc_tasks"], related_name="tasks", force=True)
