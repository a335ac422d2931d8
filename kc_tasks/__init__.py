"""kc_tasks: paid course orders turned into purchases, once each, by Celery workers."""

from kc_tasks.celery import app

__all__ = ["app"]
