"""The guard of unique_active_purchase: is it usable, how long to trust that, how to make it so.

"Usable" means what PostgreSQL itself decides: the index is the arbiter that
`ON CONFLICT (student_id, course_id) WHERE is_active = true` infers. A row in pg_indexes is
not enough: an index left INVALID by a failed CREATE INDEX CONCURRENTLY is listed there, but
ON CONFLICT ignores it and it stops no duplicate.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from kc_tasks.core import errors
from kc_tasks.store import db

logger = logging.getLogger(__name__)

INDEX_NAME = "unique_active_purchase"
FIX_COMMAND = "kc-tasks ensure-index"
INDEX_SQL = (
    "CREATE UNIQUE INDEX CONCURRENTLY unique_active_purchase "
    "ON student_course_purchases (student_id, course_id) WHERE is_active = true"
)
BUILD_ATTEMPTS = 5

_CATALOG = sa.text("""
SELECT i.indisunique AS is_unique, i.indisvalid AS is_valid, i.indisready AS is_ready,
       i.indimmediate AS is_immediate, i.indexprs IS NOT NULL AS has_expressions,
       t.relname AS table_name, pg_get_expr(i.indpred, i.indrelid) AS predicate,
       ARRAY(SELECT a.attname::text FROM unnest(i.indkey::int2[]) AS k(attnum)
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum) AS columns
FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid
WHERE i.indexrelid = to_regclass(:name)
""")
_TABLE_EXISTS = sa.text("SELECT to_regclass('student_course_purchases') IS NOT NULL")
_EXPLAIN_ARBITER = sa.text(
    "EXPLAIN (FORMAT JSON) INSERT INTO student_course_purchases (student_id, course_id) "
    "VALUES (NULL, NULL) ON CONFLICT (student_id, course_id) WHERE is_active = true DO NOTHING"
)
_DEACTIVATE_DUPLICATES = sa.text("""
WITH ranked AS (
    SELECT id, row_number() OVER (PARTITION BY student_id, course_id
                                  ORDER BY created_at, ctid) AS n
    FROM student_course_purchases WHERE is_active
)
UPDATE student_course_purchases p SET is_active = false, updated_at = now()
FROM ranked r WHERE p.id = r.id AND r.n > 1
""")


@dataclass(frozen=True)
class IndexStatus:
    usable: bool
    reason: str

    def describe(self) -> str:
        if self.usable:
            return f"{INDEX_NAME} index found"
        return f"{INDEX_NAME} index not usable: {self.reason}"


def diagnose(conn: Connection) -> IndexStatus:
    """Ask PostgreSQL whether unique_active_purchase is the ON CONFLICT arbiter, and why not."""
    if not conn.execute(_TABLE_EXISTS).scalar():
        return IndexStatus(False, "table student_course_purchases does not exist (run kc-tasks migrate)")
    row = conn.execute(_CATALOG, {"name": INDEX_NAME}).mappings().first()
    if row is None:
        return IndexStatus(False, "it does not exist")
    problem = _definition_problem(dict(row))
    if problem:
        return IndexStatus(False, problem)
    arbiters = _arbiters(conn)
    if INDEX_NAME not in arbiters:
        return IndexStatus(False, f"PostgreSQL does not infer it as the ON CONFLICT arbiter ({arbiters})")
    return IndexStatus(True, "valid, unique, and inferred by ON CONFLICT")


def _definition_problem(row: dict[str, object]) -> str | None:
    if not row["is_valid"] or not row["is_ready"]:
        return "it is INVALID (a failed or unfinished CREATE INDEX CONCURRENTLY left it behind)"
    if row["table_name"] != "student_course_purchases":
        return f"it is on table {row['table_name']}, not student_course_purchases"
    expected = "UNIQUE (student_id, course_id) WHERE is_active = true"
    if not row["is_unique"]:
        return f"it is not unique; expected {expected}"
    if row["has_expressions"] or sorted(row["columns"]) != ["course_id", "student_id"]:  # type: ignore[call-overload]
        return f"it covers {row['columns']}; expected {expected}"
    if row["predicate"] not in ("(is_active = true)", "is_active"):  # PostgreSQL treats the two alike
        return f"its predicate is {row['predicate']!r}; expected {expected}"
    if not row["is_immediate"]:
        return "it is deferrable; ON CONFLICT needs an immediate unique index"
    return None


def _arbiters(conn: Connection) -> list[str]:
    autocommit = db.in_autocommit(conn)
    # In a transaction, the failing EXPLAIN runs in a savepoint so the transaction survives.
    # The except stands outside the savepoint, so that a failure rolls the savepoint back.
    try:
        with contextlib.nullcontext() if autocommit else conn.begin_nested(), db.translate_errors():
            plan = conn.execute(_EXPLAIN_ARBITER).scalar()
    except errors.ConflictTargetMissing:
        return []
    if isinstance(plan, str):
        plan = json.loads(plan)
    return list(plan[0]["Plan"].get("Conflict Arbiter Indexes", []))  # type: ignore[index]


class IndexGuard:
    """One process's trust in its last check: no query about the index while it is fresh."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._status: IndexStatus | None = None
        self._checked_at = -math.inf

    @property
    def cached(self) -> IndexStatus | None:
        """The last status while it is fresh, else None."""
        if self._status is not None and self._clock() - self._checked_at < self.ttl:
            return self._status
        return None

    def status(self, engine: Engine) -> IndexStatus:
        """The cached status, or a new check when the cache is stale."""
        return self.cached or self.refresh(engine)

    def refresh(self, engine: Engine) -> IndexStatus:
        with db.translate_errors(engine.url), engine.connect() as conn:
            status = diagnose(conn)
        self.record(status)
        return status

    def record(self, status: IndexStatus) -> None:
        previous, self._status, self._checked_at = self._status, status, self._clock()
        if previous is not None and previous.usable != status.usable:
            if status.usable:
                logger.info("%s - back to ON CONFLICT", status.describe())
            else:
                logger.warning("%s - will use fallback method; fix: %s", status.describe(), FIX_COMMAND)


def deactivate_duplicates(conn: Connection) -> int:
    """Keep the oldest active purchase of each student and course active; deactivate the rest."""
    count = conn.execute(_DEACTIVATE_DUPLICATES).rowcount
    if count:
        logger.warning(
            "deactivated %d duplicate active purchases (the oldest of each student and course stays active)", count
        )
    return count


def ensure_index(conn: Connection) -> tuple[IndexStatus, int]:
    """Make unique_active_purchase usable without blocking writes; never leave an invalid index.

    `conn` must be in autocommit mode (CREATE INDEX CONCURRENTLY cannot run in a transaction).
    Returns the final status and how many duplicate purchases were deactivated.
    """
    status = diagnose(conn)
    if status.usable:
        return status, 0
    if "does not exist (run" in status.reason:
        return status, 0
    deactivated = 0
    with advisory_lock(conn.engine, "kc_tasks:ensure-index"):
        for attempt in range(1, BUILD_ATTEMPTS + 1):
            status = diagnose(conn)
            if status.usable:
                break
            _drop_index(conn)
            deactivated += deactivate_duplicates(conn)
            logger.info("creating %s concurrently (attempt %d)", INDEX_NAME, attempt)
            try:
                with db.translate_errors():
                    conn.execute(sa.text(INDEX_SQL))
            except errors.UniqueConflict:
                # A duplicate was written between the clean-up and the build: drop the
                # invalid index the failed build left, clean up again, build again.
                logger.warning("a duplicate active purchase arrived during the build; retrying")
                _drop_index(conn)
                continue
            except errors.KcTasksError:
                _drop_index(conn)
                raise
        status = diagnose(conn)
    return status, deactivated


def _drop_index(conn: Connection) -> None:
    conn.execute(sa.text(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX_NAME}"))


class advisory_lock:
    """An advisory lock, held by an open transaction on a connection of its own
    (pg_try_advisory_xact_lock) and released when the block ends, or the connection dies.

    A transaction keeps its server connection through a transaction pooler (PgBouncer's
    `pool_mode = transaction`), where a session-level lock would stay on a server connection
    that other clients then use, or be released under us. Polled, so that no statement waits
    inside the server: a CREATE INDEX CONCURRENTLY waits for every older snapshot, including
    that of a session blocked in pg_advisory_lock(). An idle transaction of READ COMMITTED holds
    none, provided its last statement had no bound parameter: a statement with one goes by the
    extended query protocol, whose unnamed portal keeps its snapshot until the transaction ends,
    and the build would wait for the lock's holder forever. The name is a constant of kc_tasks,
    rendered into the statement.
    """

    def __init__(self, engine: Engine, name: str, poll: float = 0.2) -> None:
        self.engine, self.name, self.poll = engine, name, poll
        self.conn: Connection | None = None

    def __enter__(self) -> None:
        conn = self.engine.connect()
        try:
            waited = False
            try_lock = sa.select(
                sa.func.pg_try_advisory_xact_lock(sa.func.hashtext(sa.literal(self.name, literal_execute=True)))
            )
            while not conn.execute(try_lock).scalar():
                conn.rollback()  # between tries, no transaction keeps a pooler's server connection
                if not waited:
                    logger.info("waiting for another process holding %s", self.name)
                    waited = True
                time.sleep(self.poll)
        except BaseException:
            conn.close()
            raise
        self.conn = conn

    def __exit__(self, *exc: object) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.rollback()  # the transaction ends, and its lock with it
            finally:
                conn.close()
