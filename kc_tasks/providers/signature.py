"""X-KC-Signature: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`."""

from __future__ import annotations

import hashlib
import hmac
import re
import time

HEADER = "X-KC-Signature"
TOLERANCE_SECONDS = 300  # older than this: refused (replay protection)
FUTURE_SKEW_SECONDS = 30  # clocks differ a little; further in the future: refused
# A header longer than this is refused unread: a few secrets in rotation fit many times over.
MAX_HEADER_CHARS = 2048
# t= is unix seconds: ASCII digits only (str.isdigit() also accepts '²', which int() refuses),
# and few of them (int() refuses over 4,300 digits; a timestamp has 10).
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: bytes, body: bytes, header: str | None, now: float | None = None) -> str | None:
    """None when the signature is good; else why not (never echoing the signature)."""
    if not header:
        return f"missing {HEADER} header"
    if len(header) > MAX_HEADER_CHARS:
        return f"malformed {HEADER} header: longer than {MAX_HEADER_CHARS} characters"
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and _TIMESTAMP.fullmatch(value):
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
    # Candidates are compared as bytes; a non-ASCII one (latin-1 from the header) cannot match.
    if not any(hmac.compare_digest(expected.encode(), c.encode("utf-8", "replace")) for c in candidates):
        return "signature does not match the body"
    return None
