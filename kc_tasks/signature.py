"""X-KC-Signature: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`."""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "X-KC-Signature"
TOLERANCE_SECONDS = 300  # older than this: refused (replay protection)
FUTURE_SKEW_SECONDS = 30  # clocks differ a little; further in the future: refused


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: bytes, body: bytes, header: str | None, now: float | None = None) -> str | None:
    """None when the signature is good; else why not (never echoing the signature)."""
    if not header:
        return f"missing {HEADER} header"
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return f"malformed {HEADER} header: expected t=<unix seconds>,v1=<hex>"
    now = time.time() if now is None else now
    if timestamp < now - TOLERANCE_SECONDS:
        return f"signature timestamp is more than {TOLERANCE_SECONDS} s old"
    if timestamp > now + FUTURE_SKEW_SECONDS:
        return "signature timestamp is in the future"
    expected = sign(secret, body, timestamp).rsplit("v1=", 1)[1]
    if not any(hmac.compare_digest(expected.encode(), c.encode()) for c in candidates):
        return "signature does not match the body"
    return None
