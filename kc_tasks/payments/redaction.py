"""Personal data in the inbox: each stored body kept whole for KC_INBOX_BODY_DAYS, then reduced
to the fields kc_tasks reads.

A provider's body carries the buyer's personal data (Razorpay: `email`, `contact`, `vpa`, card
details; Stripe: `customer_details`, `billing_details`, `receipt_email`, addresses). kc_tasks
reads none of it. `redacted` keeps, by one table per provider (`KEPT`), only ids, the event
type, amounts, currencies, statuses, the ids that link a payment to its order, session,
PaymentIntent, refund or dispute, and `student_id`/`course_id` of the server-set notes or
metadata; every other field is removed. The providers' parsers read a redacted body as they
read the original (docs/security.md lists the exceptions: the other server-set notes, which the
purchase's metadata already holds, are gone).

`redact_final` is what beat's `kc_tasks.redact_inbox` and `kc-tasks inbox redact` run: the
events older than a cutoff whose outcome is final get their redacted body and the time of it
(`body_redacted_at`). An event still waiting (`received`, or `enqueued` while its task has
neither an outcome nor a dead letter, kc_tasks.payments.outcomes) is never touched; a dead letter an
operator purged is an outcome. It goes through the inbox in primary
key order, in batches of BATCH rows each locked with SKIP LOCKED and committed on its own: a
row another transaction holds is left for the next run, never waited for.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from kc_tasks.core import names
from kc_tasks.payments import outcomes
from kc_tasks.providers import registry
from kc_tasks.providers.kept import ID, LEAF, Kwargs, Table
from kc_tasks.store import db

logger = logging.getLogger(__name__)

# Rows locked, rewritten and committed at once.
BATCH = 500
# What takes the place of a value kept by name whose shape is not the documented one (an
# object where a status was expected, say): it could hold anything.
REDACTED = "[redacted]"

# The tables (kc_tasks.providers.kept) by provider, and for reconciliation's events by the
# provider whose API they were read from (docs/security.md shows the same): the registry's.
KEPT: dict[str, Table] = {
    (p.name if source == p.name else f"{p.name} {source}"): table
    for p in registry.PROVIDERS
    for source, table in p.kept.items()
}


def redacted(provider: str, event_id: str, body: str) -> str:
    """The body with only the fields of its provider's table (pure). A body that is not a JSON
    object (none is stored so) becomes `{}`."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        return "{}"
    kept = keep(data, table_for(provider, event_id))
    # ASCII: whatever escapes the original held, the result is storable text.
    return json.dumps(kept, separators=(",", ":"), sort_keys=True)


def table_for(provider: str, event_id: str) -> Table:
    entry = registry.find(provider)
    return entry.table(event_id) if entry is not None else {}


def keep(value: Any, table: Any) -> Any:
    """What `table` keeps of `value` (pure)."""
    if table == LEAF:
        return value if _scalar(value) else REDACTED
    if table == ID:
        if isinstance(value, dict):
            return {"id": keep(value.get("id"), LEAF)} if "id" in value else {}
        return keep(value, LEAF)
    if isinstance(table, list):
        if not isinstance(value, list):
            return _other_shape(value)
        return [keep(item, table[0]) for item in value]
    if not isinstance(value, dict):
        return _other_shape(value)
    kept = {key: keep(value[key], sub) for key, sub in table.items() if key in value}
    if isinstance(table, Kwargs):
        kept |= _other_kwargs(value, table)
    return kept


def _other_kwargs(kwargs: dict[str, Any], table: Kwargs) -> dict[str, Any]:
    """Task kwargs: `metadata` removed when it is an object (the purchase row holds it), a
    placeholder otherwise, so that a body invalid for it stays invalid; any other key kept by
    name, as null, so that a body with a kwarg the task refuses stays refused."""
    other: dict[str, Any] = {key: None for key in kwargs if key not in table and key != "metadata"}
    metadata = kwargs.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        other["metadata"] = REDACTED
    return other


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _other_shape(value: Any) -> Any:
    """A value whose shape is not the table's: the parsers read any such value as absent, so
    one of the same kind, empty, takes its place (Razorpay's empty notes `[]` stay `[]`)."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, list):
        return []
    if isinstance(value, dict):
        return {}
    return REDACTED


# Statuses whose outcome is final as stored; `enqueued` is final once its task is done or
# dead-lettered; `received` never is.
FINAL = (names.IGNORED, names.UNMAPPED, names.INVALID)
_e = db.payment_events


def redact_final(
    engine: Engine,
    older_than: float,
    dead_lettered: Callable[[], Collection[str]] | None = None,
    batch: int = BATCH,
) -> int:
    """Reduce the bodies of the final events received more than `older_than` seconds ago to
    their redacted form; the number reduced. `dead_lettered` gives the task ids waiting in the
    DLQ: read once, outside any transaction, and only when an `enqueued` event's task has no
    outcome in the database. Without it, such an event is left as it is."""
    after, done = ("", ""), 0
    dlq: Collection[str] | None = None if dead_lettered is not None else ()
    while True:
        step = _redact_batch(engine, older_than, after, batch, dlq)
        if step is None:  # the DLQ decides some of this batch: read it, then the batch again
            assert dead_lettered is not None
            dlq = _read_dlq(dead_lettered)
            continue
        read, last, redacted_now = step
        done += redacted_now
        if read < batch:
            break
        after = last
    if done:
        logger.info("inbox: %d event body(ies) reduced to the fields kc_tasks reads", done)
    return done


def _redact_batch(
    engine: Engine, older_than: float, after: tuple[str, str], batch: int, dlq: Collection[str] | None
) -> tuple[int, tuple[str, str], int] | None:
    """One transaction: lock the next `batch` unlocked candidates after the key `after`, reduce
    the final ones; (rows read, the last key, rows reduced), or None (nothing done) when the
    DLQ, unread, would decide some."""
    with db.translate_errors(engine.url), engine.begin() as conn:
        rows = conn.execute(
            sa.select(_e.c.provider, _e.c.event_id, _e.c.status, _e.c.body)
            .where(
                _e.c.body_redacted_at.is_(None),
                _e.c.status != names.RECEIVED,
                _e.c.received_at <= sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, older_than),
                sa.tuple_(_e.c.provider, _e.c.event_id) > sa.tuple_(sa.literal(after[0]), sa.literal(after[1])),
            )
            .order_by(_e.c.provider, _e.c.event_id)
            .limit(batch)
            .with_for_update(skip_locked=True)
        ).all()
        if not rows:
            return 0, after, 0
        final, undecided = _final(conn, rows, dlq)
        if undecided and dlq is None:
            return None
        if final:
            conn.execute(
                sa.update(_e)
                .where(
                    _e.c.provider == sa.bindparam("p"),
                    _e.c.event_id == sa.bindparam("e"),
                    _e.c.body_redacted_at.is_(None),
                )
                .values(body=sa.bindparam("reduced"), body_redacted_at=sa.func.now()),
                [
                    {"p": r.provider, "e": r.event_id, "reduced": redacted(r.provider, r.event_id, r.body)}
                    for r in final
                ],
            )
    return len(rows), (rows[-1].provider, rows[-1].event_id), len(final)


def _final(conn: sa.Connection, rows: Sequence[Any], dlq: Collection[str] | None) -> tuple[list[Any], int]:
    """The rows whose outcome is final, and how many `enqueued` rows the DLQ would decide
    (counted while `dlq` is None, unread)."""
    tasks = {
        (row.provider, row.event_id): outcomes.task_of(row.provider, row.event_id, row.body)
        for row in rows
        if row.status == names.ENQUEUED
    }
    finished = outcomes.done(conn, [task for task in tasks.values() if task is not None])
    final, undecided = [], 0
    for row in rows:
        if row.status in FINAL:
            final.append(row)
            continue
        if row.status != names.ENQUEUED:
            continue  # received: still waiting
        task = tasks[(row.provider, row.event_id)]
        if task is None or task.task_id in finished or (dlq is not None and task.task_id in dlq):
            final.append(row)  # nothing it asked for waits, or its task is done or dead-lettered
        elif dlq is None:
            undecided += 1
    return final, undecided


def _read_dlq(dead_lettered: Callable[[], Collection[str]]) -> Collection[str]:
    try:
        return dead_lettered()
    except Exception as exc:  # noqa: BLE001  (the broker: those events wait for the next run)
        logger.warning(
            "inbox redaction: dead letters not read (%s: %s); events enqueued without an outcome are kept whole "
            "until the next run",
            type(exc).__name__,
            exc,
        )
        return ()


def dead_lettered_task_ids(app: Any) -> set[str]:
    """The task ids of the dead letters waiting in purchases.dlq."""
    from kc_tasks.store import dead_letters

    with dead_letters.hold(app) as held:
        return {letter.task_id for letter, _ in held if letter.task_id}
