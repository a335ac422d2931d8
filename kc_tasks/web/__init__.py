"""The web process: `uvicorn --factory kc_tasks.web:create_app`. The webhooks, the checkouts
confirmed on the buyer's return, the read API, the operators' pages, health and readiness."""

from kc_tasks.web.app import create_app

__all__ = ["create_app"]
