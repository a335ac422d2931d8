"""Validation of create_purchase's kwargs, by the contract's rules."""

from __future__ import annotations

import json
import re
import reprlib
import uuid
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, field_validator

from kc_tasks.core.errors import InvalidPurchase, InvalidRevocation

METADATA_MAX_BYTES = 16 * 1024
METADATA_MAX_DEPTH = 64
AMOUNT_MAX = 2**63 - 1  # bigint
CURRENCY = re.compile(r"[A-Z]{3}")


class PurchaseKwargs(BaseModel):
    """A paid order, as create_purchase receives it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    payment_id: Annotated[StrictStr, Field(min_length=1, max_length=255)]
    student_id: StrictStr
    course_id: StrictStr
    amount_cents: Annotated[StrictInt, Field(ge=0, le=AMOUNT_MAX)]
    currency: StrictStr
    metadata: dict[str, Any] | None = None

    @field_validator("payment_id")
    @classmethod
    def _printable_payment_id(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("must not contain a NUL character")
        return value

    @field_validator("student_id", "course_id")
    @classmethod
    def _uuid(cls, value: str) -> str:
        try:
            return str(uuid.UUID(value))
        except ValueError:
            raise ValueError("must be a UUID string") from None

    @field_validator("currency")
    @classmethod
    def _iso_4217(cls, value: str) -> str:
        if not CURRENCY.fullmatch(value):
            raise ValueError("must be an ISO 4217 code: three upper-case letters")
        return value

    @field_validator("metadata", mode="before")
    @classmethod
    def _small_json_object(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise ValueError("must be a JSON object")
        _check_storable(value, depth=0)
        encoded = json.dumps(value, ensure_ascii=False, allow_nan=False)
        if len(encoded.encode("utf-8", "surrogatepass")) > METADATA_MAX_BYTES:
            raise ValueError(f"must be at most {METADATA_MAX_BYTES} bytes as JSON")
        return value


def _check_storable(value: Any, depth: int) -> None:
    """Plain JSON that PostgreSQL's jsonb can store: no NUL, no lone surrogate, not too deep."""
    if depth > METADATA_MAX_DEPTH:
        raise ValueError(f"must not nest deeper than {METADATA_MAX_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError("must have string keys")
            _check_storable(key, depth + 1)
            _check_storable(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_storable(item, depth + 1)
    elif isinstance(value, str):
        if "\x00" in value:
            raise ValueError("must not contain a NUL character")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("must be valid Unicode text (it holds a lone surrogate)") from None
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("must be plain JSON (NaN and Infinity are not)")
    elif value is not None and not isinstance(value, (bool, int)):
        raise ValueError(f"must be plain JSON (a {type(value).__name__} is not)")


class RevocationKwargs(BaseModel):
    """A purchase to revoke, as revoke_purchase receives it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    payment_id: Annotated[StrictStr, Field(min_length=1, max_length=255)]
    # Why: refund, dispute, manual, ...
    reason: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    refund_id: Annotated[StrictStr, Field(min_length=1, max_length=255)] | None = None

    @field_validator("payment_id", "reason", "refund_id")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:
            raise ValueError("must not contain a NUL character")
        return value


def parse_revocation(kwargs: Mapping[str, Any]) -> RevocationKwargs:
    """The kwargs as a RevocationKwargs, or InvalidRevocation naming each field and its rule."""
    try:
        return RevocationKwargs.model_validate(dict(kwargs))
    except ValidationError as exc:
        raise InvalidRevocation(describe(exc, "revoke_purchase")) from None


def parse_purchase(kwargs: Mapping[str, Any]) -> PurchaseKwargs:
    """The kwargs as a PurchaseKwargs, or InvalidPurchase naming each field and its rule."""
    try:
        return PurchaseKwargs.model_validate(dict(kwargs))
    except ValidationError as exc:
        raise InvalidPurchase(describe(exc)) from None


def describe(exc: ValidationError, task: str = "create_purchase") -> str:
    """One line per broken rule: `field: rule (got value)`."""
    parts = []
    for error in exc.errors(include_url=False):
        field = ".".join(str(p) for p in error["loc"]) or "kwargs"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = f"is not a {task} kwarg"
        elif error["type"] == "missing":
            message = "is required"
        else:
            message = f"{message} (got {_short(error.get('input'))})"
        parts.append(f"{field}: {message}")
    return f"invalid {task} kwargs: " + "; ".join(parts)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxdict, _REPR.maxlist = 2, 40, 40, 4, 4


def _short(value: Any) -> str:
    text = _REPR.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def is_task_body(body: Any) -> bool:
    """Celery's message protocol 2: [args, kwargs, embed], embed's callbacks lists or None."""
    if not (isinstance(body, (list, tuple)) and len(body) == 3):
        return False
    args, kwargs, embed = body
    if not (isinstance(args, (list, tuple)) and isinstance(kwargs, dict) and isinstance(embed, dict)):
        return False
    return all(
        embed.get(key) is None or isinstance(embed.get(key), (list, dict))
        for key in ("callbacks", "errbacks", "chain", "chord")
    )
