"""A benchmark run on a machine without one of its tools says so in one line, before it starts
anything (bench/needs.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_webhooks_bench_without_wrk_names_it_in_one_line(tmp_path: Path) -> None:
    # A PATH holding the machine's other tools that bench/webhooks.py runs, and no wrk.
    tools = tmp_path / "bin"
    tools.mkdir()
    for name in ("curl", "rabbitmqctl"):
        found = shutil.which(name)
        if found:
            (tools / name).symlink_to(found)
    run = subprocess.run(
        [sys.executable, "bench/webhooks.py", "--seconds", "1"],
        cwd=ROOT,
        env=dict(os.environ, PATH=str(tools)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, run.stderr
    assert run.stdout == ""
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("bench/webhooks.py needs "), lines[0]
    assert "wrk: apt-get install wrk" in lines[0].removeprefix("bench/webhooks.py needs ").split("; ")
