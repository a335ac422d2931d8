"""mutmut with the configuration of `make mutation-db` (the database modules against the
integration tests): [tool.kc-tasks.mutmut-db] of pyproject.toml in place of [tool.mutmut],
which stays `make mutation`'s. The arguments are mutmut's:

    .venv/bin/python scripts/mutmut_db.py run --max-children 2
    .venv/bin/python scripts/mutmut_db.py results
    .venv/bin/python scripts/mutmut_db.py show kc_tasks.worker.purchases.x__firsts__mutmut_1

mutmut reads its settings through one function of mutmut.configuration; this hands it the
other table (mutmut 3.8).
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mutmut import configuration
from mutmut.__main__ import cli

TABLE = ("tool", "kc-tasks", "mutmut-db")


def reader() -> Callable[[str, Any], Any]:
    table: Any = tomllib.loads(Path("pyproject.toml").read_text("utf-8"))
    for key in TABLE:
        table = table[key]
    return lambda key, default: table.get(key, default)


if __name__ == "__main__":
    configuration._config_reader = reader
    configuration.reset_config()
    cli()
