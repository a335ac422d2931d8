"""What the web's routes answer beside their own models: a problem's detail, and how long a 503
asks the caller to wait."""

from __future__ import annotations

from pydantic import BaseModel

# What a 503 asks the caller to wait before trying again, seconds (Retry-After): PostgreSQL is
# away, for a restart or a failover, often for less.
RETRY_AFTER_SECONDS = 5


class Problem(BaseModel):
    detail: str
