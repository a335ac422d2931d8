"""`kc-tasks migrate`: create the database if absent, apply pending migrations, once at a time,
then grant the processes' roles their privileges (kc_tasks/store/roles.py)."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from psycopg import sql
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from kc_tasks.store import db, roles
from kc_tasks.store.index_guard import advisory_lock

logger = logging.getLogger(__name__)

# The migrations ship inside the package: kc_tasks/store/migrations, with its package data (pyproject.toml).
SCRIPT_LOCATION = Path(importlib.util.find_spec("kc_tasks.store.migrations").origin or "").parent  # type: ignore[union-attr]


def create_database_if_missing(url: URL) -> bool:
    """CREATE DATABASE through the maintenance database, when the database does not answer
    because it does not exist; True if it was created here. A database that exists is never
    asked for more (a pooler or a managed server may not serve the maintenance database)."""
    try:
        psycopg.connect(_conninfo(url), connect_timeout=db.CONNECT_TIMEOUT).close()
        return False
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            with db.translate_errors(url):
                raise
    admin = _conninfo(url.set(database="postgres"))
    with db.translate_errors(url), psycopg.connect(admin, autocommit=True, connect_timeout=db.CONNECT_TIMEOUT) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (url.database,)).fetchone():
            return False
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(url.database or "kc_tasks")))
        except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
            # Another `migrate` created it a moment ago (a race on the catalog raises the latter).
            return False
    logger.info("created database %s", url.database)
    return True


def _conninfo(url: URL) -> str:
    """The URL as libpq reads it (its host and port lists included)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def migrate(url: URL) -> list[str]:
    """Apply pending migrations in order, then the roles' grants; return the revisions applied
    (empty when up to date)."""
    create_database_if_missing(url)
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    script = ScriptDirectory.from_config(config)
    engine = db.make_engine(url, poolclass=NullPool)
    try:
        with db.translate_errors(url), advisory_lock(engine, "kc_tasks:migrate"), engine.connect() as conn:
            before = MigrationContext.configure(conn).get_current_revision()
            conn.commit()
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
            conn.commit()
            roles.grant(conn)
            conn.commit()
    finally:
        engine.dispose()
    pending = [rev.revision for rev in script.iterate_revisions("head", before)]
    return list(reversed(pending))
