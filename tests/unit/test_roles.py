"""The roles' privileges as written down: every table is thought of, and roles.sql hands over
exactly kc_tasks' tables. Pure: no services (tests/integration/test_roles.py runs them)."""

from __future__ import annotations

import re
from pathlib import Path

from kc_tasks.store import db, roles

ROLES_SQL = Path(__file__).resolve().parents[2] / "kc_tasks" / "store" / "migrations" / "roles.sql"


def test_every_table_is_granted_to_some_role() -> None:
    granted = {table for tables in roles.PRIVILEGES.values() for table in tables}

    assert set(db.metadata.tables) <= granted, "a new table: say in kc_tasks/store/roles.py who may use it"
    assert granted <= set(roles.TABLES)


def test_no_role_but_the_owner_may_delete_a_purchase_or_touch_the_migrations() -> None:
    for role, tables in roles.PRIVILEGES.items():
        assert "DELETE" not in tables.get(db.purchases.name, ()), f"{role} could delete a purchase"
        assert "alembic_version" not in tables, f"{role} could rewrite the migration history"
    assert set(roles.PRIVILEGES[roles.WEB][db.purchases.name]) == {"SELECT"}


def test_roles_sql_hands_over_exactly_kc_tasks_tables() -> None:
    listed = re.search(r"c\.relname IN \(([^)]*)\)", ROLES_SQL.read_text())

    assert listed, "roles.sql names the tables it gives to kc_owner"
    assert set(re.findall(r"'([a-z_]+)'", listed.group(1))) == set(roles.TABLES)


def test_roles_sql_creates_the_three_roles_without_login() -> None:
    text = ROLES_SQL.read_text()

    assert "ARRAY['kc_owner', 'kc_web', 'kc_worker']" in text
    assert (roles.OWNER, roles.WEB, roles.WORKER) == ("kc_owner", "kc_web", "kc_worker")
    assert "CREATE ROLE %I NOLOGIN" in text
