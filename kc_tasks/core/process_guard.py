"""Start-up checks of `celery -A kc_tasks flower` and `celery -A kc_tasks beat`.

Flower can run tasks (`POST /api/task/async-apply`: a free course) and revoke them: it
refuses to listen on a non-loopback address without authentication (FLOWER_BASIC_AUTH or
Flower's OAuth), and refuses FLOWER_UNAUTHENTICATED_API on every address, loopback included:
without authentication Flower skips its cross-site check, so any page open in a browser that
reaches the port (an SSH tunnel's too) could post a task. Development mode (`kc-tasks dev`)
never passes the variable on.

beat's schedule and Flower's database are shelve (pickle) files: whoever can write one runs
code as the process that opens it. Each must live in a directory only its user can write;
a missing one is created with mode 0700.

Both run when Celery imports the app's modules (its `import_modules` signal), which the beat
command and Flower's app do once their options are parsed and before they open anything.
"""

from __future__ import annotations

import ipaddress
import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from celery import signals


def flower_refusal(address: str, basic_auth: Sequence[str], oauth: str, unauthenticated_api: bool) -> str | None:
    """Why Flower must not start with these options, or None."""
    where = f"{address}" if address else "every interface"
    if unauthenticated_api:
        return (
            f"FLOWER_UNAUTHENTICATED_API opens Flower's API to anyone who reaches {where}, and to any web page "
            "open in a browser that does (Flower then skips its cross-site check); unset it"
        )
    if is_loopback(address):
        return None
    if basic_auth or oauth:
        return None
    return (
        f"Flower would listen on {where} without authentication: set FLOWER_BASIC_AUTH=user:password "
        "(or Flower's OAuth settings), or FLOWER_ADDRESS=127.0.0.1"
    )


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:  # "" (every interface) or a host name, which may resolve to anything
        return False


def state_file_refusal(path: Path) -> str | None:
    """Make the folder of a state file private if it is missing; why it cannot be used, or None."""
    folder = path.parent
    if not folder.exists():
        folder.mkdir(mode=0o700, parents=True)
    info = folder.stat()
    if info.st_uid not in (os.getuid(), 0):
        return f"{folder} (the folder of {path.name}) belongs to another user"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{folder} (the folder of {path.name}) is writable by other users; use a private folder (mode 0700)"
    for candidate in (path, *folder.glob(path.name + ".*")):
        if candidate.exists() and candidate.stat().st_uid != os.getuid():
            return f"{candidate} belongs to another user"
    return None


@signals.import_modules.connect
def check_process(sender: Any = None, **kwargs: Any) -> None:
    ctx = click.get_current_context(silent=True)
    command = ctx.info_name if ctx is not None else None
    if command not in ("flower", "beat"):
        return
    # Celery logs and swallows what a signal handler raises: a check that fails must refuse
    # to start (SystemExit passes through), never let the process start unchecked.
    try:
        problem = _flower_problem() if command == "flower" else _beat_problem(ctx, sender)
    except Exception as exc:  # noqa: BLE001
        problem = f"its start-up check failed: {type(exc).__name__}: {exc}"
    if problem:
        print(f"kc_tasks {command}: refusing to start: {problem}", file=sys.stderr)
        raise SystemExit(1)


def _flower_problem() -> str | None:
    from tornado.options import options

    # Flower reads FLOWER_UNAUTHENTICATED_API itself, from the environment, on each request.
    unauthenticated_api = os.environ.get("FLOWER_UNAUTHENTICATED_API", "").strip().lower() in (
        "1",
        "t",
        "true",
        "y",
        "yes",
        "on",
    )
    problem = flower_refusal(options.address, options.basic_auth, options.auth, unauthenticated_api)
    if problem is None and options.persistent:
        problem = state_file_refusal(Path(options.db).absolute())
    return problem


def _beat_problem(ctx: Any, app: Any) -> str | None:
    schedule = ctx.params.get("schedule") or app.conf.beat_schedule_filename
    return state_file_refusal(Path(schedule).absolute())
