"""Logging, configured once per process: one line per event, as text or as JSON.

Every line written while a task runs carries its task id and payment id (a context set by
Celery's task_prerun/task_postrun signals). Celery's own logging set-up is replaced
(setup_logging signal), and uvicorn's once the web app is made, so worker, beat, the web
process and the kc-tasks commands share one format.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from celery.signals import setup_logging, task_postrun, task_prerun

_task: contextvars.ContextVar[dict[str, str | None] | None] = contextvars.ContextVar("kc_task", default=None)

UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"
# In text logs, a line is an event: control characters in a message (an event id or payment
# id from a request may hold a newline) are escaped, so that no one can forge a line.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F) if c != 0x09} | {
    0x0A: "\\n",
    0x0D: "\\r",
    0x85: "\\x85",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


def one_line(text: str) -> str:
    """The text with line breaks and other control characters escaped."""
    return text.translate(_ESCAPES)


class TaskContext(logging.Filter):
    """Puts the running task's id and payment id on every record (None outside a task)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _task.get() or {}
        record.task_id = context.get("task_id")
        record.payment_id = context.get("payment_id")
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)  # a traceback (exc_info) follows on its own lines
        task_id = getattr(record, "task_id", None)
        if task_id:
            line += one_line(f" [task_id={task_id} payment_id={getattr(record, 'payment_id', None)}]")
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "message": record.getMessage(),
        }
        for key in ("task_id", "payment_id"):
            if getattr(record, key, None):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(log_format: str = "text", level: int | str = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(TaskContext())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn (the web process) gives its own loggers handlers of its own format before it loads
    # the app: their lines, the access lines among them, go through this handler too.
    for name in UVICORN_LOGGERS:
        named = logging.getLogger(name)
        named.handlers[:] = []
        named.propagate = True
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


@setup_logging.connect
def _celery_logging(loglevel: int | str | None = None, **_: Any) -> None:
    from kc_tasks.core.settings import Settings

    configure(Settings.from_env().log_format, loglevel or logging.INFO)


@task_prerun.connect
def _enter_task(task_id: str | None = None, kwargs: dict[str, Any] | None = None, **_: Any) -> None:
    payment_id = kwargs.get("payment_id") if isinstance(kwargs, dict) else None
    _task.set({"task_id": task_id, "payment_id": payment_id if isinstance(payment_id, str) else None})


@task_postrun.connect
def _leave_task(**_: Any) -> None:
    _task.set(None)
