"""The package as pip builds it: the pages' templates and the migrations ship, and setuptools
has nothing to warn about."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# What pyproject.toml builds the package from.
SOURCES = ("pyproject.toml", "README.md", "celeryconfig.py", "kc_tasks", "migrations")
# A warning of the build backend as pip shows it: `BuildBackendWarning: ...`,
# `SetuptoolsDeprecationWarning: ...` (pip's own notes are `WARNING: ...`).
PYTHON_WARNING = re.compile(r"\b\w+Warning: .*")


def test_the_wheel_holds_the_templates_and_the_build_warns_of_nothing(tmp_path: Path) -> None:
    # Built from a copy: the build leaves build/ and *.egg-info/ beside its sources.
    source = tmp_path / "source"
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(path, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = built.stdout + built.stderr
    assert built.returncode == 0, output
    assert PYTHON_WARNING.findall(output) == []

    (wheel,) = (tmp_path / "dist").glob("kc_tasks-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    templates = {path.name for path in (ROOT / "kc_tasks" / "templates").iterdir() if path.suffix == ".html"}
    assert {f"kc_tasks/templates/{name}" for name in templates} <= names
    assert "kc_tasks/migrations/script.py.mako" in names
    assert "kc_tasks/migrations/versions/002_add_idempotency_constraints.py" in names
    assert "celeryconfig.py" in names
