"""The Celery application: `celery -A kc_tasks worker|beat|flower`."""

from __future__ import annotations

from celery import Celery

from kc_tasks import logs  # noqa: F401  (connects the logging set-up to Celery's signals)

app = Celery("kc_tasks", task_cls="kc_tasks.worker:KcTask")
app.config_from_object("kc_tasks.celeryconfig")
app.autodiscover_tasks(["kc_tasks"], related_name="tasks", force=True)
